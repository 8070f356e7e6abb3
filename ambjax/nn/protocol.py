"""The model protocol: what the train and eval step builders (`ambjax.train.steps`) need of a
model, so that models composed from ambjax's pieces train with the same steps as `AMBDSGDN`
(see `experiments/compose.py`)."""

from __future__ import annotations

from typing import Any, Mapping, Protocol, TypedDict

import jax

from ambjax.graphs.batch import DialogueBatch


class ModelOutput(TypedDict):
    """What a dialogue model returns (N node slots, C classes, M modalities).

    logits: float32 [N, C] fused logits (padding rows meaningless; mask with
      `batch.nodes.mask`).
    modality_logits: {m: float32 [N, C]} per-modality logits (after balancing).
    modality_f1: float32 [M] P_m that balancing measured (zeros when it did not run).
    q: float32 [M] drop probabilities used (zeros when balancing did not run).
    """

    logits: jax.Array
    modality_logits: Mapping[str, jax.Array]
    modality_f1: jax.Array
    q: jax.Array


class DialogueModel(Protocol):
    """A Flax module over a `DialogueBatch` (labels and masks are read from `batch.nodes`).

    `apply` is Flax's: rng streams "dropout" and "balance" are passed in training;
    `balance_active` is a traced bool scalar (balancing on after warm-up); `axis_name` names the
    pmap axis over which batch statistics are reduced (None on one device).
    """

    def apply(self, variables: Mapping[str, Any], batch: DialogueBatch, *, train: bool = ...,
              balance_active: Any = ..., axis_name: str | None = ...,
              rngs: Mapping[str, jax.Array] | None = ...) -> ModelOutput: ...

    def init(self, rngs: Any, *args: Any, **kwargs: Any) -> Mapping[str, Any]: ...
