"""Evaluate a saved checkpoint alone.

    python -m experiments.evaluate --run runs/synthetic [--data FILE.pkl] [--step N]

Prints test (and valid) accuracy, weighted/macro F1 and per-class F1 as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys

from ambjax.data import DataFormatError
from ambjax.train import CheckpointError, ConfigError
from ambjax.train.loop import evaluate_checkpoint


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.evaluate")
    p.add_argument("--run", required=True, help="run folder written by experiments.train")
    p.add_argument("--data", help="evaluate on this feature file instead")
    p.add_argument("--step", type=int, help="checkpoint epoch (default: best)")
    args = p.parse_args(argv)
    try:
        result = evaluate_checkpoint(args.run, data=args.data, step=args.step)
    except (CheckpointError, DataFormatError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    keys = ("accuracy", "weighted_f1", "macro_f1", "per_class_f1")
    print(json.dumps({"checkpoint_epoch": result["checkpoint_epoch"],
                      **{s: {k: result[s][k] for k in keys} for s in ("valid", "test")}}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
