"""The reusable pieces are pure: jit, vmap, grad and lax.scan work; same key, same output;
the composition example trains with the library's train-step builder."""

import functools

import jax
import jax.numpy as jnp
import jraph
import numpy as np
import pytest

from ambjax.graphs import dialogue_edges
from ambjax.losses import amb_loss
from ambjax.metrics import confusion_matrix, weighted_f1
from ambjax.nn import (DifferentialGraphAttention, ModalityDropout, drop_probabilities,
                       segment_softmax, sinusoid_position_encoding)


def _graph(n=7, d=6, window=2, seed=0):
    rng = np.random.default_rng(seed)
    speakers = rng.integers(0, 2, n)
    e = dialogue_edges(speakers, window, "intra")
    return jraph.GraphsTuple(nodes=jnp.asarray(rng.normal(size=(n, d)), jnp.float32),
                             edges=jnp.asarray(e.types),
                             senders=jnp.asarray(e.senders), receivers=jnp.asarray(e.receivers),
                             globals=None, n_node=jnp.array([n]), n_edge=jnp.array([len(e.types)]))


@pytest.fixture(scope="module")
def layer_and_params():
    layer = DifferentialGraphAttention(6)
    return layer, layer.init(jax.random.PRNGKey(0), _graph())


def test_graph_attention_jit_vmap_grad_scan(layer_and_params):
    layer, variables = layer_and_params
    graph = _graph()
    eager = layer.apply(variables, graph)
    np.testing.assert_allclose(jax.jit(layer.apply)(variables, graph), eager, rtol=1e-5, atol=1e-6)
    # vmap over a leading batch of graphs (same padded shape, different node features)
    graphs = jax.tree.map(lambda *xs: jnp.stack(xs), graph,
                          graph._replace(nodes=graph.nodes * 2.0))
    # (vmap and grad under jit: the same batching and differentiation rules, one program
    # instead of one per operation)
    batched = jax.jit(jax.vmap(layer.apply, in_axes=(None, 0)))(variables, graphs)
    np.testing.assert_allclose(batched[0], eager, rtol=1e-5, atol=1e-6)
    # vmap over a leading batch of parameters
    other = layer.init(jax.random.PRNGKey(1), graph)
    stacked = jax.tree.map(lambda a, b: jnp.stack([a, b]), variables, other)
    per_params = jax.jit(jax.vmap(layer.apply, in_axes=(0, None)))(stacked, graph)
    np.testing.assert_allclose(per_params[1], layer.apply(other, graph), rtol=1e-5, atol=1e-6)
    # grad w.r.t. parameters and inputs
    grads = jax.jit(jax.grad(lambda v, x: layer.apply(v, graph._replace(nodes=x)).sum(),
                            (0, 1)))(variables, graph.nodes)
    assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))
    # inside lax.scan: the same layer applied three times
    def body(h, _):
        return layer.apply(variables, graph._replace(nodes=h)), None
    out, _ = jax.lax.scan(body, graph.nodes, None, length=3)
    ref = graph.nodes
    for _ in range(3):
        ref = layer.apply(variables, graph._replace(nodes=ref))
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)


def test_dropout_paths_are_keyed_and_deterministic(layer_and_params):
    layer, variables = layer_and_params
    graph = _graph()
    run = jax.jit(lambda k: layer.apply(variables, graph, deterministic=False, rngs={"dropout": k}))
    a, b, c = run(jax.random.PRNGKey(3)), run(jax.random.PRNGKey(3)), run(jax.random.PRNGKey(4))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_segment_softmax_vmap_grad_scan():
    receivers = jnp.array([0, 0, 1, 1, 1, 2])
    scores = jnp.asarray(np.random.default_rng(0).normal(size=(4, 6)), jnp.float32)
    out = jax.vmap(lambda s: segment_softmax(s, receivers, 3))(scores)
    np.testing.assert_allclose(jax.ops.segment_sum(out[0], receivers, 3), 1.0, rtol=1e-6)
    g = jax.grad(lambda s: (segment_softmax(s, receivers, 3) * jnp.arange(6.0)).sum())(scores[0])
    assert np.isfinite(g).all() and np.abs(g).sum() > 0
    _, ys = jax.lax.scan(lambda c, s: (c, segment_softmax(s, receivers, 3)), 0, scores)
    np.testing.assert_allclose(ys, out, rtol=1e-6)


