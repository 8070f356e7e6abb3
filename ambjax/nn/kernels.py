"""Graph kernels over padded dialogue graphs: softmax over in-edges and the three exact ways to
aggregate edge-weighted messages, sum_j A_ij values_j over the edges j -> i.

- `banded_aggregate`: batched matmuls over [K, C, C + 2B] blocks of the flat node order, when
  every edge joins nodes at most B apart (batches from `GraphBatcher`); the cheapest.
- `dense_aggregate`: batched matmuls over per-dialogue [L, L] weight blocks.
- `segment_aggregate`: a segment sum over edges (any graph); moves E x F values (and E x F in
  the backward scatter), much slower with XLA on CPU and GPU.

`aggregate` picks one from the graph's `globals`: a `DialogueLayout` with a band -> banded,
without one -> dense, anything else (e.g. None in a hand-made GraphsTuple) -> segment.
All are pure, jit/vmap/grad-friendly, and give the same result (tests check it).
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import jraph

from ambjax.graphs.batch import DialogueLayout


def segment_softmax(scores: jax.Array, segment_ids: jax.Array, num_segments: int) -> jax.Array:
    """Softmax of `scores` [E] within each segment (the in-edges of one receiver).

    Args:
      scores: float [E].
      segment_ids: int32 [E] receiver of each edge.
      num_segments: static number of nodes N.

    Returns:
      float [E]; entries of one segment sum to 1.

    `jraph.segment_softmax` computes the same; this one stops the gradient through the
    segment maximum (it cancels), which measures faster forward + backward on CPU
    (`python -m benchmarks.twins`, results in benchmarks/results/twins-*), so it is kept.

    Example:
      >>> import jax.numpy as jnp
      >>> segment_softmax(jnp.array([0.0, 0.0, 5.0]), jnp.array([0, 0, 1]), 2).tolist()
      [0.5, 0.5, 1.0]
    """
    chex.assert_rank([scores, segment_ids], 1)
    peak = jax.ops.segment_max(scores, segment_ids, num_segments=num_segments)
    exp = jnp.exp(scores - jax.lax.stop_gradient(peak)[segment_ids])
    total = jax.ops.segment_sum(exp, segment_ids, num_segments=num_segments)
    return exp / total[segment_ids]


def dense_slots(dense_index: jax.Array, num_nodes: int) -> tuple[jax.Array, jax.Array]:
    """(row, column) slot of every node, inverted from a batch's `dense_index` [R, L] (one
    row per dialogue: its (dialogue, position)).

    Nodes absent from the index (padding) get the last slot (R - 1, L - 1); the padding node
    that padding slots point at (N - 1, the one padding edges use) gets one of the padding
    slots, so padding edges never touch a real node's slot. In a view with one row per
    dialogue the last slot belongs to the padding graph; in a packed view it may be a real
    node's, so an absent padding node may read that node's row (padding rows are meaningless
    either way, and absent padding nodes have no edges).

    Returns:
      int32 [N] slot row, int32 [N] slot column.
    """
    g, l = dense_index.shape
    flat = dense_index.reshape(-1)
    slot_graph = jnp.full((num_nodes,), g - 1, jnp.int32).at[flat].set(
        jnp.repeat(jnp.arange(g, dtype=jnp.int32), l))
    slot_pos = jnp.full((num_nodes,), l - 1, jnp.int32).at[flat].set(
        jnp.tile(jnp.arange(l, dtype=jnp.int32), g))
    return slot_graph, slot_pos


def band_chunk_size(band: int, num_nodes: int | None = None) -> int:
    """Receivers per block of the banded aggregation: C = max(16, 2 * band rounded up to 8), or
    the next multiple of 8 up to 1.5 C that divides `num_nodes` (then the chunks tile the nodes
    exactly and the result needs no slicing, which XLA's CPU backend runs slowly after a
    batched matmul)."""
    base = max(16, -(-2 * band // 8) * 8)
    if num_nodes:
        for c in range(base, base + base // 2 + 1, 8):
            if num_nodes % c == 0:
                return c
    return base


def banded_aggregate(weights: jax.Array, values: jax.Array, senders: jax.Array,
                     receivers: jax.Array, band: int) -> jax.Array:
    """sum_j A_ij values_j when every edge has |sender - receiver| <= `band` (static).

    The flat nodes are cut into K chunks of C receivers (`band_chunk_size`, C >= 2 band);
    chunk k's senders lie in the C + 2 band nodes around it (its own chunk and the first
    2 band nodes of the next, in the node order shifted by band), so the sum is one batched
    matmul [K, C, C + 2 band] @ [K, C + 2 band, F]: about N (C + 2 band) F multiply-adds, where
    the per-dialogue dense blocks need G L^2 F. The windows are slices of the padded nodes (no
    gather), so the backward pass is slices and pads too. Edges outside the band would be
    dropped: callers guarantee the band (`build_batch` checks it).

    Args:
      weights: float [E]; values: float [N, F]; senders, receivers: int32 [E].

    Returns:
      [N, F] in the dtype of `weights`.
    """
    n, f = values.shape
    c = band_chunk_size(band, n)
    k = -(-n // c)
    chunk = receivers // c
    blocks = jnp.zeros((k, c, c + 2 * band), weights.dtype).at[
        chunk, receivers - chunk * c, senders - chunk * c + band].add(weights)
    padded = jnp.pad(values.astype(weights.dtype), ((band, (k + 1) * c - n - band), (0, 0)))
    chunks = padded.reshape(k + 1, c, f)
    windows = jnp.concatenate([chunks[:-1], chunks[1:, :2 * band]], axis=1)   # [K, C + 2B, F]
    out = (blocks @ windows).reshape(k * c, f)
    return out if k * c == n else out[:n]


def dense_aggregate(weights: jax.Array, values: jax.Array, senders: jax.Array,
                    receivers: jax.Array, dense_index: jax.Array) -> jax.Array:
    """sum_j A_ij values_j as a batched matmul over the [L, L] blocks of the dense view's rows.

    Args:
      weights: float [E]; values: float [N, F]; senders, receivers: int32 [E] (edges stay
        inside one dialogue, so inside one row); dense_index: int32 [R, L] (see
        `DialogueLayout`).

    Returns:
      [N, F] in the dtype of `weights`.
    """
    g, l = dense_index.shape
    slot_graph, slot_pos = dense_slots(dense_index, values.shape[0])
    blocks = jnp.zeros((g, l, l), weights.dtype).at[
        slot_graph[receivers], slot_pos[receivers], slot_pos[senders]].add(weights)
    out = blocks @ values[dense_index].astype(weights.dtype)          # [R, L, F]
    return out[slot_graph, slot_pos]


def segment_aggregate(weights: jax.Array, values: jax.Array, senders: jax.Array,
                      receivers: jax.Array) -> jax.Array:
    """sum_j A_ij values_j as a segment sum over edges: weights [E], values [N, F] -> [N, F]."""
    return jax.ops.segment_sum(weights[:, None] * values[senders].astype(weights.dtype),
                               receivers, num_segments=values.shape[0])


def aggregate(weights: jax.Array, values: jax.Array, graph: jraph.GraphsTuple) -> jax.Array:
    """sum_j A_ij values_j over the edges j -> i of `graph`: weights [E], values [N, F] ->
    [N, F], by the cheapest exact kernel that `graph.globals` allows (see the module
    docstring)."""
    layout = graph.globals
    if not isinstance(layout, DialogueLayout):
        return segment_aggregate(weights, values, graph.senders, graph.receivers)
    if layout.band is not None:
        return banded_aggregate(weights, values, graph.senders, graph.receivers, layout.band)
    return dense_aggregate(weights, values, graph.senders, graph.receivers, layout.dense_index)
