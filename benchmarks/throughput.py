"""Train/eval throughput of AMB-DSGDN at the release's size on synthetic data of the real shapes.

    python -m benchmarks.throughput [--preset iemocap meld] [--hidden 512] [--batch-sizes 16]
                                    [--devices 1] [--lengths 0] [--dtype float32]
                                    [--json PATH]

Sweeps: `--batch-sizes 4 16 64 128`, `--lengths 10 50 110` (every dialogue that long),
`--devices 1 2 4`, `--dtype float32 bfloat16` (mixed precision); every combination is one row.

Per preset: compile time per bucket (timed separately from the steady state), one full
training epoch and one test pass including host-side batching and padding (after compilation),
steady-state steps/s, utterances/s and dialogues/s, padding efficiency (real / padded nodes and
edges), distinct compiled shapes per epoch, peak host RSS (each row runs in its own process)
and device memory where the backend reports it, and the achieved FLOP/s on real utterances against a measured matmul peak.
The roofline column is the counted FLOPs of one train epoch plus one test pass (XLA's cost
analysis, padding included; it also counts elementwise FLOPs) divided by that peak: the time
those FLOPs would take at the matmul peak. Rows at the release's settings
(hidden 512, the preset's batch, real lengths, one device) are set against the PyTorch
release's figures from the benchmark issue, which were measured on another CPU (2-core
AVX-512); the ratio is only a like-for-like comparison on that kind of CPU.
On CPU, `--devices N` > 1 needs XLA_FLAGS=--xla_force_host_platform_device_count=N (fake
devices sharing the same cores).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import itertools
import multiprocessing
import resource
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from ambjax.cli import run_main
from ambjax.data import make_synthetic
from ambjax.train.loop import Trainer, load_dataset
from benchmarks.common import environment, write_results
from experiments.configs import make_config

# The PyTorch release (torch 2.13, 2 threads, 2-core AVX-512 CPU, hidden 512), per epoch, from
# the benchmark issue: train epoch s, test pass s, peak RSS GB.
RELEASE_REFERENCE = {"iemocap": {"batch_size": 16, "train_epoch_s": 12.37, "eval_pass_s": 1.06,
                                 "peak_rss_gb": 4.8},
                     "meld": {"batch_size": 64, "train_epoch_s": 23.88, "eval_pass_s": 1.61,
                              "peak_rss_gb": 6.7}}


def matmul_peak_flops(n: int = 2048, repeats: int = 5) -> float:
    """Measured float32 matmul FLOP/s of the default device."""
    a = jnp.ones((n, n), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        f(a).block_until_ready()
        times.append(time.perf_counter() - start)
    return 2 * n ** 3 / float(np.median(times))


def _flops(compiled) -> float:
    """FLOPs of one call of a compiled executable (XLA's cost analysis; 0 if unavailable)."""
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float((cost or {}).get("flops", 0.0))


def _peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2


def _device_memory_gb() -> float | None:
    stats = getattr(jax.devices()[0], "memory_stats", lambda: None)()
    return stats["peak_bytes_in_use"] / 1024 ** 3 if stats and "peak_bytes_in_use" in stats else None


def bench_preset(preset: str, *, hidden: int, batch_size: int | None, devices: int,
                 length: int | None = None, dtype: str = "float32") -> dict:
    overrides = {"model.hidden_dim": str(hidden), "model.dtype": dtype}
    if batch_size:
        overrides["data.batch_size"] = str(batch_size)
    config = make_config(preset, overrides)
    dataset = (load_dataset(config.data) if length is None else
               make_synthetic(config.data.synthetic, seed=config.data.synthetic_seed,
                              length=length))
    trainer = Trainer(config, dataset, n_devices=devices)
    gb = trainer.batcher
    # the epoch that is timed below; its shapes are all compiled first (outside the timing)
    train_batches = list(gb.batches("train", shuffle=True, seed=0, epoch=1))
    test_batches = list(gb.batches("test"))
    shapes = {}
    for b in train_batches + test_batches:
        shapes.setdefault(b.nodes.mask.shape, b)
    # compile every bucket of the epoch, timed separately
    state = trainer.state
    # a copy: the train step donates (and so deletes) the state's device buffers
    params = jax.tree.map(jnp.copy, trainer.state.params)
    active = jnp.asarray(True)
    compile_s = {}
    flops, eval_flops = {}, {}
    for shape, b in shapes.items():
        start = time.perf_counter()
        compiled = trainer.train_step.lower(state, b, active).compile()
        compiled_eval = trainer.eval_step.lower(params, b).compile()
        compile_s[str(shape)] = time.perf_counter() - start
        flops[shape] = _flops(compiled)
        eval_flops[shape] = _flops(compiled_eval)
        state, _ = trainer.train_step(state, b, active)  # also warms the executable cache
        jax.block_until_ready(trainer.eval_step(params, b))
    # one full training epoch (host batching included) after compilation
    start = time.perf_counter()
    n_steps = 0
    for b in gb.batches("train", shuffle=True, seed=0, epoch=1):
        state, metrics = trainer.train_step(state, b, active)
        n_steps += 1
    jax.block_until_ready(metrics)
    train_epoch_s = time.perf_counter() - start
    start = time.perf_counter()
    outs = [trainer.eval_step(params, b) for b in gb.batches("test")]
    jax.block_until_ready(outs)
    eval_pass_s = time.perf_counter() - start
    real_nodes = sum(int(b.nodes.mask.sum()) for b in train_batches)
    padded_nodes = sum(b.nodes.mask.size for b in train_batches)
    real_edges = sum(int((b.intra.types > 0).sum() + (b.inter.types > 0).sum())
                     for b in train_batches)
    padded_edges = sum(b.intra.types.size + b.inter.types.size
                       for b in train_batches)
    epoch_flops = sum(flops[b.nodes.mask.shape] for b in train_batches)
    pass_flops = sum(eval_flops[b.nodes.mask.shape] for b in test_batches)
    n_train = len(dataset.splits["train"])
    test_utts = sum(len(d) for d in dataset.split("test"))
    return {
        "device": environment()["device"], "preset": preset, "hidden": hidden,
        "dialogue_length": length or "real distribution",
        "batch_size": config.data.batch_size, "devices": devices, "dtype": dtype,
        "parameters": trainer.num_parameters,
        "compile_s": float(sum(compile_s.values())), "compile_s_per_bucket": compile_s,
        "distinct_shapes_per_epoch": len(shapes),
        "train_epoch_s": train_epoch_s, "eval_pass_s": eval_pass_s,
        "train_steps_per_s": n_steps / train_epoch_s,
        "train_utterances_per_s": real_nodes / train_epoch_s,
        "train_dialogues_per_s": n_train / train_epoch_s,
        "eval_utterances_per_s": test_utts / eval_pass_s,
        "node_padding_efficiency": real_nodes / padded_nodes,
        "edge_padding_efficiency": real_edges / padded_edges,
        "train_flops_per_epoch": epoch_flops, "eval_flops_per_pass": pass_flops,
        "achieved_flops_per_s_real": epoch_flops * real_nodes / padded_nodes / train_epoch_s,
        "peak_rss_gb": _peak_rss_gb(), "peak_device_memory_gb": _device_memory_gb(),
    }


def bench_preset_in_child(**kwargs) -> dict:
    """`bench_preset` in a fresh process, so that its peak RSS is this row's alone."""
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
        return pool.submit(bench_preset, **kwargs).result()


def compare_with_release(row: dict, peak: float) -> dict:
    """Roofline bound, and ratios to the release's figures where the row matches its setting."""
    out = {"matmul_peak_flops_per_s": peak,
           "fraction_of_peak": row["achieved_flops_per_s_real"] / peak,
           "roofline_train_epoch_s": row["train_flops_per_epoch"] / peak,
           "roofline_eval_pass_s": row["eval_flops_per_pass"] / peak}
    ref = RELEASE_REFERENCE.get(row["preset"])
    if (ref and row["hidden"] == 512 and row["batch_size"] == ref["batch_size"]
            and row["devices"] == 1 and row["dialogue_length"] == "real distribution"):
        ours = row["train_epoch_s"] + row["eval_pass_s"]
        out["release_reference"] = dict(ref, measured_on="2-core AVX-512 CPU (benchmark issue)")
        out["speedup_vs_release"] = (ref["train_epoch_s"] + ref["eval_pass_s"]) / ours
        out["memory_ratio_vs_release"] = row["peak_rss_gb"] / ref["peak_rss_gb"]
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m benchmarks.throughput")
    p.add_argument("--preset", nargs="+", default=["iemocap", "meld"])
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[0],
                   help="dialogues per batch (0: the preset's)")
    p.add_argument("--devices", type=int, nargs="+", default=[1])
    p.add_argument("--lengths", type=int, nargs="+", default=[0],
                   help="utterances per dialogue for every dialogue (0: the real distribution)")
    p.add_argument("--dtype", nargs="+", default=["float32"], choices=["float32", "bfloat16"],
                   help="compute dtype(s) of the model (parameters stay float32)")
    p.add_argument("--json", help="also write the result object here")
    p.add_argument("--name", default="throughput",
                   help="results file stem: results/<name>-<device>-<date>.json")
    args = p.parse_args(argv)
    env = environment()
    peak = matmul_peak_flops()
    rows = []
    for preset in args.preset:
        for bs in args.batch_sizes:
            for dev, length, dtype in itertools.product(args.devices, args.lengths, args.dtype):
                row = bench_preset_in_child(preset=preset, hidden=args.hidden,
                                            batch_size=bs or None, devices=dev,
                                            length=length or None, dtype=dtype)
                row.update(compare_with_release(row, peak))
                rows.append(row)
                print({k: v for k, v in row.items() if not isinstance(v, dict)}, flush=True)
    fake = (" (several devices here are fake CPU devices sharing the same cores)"
            if env["device"].startswith("cpu") and max(args.devices) > 1 else "")
    lines = [f"Device: {env['device']}, {env['cpu_count']} CPUs, jax {env['jax']}{fake}", "",
             "| preset | batch | length | devices | dtype | compile (s) | shapes | train epoch (s) "
             "| test pass (s) | utt/s | real/padded nodes | peak RSS (GB) | % of matmul peak "
             "| roofline train + test (s) | speed-up vs release* | RSS vs release* |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        vs = (f"{r['speedup_vs_release']:.2f}x | {r['memory_ratio_vs_release']:.2f}x"
              if "speedup_vs_release" in r else "- | -")
        lines.append(f"| {r['preset']} | {r['batch_size']} | {r['dialogue_length']} | "
                     f"{r['devices']} | {r['dtype']} | "
                     f"{r['compile_s']:.1f} | {r['distinct_shapes_per_epoch']} | "
                     f"{r['train_epoch_s']:.2f} | {r['eval_pass_s']:.2f} | "
                     f"{r['train_utterances_per_s']:.0f} | {r['node_padding_efficiency']:.2f} | "
                     f"{r['peak_rss_gb']:.2f} | {100 * r['fraction_of_peak']:.1f} | "
                     f"{r['roofline_train_epoch_s'] + r['roofline_eval_pass_s']:.2f} | {vs} |")
    lines += ["", "*The release's figures (train + test, peak RSS) come from the benchmark issue "
              "and were measured on a 2-core AVX-512 CPU, not on this device."]
    table = "\n".join(lines) + "\n"
    print(table)
    result = {"benchmark": "throughput", "environment": env, "matmul_peak_flops_per_s": peak,
              "results": rows}
    print("wrote", write_results(args.name, result, table, args.json))
    return result


if __name__ == "__main__":
    sys.exit(run_main(lambda argv: (main(argv), 0)[1]))
