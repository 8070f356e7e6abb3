"""Training: configs, state, pure steps with jit/pmap wrappers, checkpoints, the loop."""

from ambjax.train.checkpoint import CheckpointError
from ambjax.train.config import (ABLATIONS, PRESETS, ConfigError, TrainConfig, make_config,
                                 parse_overrides)
from ambjax.train.loop import RunFolderError, Trainer, load_dataset, train_and_evaluate
from ambjax.train.state import TrainState, create_optimizer, create_train_state
from ambjax.train.steps import (compile_steps, make_eval_step, make_train_step, replicate,
                                unreplicate)

__all__ = [
    "CheckpointError", "ABLATIONS", "PRESETS", "ConfigError", "TrainConfig", "make_config",
    "parse_overrides", "RunFolderError", "Trainer", "load_dataset", "train_and_evaluate",
    "TrainState", "create_optimizer", "create_train_state", "compile_steps", "make_eval_step",
    "make_train_step", "replicate", "unreplicate",
]
