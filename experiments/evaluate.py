"""Evaluate a saved checkpoint alone.

    python -m experiments.evaluate --run runs/synthetic [--data FILE.pkl] [--step N]

Prints test (and valid) accuracy, weighted/macro F1 and per-class F1 as JSON. Errors print one
line and exit 2.
"""

from __future__ import annotations

import json
import sys

from ambjax.cli import ArgumentParser, run_main
from ambjax.train import evaluate_checkpoint


def evaluate(argv: list[str]) -> int:
    p = ArgumentParser(prog="python -m experiments.evaluate")
    p.add_argument("--run", required=True, help="run folder written by experiments.train")
    p.add_argument("--data", help="evaluate on this feature file instead")
    p.add_argument("--step", type=int, help="checkpoint epoch (default: best)")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    args = p.parse_args(argv)
    result = evaluate_checkpoint(args.run, data=args.data, step=args.step)
    keys = ("accuracy", "weighted_f1", "macro_f1", "per_class_f1")
    print(json.dumps({"checkpoint_epoch": result["checkpoint_epoch"],
                      **{s: {k: result[s][k] for k in keys} for s in ("valid", "test")}}, indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_main(evaluate, argv)


if __name__ == "__main__":
    sys.exit(main())
