"""The model: parity with the authors' release, invariants, balancing, metrics."""

import dataclasses
import glob
import os

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import jraph
import numpy as np
import optax
import pytest

from ambjax.convert import release_forward, release_q
from ambjax.graphs import Budget, GraphBatcher, build_batch, dialogue_edges
from ambjax.losses import amb_loss
from ambjax.metrics import confusion_matrix, macro_f1, per_class_f1, weighted_f1
from ambjax.nn import (AMBDSGDN, DifferentialGraphAttention, ModalityDropout,
                       count_parameters, create_model, drop_probabilities)
from ambjax.train import create_train_state, make_train_step
from ambjax.train.state import init_params

# Copies of the release fixtures (shared/fixtures) ship in tests/fixtures; AMBJAX_FIXTURES may
# name another folder of files with the same key scheme.
FIXTURE_DIR = os.environ.get("AMBJAX_FIXTURES", os.path.join(os.path.dirname(__file__), "fixtures"))
FIXTURES = sorted(glob.glob(os.path.join(FIXTURE_DIR, "release_*.npz")))


def test_fixtures_present():
    assert FIXTURES, f"no release_*.npz parity fixtures in {FIXTURE_DIR}"


@pytest.mark.parametrize("path", FIXTURES, ids=os.path.basename)
def test_release_parity(path):
    d = np.load(path)
    state_dict = {k[len("param/"):]: d[k] for k in d.files if k.startswith("param/")}
    inputs = {k: d[k] for k in d.files if k.startswith("input/")}
    out = release_forward(state_dict, inputs, num_heads=int(d["meta/n_head"]))
    real = d["input/umask"].astype(bool)
    for key in ("fused", "text", "audio", "visual", "fused_logits", "text_logits",
                "audio_logits", "visual_logits", "fused_prob"):
        ref, got = d[f"output/{key}"][real], out[f"output/{key}"][real]
        assert got.shape == ref.shape
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5, err_msg=key)
    assert out["output/fused"].shape == d["output/fused"].shape
    np.testing.assert_array_equal(out["output/update_flag"], d["output/update_flag"])
    q = release_q(d["q/perf"], float(d["q/q_base"]), float(d["q/lam"]))
    np.testing.assert_array_equal(q, d["q/out"])
    np.testing.assert_array_equal(
        release_q(d["q/fixture_f1"].astype(np.float32), float(d["q/q_base"]), float(d["q/lam"])),
        d["q/fixture_q"])
    # in-graph (XLA) version: equal up to the last bit of float32
    np.testing.assert_allclose(jax.vmap(lambda p: drop_probabilities(
        p, float(d["q/q_base"]), float(d["q/lam"])))(d["q/perf"]), d["q/out"], atol=1e-6)
    # the device-side weighted F1 equals the release's scikit-learn figures
    labels = d["input/label"][real]
    for k, m in enumerate(("text", "visual", "audio")):
        conf = confusion_matrix(jnp.asarray(labels), jnp.asarray(d[f"output/{m}_logits"][real].argmax(-1)),
                                jnp.ones(labels.shape, bool), int(d["meta/n_classes"]))
        assert abs(float(weighted_f1(conf)) - d["q/fixture_f1"][k]) < 1e-6


def test_parameter_count_of_release_config():
    model = create_model({"text": 1024, "audio": 1582, "visual": 342}, 6, 2, hidden_dim=512)
    batch = _tiny_batch(model.config)
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), batch))["params"]
    # the release's 13,133,234 less its unused 2,048-parameter transformer LayerNorm
    assert count_parameters(shapes) == 13_133_234 - 2_048 == 13_131_186


def _tiny_batch(config):
    from ambjax.convert import _dummy_batch
    return _dummy_batch(config)


