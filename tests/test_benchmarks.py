"""The throughput benchmark's measurements on the tiny preset (numbers, not speed goals)."""

import pytest

from benchmarks.throughput import RELEASE_REFERENCE, bench_preset, compare_with_release


@pytest.fixture(scope="module")
def tiny_row():
    return bench_preset("tiny", hidden=16, batch_size=None, devices=1)


def test_throughput_row_is_complete_and_consistent(tiny_row):
    row = tiny_row
    for key in ("train_epoch_s", "eval_pass_s", "compile_s", "train_utterances_per_s",
                "train_steps_per_s", "eval_utterances_per_s", "train_flops_per_epoch",
                "eval_flops_per_pass"):
        assert row[key] > 0, key
    assert isinstance(row["device"], str) and row["preset"] == "tiny" and row["dtype"] == "float32"
    assert 0 < row["node_padding_efficiency"] <= 1 and 0 < row["edge_padding_efficiency"] <= 1
    assert row["distinct_shapes_per_epoch"] == len(row["compile_s_per_bucket"]) >= 1
    assert row["compile_s"] == pytest.approx(sum(row["compile_s_per_bucket"].values()))
    assert row["train_steps_per_s"] * row["train_epoch_s"] == pytest.approx(
        round(row["train_steps_per_s"] * row["train_epoch_s"]))  # a whole number of steps


def test_release_comparison_only_at_the_release_setting(tiny_row):
    peak = 1e11
    assert "speedup_vs_release" not in compare_with_release(tiny_row, peak)  # tiny != release
    as_release = dict(tiny_row, preset="iemocap", hidden=512, batch_size=16)
    cmp = compare_with_release(as_release, peak)
    ref = RELEASE_REFERENCE["iemocap"]
    ours = tiny_row["train_epoch_s"] + tiny_row["eval_pass_s"]
    assert cmp["speedup_vs_release"] == pytest.approx(
        (ref["train_epoch_s"] + ref["eval_pass_s"]) / ours)
    assert cmp["memory_ratio_vs_release"] == pytest.approx(tiny_row["peak_rss_gb"] / 4.8)
    assert cmp["roofline_train_epoch_s"] == pytest.approx(tiny_row["train_flops_per_epoch"] / peak)
    assert cmp["roofline_eval_pass_s"] == pytest.approx(tiny_row["eval_flops_per_pass"] / peak)
