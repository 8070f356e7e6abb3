"""Differential graph attention (DESIGN.md section 4) over padded `jraph.GraphsTuple`s.

For a layer of width `out` on a graph with nodes H [N, D] and typed edges j -> i:

    Wh = H W;  [P | Q] = split(Wh, 2)                              # [N, out/2] each
    e1_ij = LeakyReLU_0.2(a1_L . P_i + a1_R . P_j + b1 . r_ij)      # r_ij = RelEmb(type_ij)
    e2_ij = LeakyReLU_0.2(a2_L . Q_i + a2_R . Q_j + b2 . r_ij)
    alpha_k = softmax of e_k over the in-edges of i
    lambda = exp(lL1 . lR1) - exp(lL2 . lR2) + lambda_init
    A = Dropout(alpha1 - lambda alpha2)                            # not renormalised
    H' = GELU(Norm(sum_j A_ij Wh_j) * (1 - lambda_init))

"Left" scores belong to the receiving node i, "right" to the sender j, as in the release (its
dense score matrix has the receiver on the row). The release's choices are the defaults:
`lambda_init = 0.8 - 0.6 exp(-0.3 depth)` with depth 1 for every layer (0.3555...), a full-width
LayerNorm (eps 1e-5) and the exact (erf) GELU. Switches give the DIFF-Transformer reading of the
paper: `norm="rmsnorm"` (RMSNorm over each of the two halves, i.e. per head) and a
layer-dependent depth (set by the caller through `lambda_init`). `differential=False` pins
lambda to 0 and drops the second map: ordinary (relational) graph attention.
"""

from __future__ import annotations

import math

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import jraph
import numpy as np

from ambjax.graphs.edges import NUM_EDGE_TYPES

RELATION_DIM = 10
NEGATIVE_SLOPE = 0.2


def lambda_init_for_depth(depth: int) -> float:
    """DIFF-Transformer's lambda_init = 0.8 - 0.6 exp(-0.3 depth); the release uses depth 1."""
    return 0.8 - 0.6 * math.exp(-0.3 * depth)


LAMBDA_INIT_OFFICIAL = lambda_init_for_depth(1)


