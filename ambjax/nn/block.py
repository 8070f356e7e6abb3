"""The differential relational block (DESIGN.md section 5), d -> d:

    R = H;  H = Dropout(H);  H = concat_k DiffGAT_k(H)      # `num_heads` layers, each d -> d
    H = Dropout(H);  H = DiffGAT_out(H)                    # num_heads * d -> d
    H = GELU(H);  H = Linear(H);  H = LayerNorm(H + R)

The GELU after `DiffGAT_out` is the release's second exact GELU (the layer already ends in one).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import jraph

from ambjax.nn.attention import LAMBDA_INIT_OFFICIAL, DifferentialGraphAttention, exact_gelu


class DifferentialRelationalBlock(nn.Module):
    """Multi-head differential graph attention with an output layer and a residual.

    Attributes:
      features: width d of input and output.
      num_heads: parallel attention layers (release: 2).
      dropout_rate: dropout before each attention stage and inside the layers (release: 0.2).
      lambda_init: lambda_init of the head layers; `out_lambda_init` that of the output layer
        (default: the same).
      differential, norm, dtype: forwarded to `DifferentialGraphAttention` (dtype also sets
        the computation dtype of the block's dense layer and norm; the output has it).

    Call:
      graph: `jraph.GraphsTuple` with nodes float [N, d]. Returns float [N, d].
      deterministic: False enables dropout (rng stream "dropout").

    Example:
      >>> import jax
      >>> from ambjax.data import make_synthetic
      >>> from ambjax.graphs import GraphBatcher
      >>> data = make_synthetic("meld", scale=0.01, dims={"text": 8, "audio": 8, "visual": 8})
      >>> batch = GraphBatcher(data, window=6, batch_size=4).build(data.split("test")[:4])
      >>> graph = batch.graph("inter", nodes=batch.nodes.features["text"])
      >>> block = DifferentialRelationalBlock(features=8)
      >>> params = block.init(jax.random.PRNGKey(0), graph)
      >>> block.apply(params, graph).shape == batch.nodes.features["text"].shape
      True
    """

    features: int
    num_heads: int = 2
    dropout_rate: float = 0.2
    lambda_init: float = LAMBDA_INIT_OFFICIAL
    out_lambda_init: float | None = None
    differential: bool = True
    norm: str = "layernorm"
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, graph: jraph.GraphsTuple, *, deterministic: bool = True) -> jax.Array:
        residual = graph.nodes.astype(self.dtype)
        drop = nn.Dropout(self.dropout_rate)

        def layer(name, lambda_init):
            return DifferentialGraphAttention(
                self.features, lambda_init=lambda_init, dropout_rate=self.dropout_rate,
                differential=self.differential, norm=self.norm, dtype=self.dtype,
                name=name)

        h = drop(residual, deterministic=deterministic)
        h = jnp.concatenate([layer(f"attention_{k}", self.lambda_init)(
            graph._replace(nodes=h), deterministic=deterministic)
            for k in range(self.num_heads)], axis=-1)
        h = drop(h, deterministic=deterministic)
        out_init = self.lambda_init if self.out_lambda_init is None else self.out_lambda_init
        h = layer("out_att", out_init)(graph._replace(nodes=h), deterministic=deterministic)
        h = nn.Dense(self.features, dtype=self.dtype, name="fc")(exact_gelu(h))
        return nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name="norm")(h + residual)
