"""Faults from outside: signals (sent to a real child process), a full disk, lost peers of a
multi-process run. Each ends in one line with exit 2 (130 / 143 for signals), never a
traceback or a crash signal, and the run folder stays resumable."""

import contextlib
import os
import resource
import signal
import socket
import subprocess
import sys
import time

import jax
import pytest

from ambjax import interrupts
from ambjax.errors import DistributedError, Interrupted
from ambjax.train.distributed import PeerWatch, initialize
from conftest import TEST_XLA_FLAGS, TINY_PROGRAMS
from ambjax.train import Trainer, load_dataset
from experiments.configs import make_config
from experiments.train import main as train_main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--preset", "tiny", "--devices", "1"]
TRAIN = [sys.executable, "-m", "experiments.train", *TINY]


def _env(tmp_path, cache=True):
    """This process's environment (XLA flags included) and compilation cache, so that the
    children load the programs the tests in this process compiled."""
    env = {**os.environ, "AMBJAX_CACHE_DIR": jax.config.jax_compilation_cache_dir}
    if not cache:
        env["AMBJAX_COMPILE_CACHE"] = "0"
    return env


def _start(args, tmp_path, cache=True):
    return subprocess.Popen(TRAIN + args, cwd=ROOT, env=_env(tmp_path, cache), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _wait_for(proc, text, timeout=240):
    """Read the child's stdout until a line holds `text`; returns what was read."""
    seen, deadline = "", time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen += line
        if text in line:
            return seen
    raise AssertionError(f"never saw {text!r}: {seen[-500:]} {proc.stderr.read()[-500:]}")


def _one_line(stderr, prefix):
    lines = [x for x in stderr.strip().splitlines() if not x.startswith("  epoch")]
    assert len(lines) == 1 and lines[0].startswith(prefix), stderr[-1500:]
    return lines[0]


def test_sigterm_while_training_keeps_the_last_epoch_and_resumes(tmp_path, capsys):
    out = tmp_path / "run"
    proc = _start(["--epochs", "400", "--out", str(out)], tmp_path)
    _wait_for(proc, "epoch   2/400")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-800:]
    line = _one_line(err, "interrupted: stopped by SIGTERM; the checkpoint of epoch ")
    kept = int(line.split("epoch ")[1].split()[0])
    assert kept >= 2 and os.path.isdir(out / "checkpoints" / str(kept))
    assert train_main(TINY + ["--epochs", str(kept + 1), "--resume", "--out", str(out)]) == 0
    assert f"resumed from epoch {kept}" in capsys.readouterr().out


def test_ctrl_c_while_compiling_stops_cleanly_and_writes_nothing(tmp_path):
    out = tmp_path / "run"
    # the smallest run: the compiles under way when the signal comes finish before the exit
    smallest = [a for setting in TINY_PROGRAMS for a in ("--set", setting)]
    proc = _start(["--out", str(out), *smallest], tmp_path, cache=False)
    _wait_for(proc, "compiling")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-800:]
    _one_line(err, "interrupted: stopped by SIGINT; no epoch was recorded; nothing was written")
    assert not out.exists()


def test_signals_are_held_while_an_epoch_is_recorded():
    handlers = interrupts.raise_on_signals()
    try:
        done = []
        with pytest.raises(Interrupted) as info:
            with interrupts.deferred():
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.05)
                done.append("the whole block ran")
        assert done and info.value.exit_code == 143
    finally:
        interrupts.restore(handlers)


@contextlib.contextmanager
def _file_size_limit(limit: int):
    """Writes that would grow a file past `limit` bytes fail (EFBIG, as ENOSPC on a full
    disk), in this process, while the block runs."""
    before = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, before[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, before)
        signal.signal(signal.SIGXFSZ, handler)


def test_a_full_disk_while_saving_is_one_line_and_the_folder_resumable(tmp_path, capsys):
    out = tmp_path / "run"
    args = TINY + ["--epochs", "2", "--out", str(out)]
    config = make_config("tiny", ["schedule.epochs=2"])                 # programs cached
    Trainer.from_config(config, load_dataset(config.data), n_devices=1).compile()
    capsys.readouterr()
    # config and metrics fit in 60 kB, the first checkpoint does not
    with _file_size_limit(60_000):
        assert train_main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "could not write the checkpoint (File too large)" in err[0], err
    assert train_main(args + ["--resume"]) == 0
    assert (out / "report.json").exists()


def _watch(conn, timeout_s):
    lost = []
    watch = PeerWatch({1: conn}, timeout_s, on_lost=lost.append)
    watch.start()
    return watch, lost


def _until(cond, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not cond() and time.monotonic() < deadline:
        time.sleep(0.02)
    return cond()


def test_peer_watch_stops_on_a_dead_or_silent_peer_not_on_a_goodbye():
    mine, theirs = socket.socketpair()
    _, lost = _watch(mine, timeout_s=30)
    theirs.close()                                        # the peer died
    assert _until(lambda: lost) and "it stopped" in lost[0]
    assert lost[0].startswith("error: lost process 1 of the multi-process run")

    mine, theirs = socket.socketpair()
    start = time.monotonic()
    _, lost = _watch(mine, timeout_s=0.6)                 # the peer hangs: no heartbeats
    assert _until(lambda: lost) and "no heartbeat for" in lost[0]
    assert time.monotonic() - start < 3
    theirs.close()

    mine, theirs = socket.socketpair()
    watch, lost = _watch(mine, timeout_s=0.6)
    peer = PeerWatch({0: theirs}, 0.6, on_lost=lost.append)
    peer.start()
    time.sleep(1.0)                                       # heartbeats keep both alive
    peer.finish()
    theirs.close()
    time.sleep(1.0)
    assert lost == []
    watch.finish()


@pytest.mark.parametrize("address", ["localhost:65535", "localhost:0", "localhost", ":80",
                                     "localhost:http"])
def test_coordinator_addresses_are_validated(address):
    with pytest.raises(DistributedError, match="HOST:PORT with PORT in 1..65534"):
        initialize(address, 2, 0, timeout_s=1)


def test_a_killed_peer_stops_the_survivor_with_one_line(tmp_path):
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    env = {**_env(tmp_path), "XLA_FLAGS": f"{TEST_XLA_FLAGS} "
           "--xla_force_host_platform_device_count=1"}            # 2 processes x 1 device
    settings = ["--set", "model.hidden_dim=8", "--set", "model.graph_heads=1"]
    procs = [subprocess.Popen(
        [sys.executable, "-m", "experiments.train", "--preset", "tiny", *settings,
         "--epochs", "400", "--out", str(tmp_path / "run"), "--coordinator",
         f"localhost:{port}", "--num-processes", "2", "--process-id", str(i),
         "--process-timeout", "30"], cwd=ROOT, env=env, text=True, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE) for i in range(2)]
    try:
        _wait_for(procs[0], "programs compile at their first step")   # both joined the run
        procs[1].kill()
        start = time.monotonic()
        _, err = procs[0].communicate(timeout=60)
        assert procs[0].returncode == 2, err[-1500:]
        assert time.monotonic() - start < 30
        line = _one_line(err, "error: lost process 1 of the multi-process run")
        assert "continue with --resume" in line
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
