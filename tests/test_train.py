"""Train step (jit and pmap), checkpoints and resume, experiment scripts, bad input."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ambjax.data import write_pickle
from ambjax.graphs import GraphBatcher
from ambjax.nn import create_model
from ambjax.nn.attention import lambda_parameters, layer_lambdas
from ambjax.train import (CheckpointError, RunFolderError, Trainer, create_train_state,
                          evaluate_checkpoint, load_dataset, make_train_step, replicate,
                          train_and_evaluate, unreplicate)
from ambjax.train.config import replace_key
from ambjax.train.steps import TrainStep, compile_steps, model_state
from experiments.configs import make_config
from conftest import TINY_PROGRAMS, compiled_trainer
from experiments.train import main as train_main

# one device: the same compiled programs as the benchmark test's tiny row (persistent cache);
# pmap is tested step by step in test_pmap_step_equals_single_device_step
QUIET = dict(n_devices=1)


def test_pmap_step_equals_single_device_step(iemocap_small):
    n_dev = 4
    assert jax.local_device_count() >= n_dev
    # no dropout, so that the two runs draw no different masks; balancing active: q is
    # computed from confusion counts summed over the devices, as on the global batch
    model = create_model(iemocap_small.dims, 6, 2, hidden_dim=8, num_heads=2, dropout=0.0,
                         graph_dropout=0.0, p_exe=0.0, graph_heads=1, graphs=("inter",))
    # plain SGD: Adam's first step is ~lr * sign(g), which blows up float noise in tiny gradients
    opt = optax.sgd(1.0)
    dialogues = iemocap_small.split("train")[:8]
    single_gb = GraphBatcher(iemocap_small, window=3, batch_size=8, growth=None)
    multi_gb = GraphBatcher(iemocap_small, window=3, batch_size=8, n_devices=n_dev, growth=None)
    single = single_gb.build(dialogues)
    multi = multi_gb.build(dialogues)
    weights = jnp.arange(1.0, 7.0)
    state = create_train_state(model, single, opt, seed=0)
    step1 = jax.jit(make_train_step(model, opt, class_weights=weights))
    stepn = jax.pmap(make_train_step(model, opt, class_weights=weights, axis_name="batch"),
                     axis_name="batch", in_axes=(0, 0, None))
    s1, m1 = step1(state, single, jnp.asarray(True))
    sn, mn = stepn(replicate(state, n_dev), multi, jnp.asarray(True))
    sn, mn = unreplicate(sn), unreplicate(mn)
    np.testing.assert_allclose(mn["loss"], m1["loss"], rtol=1e-5)
    np.testing.assert_array_equal(mn["confusion"], m1["confusion"])
    np.testing.assert_allclose(mn["q"], m1["q"], atol=1e-6)
    assert float(np.max(m1["q"])) > 0  # balancing acted
    for a, b in zip(jax.tree.leaves(sn.params), jax.tree.leaves(s1.params)):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)
    moved = sum(float(np.abs(a - b).sum()) for a, b in zip(jax.tree.leaves(s1.params),
                                                         jax.tree.leaves(state.params)))
    assert moved > 0



def test_the_two_program_step_computes_what_one_program_does():
    # the Trainer's step is two programs (the gradients for the batch's shape, the update for
    # every shape); jitted as a whole, XLA compiles (and fuses) them as one: the same numbers
    # up to rounding. SGD: Adam turns the rounding noise of gradients that are zero in exact
    # arithmetic (the self-attention's key bias, under the softmax's shift) into ~lr steps;
    # a small model (the claim is about the split, not the model): fast compiles
    config = make_config("tiny", TINY_PROGRAMS + ["optim.optimizer=sgd"])
    trainer = Trainer.from_config(config, load_dataset(config.data), **QUIET)
    parts = trainer.train_step
    assert isinstance(parts, TrainStep)
    one = jax.jit(lambda *args: parts(*args))
    trainer.compile()                           # the compiled programs (`Programs.train_step`)
    fused = split = trainer.state
    for batch in list(trainer.batcher.seed_batches("train", trainer.seeds, epoch=0))[:2]:
        fused, fused_metrics = one(fused, batch, jnp.asarray(True))
        split, split_metrics = trainer.train_step(split, batch, jnp.asarray(True))
    assert int(split.step[0]) == 2
    assert not np.allclose(split.params["head_text"]["kernel"],
                           trainer.state.params["head_text"]["kernel"])
    for a, b in zip(jax.tree.leaves((fused, fused_metrics)),
                    jax.tree.leaves((split, split_metrics))):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_the_cpu_step_keeps_its_input_state_and_trains_as_a_donating_step(iemocap_small):
    # on CPU the step does not donate the state (donation makes XLA copy every parameter at
    # the start of each step); what it computes is the donating step's, bit for bit. Both are
    # compiled with XLA's default fusion emitters, which the suite turns off (conftest)
    # one modality and one relational block: the two compiles below use the slower default
    model = create_model({"text": iemocap_small.dims["text"]}, 6, 2, hidden_dim=8, num_heads=2,
                         graph_heads=1, graphs=("inter",))
    opt = optax.adam(1e-2)
    batcher = GraphBatcher(iemocap_small, window=3, batch_size=4, growth=None,
                           modalities=("text",))
    state = create_train_state(model, batcher.build(iemocap_small.split("train")[:1]), opt, 0)
    stacked = jax.tree.map(lambda x: x[None], state)
    batch = next(batcher.seed_batches("train", [0], epoch=0))
    as_run = {"xla_cpu_use_fusion_emitters": True}

    def compiled(donate):
        step = compile_steps(model, opt, 1, seed_axis=True, donate=donate)[0]
        return TrainStep(
            step.gradients.lower(model_state(stacked), batch, jnp.asarray(True)).compile(as_run),
            step.update.lower(stacked, stacked.params).compile(as_run))

    kept, donating = compiled(False), compiled(True)
    given = jax.tree.map(jnp.copy, stacked)
    s_kept, m_kept = kept(given, batch, jnp.asarray(True))
    s_kept, m_kept = kept(s_kept, batch, jnp.asarray(True))
    assert not any(x.is_deleted() for x in jax.tree.leaves(given))
    given = jax.tree.map(jnp.copy, stacked)
    s_don, m_don = donating(given, batch, jnp.asarray(True))
    assert all(x.is_deleted() for x in jax.tree.leaves(given.params))
    s_don, m_don = donating(s_don, batch, jnp.asarray(True))
    for a, b in zip(jax.tree.leaves((s_kept, m_kept)), jax.tree.leaves((s_don, m_don))):
        np.testing.assert_array_equal(a, b)
    assert int(s_kept.step[0]) == 2 and not np.array_equal(s_kept.params["head_text"]["kernel"],
                                                           stacked.params["head_text"]["kernel"])


def test_a_run_packs_the_encoders_view_into_the_rows_its_batches_need():
    config = make_config("tiny", ["schedule.epochs=3"])
    dataset = load_dataset(config.data)
    trainer = Trainer.from_config(config, dataset, n_devices=1)
    used = trainer.batcher.budgets_used(trainer.seeds, 3)
    assert any(b.n_row is not None and b.n_row < b.n_graph for b in used["train"])
    for epoch in range(3):                       # every batch of the run fits its planned rows
        for batch in trainer.batcher.seed_batches("train", trainer.seeds, epoch=epoch):
            budget = next(b for b in used["train"]
                          if b.n_node == batch.nodes.mask.shape[-1])
            assert batch.layout.dense_index.shape[-2] == budget.rows
            assert batch.layout.packed == (budget.n_row is not None)
    plain = Trainer.from_config(replace_key(config, "data.pack_rows", False), dataset,
                                n_devices=1)
    assert all(b.n_row is None for b in plain.batcher.budgets)
    assert [b.n_node for b in plain.batcher.budgets] == [b.n_node for b in trainer.batcher.budgets]

def _tiny(**overrides):
    return make_config("tiny", {k: str(v) for k, v in overrides.items()})


def _params(run_dir, step=None):
    import orbax.checkpoint as ocp
    from ambjax.train import checkpoint as ckpt
    manager = ckpt.create_manager(str(run_dir / "checkpoints"))
    step = step or manager.latest_step()
    state = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
    manager.close()
    return state


@pytest.fixture(scope="module")
def three_epochs(tmp_path_factory):
    out = tmp_path_factory.mktemp("straight")
    report = train_and_evaluate(_tiny(**{"schedule.epochs": 3}), str(out), **QUIET)
    return out, report


def test_run_folder_and_report(three_epochs):
    out, report = three_epochs
    assert {"selection", "best_epoch", "devices", "valid", "test"} <= set(report)
    assert report["selection"] == "valid" and report["devices"] == 1
    for key in ("accuracy", "weighted_f1", "macro_f1", "per_class_f1", "confusion"):
        assert key in report["test"]
    assert 0 <= report["test"]["weighted_f1"] <= 1
    assert np.sum(report["test"]["confusion"]) == report["test"]["support"]
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(l)["epoch"] for l in lines] == [1, 2, 3]
    assert json.loads((out / "report.json").read_text())["best_epoch"] == report["best_epoch"]
    assert "Confusion matrix" in (out / "report.md").read_text()
    assert json.loads((out / "config.json").read_text())["schedule"]["epochs"] == 3


def test_resume_is_bit_for_bit(three_epochs, tmp_path):
    straight, _ = three_epochs
    out = tmp_path / "resumed"
    train_and_evaluate(_tiny(**{"schedule.epochs": 2}), str(out), **QUIET)
    train_and_evaluate(_tiny(**{"schedule.epochs": 3}), str(out), resume=True, **QUIET)
    a, b = _params(straight, 3), _params(out, 3)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(x, y)
    assert [json.loads(l)["epoch"] for l in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]


def test_a_run_compiling_beside_its_first_epoch_records_what_a_waiting_run_does(
        three_epochs, tmp_path, monkeypatch):
    """As on an accelerator (`compiles_beside_steps`): the first epoch trains while the later
    programs compile; the run's parameters and records are the same bit for bit."""
    import ambjax.train.loop as loop
    straight, _ = three_epochs
    waits = []
    compile_ = Trainer.compile
    monkeypatch.setattr(loop, "compiles_beside_steps", lambda platform: True)
    monkeypatch.setattr(Trainer, "compile",
                        lambda self, **kw: waits.append(kw["wait"]) or compile_(self, **kw))
    out = tmp_path / "beside"
    train_and_evaluate(_tiny(**{"schedule.epochs": 3}), str(out), **QUIET)
    assert waits == [False]
    for x, y in zip(jax.tree.leaves(_params(straight, 3)), jax.tree.leaves(_params(out, 3))):
        np.testing.assert_array_equal(x, y)

    def records(run):
        lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        for line in lines:
            del line["train"]["seconds"], line["train"]["steps_per_s"]
        return lines

    assert records(out) == records(straight)


