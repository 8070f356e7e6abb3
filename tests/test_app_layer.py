"""The application layer (ambjax.train): any DialogueModel through the one Trainer, hooks,
TensorBoard event files, load_run, option tables, and no command-line flag in library code."""

import glob
import json
import os
import re
import struct
import tokenize

import jax.numpy as jnp
import numpy as np
import pytest

from ambjax.cli import flag_hints
from ambjax.errors import AmbjaxError, ConfigError
from ambjax.graphs import GraphBatcher
from ambjax.metrics import confusion_matrix, weighted_f1
from ambjax.train import (Hook, Trainer, create_optimizer, default_hooks, load_dataset, load_run,
                          train_and_evaluate)
from ambjax.train.config import OptimConfig
from ambjax.train.hooks import STALL_AFTER_EPOCHS, STALL_EXCESS, STALL_SHARE, TensorBoard
from experiments.compose import TwoModalityGraphClassifier
from experiments.compose import main as compose_main
from experiments.configs import make_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _lines(path):
    return [json.loads(line) for line in open(path).read().splitlines() if line]


def _test_f1(run, batch_size=16):
    """Weighted F1 on the test split from `run.model.apply` on `run.params` alone."""
    batcher = GraphBatcher(run.dataset, window=run.config.data.window, batch_size=batch_size)
    conf = 0
    for batch in batcher.batches("test"):
        out = run.model.apply({"params": run.params}, batch)
        conf = conf + confusion_matrix(batch.nodes.label, jnp.argmax(out["logits"], -1),
                                       batch.nodes.mask, out["logits"].shape[-1])
    return float(weighted_f1(conf))


def test_compose_trains_another_model_with_seeds_and_resume(tmp_path, capsys):
    out = tmp_path / "compose"
    assert compose_main(["--epochs", "2", "--seeds", "1,2", "--out", str(out)]) == 0
    assert compose_main(["--epochs", "3", "--seeds", "1,2", "--out", str(out), "--resume"]) == 0
    printed = capsys.readouterr().out
    assert "resumed from epoch 2" in printed and "2 seed(s) as one program" in printed
    for seed in (1, 2):
        folder = out / f"seed{seed}"
        records = _lines(folder / "metrics.jsonl")
        assert [r["epoch"] for r in records] == [1, 2, 3]
        assert records[-1]["train"]["loss"] < records[0]["train"]["loss"]     # it learns
        report = json.loads((folder / "report.json").read_text())
        assert report["model"] == "TwoModalityGraphClassifier"
        run = load_run(str(folder), model=TwoModalityGraphClassifier(6))
        assert run.epoch == report["best_epoch"]
        assert _test_f1(run) == pytest.approx(report["test"]["weighted_f1"], abs=1e-6)
    # the model must be named to read such a run
    with pytest.raises(AmbjaxError, match="TwoModalityGraphClassifier"):
        load_run(str(out / "seed1"))


def _read_events(path):
    """(tag, step, value) of every scalar in a TensorBoard event file (TFRecord framing:
    length u64, crc u32, data, crc u32; data an Event protobuf)."""
    from tensorboardX.proto import event_pb2
    data, out, at = open(path, "rb").read(), [], 0
    while at < len(data):
        (n,) = struct.unpack("<Q", data[at:at + 8])
        event = event_pb2.Event.FromString(data[at + 12:at + 12 + n])
        at += 12 + n + 4
        for v in event.summary.value:
            out.append((v.tag, event.step, v.simple_value))
    return out


class _Epochs(Hook):
    def __init__(self):
        self.seen = []

    def on_epoch(self, run, epoch):
        self.seen.append((epoch.epoch, epoch.record["test"]["weighted_f1"]))
        return {"mine": f"epoch {epoch.epoch}"}


def test_tiny_run_writes_tensorboard_events_user_hooks_and_loads_back(tmp_path):
    pytest.importorskip("tensorboardX")
    assert any(isinstance(h, TensorBoard) for h in default_hooks())
    mine = _Epochs()
    out = tmp_path / "run"
    report = train_and_evaluate(make_config("tiny", ["schedule.epochs=2"]), str(out),
                                n_devices=1, extra_hooks=[mine])
    records = _lines(out / "metrics.jsonl")
    assert mine.seen == [(r["epoch"], r["test"]["weighted_f1"]) for r in records]
    (events,) = glob.glob(str(out / "tensorboard" / "events.out.tfevents.*"))
    scalars = {(tag, step): value for tag, step, value in _read_events(events)}
    for r in records:
        e = r["epoch"]
        assert scalars[("test/weighted_f1", e)] == pytest.approx(r["test"]["weighted_f1"])
        assert scalars[("train/loss", e)] == pytest.approx(r["train"]["loss"])
        assert scalars[("valid/loss", e)] == pytest.approx(r["valid"]["loss"])
        assert scalars[("q/audio", e)] == pytest.approx(r["train"]["q"][1])
        layer = next(iter(r["lambda"]))
        assert scalars[(f"lambda/{layer}/0", e)] == pytest.approx(r["lambda"][layer][0])
    # the hook's notes reach the checkpointed progress (the first note of a key is kept)
    from ambjax.train.checkpoint import create_manager, read_meta
    manager = create_manager(str(out / "checkpoints"))
    assert read_meta(manager, 2)["notes"]["mine"] == "epoch 1"
    manager.close()
    # load_run: the selected epoch's parameters reproduce the reported test metrics
    run = load_run(str(out))
    assert run.epoch == report["best_epoch"]
    assert _test_f1(run, batch_size=run.config.data.batch_size) == pytest.approx(
        report["test"]["weighted_f1"], abs=1e-6)
    second = load_run(str(out), step=2)
    assert second.epoch == 2
    # the recorded lambdas are those of the epoch's parameters
    from ambjax.nn.attention import layer_lambdas
    for layer, values in layer_lambdas(second.params).items():
        np.testing.assert_allclose(values, records[1]["lambda"][layer], rtol=1e-6)
    with pytest.raises(AmbjaxError, match="no checkpoint of epoch 7"):
        load_run(str(out), step=7)