@pytest.fixture(scope="module")
def small(iemocap_small):
    # one attention layer per block: the claims below do not depend on the stacking (the
    # release's two layers: test_release_parity, the per-layer weights test), and one layer
    # halves the relational blocks' programs
    model = create_model(iemocap_small.dims, 6, 2, hidden_dim=16, num_heads=2, dropout=0.3,
                         graph_heads=1)
    gb = GraphBatcher(iemocap_small, window=3, batch_size=4)
    dialogues = iemocap_small.split("train")[:4]
    budget = gb.budget_for(sum(len(d) for d in dialogues))
    batch = gb.build(dialogues)
    # the parameters `create_train_state` draws for seed 0 (`model.init`'s initialisers
    # without its forward pass op by op, ~5 s faster)
    params = init_params(model, batch, 0)
    apply = jax.jit(lambda p, b: model.apply({"params": p}, b))
    return dict(model=model, gb=gb, dialogues=dialogues, budget=budget, batch=batch,
                params=params, apply=apply, dataset=iemocap_small)


def _build(small, dialogues, budget, window=3):
    edges = {k: [dialogue_edges(d.speakers, window, k) for d in dialogues] for k in ("intra", "inter")}
    return build_batch(dialogues, budget, modalities=small["model"].config.modalities,
                       num_speakers=2, edges=edges)


def _real_rows(batch, x):
    return np.asarray(x)[np.asarray(batch.nodes.mask)]


def test_padding_does_not_change_real_outputs(small):
    base = small["apply"](small["params"], small["batch"])
    b = small["budget"]
    bigger = Budget(b.n_node + 37, b.n_edge_intra + 50, b.n_edge_inter + 11, b.n_graph + 2,
                    b.max_len + 5)
    padded = _build(small, small["dialogues"], bigger)
    out = small["apply"](small["params"], padded)
    for key in ("logits",):
        np.testing.assert_allclose(_real_rows(padded, out[key]),
                                   _real_rows(small["batch"], base[key]), rtol=1e-5, atol=1e-5)
    for m in ("text", "audio", "visual"):
        np.testing.assert_allclose(_real_rows(padded, out["modality_logits"][m]),
                                   _real_rows(small["batch"], base["modality_logits"][m]),
                                   rtol=1e-5, atol=1e-5)
    # garbage in padding node features changes nothing either
    mask = padded.nodes.mask
    feats = {m: np.where(mask[:, None], x, 1e3) for m, x in padded.nodes.features.items()}
    noisy = padded.replace(nodes=padded.nodes.replace(features=feats))
    out2 = small["apply"](small["params"], noisy)
    np.testing.assert_allclose(_real_rows(noisy, out2["logits"]), _real_rows(padded, out["logits"]),
                               rtol=1e-5, atol=1e-5)


