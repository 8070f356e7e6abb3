"""What each of the paper's two mechanisms buys: the ablation studies behind the README's
"What each mechanism buys", in one command.

    python -m benchmarks.mechanisms [--studies all|a,b] [--seeds 1,2,3,4,5] \\
        [--features DIR] [--out runs/mechanisms]

Each study is one `experiments.ablate` run (the full model and its ablations, the seeds
trained together, paired differences with 95% intervals). The real-data studies need the
MiniLM feature pickles of `python -m experiments.features` in DIR (iemocap.pkl, meld.pkl);
without them they are skipped with a message. Each study's ablation.json / .md / .png is
copied to benchmarks/results/mechanisms-<study>-<device>-<date>.*, and a summary of the
differences to benchmarks/results/mechanisms-<device>-<date>.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time

from benchmarks.common import cpu_name, environment, result_stem, write_results
from experiments.ablate import main as ablate_main

ROBUST_128 = ["--recipe", "robust", "--set", "model.hidden_dim=128"]
STUDIES: dict[str, tuple[str, list[str]]] = {
    # name: (what it asks, ablate arguments; {features} is the --features folder)
    "probe_common_mode": (
        "differential attention on its probe", ["--preset", "probe_common_mode",
                                                "--ablations", "no_differential"]),
    "probe_common_mode-depth_lambda": (
        "... with DIFF-Transformer's depth-dependent lambda_init",
        ["--preset", "probe_common_mode", "--ablations", "no_differential",
         "--set", "model.depth_dependent_lambda=true"]),
    "probe_common_mode-silent": (
        "... half of the utterances without a text signal (labels from context only)",
        ["--preset", "probe_common_mode", "--ablations", "no_differential",
         "--set", "data.synthetic=common_mode_silent"]),
    "probe_common_mode-one_head": (
        "... one attention map pair per layer (graph_heads 1: no second head can take the "
        "difference's place)", ["--preset", "probe_common_mode", "--ablations",
                                "no_differential", "--set", "model.graph_heads=1"]),
    "probe_common_mode-silent-one_head": (
        "... half of the utterances without a text signal, graph_heads 1",
        ["--preset", "probe_common_mode", "--ablations", "no_differential",
         "--set", "data.synthetic=common_mode_silent", "--set", "model.graph_heads=1"]),
    "probe_common_mode-anchor": (
        "... relevance the scores can see: marked anchors alone show the dialogue's label "
        "(30 epochs: at 12 neither variant learns it)",
        ["--preset", "probe_common_mode", "--ablations", "no_differential",
         "--set", "data.synthetic=common_mode_anchor", "--set", "schedule.epochs=30"]),
    "probe_common_mode-anchor-one_head": (
        "... anchors, graph_heads 1",
        ["--preset", "probe_common_mode", "--ablations", "no_differential",
         "--set", "data.synthetic=common_mode_anchor", "--set", "schedule.epochs=30",
         "--set", "model.graph_heads=1"]),
    "probe_imbalance": (
        "modality balancing on its probe", ["--preset", "probe_imbalance",
                                            "--ablations", "no_balancing,text_only"]),
    "probe_imbalance-no_unimodal_loss": (
        "... without the unimodal loss terms", ["--preset", "probe_imbalance", "--ablations",
                                                "no_balancing", "--set",
                                                "optim.unimodal_weight=0"]),
    "probe_imbalance-shortcut": (
        "... text also splits every class on the train split only (a shortcut absent from "
        "test)", ["--preset", "probe_imbalance", "--ablations", "no_balancing,text_only",
                  "--set", "data.synthetic=imbalance_shortcut"]),
    "probe_imbalance-shortcut-no_unimodal_loss": (
        "... the shortcut, without the unimodal loss terms",
        ["--preset", "probe_imbalance", "--ablations", "no_balancing", "--set",
         "data.synthetic=imbalance_shortcut", "--set", "optim.unimodal_weight=0"]),
    "probe_imbalance-shortcut-no_unimodal_loss-p_exe1": (
        "... the shortcut, without the unimodal terms, balancing on every step (p_exe 1)",
        ["--preset", "probe_imbalance", "--ablations", "no_balancing", "--set",
         "data.synthetic=imbalance_shortcut", "--set", "optim.unimodal_weight=0", "--set",
         "model.p_exe=1.0"]),
    "probe_imbalance-warmup0": (
        "... balancing from the first epoch", ["--preset", "probe_imbalance", "--ablations",
                                               "no_balancing", "--set",
                                               "schedule.balance_warmup=0"]),
    "synthetic": (
        "both on the bundled synthetic data", ["--preset", "synthetic", "--ablations",
                                               "no_differential,no_balancing"]),
    "iemocap_minilm": (
        "real IEMOCAP dialogues, MiniLM text (one real modality)",
        ["--preset", "iemocap", "--data", "{features}/iemocap.pkl", *ROBUST_128,
         "--ablations", "no_differential,no_intra,no_inter"]),
    "meld_minilm": (
        "real MELD dialogues, MiniLM text (one real modality)",
        ["--preset", "meld", "--data", "{features}/meld.pkl", *ROBUST_128,
         "--ablations", "no_differential,no_intra,no_inter"]),
}


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.mechanisms", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--studies", default="all", help=f"'all' or names from {list(STUDIES)}")
    p.add_argument("--seeds", default="1,2,3,4,5")
    p.add_argument("--features", default="features", help="folder of the MiniLM pickles")
    p.add_argument("--out", default=os.path.join("runs", "mechanisms"))
    p.add_argument("--tag", default="", help="suffix of the result files (e.g. seeds6-10)")
    args = p.parse_args(argv)
    names = list(STUDIES) if args.studies == "all" else args.studies.split(",")
    unknown = [n for n in names if n not in STUDIES]
    if unknown:
        p.error(f"unknown studies {unknown}; choose from {list(STUDIES)}")
    env = environment()
    summary, lines = {}, []
    for name in names:
        question, template = STUDIES[name]
        ablate_args = [a.replace("{features}", args.features) for a in template]
        if "--data" in ablate_args:
            data = ablate_args[ablate_args.index("--data") + 1]
            if not os.path.isfile(data):
                print(f"skipping {name}: {data} not found (python -m experiments.features)")
                continue
        out = os.path.join(args.out, name + (f"-{args.tag}" if args.tag else ""))
        print(f"=== {name}: {question}", flush=True)
        start = time.perf_counter()
        rc = ablate_main(ablate_args + ["--seeds", args.seeds, "--out", out, "--overwrite"])
        if rc:
            return rc
        minutes = (time.perf_counter() - start) / 60
        stem = result_stem(f"mechanisms-{name}{'-' + args.tag if args.tag else ''}", env)
        for ext in ("json", "md", "png"):
            src = os.path.join(out, f"ablation.{ext}")
            if os.path.isfile(src):
                shutil.copyfile(src, f"{stem}.{ext}")
        rows = json.load(open(os.path.join(out, "ablation.json")))["rows"]
        summary[name] = {"question": question, "minutes": minutes, "command": ablate_args,
                         "rows": rows}
        full = rows[0]["weighted_f1"]
        for r in rows[1:]:
            d = r["delta"]
            lines.append(f"| {name} | {r['variant']} | {full['mean']:.2f} ± {full['std']:.2f} "
                         f"| {d['mean']:+.2f} [{d['low']:+.2f}, {d['high']:+.2f}]"
                         f"{' *' if d['significant'] else ''} |")
    table = "\n".join([
        f"# What each mechanism buys ({cpu_name(env)}, jax {env['jax']}, {env['date']}, "
        f"seeds {args.seeds})", "",
        "Test weighted F1, percent: the full model (mean ± std over seeds) and each ablation's "
        "paired difference to it with its 95% t interval (* excludes 0).", "",
        "| study | ablation | full | Δ vs full [95% CI] |", "|---|---|---|---|", *lines]) + "\n"
    print(table)
    print("wrote", write_results("mechanisms" + (f"-{args.tag}" if args.tag else ""),
                                 {"benchmark": "mechanisms", "environment": env,
                                  "seeds": args.seeds, "studies": summary}, table))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
