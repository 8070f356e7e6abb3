"""Train/eval throughput of AMB-DSGDN at the release's size on synthetic data of the real shapes.

    python -m benchmarks.throughput [--preset iemocap meld] [--hidden 512] [--batch-sizes 16]
                                    [--devices 1] [--seeds 1 4 8] [--lengths 0]
                                    [--dtype float32] [--json PATH]

Sweeps: `--batch-sizes 4 16 64 128`, `--lengths 10 50 110` (every dialogue that long),
`--devices 1 2 4`, `--seeds 1 4 8` (seeds trained together as one vmapped program),
`--dtype float32 bfloat16` (mixed precision); every combination is one row.

Each row runs in two fresh processes that share a new, empty XLA compilation cache: the first
compiles every shape the run uses ahead of time as a run does (the cold compile; on an
accelerator, where a run starts training once its first step's programs are compiled, timed to
that and to the last program), then runs a first
training epoch (timed apart: every program's first run) and times a second full training epoch
of all its seeds and one valid and one test pass, host-side batching included;
the second measures a warm start (process start to every program ready, from the cache).
Those processes run as the command-line tools do: with huge pages where they use them, and in
the kept-memory mode where the tools use it (`ambjax.host_memory.keep_freed_memory_wanted`).
Reported: utterance-seeds/s, steps/s, padding efficiency (real / padded nodes and edges),
distinct compiled shapes, peak host RSS (the first process's), device memory where the backend
reports it, and the achieved FLOP/s on real utterances against a matmul peak measured in the
row's first process (on its device; this process stays on the CPU, holding no GPU memory while
the rows run). The roofline column is the counted FLOPs of one train epoch plus one test pass
(XLA's cost analysis, padding included) divided by that peak. Nothing here is compared with the
PyTorch release: that takes both measured in one run on one machine,
`benchmarks.versus_release`. A row whose largest batch cannot fit in memory is reported as
refused. On CPU, `--devices N` > 1 needs XLA_FLAGS=--xla_force_host_platform_device_count=N
(fake devices sharing the same cores).
"""

from __future__ import annotations

import concurrent.futures
import itertools
import math
import multiprocessing
import resource
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from ambjax.cli import ArgumentParser, run_main
from ambjax.data import make_synthetic
from ambjax.host_memory import keep_freed_memory_if_wanted
from ambjax.train import Trainer, load_dataset
from ambjax.train.compile import ResourceError, compiles_beside_steps
from ambjax.train.executables import dataset_store
from benchmarks.common import (compile_cell, cpu_name, environment, keep_this_process_on_cpu,
                               matmul_flops, write_results)
from experiments.configs import load as load_preset, make_config


def _peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2


def _device_memory_gb() -> float | None:
    stats = getattr(jax.devices()[0], "memory_stats", lambda: None)()
    return stats["peak_bytes_in_use"] / 1024 ** 3 if stats and "peak_bytes_in_use" in stats else None


