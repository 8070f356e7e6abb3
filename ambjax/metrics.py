"""Classification metrics from confusion counts (row = true class, column = predicted).

Device side: `ambjax.nn.balance.confusion_matrix` (masked, jit-friendly) builds the counts; host
side: `classification_report` turns them into accuracy, weighted/macro F1 (scikit-learn's
definitions: macro averages over the classes that occur in the labels or the predictions),
per-class precision/recall/F1 and the matrix itself.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ambjax.nn.balance import confusion_matrix, per_class_f1, weighted_f1

__all__ = ["confusion_matrix", "per_class_f1", "weighted_f1", "classification_report"]


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
