"""Paired differences over seeds: what an ablation changes, with a 95% confidence interval.

Each seed trains the full model and the ablation on the same data, initial keys and batch
order, so the seed-to-seed spread cancels in the per-seed difference; the interval is the
Student t interval of the mean difference (n - 1 degrees of freedom).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def paired_interval(variant: Sequence[float], full: Sequence[float],
                    level: float = 0.95) -> dict:
    """Mean of `variant[k] - full[k]` over seeds with its `level` t interval.

    Returns:
      {"mean", "low", "high", "n", "differences", "significant"}: `significant` when the
      interval excludes zero (n >= 2; with one seed there is no interval: low = high = mean).

    Example:
      >>> r = paired_interval([0.60, 0.62, 0.61], [0.55, 0.56, 0.57])
      >>> round(r["mean"], 3), r["significant"]
      (0.05, True)
    """
    a, b = np.asarray(variant, np.float64), np.asarray(full, np.float64)
    if a.ndim != 1 or a.shape != b.shape or len(a) == 0:
        raise ValueError(f"expected two equal-length lists of per-seed scores, got shapes "
                         f"{a.shape} and {b.shape}")
    d = a - b
    mean = float(d.mean())
    if len(d) < 2:
        return {"mean": mean, "low": mean, "high": mean, "n": 1,
                "differences": d.tolist(), "significant": False}
    # imported here, not above: scipy.stats takes ~1.4 s to import, which every importer of
    # this module (the ablation tool, the test suite's collection) would pay
    from scipy import stats
    half = float(stats.t.ppf(0.5 + level / 2, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d)))
    return {"mean": mean, "low": mean - half, "high": mean + half, "n": len(d),
            "differences": d.tolist(), "significant": bool(mean - half > 0 or mean + half < 0)}