def test_a_packed_dense_view_computes_what_the_unpacked_one_does(iemocap_small):
    # several dialogues per row of the encoder's view: the same outputs, and in training the
    # same dropout masks (drawn for the unpacked view), so the same step
    # packing changes only the encoder's view: one modality, one graph head and one block
    # (fast compiles)
    model = create_model({"text": iemocap_small.dims["text"]}, 6, 2, hidden_dim=16,
                         num_heads=2, dropout=0.3, graph_dropout=0.2, p_exe=0.0, graph_heads=1,
                         graphs=("inter",))
    gb = GraphBatcher(iemocap_small, window=3, batch_size=6, growth=None, modalities=("text",))
    dialogues = iemocap_small.split("train")[:6]
    plain = gb.build(dialogues)
    packed = gb.build(dialogues, dataclasses.replace(gb.budget_of(dialogues),
                                                     n_row=gb.rows_of(dialogues)))
    assert packed.layout.dense_index.shape[0] < plain.layout.dense_index.shape[0]
    opt = optax.sgd(0.5)
    state = create_train_state(model, plain, opt, seed=0)
    apply = jax.jit(lambda b: model.apply({"params": state.params}, b))
    np.testing.assert_allclose(_real_rows(packed, apply(packed)["logits"]),
                               _real_rows(plain, apply(plain)["logits"]), rtol=1e-5, atol=1e-5)
    step = jax.jit(make_train_step(model, opt))
    (s_plain, m_plain), (s_packed, m_packed) = (step(state, b, jnp.asarray(True))
                                                for b in (plain, packed))
    np.testing.assert_allclose(m_packed["loss"], m_plain["loss"], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(s_packed.params), jax.tree.leaves(s_plain.params)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    # and the dropout did act: another key gives another step
    other = step(state.replace(rng=jax.random.PRNGKey(9)), packed, jnp.asarray(True))[1]
    assert abs(float(other["loss"]) - float(m_packed["loss"])) > 1e-6

def test_shuffling_dialogues_permutes_outputs(small):
    base = small["apply"](small["params"], small["batch"])
    order = [2, 0, 3, 1]
    shuffled = _build(small, [small["dialogues"][i] for i in order], small["budget"])
    out = small["apply"](small["params"], shuffled)
    lengths = [len(d) for d in small["dialogues"]]
    starts = np.concatenate([[0], np.cumsum(lengths)])
    expected = np.concatenate([np.asarray(base["logits"])[starts[i]:starts[i + 1]] for i in order])
    np.testing.assert_allclose(_real_rows(shuffled, out["logits"]), expected, rtol=1e-5, atol=1e-5)


def test_self_loop_only_nodes_are_finite(small):
    lonely = _build(small, small["dialogues"], small["budget"], window=0)
    assert (lonely.intra.types > 0).sum() == lonely.nodes.mask.sum()
    out = small["apply"](small["params"], lonely)
    assert np.isfinite(np.asarray(out["logits"])).all()


def test_gradients_reach_every_parameter(small):
    model, batch = small["model"], small["batch"]

    def loss(params):
        out = model.apply({"params": params}, batch, train=True, balance_active=True,
                          rngs={"dropout": jax.random.PRNGKey(1), "balance": jax.random.PRNGKey(2)})
        return amb_loss(out["logits"], out["modality_logits"], batch.nodes.label,
                        batch.nodes.mask)[0]

    grads = jax.jit(jax.grad(loss))(small["params"])
    for path, g in jax.tree_util.tree_flatten_with_path(grads)[0]:
        g = np.asarray(g)
        assert np.isfinite(g).all(), path
        if "speaker_embedding" in jax.tree_util.keystr(path):
            assert np.abs(g[:2]).sum() > 0 and np.abs(g[2]).sum() == 0  # padding row unused
        else:
            assert np.abs(g).sum() > 0, jax.tree_util.keystr(path)


def test_compiles_once_per_bucket(small):
    model = small["model"]

    @jax.jit
    @chex.assert_max_traces(n=1)
    def forward(params, batch):
        return model.apply({"params": params}, batch)["logits"]

    gb = small["gb"]
    budget = small["budget"]
    train = small["dataset"].split("train")
    calls = 0
    for start in range(0, len(train) - 1, 2):
        group = train[start:start + 2]
        if sum(len(d) for d in group) < budget.n_node:
            forward(small["params"], _build(small, group, budget))
            calls += 1
    assert calls >= 2
    with pytest.raises(AssertionError):  # a second bucket is a second trace
        forward(small["params"], gb.build(train[:1]))


def test_lambda_zero_is_ordinary_graph_attention():
    rng = np.random.default_rng(0)
    n, din, out = 6, 5, 4
    speakers = np.array([0, 1, 0, 0, 1, 1])
    e = dialogue_edges(speakers, 2, "inter")
    graph = jraph.GraphsTuple(nodes=jnp.asarray(rng.normal(size=(n, din)), jnp.float32),
                              edges=jnp.asarray(e.types), senders=jnp.asarray(e.senders),
                              receivers=jnp.asarray(e.receivers), globals=None,
                              n_node=jnp.array([n]), n_edge=jnp.array([len(e.types)]))
    layer = DifferentialGraphAttention(out, lambda_init=0.0)
    params = layer.init(jax.random.PRNGKey(0), graph)["params"]
    for k in ("lambda_left1", "lambda_right1", "lambda_left2", "lambda_right2"):
        params[k] = jnp.zeros_like(params[k])  # lambda = exp(0) - exp(0) + 0 = 0
    got = np.asarray(layer.apply({"params": params}, graph))
    # dense reference: softmax over in-neighbours of the first map only
    p = {k: np.asarray(v) for k, v in params.items() if not isinstance(v, dict)}
    wh = np.asarray(graph.nodes) @ p["W"]
    half = wh[:, : out // 2]
    rel = p["relation_embedding"] @ p["a_rel_pos"]
    dense = np.zeros((n, n), int)
    dense[e.receivers, e.senders] = e.types
    scores = (half @ p["a_left_pos"])[:, None] + (half @ p["a_right_pos"])[None, :] + rel[dense]
    scores = np.where(scores > 0, scores, 0.2 * scores)
    scores = np.where(dense > 0, scores, -np.inf)
    alpha = np.exp(scores - scores.max(1, keepdims=True))
    alpha /= alpha.sum(1, keepdims=True)
    agg = alpha @ wh
    ln = (agg - agg.mean(1, keepdims=True)) / np.sqrt(agg.var(1, keepdims=True) + 1e-5)
    ln = ln * np.asarray(params["norm"]["scale"]) + np.asarray(params["norm"]["bias"])
    ref = np.asarray(jax.nn.gelu(jnp.asarray(ln), approximate=False))
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    plain = DifferentialGraphAttention(out, lambda_init=0.0, differential=False)
    pp = {k: v for k, v in params.items() if "neg" not in k and not k.startswith("lambda")}
    np.testing.assert_allclose(np.asarray(plain.apply({"params": pp}, graph)), ref, rtol=1e-5,
                               atol=1e-5)


def test_modality_dropout_identity_in_eval_and_unbiased_in_train():
    m, n, d, g = 3, 40, 8, 10
    feats = jnp.asarray(np.random.default_rng(0).normal(size=(m, n, d)) + 3.0, jnp.float32)
    graph_index = jnp.arange(n) % g
    q = jnp.full((m,), 0.2)
    strength = jnp.array([0.5, 0.4, 0.3])
    layer = ModalityDropout(p_exe=1.0)
    out, keep, executed = layer.apply({}, feats, q, strength, graph_index, g, deterministic=True)
    np.testing.assert_array_equal(out, feats)
    assert not bool(executed) and (np.asarray(keep) == 1).all()

    def once(key):
        out, keep, _ = layer.apply({}, feats, q, strength, graph_index, g, deterministic=False,
                                   rngs={"balance": key})
        return out, keep

    outs, keeps = jax.jit(jax.vmap(once))(jax.random.split(jax.random.PRNGKey(0), 4000))
    ratio = np.asarray(outs).mean(0) / np.asarray(feats)
    assert abs(ratio.mean() - 1.0) < 0.03  # E[keep / (1 - theta)] = 1 with equal q
    assert (np.asarray(keeps).max(-1) == 1).all()  # never all modalities of a dialogue dropped
    dropped = 1 - np.asarray(keeps).mean()
    assert 0.15 < dropped < 0.22


def _f1_reference(labels, preds, num_classes):
    scores, supports = [], []
    for c in range(num_classes):
        tp = sum(1 for y, p in zip(labels, preds) if y == c and p == c)
        fp = sum(1 for y, p in zip(labels, preds) if y != c and p == c)
        fn = sum(1 for y, p in zip(labels, preds) if y == c and p != c)
        prec = tp / (tp + fp) if tp + fp else 0.0
        rec = tp / (tp + fn) if tp + fn else 0.0
        scores.append(2 * prec * rec / (prec + rec) if prec + rec else 0.0)
        supports.append(tp + fn)
    total = sum(supports)
    return scores, (sum(s * w for s, w in zip(scores, supports)) / total if total else 0.0)


@pytest.mark.parametrize("seed", range(6))
def test_weighted_f1_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    c = int(rng.integers(2, 8))
    n = int(rng.integers(1, 60))
    labels = rng.integers(0, c, n)
    preds = np.where(rng.random(n) < 0.5, labels, rng.integers(0, c, n))
    mask = rng.random(n) < 0.8
    conf = confusion_matrix(jnp.asarray(labels), jnp.asarray(preds), jnp.asarray(mask), c)
    per_class, weighted = _f1_reference(labels[mask], preds[mask], c)
    np.testing.assert_allclose(per_class_f1(conf), per_class, atol=1e-6)
    np.testing.assert_allclose(float(weighted_f1(conf)), weighted, atol=1e-6)
    # host counts (a run's epoch summaries) compute in numpy, to the same values
    for f1 in (per_class_f1, weighted_f1, macro_f1):
        on_host = f1(np.asarray(conf))
        assert isinstance(on_host, np.ndarray) and on_host.dtype == np.float32
        np.testing.assert_allclose(on_host, f1(conf), rtol=1e-6)


def test_drop_probabilities_properties():
    q = drop_probabilities(jnp.array([0.9, 0.5, 0.2]), 0.3, 0.9)
    assert q[0] > q[1] > 0 and q[2] == 0  # the strongest is dropped most, the weakest never
    assert (drop_probabilities(jnp.array([0.5, 0.5, 0.5]), 0.3, 0.9) == 0).all()
    assert (drop_probabilities(jnp.array([0.7]), 0.3, 0.9) == 0).all()


@pytest.mark.parametrize("overrides", [
    dict(differential=False), dict(graphs=("intra",)), dict(graphs=("inter",)),
    dict(norm="rmsnorm", depth_dependent_lambda=True), dict(balance=False)])
def test_variants_and_ablations_build(overrides, small):
    config = dataclasses.replace(small["model"].config, **overrides)
    model = AMBDSGDN(config)
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), small["batch"]))
    out = jax.eval_shape(lambda p: model.apply(p, small["batch"], train=True, balance_active=True,
                                               rngs={"dropout": jax.random.PRNGKey(0),
                                                     "balance": jax.random.PRNGKey(1)}), shapes)
    assert out["logits"].shape == (small["budget"].n_node, 6)
    if not overrides.get("differential", True):
        assert "a_left_neg" not in shapes["params"]["inter"]["attention_0"]


