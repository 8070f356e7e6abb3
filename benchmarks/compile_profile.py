"""Where a train program's compile time goes, per setting, each in a fresh process.

    python -m benchmarks.compile_profile --preset iemocap --variant "" \\
        --variant model.graph_heads=1 [--name compile_profile]

For each variant (comma-separated `--set` overrides; "" is the preset as it is) a new process
with no compilation cache builds the run, takes the largest train bucket of its first epoch
and compiles the train step for it (its two programs, the bucket's gradients and the update
that every bucket shares: `ambjax.train.steps.TrainStep`; times, kernels and fusions summed
over both), and reports: tracing and lowering to StableHLO (Python), XLA's HLO passes, XLA's code
generation (LLVM), the number of kernels XLA generated code for and their summed LLVM time,
the optimised program's fusions, the process's CPU seconds for the whole compile, and the step
time of the program (median of 5 steps after one). XLA's own times are read from its log
(`TF_CPP_VMODULE` lines of the CPU compiler, jax 0.10's XLA); where the backend or version
logs nothing they are left out.
Results: benchmarks/results/<name>-<device>-<date>.{json,md}.
"""

from __future__ import annotations

import json
import os
import re
import resource
import statistics
import subprocess
import sys
import time

from ambjax.cli import ArgumentParser, run_main
from ambjax.errors import AmbjaxError
from benchmarks.common import cpu_name, environment, train_batches_by_shape, write_results

_UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6}
_TIME = r"time: ([\d.]+) (s|ms|us) "
_XLA_LOG = {"TF_CPP_MIN_LOG_LEVEL": "0", "TF_CPP_VMODULE": "cpu_compiler=1,ir_compiler=1"}


def _seconds(match) -> float:
    return float(match.group(1)) * _UNITS[match.group(2)]


def xla_times(log: str) -> dict:
    """XLA's HLO-pass and code-generation seconds for the train step's programs (`jit_mapped`,
    compiled one after the other), and the kernels it generated code for (count, summed LLVM
    seconds), summed over the programs, from the CPU compiler's log; {} when the log has none
    of it."""
    passes = list(re.finditer(r"Running HLO passes on \[jit_mapped\] for CPU " + _TIME, log))
    codegen = list(re.finditer(r"Compiling \[jit_mapped\] for CPU using JIT " + _TIME, log))
    if not passes or len(passes) != len(codegen):
        return {}
    # a program's kernels are logged between its pass timing and its code-generation timing
    kernels = [_seconds(m) for p, c in zip(passes, codegen)
               for m in re.finditer(r"Compiled LLVM module: \S+ " + _TIME, log[p.end():c.start()])]
    return {"hlo_passes_s": sum(map(_seconds, passes)),
            "codegen_s": sum(map(_seconds, codegen)),
            "kernels": len(kernels), "kernels_llvm_s": sum(kernels)}


def child(preset: str, variant: str) -> dict:
    """In a fresh process: compile and time the largest train program of `preset` with the
    overrides `variant`; returns the measured row."""
    import jax
    import jax.numpy as jnp
    from ambjax.train import Trainer, load_dataset, model_state
    from ambjax.train.steps import TrainStep
    from experiments.configs import make_config
    config = make_config(preset, [x for x in variant.split(",") if x])
    trainer = Trainer.from_config(config, load_dataset(config.data), n_devices=1)
    by_shape = train_batches_by_shape(trainer, 0)
    batch = by_shape[max(by_shape)][0]
    active = jnp.asarray(True)
    state = trainer.abstract_state
    train = trainer.train_step          # its gradients (per batch shape) and its update
    cpu = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    lowered = [train.gradients.lower(model_state(state), batch, active),
               train.update.lower(state, state.params)]
    lowered_at = time.perf_counter()
    gradients, update = (low.compile() for low in lowered)
    done = time.perf_counter()
    after = resource.getrusage(resource.RUSAGE_SELF)
    compiled = TrainStep(gradients, update)
    state = trainer.state
    state, metrics = compiled(state, batch, active)
    jax.block_until_ready(metrics)
    steps = []
    for _ in range(5):
        t = time.perf_counter()
        state, metrics = compiled(state, batch, active)
        jax.block_until_ready(metrics)
        steps.append(time.perf_counter() - t)
    return {"variant": variant or "as is", "nodes": int(batch.nodes.mask.shape[-1]),
            "trace_lower_s": lowered_at - start, "compile_s": done - lowered_at,
            "compile_cpu_s": (after.ru_utime + after.ru_stime) - (cpu.ru_utime + cpu.ru_stime),
            "fusions": sum(c.as_text().count(" fusion(") for c in (gradients, update)),
            "step_s": statistics.median(steps)}


def profile(preset: str, variant: str) -> dict:
    """`child` in a new process with XLA's compiler log on and no compilation cache."""
    env = {**os.environ, **_XLA_LOG, "JAX_ENABLE_COMPILATION_CACHE": "false",
           "AMBJAX_COMPILE_CACHE": "0"}
    code = ("import json, sys; from benchmarks.compile_profile import child; "
            f"print('RESULT ' + json.dumps(child({preset!r}, {variant!r})))")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    rows = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not rows:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise AmbjaxError(f"variant {variant or 'as is'!r} failed: {tail}")
    return {**json.loads(rows[-1][len("RESULT "):]), **xla_times(done.stderr)}


def table(preset: str, rows: list[dict], env: dict) -> str:
    def cell(row, key, fmt):
        return format(row[key], fmt) if key in row else "n/a"

    lines = [f"{preset}, largest train bucket of the first epoch, "
             f"{cpu_name(env)}, {env['cpu_count']} cores, "
             f"jax {env['jax']}, {env['date']}; "
             "one fresh process per variant, no compilation cache",
             "", "| variant | nodes | trace + lower (s) | XLA compile (s) | compile CPU (s) | "
             "HLO passes (s) | code generation (s) | kernels | their LLVM time (s) | "
             "fusions | step (s) |", "|" + "---|" * 11]
    for r in rows:
        lines.append(f"| `{r['variant']}` | {r['nodes']} | {r['trace_lower_s']:.2f} | "
                     f"{r['compile_s']:.2f} | {r['compile_cpu_s']:.1f} | "
                     f"{cell(r, 'hlo_passes_s', '.2f')} | {cell(r, 'codegen_s', '.2f')} | "
                     f"{cell(r, 'kernels', 'd')} | {cell(r, 'kernels_llvm_s', '.2f')} | "
                     f"{r['fusions']} | {r['step_s']:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    p = ArgumentParser(prog="python -m benchmarks.compile_profile", description=__doc__)
    p.add_argument("--preset", default="iemocap")
    p.add_argument("--variant", action="append", default=[],
                   help="comma-separated KEY=VALUE overrides (repeatable; '' = as is)")
    p.add_argument("--name", default="compile_profile")
    args = p.parse_args(argv)
    from experiments.configs import make_config
    for v in args.variant or [""]:               # a bad preset or key: one line, before any run
        make_config(args.preset, [x for x in v.split(",") if x])
    rows = []
    for v in args.variant or [""]:
        rows.append(profile(args.preset, v))
        print(f"[{v or 'as is'}] compile {rows[-1]['compile_s']:.2f}s, "
              f"{rows[-1].get('kernels', 'n/a')} kernels", flush=True)
    env = environment()
    text = table(args.preset, rows, env)
    print(text)
    write_results(args.name, {"benchmark": "compile_profile", "environment": env,
                              "preset": args.preset, "results": rows}, text)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, sys.argv[1:]))
