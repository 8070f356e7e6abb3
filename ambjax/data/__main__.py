"""`python -m ambjax.data describe PATH [--json]`: summarise a feature file.

Exit status 2 with one line on stderr naming the file and the problem on bad input.
"""

from __future__ import annotations

import json
import sys

from ambjax.cli import ArgumentParser, run_main
from ambjax.data.loader import TEXT_OPTIONS, load_features


def describe(argv: list[str]) -> int:
    parser = ArgumentParser(prog="python -m ambjax.data")
    sub = parser.add_subparsers(dest="command", required=True)
    describe = sub.add_parser("describe", help="print layout, modalities and split sizes")
    describe.add_argument("path")
    describe.add_argument("--json", action="store_true", help="print one JSON object")
    describe.add_argument("--text", choices=TEXT_OPTIONS, default="first")
    describe.add_argument("--debug", action="store_true", help="show tracebacks")
    args = parser.parse_args(argv)
    dataset = load_features(args.path, text=args.text)
    info = dataset.summary()
    if args.json:
        print(json.dumps({k: info[k] for k in ("layout", "num_classes", "modalities", "splits")}))
        return 0
    print(f"{args.path}: {dataset.name}, layout {info['layout']}, {info['num_classes']} classes "
          f"({', '.join(dataset.label_names)})")
    print("modalities: " + ", ".join(f"{m} {w}" for m, w in info["modalities"].items()))
    for split, s in info["splits"].items():
        print(f"{split:>5}: {s['dialogues']:5d} dialogues {s['utterances']:7d} utterances")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_main(describe, argv)


if __name__ == "__main__":
    sys.exit(main())