def test_balancing_functions_vmap_jit_scan():
    perf = jnp.asarray(np.random.default_rng(0).random((5, 3)), jnp.float32)
    q = jax.jit(jax.vmap(lambda p: drop_probabilities(p, 0.3, 0.9)))(perf)
    np.testing.assert_allclose(q[2], drop_probabilities(perf[2], 0.3, 0.9), atol=1e-7)
    _, qs = jax.lax.scan(lambda c, p: (c, drop_probabilities(p, 0.3, 0.9)), 0, perf)
    np.testing.assert_allclose(qs, q, atol=1e-7)
    labels = jnp.asarray(np.random.default_rng(1).integers(0, 4, (3, 20)))
    preds = jnp.asarray(np.random.default_rng(2).integers(0, 4, (3, 20)))
    conf = jax.vmap(lambda y, p: confusion_matrix(y, p, jnp.ones(20, bool), 4))(labels, preds)
    np.testing.assert_allclose(weighted_f1(conf)[1], weighted_f1(conf[1]), atol=1e-7)


def test_modality_dropout_same_key_same_output_and_vmap():
    feats = jnp.ones((3, 10, 4))
    layer = ModalityDropout(p_exe=1.0)
    q, strength, gi = jnp.array([0.5, 0.2, 0.0]), jnp.array([0.9, 0.6, 0.3]), jnp.arange(10) % 5

    def run(key):
        return layer.apply({}, feats, q, strength, gi, 5, deterministic=False,
                           rngs={"balance": key})[0]

    np.testing.assert_array_equal(run(jax.random.PRNGKey(0)), run(jax.random.PRNGKey(0)))
    many = jax.vmap(run)(jax.random.split(jax.random.PRNGKey(0), 8))
    np.testing.assert_array_equal(many[3], run(jax.random.split(jax.random.PRNGKey(0), 8)[3]))


def test_loss_grad_and_vmap():
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.normal(size=(2, 9, 4)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, 4, (2, 9)))
    mask = jnp.asarray(rng.random((2, 9)) < 0.8)

    def loss(l, y, m):
        return amb_loss(l, {"text": l * 0.5, "audio": -l}, y, m)[0]

    values = jax.vmap(loss)(logits, labels, mask)
    np.testing.assert_allclose(values[1], loss(logits[1], labels[1], mask[1]), rtol=1e-6)
    g = jax.grad(loss)(logits[0], labels[0], mask[0])
    assert np.isfinite(g).all()
    assert (np.asarray(g)[~np.asarray(mask[0])] == 0).all()  # padding gets no gradient


def test_the_loss_gradient_confusion_counts_and_position_encoding_scatter_nothing():
    """The label's log-probability is a masked sum (its gradient a select), the confusion
    counts are summed one-hot products, the position encoding interleaves sines and cosines
    by a reshape: no program holds a scatter, which XLA's CPU backend compiles as a kernel of
    its own per use (the old gather, segment sum and strided writes did)."""
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.normal(size=(9, 4)), jnp.float32)
    labels, mask = jnp.asarray(rng.integers(0, 4, 9)), jnp.asarray(rng.random(9) < 0.8)
    grad = jax.grad(lambda l: amb_loss(l, {"text": l * 0.5}, labels, mask)[0])
    counts = functools.partial(confusion_matrix, num_classes=4)
    positions = jnp.arange(5)
    for program in (jax.make_jaxpr(grad)(logits),
                    jax.make_jaxpr(counts)(labels, jnp.argmax(logits, -1), mask),
                    jax.make_jaxpr(lambda p: sinusoid_position_encoding(p, 7))(positions)):
        assert "scatter" not in str(program)
    assert int(counts(labels, jnp.argmax(logits, -1), mask).sum()) == int(mask.sum())
    encoding = np.asarray(sinusoid_position_encoding(positions, 7))
    rates = np.exp(np.arange(0, 7, 2) * -(np.log(10000.0) / 7))
    np.testing.assert_allclose(encoding[:, 0::2], np.sin(np.outer(positions, rates)), atol=1e-6)
    np.testing.assert_allclose(encoding[:, 1::2], np.cos(np.outer(positions, rates[:3])),
                               atol=1e-6)


