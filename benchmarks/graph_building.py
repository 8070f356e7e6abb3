"""Host-side graph building: every padded batch of one epoch.

    python -m benchmarks.graph_building [--repeats 5]

IEMOCAP-shaped epoch (batch 16, window 20) and MELD-shaped epoch (batch 64, window 6) of the
synthetic data at the real sizes. Target: < 0.2 s per epoch on one CPU core. The timing
includes the per-dialogue edge computation (done once per dataset in `GraphBatcher`) separately.
"""

from __future__ import annotations

import sys
import time

import numpy as np

from ambjax.cli import ArgumentParser, run_main
from ambjax.data import make_synthetic
from ambjax.graphs import GraphBatcher
from benchmarks.common import environment, write_results

CASES = (("iemocap", 20, 16), ("meld", 6, 64))


def main(argv=None) -> dict:
    p = ArgumentParser(prog="python -m benchmarks.graph_building")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--name", default="graph_building",
                   help="results/NAME-<device>-<date>.json and .md")
    args = p.parse_args(argv)
    rows = {}
    for preset, window, batch in CASES:
        ds = make_synthetic(preset)
        start = time.perf_counter()
        gb = GraphBatcher(ds, window=window, batch_size=batch)
        setup = time.perf_counter() - start
        times = []
        for r in range(args.repeats):
            start = time.perf_counter()
            batches = list(gb.batches("train", shuffle=True, epoch=r))
            times.append(time.perf_counter() - start)
        real = sum(int(b.nodes.mask.sum()) for b in batches)
        padded = sum(b.nodes.mask.size for b in batches)
        rows[preset] = {"batch_size": batch, "window": window, "batches": len(batches),
                        "epoch_s_median": float(np.median(times)), "epoch_s_all": times,
                        "edge_setup_s": setup, "node_padding_efficiency": real / padded,
                        "buckets": len(gb.budgets)}
    table = ["| preset | batches | epoch build (median) | edge setup (once) | real/padded nodes |",
             "|---|---|---|---|---|"]
    for preset, r in rows.items():
        table.append(f"| {preset} (batch {r['batch_size']}) | {r['batches']} | "
                     f"{r['epoch_s_median'] * 1e3:.1f} ms | {r['edge_setup_s'] * 1e3:.1f} ms | "
                     f"{r['node_padding_efficiency']:.2f} |")
    text = "\n".join(table) + "\n"
    print(text)
    result = {"benchmark": "graph_building", "environment": environment(), "results": rows}
    print("wrote", write_results(args.name, result, text))
    return result


if __name__ == "__main__":
    sys.exit(run_main(lambda argv: (main(argv), 0)[1]))