def test_refuses_to_reuse_or_mix_runs(three_epochs, tmp_path):
    straight, _ = three_epochs
    with pytest.raises(RunFolderError, match="already holds a run"):
        train_and_evaluate(_tiny(**{"schedule.epochs": 3}), str(straight), **QUIET)
    with pytest.raises(RunFolderError, match="another model configuration"):
        train_and_evaluate(_tiny(**{"schedule.epochs": 4, "model.hidden_dim": 8}), str(straight), resume=True, **QUIET)


def test_checkpoint_evaluation_and_dims_mismatch(three_epochs, tmp_path):
    straight, report = three_epochs
    result = evaluate_checkpoint(str(straight))
    assert result["checkpoint_epoch"] == report["best_epoch"]
    assert result["test"]["weighted_f1"] == pytest.approx(report["test"]["weighted_f1"])
    from ambjax.data import make_synthetic
    other = make_synthetic("iemocap", scale=0.05, dims={"text": 24, "audio": 16, "visual": 9})
    path = tmp_path / "other.pkl"
    write_pickle(other, path)
    with pytest.raises(CheckpointError, match="feature widths"):
        evaluate_checkpoint(str(straight), data=str(path))


def test_cli_errors_are_one_line(tmp_path, capsys):
    cases = [
        ["--preset", "nope"],
        ["--preset", "tiny", "--set", "no_such_key=1"],
        ["--preset", "tiny", "--set", "model.no_such_key=1"],
        ["--preset", "tiny", "--set", "schedule.epochs=abc"],
        ["--preset", "tiny", "--set", "model.num_heads=3"],
        ["--preset", "tiny", "--data", str(tmp_path / "absent.pkl")],
        ["--preset", "tiny", "--ablation", "nope"],
    ]
    for argv in cases:
        assert train_main(argv + ["--out", str(tmp_path / "x")]) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error:"), (argv, err)
    bad = tmp_path / "bad.pkl"
    bad.write_bytes(b"not a pickle")
    assert train_main(["--preset", "tiny", "--data", str(bad), "--out", str(tmp_path / "y")]) == 2
    assert str(bad) in capsys.readouterr().err