def test_single_modality_model(iemocap_small):
    model = create_model({"text": 12}, 6, 2, hidden_dim=16, num_heads=2)
    gb = GraphBatcher(iemocap_small, window=3, batch_size=2, modalities=("text",))
    batch = gb.build(iemocap_small.split("test")[:2])
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), batch))
    assert set(shapes["params"]) == {"speaker_embedding", "input_text", "inter", "intra",
                                     "head_text"}
    assert shapes["params"]["inter"]["fc"]["kernel"].shape == (1, 16, 16)


@pytest.mark.parametrize("members", [3, 1])
def test_stacked_modalities_equal_separate_modules(small, members):
    """Each row of a stacked block is the block with that row's parameters, and the rows get
    their own initialisation and dropout masks; one member (which runs squeezed) too."""
    from ambjax.nn import DifferentialRelationalBlock
    from ambjax.nn.stack import GRAPH_AXES, stacked_call

    class Stack(nn.Module):
        @nn.compact
        def __call__(self, graph, deterministic):
            block = DifferentialRelationalBlock(8, num_heads=1, name="block")
            return stacked_call(block, members, (GRAPH_AXES,), graph,
                                deterministic=deterministic)

    batch = small["batch"]
    x = jax.random.normal(jax.random.PRNGKey(3), (members, batch.nodes.mask.shape[0], 8))
    graph = batch.graph("inter", nodes=x)
    # everything jitted: op by op, the many small programs cost more to compile
    params = jax.jit(Stack().init, static_argnums=2)(jax.random.PRNGKey(0), graph,
                                                     True)["params"]
    assert params["block"]["fc"]["kernel"].shape == (members, 8, 8)
    out = jax.jit(Stack().apply, static_argnums=2)({"params": params}, graph, True)
    assert out.shape == x.shape
    block = jax.jit(DifferentialRelationalBlock(8, num_heads=1).apply)
    for i in range(members):
        member = jax.tree.map(lambda p: p[i], params["block"])
        alone = block({"params": member}, batch.graph("inter", nodes=x[i]))
        np.testing.assert_allclose(out[i], alone, rtol=1e-5, atol=1e-5)
    grads = jax.jit(jax.grad(lambda p: Stack().apply({"params": p}, graph, True).sum()))(params)
    assert jax.tree.map(jnp.shape, grads) == jax.tree.map(jnp.shape, params)
    if members == 1:
        return
    kernels = params["block"]["fc"]["kernel"]
    assert not np.allclose(kernels[0], kernels[1])
    tied = {"block": jax.tree.map(lambda p: jnp.stack([p[0]] * 3), params["block"])}
    dropped = jax.jit(lambda p, g, key: Stack().apply(p, g, False, rngs={"dropout": key}))(
        {"params": tied}, graph._replace(nodes=jnp.stack([x[0]] * 3)), jax.random.PRNGKey(1))
    assert not np.allclose(dropped[0], dropped[1])  # same weights and inputs, own dropout masks


