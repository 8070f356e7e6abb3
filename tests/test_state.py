"""Parameter initialisation: only the initialisers run, with `model.init`'s values."""

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ambjax.errors import ConfigError
from ambjax.graphs import GraphBatcher
from ambjax.nn import create_model
from ambjax.train.state import init_params


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
