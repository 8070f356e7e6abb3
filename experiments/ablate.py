"""Ablation tables: the full model and each ablation, each with its seeds trained as one program.

    python -m experiments.ablate --preset synthetic --out runs/ablation
    python -m experiments.ablate --preset meld --data F.pkl --seeds 1,2,3 \\
        --ablations no_differential,no_balancing --recipe robust --out runs/abl-meld

Variants: `full` and `--ablations` (default `all`: no_differential, no_balancing, no_intra,
no_inter, text_only, audio_only, visual_only). Each trains with `experiments.train`'s machinery
(`--seeds` vmapped) into OUT/<variant>/seed<k>. OUT gets ablation.json, ablation.md (rows:
variant; columns: test accuracy, weighted F1 and macro F1 as mean ± std over seeds, each
modality's test weighted F1, and the paired weighted-F1 difference to the full model over the
same seeds with its 95% confidence interval (`experiments.paired`), marked * when the interval
excludes zero) and, with matplotlib, ablation.png (the differences with their intervals).
Default: 5 seeds. `--resume` continues the variants already started; errors print one line and
exit 2.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys

from ambjax.cli import ArgumentParser, run_main
from ambjax.errors import AmbjaxError
from ambjax.train.cache import enable_compile_cache
from ambjax.train import ConfigError, prepare_run, train_and_evaluate
from ambjax.files import atomic_write, save_figure, write_json
from ambjax.train.run_folder import LOCK_NAME, RunLock
from experiments.configs import ABLATIONS, PRESETS, RECIPES, make_config
from experiments.paired import paired_interval
from experiments.train import parse_seeds

VARIANTS = tuple(a for a in ABLATIONS if a != "full")


def parse_ablations(text: str) -> list[str]:
    names = list(VARIANTS) if text == "all" else [t.strip() for t in text.split(",") if t.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown or not names:
        raise ConfigError(f"--ablations: unknown {unknown or text!r}; choose 'all' or names from "
                          f"{list(VARIANTS)}")
    return ["full"] + [n for n in names if n != "full"]


def percent_interval(d: dict) -> dict:
    """A `paired_interval` in percent points, without the per-seed differences."""
    return {**{k: 100 * d[k] for k in ("mean", "low", "high")}, "n": d["n"],
            "significant": d["significant"]}


def table_rows(results: dict) -> list[dict]:
    """One row per variant: mean/std of test accuracy, weighted and macro F1, per-modality
    weighted F1, and the paired test weighted-F1 difference to the full model over the same
    seeds with its 95% interval ("delta": `paired_interval`; percent)."""
    full = results["full"]["test"]["weighted_f1"]["values"]
    rows = []
    for variant, summary in results.items():
        test = summary["test"]
        rows.append({
            "variant": variant,
            **{m: {"mean": 100 * test[m]["mean"], "std": 100 * test[m]["std"]}
               for m in ("accuracy", "weighted_f1", "macro_f1")},
            "modality_f1": {k.split("/", 1)[1]: 100 * v["mean"] for k, v in test.items()
                            if k.startswith("modality_f1/")},
            "delta": percent_interval(paired_interval(test["weighted_f1"]["values"], full)),
        })
    return rows


def markdown(rows: list[dict], header: str) -> str:
    mods = sorted({m for r in rows for m in r["modality_f1"]})
    lines = [header, "",
             "| variant | test acc | test wF1 | test macro F1 | "
             + " | ".join(f"{m} wF1" for m in mods) + " | Δ wF1 vs full [95% CI] |",
             "|---|---|---|---|" + "---|" * len(mods) + "---|"]
    full = next(r for r in rows if r["variant"] == "full")["delta"]["n"]
    for r in rows:
        cells = [f"{r[m]['mean']:.2f} ± {r[m]['std']:.2f}"
                 for m in ("accuracy", "weighted_f1", "macro_f1")]
        mod = [f"{r['modality_f1'][m]:.2f}" if m in r["modality_f1"] else "-" for m in mods]
        d = r["delta"]
        delta = ("-" if r["variant"] == "full" else
                 f"{d['mean']:+.2f} [{d['low']:+.2f}, {d['high']:+.2f}]"
                 + (" *" if d["significant"] else ""))
        lines.append(f"| {r['variant']} | " + " | ".join(cells + mod) + f" | {delta} |")
    lines += ["", f"Δ: the paired difference to the full model over the same {full} seeds, "
              "mean and 95% t interval; * marks an interval that excludes zero."]
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: str) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    rows = [r for r in rows if r["variant"] != "full"]
    fig, ax = plt.subplots(figsize=(1.2 * len(rows) + 2, 3.5))
    x = list(range(len(rows)))
    mean = [r["delta"]["mean"] for r in rows]
    err = [[m - r["delta"]["low"] for m, r in zip(mean, rows)],
           [r["delta"]["high"] - m for m, r in zip(mean, rows)]]
    colors = ["#c44e52" if r["delta"]["significant"] else "#8c8c8c" for r in rows]
    ax.bar(x, mean, yerr=err, capsize=4, color=colors)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(x, [r["variant"] for r in rows], rotation=30, ha="right")
    ax.set_ylabel("Δ test weighted F1 vs full (points)")
    ax.set_title(f"paired Δ over {rows[0]['delta']['n'] if rows else 0} seeds, 95% CI\n"
                 "(red: the interval excludes 0)", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
    plt.close(fig)
    return True


TABLE_FILES = ("ablation.json", "ablation.md", "ablation.png")


def check_folder(out: str) -> None:
    """Refuse an --out that holds anything but an ablation's own files and variant folders
    (what is in a variant folder is checked by `prepare_run`)."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise AmbjaxError(f"--out {out} is a file, not a folder")
    if not os.path.isdir(out):
        return
    ours = set(TABLE_FILES) | set(ABLATIONS) | {LOCK_NAME}
    foreign = sorted(n for n in os.listdir(out) if n not in ours and not n.endswith(".tmp"))
    if foreign:
        raise AmbjaxError(f"{out} holds files that are not part of an ablation "
                          f"({', '.join(foreign[:5])}); choose another --out")


