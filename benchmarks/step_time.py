"""A/B timing of train epochs: the same preset under several settings, in one run.

    python -m benchmarks.step_time --preset iemocap --variant model.mask_rng=threefry \\
        --variant model.mask_rng=rbg [--epochs 3] [--rounds 2]

Each variant (a comma-separated list of `--set` overrides; "" is the preset as it is) is
compiled ahead of time, then every round times one train epoch and one test pass of every
variant in turn (alternating, so that a disturbance of the machine hits all of them), with the
per-step times of the epoch (each step waited for). Reported: the median epoch, test pass and
step per variant, and each variant's epoch against the first one's. XLA settings that are
environment variables (XLA_FLAGS) apply to the whole run: compare those with two runs.
Results: benchmarks/results/<name>-<device>-<date>.{json,md}.
"""

from __future__ import annotations

import statistics
import sys
import time

import jax
import jax.numpy as jnp

from ambjax.cli import ArgumentParser, run_main
from ambjax.train import Trainer, load_dataset
from benchmarks.common import cpu_name, environment, write_results
from experiments.configs import make_config


def _epoch(trainer: Trainer, epoch: int) -> dict:
    active = jnp.asarray(True)
    steps = []
    start = time.perf_counter()
    for batch in trainer.batcher.seed_batches("train", trainer.seeds, epoch=epoch):
        t = time.perf_counter()
        trainer.state, metrics = trainer.train_step(trainer.state, batch, active)
        jax.block_until_ready(metrics)
        steps.append(time.perf_counter() - t)
    train_s = time.perf_counter() - start
    start = time.perf_counter()
    jax.block_until_ready([trainer.eval_step(trainer.state.params, b)
                           for b in trainer.batcher.batches("test")])
    return {"train_s": train_s, "test_s": time.perf_counter() - start, "steps_s": steps}


def main(argv: list[str]) -> int:
    p = ArgumentParser(prog="python -m benchmarks.step_time", description=__doc__)
    p.add_argument("--preset", default="iemocap")
    p.add_argument("--variant", action="append", default=[],
                   help="comma-separated KEY=VALUE overrides (repeatable; '' = as is)")
    p.add_argument("--epochs", type=int, default=2, help="epochs per variant and round")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--name", default="step_time")
    args = p.parse_args(argv)
    variants = args.variant or [""]
    trainers, compiled = {}, {}
    for v in variants:
        config = make_config(args.preset, [x for x in v.split(",") if x])
        trainer = Trainer.from_config(config, load_dataset(config.data), n_devices=1)
        start = time.perf_counter()
        trainer.compile()
        compiled[v] = time.perf_counter() - start
        print(f"[{v or 'as is'}] compiled in {compiled[v]:.1f}s", flush=True)
        _epoch(trainer, 0)                                      # warm-up
        trainers[v] = trainer
    runs = {v: [] for v in variants}
    for r in range(args.rounds):
        for v in variants:
            for e in range(args.epochs):
                runs[v].append(_epoch(trainers[v], 1 + r * args.epochs + e))
                print(f"[{v or 'as is'}] round {r + 1} epoch {e + 1}: train "
                      f"{runs[v][-1]['train_s']:.2f}s test {runs[v][-1]['test_s']:.2f}s",
                      flush=True)
    rows = [{"variant": v or "as is", "compile_s": compiled[v],
             "train_epoch_s": statistics.median(x["train_s"] for x in runs[v]),
             "test_pass_s": statistics.median(x["test_s"] for x in runs[v]),
             "step_s": statistics.median(s for x in runs[v] for s in x["steps_s"]),
             "epochs": runs[v]} for v in variants]
    env = environment()
    lines = [f"{args.preset}, {cpu_name(env)}, "
             f"{env['cpu_count']} cores, jax {env['jax']}, {env['date']}; medians of "
             f"{args.rounds} x {args.epochs} epochs, variants alternating", "",
             "| variant | train epoch (s) | test pass (s) | step (s) | epoch vs first |",
             "|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['variant']} | {row['train_epoch_s']:.2f} | "
                     f"{row['test_pass_s']:.2f} | {row['step_s']:.3f} | "
                     f"{rows[0]['train_epoch_s'] / row['train_epoch_s']:.2f}x |")
    text = "\n".join(lines) + "\n"
    print(text)
    print("wrote", write_results(args.name, {"benchmark": "step_time", "environment": env,
                                             "preset": args.preset, "results": rows}, text))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
