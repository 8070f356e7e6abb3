"""Adaptive modality balancing (DESIGN.md section 7).

1. Each modality's contribution P_m is the weighted F1 of its head's arg-max over the real
   utterances of the (global) batch, from confusion counts (summed across devices first).
2. Drop probabilities, for each m over the other modalities j with P_j >= 1e-5:
       rho_mj = P_m / (P_j + 1e-5) - 1;  w_m. = softmax_j(ReLU(rho_mj))
       rhobar_m = (sum_j w_mj ReLU(rho_mj)) / |J|       (the release's reading, see below)
       q_m = clip(q_base (1 + lambda_q rhobar_m), 0, 1) if rhobar_m > 0 else 0
3. `ModalityDropout`: with probability p_exe (one draw per batch), theta = mean_m q_m and, per
   dialogue and modality, keep ~ Bernoulli(1 - q_m); Z_m <- keep Z_m / (1 - theta).
   A dialogue that would lose every modality keeps its strongest one (the release would crash).

Release details reproduced by `drop_probabilities` (checked against the release's q-table): the
weighted sum uses the rectified ratios, rhobar_m = (sum_j w_mj ReLU(rho_mj)) / |J| (DESIGN.md
writes rho_mj; the two differ only when some rho_mj < 0); the 1e-5 threshold is compared in
double precision, so a float32 P equal to float32(1e-5) (just below 1e-5) is skipped; the
arithmetic is float32.
"""

from __future__ import annotations

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

PERF_EPS = 1e-5
# Smallest float32 that is >= 1e-5 as a real number (float32(1e-5) itself is just below it).
_PERF_THRESHOLD = float(np.nextafter(np.float32(PERF_EPS), np.float32(1.0))
                        if float(np.float32(PERF_EPS)) < PERF_EPS else np.float32(PERF_EPS))


def confusion_matrix(labels: jax.Array, predictions: jax.Array, mask: jax.Array,
                     num_classes: int) -> jax.Array:
    """Counts [C, C] (row = true class, column = predicted) over entries where `mask`.

    Args:
      labels, predictions: int [N]; mask: bool [N]; num_classes: static C.
    Returns:
      int32 [C, C].
    """
    chex.assert_equal_shape([labels, predictions, mask])
    flat = labels.astype(jnp.int32) * num_classes + predictions.astype(jnp.int32)
    counts = jax.ops.segment_sum(mask.astype(jnp.int32), flat, num_segments=num_classes ** 2)
    return counts.reshape(num_classes, num_classes)


def per_class_f1(confusion: jax.Array) -> jax.Array:
    """F1 of each class from a confusion matrix [..., C, C] -> [..., C] (0 where undefined)."""
    confusion = confusion.astype(jnp.float32)
    tp = jnp.diagonal(confusion, axis1=-2, axis2=-1)
    denom = confusion.sum(-1) + confusion.sum(-2)  # (tp + fn) + (tp + fp)
    return jnp.where(denom > 0, 2 * tp / jnp.maximum(denom, 1), 0.0)


def weighted_f1(confusion: jax.Array) -> jax.Array:
    """Support-weighted F1 (scikit-learn's average="weighted"): [..., C, C] -> [...].

    Example:
      >>> import jax.numpy as jnp
      >>> conf = confusion_matrix(jnp.array([0, 0, 1, 1]), jnp.array([0, 1, 1, 1]),
      ...                         jnp.array([True, True, True, False]), num_classes=2)
      >>> conf.tolist(), round(float(weighted_f1(conf)), 4)
      ([[1, 1], [0, 1]], 0.6667)
    """
    support = confusion.sum(-1).astype(jnp.float32)
    total = support.sum(-1)
    return jnp.where(total > 0, (per_class_f1(confusion) * support).sum(-1)
                     / jnp.maximum(total, 1), 0.0)


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


