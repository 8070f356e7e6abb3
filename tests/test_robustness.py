"""Hostile and careless use: every bad file, flag and fault ends in one clear line (exit 2), and
nothing a user made is lost."""

import errno
import json
import logging
import os
import pickle
import subprocess
import sys

import jax
import numpy as np
import pytest

from ambjax.cli import run_main
from ambjax.data import DataFormatError, load_features, make_synthetic, read_pickle, write_pickle
from ambjax.data.synthetic import to_layout_fields
from ambjax.errors import DivergedError
from ambjax.train import Trainer, load_dataset, train_and_evaluate
from ambjax.train.compile import ACTIVATION_FACTOR, ResourceError
from ambjax.train.run_folder import RunLock
from conftest import one_error_line, snapshot
from experiments.configs import make_config
from experiments.evaluate import main as evaluate_main
from experiments.train import main as train_main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--preset", "tiny", "--devices", "1"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("finished") / "run"
    assert train_main(TINY + ["--epochs", "1", "--out", str(out)]) == 0
    return out


# --- lost work ------------------------------------------------------------------------------

def test_overwrite_with_bad_input_leaves_the_old_run_byte_identical(finished_run, tmp_path,
                                                                    capsys):
    before = snapshot(finished_run)
    bad = tmp_path / "bad.pkl"
    bad.write_bytes(b"not a pickle")
    capsys.readouterr()
    for argv in (["--data", str(tmp_path / "typo.pkl")], ["--data", str(bad)],
                 ["--set", "model.dropout=2.0"], ["--devices", "99"],
                 ["--set", "model.num_heads=3"]):
        assert train_main(TINY + argv + ["--overwrite", "--out", str(finished_run)]) == 2
        one_error_line(capsys)
    assert snapshot(finished_run) == before


def test_refused_resume_leaves_config_json_alone(finished_run, capsys):
    before = snapshot(finished_run)
    assert train_main(TINY + ["--set", "model.hidden_dim=8", "--resume",
                              "--out", str(finished_run)]) == 2
    one_error_line(capsys, "another model configuration")
    assert train_main(TINY + ["--resume", "--overwrite", "--out", str(finished_run)]) == 2
    one_error_line(capsys, "exclude each other")
    assert snapshot(finished_run) == before


def test_a_locked_folder_is_refused_and_left_alone(finished_run, capsys):
    before = snapshot(finished_run)
    lock = RunLock(str(finished_run))
    try:
        assert train_main(TINY + ["--overwrite", "--out", str(finished_run)]) == 2
        one_error_line(capsys, "in use by another run", str(os.getpid()))
    finally:
        lock.release()
    after = snapshot(finished_run)
    after.pop(".lock"), before.pop(".lock")
    assert after == before


def test_failed_setup_leaves_nothing_that_blocks_the_corrected_command(tmp_path, capsys):
    out = tmp_path / "run"
    assert train_main(TINY + ["--set", "data.batch_size=0", "--out", str(out)]) == 2
    one_error_line(capsys, "data.batch_size")
    assert not (out / "config.json").exists()
    out.mkdir()
    # a run that died before its first epoch: its config.json, lock and empty metrics
    (out / "config.json").write_text('{"fingerprint": "0123456789abcdef"}')
    (out / ".lock").write_text("")
    (out / "metrics.jsonl").write_text("")
    assert train_main(TINY + ["--epochs", "1", "--out", str(out)]) == 0