def test_relational_block_jit_vmap_grad_scan():
    from ambjax.nn import DifferentialRelationalBlock
    graph = _graph()
    block = DifferentialRelationalBlock(6)
    variables = block.init(jax.random.PRNGKey(0), graph)
    eager = block.apply(variables, graph)
    np.testing.assert_allclose(jax.jit(block.apply)(variables, graph), eager, rtol=1e-5, atol=1e-5)
    graphs = jax.tree.map(lambda *xs: jnp.stack(xs), graph, graph._replace(nodes=-graph.nodes))
    np.testing.assert_allclose(jax.vmap(block.apply, in_axes=(None, 0))(variables, graphs)[0],
                               eager, rtol=1e-5, atol=1e-5)
    grads = jax.grad(lambda v: block.apply(v, graph, deterministic=False,
                                           rngs={"dropout": jax.random.PRNGKey(1)}).sum())(variables)
    assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))
    out, _ = jax.lax.scan(lambda h, _: (block.apply(variables, graph._replace(nodes=h)), None),
                          graph.nodes, None, length=2)
    ref = block.apply(variables, graph._replace(nodes=eager))
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)


def test_attention_layer_gradients_match_finite_differences():
    """Numeric gradient check (jax.test_util.check_grads) of the differential graph attention
    layer, with respect to its inputs and to its parameters, in float64."""
    from jax.test_util import check_grads
    with jax.enable_x64(True):
        graph = _graph()
        graph = graph._replace(nodes=jnp.asarray(graph.nodes, jnp.float64))
        layer = DifferentialGraphAttention(8, dropout_rate=0.0, dtype=jnp.float64)
        params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64),
                              layer.init(jax.random.PRNGKey(0), graph))
        probe = jnp.asarray(np.random.default_rng(1).normal(size=(graph.nodes.shape[0], 8)))

        def f(variables, x):
            return (layer.apply(variables, graph._replace(nodes=x)) * probe).sum()

        # jitted: the check evaluates f many times, op by op a compile per operation
        check_grads(jax.jit(f), (params, graph.nodes), order=1, modes=("rev",), eps=1e-4,
                    atol=1e-3, rtol=1e-3)


def test_loss_gradients_match_finite_differences():
    """Numeric gradient check of the AMB-DSGDN loss (class weights, masked rows, the squared
    unimodal terms)."""
    from jax.test_util import check_grads
    with jax.enable_x64(True):
        rng = np.random.default_rng(0)
        logits = jnp.asarray(rng.normal(size=(9, 4)))
        text, audio = jnp.asarray(rng.normal(size=(9, 4))), jnp.asarray(rng.normal(size=(9, 4)))
        labels = jnp.asarray(rng.integers(0, 4, 9))
        mask = jnp.asarray(rng.random(9) < 0.8)
        weights = jnp.asarray([1.0, 2.0, 0.5, 1.5])

        def loss(fused, t, a):
            return amb_loss(fused, {"text": t, "audio": a}, labels, mask,
                            class_weights=weights)[0]

        # the loss computes in float32 by design: central differences with a wide step
        check_grads(loss, (logits, text, audio), order=1, modes=("rev",), eps=1e-2,
                    atol=2e-3, rtol=2e-3)


def test_balancing_unit_is_shared_and_metrics_sit_on_the_ground_floor():
    import ast
    import inspect

    import ambjax.array_namespace
    import ambjax.metrics
    from ambjax.nn import model as model_module
    from experiments import compose

    def ambjax_imports(module):
        tree = ast.parse(inspect.getsource(module))
        imported = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)] + [
            a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        return [m for m in imported if m and m.startswith("ambjax")]

    assert ambjax_imports(ambjax.metrics) == ["ambjax.array_namespace"]
    assert not ambjax_imports(ambjax.array_namespace)
    for module in (model_module, compose):
        source = inspect.getsource(module)
        assert "ModalityBalancing(" in source and "drop_probabilities(" not in source
