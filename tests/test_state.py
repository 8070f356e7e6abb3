"""Parameter and optimiser-state initialisation: only the initialisers run, with
`model.init`'s and `optimizer.init`'s values, exact steps on the host."""

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ambjax.errors import ConfigError
from ambjax.graphs import GraphBatcher
from ambjax.nn import AMBDSGDN, create_model
from ambjax.train import Trainer, load_dataset
from ambjax.train.config import OptimConfig
from ambjax.train.trainer import model_for
from ambjax.train.state import create_optimizer, create_train_state, init_params


def test_init_params_are_model_inits_values_bit_for_bit(iemocap_small):
    model = create_model(iemocap_small.dims, 6, 2, hidden_dim=8, num_heads=2, graph_heads=2)
    batch = GraphBatcher(iemocap_small, window=3, batch_size=4, growth=None).build(
        iemocap_small.split("train")[:4])
    init_key, _ = jax.random.split(jax.random.PRNGKey(7))
    expected = model.init(init_key, batch)["params"]          # eager, forward pass included
    got = init_params(model, batch, 7)
    assert jax.tree.structure(got) == jax.tree.structure(expected)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
        np.testing.assert_array_equal(a, b)
    other = init_params(model, batch, 8)
    assert any(not np.array_equal(a, b)
               for a, b in zip(jax.tree.leaves(other), jax.tree.leaves(got)))


@pytest.mark.parametrize("shape", [(7,), (3, 5), (2, 4, 3)])
def test_a_draw_is_the_first_values_of_a_longer_one(shape):
    """What the initialisation's one draw size per sampler rests on (`ambjax.train.state`,
    `_SAMPLERS`): each of JAX's samplers draws, for a threefry key, the first values of a
    longer draw of the same key, bit for bit, for any shape."""
    from ambjax.train.state import _SAMPLERS
    key = jax.random.key(3)
    bounds = {"_normal": (), "_truncated_normal": (-2.0, 2.0), "_uniform": (-0.1, 0.1)}
    direct = {"_normal": lambda: jax.random.normal(key, shape),
              "_truncated_normal": lambda: jax.random.truncated_normal(key, -2.0, 2.0, shape),
              "_uniform": lambda: jax.random.uniform(key, shape, minval=-0.1, maxval=0.1)}
    for name, draw in _SAMPLERS.items():
        longer = np.asarray(draw(key, *bounds[name], size=100, dtype=jnp.float32))
        np.testing.assert_array_equal(longer[:np.prod(shape)].reshape(shape), direct[name]())


class _Probe(nn.Module):
    """Its forward pass computes from its parameter alone, and reports when it runs."""
    report: Callable[[float], None]
    from_batch: bool = False

    @nn.compact
    def __call__(self, x):
        init = ((lambda key, shape: x[:shape[0]]) if self.from_batch
                else nn.initializers.normal())
        w = self.param("w", init, (3,))
        jax.debug.callback(lambda s: self.report(float(s)), jnp.sum(w * w))
        return x[:3] * w


def test_init_params_runs_no_forward_pass_and_refuses_batch_dependent_parameters():
    x = jnp.arange(5.0)
    record = []
    params = init_params(_Probe(record.append), x, 0)
    assert params["w"].shape == (3,) and record == []     # the forward's callback never ran
    _Probe(record.append).lazy_init(jax.random.PRNGKey(0), jax.ShapeDtypeStruct((5,), jnp.float32))
    assert len(record) == 1          # where Flax's lazy_init runs the parameter-only part
    with pytest.raises(ConfigError, match="depend on the values of the batch"):
        init_params(_Probe(record.append, from_batch=True), x, 0)


def _compiles(fn):
    """(fn's result, how many XLA programs it compiled)."""
    events = []

    def listen(name, *_, **__):
        if name == "/jax/core/compile/backend_compile_duration":
            events.append(name)

    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        return fn(), len(events)
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)


class _Exact(nn.Module):
    """Parameters made by exact steps only: scaled and broadcast constants, a reshape."""

    @nn.compact
    def __call__(self, x):
        scale = jnp.sqrt(jnp.float32(2.0)) / 3.0
        a = self.param("a", lambda key, shape: -(jnp.ones(shape) * scale + 1.0) - 0.5, (7, 13))
        b = self.param("b", lambda key, shape: jnp.broadcast_to(
            jnp.arange(13.0).reshape(1, 13), shape), (5, 13))
        return x @ a.T + b.sum()


def test_exact_initialisation_steps_compile_nothing_and_give_the_eager_values():
    x = jnp.ones((2, 13))
    params, compiles = _compiles(lambda: init_params(_Exact(), x, 0))
    expected = _Exact().init(jax.random.split(jax.random.PRNGKey(0))[0], x)["params"]
    for name in ("a", "b"):
        assert isinstance(params[name], jax.Array)
        np.testing.assert_array_equal(params[name], expected[name])
    assert compiles <= 2          # the seed's keys (threefry), nothing per parameter shape
    assert jax.eval_shape(lambda: init_params(_Exact(), x, 0))["a"].shape == (7, 13)


@pytest.mark.parametrize("optim", [OptimConfig(), OptimConfig(optimizer="adamw", clip_norm=1.0,
                                                                lr_schedule="warmup_cosine"),
                                   OptimConfig(optimizer="sgd")])
def test_the_optimiser_state_is_optimizer_inits_bit_for_bit(iemocap_small, optim):
    model = create_model(iemocap_small.dims, 6, 2, hidden_dim=8, num_heads=2, graph_heads=2)
    batch = GraphBatcher(iemocap_small, window=3, batch_size=4, growth=None).build(
        iemocap_small.split("train")[:4])
    optimizer = create_optimizer(optim, total_steps=10)
    state = create_train_state(model, batch, optimizer, 5)
    expected = optimizer.init(state.params)
    assert jax.tree.structure(state.opt_state) == jax.tree.structure(expected)
    for a, b in zip(jax.tree.leaves(state.opt_state), jax.tree.leaves(expected)):
        assert isinstance(a, jax.Array) and a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)
    shapes = jax.eval_shape(lambda: create_train_state(model, batch, optimizer, 5))
    assert jax.tree.map(lambda x: x.shape, shapes) == jax.tree.map(jnp.shape, state)


_TRACES = []


class _Counted(AMBDSGDN):
    """AMB-DSGDN that notes every trace of its forward pass in `_TRACES`."""

    def __call__(self, *args, **kwargs):
        _TRACES.append(1)
        return super().__call__(*args, **kwargs)


def test_a_cold_trainer_traces_the_models_initialisation_once_for_every_seed():
    from experiments.configs import make_config
    config = make_config("tiny", {"data.synthetic_scale": "0.1"})
    dataset = load_dataset(config.data)
    _TRACES.clear()
    trainer = Trainer(_Counted(model_for(config, dataset)), config, dataset, n_devices=1,
                      seeds=(0, 1))
    assert len(_TRACES) == 1                    # the shapes of the state
    trainer.init_state()
    assert len(_TRACES) == 1                    # both seeds' values from the same trace
    for k, seed in enumerate((0, 1)):
        expected = init_params(trainer.model, trainer._example, seed)
        for a, b in zip(jax.tree.leaves(trainer.seed_state(k).params), jax.tree.leaves(expected)):
            np.testing.assert_array_equal(a, b)
