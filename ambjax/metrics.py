"""Classification metrics from confusion counts (row = true class, column = predicted).

Device side (pure jax, jit/vmap/pmap-friendly, masked): `confusion_matrix`, `per_class_f1`,
`weighted_f1`, `macro_f1`, and `modality_f1` (each modality's weighted F1 over the global batch,
the P_m that modality balancing reads); the three F1s of confusion counts compute numpy
arrays in numpy (`ambjax.array_namespace`: no XLA program for a host-side summary). Host
side: `classification_report` turns counts into accuracy, weighted/macro F1 (scikit-learn's
definitions: macro averages over the classes that occur in the labels or the predictions),
per-class precision/recall/F1 and the matrix itself.

This module sits on the ground floor: it imports nothing from `ambjax` but
`ambjax.array_namespace`.
"""

from __future__ import annotations

from typing import Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np

from ambjax.array_namespace import namespace

__all__ = ["confusion_matrix", "per_class_f1", "weighted_f1", "macro_f1", "modality_f1",
           "classification_report"]


def confusion_matrix(labels: jax.Array, predictions: jax.Array, mask: jax.Array,
                     num_classes: int) -> jax.Array:
    """Counts [C, C] (row = true class, column = predicted) over entries where `mask`.

    Args:
      labels, predictions: int [N]; mask: bool [N]; num_classes: static C.
    Returns:
      int32 [C, C].
    """
    chex.assert_equal_shape([labels, predictions, mask])
    # one-hot products summed over N, not a scatter-add: XLA fuses it with its neighbours
    classes = jnp.arange(num_classes)
    truth = (labels.astype(jnp.int32)[:, None] == classes) & mask.astype(bool)[:, None]
    guess = predictions.astype(jnp.int32)[:, None] == classes
    return jnp.sum(truth[:, :, None] & guess[:, None, :], axis=0, dtype=jnp.int32)


def per_class_f1(confusion: jax.Array) -> jax.Array:
    """F1 of each class from a confusion matrix [..., C, C] -> float32 [..., C] (0 where
    undefined)."""
    xp = namespace(confusion)
    confusion = confusion.astype(xp.float32)
    tp = xp.diagonal(confusion, axis1=-2, axis2=-1)
    denom = confusion.sum(-1) + confusion.sum(-2)  # (tp + fn) + (tp + fp)
    return xp.where(denom > 0, 2 * tp / xp.maximum(denom, 1), xp.float32(0))


def weighted_f1(confusion: jax.Array) -> jax.Array:
    """Support-weighted F1 (scikit-learn's average="weighted"): [..., C, C] -> [...].

    Example:
      >>> import jax.numpy as jnp
      >>> conf = confusion_matrix(jnp.array([0, 0, 1, 1]), jnp.array([0, 1, 1, 1]),
      ...                         jnp.array([True, True, True, False]), num_classes=2)
      >>> conf.tolist(), round(float(weighted_f1(conf)), 4)
      ([[1, 1], [0, 1]], 0.6667)
    """
    xp = namespace(confusion)
    support = confusion.sum(-1).astype(xp.float32)
    total = support.sum(-1)
    return xp.where(total > 0, (per_class_f1(confusion) * support).sum(-1)
                    / xp.maximum(total, 1), xp.float32(0))


def modality_f1(labels: jax.Array, modality_logits, mask: jax.Array, num_classes: int,
                axis_name: str | None = None) -> jax.Array:
    """P_m: weighted F1 of each modality's argmax over the real utterances of the global batch.

    Args:
      labels: int [N]; mask: bool [N] real utterances.
      modality_logits: sequence of M float arrays [N, C] (one per modality, in order).
      num_classes: C.
      axis_name: pmap axis whose devices' confusion counts are summed first (None: one device).

    Returns:
      float32 [M], with no gradient.
    """
    conf = jnp.stack([confusion_matrix(labels, jnp.argmax(lm, -1), mask, num_classes)
                      for lm in modality_logits])
    if axis_name is not None:
        conf = jax.lax.psum(conf, axis_name)
    return jax.lax.stop_gradient(weighted_f1(conf))


def macro_f1(confusion: jax.Array) -> jax.Array:
    """Mean F1 over the classes present in the labels or predictions: [..., C, C] -> [...]."""
    xp = namespace(confusion)
    confusion = confusion.astype(xp.float32)
    present = (confusion.sum(-1) + confusion.sum(-2)) > 0
    count = present.sum(-1).astype(xp.float32)
    return xp.where(count > 0, xp.where(present, per_class_f1(confusion), xp.float32(0)).sum(-1)
                    / xp.maximum(count, 1), xp.float32(0))


def _safe_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.where(b > 0, a / np.maximum(b, 1), 0.0)


def classification_report(confusion, label_names: Sequence[str]) -> dict:
    """Metrics of a confusion matrix int [C, C] as plain Python numbers (fractions in [0, 1]).

    Returns:
      {"accuracy", "weighted_f1", "macro_f1", "support", "per_class": {name: {"precision",
      "recall", "f1", "support"}}, "per_class_f1": {name: f1}, "confusion": [[int]]}.

    Example:
      >>> r = classification_report([[3, 1], [0, 4]], ["neg", "pos"])
      >>> r["accuracy"], round(r["weighted_f1"], 4), r["per_class"]["pos"]["precision"]
      (0.875, 0.873, 0.8)
    """
    conf = np.asarray(confusion, np.int64)
    tp = np.diag(conf).astype(np.float64)
    support = conf.sum(1).astype(np.float64)
    predicted = conf.sum(0).astype(np.float64)
    precision = _safe_div(tp, predicted)
    recall = _safe_div(tp, support)
    f1 = _safe_div(2 * tp, support + predicted)
    total = support.sum()
    present = (support + predicted) > 0
    per_class = {name: {"precision": float(precision[i]), "recall": float(recall[i]),
                        "f1": float(f1[i]), "support": int(support[i])}
                 for i, name in enumerate(label_names)}
    return {
        "accuracy": float(tp.sum() / total) if total else 0.0,
        "weighted_f1": float((f1 * support).sum() / total) if total else 0.0,
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "support": int(total),
        "per_class": per_class,
        "per_class_f1": {name: v["f1"] for name, v in per_class.items()},
        "confusion": conf.tolist(),
    }
