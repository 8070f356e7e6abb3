"""The throughput benchmark's measurements on the tiny preset, checked against counts made
independently from the dataset (numbers, not speed goals)."""

import math

import pytest

from ambjax.graphs import GraphBatcher
from ambjax.train import load_dataset
from benchmarks.throughput import RELEASE_REFERENCE, bench_preset, compare_with_release
from experiments.configs import make_config


@pytest.fixture(scope="module")
def tiny_row():
    return bench_preset("tiny", hidden=16, batch_size=None, devices=1, seeds=2)


def test_throughput_row_counts_the_real_work(tiny_row):
    row = tiny_row
    config = make_config("tiny")
    data = load_dataset(config.data)
    train = data.split("train")
    train_utts = sum(len(d) for d in train)
    test_utts = sum(len(d) for d in data.split("test"))
    batches = math.ceil(len(train) / config.data.batch_size)
    # two seeds: every utterance is trained on once per seed
    assert row["train_utterance_seeds_per_s"] * row["train_epoch_s"] == pytest.approx(
        2 * train_utts)
    assert row["train_steps_per_s"] * row["train_epoch_s"] == pytest.approx(batches)
    assert row["eval_utterances_per_s"] * row["eval_pass_s"] == pytest.approx(test_utts)
    # the tiny preset has one padding bucket: every batch pads to the same node budget
    assert row["distinct_shapes_per_epoch"] == 1
    (budget,) = GraphBatcher(data, window=config.data.window, batch_size=config.data.batch_size,
                             growth=None).budgets
    assert row["node_padding_efficiency"] == pytest.approx(train_utts / (batches * budget.n_node))
    assert 0 < row["edge_padding_efficiency"] < 1
    assert row["parameters"] > 0 and row["train_flops_per_epoch"] > row["eval_flops_per_pass"]
    assert row["compile_s"] > 0 and row["preset"] == "tiny" and row["seeds"] == 2


def test_release_comparison_at_the_release_setting_only():
    row = {"preset": "iemocap", "hidden": 512, "batch_size": 16, "devices": 1, "seeds": 1,
           "dialogue_length": "real distribution", "train_epoch_s": 5.0, "eval_pass_s": 1.0,
           "valid_pass_s": 0.5, "cold_compile_s": 10.0, "peak_rss_gb": 2.4,
           "train_flops_per_epoch": 4e11, "eval_flops_per_pass": 1e11,
           "achieved_flops_per_s_real": 5e10}
    cmp = compare_with_release(row, peak=1e11)
    ref = RELEASE_REFERENCE["iemocap"]
    assert (ref["train_epoch_s"], ref["eval_pass_s"], ref["epochs"]) == (20.66, 2.17, 61)
    # worked by hand: release (20.66 + 2.17) = 22.83 s per epoch against our 5 + 1 = 6 s;
    # a release-length run: 61 x 22.83 = 1392.63 s against 10 + 61 x 6.5 = 406.5 s
    assert cmp["speedup_vs_release"] == pytest.approx(22.83 / 6.0)
    assert cmp["release_length_run_s"] == pytest.approx(406.5)
    assert cmp["end_to_end_speedup_vs_release"] == pytest.approx(1392.63 / 406.5)
    assert cmp["memory_ratio_vs_release"] == pytest.approx(2.4 / 4.8)
    assert (cmp["roofline_train_epoch_s"], cmp["roofline_eval_pass_s"]) == (4.0, 1.0)
    assert cmp["fraction_of_peak"] == pytest.approx(0.5)
    # four seeds at once stand for four release runs one after another
    four = compare_with_release(dict(row, seeds=4), peak=1e11)
    assert four["end_to_end_speedup_vs_release"] == pytest.approx(4 * 1392.63 / 406.5)
    for other in ({"hidden": 64}, {"batch_size": 4}, {"devices": 2}, {"preset": "tiny"}):
        assert "speedup_vs_release" not in compare_with_release({**row, **other}, peak=1e11)
