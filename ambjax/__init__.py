"""ambjax: AMB-DSGDN for multimodal emotion recognition in conversation, in pure JAX.

The top level holds the entry points; each subpackage documents the rest of its surface:

- `ambjax.data`: feature files (`load_features`), the bundled synthetic data
  (`make_synthetic`), `DialogueDataset`.
- `ambjax.graphs`: padded dialogue graphs (`GraphBatcher`, the `DialogueBatch` pytree).
- `ambjax.nn`: `AMBDSGDN` and `ModelConfig`, and its pure pieces (`DifferentialGraphAttention`,
  `ModalityBalancing`, ...); any `DialogueModel` trains with the library's steps.
- `ambjax.losses`, `ambjax.metrics`: the loss and weighted / macro / per-modality F1.
- `ambjax.train`: the config tree (`ExperimentConfig`), pure steps, the `Trainer`,
  `train_and_evaluate` with its hooks, `load_run`.
- `ambjax.errors`: `AmbjaxError`, the root of every error a user can cause.
- `ambjax.convert`: the bridge to the authors' PyTorch release.
"""

from ambjax import convert
from ambjax.data import DialogueDataset, load_features, make_synthetic
from ambjax.errors import AmbjaxError
from ambjax.graphs import DialogueBatch, GraphBatcher
from ambjax.metrics import weighted_f1
from ambjax.nn import (AMBDSGDN, DialogueModel, DifferentialGraphAttention, ModalityBalancing,
                       ModelConfig)
from ambjax.train import ExperimentConfig, Trainer, load_run, train_and_evaluate

__version__ = "0.1.0"

__all__ = [
    "convert", "DialogueDataset", "load_features", "make_synthetic", "AmbjaxError",
    "DialogueBatch", "GraphBatcher", "weighted_f1", "AMBDSGDN", "DialogueModel",
    "DifferentialGraphAttention", "ModalityBalancing", "ModelConfig", "ExperimentConfig",
    "Trainer", "load_run", "train_and_evaluate", "__version__",
]
