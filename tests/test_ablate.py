"""The ablation table runs end to end on the tiny preset (CI-sized)."""

import json

from experiments.ablate import main as ablate_main, markdown, table_rows


def test_ablation_table_end_to_end(tmp_path, capsys):
    out = tmp_path / "abl"
    assert ablate_main(["--preset", "tiny", "--seeds", "1,2", "--ablations", "text_only",
                        "--epochs", "1", "--devices", "1", "--out", str(out)]) == 0
    blob = json.loads((out / "ablation.json").read_text())
    assert [r["variant"] for r in blob["rows"]] == ["full", "text_only"]
    assert blob["rows"][0]["delta_weighted_f1"] == 0
    for variant in ("full", "text_only"):
        for seed in (1, 2):
            assert (out / variant / f"seed{seed}" / "report.json").is_file()
    md = (out / "ablation.md").read_text()
    assert "| text_only |" in md and "Δ wF1 vs full" in md
    assert set(blob["rows"][1]["modality_f1"]) == {"text"}
    assert ablate_main(["--preset", "tiny", "--ablations", "no_such", "--out", str(out)]) == 2
    assert "no_such" in capsys.readouterr().err


def test_table_rows_difference_to_full():
    def summary(wf1):
        stat = lambda v: {"mean": v, "std": 0.01, "values": [v]}  # noqa: E731
        return {"test": {"accuracy": stat(0.5), "weighted_f1": stat(wf1), "macro_f1": stat(0.4),
                         "modality_f1/text": stat(0.3)}}
    rows = table_rows({"full": summary(0.60), "no_inter": summary(0.55)})
    assert round(rows[1]["delta_weighted_f1"], 6) == -5.0
    assert "| no_inter | 50.00 ± 1.00 | 55.00 ± 1.00 | 40.00 ± 1.00 | 30.00 | -5.00 |" in \
        markdown(rows, "#")
