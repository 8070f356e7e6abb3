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
from flax.traverse_util import flatten_dict, unflatten_dict

from ambjax.array_namespace import namespace
from ambjax.errors import ConfigError
from ambjax.graphs.batch import DialogueLayout
from ambjax.graphs.edges import NUM_EDGE_TYPES
from ambjax.nn.dropout import RemappedDropout
from ambjax.nn.kernels import (aggregate, band_edge_slots, band_entries, band_nodes,
                               band_receivers, band_softmax, band_windows, segment_softmax)

RELATION_DIM = 10
NEGATIVE_SLOPE = 0.2


def _layer_norm(out: jax.Array, half: int, dtype) -> jax.Array:
    return nn.LayerNorm(epsilon=1e-5, dtype=dtype, name="norm")(out)


def _rms_norm(out: jax.Array, half: int, dtype) -> jax.Array:
    # per map half (P and Q), as DIFF-Transformer's group norm
    return nn.RMSNorm(epsilon=1e-5, dtype=dtype, name="norm")(
        out.reshape(-1, 2, half)).reshape(out.shape)


# ModelConfig.norm -> the normalisation of the attention output [N, 2 half] (called inside
# the attention module's compact __call__, so its parameters are the module's "norm")
NORMS = {"layernorm": _layer_norm, "rmsnorm": _rms_norm}


def exact_gelu(x: jax.Array) -> jax.Array:
    """GELU with the exact normal CDF, x Phi(x) = x (1 + erf(x / sqrt 2)) / 2, elementwise.

    PyTorch's formula (the release's `nn.GELU()`); equal to
    `jax.nn.gelu(x, approximate=False)` to float rounding, which computes it through erfc, a
    costlier function on XLA's CPU backend (`python -m benchmarks.twins`).
    """
    return 0.5 * x * (1.0 + jax.lax.erf(x * jnp.asarray(1.0 / math.sqrt(2.0), x.dtype)))


def lambda_init_for_depth(depth: int) -> float:
    """DIFF-Transformer's lambda_init = 0.8 - 0.6 exp(-0.3 depth); the release uses depth 1."""
    return 0.8 - 0.6 * math.exp(-0.3 * depth)


LAMBDA_INIT_OFFICIAL = lambda_init_for_depth(1)


LAMBDA_PARAMS = ("lambda_left1", "lambda_right1", "lambda_left2", "lambda_right2")
"""The names of a differential layer's lambda vectors, in `differential_lambda`'s order."""


def differential_lambda(lambda_q1: jax.Array, lambda_k1: jax.Array, lambda_q2: jax.Array,
                        lambda_k2: jax.Array, lambda_init: float) -> jax.Array:
    """lambda = exp(lq1 . lk1) - exp(lq2 . lk2) + lambda_init: a scalar for vectors [h],
    [...] for vectors stacked along leading axes [..., h] (numpy arrays for numpy vectors,
    `ambjax.array_namespace`)."""
    xp = namespace(lambda_q1, lambda_k1, lambda_q2, lambda_k2)
    return (xp.exp(xp.sum(lambda_q1 * lambda_k1, -1))
            - xp.exp(xp.sum(lambda_q2 * lambda_k2, -1)) + lambda_init)


def lambda_parameters(params) -> dict:
    """The sub-tree of `params` holding only the differential layers' lambda vectors (a few
    numbers per layer: cheap to copy to the host, enough for `layer_lambdas`)."""
    flat = flatten_dict(params)
    return unflatten_dict({k: v for k, v in flat.items() if k[-1] in LAMBDA_PARAMS})


def layer_lambdas(params, lambda_init: float = LAMBDA_INIT_OFFICIAL) -> dict[str, jax.Array]:
    """The lambda of every differential attention layer in a parameter tree: {"a/b/c": float32
    [...]} keyed by the layer's path, one value per stacked member (modality streams carry a
    leading [M] axis). An instrument: how much of the second attention map each layer
    subtracts. Pure; works on any tree holding `DifferentialGraphAttention` parameters.
    """
    flat = flatten_dict(params)
    layers = sorted({k[:-1] for k in flat if k[-1] == LAMBDA_PARAMS[0]})
    return {"/".join(map(str, layer)): differential_lambda(
        *(flat[layer + (name,)] for name in LAMBDA_PARAMS), lambda_init=lambda_init)
        for layer in layers}


