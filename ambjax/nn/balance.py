"""Adaptive modality balancing (DESIGN.md section 7).

1. Each modality's contribution P_m is the weighted F1 of its head's arg-max over the real
   utterances of the (global) batch, from confusion counts summed across devices first
   (`ambjax.metrics.modality_f1`).
2. Drop probabilities, for each m over the other modalities j with P_j >= 1e-5:
       rho_mj = P_m / (P_j + 1e-5) - 1;  w_m. = softmax_j(ReLU(rho_mj))
       rhobar_m = (sum_j w_mj ReLU(rho_mj)) / |J|       (the release's reading, see below)
       q_m = clip(q_base (1 + lambda_q rhobar_m), 0, 1) if rhobar_m > 0 else 0
3. `ModalityDropout`: with probability p_exe (one draw per batch), theta = mean_m q_m and, per
   dialogue and modality, keep ~ Bernoulli(1 - q_m); Z_m <- keep Z_m / (1 - theta).
   A dialogue that would lose every modality keeps its strongest one (the release would crash).
4. When dropping ran, each modality's logits are recomputed from its kept features.

`ModalityBalancing` is the whole recipe (1-4) as one unit; AMB-DSGDN and models composed from
ambjax's pieces (`experiments/compose.py`) use it alike.

Release details reproduced by `drop_probabilities` (checked against the release's q-table): the
weighted sum uses the rectified ratios, rhobar_m = (sum_j w_mj ReLU(rho_mj)) / |J| (DESIGN.md
writes rho_mj; the two differ only when some rho_mj < 0); the 1e-5 threshold is compared in
double precision, so a float32 P equal to float32(1e-5) (just below 1e-5) is skipped; the
arithmetic is float32.
"""

from __future__ import annotations

from typing import Callable, Mapping

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ambjax.errors import ConfigError
from ambjax.metrics import modality_f1

PERF_EPS = 1e-5
# Smallest float32 that is >= 1e-5 as a real number (float32(1e-5) itself is just below it).
_PERF_THRESHOLD = float(np.nextafter(np.float32(PERF_EPS), np.float32(1.0))
                        if float(np.float32(PERF_EPS)) < PERF_EPS else np.float32(PERF_EPS))


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
        raise ConfigError(f"perf must be a vector [M], got shape {perf.shape}")
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


class ModalityBalancing(nn.Module):
    """Adaptive modality balancing as one unit: P_m -> q_m -> `ModalityDropout` -> re-classify.

    Attributes:
      q_base, lam: drop-probability constants (`drop_probabilities`).
      p_exe: probability that dropping is executed for a batch.

    Call (rng stream "balance"; training only):
      features: {m: float [N, d]} per-modality representations Z_m (M entries, in order).
      logits: {m: float [N, C]} each modality's logits from `features`.
      classify: maps {m: [N, d]} to {m: [N, C]} (the caller's heads, applied to kept features).
      labels: int32 [N]; mask: bool [N] real utterances; graph_index: int32 [N] dialogue of
        each node; num_graphs: static G.
      active: bool scalar (may be traced): balancing on (after warm-up) or off.
      axis_name: pmap axis whose devices' confusion counts are summed (None: one device).

    Returns:
      (logits {m: [N, C]} after balancing, P_m float32 [M], q float32 [M] (0 when inactive),
      keep float32 [G, M] (ones unless dropping ran)).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> z = {"text": jnp.ones((4, 2)), "audio": -jnp.ones((4, 2))}
      >>> head = lambda feats: {m: jnp.concatenate([x, -x], -1) for m, x in feats.items()}
      >>> logits, f1, q, keep = ModalityBalancing(p_exe=1.0).apply(
      ...     {}, z, head(z), head, jnp.array([0, 0, 1, 1]), jnp.ones(4, bool),
      ...     jnp.array([0, 0, 1, 1]), 2, active=True, rngs={"balance": jax.random.PRNGKey(0)})
      >>> f1.shape, q.shape, keep.shape, sorted(logits)
      ((2,), (2,), (2, 2), ['audio', 'text'])
    """

    q_base: float = 0.3
    lam: float = 0.9
    p_exe: float = 0.5

    @nn.compact
    def __call__(self, features: Mapping[str, jax.Array], logits: Mapping[str, jax.Array],
                 classify: Callable[[dict], dict], labels: jax.Array, mask: jax.Array,
                 graph_index: jax.Array, num_graphs: int, *, active, axis_name=None):
        names = tuple(features)
        first = logits[names[0]]
        f1 = modality_f1(labels, [logits[m] for m in names], mask, first.shape[-1], axis_name)
        active = jnp.asarray(active)
        q = jnp.where(active, drop_probabilities(f1, self.q_base, self.lam), 0.0)
        dropped, keep, executed = ModalityDropout(self.p_exe, name="dropout")(
            jnp.stack([features[m] for m in names]), q, f1, graph_index, num_graphs,
            deterministic=False)
        executed = active & executed
        keep = jnp.where(executed, keep, 1.0)
        relogits = classify(dict(zip(names, dropped)))
        out = {m: jnp.where(executed, relogits[m], logits[m]) for m in names}
        return out, f1, q, keep
