"""The throughput benchmark's measurements on the tiny preset, checked against counts made
independently from the dataset (numbers, not speed goals)."""

import json
import math
import os
import sys

import numpy as np

import pytest

from ambjax.graphs import GraphBatcher
from ambjax.train import load_dataset
from benchmarks.throughput import bench_preset, roofline
from conftest import TEST_XLA_FLAGS
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
    assert math.isfinite(row["last_step_train_loss"]) and row["last_step_train_loss"] > 0


def test_throughput_says_a_diverged_row_is_not_a_result():
    from benchmarks.throughput import diverged_note
    assert diverged_note([{"preset": "iemocap", "last_step_train_loss": 1.7}]) == []
    note = diverged_note([{"preset": "iemocap", "last_step_train_loss": float("nan")},
                          {"preset": "meld", "last_step_train_loss": 1.2}])
    assert note[-1].startswith("NOT A RESULT") and note[-1].endswith("rows of iemocap")


def test_roofline_divides_by_the_measured_peak_and_names_no_release_figure():
    import benchmarks.throughput as throughput
    row = {"achieved_flops_per_s_real": 5e10, "train_flops_per_epoch": 4e11,
           "eval_flops_per_pass": 1e11}
    assert roofline(row, peak=1e11) == {"matmul_peak_flops_per_s": 1e11, "fraction_of_peak": 0.5,
                                        "roofline_train_epoch_s": 4.0,
                                        "roofline_eval_pass_s": 1.0}
    # a ratio against the release is only made by benchmarks.versus_release, in one run
    assert not [name for name in vars(throughput) if "RELEASE" in name.upper()]


def test_latest_other_speaker_edges():
    from benchmarks.attention_mass import latest_other_speaker
    # one dialogue A A B A B B, nodes in a shuffled flat order
    speaker = np.array([0, 0, 1, 0, 1, 1])
    position = np.arange(6)
    dialogue = np.zeros(6, int)
    senders = np.array([0, 1, 2, 1, 2, 3, 2, 3, 4, 5])
    receivers = np.array([0, 2, 3, 3, 4, 4, 5, 5, 5, 5])
    got = latest_other_speaker(speaker, dialogue, position, senders, receivers)
    # 2 <- 1 (A before B), 3 <- 2, 4 <- 3; 5's latest other speaker is 3 (4 is B itself)
    assert got.tolist() == [False, True, True, False, False, True, False, True, False, False]


def test_every_release_probe_is_a_synthetic_preset_with_its_ambjax_ablation():
    """`benchmarks.release_probe` writes each probe's data by preset name and names the
    ablation it runs after ambjax's own (so the two sides' tables line up)."""
    from ambjax.data import PRESETS
    from benchmarks.release_probe import PROBES
    from experiments.configs import ABLATIONS
    assert set(PROBES) <= set(PRESETS)
    assert {ablation for ablation, *_ in PROBES.values()} <= set(ABLATIONS)


def test_compile_profile_reads_the_train_programs_own_xla_times():
    from benchmarks.compile_profile import xla_times
    log = "\n".join([
        "I cpu_compiler.cc:1269] Running HLO passes on [jit_copy] for CPU time: 1.2 ms (1 us)",
        "I ir_compiler.cc:293] Compiled LLVM module: __compute_module_copy time: 3 ms (3 us)",
        "I cpu_compiler.cc:1269] Running HLO passes on [jit_mapped] for CPU time: 1.19 s (1 us)",
        "I ir_compiler.cc:293] Compiled LLVM module: __compute_module_a time: 40 ms (4 us)",
        "I ir_compiler.cc:293] Compiled LLVM module: __compute_module_b time: 500 us (5 us)",
        "I cpu_compiler.cc:2094] Compiling [jit_mapped] for CPU using JIT time: 4.61 s (4 us)",
        "I ir_compiler.cc:293] Compiled LLVM module: __compute_module_copy time: 7 ms (7 us)"])
    times = xla_times(log)
    assert times["hlo_passes_s"] == pytest.approx(1.19)
    assert times["codegen_s"] == pytest.approx(4.61)
    assert times["kernels"] == 2 and times["kernels_llvm_s"] == pytest.approx(0.0405)
    assert xla_times(log.replace("jit_mapped", "jit_other")) == {}