def attention_weights(model: nn.Module, params, *args, **kwargs) -> dict[str, jax.Array]:
    """Every differential attention layer's edge weights A = alpha1 - lambda alpha2 (before
    dropout; alpha1 alone without the second map) in one deterministic forward pass of
    `model.apply({"params": params}, *args, **kwargs)`: {"a/b/c": float32 [..., E]} keyed by
    the layer's path, with the leading axes of the layer's stacking (modality streams: [M]).
    An instrument: where each layer puts its attention, e.g. on planted neighbours.
    """
    _, state = model.apply({"params": params}, *args, mutable=["intermediates"], **kwargs)
    flat = flatten_dict(state.get("intermediates", {}))
    return {"/".join(map(str, k[:-1])): v[0] for k, v in flat.items() if k[-1] == "attention"}


def edge_share(weights: jax.Array, selected: jax.Array, receivers: jax.Array,
               real: jax.Array) -> jax.Array:
    """Share of each receiver's absolute attention |A| on the `selected` edges, averaged over
    the real receivers.

    Args:
      weights: float [E] edge weights (`attention_weights`); selected: bool [E];
      receivers: int32 [E]; real: bool [N] nodes to average over (e.g. the batch's mask).

    Returns:
      float32 [] in [0, 1].
    """
    chex.assert_rank([weights, selected, receivers, real], 1)
    chex.assert_equal_shape([weights, selected, receivers])
    n = real.shape[0]
    magnitude = jnp.abs(weights.astype(jnp.float32))
    total = jax.ops.segment_sum(magnitude, receivers, num_segments=n)
    chosen = jax.ops.segment_sum(jnp.where(selected, magnitude, 0.0), receivers, num_segments=n)
    share = jnp.where(total > 0, chosen / jnp.where(total > 0, total, 1.0), 0.0)
    return jnp.sum(jnp.where(real, share, 0.0)) / jnp.maximum(jnp.sum(real), 1)


@jax.custom_vjp
def node_scores(x: jax.Array, a: jax.Array) -> jax.Array:
    """x [N, H] . a [H, k] -> [N, k], each node's score under each of k vectors, as
    multiply-reduces over H (XLA fuses them and shares the kernel between layers, where a
    matrix-vector dot is a kernel of its own on the CPU backend). The gradient for `a` is the
    matrix product x^T g [H, k]: with k >= 2 a library call, not a generated kernel. Padding
    the N nodes moves its rounding as it moves every weight gradient's (about 1e-6 relative),
    where a multiply-reduce over N, which XLA splits between threads at points that depend on
    N, moved trained parameters by more (`tests/test_train.py`, merged buckets)."""
    return jnp.sum(x[:, None, :] * a.T, -1)


def _node_scores_forward(x, a):
    return node_scores(x, a), (x, a)


def _node_scores_backward(residuals, g):
    x, a = residuals
    grad_x = sum(g[:, j, None] * a[:, j] for j in range(a.shape[1]))
    return grad_x, jnp.einsum("nh,nk->hk", x, g)


node_scores.defvjp(_node_scores_forward, _node_scores_backward)


def edge_attention(half: jax.Array, a_left: jax.Array, a_right: jax.Array, rel_scores: jax.Array,
                   graph: jraph.GraphsTuple) -> jax.Array:
    """Attention weights alpha [E] of one map: segment softmax of the LeakyReLU edge scores.

    Args:
      half: float [N, out/2] (P or Q).
      a_left, a_right: float [out/2] receiver and sender score vectors.
      rel_scores: float [NUM_EDGE_TYPES] score of each edge type (b . RelEmb).
      graph: the graph (senders, receivers; `edges` int32 [E] edge types).
    """
    left, right = node_scores(half, jnp.stack([a_left, a_right], -1)).T
    scores = left[graph.receivers] + right[graph.senders] + rel_scores[graph.edges]
    scores = jax.nn.leaky_relu(scores, NEGATIVE_SLOPE)
    return segment_softmax(scores, graph.receivers, half.shape[0])


def band_edge_types(graph: jraph.GraphsTuple, band: int) -> tuple[jax.Array, jax.Array]:
    """Where `graph`'s edges (every one within `band` of its receiver) sit in the banded
    blocks (`ambjax.nn.kernels.band_chunks`): (slots, types), both int32 [K, C, C + 2 band],
    the edge index and the edge type of each entry, -1 where no edge. No gradient."""
    slots = band_edge_slots(graph.senders, graph.receivers, band, graph.nodes.shape[0])
    return slots, jnp.where(slots >= 0, jnp.asarray(graph.edges)[jnp.maximum(slots, 0)], -1)


