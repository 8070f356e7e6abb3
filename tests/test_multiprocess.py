"""Two processes on localhost (2 fake CPU devices each, gloo collectives) train as one
4-device run, resume across both processes, and a missing process is an error, not a hang."""

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp

from ambjax.train import checkpoint as ckpt
from conftest import TEST_XLA_FLAGS
from ambjax.train import train_and_evaluate
from experiments.configs import make_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# a small model for fast compiles; SGD because Adam turns float noise in gradients that are
# zero in exact arithmetic (the attention key bias) into +-lr steps (see tests/test_seeds.py)
SETTINGS = ["model.hidden_dim=8", "model.graph_heads=1", "model.graphs=inter",
            "data.modalities=text,audio", "optim.optimizer=sgd", "optim.lr=0.1"]
ARGS = ["--preset", "tiny"] + [a for s in SETTINGS for a in ("--set", s)]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _env(devices: int, cache: str) -> dict:
    return {**os.environ, "JAX_PLATFORMS": "cpu", "AMBJAX_CACHE_DIR": cache,
            "XLA_FLAGS": f"{TEST_XLA_FLAGS} --xla_force_host_platform_device_count={devices}"}


def _train(extra, *, processes: int, devices: int, cache: str, timeout: int = 240):
    cmd = [sys.executable, "-m", "experiments.train", *ARGS, *extra]
    port = _port()
    runs = [subprocess.Popen(cmd + ["--coordinator", f"localhost:{port}", "--num-processes",
                                    str(processes), "--process-id", str(i),
                                    "--process-timeout", "60"],
                             cwd=ROOT, env=_env(devices, cache), text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            for i in range(processes)]
    results = [(p.wait(timeout=timeout), *p.communicate()) for p in runs]
    for rc, out, err in results:
        assert rc == 0, (extra, out[-800:], err[-1500:])
    return results


def _params(run_dir, step):
    manager = ckpt.create_manager(os.path.join(run_dir, "checkpoints"))
    state = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore()))["state"]
    manager.close()
    return state["params"]


def _metrics(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def test_two_processes_train_and_resume_as_one_four_device_run(tmp_path):
    cache = str(tmp_path / "cache")
    multi, single = str(tmp_path / "multi"), str(tmp_path / "single")
    first = _train(["--epochs", "1", "--out", multi], processes=2, devices=2, cache=cache)
    # process 1 prints none of the run's lines (gloo's own connection lines aside)
    assert "epoch   1/1" in first[0][1]
    assert not any(w in first[1][1] for w in ("epoch", "parameters", "report"))
    _train(["--epochs", "2", "--resume", "--out", multi], processes=2, devices=2, cache=cache)
    # the reference: this process's 4 fake CPU devices (conftest), one process
    train_and_evaluate(make_config("tiny", SETTINGS + ["schedule.epochs=2"]), single,
                       n_devices=4)
    report = json.loads(open(os.path.join(multi, "report.json")).read())
    assert report["devices"] == 4
    a, b = _metrics(multi), _metrics(single)
    assert [r["epoch"] for r in a] == [1, 2]
    for ra, rb in zip(a, b):
        for split in ("train", "valid", "test"):
            for key in ("loss", "accuracy", "weighted_f1"):
                np.testing.assert_allclose(ra[split][key], rb[split][key], atol=1e-5)
    assert a[1]["train"]["q"][0] > 0                       # balancing ran on global counts
    for x, y in zip(jax.tree.leaves(_params(multi, 2)), jax.tree.leaves(_params(single, 2))):
        np.testing.assert_allclose(x, y, atol=1e-5, rtol=1e-5)


def test_a_missing_process_is_an_error_not_a_hang(tmp_path):
    cmd = [sys.executable, "-m", "experiments.train", *ARGS, "--out", str(tmp_path / "x"),
           "--coordinator", f"localhost:{_port()}", "--num-processes", "2", "--process-id", "0",
           "--process-timeout", "5"]
    result = subprocess.run(cmd, cwd=ROOT, env=_env(2, str(tmp_path / "cache")),
                            capture_output=True, text=True, timeout=120)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr[-800:]
    assert lines[-1].startswith("error: could not join the multi-process run"), lines[-3:]
    assert not (tmp_path / "x").exists()