def test_banded_and_dense_block_aggregation_equal_segment_sum(small):
    from ambjax.nn import aggregate
    batch = small["batch"]
    assert batch.layout.band == 3          # GraphBatcher batches promise a band (the window)
    rng = np.random.default_rng(0)
    for kind in ("intra", "inter"):
        graph = batch.graph(kind)
        n = graph.nodes.mask.shape[0]
        weights = jnp.asarray(rng.normal(size=graph.senders.shape), jnp.float32)
        values = jnp.asarray(rng.normal(size=(n, 5)), jnp.float32)
        sparse = aggregate(weights, values, graph._replace(globals=None))
        dense_only = batch.layout.replace(band=None)
        mask = np.asarray(graph.nodes.mask)
        assert np.abs(np.asarray(sparse)[mask]).max() > 0
        for layout in (graph.globals, dense_only):
            out = jax.jit(aggregate)(weights, values, graph._replace(globals=layout))
            np.testing.assert_allclose(np.asarray(out)[mask], np.asarray(sparse)[mask],
                                       rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["intra", "inter"])
def test_banded_attention_is_the_per_edge_attention_without_float_scatters(small, kind):
    """With a band, the attention stays in banded blocks from its scores to the aggregation:
    it computes what the per-edge softmax and segment sum compute, drops the same edges under
    the same key, has the same gradients, and its gradient program scatters no float values."""
    graph = small["batch"].graph(kind)
    assert graph.globals.band == 3
    mask = np.asarray(graph.nodes.mask)
    rng = np.random.default_rng(0)
    banded = graph._replace(nodes=jnp.asarray(rng.normal(size=(mask.shape[0], 6)), jnp.float32))
    per_edge = banded._replace(globals=None)
    layer = DifferentialGraphAttention(features=8, dropout_rate=0.4)
    # jitted: op by op, the many small programs cost more to compile
    params = jax.jit(layer.init)(jax.random.PRNGKey(0), banded)
    probe = jnp.asarray(rng.normal(size=(mask.shape[0], 8)), jnp.float32) * mask[:, None]

    def loss(p, g, deterministic):
        out = layer.apply(p, g, deterministic=deterministic,
                          rngs={"dropout": jax.random.PRNGKey(3)})
        return jnp.sum(out * probe), out

    outputs = {}
    value_and_grad = jax.jit(jax.value_and_grad(loss, has_aux=True), static_argnums=2)
    for deterministic in (True, False):
        (_, want), want_grad = value_and_grad(params, per_edge, deterministic)
        (_, got), got_grad = value_and_grad(params, banded, deterministic)
        np.testing.assert_allclose(np.asarray(got)[mask], np.asarray(want)[mask],
                                   rtol=1e-5, atol=1e-5)
        for g, w in zip(jax.tree.leaves(got_grad), jax.tree.leaves(want_grad)):
            np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-4, atol=1e-5)
        outputs[deterministic] = np.asarray(got)[mask]
    assert not np.allclose(outputs[True], outputs[False])     # the dropout did drop edges
    banded_jaxpr = str(jax.make_jaxpr(jax.grad(lambda p: loss(p, banded, False)[0]))(params))
    per_edge_jaxpr = str(jax.make_jaxpr(jax.grad(lambda p: loss(p, per_edge, False)[0]))(params))
    assert "scatter-add" in per_edge_jaxpr and "scatter-add" not in banded_jaxpr