def banded_edge_attention(half: jax.Array, a_left: jax.Array, a_right: jax.Array,
                          rel_scores: jax.Array, types: jax.Array, band: int) -> jax.Array:
    """`edge_attention` in the banded blocks: alpha float [K, C, C + 2 band], entry (k, i, w)
    the weight of the edge from sender k C + w - band to receiver k C + i (0 where none).

    Args:
      half: float [N, out/2]; a_left, a_right: float [out/2]; rel_scores: float
        [NUM_EDGE_TYPES]; types: int32 [K, C, C + 2 band] from `band_edge_types`.

    The same values as `edge_attention`, up to float rounding (the softmax sums in another
    order), with no scatter of float values forward or backward: each edge type's score is a
    one-hot product, the receivers' and senders' scores are reshapes and slices.
    """
    left, right = node_scores(half, jnp.stack([a_left, a_right], -1)).T
    left = band_receivers(left, band)                                       # [K, C]
    right = band_windows(right[:, None], band)[..., 0]                      # [K, C + 2 band]
    one_hot = (types[..., None] == jnp.arange(NUM_EDGE_TYPES)).astype(half.dtype)
    scores = left[:, :, None] + right[:, None, :] + one_hot @ rel_scores
    return band_softmax(jax.nn.leaky_relu(scores, NEGATIVE_SLOPE), types >= 0)


def _edge_values(blocks: jax.Array, graph: jraph.GraphsTuple, band: int) -> jax.Array:
    """The value of every edge [E] read from banded blocks [K, C, C + 2 band]."""
    return blocks[band_entries(graph.senders, graph.receivers, band, blocks.shape[1])]


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
      graph: `jraph.GraphsTuple` with nodes float [N, D], edges int32 [E] (edge types 0..5),
        senders/receivers int32 [E] (every real node needs an in-edge, e.g. its self-loop).
        With a `DialogueLayout` with a band in `globals` (batches of `GraphBatcher`) the
        weights stay in banded blocks (`banded_edge_attention`, `RemappedDropout`); otherwise
        they are per edge (`edge_attention`, `aggregate`). Both compute the same.
      deterministic: disables dropout.
      Returns float [N, features].

    Example:
      >>> import jax, jax.numpy as jnp, jraph
      >>> from ambjax.graphs import dialogue_edges
      >>> e = dialogue_edges([0, 1, 0, 1], window=1, graph="inter")
      >>> graph = jraph.GraphsTuple(nodes=jnp.ones((4, 6)), edges=jnp.asarray(e.types),
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
            raise ConfigError(f"features must be even, got {self.features}")
        half = self.features // 2
        xavier = nn.initializers.variance_scaling(1.414 ** 2, "fan_avg", "uniform")
        w = self.param("W", xavier, (h.shape[-1], self.features))
        wh = h @ w.astype(self.dtype)
        rel_table = self.param("relation_embedding", nn.initializers.normal(1.0),
                               (NUM_EDGE_TYPES, RELATION_DIM))
        vec = nn.initializers.normal(0.1)
        layout = graph.globals
        band = layout.band if isinstance(layout, DialogueLayout) else None
        if band is not None:          # the weights stay in banded blocks [K, C, C + 2 band]
            slots, types = band_edge_types(graph, band)
        maps = [("pos", wh[:, :half])] + ([("neg", wh[:, half:])] if self.differential else [])
        alphas = []
        for name, part in maps:
            a_left = self.param(f"a_left_{name}", vec, (half,))
            a_right = self.param(f"a_right_{name}", vec, (half,))
            a_rel = self.param(f"a_rel_{name}", vec, (RELATION_DIM,))
            scores = (part.astype(jnp.float32), a_left, a_right, jnp.sum(rel_table * a_rel, -1))
            alphas.append(edge_attention(*scores, graph) if band is None
                          else banded_edge_attention(*scores, types, band))
        weights = alphas[0]
        if self.differential:
            lam = differential_lambda(*(self.param(n, vec, (half,)) for n in LAMBDA_PARAMS),
                                      lambda_init=self.lambda_init)
            weights = weights - lam * alphas[1]
        if self.is_mutable_collection("intermediates"):
            # an instrument (`attention_weights`): the weight of every edge [E]
            self.sow("intermediates", "attention", weights if band is None
                     else _edge_values(weights, graph, band))
        if band is None:
            weights = nn.Dropout(self.dropout_rate)(weights, deterministic=deterministic)
            out = aggregate(weights.astype(self.dtype), wh, graph)
        else:
            # the edges' mask [E], read per slot (padding slots hold weight 0)
            weights = RemappedDropout(self.dropout_rate, name="Dropout_0")(
                weights, graph.senders.shape, jnp.maximum(slots, 0),
                deterministic=deterministic)
            out = band_nodes(weights.astype(self.dtype) @ band_windows(wh, band), h.shape[0])
        if self.norm not in NORMS:
            raise ConfigError(f"norm must be one of {list(NORMS)}, got {self.norm!r}")
        out = NORMS[self.norm](out, half, self.dtype)
        return exact_gelu(out * (1.0 - self.lambda_init))
