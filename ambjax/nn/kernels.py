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

With a band, the attention can stay in the blocks from its scores to the aggregation
(`band_edge_slots`, `band_receivers`, `band_windows`, `band_softmax`, `band_nodes`): no scatter
of float values forward or backward, which XLA's CPU backend compiles into fewer kernels.
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


def band_chunks(band: int, num_nodes: int) -> tuple[int, int]:
    """(K, C): the banded kernels cut `num_nodes` flat nodes into K chunks of C receivers
    (`band_chunk_size`); chunk k's senders lie in the W = C + 2 band nodes around it, entry
    (k, i, w) of a block joining receiver k C + i and sender k C + w - band."""
    c = band_chunk_size(band, num_nodes)
    return -(-num_nodes // c), c


def band_windows(values: jax.Array, band: int) -> jax.Array:
    """The senders of every chunk: values [N, F] -> [K, C + 2 band, F] (slices of the padded
    nodes, no gather, so the backward pass is slices and pads too; out-of-range senders are
    zeros)."""
    n, f = values.shape
    k, c = band_chunks(band, n)
    padded = jnp.pad(values, ((band, (k + 1) * c - n - band), (0, 0)))
    chunks = padded.reshape(k + 1, c, f)
    return jnp.concatenate([chunks[:-1], chunks[1:, :2 * band]], axis=1)


def band_receivers(values: jax.Array, band: int) -> jax.Array:
    """The receivers of every chunk: values [N, ...] -> [K, C, ...] (padded with zeros)."""
    n = values.shape[0]
    k, c = band_chunks(band, n)
    pad = [(0, k * c - n)] + [(0, 0)] * (values.ndim - 1)
    return jnp.pad(values, pad).reshape(k, c, *values.shape[1:])


def band_nodes(blocks: jax.Array, num_nodes: int) -> jax.Array:
    """Per-receiver results back to the flat nodes: [K, C, F] -> [N, F]."""
    k, c, f = blocks.shape
    out = blocks.reshape(k * c, f)
    return out if k * c == num_nodes else out[:num_nodes]


def band_entries(senders: jax.Array, receivers: jax.Array, band: int,
                 chunk_size: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The banded-block entry (chunk, row, column) of every edge: three int32 [E]."""
    chunk = receivers // chunk_size
    return chunk, receivers - chunk * chunk_size, senders - chunk * chunk_size + band


def band_edge_slots(senders: jax.Array, receivers: jax.Array, band: int,
                    num_nodes: int) -> jax.Array:
    """Which edge sits at each entry of the banded blocks: int32 [K, C, C + 2 band], the edge's
    index in [E], -1 where no edge joins the entry's receiver and sender.

    Edges of one graph join distinct (receiver, sender) pairs, except padding edges (all on the
    spare padding node), of which the entry keeps one. Integer-valued: no gradient."""
    chex.assert_rank([senders, receivers], 1)
    k, c = band_chunks(band, num_nodes)
    return jnp.full((k, c, c + 2 * band), -1, jnp.int32).at[
        band_entries(senders, receivers, band, c)].set(
        jnp.arange(receivers.shape[0], dtype=jnp.int32))


def band_softmax(scores: jax.Array, present: jax.Array) -> jax.Array:
    """Softmax of `scores` over the last axis among the `present` entries (the in-edges of a
    receiver in banded blocks [K, C, W]); absent entries and receivers without any in-edge get 0.

    The same values as `segment_softmax` over the edges, up to float rounding; dense
    reductions instead of scatters, which XLA compiles into fewer kernels. The gradient does
    not flow through the maximum (it cancels). Absent entries change nothing, neither the
    values nor the gradient: they are masked before the exponential, so an absent score far
    above the present ones (the banded blocks hold scores for every pair in the band) cannot
    overflow it to inf, whose masked gradient would be 0 * inf = nan."""
    chex.assert_equal_shape([scores, present])
    peak = jnp.max(jnp.where(present, scores, -jnp.inf), axis=-1, keepdims=True)
    peak = jax.lax.stop_gradient(jnp.where(jnp.isfinite(peak), peak, 0.0))
    exp = jnp.exp(jnp.where(present, scores - peak, -jnp.inf))
    total = jnp.sum(exp, axis=-1, keepdims=True)
    return exp / jnp.where(total > 0, total, 1.0)


def banded_aggregate(weights: jax.Array, values: jax.Array, senders: jax.Array,
                     receivers: jax.Array, band: int) -> jax.Array:
    """sum_j A_ij values_j when every edge has |sender - receiver| <= `band` (static).

    The edge weights are scattered into the banded blocks (`band_chunks`), and the sum is one
    batched matmul [K, C, C + 2 band] @ [K, C + 2 band, F] with the senders' windows
    (`band_windows`): about N (C + 2 band) F multiply-adds, where the per-dialogue dense blocks
    need G L^2 F. Edges outside the band would be dropped: callers guarantee the band
    (`build_batch` checks it).

    Args:
      weights: float [E]; values: float [N, F]; senders, receivers: int32 [E].

    Returns:
      [N, F] in the dtype of `weights`.
    """
    n = values.shape[0]
    k, c = band_chunks(band, n)
    blocks = jnp.zeros((k, c, c + 2 * band), weights.dtype).at[
        band_entries(senders, receivers, band, c)].add(weights)
    return band_nodes(blocks @ band_windows(values.astype(weights.dtype), band), n)


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
