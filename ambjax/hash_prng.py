"""A counter-based hash PRNG for dropout masks, as a JAX key implementation.

On CPU, XLA generates random bits slowly: threefry and RngBitGenerator ("rbg") cost several
nanoseconds per 32-bit word, and a training step of AMB-DSGDN draws millions of them for its
dropout masks. `HASH_PRNG` computes word i of a draw as a hash of (i, key):

    x = mix(i * 0x9E3779B9 + k0) ^ k1;  bits_i = mix(x)

with `mix` the "lowbias32" integer finaliser (two multiply-xorshift rounds, full avalanche).
That is a dozen integer operations per word, which XLA fuses into the consumer and vectorises
(an order of magnitude cheaper than "rbg" and threefry on CPU: `python -m benchmarks.twins`).
Keys are two uint32 words. `seed` is threefry's; `split` and `fold_in` hash too: a derived
key's words are the same hash of (counter, key) with the key's first word xor-ed with a
constant of its own (one for `split`, whose counters are 0 .. 2n-1, two for `fold_in`, whose
counter is the folded-in value), so the keys a model derives (Flax's per-module `fold_in`,
the modality members' and vmapped seeds' `split`) and the bits they draw come from disjoint
inputs of the hash. Threefry's derivation is a loop in XLA's CPU programs, several small
kernels and a loop to compile per derived key (29 in an AMB-DSGDN train program); the hash is
a handful of operations (`derived_words`).
Draws of one key are a bijection of the counter (no repeats within 2^32 words); draws of two
keys are unrelated unless both key words collide. It is a statistical generator for masks, not
a cryptographic one; `jax.random.bernoulli`, `uniform`, `split`, `fold_in` and
`flax.linen.Dropout` take its keys as they take any other
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


def _hash(counters: jax.Array, k0: jax.Array, k1: jax.Array) -> jax.Array:
    return mix32(mix32(counters * jnp.uint32(GOLDEN) + k0) ^ k1)


def hash_bits(key: jax.Array, count: int) -> jax.Array:
    """`count` pseudo-random uint32 words [count] from raw key data uint32 [2]."""
    return _hash(jax.lax.iota(jnp.uint32, count), key[0], key[1])


def _seed(seed: jax.Array) -> jax.Array:
    return jax.random.key_data(jax.random.key(seed, impl="threefry2x32"))


SPLIT_DOMAIN, FOLD_DOMAINS = 0x85EBCA6B, (0xC2B2AE35, 0x27D4EB2F)
# 2^32 - 1: the remainder by it is the identity but for the word 0xFFFFFFFF (-> 0)
_MODULUS = 0xFFFFFFFF


def derived_words(key: jax.Array, counters: jax.Array, domain: int) -> jax.Array:
    """Key words uint32 [...] derived from raw key data uint32 [2] at `counters` uint32 [...]
    in `domain`: `hash_bits`' hash with the key's first word xor-ed with `domain`.

    The last step, a remainder by 2^32 - 1 (it maps one of the 2^32 words to 0), is an
    operation XLA counts as expensive: it computes a derived key once, in a small kernel of its
    own, instead of copying the chain of derivations that led to it into every kernel that
    reads the key (a train program with those copies had not compiled after 20 minutes;
    benchmarks/README.md, twelfth session).
    """
    return _hash(counters, key[0] ^ jnp.uint32(domain), key[1]) % jnp.uint32(_MODULUS)


def _split(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    counters = jax.lax.iota(jnp.uint32, 2 * math.prod(shape))
    return derived_words(key, counters, SPLIT_DOMAIN).reshape(*shape, 2)


def _fold_in(key: jax.Array, data) -> jax.Array:
    counter = jnp.asarray(data).astype(jnp.uint32)
    return jnp.stack([derived_words(key, counter, d) for d in FOLD_DOMAINS])


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
