"""Where differential attention puts its weight, with and without the second map.

    python -m benchmarks.attention_mass [--preset probe_common_mode] [--set KEY=VALUE ...] \\
        [--seeds 1,2,3] [--out runs/attention-mass] [--name NAME] [--reuse]

Trains the full model and its `no_differential` ablation (`experiments.ablate`, the seeds
together), then reads every seed's selected checkpoint back (`ambjax.train.load_run`) and runs
the test split through it once, collecting each attention layer's edge weights
(`ambjax.nn.attention_weights`: A = alpha1 - lambda alpha2, or alpha1 alone without the second
map). Per layer it reports the share of each real utterance's absolute attention |A|
(`ambjax.nn.edge_share`) on two planted neighbours of the probes (README "What each mechanism
buys"):

- self: the utterance itself, the only place its own text signal is (common-mode probe: every
  other same-speaker neighbour carries the speaker's distractor);
- latest other speaker: the latest earlier utterance of another speaker, which the label
  copies with the probe's contagion (the only source of the label for the silent utterances
  of `data.synthetic=common_mode_silent`); an edge of the inter graph only.

Each share is given with what attention spread evenly over the in-edges would put there.
Results: benchmarks/results/<name>-<device>-<date>.{json,md}, means over the seeds.
"""

from __future__ import annotations

import argparse
import collections
import os
import statistics
import sys

import numpy as np

from ambjax.graphs import GraphBatcher
from ambjax.nn import attention_weights, edge_share
from ambjax.train import load_run
from benchmarks.common import cpu_name, environment, write_results
from experiments.ablate import main as ablate_main

VARIANTS = ("full", "no_differential")


def latest_other_speaker(speaker: np.ndarray, dialogue: np.ndarray, position: np.ndarray,
                         senders: np.ndarray, receivers: np.ndarray) -> np.ndarray:
    """bool [E]: edge s -> r joins r to the latest earlier utterance of another speaker in
    its dialogue (every utterance strictly between them is r's speaker's)."""
    latest = np.full(len(speaker), -1)
    order = np.lexsort((position, dialogue))
    last_seen: dict[int, dict[int, int]] = collections.defaultdict(dict)
    for node in order:           # walk each dialogue in order; remember each speaker's latest
        seen = last_seen[int(dialogue[node])]
        others = [(position[n], n) for spk, n in seen.items() if spk != int(speaker[node])]
        latest[node] = max(others)[1] if others else -1
        seen[int(speaker[node])] = node
    return (latest[receivers] == senders) & (senders != receivers)


def shares(run, batch_size: int = 16) -> dict[str, dict[str, float]]:
    """{layer: {"self": share, "latest other speaker": share}} of one run over its test split
    (per batch, weighted by the batch's real utterances)."""
    batcher = GraphBatcher(run.dataset, window=run.config.data.window, batch_size=batch_size)
    sums: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    total = 0
    for batch in batcher.batches("test"):
        real = np.asarray(batch.nodes.mask)
        n_real = real.sum()
        nodes = batch.nodes
        graphs = {}     # per graph kind: receivers, the planted edges, even attention's shares
        for kind in ("intra", "inter"):
            edges = batch.edges(kind)
            senders, receivers = np.asarray(edges.senders), np.asarray(edges.receivers)
            picks = {"self": senders == receivers,
                     "latest other speaker": latest_other_speaker(
                         np.asarray(nodes.speaker), np.asarray(nodes.graph),
                         np.asarray(nodes.position), senders, receivers)}
            uniform = np.ones(senders.shape, np.float32)
            even = {what: float(edge_share(uniform, selected, receivers, real))
                    for what, selected in picks.items()}
            graphs[kind] = receivers, picks, even
        for layer, w in attention_weights(run.model, run.params, batch).items():
            receivers, picks, even = graphs[layer.split("/")[0]]
            for m, member in enumerate(np.asarray(w).reshape(-1, w.shape[-1])):
                key = f"{layer}[{m}]" if w.ndim > 1 and w.shape[0] > 1 else layer
                for what, selected in picks.items():
                    sums[key][what] += float(edge_share(member, selected, receivers,
                                                        real)) * n_real
                    # what attention spread evenly over the in-edges would give
                    sums[key][f"uniform: {what}"] += even[what] * n_real
        total += n_real
    return {layer: {what: v / total for what, v in c.items()} for layer, c in sums.items()}


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.attention_mass",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="probe_common_mode")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--seeds", default="1,2,3")
    p.add_argument("--out", default=os.path.join("runs", "attention-mass"))
    p.add_argument("--name", default=None)
    p.add_argument("--reuse", action="store_true",
                   help="read the runs already in --out instead of training them again")
    args = p.parse_args(argv)
    overrides = [x for kv in args.set for x in ("--set", kv)]
    reuse = args.reuse and os.path.isfile(os.path.join(args.out, "ablation.json"))
    if not reuse and ablate_main(["--preset", args.preset, "--ablations", "no_differential",
                                  "--seeds", args.seeds, "--out", args.out, *overrides]) != 0:
        return 2
    seeds = [int(s) for s in args.seeds.split(",")]
    per_seed = {v: [shares(load_run(os.path.join(args.out, v, f"seed{s}"))) for s in seeds]
                for v in VARIANTS}
    rows = []
    for variant, runs in per_seed.items():
        for layer in sorted(runs[0]):
            rows.append({"variant": variant, "layer": layer,
                         **{what: statistics.mean(r[layer][what] for r in runs)
                            for what in runs[0][layer]}})
    env = environment()
    lines = [f"{args.preset} {' '.join(args.set)} (seeds {args.seeds}; test split): share of "
             f"each utterance's |attention| on a planted neighbour, mean over seeds; "
             f"{cpu_name(env)}, jax {env['jax']}, {env['date']}", "",
             "| variant | layer | self | latest other speaker |", "|---|---|---|---|"]
    for r in rows:
        cells = [f"{r[w]:.3f} (uniform {r['uniform: ' + w]:.3f})"
                 if w == "self" or "inter" in r["layer"] else "-"
                 for w in ("self", "latest other speaker")]
        lines.append(f"| {r['variant']} | {r['layer']} | {' | '.join(cells)} |")
    table = "\n".join(lines) + "\n"
    print(table)
    name = args.name or f"attention_mass-{args.preset}"
    print("wrote", write_results(name, {"benchmark": "attention_mass", "environment": env,
                                        "preset": args.preset, "set": args.set,
                                        "seeds": seeds, "rows": rows}, table))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
