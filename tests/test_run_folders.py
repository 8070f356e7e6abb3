"""Run folders hold runs and nothing else: `--overwrite` never deletes what is not a run, every
folder a run writes to is locked, a resume must match the run (seeds, data, settings), and the
smaller misuses (a missing checkpoint epoch, a malformed command line, an ablation variant that
cannot run) end in one line naming the real cause before any work is done."""

import json
import os

import pytest

from ambjax.data import make_synthetic, write_pickle
from ambjax.train.run_folder import RunLock, changed_settings, clear, foreign_entries, lock_all
from conftest import one_error_line, snapshot
from experiments.ablate import main as ablate_main
from experiments.evaluate import main as evaluate_main
from experiments.train import main as train_main

TINY = ["--preset", "tiny", "--devices", "1"]
DIMS = {"text": 24, "audio": 16, "visual": 12}          # the tiny preset's (shared programs)


@pytest.fixture(scope="module")
def seeds_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("seeds") / "run"
    assert train_main(TINY + ["--epochs", "1", "--seeds", "1,2", "--out", str(out)]) == 0
    return out


def test_overwrite_refuses_a_folder_with_files_that_are_not_a_run(seeds_run, capsys):
    (seeds_run / "thesis.pdf").write_bytes(b"years of work")
    (seeds_run / "seed1" / "notes.txt").write_text("mine")
    before = snapshot(seeds_run)
    try:
        assert foreign_entries(str(seeds_run)) == ["seed1/notes.txt", "thesis.pdf"]
        for extra in (["--overwrite"], []):
            assert train_main(TINY + ["--epochs", "1", "--seeds", "1,2", "--out",
                                      str(seeds_run)] + extra) == 2
            one_error_line(capsys, "not part of an ambjax run", "thesis.pdf",
                            "seed1/notes.txt")
        assert snapshot(seeds_run) == before
    finally:
        (seeds_run / "thesis.pdf").unlink()
        (seeds_run / "seed1" / "notes.txt").unlink()


def test_files_named_like_a_run_in_a_folder_no_run_wrote_are_the_users(tmp_path, capsys):
    (tmp_path / "report.md").write_text("my report")
    (tmp_path / "config.json").write_text('{"editor": "vim"}')
    assert foreign_entries(str(tmp_path)) == ["config.json", "report.md"]
    assert train_main(TINY + ["--epochs", "1", "--out", str(tmp_path), "--overwrite"]) == 2
    one_error_line(capsys, "config.json, report.md")
    assert (tmp_path / "report.md").read_text() == "my report"