def test_band_softmax_ignores_absent_entries_in_values_and_gradients():
    # absent entries (pairs in the band without an edge) hold scores too; one far above the
    # present ones once overflowed the exponential, and the masked gradient was 0 * inf = nan
    from ambjax.nn.kernels import band_softmax
    rng = np.random.default_rng(0)
    scores = jnp.asarray(rng.normal(size=(2, 4, 7)), jnp.float32)
    present = jnp.asarray(rng.random((2, 4, 7)) < 0.5).at[1, 2].set(False)   # a lone receiver
    probe = jnp.asarray(rng.normal(size=(2, 4, 7)), jnp.float32)

    def f(s):
        return jnp.sum(band_softmax(s, present) * probe)

    results = []
    for absent in (0.0, 1e4, -1e4):
        s = jnp.where(present, scores, absent)
        results.append((jax.jit(band_softmax)(s, present), jax.jit(jax.grad(f))(s)))
    for values, grad in results:
        assert np.isfinite(np.asarray(grad)).all()
        np.testing.assert_array_equal(values, results[0][0])
        np.testing.assert_array_equal(grad, results[0][1])
    assert float(jnp.abs(results[0][1]).max()) > 0


def test_banded_attention_gradient_is_finite_for_large_scores(small):
    # the IEMOCAP preset at hidden 512 reached scores this large from its first step
    graph = small["batch"].graph("intra")
    mask = np.asarray(graph.nodes.mask)
    nodes = np.random.default_rng(1).normal(size=(mask.shape[0], 6)) * 300.0
    banded = graph._replace(nodes=jnp.asarray(nodes, jnp.float32))
    layer = DifferentialGraphAttention(features=8, dropout_rate=0.4)
    params = layer.init(jax.random.PRNGKey(0), banded)
    grads = jax.jit(jax.grad(lambda p: jnp.sum(layer.apply(
        p, banded, deterministic=False, rngs={"dropout": jax.random.PRNGKey(3)}) ** 2)))(params)
    for g in jax.tree.leaves(grads):
        assert np.isfinite(np.asarray(g)).all()