def bench_preset(preset: str, *, hidden: int, batch_size: int | None, devices: int,
                 length: int | None = None, dtype: str = "float32", seeds: int = 1,
                 cache_dir: str | None = None, ready_only: bool = False) -> dict:
    """One row: compile (every shape of the run, ahead of time), one train epoch of `seeds`
    seeds vmapped, one valid and one test pass, FLOPs, memory. With `cache_dir`, XLA's
    persistent cache lives there (an empty folder measures a cold compile, a filled one a
    warm start). `ready_only`: stop once the programs are compiled (a warm-start row)."""
    if cache_dir:
        jax.config.update("jax_compilation_cache_dir", cache_dir)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    start_all = time.perf_counter()
    overrides = {"model.hidden_dim": str(hidden), "model.dtype": dtype}
    if batch_size:
        overrides["data.batch_size"] = str(batch_size)
    config = make_config(preset, overrides)
    # the data as a run reads it (`prepare_run`): kept in the cache folder's store
    dataset = (load_dataset(config.data, store=dataset_store()) if length is None else
               make_synthetic(config.data.synthetic, seed=config.data.synthetic_seed,
                              length=length))
    seed_list = tuple(range(seeds))
    trainer = Trainer.from_config(config, dataset, n_devices=devices, seeds=seed_list)
    gb = trainer.batcher
    base = {"device": environment()["device"], "preset": preset, "hidden": hidden,
            "dialogue_length": length or "real distribution",
            "batch_size": config.data.batch_size, "devices": devices, "dtype": dtype,
            "seeds": seeds, "parameters": trainer.num_parameters}
    start = time.perf_counter()
    try:      # as a run does (on an accelerator: ready once the first step's programs are)
        trainer.compile(wait=not compiles_beside_steps(jax.default_backend()))
        ready = {"first_step_s": time.perf_counter() - start,
                 "start_to_first_step_s": time.perf_counter() - start_all}
        trainer.wait_compiled()            # then every program, before anything is timed
    except ResourceError as e:
        return {**base, "refused": str(e), "peak_rss_gb": _peak_rss_gb()}
    compile_s = time.perf_counter() - start
    start_to_ready_s = time.perf_counter() - start_all
    if ready_only:
        return {**base, **ready, "compile_s": compile_s, "start_to_ready_s": start_to_ready_s}
    active = jnp.asarray(True)

    def train_epoch(epoch: int) -> tuple[float, int, float]:
        """Seconds and steps of one full training epoch (host batching included), and the
        largest train loss of its last step over the seeds."""
        start, n_steps = time.perf_counter(), 0
        for b in gb.seed_batches("train", seed_list, epoch=epoch):
            trainer.state, metrics = trainer.train_step(trainer.state, b, active)
            n_steps += 1
        jax.block_until_ready(metrics)
        return time.perf_counter() - start, n_steps, float(np.max(metrics["loss"]))

    # the first epoch runs every program for the first time (buffers, threads); reported
    # apart, the throughput is the second's
    first_epoch_s, _, _ = train_epoch(0)
    train_epoch_s, n_steps, last_loss = train_epoch(1)
    passes = {}
    for split in ("valid", "test"):
        start = time.perf_counter()
        outs = [trainer.eval_step(trainer.state.params, b) for b in gb.batches(split)]
        jax.block_until_ready(outs)
        passes[split] = time.perf_counter() - start
    train_batches = list(gb.seed_batches("train", seed_list, epoch=1))
    test_batches = list(gb.batches("test"))
    flops = {b.nodes.mask.shape: trainer.program_flops("train", b) for b in train_batches}
    eval_flops = {b.nodes.mask.shape: trainer.program_flops("eval", b) for b in test_batches}
    real_nodes = sum(int(b.nodes.mask.sum()) for b in train_batches)
    padded_nodes = sum(b.nodes.mask.size for b in train_batches)
    real_edges = sum(int((b.intra.types > 0).sum() + (b.inter.types > 0).sum())
                     for b in train_batches)
    padded_edges = sum(b.intra.types.size + b.inter.types.size for b in train_batches)
    epoch_flops = sum(flops[b.nodes.mask.shape] for b in train_batches)
    pass_flops = sum(eval_flops[b.nodes.mask.shape] for b in test_batches)
    n_train = len(dataset.splits["train"])
    test_utts = sum(len(d) for d in dataset.split("test"))
    return {
        **base, **ready, "compile_s": compile_s, "start_to_ready_s": start_to_ready_s,
        "distinct_shapes_per_epoch": len(flops),
        "first_epoch_s": first_epoch_s, "train_epoch_s": train_epoch_s,
        "last_step_train_loss": last_loss,
        "eval_pass_s": passes["test"],
        "valid_pass_s": passes["valid"],
        "train_steps_per_s": n_steps / train_epoch_s,
        "train_utterance_seeds_per_s": real_nodes / train_epoch_s,
        "train_dialogues_per_s": seeds * n_train / train_epoch_s,
        "eval_utterances_per_s": test_utts / passes["test"],
        "node_padding_efficiency": real_nodes / padded_nodes,
        "edge_padding_efficiency": real_edges / padded_edges,
        "train_flops_per_epoch": epoch_flops, "eval_flops_per_pass": pass_flops,
        "achieved_flops_per_s_real": epoch_flops * real_nodes / padded_nodes / train_epoch_s,
        "peak_rss_gb": _peak_rss_gb(), "peak_device_memory_gb": _device_memory_gb(),
        "largest_train_step_gb": (trainer.largest_train_step_bytes or 0) / 1e9,
    }


