"""Training: the config tree, state, pure steps with jit/pmap wrappers, checkpoints, the loop."""

from ambjax.train.checkpoint import CheckpointError
from ambjax.train.config import (ConfigError, DataConfig, ExperimentConfig, OptimConfig,
                                 RunConfig, ScheduleConfig, from_dict, override, replace_key, to_dict,
                                 validate)
from ambjax.train.loop import (PreparedRun, evaluate_checkpoint, load_dataset, prepare_run,
                               standardized, summarize_seeds, train_and_evaluate)
from ambjax.train.run_folder import RunFolderError
from ambjax.train.trainer import Trainer
from ambjax.train.state import TrainState, create_optimizer, create_train_state
from ambjax.train.steps import (compile_steps, make_eval_step, make_train_step, replicate,
                                unreplicate)

__all__ = [
    "CheckpointError", "ConfigError", "DataConfig", "ExperimentConfig", "OptimConfig",
    "RunConfig", "ScheduleConfig", "from_dict", "override", "replace_key", "to_dict", "validate",
    "RunFolderError", "Trainer", "evaluate_checkpoint", "load_dataset", "PreparedRun",
    "prepare_run", "standardized",
    "summarize_seeds", "train_and_evaluate",
    "TrainState", "create_optimizer", "create_train_state", "compile_steps", "make_eval_step",
    "make_train_step", "replicate", "unreplicate",
]
