"""XLA's CPU options against the train step: one fresh process per setting, in one run.

    python -m benchmarks.xla_flags [--preset iemocap] [--rounds 2]

For each setting of XLA_FLAGS below (XLA reads it once per process), `benchmarks.step_time`
runs in a new process without the compilation cache: compile time (every program of the
preset, and the train state), then train epochs and test passes. Reported per setting: compile,
the median train epoch, test pass and step. Results: benchmarks/results/xla_flags-<device>-
<date>.{json,md}. Compare rows of one run only; the noise between processes is several percent.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from benchmarks.common import cpu_name, environment, result_stem, write_results

SETTINGS = (
    "",
    "--xla_cpu_prefer_vector_width=512",
    "--xla_cpu_use_onednn=true",
    "--xla_cpu_enable_concurrency_optimized_scheduler=true",
    "--xla_cpu_use_xnnpack=false",
    "--xla_cpu_enable_fast_math=true",
    "--xla_cpu_experimental_ynn_fusion_type=individual_dot",
    "--xla_backend_optimization_level=1",
    "--xla_llvm_disable_expensive_passes=true",
)
SCRATCH = "xla_flags-one"


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.xla_flags", description=__doc__)
    p.add_argument("--preset", default="iemocap")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--name", default="xla_flags",
                   help="results/NAME-<device>-<date>.json and .md")
    args = p.parse_args(argv)
    env = environment()
    scratch = result_stem(SCRATCH, env)
    rows = []

    def remove_scratch():        # so that each run writes, and is read from, the same name
        for ext in (".json", ".md"):
            if os.path.exists(scratch + ext):
                os.remove(scratch + ext)

    for flags in SETTINGS:
        print(f"=== XLA_FLAGS={flags!r}", flush=True)
        remove_scratch()
        subprocess.run([sys.executable, "-m", "benchmarks.step_time", "--preset", args.preset,
                        "--epochs", "1", "--rounds", str(args.rounds), "--name", SCRATCH],
                       env={**os.environ, "XLA_FLAGS": flags, "AMBJAX_COMPILE_CACHE": "0"},
                       check=True)
        with open(scratch + ".json") as f:
            row = json.load(f)["results"][0]
        rows.append({"xla_flags": flags or "(none)", **{k: row[k] for k in (
            "compile_s", "train_epoch_s", "test_pass_s", "step_s")}})
    remove_scratch()
    lines = [f"{args.preset}, {cpu_name(env)}, {env['cpu_count']} cores, jax {env['jax']}, "
             f"{env['date']}; one process per setting, medians of {args.rounds} epochs", "",
             "| XLA_FLAGS | compile (s) | train epoch (s) | test pass (s) | step (s) |",
             "|---|---|---|---|---|"]
    lines += [f"| `{r['xla_flags']}` | {r['compile_s']:.1f} | {r['train_epoch_s']:.2f} | "
              f"{r['test_pass_s']:.2f} | {r['step_s']:.3f} |" for r in rows]
    table = "\n".join(lines) + "\n"
    print(table)
    print("wrote", write_results(args.name, {"benchmark": "xla_flags", "environment": env,
                                                 "preset": args.preset, "rows": rows}, table))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