def test_resume_drops_a_torn_last_metrics_line(tmp_path, caplog):
    out = tmp_path / "run"
    caplog.set_level(logging.INFO, logger="ambjax")
    train_and_evaluate(make_config("tiny", ["schedule.epochs=1"]), str(out), n_devices=1)
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 2, "train": {"lo')          # killed mid-write
    train_and_evaluate(make_config("tiny", ["schedule.epochs=2"]), str(out), n_devices=1,
                       resume=True)
    assert any("torn last line" in r.getMessage() for r in caplog.records)
    epochs = [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().split(
        "\n") if line]
    assert epochs == [1, 2]


# --- hostile pickles ------------------------------------------------------------------------

def test_deeply_nested_pickle_is_an_error_not_a_crash(tmp_path):
    path = tmp_path / "deep.pkl"
    path.write_bytes(b"\x80\x02N" + b"\x85" * 1_000_000 + b".")   # 1 MB of nested tuples
    with pytest.raises(DataFormatError, match="nested more than"):
        read_pickle(path)
    # the same kind of structure used as a dialogue id (hashing it would crash CPython)
    deep_id = b"N" + b"\x85" * 200_000
    path.write_bytes(b"\x80\x02(" + b"}" * 10 + b"]" + deep_id + b"a" + b"]t.")
    with pytest.raises(DataFormatError, match="nested more than"):
        load_features(path)


@pytest.mark.parametrize("width", [1, 2, 3, 4])
@pytest.mark.parametrize("beside, levels", [(0, 10), ([2], 11)])
def test_the_nesting_scan_counts_the_depth_of_every_tuple_kind_exactly(width, beside, levels):
    """Tuples of 1-3 items (their own opcodes) and of 4 (MARK ... TUPLE), nested 10 deep,
    with an atom or a list of one level beside each: as deep as that, and no deeper."""
    from ambjax.data.safe_pickle import check_nesting
    value = 0
    for _ in range(10):
        value = (value,) + (beside, None, 7)[:width - 1]
    data = pickle.dumps(value, protocol=4)
    check_nesting(data, max_depth=levels if width > 1 else 10)
    with pytest.raises(ValueError, match="nested more than"):
        check_nesting(data, max_depth=(levels if width > 1 else 10) - 1)


FEATURE_LIKE = {"Ses01": [np.arange(6, dtype=np.float32).reshape(2, 3), np.zeros(0, np.int64)],
                "labels": ("neu", 1.5, None, True, -7, 10 ** 30), 3: {1, 2}, "f": frozenset([4]),
                "raw": (b"by", bytearray(b"te")), "nested": [[[{}]], ()]}


@pytest.mark.parametrize("protocol", range(6))
def test_the_nesting_scan_reads_every_opcode_as_pickletools_does(protocol):
    """`check_nesting`'s own opcode reader (it skips the arguments it does not need) agrees
    with `pickletools.genops` on names and memo keys, for every pickle protocol."""
    import pickletools
    from ambjax.data.safe_pickle import _MEMO, _opcodes
    data = pickle.dumps(FEATURE_LIKE, protocol=protocol)
    reference = [(op.name, arg if op.name in _MEMO else None)
                 for op, arg, _ in pickletools.genops(data)]
    assert list(_opcodes(data)) == reference


def test_every_truncation_of_a_pickle_is_a_data_format_error(tmp_path):
    data = pickle.dumps(FEATURE_LIKE, protocol=4)
    path = tmp_path / "cut.pkl"
    for cut in range(0, len(data) - 1, 7):
        path.write_bytes(data[:cut])
        with pytest.raises(DataFormatError):
            read_pickle(path)


@pytest.mark.parametrize("payload,message", [
    # numpy.ndarray((500_000_000,)) called directly: 500 MB from a 50-byte file
    (b"\x80\x02cnumpy\nndarray\nJ\x00e\xcd\x1d\x85\x85R.", "ndarray"),
    # builtins.bytearray(500_000_000)
    (b"\x80\x02c__builtin__\nbytearray\nJ\x00e\xcd\x1d\x85R.", "from a number"),
    # numpy.core.multiarray._reconstruct(ndarray, (500_000_000,), b'b')
    (b"\x80\x02cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nJ\x00e\xcd\x1d\x85"
     b"C\x01b\x87R.", "more than the file holds"),
    (b"\x80\x02cos\nsystem\nX\x02\x00\x00\x00ls\x85R.", "refusing to load os.system"),
])
def test_small_pickles_cannot_allocate_or_run_code(tmp_path, payload, message):
    path = tmp_path / "evil.pkl"
    path.write_bytes(payload)
    assert len(payload) < 100
    with pytest.raises(DataFormatError, match=message):
        read_pickle(path)


def test_protocol_5_files_load_like_protocol_2(tmp_path):
    data = make_synthetic("meld", scale=0.01, dims={"text": 6, "audio": 5, "visual": 4})
    two, five = tmp_path / "p2.pkl", tmp_path / "p5.pkl"
    layout = write_pickle(data, two)
    with open(five, "wb") as f:
        pickle.dump(tuple(to_layout_fields(data, layout)), f, protocol=5)
    assert b"_frombuffer" in five.read_bytes()          # numpy's protocol-5 array path
    a, b = load_features(two), load_features(five)
    assert a.splits == b.splits
    vid = a.splits["test"][0]
    np.testing.assert_array_equal(a.dialogues[vid].features["audio"],
                                  b.dialogues[vid].features["audio"])


# --- silent wrong values --------------------------------------------------------------------

def _write_fields(path, data, edit):
    layout = write_pickle(data, path)
    with open(path, "rb") as f:
        fields = list(pickle.load(f))
    edit(fields)
    with open(path, "wb") as f:
        pickle.dump(tuple(fields), f, protocol=2)
    return layout


def _huge_label(fields, vid):
    fields[2][vid] = [2 ** 32 + 1] + list(fields[2][vid])[1:]


def _train_twice(fields, vid):
    fields[-2] = list(fields[-2]) + [vid]


@pytest.mark.parametrize("edit,message", [
    # range-checked before the cast to int32, which would read 2**32 + 1 as class 1
    (_huge_label, "dialogue '{vid}': field labels has label 4294967297"),
    (_train_twice, "field train lists dialogue '{vid}' twice"),
])
def test_silent_wrong_values_are_errors_naming_the_dialogue(tmp_path, edit, message):
    data = make_synthetic("iemocap", scale=0.05, dims={"text": 6, "audio": 5, "visual": 4})
    vid = data.splits["train"][0]
    path = tmp_path / "edited.pkl"
    _write_fields(path, data, lambda fields: edit(fields, vid))
    with pytest.raises(DataFormatError, match=message.format(vid=vid)):
        load_features(path)


def test_speakers_none_and_empty_splits_are_errors(tmp_path):
    data = make_synthetic("iemocap", scale=0.05, dims={"text": 6, "audio": 5, "visual": 4})
    vid = data.splits["test"][0]
    path = tmp_path / "none.pkl"

    def no_speakers(fields):
        fields[1][vid] = None
    _write_fields(path, data, no_speakers)
    with pytest.raises(DataFormatError, match="field speakers: expected a list"):
        load_features(path)

    def no_test(fields):
        fields[-1] = []
    _write_fields(path, data, no_test)
    cfg = make_config("tiny", [f"data.path={path}"])
    with pytest.raises(DataFormatError, match="the test split is empty"):
        load_dataset(cfg.data)


# --- tracebacks become one line -------------------------------------------------------------

def test_cli_flags_and_places_fail_with_one_line(tmp_path, capsys):
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    cases = [
        (["--out", str(a_file)], "is a file"),
        (["--out", str(a_file / "sub")], "file.txt"),
        (["--devices", "99"], "--devices"),
        (["--devices", "0"], "--devices"),
        (["--devices", "two"], "--devices"),
        (["--seeds", "a,b"], "--seeds"),
        (["--set", "model.hidden_dim=0"], "model.hidden_dim"),
        (["--set", "model.graphs=foo"], "model.graphs"),
        (["--set", "optim.lr=nan"], "optim.lr"),
    ]
    capsys.readouterr()
    for argv, needle in cases:
        out = [] if "--out" in argv else ["--out", str(tmp_path / "run")]
        assert train_main(TINY + argv + out) == 2, argv
        one_error_line(capsys, needle)


def test_damaged_checkpoint_and_config_are_one_line(finished_run, tmp_path, capsys):
    import shutil
    run = tmp_path / "copy"
    shutil.copytree(finished_run, run, ignore=shutil.ignore_patterns(".lock"))
    for path in (run / "checkpoints").rglob("*"):
        if path.is_file() and "state" in str(path):
            path.write_bytes(b"garbage")
    capsys.readouterr()
    assert evaluate_main(["--run", str(run)]) == 2
    one_error_line(capsys, "damaged or unreadable checkpoint")
    assert train_main(TINY + ["--epochs", "2", "--resume", "--out", str(run)]) == 2
    one_error_line(capsys, "damaged or unreadable checkpoint")
    (run / "config.json").write_text('{"model": {"hidden_dim": "x"')
    assert evaluate_main(["--run", str(run)]) == 2
    one_error_line(capsys, "config.json is unreadable")


def test_error_path_exit_codes_and_debug(capsys, monkeypatch):
    def disk_full(_):
        raise OSError(errno.ENOSPC, "No space left on device", "/data/run/metrics.jsonl")

    def interrupted(_):
        raise KeyboardInterrupt

    assert run_main(disk_full, []) == 2
    one_error_line(capsys, "/data/run/metrics.jsonl: No space left on device")
    assert run_main(interrupted, []) == 130
    assert "interrupted" in capsys.readouterr().err
    with pytest.raises(OSError):
        run_main(disk_full, ["--debug"])
    monkeypatch.setenv("AMBJAX_DEBUG", "1")
    with pytest.raises(KeyboardInterrupt):
        run_main(interrupted, [])


def test_entry_points_answer_bad_input_with_one_line(tmp_path):
    bad = tmp_path / "bad.pkl"
    bad.write_bytes(b"\x80\x02N" + b"\x85" * 200_000 + b".")
    for argv in (["ambjax.data", "describe", str(bad)],
                 ["experiments.evaluate", "--run", str(tmp_path / "none")]):
        result = subprocess.run([sys.executable, "-m", *argv], cwd=ROOT, capture_output=True,
                                text=True, timeout=120, env={**os.environ, "JAX_PLATFORMS": "cpu"})
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("error:"), \
            (argv, result.stderr[-400:])


def test_a_diverging_run_stops_with_one_line_and_leaves_a_run_it_would_replace(tmp_path,
                                                                                capsys):
    out = tmp_path / "run"
    capsys.readouterr()
    diverging = TINY + ["--set", "optim.lr=1e30", "--epochs", "3", "--out", str(out)]
    assert train_main(diverging) == 2
    line = one_error_line(capsys)
    assert "training diverged: the train loss of epoch 1 is nan" in line
    assert "optim.lr" in line and line.endswith("nothing was written") and not out.exists()
    # over a finished run, `--overwrite` removes nothing before the first epoch is recorded
    assert train_main(TINY + ["--epochs", "1", "--out", str(out)]) == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    capsys.readouterr()
    assert train_main(diverging + ["--overwrite"]) == 2
    assert one_error_line(capsys).endswith(f"{out} is as it was")
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_divergence_names_the_seeds_whose_loss_is_not_finite():
    from ambjax.train.loop import check_finite_loss
    check_finite_loss([{"loss": 1.5}, {"loss": 0.2}], (1, 2), 4)
    with pytest.raises(DivergedError, match=r"epoch 4 is inf \(seed 2, 3\)"):
        check_finite_loss([{"loss": 1.5}, {"loss": float("inf")}, {"loss": float("nan")}],
                          (1, 2, 3), 4)


def test_a_batch_that_cannot_fit_is_refused_before_the_first_step():
    config = make_config("tiny")
    data = load_dataset(config.data)
    trainer = Trainer.from_config(config, data, n_devices=1)
    longest = max(data.dialogues.values(), key=len)
    with pytest.raises(ResourceError, match=f"{longest.id!r}, has {len(longest)} utterances") \
            as info:
        trainer.compile(memory_limit=100_000)
    assert "GB for one train step; 0.0 GB are available" in str(info.value)


def test_compile_cache_is_on_by_default_and_can_be_turned_off(tmp_path):
    code = "from ambjax.train.cache import enable_compile_cache as e; print(e(), e(False))"
    env = {k: v for k, v in os.environ.items() if k != "AMBJAX_COMPILE_CACHE"}
    env.update(AMBJAX_CACHE_DIR=str(tmp_path / "xla"), JAX_PLATFORMS="cpu")
    on = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                        timeout=120)
    assert on.stdout.split() == [str(tmp_path / "xla"), "None"], on.stderr[-300:]
    assert (tmp_path / "xla").is_dir()
    off = subprocess.run([sys.executable, "-c", code], env={**env, "AMBJAX_COMPILE_CACHE": "0"},
                         capture_output=True, text=True, timeout=120)
    assert off.stdout.split() == ["None", "None"], off.stderr[-300:]


def test_many_seeds_are_refused_from_abstract_shapes_before_any_state_is_built():
    config = make_config("tiny")
    data = load_dataset(config.data)
    seeds = 256
    trainer = Trainer.from_config(config, data, n_devices=1, seeds=list(range(seeds)))
    assert trainer._state is None                       # nothing allocated by the constructor
    one_seed = Trainer.from_config(config, data, n_devices=1)
    one_seed.compile(memory_limit=10 ** 12)
    per_seed = one_seed.largest_train_step_bytes
    state_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(trainer.abstract_state))
    limit = 20 * per_seed
    assert state_bytes * ACTIVATION_FACTOR > limit > 2 * state_bytes   # the estimate's regime
    with pytest.raises(ResourceError, match=rf"{seeds} seeds need about .* at most \d+ seeds "
                                            "fit") as info:
        trainer.compile(memory_limit=limit)
    fit = int(str(info.value).split("at most ")[1].split()[0])
    assert 10 <= fit <= 20
    assert trainer._state is None                       # refused before the state was built
    with pytest.raises(ResourceError, match="for their train states alone"):
        trainer.compile(memory_limit=state_bytes)