def test_batches_refuse_edges_outside_their_band(small):
    dialogues = small["dialogues"]
    edges = {k: [dialogue_edges(d.speakers, 5, k) for d in dialogues] for k in ("intra", "inter")}
    budget = dataclasses.replace(small["budget"], band=3, n_edge_intra=4000, n_edge_inter=4000)
    with pytest.raises(ValueError, match="beyond the budget's band 3"):
        build_batch(dialogues, budget, modalities=small["model"].config.modalities,
                    num_speakers=2, edges=edges)


def test_bfloat16_compute_tracks_float32(small):
    """Mixed precision: same float32 parameters, bf16 matmuls; logits stay float32 and close."""
    model, batch, params = small["model"], small["batch"], small["params"]
    half = AMBDSGDN(dataclasses.replace(model.config, dtype="bfloat16"))
    traced = jax.jit(lambda p: half.apply({"params": p}, batch)).trace(params)   # traced once
    jaxpr = str(traced.jaxpr)
    assert "bf16" in jaxpr and "dot_general" in jaxpr
    out = traced.lower().compile()(params)
    ref = small["apply"](params, batch)
    mask = np.asarray(batch.nodes.mask)
    got, want = np.asarray(out["logits"])[mask], np.asarray(ref["logits"])[mask]
    assert out["logits"].dtype == jnp.float32
    assert np.abs(got - want).max() > 0                        # really computed in bf16
    assert np.abs(got - want).max() < 0.05 * np.abs(want).max() + 0.05
    assert (got.argmax(-1) == want.argmax(-1)).mean() > 0.9

    def loss(p):
        o = half.apply({"params": p}, batch, train=True, balance_active=True,
                       rngs={"dropout": jax.random.PRNGKey(1), "balance": jax.random.PRNGKey(2)})
        return amb_loss(o["logits"], o["modality_logits"], batch.nodes.label,
                        batch.nodes.mask)[0]

    grads = jax.jit(jax.grad(loss))(params)
    for g in jax.tree.leaves(grads):
        assert g.dtype == jnp.float32 and np.isfinite(np.asarray(g)).all()


