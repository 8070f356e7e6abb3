"""A counter-based hash PRNG for dropout masks, as a JAX key implementation.

On CPU, XLA generates random bits slowly: threefry and RngBitGenerator ("rbg") cost several
nanoseconds per 32-bit word, and a training step of AMB-DSGDN draws millions of them for its
dropout masks. `HASH_PRNG` computes word i of a draw as a hash of (i, key):

    x = mix(i * 0x9E3779B9 + k0) ^ k1;  bits_i = mix(x)

with `mix` the "lowbias32" integer finaliser (two multiply-xorshift rounds, full avalanche).
That is a dozen integer operations per word, which XLA fuses into the consumer and vectorises
(an order of magnitude cheaper than "rbg" and threefry on CPU: `python -m benchmarks.twins`).
Keys are two uint32 words; `seed`, `split` and `fold_in` are threefry's, so the keys a model
derives (Flax's per-module `fold_in`, vmapped seeds) are as independent as threefry keys, and
only the final bit generation is the cheap hash. Draws of one key are a bijection of the counter (no
repeats within 2^32 words); draws of two keys are unrelated unless both key words collide.
It is a statistical generator for masks, not a cryptographic one; `jax.random.bernoulli`,
`uniform` and `flax.linen.Dropout` take its keys as they take any other
(`jax.random.wrap_key_data(data, impl=HASH_PRNG)`), with their usual semantics.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.extend.random import define_prng_impl

GOLDEN = 0x9E3779B9


def mix32(x: jax.Array) -> jax.Array:
    """The "lowbias32" finaliser: a bijection of uint32 with full avalanche, elementwise."""
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x7FEB352D)
    x = x ^ (x >> 15)
    x = x * jnp.uint32(0x846CA68B)
    return x ^ (x >> 16)


def hash_bits(key: jax.Array, count: int) -> jax.Array:
    """`count` pseudo-random uint32 words [count] from raw key data uint32 [2]."""
    i = jax.lax.iota(jnp.uint32, count)
    return mix32(mix32(i * jnp.uint32(GOLDEN) + key[0]) ^ key[1])


def _threefry(key: jax.Array) -> jax.Array:
    return jax.random.wrap_key_data(key, impl="threefry2x32")


def _seed(seed: jax.Array) -> jax.Array:
    return jax.random.key_data(jax.random.key(seed, impl="threefry2x32"))


def _split(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    return jax.random.key_data(jax.random.split(_threefry(key), shape))


def _fold_in(key: jax.Array, data) -> jax.Array:
    return jax.random.key_data(jax.random.fold_in(_threefry(key), data))


def _random_bits(key: jax.Array, bit_width: int, shape: tuple[int, ...]) -> jax.Array:
    n = math.prod(shape)
    dtype = jnp.dtype(f"uint{bit_width}")
    if bit_width == 64:
        words = hash_bits(key, 2 * n).reshape(n, 2).astype(dtype)
        return ((words[:, 0] << 32) | words[:, 1]).reshape(shape)
    return (hash_bits(key, n) >> (32 - bit_width)).astype(dtype).reshape(shape)


HASH_PRNG = define_prng_impl(key_shape=(2,), seed=_seed, split=_split, fold_in=_fold_in,
                             random_bits=_random_bits, name="ambjax_hash32", tag="hsh")
"""The key implementation: `jax.random.wrap_key_data(uint32 [..., 2], impl=HASH_PRNG)`."""
