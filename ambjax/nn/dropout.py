"""Dropout whose mask is drawn in one layout and applied in another.

A computation that moves values into another layout (a packed dense view, banded blocks) would
draw other random bits with `flax.linen.Dropout` and so change every trained number.
`RemappedDropout` draws the mask `flax.linen.Dropout` draws for the original layout (same rng
stream, same shape, same arithmetic) and reads each entry's bit from where that entry came
from, so both layouts drop the same values.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp


class RemappedDropout(nn.Module):
    """Dropout of `x` with the bits of the mask `flax.linen.Dropout` draws for an array of
    shape `mask_shape` (rng stream "dropout"), entry by entry at `index`.

    Call:
      x: float [...]; mask_shape: the original layout's shape (static); index: integer
        arrays (a numpy advanced index into the mask) whose broadcast shape is x's;
        deterministic: no dropout.
      Returns x with its dropped entries 0 and the kept ones scaled by 1 / (1 - rate).

    Example (the mask of a [4] array, applied to it reversed):
      >>> import flax.linen as nn, jax, jax.numpy as jnp
      >>> x, rngs = jnp.arange(1.0, 5.0), {"dropout": jax.random.PRNGKey(0)}
      >>> out = RemappedDropout(0.5).apply({}, x[::-1], (4,), jnp.arange(3, -1, -1),
      ...                                  deterministic=False, rngs=rngs)
      >>> plain = nn.Dropout(0.5).apply({}, x, deterministic=False, rngs=rngs)
      >>> bool((out == plain[::-1]).all())
      True
    """

    rate: float

    @nn.compact
    def __call__(self, x: jax.Array, mask_shape: tuple[int, ...], index, *,
                 deterministic: bool) -> jax.Array:
        if deterministic or self.rate == 0.0:
            return x
        if self.rate == 1.0:
            return jnp.zeros_like(x)
        keep_prob = 1.0 - self.rate
        keep = jax.random.bernoulli(self.make_rng("dropout"), p=keep_prob, shape=mask_shape)
        return jax.lax.select(keep[index], x / keep_prob, jnp.zeros_like(x))