def test_clear_removes_run_entries_only(tmp_path):
    (tmp_path / "seed3" / "checkpoints" / "1").mkdir(parents=True)
    for name in (".lock", "metrics.jsonl", "report.md", "seed3/config.json", "seed3/notes.txt",
                 "notes.txt", "config.json.x1y2.tmp"):
        (tmp_path / name).write_text("x")
    clear(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == [".lock", "notes.txt", "seed3"]
    assert os.listdir(tmp_path / "seed3") == ["notes.txt"]


def test_the_working_folder_is_never_overwritten(tmp_path, capsys, monkeypatch):
    (tmp_path / "code.py").write_text("print('hi')")
    (tmp_path / "data").mkdir()
    monkeypatch.chdir(tmp_path)
    assert train_main(TINY + ["--epochs", "1", "--out", ".", "--overwrite"]) == 2
    one_error_line(capsys, "code.py", "data/")
    assert sorted(os.listdir(tmp_path)) == ["code.py", "data"]


def test_seed_folders_are_locked_with_their_parent(seeds_run, capsys):
    locks = lock_all(str(seeds_run), [str(seeds_run / "seed1"), str(seeds_run / "seed2")])
    try:       # a live --seeds 1,2 run: its seed folder cannot be taken by a single run
        assert train_main(TINY + ["--epochs", "1", "--overwrite",
                                  "--out", str(seeds_run / "seed1")]) == 2
        one_error_line(capsys, "seed1 is in use by another run")
    finally:
        for lock in locks:
            lock.release()
    lock = RunLock(str(seeds_run / "seed2"))
    try:       # a live single run in a seed folder: the seeds run cannot start over it
        assert train_main(TINY + ["--epochs", "1", "--seeds", "1,2", "--overwrite",
                                  "--out", str(seeds_run)]) == 2
        one_error_line(capsys, "seed2 is in use by another run")
    finally:
        lock.release()


def test_resume_must_name_the_same_seeds_and_leaves_nothing_behind(seeds_run, capsys):
    before = snapshot(seeds_run)
    for seeds in ("1", "1,2,3"):
        assert train_main(TINY + ["--epochs", "2", "--seeds", seeds, "--resume",
                                  "--out", str(seeds_run)]) == 2
        one_error_line(capsys, "holds seeds [1, 2]", "resume with the same --seeds")
    assert train_main(TINY + ["--epochs", "2", "--resume", "--out", str(seeds_run)]) == 2
    one_error_line(capsys, "holds seeds [1, 2], not a single run")
    assert not (seeds_run / "seed3").exists()
    assert snapshot(seeds_run) == before


def test_resume_with_changed_settings_needs_consent(seeds_run, capsys):
    before = snapshot(seeds_run)
    argv = TINY + ["--seeds", "1,2", "--resume", "--out", str(seeds_run), "--epochs", "1"]
    assert train_main(argv + ["--set", "optim.lr=0.05"]) == 2
    line = one_error_line(capsys, "resuming with changed settings", "optim.lr",
                           "--allow-changes")
    assert "0.05" in line
    assert snapshot(seeds_run) == before
    # with consent (a change that keeps the compiled programs, so the test compiles nothing)
    assert train_main(argv + ["--selection", "test"]) == 2
    one_error_line(capsys, "run.selection 'valid' -> 'test'")
    assert train_main(argv + ["--selection", "test", "--allow-changes"]) == 0
    assert json.loads((seeds_run / "seed1" / "config.json").read_text())["run"][
        "selection"] == "test"
    assert changed_settings({"schedule": {"epochs": 1}}, {"schedule": {"epochs": 9}}) == []


def test_evaluate_notices_regenerated_data_and_missing_epochs(tmp_path, capsys):
    data = tmp_path / "features.pkl"
    write_pickle(make_synthetic("iemocap", scale=0.05, dims=DIMS, seed=0), str(data),
                 layout="sdt_iemocap")
    out = tmp_path / "run"
    assert train_main(TINY + ["--data", str(data), "--epochs", "1", "--out", str(out)]) == 0
    capsys.readouterr()
    assert evaluate_main(["--run", str(out), "--step", "7"]) == 2
    one_error_line(capsys, "no checkpoint of epoch 7", "kept epochs: [1]")
    # the same file name and widths, other content: evaluate and resume both refuse
    write_pickle(make_synthetic("iemocap", scale=0.05, dims=DIMS, seed=2), str(data),
                 layout="sdt_iemocap")
    assert evaluate_main(["--run", str(out)]) == 2
    one_error_line(capsys, "changed since the run trained on it")
    assert train_main(TINY + ["--data", str(data), "--epochs", "2", "--resume",
                              "--out", str(out)]) == 2
    one_error_line(capsys, "was trained on other data")
    assert evaluate_main(["--run", str(out), "--data", str(data)]) == 0


@pytest.mark.parametrize("argv, needle", [
    (["--seeds"], "expected one argument"),
    (["--bogus"], "unrecognized arguments: --bogus"),
    (["--selection", "train"], "invalid choice: 'train'"),
    (["--num-processes", "two"], "invalid int value"),
])
def test_malformed_command_lines_are_one_line(argv, needle, capsys):
    assert train_main(argv) == 2
    one_error_line(capsys, "python -m experiments.train", needle, "see --help")


def test_ablate_checks_every_variant_before_the_first_trains(tmp_path, capsys):
    data = make_synthetic("iemocap", scale=0.05, dims=DIMS, seed=1)
    silent = {vid: type(d)(id=d.id, speakers=d.speakers, labels=d.labels,
                           features={**d.features, "visual": 0 * d.features["visual"]})
              for vid, d in data.dialogues.items()}
    path = tmp_path / "no_visual.pkl"
    write_pickle(type(data)(**{**data.__dict__, "dialogues": silent}), str(path),
                 layout="sdt_iemocap")
    assert ablate_main(["--preset", "tiny", "--data", str(path), "--recipe", "robust",
                        "--ablations", "no_intra,visual_only", "--seeds", "1",
                        "--out", str(tmp_path / "abl")]) == 2
    captured = capsys.readouterr()
    assert "== full ==" not in captured.out
    # warnings (the constant visual features) are lines of their own; one error line
    err = [line for line in captured.err.strip().splitlines()
           if not line.startswith("warning:")]
    assert len(err) == 1 and err[0].startswith("error: variant visual_only:"), err
    assert "every modality is constant" in err[0]
    assert not (tmp_path / "abl").exists()


def test_ablate_refuses_a_foreign_folder(tmp_path, capsys):
    (tmp_path / "thesis.pdf").write_bytes(b"years of work")
    assert ablate_main(["--preset", "tiny", "--ablations", "no_intra", "--seeds", "1",
                        "--out", str(tmp_path)]) == 2
    one_error_line(capsys, "not part of an ablation", "thesis.pdf")
    assert os.listdir(tmp_path) == ["thesis.pdf"]


def test_a_resumed_manager_keeps_the_best_checkpoint_of_the_earlier_process(tmp_path):
    """The best epoch was saved by the first process; after a resume, later (worse) epochs
    must not push it out (orbax only keeps what it knows the metrics of)."""
    import numpy as np

    from ambjax.train import checkpoint as ckpt
    folder = str(tmp_path / "checkpoints")
    first = ckpt.create_manager(folder, keep=2)
    for epoch, score in ((1, 0.9), (2, 0.5)):
        ckpt.save(first, epoch, {"x": np.ones(3)}, {"epoch": epoch, "best_epoch": 1}, score)
    first.close()
    resumed = ckpt.create_manager(folder, keep=2)
    for epoch in (3, 4):
        ckpt.save(resumed, epoch, {"x": np.ones(3)}, {"epoch": epoch, "best_epoch": 1}, 0.6)
    assert resumed.all_steps() == [1, 3, 4]
    assert ckpt.best_step(resumed) == 1
    ckpt.save(resumed, 5, {"x": np.ones(3)}, {"epoch": 5, "best_epoch": 5}, 0.95)
    assert resumed.all_steps() == [4, 5]