@contextlib.contextmanager
def naming(variant: str):
    """An `AmbjaxError` raised inside names `variant` at the start of its one line."""
    try:
        yield
    except AmbjaxError as e:
        raise type(e)(f"variant {variant}: {e}") from None


def ablate(argv: list[str]) -> int:
    p = ArgumentParser(prog="python -m experiments.ablate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="synthetic", help=f"one of {list(PRESETS)}")
    p.add_argument("--data", help="feature pickle (default: the bundled synthetic data)")
    p.add_argument("--seeds", default="1,2,3,4,5",
                   help="comma-separated seeds (vmapped; default 5, for the intervals)")
    p.add_argument("--ablations", default="all", help=f"'all' or names from {list(VARIANTS)}")
    p.add_argument("--recipe", default="release", help=f"one of {list(RECIPES)}")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--epochs", help="shortcut for --set schedule.epochs=N")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--devices", type=int, help="local devices to use (default: all)")
    p.add_argument("--resume", action="store_true", help="continue started variants")
    p.add_argument("--overwrite", action="store_true", help="replace existing variants")
    p.add_argument("--allow-changes", action="store_true",
                   help="with --resume: continue although settings changed")
    p.add_argument("--no-compile-cache", action="store_true")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    args = p.parse_args(argv)
    enable_compile_cache(not args.no_compile_cache)
    seeds = parse_seeds(args.seeds)
    overrides = list(args.set)
    if args.epochs is not None:
        overrides.append(f"schedule.epochs={args.epochs}")
    if args.data:
        if not os.path.isfile(args.data):
            raise AmbjaxError(f"--data {args.data}: no such file")
        overrides.append(f"data.path={args.data}")
    variants = parse_ablations(args.ablations)
    configs = {v: make_config(args.preset, overrides, v, args.recipe) for v in variants}
    options = dict(seeds=seeds, resume=args.resume, overwrite=args.overwrite,
                   allow_changes=args.allow_changes)
    check_folder(args.out)
    for variant, config in configs.items():      # every variant checked before one trains
        with naming(variant):
            prepare_run(config, os.path.join(args.out, variant), **options)
    lock = RunLock(args.out)                     # one ablation command per folder at a time
    try:
        results = {}
        for variant, config in configs.items():
            print(f"== {variant} ==", flush=True)
            with naming(variant):                # e.g. a variant that diverged
                out = train_and_evaluate(config, os.path.join(args.out, variant),
                                         n_devices=args.devices, **options)
            results[variant] = out["summary"]
    except BaseException:
        lock.release(cleanup=True)
        raise
    lock.release()
    rows = table_rows(results)
    header = (f"# Ablations: preset {args.preset}, "
              f"{'data ' + args.data if args.data else 'bundled synthetic data'}, recipe "
              f"{args.recipe}, seeds {', '.join(map(str, seeds))}\n\nPercent, mean ± sample std "
              "over seeds; model selection on validation; Δ paired over seeds with its 95% interval.")
    os.makedirs(args.out, exist_ok=True)
    write_json(os.path.join(args.out, "ablation.json"),
               {"preset": args.preset, "data": args.data, "recipe": args.recipe,
                "seeds": seeds, "rows": rows, "summaries": results})
    table = markdown(rows, header)
    atomic_write(os.path.join(args.out, "ablation.md"), table)
    plotted = plot(rows, os.path.join(args.out, "ablation.png"))
    print(table)
    print(f"wrote {os.path.join(args.out, 'ablation.md')}"
          + (" and ablation.png" if plotted else ""))
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_main(ablate, argv)


if __name__ == "__main__":
    sys.exit(main())