def row_process() -> concurrent.futures.ProcessPoolExecutor:
    """One fresh ("spawn") process for a row's work, set up as the command-line tools set up
    theirs: huge pages come with the environment it inherits, the kept-memory mode where they
    would keep freed memory (`ambjax.host_memory.keep_freed_memory_wanted`; `run_main`'s
    malloc settings stay in the process that made them)."""
    return concurrent.futures.ProcessPoolExecutor(
        1, mp_context=multiprocessing.get_context("spawn"),
        initializer=keep_freed_memory_if_wanted)


def bench_preset_in_child(**kwargs) -> dict:
    """`bench_preset` in a fresh process (`row_process`), so that its peak RSS is this row's
    alone; a measured row also gets "matmul_peak_flops_per_s", the matmul peak of that
    process's device (`matmul_flops`), measured there right after it."""
    with row_process() as pool:
        row = pool.submit(bench_preset, **kwargs).result()
        if not kwargs.get("ready_only") and "refused" not in row:
            row["matmul_peak_flops_per_s"] = pool.submit(matmul_flops).result()
        return row


def bench_row(**kwargs) -> dict:
    """A row measured in two fresh processes sharing a new, empty compilation cache: the first
    compiles cold and times the epoch, the second times a warm start (process start to every
    program ready, from the cache)."""
    with tempfile.TemporaryDirectory(prefix="ambjax-bench-cache-") as cache:
        row = bench_preset_in_child(**kwargs, cache_dir=cache)
        if "refused" not in row:
            warm = bench_preset_in_child(**kwargs, cache_dir=cache, ready_only=True)
            row.update(cold_compile_s=row["compile_s"], warm_start_s=warm["start_to_ready_s"],
                       warm_compile_s=warm["compile_s"],
                       warm_start_to_first_step_s=warm["start_to_first_step_s"])
    return row


def roofline(row: dict, peak: float) -> dict:
    """The row against the measured matmul peak: fraction of peak reached on real utterances
    and the epoch / pass times the counted FLOPs would take at that peak."""
    return {"matmul_peak_flops_per_s": peak,
            "fraction_of_peak": row["achieved_flops_per_s_real"] / peak,
            "roofline_train_epoch_s": row["train_flops_per_epoch"] / peak,
            "roofline_eval_pass_s": row["eval_flops_per_pass"] / peak}


def diverged_note(rows: list[dict]) -> list[str]:
    """Table lines naming the rows whose model diverged (a train loss that is not finite):
    a model computing nan is timed doing nothing useful. Empty when none did."""
    diverged = [r["preset"] for r in rows
                if not math.isfinite(r.get("last_step_train_loss", 0.0))]
    return ["", "NOT A RESULT: the train loss is not finite (a diverged model) in the rows of "
            + ", ".join(diverged)] if diverged else []


