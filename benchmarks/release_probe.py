"""The authors' release on a mechanism's probe: does its own mechanism help there?

    python -m benchmarks.release_probe --release DIR [--release-python PATH] [--seeds 1,2,3]
        [--synthetic imbalance|imbalance_shortcut|common_mode|common_mode_silent|
                     common_mode_anchor] [--p-exe 0.5] [--epochs 12] [--name release_probe]

Writes the probe's data (`ambjax.data.synthetic.PRESETS`, at the real IEMOCAP widths the
release's model expects) in the release's pickle layout, and runs the release's own train.py
from a temporary copy (the CPU patches of `benchmarks.versus_release`, and its fixed seed
2094 replaced by each seed) with the probe presets' settings (hidden 64, lr 1e-3, L2 1e-5,
dropout 0.2, `--epochs`, 12 by default), the full model against its ablation:

- the imbalance probes (`probe_imbalance`): balancing after 2 epochs at `--p-exe`, against
  `--disable_modality_dropout` (the release's loss keeps its unimodal terms, which it has no
  switch for);
- the common-mode probes (`probe_common_mode`, text only in ambjax): audio and visual are
  written as zeros (the release always reads three modalities; zeros carry nothing),
  balancing is off in both variants, and the ablation replaces the release's differential
  combination `attention_pos - lambda_full * attention_neg` by `attention_pos` in a second
  copy of its model.py (lambda pinned to 0, as ambjax's `no_differential`).

Reported per seed: the release's own score (the best test epoch, its protocol) and the last
epoch's test weighted F1; the paired difference with its 95% interval. Results:
benchmarks/results/<name>-<device>-<date>.{json,md}. Nothing of the release is copied into
this repository.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import sys
import tempfile

import numpy as np

from benchmarks.common import cpu_name, environment, write_results
from benchmarks.versus_release import release_copy, run_command
from experiments.paired import paired_interval

FLAGS = ["--lr=0.001", "--l2=0.00001", "--dropout=0.2", "--hidden_dim=64", "--n_head=8",
         "--windows=20", "--batch-size=16", "--class-weight",
         "--Dataset=IEMOCAP", "--q_base=0.3", "--lam=0.9", "--warm_up_epochs=2", "--no-cuda"]
NO_BALANCING = ["--disable_modality_dropout"]
DIFFERENTIAL = ("attention = attention_pos - lambda_full * attention_neg",
                "attention = attention_pos")
# probe -> (ablation, flags of both variants, flags of the ablation, patch of the ablation)
PROBES = {
    "imbalance": ("no_balancing", [], NO_BALANCING, None),
    "imbalance_shortcut": ("no_balancing", [], NO_BALANCING, None),
    "common_mode": ("no_differential", NO_BALANCING, [], DIFFERENTIAL),
    "common_mode_silent": ("no_differential", NO_BALANCING, [], DIFFERENTIAL),
    "common_mode_anchor": ("no_differential", NO_BALANCING, [], DIFFERENTIAL),
}
TEST_F1 = re.compile(r"test_fscore: ([\d.]+)")
BEST = re.compile(r"Best_Test_F-Score: ([\d.]+)")


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.release_probe", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--release", required=True)
    p.add_argument("--release-python", default=sys.executable)
    p.add_argument("--seeds", default="1,2,3")
    p.add_argument("--synthetic", default="imbalance", choices=list(PROBES))
    p.add_argument("--p-exe", type=float, default=0.5)
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--name", default="release_probe")
    args = p.parse_args(argv)
    ablation, common, ablated_flags, patch = PROBES[args.synthetic]
    flags = FLAGS + [f"--p_exe={args.p_exe}", f"--epochs={args.epochs}"] + common
    seeds = [int(s) for s in args.seeds.split(",")]
    from ambjax.data import make_synthetic, write_pickle
    scores = {"full": {"best": [], "last": []}, ablation: {"best": [], "last": []}}
    with tempfile.TemporaryDirectory() as scratch:
        folder, patches = release_copy(args.release, scratch, "cpu")
        data = make_synthetic(args.synthetic, seed=0)
        if patch:                       # a text-only probe: the other modalities carry nothing
            data = dataclasses.replace(data, dialogues={
                k: dataclasses.replace(d, features={
                    m: x if m == "text" else np.zeros_like(x) for m, x in d.features.items()})
                for k, d in data.dialogues.items()})
        write_pickle(data, os.path.join(folder, "data", "iemocap_multimodal_features.pkl"),
                     layout="sdt_iemocap")
        model_py = os.path.join(folder, "model.py")
        models = {"full": open(model_py).read()}
        models[ablation] = models["full"]
        if patch:
            if patch[0] not in models["full"]:
                p.error(f"the release's model.py has no `{patch[0]}`: another version of the "
                        "release")
            models[ablation] = models["full"].replace(*patch)
            patches.append(f"model.py ({ablation} only): {patch[0]} -> {patch[1]}")
        train_py = os.path.join(folder, "train.py")
        source = open(train_py).read()
        for seed in seeds:
            with open(train_py, "w") as f:
                f.write(source.replace("seed = 2094", f"seed = {seed}"))
            for variant, extra in (("full", []), (ablation, ablated_flags)):
                with open(model_py, "w") as f:
                    f.write(models[variant])
                text, wall, _ = run_command(
                    [args.release_python, "train.py", *flags, *extra], cwd=folder,
                    timeout=3600)
                scores[variant]["best"].append(float(BEST.search(text).group(1)))
                scores[variant]["last"].append(float(TEST_F1.findall(text)[-1]))
                print(f"seed {seed} {variant}: best test {scores[variant]['best'][-1]}, last "
                      f"{scores[variant]['last'][-1]} ({wall:.0f} s)", flush=True)
    env = environment()
    rows = {k: paired_interval(scores[ablation][k], scores["full"][k])
            for k in ("best", "last")}
    lines = [f"# The release on the {args.synthetic} probe, p_exe {args.p_exe} "
             f"({cpu_name(env)}, {env['date']}, seeds {args.seeds})", "",
             f"Test weighted F1 (the release's own numbers, percent); Δ = {ablation} - full, "
             "paired over seeds, 95% t interval.", "",
             f"| score | full | {ablation} | Δ [95% CI] |", "|---|---|---|---|"]
    for k, label in (("best", "best test epoch (release protocol)"), ("last", "last epoch")):
        d = rows[k]
        lines.append(f"| {label} | {scores['full'][k]} | {scores[ablation][k]} | "
                     f"{d['mean']:+.2f} [{d['low']:+.2f}, {d['high']:+.2f}]"
                     f"{' *' if d['significant'] else ''} |")
    lines += ["", "Patches of the temporary copy: " + "; ".join(patches)
              + "; train.py: seed = 2094 -> each seed."]
    table = "\n".join(lines) + "\n"
    print(table)
    print("wrote", write_results(args.name, {"benchmark": "release_probe",
                                                   "environment": env, "seeds": seeds,
                                                   "synthetic": args.synthetic,
                                                   "flags": flags, "scores": scores,
                                                   "paired": rows}, table))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
