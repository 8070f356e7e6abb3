"""The ablation table runs end to end on the tiny preset (CI-sized)."""

import json

import numpy as np
import pytest

from experiments.ablate import main as ablate_main, markdown, table_rows
from experiments.paired import paired_interval


def test_ablation_table_end_to_end(tmp_path, capsys):
    out = tmp_path / "abl"
    assert ablate_main(["--preset", "tiny", "--seeds", "1,2", "--ablations", "text_only",
                        "--epochs", "1", "--devices", "1", "--out", str(out)]) == 0
    blob = json.loads((out / "ablation.json").read_text())
    assert [r["variant"] for r in blob["rows"]] == ["full", "text_only"]
    full = blob["rows"][0]["delta"]
    assert full["mean"] == full["low"] == full["high"] == 0 and not full["significant"]
    for variant in ("full", "text_only"):
        for seed in (1, 2):
            assert (out / variant / f"seed{seed}" / "report.json").is_file()
    md = (out / "ablation.md").read_text()
    assert "| text_only |" in md and "Δ wF1 vs full" in md
    assert set(blob["rows"][1]["modality_f1"]) == {"text"}
    assert ablate_main(["--preset", "tiny", "--ablations", "no_such", "--out", str(out)]) == 2
    assert "no_such" in capsys.readouterr().err
    # a variant that fails while training is named in the one line
    assert ablate_main(["--preset", "tiny", "--seeds", "1,2", "--ablations", "text_only",
                        "--epochs", "1", "--devices", "1", "--set", "optim.lr=1e30",
                        "--out", str(tmp_path / "diverged")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: variant full: training diverged"), err


def _summary(values):
    stat = lambda v: {"mean": float(np.mean(v)), "std": 0.01, "values": list(v)}  # noqa: E731
    return {"test": {"accuracy": stat([0.5]), "weighted_f1": stat(values),
                     "macro_f1": stat([0.4]), "modality_f1/text": stat([0.3])}}


def test_table_rows_pair_the_seeds():
    # the seeds differ a lot, the ablation costs each of them 4 to 6 points: paired, the
    # interval excludes zero although the two spreads overlap
    full = [0.50, 0.70, 0.60, 0.65, 0.55]
    worse = [f - d for f, d in zip(full, [0.04, 0.06, 0.05, 0.05, 0.05])]
    noise = [f + d for f, d in zip(full, [0.02, -0.03, 0.01, -0.01, 0.0])]
    rows = table_rows({"full": _summary(full), "no_inter": _summary(worse),
                       "no_intra": _summary(noise)})
    d = rows[1]["delta"]
    assert round(d["mean"], 6) == -5.0 and d["n"] == 5 and d["significant"]
    # t(0.975, 4) = 2.776; sample std of the differences 0.7071 points
    assert round(d["high"] - d["mean"], 3) == round(2.776445 * 0.707107 / 5 ** 0.5, 3)
    assert not rows[2]["delta"]["significant"] and rows[2]["delta"]["low"] < 0
    table = markdown(rows, "#")
    assert "| no_inter |" in table and "-5.00 [" in table and "] *" in table
    assert "over the same 5 seeds" in table


def test_paired_interval_matches_scipy_and_refuses_ragged_input():
    from scipy import stats
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=7), rng.normal(size=7)
    r = paired_interval(a, b)
    low, high = stats.t.interval(0.95, 6, loc=np.mean(a - b), scale=stats.sem(a - b))
    assert np.isclose(r["low"], low) and np.isclose(r["high"], high)
    with pytest.raises(ValueError):
        paired_interval([1.0, 2.0], [1.0])