def test_presets_and_overrides():
    iemocap, meld = make_config("iemocap"), make_config("meld")
    assert (iemocap.optim.lr, iemocap.optim.l2, iemocap.data.batch_size, iemocap.schedule.epochs,
            iemocap.data.window) == (6.8e-5, 5e-5, 16, 61, 20)
    assert (meld.optim.lr, meld.optim.l2, meld.data.batch_size, meld.schedule.epochs,
            meld.data.window, meld.model.dropout) == (5e-5, 7.5e-5, 64, 20, 6, 0.11)
    cfg = make_config("iemocap", ["model.hidden_dim=64", "model.balance=false",
                                  "data.path=x.pkl"], "no_inter")
    assert cfg.model.hidden_dim == 64 and cfg.model.balance is False
    assert cfg.model.graphs == ("intra",) and cfg.data.path == "x.pkl"


def test_a_trainer_compiling_in_the_background_trains_as_one_that_waited():
    """`compile(wait=False)`: the programs compile in the order the run first needs them
    (`GraphBatcher.use_order`), training starts once the first step's are ready, and every
    number is the one a trainer that waited for all of them computes."""
    config = _tiny(**{"data.budget_growth": 1.25, "data.compile_node_steps": 0,
                      "data.synthetic_scale": 0.1, "schedule.epochs": 2,
                      "optim.optimizer": "sgd", "optim.lr": 0.1, "model.graph_heads": 1,
                      "model.graphs": "inter", "data.modalities": "text"})
    dataset = load_dataset(config.data)
    results = []
    for wait in (True, False):
        trainer = Trainer.from_config(config, dataset, n_devices=1)
        order = [(kind, b.n_node) for kind, b in trainer.batcher.use_order(trainer.seeds, 2)]
        epoch0 = [b.nodes.mask.shape[-1]
                  for b in trainer.batcher.seed_batches("train", trainer.seeds, epoch=0)]
        # the first epoch's buckets in the order it meets them, then evaluation's
        assert order[:len(set(epoch0)) + 1] == [
            ("train", n) for n in dict.fromkeys(epoch0)] + [("eval", order[len(set(epoch0))][1])]
        trainer.compile(wait=wait)
        metrics = [([{k: v for k, v in seed.items() if k not in ("seconds", "steps_per_s")}
                     for seed in trainer.train_epoch(epoch)],
                    trainer.evaluate("valid"), trainer.evaluate("test")) for epoch in range(2)]
        trainer.wait_compiled()
        assert not trainer.programs.pending and trainer.programs.compiled_s is not None
        results.append((jax.device_get(trainer.state.params), metrics))
    assert len({kind for kind, _ in order}) == 2 and len(order) >= 3
    for a, b in zip(jax.tree.leaves(results[0]), jax.tree.leaves(results[1])):
        np.testing.assert_array_equal(a, b)