def drop_probabilities(perf, q_base: float, lam: float, *, xp=jnp):
    """Drop probability q_m of each modality from its performance P_m (equation 7.2).

    Args:
      perf: float [M] per-modality performance (any modality order).
      q_base: base drop probability.
      lam: lambda_q, the sensitivity to the performance gap.
      xp: array namespace, `jax.numpy` (default; jit/vmap/grad-friendly) or `numpy`. XLA's
        float32 `exp` and its fused multiply-adds can differ from the release's arithmetic in
        the last bit; with `xp=numpy` the result equals the release's q-table exactly.

    Returns:
      float32 [M] in [0, 1].

    Example:
      >>> import numpy as np
      >>> q = drop_probabilities([0.8, 0.5, 0.4], q_base=0.3, lam=0.9, xp=np)
      >>> [round(float(x), 4) for x in q]      # the strongest modality is dropped most
      [0.4133, 0.319, 0.0]
    """
    f32 = xp.float32
    perf = xp.asarray(perf, dtype=f32)
    if perf.ndim != 1:
        raise ValueError(f"perf must be a vector [M], got shape {perf.shape}")
    m = perf.shape[0]
    ratio = perf[:, None] / (perf[None, :] + f32(PERF_EPS)) - f32(1.0)      # [M, M]
    others = (perf[None, :] >= _PERF_THRESHOLD) & ~xp.eye(m, dtype=bool)
    pos = xp.where(others, xp.maximum(ratio, f32(0.0)), f32(0.0))
    peak = xp.max(pos, axis=1, keepdims=True)
    exp = xp.where(others, xp.exp(pos - peak), f32(0.0))
    weights = exp / xp.maximum(exp.sum(axis=1, keepdims=True), f32(1e-30))
    count = others.sum(axis=1)
    avg = (weights * pos).sum(axis=1) / xp.maximum(count, 1).astype(f32)
    q = xp.where((count > 0) & (avg > 0), f32(q_base) * (f32(1.0) + f32(lam) * avg), f32(0.0))
    return xp.clip(q, f32(0.0), f32(1.0)).astype(f32)


def modality_keep_mask(key: jax.Array, q: jax.Array, strength: jax.Array,
                       num_graphs: int) -> jax.Array:
    """Per-dialogue keep decisions: bool [G, M], keep ~ Bernoulli(1 - q_m).

    A dialogue whose draw drops every modality keeps the one with the largest `strength` [M].
    """
    keep = jax.random.uniform(key, (num_graphs, q.shape[0])) >= q[None, :]
    fallback = jax.nn.one_hot(jnp.argmax(strength), q.shape[0], dtype=bool)[None, :]
    return jnp.where(keep.any(axis=1, keepdims=True), keep, fallback)


class ModalityDropout(nn.Module):
    """Drops whole modality streams per dialogue (training only; identity when deterministic).

    Attributes:
      p_exe: probability that dropping is executed for a batch (one draw per batch).

    Call (rng stream "balance"):
      features: float [M, N, d] per-modality node representations Z_m.
      q: float [M] drop probabilities; strength: float [M] (e.g. P_m) for the all-dropped rule.
      graph_index: int32 [N] dialogue of each node; num_graphs: static G.
      Returns (features [M, N, d], keep float [G, M], executed bool []):
      Z_m <- keep Z_m / (1 - theta) with theta = mean(q) treated as a constant; when not
      executed the features are unchanged and keep is all ones.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> z = jnp.ones((3, 4, 2))                       # 3 modalities, 4 nodes, width 2
      >>> out, keep, executed = ModalityDropout(p_exe=1.0).apply(
      ...     {}, z, jnp.array([0.5, 0.2, 0.0]), jnp.array([0.9, 0.6, 0.3]),
      ...     jnp.array([0, 0, 1, 1]), 2, deterministic=False,
      ...     rngs={"balance": jax.random.PRNGKey(0)})
      >>> out.shape, keep.shape, bool(executed), bool((keep.max(axis=1) == 1).all())
      ((3, 4, 2), (2, 3), True, True)
    """

    p_exe: float = 0.5

    @nn.compact
    def __call__(self, features, q, strength, graph_index, num_graphs: int, *,
                 deterministic: bool):
        chex.assert_rank(features, 3)
        ones = jnp.ones((num_graphs, features.shape[0]), features.dtype)
        if deterministic:
            return features, ones, jnp.asarray(False)
        key_exe, key_keep = jax.random.split(self.make_rng("balance"))
        execute = jax.random.uniform(key_exe) < self.p_exe
        q = jax.lax.stop_gradient(q)
        keep = modality_keep_mask(key_keep, q, strength, num_graphs).astype(features.dtype)
        keep = jnp.where(execute, keep, ones)
        scale = jnp.where(execute, 1.0 / jnp.maximum(1.0 - q.mean(), 1e-6), 1.0)
        return features * keep.T[:, graph_index, None] * scale, keep, execute