def test_hooks_replace_the_defaults(tmp_path):
    mine = _Epochs()
    out = tmp_path / "bare"
    train_and_evaluate(make_config("tiny", ["schedule.epochs=1"]), str(out), n_devices=1,
                       hooks=[mine])
    assert [e for e, _ in mine.seen] == [1]
    assert sorted(os.listdir(out)) == [".lock"]       # no records, checkpoints, reports


def test_option_names_cannot_fall_through():
    for key, value in (("optimizer", "adam"), ("lr_schedule", "cosine")):
        with pytest.raises(ConfigError, match=f"optim.{key} must be one of"):
            create_optimizer(OptimConfig(**{key: value}))
    with pytest.raises(ConfigError, match="model.norm must be one of"):
        make_config("tiny", ["model.norm=batchnorm"])


def test_class_weights_are_explicit():
    config = make_config("tiny", ["optim.class_weights=1,2,3"])
    data = load_dataset(config.data)
    with pytest.raises(ConfigError, match="3 class weights .* 6 classes"):
        Trainer.from_config(config, data, n_devices=1)
    # the MELD preset is unweighted, the IEMOCAP one carries the release's weights
    assert make_config("meld").optim.class_weights == ()
    assert len(make_config("iemocap").optim.class_weights) == 6


def _string_literals(path):
    """String literals of a module that are not docstrings."""
    out, previous = [], None
    with open(path) as f:
        for tok in tokenize.generate_tokens(f.readline):
            if tok.type == tokenize.STRING and previous not in (tokenize.INDENT, tokenize.NEWLINE,
                                                                None):
                out.append((tok.start[0], tok.string))
            if tok.type not in (tokenize.NL, tokenize.COMMENT):
                previous = tok.type
    return out


def test_no_library_module_mentions_a_command_line_flag():
    """Only the command-line layer (ambjax/cli.py, ambjax/data/__main__.py) speaks in flags;
    the library names parameters as `name`, which the command line turns into flags."""
    found = []
    for path in glob.glob(os.path.join(ROOT, "ambjax", "**", "*.py"), recursive=True):
        if path.endswith(("cli.py", "__main__.py")):
            continue
        for line, text in _string_literals(path):
            if re.search(r"(?<![\w-])--[a-z][a-z-]+", text) and "--xla" not in text:
                found.append(f"{os.path.relpath(path, ROOT)}:{line}: {text[:60]}")
    assert not found, found
    assert flag_hints("use `overwrite` or another `out_dir`") == "use --overwrite or another --out"


def test_readme_stall_numbers_match_the_code():
    readme = open(os.path.join(ROOT, "README.md")).read()
    sentence = re.search(r"predicts one class for at least (\d+)% of the validation utterances, "
                         r"and (\d+) points more than that\s+class's true share, from its "
                         r"epoch (\d+) on", readme)
    assert sentence, "the README's stall sentence changed; keep it and the code together"
    assert (int(sentence[1]), int(sentence[2]), int(sentence[3])) == (
        round(100 * STALL_SHARE), round(100 * STALL_EXCESS), STALL_AFTER_EPOCHS)


def test_import_ambjax_stays_light():
    import subprocess
    import sys
    code = ("import sys, ambjax; heavy = [m for m in ('tensorboardX', "
            "'matplotlib', 'torch') if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, check=True).stdout.strip()
    assert out == "[]"


def test_preset_and_library_docstrings_quote_no_results():
    """Results live in the README and benchmarks/results (written by commands); a docstring
    that quotes one drifts when the code changes."""
    result = re.compile(r"\d+\.\d+ ± \d|weighted F1 \d|\d+(\.\d+)?x (faster|slower)")
    found = []
    for pattern in ("ambjax/**/*.py", "experiments/**/*.py"):
        for path in glob.glob(os.path.join(ROOT, pattern), recursive=True):
            text = open(path).read()
            found += [f"{os.path.relpath(path, ROOT)}: {m.group(0)}"
                      for m in result.finditer(text)]
    assert not found, found


def test_library_argument_errors_are_ambjax_errors():
    """What a library user can get wrong (names, widths, budgets) raises an AmbjaxError (a
    ValueError too), which the commands print as one line."""
    from ambjax.data import make_synthetic
    from ambjax.graphs import dialogue_edges
    from ambjax.train import make_train_step
    cases = [lambda: make_synthetic("nope"),
             lambda: make_synthetic("meld", dims={"smell": 3}),
             lambda: dialogue_edges([0, 1], window=-1, graph="inter"),
             lambda: make_train_step(None, None, mask_rng="philox")]
    for case in cases:
        with pytest.raises(AmbjaxError):
            case()