def test_modality_f1_over_devices_equals_the_global_batch():
    from ambjax.metrics import confusion_matrix, modality_f1, weighted_f1
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 4, 32).astype(np.int32)
    mask = rng.random(32) > 0.2
    logits = [rng.normal(size=(32, 4)).astype(np.float32) for _ in range(3)]
    whole = modality_f1(labels, logits, mask, 4)
    expected = [weighted_f1(confusion_matrix(labels, lm.argmax(-1), mask, 4)) for lm in logits]
    np.testing.assert_allclose(whole, expected, rtol=1e-6)
    split = lambda x: x.reshape((4, 8) + x.shape[1:])  # noqa: E731
    per_device = jax.pmap(lambda y, ls, m: modality_f1(y, ls, m, 4, "d"), axis_name="d")(
        split(labels), [split(lm) for lm in logits], split(mask))
    np.testing.assert_allclose(per_device, np.broadcast_to(whole, (4, 3)), rtol=1e-6)


@pytest.mark.parametrize("modalities", [("text",), ("text", "audio", "visual")])
def test_attention_weights_sum_to_one_minus_lambda_per_receiver(iemocap_small, modalities):
    """The instrument reads every attention layer's A = alpha1 - lambda alpha2: each map sums
    to 1 over a receiver's in-edges, so A sums to 1 - lambda (the layer's `layer_lambdas`),
    and to 1 without the second map."""
    from ambjax.nn import attention_weights, edge_share
    from ambjax.nn.attention import layer_lambdas
    dims = {m: iemocap_small.dims[m] for m in modalities}
    gb = GraphBatcher(iemocap_small, window=3, batch_size=2, modalities=modalities)
    batch = gb.build(iemocap_small.split("test")[:2])
    real = np.asarray(batch.nodes.mask)
    for differential in (True, False):
        model = create_model(dims, 6, 2, hidden_dim=16, num_heads=2, differential=differential)
        params = init_params(model, batch, 1)
        weights = jax.jit(attention_weights, static_argnums=0)(model, params, batch)
        assert sorted(weights) == sorted(f"{g}/{a}" for g in ("inter", "intra")
                                         for a in ("attention_0", "attention_1", "out_att"))
        lambdas = layer_lambdas(params)
        for layer, w in weights.items():
            edges = batch.edges(layer.split("/")[0])
            assert w.shape == (len(modalities), edges.senders.shape[0])
            for m in range(len(modalities)):
                per_node = np.asarray(jax.ops.segment_sum(w[m], edges.receivers,
                                                          num_segments=real.shape[0]))[real]
                want = 1 - float(lambdas[layer][m]) if differential else 1.0
                np.testing.assert_allclose(per_node, want, rtol=1e-5, atol=1e-5)
            everything = jnp.ones(edges.senders.shape, bool)
            assert float(edge_share(w[0], everything, edges.receivers, batch.nodes.mask)) == \
                pytest.approx(1.0)
