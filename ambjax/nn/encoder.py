"""Audio/visual context encoder and the sigmoid gate (DESIGN.md sections 3 and 5).

Release numerics: the sinusoid table has sine on even and cosine on odd features (base 10000);
one pre-norm transformer layer whose attention is scaled by 1/sqrt(d / heads), fills padded keys
with -1e10, adds its output to the un-normalised input, and whose feed-forward (width d) uses
LayerNorm(eps=1e-6) and the tanh-approximate GELU.

Nodes live in the flat layout of a `DialogueBatch`. The position-wise parts (projections,
feed-forward, norms) run on the flat [N, d] nodes; only attention scores and weighted sums use
the dense [R, L, d] view given by the batch layout's `dense_index` (one row per dialogue slot,
or several whole dialogues per row when the layout is `packed`): keys of other dialogues and
padding keys are masked, so attention never crosses dialogues, and the view's padding slots
cost no projection work. A packed view draws the attention's dropout mask of the unpacked one
(one row per dialogue) and reads each entry's bit from its dialogue's slot, so packing changes
no random draw: the same batch gives the same result packed or not, up to float rounding.
"""

from __future__ import annotations

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from ambjax.nn.dropout import RemappedDropout
from ambjax.nn.kernels import dense_slots

MASK_FILL = -1e10


def sinusoid_position_encoding(positions: jax.Array, features: int) -> jax.Array:
    """Standard sinusoid encoding: int [N] positions -> float32 [N, features]."""
    div_term = jnp.exp(jnp.arange(0, features, 2, dtype=jnp.float32)
                       * -(jnp.log(10000.0) / features))
    angles = positions.astype(jnp.float32)[:, None] * div_term[None, :]
    # sines in the even columns, cosines in the odd ones, interleaved by a reshape (strided
    # `.at[].set` writes are scatters, a kernel of their own on XLA's CPU backend)
    both = jnp.stack([jnp.sin(angles), jnp.cos(angles)], axis=-1)
    return both.reshape(positions.shape[0], -1)[:, :features]


def to_dense(x: jax.Array, dense_index: jax.Array) -> jax.Array:
    """Flat nodes [N, F] -> dense [G, L, F] (padding entries hold a padding node's row)."""
    return x[dense_index]


def from_dense(x: jax.Array, row: jax.Array, column: jax.Array) -> jax.Array:
    """Dense [R, L, F] -> flat nodes [N, F] (node n reads slot row[n], column[n])."""
    return x[row, column]


class DialogueSelfAttention(nn.Module):
    """Multi-head self-attention inside each dialogue with a key-padding mask.

    The projections run on the flat nodes; only the scores and the weighted sum use the dense
    per-dialogue view, so padding slots of that view cost no projection arithmetic.

    Call:
      x: float [N, d] flat nodes.
      nodes: the batch's `Nodes` (uses mask, graph, position).
      layout: the batch's `DialogueLayout` (dense_index int32 [R, L]; `packed`).
      Returns [N, d] in `dtype` (the projections' computation dtype; scores and softmax are
      float32).
    """

    num_heads: int
    dropout_rate: float = 0.0
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, nodes, layout, *, deterministic: bool) -> jax.Array:
        dense_index = layout.dense_index
        chex.assert_rank([x, dense_index], 2)
        r, l = dense_index.shape
        d = x.shape[-1]
        dh = d // self.num_heads

        def project(name):
            flat = nn.Dense(d, dtype=self.dtype, name=name)(x)
            return to_dense(flat, dense_index).reshape(r, l, self.num_heads, dh).transpose(
                0, 2, 1, 3)

        k, v, q = project("key"), project("value"), project("query")
        scores = (q / jnp.sqrt(jnp.asarray(dh, q.dtype))) @ k.transpose(0, 1, 3, 2)
        key_mask = to_dense(nodes.mask, dense_index)[:, None, :]               # [R, 1, L]
        if layout.packed:
            dialogue = to_dense(nodes.graph, dense_index)                      # [R, L]
            key_mask = key_mask & (dialogue[:, :, None] == dialogue[:, None, :])
        scores = jnp.where(key_mask[:, None], scores.astype(jnp.float32), MASK_FILL)
        attn = jax.nn.softmax(scores, axis=-1)                                 # [R, heads, L, L]
        if layout.packed:     # the unpacked view's mask [G, heads, L, L], read per slot
            position = to_dense(nodes.position, dense_index)                   # [R, L]
            heads = jnp.arange(self.num_heads)[None, :, None, None]
            attn = RemappedDropout(self.dropout_rate, name="Dropout_0")(
                attn, (layout.n_graph, self.num_heads, l, l),
                (dialogue[:, None, :, None], heads, position[:, None, :, None],
                 position[:, None, None, :]), deterministic=deterministic)
        else:
            attn = nn.Dropout(self.dropout_rate)(attn, deterministic=deterministic)
        context = (attn.astype(self.dtype) @ v).transpose(0, 2, 1, 3).reshape(r, l, d)
        if layout.packed:
            row, column = dense_slots(dense_index, x.shape[0])
        else:
            row, column = nodes.graph, nodes.position
        return nn.Dense(d, dtype=self.dtype, name="out")(from_dense(context, row, column))


class ContextEncoder(nn.Module):
    """X = Dropout(X + sinusoid(position) + speaker_emb); one transformer encoder layer.

    Attributes:
      num_heads: attention heads (release 8).
      dropout_rate: the encoder dropout p (release: IEMOCAP 0.5, MELD 0.11).
      dtype: computation dtype of the dense layers (parameters stay float32).

    Call:
      x: float [N, d] projected modality features (flat nodes).
      speaker_embedding: float [N, d].
      nodes: the batch's `Nodes` (uses position, graph, mask).
      layout: the batch's `DialogueLayout`.
      Returns [N, d] in `dtype`.
    """

    num_heads: int = 8
    dropout_rate: float = 0.5
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, speaker_embedding, nodes, layout, *, deterministic: bool):
        chex.assert_equal_shape([x, speaker_embedding])
        d = x.shape[-1]
        drop = nn.Dropout(self.dropout_rate)
        x = (x + sinusoid_position_encoding(nodes.position, d) + speaker_embedding
             ).astype(self.dtype)
        x = drop(x, deterministic=deterministic)
        context = DialogueSelfAttention(self.num_heads, self.dropout_rate, self.dtype,
                                        name="self_attn")(x, nodes, layout,
                                                          deterministic=deterministic)
        out = drop(context, deterministic=deterministic) + x
        inner = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name="ffn_norm")(out)
        inner = drop(nn.gelu(nn.Dense(d, dtype=self.dtype, name="ffn_in")(inner),
                             approximate=True), deterministic=deterministic)
        return drop(nn.Dense(d, dtype=self.dtype, name="ffn_out")(inner),
                    deterministic=deterministic) + out


class SigmoidGate(nn.Module):
    """g(x) = sigmoid(W x + b) * x, float [..., d] -> [..., d] (computed in `dtype`)."""

    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.astype(self.dtype)
        return jax.nn.sigmoid(nn.Dense(x.shape[-1], dtype=self.dtype, name="dense")(x)) * x
