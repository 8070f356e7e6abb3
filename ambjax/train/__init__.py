"""Training: the config tree, state, pure steps with jit/pmap wrappers, the Trainer, the loop
with its hooks, and reading runs back.

The application layer in brief: `train_and_evaluate(config, out_dir, model=..., seeds=...,
hooks=...)` trains any `ambjax.nn.DialogueModel` through a `Trainer` (one jitted / pmapped,
seed-vmapped program); per-epoch extras are hooks (`ambjax.train.hooks`); `load_run(path)`
reads a run's config and parameters back.
"""

from ambjax.errors import CheckpointError, ConfigError, RunFolderError
from ambjax.data.assemble import load_dataset, standardized
from ambjax.train.config import (DataConfig, ExperimentConfig, OptimConfig, RunConfig,
                                 ScheduleConfig, from_dict, override, replace_key, to_dict,
                                 validate)
from ambjax.train.hooks import (Checkpoints, EpochLog, EpochResult, Hook, Reports, RunContext,
                                RunRecords, StallWarning, TensorBoard, default_hooks)
from ambjax.train.loop import PreparedRun, prepare_run, train_and_evaluate
from ambjax.train.progress import RunProgress
from ambjax.train.report import summarize_seeds
from ambjax.train.runs import LoadedRun, evaluate_checkpoint, load_run, read_run_config
from ambjax.train.state import TrainState, create_optimizer, create_train_state
from ambjax.train.steps import (TrainStep, compile_steps, make_eval_step, make_gradient_step,
                                make_train_step, make_update_step, model_state, replicate,
                                unreplicate)
from ambjax.train.trainer import Trainer

__all__ = [
    "CheckpointError", "ConfigError", "RunFolderError", "load_dataset", "standardized",
    "DataConfig", "ExperimentConfig", "OptimConfig", "RunConfig", "ScheduleConfig",
    "from_dict", "override", "replace_key", "to_dict", "validate",
    "Checkpoints", "EpochLog", "EpochResult", "Hook", "Reports", "RunContext", "RunRecords",
    "StallWarning", "TensorBoard", "default_hooks",
    "PreparedRun", "prepare_run", "train_and_evaluate", "RunProgress", "summarize_seeds",
    "LoadedRun", "evaluate_checkpoint", "load_run", "read_run_config",
    "TrainState", "create_optimizer", "create_train_state", "compile_steps", "make_eval_step",
    "make_train_step", "make_gradient_step", "make_update_step", "model_state", "TrainStep",
    "replicate", "unreplicate", "Trainer",
]