def segment_softmax(scores: jax.Array, segment_ids: jax.Array, num_segments: int) -> jax.Array:
    """Softmax of `scores` [E] within each segment (the in-edges of one receiver).

    Args:
      scores: float [E].
      segment_ids: int32 [E] receiver of each edge.
      num_segments: static number of nodes N.

    Returns:
      float [E]; entries of one segment sum to 1.

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


def differential_lambda(lambda_q1: jax.Array, lambda_k1: jax.Array, lambda_q2: jax.Array,
                        lambda_k2: jax.Array, lambda_init: float) -> jax.Array:
    """lambda = exp(lq1 . lk1) - exp(lq2 . lk2) + lambda_init (a scalar)."""
    return (jnp.exp(jnp.sum(lambda_q1 * lambda_k1)) - jnp.exp(jnp.sum(lambda_q2 * lambda_k2))
            + lambda_init)


def edge_attention(half: jax.Array, a_left: jax.Array, a_right: jax.Array, rel_scores: jax.Array,
                   graph: jraph.GraphsTuple) -> jax.Array:
    """Attention weights alpha [E] of one map: segment softmax of the LeakyReLU edge scores.

    Args:
      half: float [N, out/2] (P or Q).
      a_left, a_right: float [out/2] receiver and sender score vectors.
      rel_scores: float [NUM_EDGE_TYPES] score of each edge type (b . RelEmb).
      graph: the graph (senders, receivers, edges["type"]).
    """
    left = half @ a_left
    right = half @ a_right
    scores = left[graph.receivers] + right[graph.senders] + rel_scores[graph.edges["type"]]
    scores = jax.nn.leaky_relu(scores, NEGATIVE_SLOPE)
    return segment_softmax(scores, graph.receivers, half.shape[0])


def dense_slots(dense_index: jax.Array, num_nodes: int) -> tuple[jax.Array, jax.Array]:
    """(dialogue, position) slot of every node, inverted from a batch's `dense_index` [G, L].

    Nodes absent from the index (padding) get the last slot (G - 1, L - 1), which belongs to the
    padding graph; the padding node that padding slots point at gets one of those slots. So no
    padding node ever shares a slot with a real node.

    Returns:
      int32 [N] slot dialogue, int32 [N] slot position.
    """
    g, l = dense_index.shape
    flat = dense_index.reshape(-1)
    slot_graph = jnp.full((num_nodes,), g - 1, jnp.int32).at[flat].set(
        jnp.repeat(jnp.arange(g, dtype=jnp.int32), l))
    slot_pos = jnp.full((num_nodes,), l - 1, jnp.int32).at[flat].set(
        jnp.tile(jnp.arange(l, dtype=jnp.int32), g))
    return slot_graph, slot_pos


def band_chunk_size(band: int) -> int:
    """Receivers per block of the banded aggregation: max(16, 2 * band rounded up to 8)."""
    return max(16, -(-2 * band // 8) * 8)


def banded_aggregate(weights: jax.Array, values: jax.Array, senders: jax.Array,
                     receivers: jax.Array, band: int) -> jax.Array:
    """sum_j A_ij values_j when every edge has |sender - receiver| <= `band` (static).

    The flat nodes are cut into K chunks of C receivers (`band_chunk_size`); chunk k's senders
    lie in the C + 2 band nodes around it, so the sum is one batched matmul
    [K, C, C + 2 band] @ [K, C + 2 band, F]: about N (C + 2 band) F multiply-adds, where the
    per-dialogue dense blocks need G L^2 F. Edges outside the band would be dropped: callers
    guarantee the band (`build_batch` checks it).

    Args:
      weights: float [E]; values: float [N, F]; senders, receivers: int32 [E].

    Returns:
      [N, F] in the dtype of `weights`.
    """
    n, f = values.shape
    c = band_chunk_size(band)
    k = -(-n // c)
    width = c + 2 * band
    chunk = receivers // c
    blocks = jnp.zeros((k, c, width), weights.dtype).at[
        chunk, receivers - chunk * c, senders - chunk * c + band].add(weights)
    padded = jnp.pad(values.astype(weights.dtype), ((band, k * c - n + band), (0, 0)))
    windows = padded[np.arange(k)[:, None] * c + np.arange(width)[None, :]]   # [K, C + 2B, F]
    return (blocks @ windows).reshape(k * c, f)[:n]


def aggregate(weights: jax.Array, values: jax.Array, graph: jraph.GraphsTuple) -> jax.Array:
    """sum_j A_ij values_j over the edges j -> i: weights [E], values [N, F] -> [N, F].

    Three exact ways, chosen from what `graph.globals` promises:
    - "band_offsets" [2B + 1] (batches from `GraphBatcher`, whose budgets carry the edge
      window B): `banded_aggregate`, the cheapest;
    - "dense_index" [G, L]: a batched matmul over per-dialogue [L, L] weight blocks;
    - neither: a segment sum over edges, which moves E x F values (and E x F in the backward
      scatter), much slower with XLA on CPU and GPU.
    """
    glob = graph.globals if isinstance(graph.globals, dict) else {}
    if "band_offsets" in glob:
        band = (glob["band_offsets"].shape[-1] - 1) // 2
        return banded_aggregate(weights, values, graph.senders, graph.receivers, band)
    if "dense_index" not in glob:
        return jax.ops.segment_sum(weights[:, None] * values[graph.senders], graph.receivers,
                                   num_segments=values.shape[0])
    dense_index = glob["dense_index"]
    g, l = dense_index.shape
    slot_graph, slot_pos = dense_slots(dense_index, values.shape[0])
    blocks = jnp.zeros((g, l, l), weights.dtype).at[
        slot_graph[graph.receivers], slot_pos[graph.receivers], slot_pos[graph.senders]].add(weights)
    out = blocks @ values[dense_index].astype(weights.dtype)          # [G, L, F]
    return out[slot_graph, slot_pos]


class DifferentialGraphAttention(nn.Module):
    """One differential graph attention layer (DESIGN.md section 4).

    Attributes:
      features: output width `out` (even).
      lambda_init: see module docstring (default: the release's 0.3555...).
      dropout_rate: dropout on the attention weights A (rng stream "dropout").
      differential: False pins lambda to 0 (plain relational graph attention).
      norm: "layernorm" (release, over all `out` features) or "rmsnorm" (per half/head).
      dtype: computation dtype of the projection and the aggregation (e.g. jnp.bfloat16);
        attention scores, softmax and the norm's statistics stay float32, parameters are
        float32. The output has this dtype.

    Call:
      graph: `jraph.GraphsTuple` with nodes float [N, D], edges {"type": int32 [E]},
        senders/receivers int32 [E] (every real node needs an in-edge, e.g. its self-loop).
      deterministic: disables dropout.
      Returns float [N, features].

    Example:
      >>> import jax, jax.numpy as jnp, jraph
      >>> from ambjax.graphs import dialogue_edges
      >>> e = dialogue_edges([0, 1, 0, 1], window=1, graph="inter")
      >>> graph = jraph.GraphsTuple(nodes=jnp.ones((4, 6)), edges={"type": jnp.asarray(e.types)},
      ...     senders=jnp.asarray(e.senders), receivers=jnp.asarray(e.receivers),
      ...     globals=None, n_node=jnp.array([4]), n_edge=jnp.array([len(e.types)]))
      >>> layer = DifferentialGraphAttention(features=8)
      >>> params = layer.init(jax.random.PRNGKey(0), graph)
      >>> layer.apply(params, graph).shape
      (4, 8)
      >>> layer.apply(params, graph, deterministic=False,
      ...             rngs={"dropout": jax.random.PRNGKey(1)}).shape
      (4, 8)
    """

    features: int
    lambda_init: float = LAMBDA_INIT_OFFICIAL
    dropout_rate: float = 0.2
    differential: bool = True
    norm: str = "layernorm"
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, graph: jraph.GraphsTuple, *, deterministic: bool = True) -> jax.Array:
        h = graph.nodes.astype(self.dtype)
        chex.assert_rank(h, 2)
        if self.features % 2:
            raise ValueError(f"features must be even, got {self.features}")
        half = self.features // 2
        xavier = nn.initializers.variance_scaling(1.414 ** 2, "fan_avg", "uniform")
        w = self.param("W", xavier, (h.shape[-1], self.features))
        wh = h @ w.astype(self.dtype)
        rel_table = self.param("relation_embedding", nn.initializers.normal(1.0),
                               (NUM_EDGE_TYPES, RELATION_DIM))
        vec = nn.initializers.normal(0.1)
        maps = [("pos", wh[:, :half])] + ([("neg", wh[:, half:])] if self.differential else [])
        alphas = []
        for name, part in maps:
            a_left = self.param(f"a_left_{name}", vec, (half,))
            a_right = self.param(f"a_right_{name}", vec, (half,))
            a_rel = self.param(f"a_rel_{name}", vec, (RELATION_DIM,))
            alphas.append(edge_attention(part.astype(jnp.float32), a_left, a_right,
                                         rel_table @ a_rel, graph))
        weights = alphas[0]
        if self.differential:
            lam = differential_lambda(*(self.param(n, vec, (half,)) for n in (
                "lambda_left1", "lambda_right1", "lambda_left2", "lambda_right2")),
                lambda_init=self.lambda_init)
            weights = weights - lam * alphas[1]
        weights = nn.Dropout(self.dropout_rate)(weights, deterministic=deterministic)
        out = aggregate(weights.astype(self.dtype), wh, graph)
        if self.norm == "layernorm":
            out = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name="norm")(out)
        elif self.norm == "rmsnorm":
            out = nn.RMSNorm(epsilon=1e-5, dtype=self.dtype, name="norm")(
                out.reshape(-1, 2, half)).reshape(out.shape)
        else:
            raise ValueError(f"norm must be 'layernorm' or 'rmsnorm', got {self.norm!r}")
        return nn.gelu(out * (1.0 - self.lambda_init), approximate=False)
