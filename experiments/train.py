"""Train AMB-DSGDN.

    python -m experiments.train                                  # bundled synthetic data
    python -m experiments.train --preset iemocap --data iemocap_multimodal_features.pkl
    python -m experiments.train --preset meld --data meld_multimodal_features.pkl --selection test
    python -m experiments.train --preset synthetic --set hidden_dim=32 --epochs 3 --out runs/x
    python -m experiments.train --preset synthetic --ablation no_differential --seeds 1,2,3

Presets carry the release's hyper-parameters (iemocap, meld); `synthetic` is the small default
job; `--set KEY=VALUE` overrides any `TrainConfig` field. Errors print one line and exit 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

import numpy as np

from ambjax.data import DataFormatError
from ambjax.train import (ABLATIONS, PRESETS, CheckpointError, ConfigError, RunFolderError,
                          make_config, parse_overrides, train_and_evaluate)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m experiments.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="synthetic", help=f"one of {sorted(PRESETS)}")
    p.add_argument("--data", help="feature pickle (default: the bundled synthetic data)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field (repeatable)")
    p.add_argument("--epochs", type=int, help="shortcut for --set epochs=N")
    p.add_argument("--selection", choices=("valid", "test"),
                   help="model selection split (test = the release's protocol)")
    p.add_argument("--ablation", default="full", help=f"one of {sorted(ABLATIONS)}")
    p.add_argument("--seeds", help="comma-separated seeds: one run each, mean and std reported")
    p.add_argument("--out", help="run folder (default runs/<preset>[-<ablation>])")
    p.add_argument("--devices", type=int, help="local devices to use (default: all)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--overwrite", action="store_true", help="replace the run in --out")
    return p


def run(args: argparse.Namespace) -> dict:
    overrides = parse_overrides(args.set)
    if args.epochs is not None:
        overrides["epochs"] = str(args.epochs)
    if args.selection:
        overrides["selection"] = args.selection
    if args.data:
        if not os.path.isfile(args.data):
            raise DataFormatError(f"{args.data}: no such file")
        overrides["data"] = args.data
    config = make_config(args.preset, overrides, args.ablation)
    out = args.out or os.path.join(
        "runs", args.preset + ("" if args.ablation == "full" else f"-{args.ablation}"))
    if not args.seeds:
        return train_and_evaluate(config, out, resume=args.resume, overwrite=args.overwrite,
                                  n_devices=args.devices)
    seeds = [int(s) for s in args.seeds.split(",")]
    reports = {}
    for seed in seeds:
        print(f"== seed {seed} ==")
        reports[seed] = train_and_evaluate(dataclasses.replace(config, seed=seed),
                                           os.path.join(out, f"seed{seed}"), resume=args.resume,
                                           overwrite=args.overwrite, n_devices=args.devices)
    summary = {"seeds": seeds, "selection": config.selection}
    for split in ("valid", "test"):
        for metric in ("accuracy", "weighted_f1", "macro_f1"):
            values = np.array([reports[s][split][metric] for s in seeds])
            summary[f"{split}_{metric}"] = {"mean": float(values.mean()),
                                            "std": float(values.std(ddof=1)) if len(seeds) > 1 else 0.0,
                                            "values": values.tolist()}
    with open(os.path.join(out, "seeds_report.json"), "w") as f:
        json.dump(summary, f, indent=1)
    t = summary["test_accuracy"], summary["test_weighted_f1"]
    print(f"{len(seeds)} seeds: test acc {100 * t[0]['mean']:.2f} ± {100 * t[0]['std']:.2f}, "
          f"wF1 {100 * t[1]['mean']:.2f} ± {100 * t[1]['std']:.2f}")
    return summary


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except (ConfigError, DataFormatError, RunFolderError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
