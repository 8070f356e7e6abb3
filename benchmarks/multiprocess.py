"""The cost of running one training job as several processes on this machine.

    python -m benchmarks.multiprocess [--processes 2] [--devices-per-process 2]
                                      [--preset synthetic] [--epochs 4]

Runs the same job twice with `experiments.train`: as N processes on localhost (each with D
fake CPU devices, gloo collectives) and as one process with N x D devices, and reports the
median train-epoch seconds of each (epochs after the first; compilation excluded) and their
ratio. On one machine the processes share the same cores and talk through loopback sockets, so
the ratio measures the multi-process overhead (data sharding, collectives across processes),
not a speed-up. `python -m benchmarks.throughput --processes N` runs this benchmark.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile

import numpy as np

from ambjax.cli import ArgumentParser, run_main
from ambjax.errors import AmbjaxError
from benchmarks.common import environment, write_results

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _run(args: list[str], processes: int, devices: int, out: str, cache: str) -> list[float]:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "AMBJAX_CACHE_DIR": cache,
           "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
    cmd = [sys.executable, "-m", "experiments.train", *args, "--out", out]
    if processes == 1:
        cmds = [cmd + ["--devices", str(devices)]]
    else:
        port = _port()
        cmds = [cmd + ["--coordinator", f"localhost:{port}", "--num-processes", str(processes),
                       "--process-id", str(i)] for i in range(processes)]
    runs = [subprocess.Popen(c, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True) for c in cmds]
    for p in runs:
        if p.wait() != 0:
            raise AmbjaxError(f"a benchmark run failed: {p.stderr.read()[-300:]}")
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [json.loads(line)["train"]["seconds"] for line in f if line.strip()]


def bench(preset: str, processes: int, devices_per_process: int, epochs: int) -> dict:
    args = ["--preset", preset, "--epochs", str(epochs)]
    with tempfile.TemporaryDirectory(prefix="ambjax-mp-") as tmp:
        cache = os.path.join(tmp, "cache")
        multi = _run(args, processes, devices_per_process, os.path.join(tmp, "multi"), cache)
        single = _run(args, 1, processes * devices_per_process, os.path.join(tmp, "single"),
                      cache)
    m, s = float(np.median(multi[1:])), float(np.median(single[1:]))
    return {"preset": preset, "processes": processes,
            "devices_per_process": devices_per_process, "epochs": epochs,
            "multi_process_epoch_s": m, "single_process_epoch_s": s,
            "overhead_ratio": m / s, "multi_epoch_s_all": multi, "single_epoch_s_all": single}


def main(argv=None) -> dict:
    p = ArgumentParser(prog="python -m benchmarks.multiprocess", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--devices-per-process", type=int, default=2)
    p.add_argument("--preset", default="synthetic")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--name", default="multiprocess")
    args = p.parse_args(argv)
    if args.processes < 2 or args.epochs < 2:
        raise AmbjaxError("--processes and --epochs must be >= 2")
    env = environment()
    row = bench(args.preset, args.processes, args.devices_per_process, args.epochs)
    table = (f"Device: {env['device']}, {env['cpu_count']} CPUs (the processes share them), "
             f"jax {env['jax']}\n\n| preset | processes x devices | train epoch, N processes "
             "(s) | train epoch, 1 process (s) | ratio |\n|---|---|---|---|---|\n"
             f"| {row['preset']} | {row['processes']} x {row['devices_per_process']} | "
             f"{row['multi_process_epoch_s']:.2f} | {row['single_process_epoch_s']:.2f} | "
             f"{row['overhead_ratio']:.2f}x |\n")
    print(table)
    result = {"benchmark": "multiprocess", "environment": env, "results": [row]}
    print("wrote", write_results(args.name, result, table))
    return result


if __name__ == "__main__":
    sys.exit(run_main(lambda argv: (main(argv), 0)[1]))