def main(argv=None) -> dict:
    p = ArgumentParser(prog="python -m benchmarks.throughput")
    p.add_argument("--preset", nargs="+", default=["iemocap", "meld"])
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[0],
                   help="dialogues per batch (0: the preset's)")
    p.add_argument("--devices", type=int, nargs="+", default=[1])
    p.add_argument("--seeds", type=int, nargs="+", default=[1],
                   help="numbers of seeds trained together (vmapped), e.g. 1 4 8")
    p.add_argument("--lengths", type=int, nargs="+", default=[0],
                   help="utterances per dialogue for every dialogue (0: the real distribution)")
    p.add_argument("--dtype", nargs="+", default=["float32"], choices=["float32", "bfloat16"],
                   help="compute dtype(s) of the model (parameters stay float32)")
    p.add_argument("--json", help="also write the result object here")
    p.add_argument("--name", default="throughput",
                   help="results file stem: results/<name>-<device>-<date>.json")
    p.add_argument("--processes", type=int,
                   help="instead: the same job as N processes on localhost against one process "
                        "(benchmarks.multiprocess; --preset's first entry)")
    args = p.parse_args(argv)
    for preset in args.preset:
        load_preset(preset)                      # an unknown preset is one line, at once
    if args.processes:
        from benchmarks import multiprocess
        return multiprocess.main(["--processes", str(args.processes), "--preset",
                                  args.preset[0]])
    keep_this_process_on_cpu()           # the rows run in child processes (`bench_row`)
    env = environment()
    rows = []
    for preset in args.preset:
        for bs in args.batch_sizes:
            for dev, length, dtype, seeds in itertools.product(args.devices, args.lengths,
                                                               args.dtype, args.seeds):
                row = bench_row(preset=preset, hidden=args.hidden, batch_size=bs or None,
                                devices=dev, length=length or None, dtype=dtype, seeds=seeds)
                if "refused" not in row:
                    row.update(roofline(row, row["matmul_peak_flops_per_s"]))
                rows.append(row)
                print({k: v for k, v in row.items() if not isinstance(v, dict)}, flush=True)
    env["device"] = rows[0]["device"]                # the rows' own (this process's is the CPU)
    fake = (" (several devices here are fake CPU devices sharing the same cores)"
            if env["device"].startswith("cpu") and max(args.devices) > 1 else "")
    lines = [f"Device: {env['device']} ({cpu_name(env)}), {env['cpu_count']} CPUs, "
             f"jax {env['jax']}{fake}", "",
             "| preset | batch | length | devices | dtype | seeds | cold compile (s) | warm start "
             "(s) | shapes | train epoch (s) | test pass (s) | "
             "utterance-seeds/s | real/padded nodes | peak RSS (GB) | % of matmul peak | "
             "roofline train + test (s) |",
             "|" + "---|" * 16]
    for r in rows:
        head = (f"| {r['preset']} | {r['batch_size']} | {r['dialogue_length']} | "
                f"{r['devices']} | {r['dtype']} | {r['seeds']} | ")
        if "refused" in r:
            lines.append(head + f"refused: {r['refused']} |" + " |" * 9)
            continue
        lines.append(head + compile_cell(r.get("first_step_s", r["cold_compile_s"]),
                                          r["cold_compile_s"])
                     + f" | {r['warm_start_s']:.1f} | "
                     f"{r['distinct_shapes_per_epoch']} | "
                     f"{r['train_epoch_s']:.2f} | {r['eval_pass_s']:.2f} | "
                     f"{r['train_utterance_seeds_per_s']:.0f} | "
                     f"{r['node_padding_efficiency']:.2f} | "
                     f"{r['peak_rss_gb']:.2f} | {100 * r['fraction_of_peak']:.1f} | "
                     f"{r['roofline_train_epoch_s'] + r['roofline_eval_pass_s']:.2f} |")
    lines += diverged_note(rows)
    table = "\n".join(lines) + "\n"
    print(table)
    result = {"benchmark": "throughput", "environment": env, "results": rows}
    print("wrote", write_results(args.name, result, table, args.json))
    return result


if __name__ == "__main__":
    sys.exit(run_main(lambda argv: (main(argv), 0)[1]))