@pytest.mark.parametrize("preset", ["iemocap", "meld"])
def test_versus_release_gives_ambjax_the_releases_train_and_test_dialogues_only(tmp_path,
                                                                              preset):
    """The release trains on every train dialogue of its pickle (`valid=0.0`) and tests on its
    test dialogues; it never reads MELD's dev split. ambjax must do the same work: no fewer
    train dialogues, no dev split to evaluate."""
    import pickle
    from ambjax.data import make_synthetic, write_pickle
    from benchmarks.versus_release import ambjax_run
    path = str(tmp_path / "features.pkl")
    write_pickle(make_synthetic(preset, seed=0, scale=0.1, dims={"text": 4, "audio": 4,
                                                                 "visual": 4}),
                 path, layout=f"sdt_{preset}")
    with open(path, "rb") as f:
        fields = pickle.load(f)
    # trainVid, testVid: the release's loaders read these two and nothing after them
    release_train, release_test = fields[-3:-1] if preset == "meld" else fields[-2:]
    _, data = ambjax_run(preset, path)
    assert sorted(d.id for d in data.split("train")) == sorted(release_train)
    assert sorted(d.id for d in data.split("test")) == sorted(release_test)
    assert data.split("valid") == []


def test_versus_release_runs_the_release_without_ambjaxs_huge_pages_unless_asked(monkeypatch):
    from benchmarks.versus_release import side_environment
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1")
    monkeypatch.delenv("AMBJAX_HUGE_PAGES", raising=False)
    assert side_environment()["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2"
    assert side_environment(True)["GLIBC_TUNABLES"] == (
        "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1")
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.hugetlb=1")
    assert "GLIBC_TUNABLES" not in side_environment()
    monkeypatch.setenv("AMBJAX_HUGE_PAGES", "0")
    assert "GLIBC_TUNABLES" not in side_environment(True)


@pytest.mark.parametrize("device", ["cpu", "gpu"])
def test_versus_release_runs_ambjax_on_the_device_the_release_runs_on(monkeypatch, device):
    """On a GPU machine `--device cpu` runs the release with --no-cuda: ambjax must not take
    the GPU then; with `--device gpu` it is left to JAX's default device."""
    import benchmarks.versus_release as vr
    seen = {}

    def fake_run(cmd, *, cwd, env, timeout):
        seen.update(env)
        return json.dumps({"compile_s": 1.0}), 2.0, {"peak_rss_gb": 0.5}

    monkeypatch.setenv("JAX_PLATFORMS", "cuda,cpu")
    monkeypatch.setattr(vr, "run_command", fake_run)
    vr.run_ambjax("data.pkl", "iemocap", 1, "cache", ready_only=True, device=device)
    assert seen["JAX_PLATFORMS"] == ("cpu" if device == "cpu" else "cuda,cpu")


def test_process_age_counts_from_the_process_start_across_an_exec():
    import subprocess
    import sys
    # sleep, then replace the process with one that reports its age at once
    code = ("import os, sys, time; time.sleep(0.6); os.execv(sys.executable, [sys.executable, "
            "'-c', 'from benchmarks.common import process_age_s; print(process_age_s())'])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert 0.6 <= float(done.stdout.strip().splitlines()[-1]) < 30


def test_versus_release_marks_a_row_doubtful_when_a_side_was_slowed_during_its_run():
    """A shared machine can slow one side for part of its run without its load average
    showing it; the row then says so instead of quoting a ratio as if nothing happened."""
    from benchmarks.versus_release import compare, table

    def run(release_epochs, ours_train, release_wall=200.0, loss=1.0, probes=(), kept=False,
            compiling=0):
        release = {"epoch_s": release_epochs, "wall_s": release_wall,
                   "startup_s": release_wall - sum(release_epochs), "peak_rss_gb": 4.0,
                   "glibc_tunables": ""}
        cold = {"epochs": [{"train_s": t, "test_s": 0.25, "train_loss": loss,
                            "compiling": i < compiling} for i, t in enumerate(ours_train)],
                "start_to_ready_s": 30.0, "compile_s": 25.0, "peak_rss_gb": 3.0,
                "glibc_tunables": "", "kept_freed_memory": kept}
        return compare("iemocap", release, cold, {"start_to_ready_s": 7.0}, first=2,
                       probes=probes)

    calm = run([12.0, 11.0, 10.0, 10.3, 10.1], [5.0, 4.1, 4.0, 4.1, 3.9])
    assert calm["doubts"] == []
    slowed = run([12.8, 13.4, 18.9, 25.0, 33.6], [6.0, 4.0, 4.0, 4.1, 4.0], release_wall=98.5)
    assert len(slowed["doubts"]) == 2
    assert "the release's steady epochs spread 1.78x (18.90-33.60 s)" in slowed["doubts"][0]
    assert "more than its process ran" in slowed["doubts"][1]
    ours_slowed = run([12.0, 11.0, 10.0, 10.3, 10.1], [5.0, 4.0, 4.0, 5.0, 4.0])
    assert [d.startswith("ambjax's steady epochs spread") for d in ours_slowed["doubts"]] == [True]
    first_slowed = run([25.0, 12.0, 10.0, 10.3, 10.1], [5.0, 4.1, 4.0, 4.1, 3.9])
    assert first_slowed["doubts"] == ["the release's first epochs up to 2.48x its steady median"]
    ours_first_slowed = run([12.0, 11.0, 10.0, 10.3, 10.1], [9.0, 4.1, 4.0, 4.1, 3.9])
    assert ours_first_slowed["doubts"] == ["ambjax's first epochs up to 2.18x its steady median"]
    # an epoch that began while ambjax's later programs compiled is slow for that reason
    compiled_beside = run([12.0, 11.0, 10.0, 10.3, 10.1], [9.0, 4.1, 4.0, 4.1, 3.9], compiling=1)
    assert compiled_beside["doubts"] == []
    compiled_late = run([12.0, 11.0, 10.0, 10.3, 10.1], [9.0, 8.0, 6.0, 4.1, 3.9], compiling=3)
    assert compiled_late["doubts"][0] == (
        "ambjax's later programs still compiled in its steady epoch(s) [3]")
    # a model whose loss is nan is timed doing nothing useful: the row says so
    diverged = run([12.0, 11.0, 10.0, 10.3, 10.1], [5.0, 4.1, 4.0, 4.1, 3.9], loss=float("nan"))
    assert diverged["doubts"] == [
        "ambjax's train loss is not finite in epoch(s) [1, 2, 3, 4, 5] (a diverged model)"]
    # a slow phase over one side's whole run leaves its epochs steady: the machine's speed,
    # probed before, between and after the sides, shows it (a matmul's, or filling memory)
    def probes(gflops, gbps):
        return [{"matmul_gflops": a, "fresh_memory_gbps": b} for a, b in zip(gflops, gbps)]

    steady = probes([160.0, 140.0, 152.0], [8.6, 7.9, 8.4])
    steady_probes = run([12.0, 11.0, 10.0, 10.3, 10.1], [5.0, 4.1, 4.0, 4.1, 3.9],
                        probes=steady)
    assert steady_probes["doubts"] == [] and steady_probes["machine_probes"] == steady
    slowed_between = run([12.0, 11.0, 10.0, 10.3, 10.1], [5.0, 4.1, 4.0, 4.1, 3.9],
                         probes=probes([160.0, 104.0, 152.0], [8.6, 8.5, 8.4]))
    assert slowed_between["doubts"] == [
        "the machine's matmul speed moved between the sides: 160 / 104 / 152 GFLOP/s (1.54x) "
        "before, between and after them"]
    memory_slowed = run([12.0, 11.0, 10.0, 10.3, 10.1], [5.0, 4.1, 4.0, 4.1, 3.9],
                        probes=probes([160.0, 150.0, 152.0], [8.6, 8.5, 4.2]))
    assert memory_slowed["doubts"] == [
        "the machine's fresh-memory fill moved between the sides: 8.6 / 8.5 / 4.2 GB/s (2.05x) "
        "before, between and after them"]
    env = {"cpu_model": "cpu", "avx512": True, "amx": True, "cpu_count": 2, "device": "cpu:cpu",
           "jax": "0", "date": "today"}
    info = {"torch": "2", "threads": 2}
    assert "DOUBTFUL" not in table(env, [calm], [], info)
    assert "DOUBTFUL" in table(env, [calm, slowed], [], info).splitlines()[-1]
    assert ("after ambjax: iemocap 160 / 104 / 152 GFLOP/s, 8.6 / 8.5 / 8.4 GB/s."
            in table(env, [slowed_between], [], info))
    # a run says whether ambjax kept freed memory (its epochs differ)
    mode, plain = "ambjax in its kept-memory mode", "ambjax without the kept-memory mode."
    assert mode not in table(env, [calm], [], info) and plain in table(env, [calm], [], info)
    kept = run([12.0, 11.0, 10.0, 10.3, 10.1], [5.0, 4.1, 4.0, 4.1, 3.9], kept=True)
    assert kept["ambjax_kept_freed_memory"] and mode in table(env, [kept], [], info)
    assert plain not in table(env, [kept], [], info)


def test_a_result_written_twice_in_a_day_keeps_both(tmp_path, monkeypatch):
    from benchmarks import common
    monkeypatch.setattr(common, "RESULTS", str(tmp_path))
    env = {"device": "cpu:cpu", "date": "2026-12-07"}
    paths = [common.write_results("bench", {"environment": env, "run": i}, f"table {i}\n")
             for i in range(3)]
    assert [os.path.basename(p) for p in paths] == [
        "bench-cpu-cpu-2026-12-07.json", "bench-cpu-cpu-2026-12-07-2.json",
        "bench-cpu-cpu-2026-12-07-3.json"]
    for i, path in enumerate(paths):       # each run's numbers and table where it says
        with open(path) as f:
            assert json.load(f)["run"] == i
        with open(path[:-len(".json")] + ".md") as f:
            assert f.read() == f"table {i}\n"


def test_readers_of_a_result_find_it_where_it_is_written(tmp_path, monkeypatch):
    """`result_stem` is where `write_results` writes a first result (`xla_flags` reads its
    scratch rows there), also for a device whose name has spaces."""
    from benchmarks import common
    monkeypatch.setattr(common, "RESULTS", str(tmp_path))
    env = {"device": "gpu:NVIDIA H200", "date": "2026-12-07"}
    stem = common.result_stem("bench", env)
    assert os.path.basename(stem) == "bench-gpu-NVIDIA_H200-2026-12-07"
    assert common.write_results("bench", {"environment": env}, "t\n") == stem + ".json"
    assert os.path.isfile(stem + ".md")


@pytest.mark.parametrize("ask", ["1", "0", None])
def test_a_throughput_rows_process_keeps_freed_memory_where_the_tools_would(monkeypatch, ask):
    """The kept-memory mode reaches the rows' own processes, where the work is timed: asked
    for, or by default on a CPU with AVX-512 (the suite runs on the CPU: `JAX_PLATFORMS=cpu`),
    as the tools decide (`keep_freed_memory_wanted`)."""
    from ambjax import host_memory
    from benchmarks import throughput
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.setenv("XLA_FLAGS", TEST_XLA_FLAGS)     # one CPU device (the suite fakes 4)
    if ask is None:
        monkeypatch.delenv("AMBJAX_KEEP_FREED_MEMORY", raising=False)
    else:
        monkeypatch.setenv("AMBJAX_KEEP_FREED_MEMORY", ask)
    with throughput.row_process() as pool:
        kept = pool.submit(host_memory.freed_memory_kept).result()
    wanted = ask == "1" or (ask is None and host_memory.cpu_has_avx512())
    assert host_memory.keep_freed_memory_wanted(os.environ) is wanted
    assert kept is (wanted and sys.platform.startswith("linux"))


@pytest.mark.parametrize("family,model,flags", [(23, 49, "avx2"), (25, 17, "avx2 avx512f")])
def test_results_tell_apart_two_cpus_of_one_name(tmp_path, family, model, flags):
    from benchmarks.common import cpu_description, cpu_name
    info = tmp_path / "cpuinfo"
    block = (f"processor\t: {{}}\nvendor_id\t: AuthenticAMD\ncpu family\t: {family}\n"
             f"model\t\t: {model}\nmodel name\t: AMD EPYC\nflags\t\t: fpu {flags}\n\n")
    info.write_text(block.format(0) + block.format(1))
    described = cpu_description(str(info))
    assert (described["cpu_family"], described["cpu_model_number"]) == (family, model)
    assert described["avx512"] == ("avx512f" in flags) and not described["amx"]
    assert cpu_name(described) == (f"AMD EPYC, family {family} model {model} "
                                   f"(AVX-512: {'avx512f' in flags}, AMX: False)")
    # a result written before the numbers were recorded is still named
    older = {k: v for k, v in described.items() if k not in ("cpu_family", "cpu_model_number")}
    assert cpu_name(older) == f"AMD EPYC (AVX-512: {'avx512f' in flags}, AMX: False)"


def test_versus_release_records_each_sides_process_cpu_and_faults(tmp_path):
    """What wait4 says of each side's process reaches the row and the table's text (fresh
    memory shows as system time and page faults), and a row without it prints no line."""
    from benchmarks.versus_release import compare, run_command, table
    script = tmp_path / "touch.py"
    script.write_text("import sys; b = bytearray(64 << 20); print(len(b))\n")
    text, wall, usage = run_command([sys.executable, str(script)], cwd=str(tmp_path),
                                    timeout=60)
    assert text.strip() == str(64 << 20) and wall > 0
    assert usage["minor_faults"] > 64 * 256 // 2          # its 64 MB, touched, faulted in
    assert usage["peak_rss_gb"] > 0.06 and usage["user_s"] + usage["system_s"] > 0
    release = {"epoch_s": [12.0, 11.0, 10.0], "wall_s": 60.0, "startup_s": 27.0,
               "peak_rss_gb": 4.0, "user_s": 100.0, "system_s": 2.0, "minor_faults": 1_500_000,
               "glibc_tunables": ""}
    cold = {"epochs": [{"train_s": 5.0, "test_s": 0.3, "train_loss": 1.0}] * 3,
            "start_to_ready_s": 30.0, "compile_s": 25.0, "wall_s": 50.0, "peak_rss_gb": 3.0,
            "user_s": 80.0, "system_s": 9.5, "minor_faults": 400_000, "glibc_tunables": "",
            "kept_freed_memory": False}
    row = compare("iemocap", release, cold, {"start_to_ready_s": 7.0}, first=1)
    assert row["process_cpu"]["ambjax"] == {"wall_s": 50.0, "user_s": 80.0, "system_s": 9.5,
                                            "minor_faults": 400_000}
    env = {"cpu_model": "cpu", "avx512": True, "amx": False, "cpu_count": 2,
           "device": "cpu:cpu", "jax": "0", "date": "today"}
    info = {"torch": "2", "threads": 2}
    assert ("iemocap: release 100 + 2.0 s in 60 s, 1.50 M faults, ambjax 80 + 9.5 s in 50 s, "
            "0.40 M faults." in table(env, [row], [], info))
    for key in ("user_s", "system_s", "minor_faults"):
        del cold[key]
    older = compare("iemocap", release, cold, {"start_to_ready_s": 7.0}, first=1)
    assert "minor page faults" not in table(env, [older], [], info)
