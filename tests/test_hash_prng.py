"""The counter-hash key implementation (`ambjax.hash_prng`) and the one-member map of the steps:
mask statistics, independence of derived keys, vmap == alone, no key-derivation loop in the
train program, and map_members == jax.vmap."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ambjax.hash_prng import HASH_PRNG, hash_bits, mix32
from ambjax.train import Trainer, model_state
from ambjax.train.steps import MASK_KEYS, map_members
from experiments.configs import make_config


def _key(seed):
    return jax.random.wrap_key_data(jax.random.key_data(jax.random.PRNGKey(seed)),
                                    impl=HASH_PRNG)


def test_mix32_is_a_bijection_on_a_block():
    x = jnp.arange(1 << 16, dtype=jnp.uint32) * jnp.uint32(65537)
    assert len(np.unique(np.asarray(mix32(x)))) == 1 << 16


@pytest.mark.parametrize("p", [0.11, 0.2, 0.5])
def test_bernoulli_rate_and_bit_balance(p):
    draws = np.asarray(jax.random.bernoulli(_key(0), p, (400_000,)))
    assert abs(draws.mean() - p) < 4 * np.sqrt(p * (1 - p) / draws.size)
    bits = np.unpackbits(np.asarray(hash_bits(jnp.array([7, 9], jnp.uint32), 1 << 16))
                         .view(np.uint8)).reshape(-1, 32).mean(0)
    assert np.all(np.abs(bits - 0.5) < 0.02)              # every bit position balanced


def test_derived_keys_give_unrelated_masks():
    key = _key(3)
    a, b = jax.random.split(key)
    masks = [jax.random.bernoulli(k, 0.5, (200_000,)) for k in
             (a, b, jax.random.fold_in(key, 7), jax.random.fold_in(key, 8))]
    flat = np.stack([np.asarray(m, np.float64) for m in masks])
    corr = np.corrcoef(flat)
    off = corr[~np.eye(len(masks), dtype=bool)]
    assert np.all(np.abs(off) < 0.02)
    # neighbouring words of one stream are unrelated too
    u = np.asarray(jax.random.uniform(key, (200_001,)))
    assert abs(np.corrcoef(u[:-1], u[1:])[0, 1]) < 0.02


def test_other_bit_widths_and_dropout():
    key = _key(1)
    assert jax.random.bits(key, (5,), jnp.uint8).dtype == jnp.uint8
    assert jax.random.bits(key, (5,), jnp.uint16).dtype == jnp.uint16
    out = nn.Dropout(0.5).apply({}, jnp.ones((64, 64)), deterministic=False,
                                rngs={"dropout": key})
    assert set(np.unique(np.asarray(out))) == {0.0, 2.0}


def test_vmapped_keys_draw_what_each_key_draws_alone():
    keys = jax.random.split(jax.random.PRNGKey(5), 3)

    def mask(k):
        return jax.random.bernoulli(MASK_KEYS["hash"](k, lambda key: key)[0], 0.3, (17, 5))
    together = jax.jit(jax.vmap(mask))(keys)
    for i in range(3):
        np.testing.assert_array_equal(together[i], mask(keys[i]))


def test_hash_keys_are_derived_without_a_loop_in_the_train_program(iemocap_small):
    # threefry derives a key in a loop of the CPU program (a loop and its kernels for XLA to
    # compile per derived key: each module's dropout key, the modality members', the step's,
    # the balancing draw's); the hash in a few fused operations
    def loops(f, *args) -> int:
        return jax.jit(f).lower(*args).as_text().count("stablehlo.while")

    assert loops(lambda k: jax.random.fold_in(k, 7), jax.random.PRNGKey(0)) > 0
    config = make_config("tiny", ["model.hidden_dim=8", "model.graphs=inter"])
    assert config.model.mask_rng == "hash"
    trainer = Trainer.from_config(config, iemocap_small, n_devices=1)
    budget = trainer.batcher.budgets_used(trainer.seeds, 1)["train"][-1]
    batch = jax.tree.map(lambda x: x[None], trainer.batcher.build([], budget))
    assert loops(trainer.train_step.gradients, model_state(trainer.abstract_state), batch,
                 jnp.asarray(True)) == 0


def test_map_members_equals_vmap_for_one_and_several_members():
    def f(w, x, shared):
        return {"y": jnp.tanh(x @ w).sum(0) * shared, "n": (w ** 2).sum()}
    rng = np.random.default_rng(0)
    for members in (1, 3):
        w = jnp.asarray(rng.normal(size=(members, 4, 6)), jnp.float32)
        x = jnp.asarray(rng.normal(size=(members, 5, 4)), jnp.float32)
        shared = jnp.float32(2.0)
        want = jax.vmap(f, in_axes=(0, 0, None))(w, x, shared)
        got = jax.jit(map_members(f, in_axes=(0, 0, None)))(w, x, shared)
        for k in want:
            assert got[k].shape == want[k].shape
            np.testing.assert_allclose(got[k], want[k], rtol=1e-6, atol=1e-6)
