"""Train AMB-DSGDN.

    python -m experiments.train                                  # bundled synthetic data
    python -m experiments.train --preset iemocap --data iemocap_multimodal_features.pkl
    python -m experiments.train --preset meld --data meld_multimodal_features.pkl --selection test
    python -m experiments.train --preset synthetic --set model.hidden_dim=32 --epochs 3 --out runs/x
    python -m experiments.train --preset synthetic --ablation no_differential --seeds 1,2,3
    python -m experiments.train --preset meld --data my_features.pkl --recipe robust
    python -m experiments.train --coordinator localhost:12355 --num-processes 2 --process-id 0

Presets are files under experiments/configs/ (iemocap, meld: the release's hyper-parameters;
synthetic: the small default job; tiny: a smoke run). `--set KEY=VALUE` overrides any field of
the config tree by its dotted key (data.*, model.*, optim.*, schedule.*, run.*), e.g.
`--set optim.lr=1e-4`. Errors print one line and exit 2 (AMBJAX_DEBUG=1 shows the traceback).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from ambjax.cli import ArgumentParser, run_main, stop_process
from ambjax.train.cache import enable_compile_cache
from ambjax.train import ConfigError, distributed, train_and_evaluate
from experiments.configs import ABLATIONS, PRESETS, RECIPES, make_config


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m experiments.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="synthetic", help=f"one of {list(PRESETS)}")
    p.add_argument("--data", help="feature pickle (default: the bundled synthetic data)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field by its dotted key (repeatable)")
    p.add_argument("--epochs", help="shortcut for --set schedule.epochs=N")
    p.add_argument("--selection", choices=("valid", "test"),
                   help="model selection split (test = the release's protocol)")
    p.add_argument("--ablation", default="full", help=f"one of {list(ABLATIONS)}")
    p.add_argument("--recipe", default="release",
                   help=f"one of {list(RECIPES)}: release = the authors' optimiser on raw "
                        "features; robust = standardised features, AdamW 1e-3 with warm-up and "
                        "cosine decay, constant modalities left out (for your own features)")
    p.add_argument("--seeds", help="comma-separated seeds trained together as one vmapped "
                                   "program; a run folder each (OUT/seed<k>) and "
                                   "OUT/seeds_report.{json,md} with mean and std")
    p.add_argument("--out", help="run folder (default runs/<preset>[-<ablation>])")
    p.add_argument("--devices", help="local devices to use (default: all)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the run in --out (a folder holding anything but a run is "
                        "refused)")
    p.add_argument("--allow-changes", action="store_true",
                   help="with --resume: continue although optimiser, data or schedule "
                        "settings differ from the run's config.json (the epoch count may "
                        "always change)")
    p.add_argument("--coordinator", metavar="HOST:PORT",
                   help="multi-process run: process 0's address (or JAX_COORDINATOR_ADDRESS)")
    p.add_argument("--num-processes", type=int, help="multi-process run: number of processes")
    p.add_argument("--process-id", type=int, help="multi-process run: this process (0..N-1)")
    p.add_argument("--process-timeout", type=int, default=120, metavar="S",
                   help="multi-process run: seconds to wait for the other processes (to join, "
                        "or when one stops answering) before stopping with an error")
    p.add_argument("--no-compile-cache", action="store_true",
                   help="do not use the persistent XLA compilation cache (default: on, in "
                        "~/.cache/ambjax/xla; AMBJAX_COMPILE_CACHE=0 also turns it off)")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def _int(text: str, flag: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"{flag} expects an integer, got {text!r}") from None


def parse_seeds(text: str) -> list[int]:
    """"1,2,3" -> [1, 2, 3]; distinct integers."""
    seeds = [_int(s.strip(), "--seeds") for s in text.split(",") if s.strip()]
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds expects distinct comma-separated integers, got {text!r}")
    return seeds


def run(args: argparse.Namespace) -> dict:
    enable_compile_cache(not args.no_compile_cache)
    overrides = list(args.set)
    if args.epochs is not None:
        overrides.append(f"schedule.epochs={args.epochs}")
    if args.selection:
        overrides.append(f"run.selection={args.selection}")
    if args.data:
        if not os.path.isfile(args.data):
            raise ConfigError(f"--data {args.data}: no such file")
        overrides.append(f"data.path={args.data}")
    config = make_config(args.preset, overrides, args.ablation, args.recipe)
    devices = None if args.devices is None else _int(args.devices, "--devices")
    seeds = parse_seeds(args.seeds) if args.seeds else None
    # flags and settings are checked above, before joining the other processes
    distributed.initialize(args.coordinator, args.num_processes, args.process_id,
                           timeout_s=args.process_timeout, on_lost=stop_process)
    if not distributed.is_primary():
        logging.getLogger("ambjax").setLevel(logging.ERROR)   # process 0 reports progress
    out = args.out or os.path.join(
        "runs", args.preset + ("" if args.ablation == "full" else f"-{args.ablation}"))
    result = train_and_evaluate(config, out, seeds=seeds, resume=args.resume,
                                overwrite=args.overwrite, allow_changes=args.allow_changes,
                                n_devices=devices)
    distributed.finish()
    return result


def main(argv: list[str] | None = None) -> int:
    def command(args: list[str]) -> int:
        run(build_parser().parse_args(args))
        return 0
    return run_main(command, argv)


if __name__ == "__main__":
    sys.exit(main())
