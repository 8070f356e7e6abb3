"""Shared helpers: device/version record, result files (JSON + Markdown table), an epoch's
train batches by shape, the machine's matmul speed."""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from ambjax.host_memory import cpu_flags

RESULTS = os.path.join(os.path.dirname(__file__), "results")


def train_batches_by_shape(trainer, epoch: int) -> dict[tuple, list]:
    """The train batches of `trainer`'s `epoch` (seed axis included), grouped by their node
    shape ([S, N]): which program each runs on, and how often."""
    groups: dict[tuple, list] = {}
    for batch in trainer.batcher.seed_batches("train", trainer.seeds, epoch=epoch):
        groups.setdefault(batch.nodes.mask.shape, []).append(batch)
    return groups


def compile_cell(first_step_s: float, all_s: float | None) -> str:
    """A cold compile for a table: seconds to the first step, and to the last program where
    that is later (a run that compiled beside its first epochs)."""
    if all_s is None or all_s - first_step_s < 0.05:
        return f"{first_step_s:.1f}"
    return f"{first_step_s:.1f} (first step), {all_s:.1f} (all)"


def process_age_s() -> float:
    """Seconds since this process started (kept across an `exec`, e.g. the command-line tools'
    restart with huge pages; 10 ms resolution); 0 where /proc is not readable."""
    try:
        with open("/proc/self/stat") as f:
            started = int(f.read().rsplit(")", 1)[1].split()[19])   # field 22: start time
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
    except (OSError, IndexError, ValueError):
        return 0.0
    return max(0.0, uptime - started / os.sysconf("SC_CLK_TCK"))


def matmul_flops(n: int = 2048, repeats: int = 5) -> float:
    """Measured float32 FLOP/s of an [n, n] @ [n, n] matmul on the default device (the median
    of `repeats` after one warm-up)."""
    a = jnp.ones((n, n), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        f(a).block_until_ready()
        times.append(time.perf_counter() - start)
    return 2 * n ** 3 / statistics.median(times)


def keep_this_process_on_cpu() -> None:
    """Keep JAX in this process on the CPU. For a command whose measured work runs in child
    processes: on a GPU machine, JAX's GPU backend reserves most of the GPU's memory when it
    starts, which this process would hold while the children run. Call it before this
    process first uses JAX's devices."""
    jax.config.update("jax_platforms", "cpu")


def cpu_description(cpuinfo: str = "/proc/cpuinfo") -> dict:
    """The CPU model, its family and model numbers (two CPUs of one marketing name, such as
    "AMD EPYC", may be generations apart) and the vector extensions that decide matmul speed
    (from /proc/cpuinfo; left out or False where it is not readable)."""
    model, numbers = platform.processor() or platform.machine(), {}
    fields = {"cpu family": "cpu_family", "model": "cpu_model_number"}
    try:
        with open(cpuinfo) as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if not key:
                    break                                   # the first CPU's block is enough
                if key == "model name":
                    model = value.strip()
                elif key in fields and value.strip().isdigit():
                    numbers[fields[key]] = int(value)
    except OSError:
        pass
    flags = cpu_flags(cpuinfo)
    return {"cpu_model": model, **numbers, "avx2": "avx2" in flags, "avx512": "avx512f" in flags,
            "amx": bool({"amx_tile", "amx_bf16"} & flags)}


def cpu_name(env: dict) -> str:
    """How a result's text names its CPU, from an `environment()` (or `cpu_description()`):
    e.g. "AMD EPYC, family 25 model 17 (AVX-512: True, AMX: False)"; the numbers are left out
    where they are not known (results written before they were recorded)."""
    numbers = (f", family {env['cpu_family']} model {env['cpu_model_number']}"
               if "cpu_family" in env and "cpu_model_number" in env else "")
    return (f"{env['cpu_model']}{numbers} (AVX-512: {env.get('avx512')}, "
            f"AMX: {env.get('amx')})")


def device_name(device) -> str:
    """"platform:kind" of a JAX device, as the result files name it (e.g. "cpu:cpu")."""
    return f"{device.platform}:{getattr(device, 'device_kind', '')}"


def environment() -> dict:
    """Device, CPU, backend and software versions to store with every number."""
    import flax
    import optax
    return {"device": device_name(jax.devices()[0]),
            **cpu_description(),
            "device_count": jax.device_count(), "cpu_count": os.cpu_count(),
            "machine": platform.machine(), "python": platform.python_version(),
            "jax": jax.__version__, "flax": flax.__version__, "optax": optax.__version__,
            "numpy": np.__version__, "date": datetime.date.today().isoformat()}


def result_stem(name: str, env: dict) -> str:
    """benchmarks/results/<name>-<device>-<date>, without an extension, for an `environment()`
    (the device's ':' and spaces made '-' and '_')."""
    device = env["device"].replace(":", "-").replace(" ", "_")
    return os.path.join(RESULTS, f"{name}-{device}-{env['date']}")


def write_results(name: str, result: dict, table: str, json_path: str | None = None) -> str:
    """Write `result` to benchmarks/results/<name>-<device>-<date>.json (+ .md), or, where a
    result of that stem exists already (the same command run twice in a day), to
    <stem>-2.json, <stem>-3.json, ...: a measurement is never overwritten. Also to `json_path`
    when given. Returns the JSON path written under results/."""
    os.makedirs(RESULTS, exist_ok=True)
    first = result_stem(name, result["environment"])
    stem, n = first, 1
    while any(os.path.exists(stem + ext) for ext in (".json", ".md")):
        n += 1
        stem = f"{first}-{n}"
    path = stem + ".json"
    for target in filter(None, (path, json_path)):
        with open(target, "w") as f:
            json.dump(result, f, indent=1)
    with open(stem + ".md", "w") as f:
        f.write(table)
    return path