def test_merged_buckets_compile_fewer_programs_and_train_the_same():
    """Padding a small bucket's batches into a larger bucket (`data.compile_node_steps`)
    compiles fewer programs and changes no parameter, dropout included (SGD: Adam would turn
    the rounding noise of a zero gradient, e.g. an attention key bias's, into full steps)."""
    trainers = []
    for cost in (0, 10 ** 9):
        config = _tiny(**{"data.budget_growth": 1.25, "data.compile_node_steps": cost,
                          "data.synthetic_scale": 0.1, "schedule.epochs": 1,
                          "optim.optimizer": "sgd", "optim.lr": 0.1,
                          "model.graph_heads": 1, "model.graphs": "inter",   # fast compiles
                          "data.modalities": "text"})
        trainer = Trainer.from_config(config, load_dataset(config.data), n_devices=1)
        trainer.compile()
        trainer.train_epoch(0)
        trainers.append(trainer)
    every, merged = trainers
    assert len(merged.programs.train) == 1 < len(every.programs.train)
    # evaluation is packed into one bucket either way
    assert len(merged.programs.eval) == 1 == len(every.programs.eval)
    assert every.bucket_counts[1] == 0 < merged.bucket_counts[1]
    assert sum(merged.bucket_counts) == sum(every.bucket_counts)
    for a, b in zip(jax.tree.leaves(every.state.params), jax.tree.leaves(merged.state.params)):
        np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-5)


def test_an_epochs_host_summaries_compile_no_program():
    """After the compile, an epoch as the loop records it (train, evaluation, each seed's
    state and attention lambdas) runs no XLA program but the compiled steps: the summaries
    of counts and parameters are computed in numpy (a `jnp` call on host arrays, or `x[k]`
    on a device array, compiles a program per operation and shape)."""
    config = make_config("tiny", TINY_PROGRAMS + ["data.modalities=text,audio"])
    trainer, _ = compiled_trainer(config, load_dataset(config.data))
    compiles = []

    def note(event, duration, **_):
        if event == "/jax/core/compile/backend_compile_duration":
            compiles.append(event)

    jax.clear_caches()        # every eager program compiled before is forgotten
    jax.monitoring.register_event_duration_secs_listener(note)
    try:
        trainer.train_epoch(0)
        valid = trainer.evaluate("valid")[0]
        state = trainer.seed_state(0)
        lambdas = layer_lambdas(trainer.seed_slice(lambda_parameters(trainer.state.params), 0))
    finally:
        jax.monitoring.unregister_event_duration_listener(note)
    assert not compiles
    assert lambdas and all(isinstance(v, np.ndarray) for v in lambdas.values())
    assert all(isinstance(x, np.ndarray) for x in jax.tree.leaves(state.params))
    # the numpy summaries are the jax ones
    device_lambdas = layer_lambdas(jax.tree.map(lambda x: jnp.asarray(x)[0],
                                                lambda_parameters(trainer.state.params)))
    for name, value in lambdas.items():
        np.testing.assert_allclose(value, device_lambdas[name], rtol=1e-6)
    assert len(valid["modality_f1"]) == 2
    assert all(0 <= f <= 1 for f in valid["modality_f1"].values())
