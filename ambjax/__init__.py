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

import importlib

# name -> the module it comes from. Names and submodules (`ambjax.convert`) are imported when
# first used (PEP 562), so that importing a light module of the package (`ambjax.cli`,
# `ambjax.host_memory`) does not import JAX: the command-line tools restart themselves before
# that (`ambjax.host_memory.restart_if_run_as_module`)
_EXPORTS = {
    "DialogueDataset": "ambjax.data", "load_features": "ambjax.data",
    "make_synthetic": "ambjax.data", "AmbjaxError": "ambjax.errors",
    "DialogueBatch": "ambjax.graphs", "GraphBatcher": "ambjax.graphs",
    "weighted_f1": "ambjax.metrics", "AMBDSGDN": "ambjax.nn", "DialogueModel": "ambjax.nn",
    "DifferentialGraphAttention": "ambjax.nn", "ModalityBalancing": "ambjax.nn",
    "ModelConfig": "ambjax.nn", "ExperimentConfig": "ambjax.train", "Trainer": "ambjax.train",
    "load_run": "ambjax.train", "train_and_evaluate": "ambjax.train",
}

__version__ = "0.1.0"

__all__ = ["convert", *_EXPORTS, "__version__"]


def __getattr__(name: str):
    """A name of `__all__`, or a submodule (`ambjax.train`), imported when first used."""
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
    else:
        try:
            value = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
