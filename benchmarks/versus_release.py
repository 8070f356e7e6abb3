"""ambjax against the authors' PyTorch release, side by side, in one run on this machine.

    python -m benchmarks.versus_release --release DIR [--release-python PATH]
        [--device cpu|gpu] [--presets iemocap meld] [--epochs N] [--release-huge-pages]
        [--name NAME]

DIR is a checkout of the release (github wys-ljq/AMB-DSGDN) that you supply; its PyTorch lives
wherever `--release-python` points (a separate venv keeps torch out of ambjax's environment;
here `pip install torch==2.13.0 scikit-learn pandas` in its own venv takes the CPU build).
Nothing of the release is copied into this repository: the release runs from a temporary copy
of DIR, in which, on a CPU, the two hard-coded CUDA calls it needs are patched (listed in the
output: the loss weights' `.cuda()` in train.py and `Modality_drop`'s `device='cuda'` default
in model.py).

For each preset the same synthetic data of the real shapes (`make_synthetic(preset, seed=0)`,
the release's widths) is written in the release's own pickle layout (`data/<name>_multimodal_
features.pkl`); then, one after the other:

1. the release's own train.py with the preset's hyper-parameters (run_iemocap.sh /
   run_meld.sh) for `--epochs` epochs: per-epoch time (train, its empty valid split and test,
   as the release prints it), process start to first epoch;
2. ambjax on the same file with the same preset (the same train and test dialogues and no
   others, as the release runs: none held out for validation, MELD's dev split unread; batch
   size, window, hidden size), twice in fresh processes sharing a new compilation cache:
   cold (compile, then the epochs: train and test passes timed apart) and warm (process
   start to the first step's programs ready). The worker compiles as a run does: on an
   accelerator it trains once the first step's programs are compiled, the later ones
   compiling beside its first epochs (`ambjax.train.compile.compiles_beside_steps`; the cold
   compile is then given to the first step and to the last program, and those epochs' time,
   compile waits included, counts end to end), on the CPU once every program is.

Each side runs as its users run it. ambjax's command-line tools restart themselves with
glibc's huge-pages tunable where it helps (`ambjax.host_memory`), and so does ambjax's
worker here, its start timed from the process's start (the restart included); the release
runs with the environment as it was before that tunable was added (`--release-huge-pages`:
with it too, to see what the same setting does for PyTorch). `AMBJAX_HUGE_PAGES=0` runs both
without it.

Recorded: per-epoch train + test (median over the steady-state epochs, the first
`--first-epochs` reported apart), compile time, warm start, peak RSS of each process (the
release's and ambjax's, from `wait4`), a release-length run end to end (61 IEMOCAP / 20 MELD
epochs: start-up plus first epochs plus the steady epochs; measured in full with `--epochs
61`), the ratios, the CPU model and its AVX-512 / AMX flags, thread counts, versions, and the
machine's load before and after (the command waits up to `--wait-idle` seconds for a 1-minute
load under 0.5). Load from outside a virtual machine does not show in its load average, so a
row whose steady epochs on either side spread more than `UNSTEADY_SPREAD`, whose first epochs
on either side are slower than `SLOW_FIRST_EPOCHS` times its steady median, or whose release
epochs add up to more than the release's whole process is marked DOUBTFUL in the table, with
a warning line, and its "doubts" listed in the JSON: run it again. A slow phase can also cover
one side's whole run and leave its epochs steady, so the machine's speed is probed before the
release, between the sides and after ambjax (a float32 matmul's speed and a fresh-memory fill's
rate): probes further apart than `PROBE_SPREAD` mark the row DOUBTFUL too. So is a row where
ambjax's train loss was not finite in some epoch (each epoch's loss is in the JSON): a
diverged model's timing is no result.
Results: benchmarks/results/<name>-<device>-<date>.{json,md}.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import mmap
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Sequence

import numpy as np

from ambjax.cli import ArgumentParser, run_main
from ambjax.errors import AmbjaxError, UsageError
from ambjax.host_memory import HUGE_PAGES_TUNABLE, freed_memory_kept
from benchmarks.common import (compile_cell, cpu_name, device_name, environment,
                               keep_this_process_on_cpu, matmul_flops, process_age_s,
                               write_results)

RELEASE_RUNS = {   # the release's run_<dataset>.sh: its flags, and its data file
    "iemocap": (["--lr=0.000068", "--dropout=0.5", "--l2=0.00005", "--batch-size=16",
                 "--hidden_dim=512", "--n_head=8", "--windows=20", "--class-weight",
                 "--Dataset=IEMOCAP", "--q_base=0.3", "--lam=0.9", "--p_exe=0.5",
                 "--warm_up_epochs=60"], "iemocap_multimodal_features.pkl", 61),
    "meld": (["--lr=0.00005", "--dropout=0.11", "--l2=0.000075", "--batch-size=64",
              "--hidden_dim=512", "--n_head=8", "--windows=6", "--Dataset=MELD",
              "--q_base=0.2", "--lam=0.9", "--p_exe=0.2", "--warm_up_epochs=0"],
             "meld_multimodal_features.pkl", 20),
}
# (file, text, replacement): what a CPU needs changed in a copy of the release
CPU_PATCHES = [
    ("train.py", "MaskedNLLLoss(loss_weights.cuda())",
     "MaskedNLLLoss(loss_weights.cuda() if torch.cuda.is_available() else loss_weights)"),
    ("model.py", "def __init__(self, dim_list, p_exe=0.7, device='cuda'):",
     "def __init__(self, dim_list, p_exe=0.7, "
     "device='cuda' if torch.cuda.is_available() else 'cpu'):"),
]
EPOCH_LINE = re.compile(r"^epoch: (\d+),.*epoch_time: ([\d.]+) sec", re.M)


def load_average() -> float:
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def wait_idle(limit_s: float) -> dict:
    """Wait up to `limit_s` seconds for the 1-minute load to fall under 0.5."""
    start, first = time.monotonic(), load_average()
    while load_average() >= 0.5 and time.monotonic() - start < limit_s:
        time.sleep(5)
    return {"load_at_start": first, "load_when_started": load_average(),
            "waited_s": time.monotonic() - start}


def run_command(cmd: list[str], *, cwd: str, env: dict | None = None,
         timeout: float) -> tuple[str, float, dict]:
    """Run `cmd`; returns (its stdout, wall seconds, what wait4 says of its process: peak RSS
    in GB, user and system CPU seconds, minor page faults)."""
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                text=True)
        deadline = time.monotonic() + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                proc.kill()
                raise AmbjaxError(f"{' '.join(cmd[:3])} ... ran past {timeout:.0f} s")
            time.sleep(0.2)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read()
    if proc.returncode != 0:
        tail = " | ".join(text.strip().splitlines()[-3:])
        raise AmbjaxError(f"{' '.join(cmd[:3])} ... failed with status {proc.returncode}: "
                          f"{tail[-400:]}")
    return text, time.perf_counter() - start, {
        "peak_rss_gb": usage.ru_maxrss / 1024 ** 2, "user_s": usage.ru_utime,
        "system_s": usage.ru_stime, "minor_faults": usage.ru_minflt}


def release_copy(release: str, scratch: str, device: str) -> tuple[str, list[str]]:
    """A temporary copy of the release, patched for `device`; returns (folder, patches)."""
    if not os.path.isfile(os.path.join(release, "train.py")):
        raise UsageError(f"--release {release}: no train.py (expected a checkout of "
                         "github wys-ljq/AMB-DSGDN)")
    folder = os.path.join(scratch, "release")
    shutil.copytree(release, folder, ignore=shutil.ignore_patterns(".git", "data"))
    applied = []
    if device == "cpu":
        for name, old, new in CPU_PATCHES:
            path = os.path.join(folder, name)
            with open(path) as f:
                text = f.read()
            if old not in text:
                raise AmbjaxError(f"{name} of the release has no `{old}`: another version of "
                                  "the release; update CPU_PATCHES")
            with open(path, "w") as f:
                f.write(text.replace(old, new))
            applied.append(f"{name}: {old} -> {new}")
    for name in ("data", "IEMOCAP", "MELD"):        # its data and its model-saving folders
        os.makedirs(os.path.join(folder, name), exist_ok=True)
    return folder, applied


def write_data(preset: str, folder: str) -> str:
    """The preset's synthetic data (real shapes and widths, seed 0) in the release's layout,
    at the path its train.py reads."""
    from ambjax.data import make_synthetic, write_pickle
    path = os.path.join(folder, "data", RELEASE_RUNS[preset][1])
    write_pickle(make_synthetic(preset, seed=0), path, layout=f"sdt_{preset}")
    return path


def side_environment(huge_pages: bool = False) -> dict:
    """The environment a side runs in: this process's, with ambjax's huge-pages tunable in
    GLIBC_TUNABLES only when `huge_pages` (and not `AMBJAX_HUGE_PAGES=0`); the ambjax worker
    gets it without and adds it itself, as the command-line tools do."""
    env = dict(os.environ)
    tunables = [t for t in env.pop("GLIBC_TUNABLES", "").split(":")
                if t and t != HUGE_PAGES_TUNABLE]
    if huge_pages and env.get("AMBJAX_HUGE_PAGES", "1") != "0":
        tunables.append(HUGE_PAGES_TUNABLE)
    return {**env, "GLIBC_TUNABLES": ":".join(tunables)} if tunables else env


def run_release(folder: str, python: str, preset: str, epochs: int, device: str,
                huge_pages: bool = False) -> dict:
    flags, _, _ = RELEASE_RUNS[preset]
    cmd = [python, "train.py", *flags, f"--epochs={epochs}"] + (
        ["--no-cuda"] if device == "cpu" else [])
    env = side_environment(huge_pages)
    text, wall, usage = run_command(cmd, cwd=folder, env=env, timeout=3600)
    epochs_s = [float(t) for _, t in EPOCH_LINE.findall(text)]
    if len(epochs_s) != epochs:
        raise AmbjaxError(f"the release printed {len(epochs_s)} epoch lines, expected {epochs}")
    return {"epoch_s": epochs_s, "wall_s": wall, **usage,
            "startup_s": wall - sum(epochs_s), "glibc_tunables": env.get("GLIBC_TUNABLES", "")}


def run_ambjax(path: str, preset: str, epochs: int, cache: str, *, ready_only: bool,
               device: str = "cpu") -> dict:
    cmd = [sys.executable, "-m", "benchmarks.versus_release", "--worker", path,
           "--presets", preset, "--epochs", str(epochs), "--cache", cache] + (
        ["--ready-only"] if ready_only else [])
    env = side_environment()
    if device == "cpu":              # as the release runs with --no-cuda, even on a GPU machine
        env["JAX_PLATFORMS"] = "cpu"
    text, wall, usage = run_command(cmd, cwd=os.path.dirname(os.path.dirname(__file__)),
                                  env=env, timeout=3600)
    result = json.loads(text.strip().splitlines()[-1])
    return {**result, "wall_s": wall, **usage}


def ambjax_run(preset: str, path: str):
    """ambjax's config for `preset` and its dataset from the release-layout file `path`: the
    release's own train and test splits and nothing else, so both sides do the same work.
    None of the train split is held out (`data.valid_fraction=0.0`, as the release runs with
    `valid=0.0`; the default would keep a tenth of IEMOCAP's train dialogues, which has no dev
    split, for validation, and ambjax would train on fewer), and MELD's dev split, which the
    release never reads (its loader drops the pickle's last field), is left out too (ambjax
    would evaluate it every epoch and compile for it). Returns (config, dataset)."""
    from ambjax.data.assemble import parse_feature_file
    from ambjax.train.executables import dataset_store
    from experiments.configs import make_config
    config = make_config(preset, [f"data.path={path}", "data.valid_fraction=0.0"])
    # parsed as a run parses it (kept in the compilation cache folder: a warm start reads it)
    dataset = parse_feature_file(config.data, dataset_store())
    return config, dataclasses.replace(dataset, splits={**dataset.splits, "valid": ()})


def worker(path: str, preset: str, epochs: int, cache: str, ready_only: bool) -> dict:
    """In a fresh process: ambjax on `path` with `preset`'s settings; prints one JSON line.
    Times count from the process's start (its restart with huge pages included)."""
    start = time.perf_counter() - process_age_s()
    import jax
    jax.config.update("jax_compilation_cache_dir", cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    from ambjax.train import Trainer
    from ambjax.train.compile import compiles_beside_steps
    config, dataset = ambjax_run(preset, path)
    trainer = Trainer.from_config(config, dataset, n_devices=1)
    compile_start = time.perf_counter()
    # as a run does: on an accelerator its first epoch trains while later programs compile
    trainer.compile(wait=not compiles_beside_steps(jax.default_backend()))
    out = {"compile_s": time.perf_counter() - compile_start,
           "start_to_ready_s": time.perf_counter() - start, "threads": os.cpu_count(),
           "device": device_name(jax.devices()[0]),
           "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
           "kept_freed_memory": freed_memory_kept()}
    if not ready_only:
        rows = []
        for epoch in range(epochs):
            compiling = trainer.programs.compiled_s is None
            train = trainer.train_epoch(epoch)[0]
            row = {"train_s": train["seconds"], "train_loss": train["loss"],
                   "compiling": compiling}
            t = time.perf_counter()
            trainer.evaluate("test")                     # no valid split: the release's work
            row["test_s"] = time.perf_counter() - t
            rows.append(row)
        out["epochs"] = rows
    trainer.wait_compiled()
    out["all_compiled_s"] = trainer.programs.compiled_s
    print(json.dumps(out), flush=True)
    return out


UNSTEADY_SPREAD = 1.15
"""A side's steady epochs further apart than this (slowest / fastest) mark a doubtful row: on
a shared machine another tenant can slow one side for part of its run (on this project's
2-core VMs a release epoch once grew from 12.8 to 33.6 s within one run, the load average
inside the machine unchanged; undisturbed runs so far spread up to 1.145x)."""

SLOW_FIRST_EPOCHS = 1.8
"""A side's first epochs slower than this times its steady median mark a doubtful row too (in
the undisturbed runs so far: the release's up to 1.38x, ambjax's, which touch their memory
for the first time, up to 1.65x; in disturbed ones 1.95-2.36x)."""


PROBE_SPREAD = 1.25
"""The machine's speed at its probes before, between and after the sides further apart than
this (fastest / slowest, in either measure of `probe_machine`) marks a doubtful row. A slow
phase can cover one side's whole run: runs A14 and A15 on the 2-core AMD EPYC found ambjax's
IEMOCAP epochs steady but at 7.2-7.7 s and its cold compile at 31.5-32.1 s, where the same
worker on the same file alone minutes later took 5.3-6.1 s and 25.5-29.0 s (and run A16 6.4 s
and 26.6 s). That machine's matmul speed moves within seconds (single 2048 x 2048 products at
79-181 GFLOP/s in one minute, its hypervisor's steal counter unchanged), so a probe takes the
median of `PROBE_REPEATS` products (~5 s): six such probes in a row read 148-164 GFLOP/s.
A15's matmul probes stayed at 161-176 GFLOP/s through its slow ambjax side, so the probes
time filling fresh memory too (sixteen fills in a row: 1.1-1.2 GB/s); whether that one moves
in such a phase is not yet seen."""

PROBE_REPEATS = 40
PROBE_FILL_MB = 256


def fresh_memory_fill_gbps(mb: int = PROBE_FILL_MB, repeats: int = 9) -> float:
    """GB/s of filling `mb` MB of newly mapped memory (the median of `repeats`): the kernel's
    page faults and the writes, what a step that maps its temporaries afresh pays
    (benchmarks/README.md, sixth session) and a matmul's speed does not show. The memory is
    mapped for each fill (`mmap`), so an allocator's reuse of freed memory cannot hide them."""
    size, times = mb * 2 ** 20, []
    for _ in range(repeats):
        region = mmap.mmap(-1, size)
        start = time.perf_counter()
        words = np.frombuffer(region, np.float32)
        words.fill(1.0)
        times.append(time.perf_counter() - start)
        del words
        region.close()
    return mb / 1024 / statistics.median(times)


def probe_machine() -> dict:
    """The machine's speed now: "matmul_gflops" (`matmul_flops`, the median of `PROBE_REPEATS`
    float32 products) and "fresh_memory_gbps" (`fresh_memory_fill_gbps`)."""
    return {"matmul_gflops": matmul_flops(repeats=PROBE_REPEATS) / 1e9,
            "fresh_memory_gbps": fresh_memory_fill_gbps()}


_PROBE_UNITS = {"matmul_gflops": ("matmul speed", "GFLOP/s"),
                "fresh_memory_gbps": ("fresh-memory fill", "GB/s")}


def _steady_values(values: list[float], first: int) -> list[float]:
    return values[first:] if len(values) > first else values


def _steady(values: list[float], first: int) -> float:
    return statistics.median(_steady_values(values, first))


def doubts(release: dict, ours_epochs: list[float], first: int,
           ours_losses: Sequence[float], probes: Sequence[dict] = (),
           ours_compiling: Sequence[bool] = ()) -> list[str]:
    """What makes a row's measurement doubtful, one phrase each (empty: nothing): a side's
    steady epochs spread more than `UNSTEADY_SPREAD`, its first epochs slower than
    `SLOW_FIRST_EPOCHS` times its steady median (not counting ambjax's epochs that began
    while its later programs compiled, `ours_compiling`), ambjax's programs still compiling
    in a steady epoch, the release's printed epochs adding up to more than its process's
    whole run, an ambjax train loss that is not finite (timing a diverged model), or the
    machine's speed at the `probes` (`probe_machine`, before, between and after the sides)
    further apart than `PROBE_SPREAD` in either measure."""
    found = []
    late = [i + 1 for i, c in enumerate(ours_compiling) if c and i >= first]
    if late:
        found.append(f"ambjax's later programs still compiled in its steady epoch(s) {late}")
    for key, (what, unit) in _PROBE_UNITS.items():
        values = [p[key] for p in probes]
        if values and max(values) > PROBE_SPREAD * min(values):
            found.append(f"the machine's {what} moved between the sides: "
                         + " / ".join(f"{v:.{0 if v >= 100 else 1}f}" for v in values)
                         + f" {unit} ({max(values) / min(values):.2f}x) before, between and "
                         "after them")
    bad = [i + 1 for i, loss in enumerate(ours_losses) if not math.isfinite(loss)]
    if bad:
        found.append(f"ambjax's train loss is not finite in epoch(s) {bad} (a diverged model)")
    compiling = list(ours_compiling) + [False] * len(ours_epochs)
    for side, values, skip in (("the release's", release["epoch_s"], [False] * first),
                               ("ambjax's", ours_epochs, compiling)):
        steady = _steady_values(values, first)
        if min(steady) > 0 and max(steady) / min(steady) > UNSTEADY_SPREAD:
            found.append(f"{side} steady epochs spread {max(steady) / min(steady):.2f}x "
                         f"({min(steady):.2f}-{max(steady):.2f} s)")
        timed = [v for v, s in zip(values[:first], skip) if not s]
        if len(values) > first > 0 and timed:
            slowest_first = max(timed) / statistics.median(steady)
            if slowest_first > SLOW_FIRST_EPOCHS:
                found.append(f"{side} first epochs up to {slowest_first:.2f}x its steady median")
    if release["startup_s"] < 0:
        found.append(f"the release's printed epochs add up to {-release['startup_s']:.1f} s "
                      "more than its process ran")
    return found


def compare(preset: str, release: dict, cold: dict, warm: dict, first: int,
            probes: Sequence[dict] = ()) -> dict:
    """Per-epoch medians, a release-length run end to end, and the ratios; `probes` are the
    machine's speed (`probe_machine`) before, between and after the sides."""
    length = RELEASE_RUNS[preset][2]
    ours_epoch = [e["train_s"] + e["test_s"] for e in cold["epochs"]]
    rel_steady, ours_steady = _steady(release["epoch_s"], first), _steady(ours_epoch, first)
    n = len(ours_epoch)
    # a release-length run: start-up, the measured first epochs, then steady epochs
    rel_run = (release["startup_s"] + sum(release["epoch_s"][:first])
               + (length - min(first, n)) * rel_steady)
    ours_run = (cold["start_to_ready_s"] + sum(ours_epoch[:first])
                + (length - min(first, n)) * ours_steady)
    if n >= length:                               # measured in full
        rel_run = release["wall_s"]
        ours_run = cold["start_to_ready_s"] + sum(ours_epoch)
    return {
        "preset": preset, "epochs_measured": n, "first_epochs_apart": first,
        "release_epoch_s": release["epoch_s"], "release_steady_epoch_s": rel_steady,
        "release_startup_s": release["startup_s"], "release_peak_rss_gb": release["peak_rss_gb"],
        "ambjax_epochs": cold["epochs"], "ambjax_steady_train_test_s": ours_steady,
        "ambjax_steady_train_s": _steady([e["train_s"] for e in cold["epochs"]], first),
        "ambjax_steady_test_s": _steady([e["test_s"] for e in cold["epochs"]], first),
        "ambjax_cold_compile_s": cold["compile_s"], "ambjax_cold_start_s": cold["start_to_ready_s"],
        "ambjax_all_compiled_s": cold.get("all_compiled_s"),
        "ambjax_warm_start_s": warm["start_to_ready_s"], "ambjax_peak_rss_gb": cold["peak_rss_gb"],
        "release_length_epochs": length, "release_length_run_release_s": rel_run,
        "release_length_run_ambjax_s": ours_run,
        "epoch_speedup": rel_steady / ours_steady, "end_to_end_speedup": rel_run / ours_run,
        "release_length_run_measured_in_full": n >= length,
        "machine_probes": list(probes),
        "doubts": doubts(release, ours_epoch, first, [e["train_loss"] for e in cold["epochs"]],
                         probes, [e.get("compiling", False) for e in cold["epochs"]]),
        "glibc_tunables": {"release": release["glibc_tunables"],
                           "ambjax": cold["glibc_tunables"]},
        "ambjax_kept_freed_memory": cold["kept_freed_memory"],
        # each side's whole process (ambjax: its cold run): where fresh memory costs, system
        # time and page faults grow with it
        "process_cpu": {side: {k: run[k] for k in PROCESS_CPU if k in run}
                        for side, run in (("release", release), ("ambjax", cold))},
    }


PROCESS_CPU = ("wall_s", "user_s", "system_s", "minor_faults")


def process_cpu_line(rows: list[dict]) -> str:
    """One sentence: each side's whole process, its CPU seconds (user + system) and minor page
    faults; empty where the rows do not have them."""
    def side(name: str, c: dict) -> str:
        return (f"{name} {c['user_s']:.0f} + {c['system_s']:.1f} s in {c['wall_s']:.0f} s, "
                f"{c['minor_faults'] / 1e6:.2f} M faults")
    parts = [f"{r['preset']}: " + ", ".join(side(n, r["process_cpu"][n])
                                            for n in ("release", "ambjax"))
             for r in rows if all(len(r.get("process_cpu", {}).get(n, {})) == len(PROCESS_CPU)
                                  for n in ("release", "ambjax"))]
    return ("Each side's whole process (ambjax: its cold run), CPU seconds user + system in "
            "its wall time, and its minor page faults: " + "; ".join(parts) + ".") if parts else ""


def tunables(rows: list[dict], side: str) -> str:
    """The GLIBC_TUNABLES `side` ran with, as the table says it."""
    found = sorted({r["glibc_tunables"][side] for r in rows})
    return " / ".join(f"`{t}`" if t else "none" for t in found)


def table(env: dict, rows: list[dict], patches: list[str], release_info: dict) -> str:
    lines = [f"Machine: {cpu_name(env)}, "
             f"{env['cpu_count']} cores, device {env['device']}; ambjax on jax {env['jax']}, "
             f"the release on torch {release_info['torch']} ({release_info['threads']} threads); "
             f"{env['date']}", "",
             "| preset | release epoch (s) | ambjax train + test (s) | epoch speed-up | ambjax "
             "cold compile (s) | ambjax warm start (s) | release-length run: release (s) | "
             "ambjax (s) | end to end | peak RSS release / ambjax (GB) |",
             "|" + "---|" * 10]
    for r in rows:
        lines.append(
            f"| {r['preset']} | {r['release_steady_epoch_s']:.2f} | "
            f"{r['ambjax_steady_train_s']:.2f} + {r['ambjax_steady_test_s']:.2f} | "
            f"{r['epoch_speedup']:.2f}x | "
            + compile_cell(r["ambjax_cold_compile_s"], r.get("ambjax_all_compiled_s")) + " | "
            f"{r['ambjax_warm_start_s']:.1f} | {r['release_length_run_release_s']:.0f} | "
            f"{r['release_length_run_ambjax_s']:.0f} | {r['end_to_end_speedup']:.2f}x | "
            f"{r['release_peak_rss_gb']:.1f} / {r['ambjax_peak_rss_gb']:.1f} |")
    lines += ["", f"Epoch times: medians over epochs {rows[0]['first_epochs_apart'] + 1}.."
              f"{rows[0]['epochs_measured']} of each side (the first "
              f"{rows[0]['first_epochs_apart']} reported apart in the JSON). The release's epoch "
              "is its printed epoch_time (train, its empty valid split, test). A release-length "
              "run is start-up plus every epoch"
              + ("" if rows[0]["release_length_run_measured_in_full"] else
                 " (the steady epochs past the measured ones extrapolated)") + ".",
              "The machine's float32 matmul speed (GFLOP/s) and fresh-memory fill (GB/s) before "
              "the release / between the sides / after ambjax: " + "; ".join(
                  f"{r['preset']} " + " / ".join(f"{p['matmul_gflops']:.0f}" for p in
                                                 r["machine_probes"]) + " GFLOP/s, "
                  + " / ".join(f"{p['fresh_memory_gbps']:.1f}" for p in r["machine_probes"])
                  + " GB/s" for r in rows if r["machine_probes"]) + ".",
              "glibc tunables: the release " + tunables(rows, "release") + ", ambjax "
              + tunables(rows, "ambjax") + " (`ambjax.host_memory`)"
              + ("; ambjax in its kept-memory mode (the default on CPUs with AVX-512; "
                 "`AMBJAX_KEEP_FREED_MEMORY=0` turns it off)."
                 if any(r["ambjax_kept_freed_memory"] for r in rows)
                 else "; ambjax without the kept-memory mode."),
              "Patched in a temporary copy of the release: " + ("; ".join(patches) or "nothing")]
    if cpu_line := process_cpu_line(rows):
        lines.append(cpu_line)
    doubtful = [f"{r['preset']}: {'; '.join(r['doubts'])}" for r in rows if r["doubts"]]
    if doubtful:
        lines.append("DOUBTFUL (the machine was likely disturbed during the run, or the model "
                     "diverged; run it again): "
                     + " / ".join(doubtful))
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    p = ArgumentParser(prog="python -m benchmarks.versus_release", description=__doc__)
    p.add_argument("--release", help="a checkout of github wys-ljq/AMB-DSGDN")
    p.add_argument("--release-python", default=sys.executable,
                   help="the python with the release's torch (default: this one)")
    p.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    p.add_argument("--presets", nargs="+", choices=tuple(RELEASE_RUNS), default=["iemocap"])
    p.add_argument("--epochs", type=int, default=5, help="epochs measured on each side")
    p.add_argument("--first-epochs", type=int, default=2,
                   help="first epochs reported apart from the steady-state median")
    p.add_argument("--wait-idle", type=float, default=120,
                   help="seconds to wait for an idle machine before starting")
    p.add_argument("--release-huge-pages", action="store_true",
                   help="run the release with glibc's huge-pages tunable too (ambjax's "
                        "command-line default)")
    p.add_argument("--name", default="versus_release")
    p.add_argument("--worker", help=argparse.SUPPRESS)      # the ambjax side, in a fresh process
    p.add_argument("--cache", help=argparse.SUPPRESS)
    p.add_argument("--ready-only", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(args.worker, args.presets[0], args.epochs, args.cache, args.ready_only)
        return 0
    keep_this_process_on_cpu()           # it writes the data and probes the host's speed
    if not args.release:
        raise UsageError("--release DIR is required (a checkout of github wys-ljq/AMB-DSGDN)")
    if args.epochs < 1 or args.first_epochs < 0:
        raise UsageError("--epochs must be >= 1 and --first-epochs >= 0")
    probe = ("import json, torch; print(json.dumps({'torch': torch.__version__, 'threads': "
             "torch.get_num_threads(), 'cuda': torch.cuda.is_available()}))")
    info, _, _ = run_command([args.release_python, "-c", probe], cwd=".", timeout=300)
    release_info = json.loads(info.strip().splitlines()[-1])
    env = {**environment(), "load": wait_idle(args.wait_idle)}
    rows = []
    with tempfile.TemporaryDirectory(prefix="ambjax-versus-release-") as scratch:
        folder, patches = release_copy(args.release, scratch, args.device)
        for preset in args.presets:
            path = write_data(preset, folder)
            probes = [probe_machine()]
            print(f"{preset}: the release, {args.epochs} epochs ...", flush=True)
            release = run_release(folder, args.release_python, preset, args.epochs,
                                  args.device, huge_pages=args.release_huge_pages)
            probes.append(probe_machine())
            cache = os.path.join(scratch, f"cache-{preset}")
            print(f"{preset}: ambjax, cold then warm ...", flush=True)
            cold = run_ambjax(path, preset, args.epochs, cache, ready_only=False,
                              device=args.device)
            warm = run_ambjax(path, preset, args.epochs, cache, ready_only=True,
                              device=args.device)
            probes.append(probe_machine())
            env["device"] = cold["device"]            # this process's own is the CPU
            row = compare(preset, release, cold, warm, args.first_epochs, probes)
            rows.append(row)
            print(f"{preset}: release epoch {row['release_steady_epoch_s']:.2f} s, ambjax "
                  f"{row['ambjax_steady_train_test_s']:.2f} s ({row['epoch_speedup']:.2f}x); "
                  f"end to end {row['end_to_end_speedup']:.2f}x", flush=True)
            for doubt in row["doubts"]:
                print(f"warning: {preset}: {doubt}; the machine was likely disturbed",
                      file=sys.stderr, flush=True)
    env["load"]["load_at_end"] = load_average()
    text = table(env, rows, patches, release_info)
    print(text)
    result = {"benchmark": "versus_release", "environment": env, "release": release_info,
              "patches": patches, "results": rows}
    print("wrote", write_results(args.name, result, text))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
