"""Ahead-of-time compilation (`ambjax.train.compile.compile_programs`): how its work is laid
out over threads, seen through steps that record when they are traced."""

import gc
import threading
import time
import types

import jax.numpy as jnp
import pytest

from ambjax.train import Trainer, load_dataset
from ambjax.errors import ResourceError
from ambjax.train.compile import batch_key, compile_programs
from ambjax.train.steps import TrainStep
from experiments.configs import make_config


class RecordingStep:
    """Stands in for a jitted step: `lower` records its interval (and whether the collector's
    heap was frozen then) and sleeps like a trace; `compile` gives a program without a memory
    count."""

    def __init__(self, kind: str, log: list, program_bytes: int = 0, seconds: float = 0.05):
        self.kind, self.log, self.program_bytes, self.seconds = kind, log, program_bytes, seconds

    def lower(self, state, batch, *rest):
        start = time.perf_counter()
        frozen = gc.get_freeze_count() > 0
        time.sleep(self.seconds)
        nodes = batch.nodes.mask.shape[-1] if hasattr(batch, "nodes") else None   # the update
        self.log.append((self.kind, nodes, start, time.perf_counter(), frozen,
                         threading.current_thread() is threading.main_thread()))
        counts = types.SimpleNamespace(argument_size_in_bytes=self.program_bytes,
                                       output_size_in_bytes=0, temp_size_in_bytes=0,
                                       alias_size_in_bytes=0)
        program = types.SimpleNamespace(memory_analysis=lambda: counts, nodes=nodes)
        return types.SimpleNamespace(compile=lambda: program)


@pytest.fixture(scope="module")
def buckets():
    config = make_config("tiny", {"data.budget_growth": "1.25", "data.compile_node_steps": "0",
                                  "data.synthetic_scale": "0.1"})
    trainer = Trainer.from_config(config, load_dataset(config.data), n_devices=1)
    used = trainer.batcher.budgets_used(trainer.seeds, 1)
    train = [("train", trainer.batcher.build([], b)) for b in used["train"]]
    evals = [("eval", trainer.batcher.build([], b)) for b in used["eval"]]
    assert len(train) >= 2 and evals
    return trainer.abstract_seed_state, train, evals


def _compile(buckets, log, while_compiling=None, order=None, wait=True, train_bytes=0):
    state, train, evals = buckets
    train_step = TrainStep(RecordingStep("train", log, train_bytes), RecordingStep("update", log))
    return compile_programs(train_step, RecordingStep("eval", log), state,
                            order or train + evals, jnp.asarray(True), describe=str,
                            memory_limit=10 ** 12, workers=3, while_compiling=while_compiling,
                            wait=wait)


def test_programs_are_traced_one_at_a_time_the_largest_train_program_first(buckets):
    log = []
    programs = _compile(buckets, log)
    _, train, evals = buckets
    assert len(log) == len(train) + len(evals) + 1
    assert len(programs.train) == len(train) and len(programs.eval) == len(evals)
    assert [row[0] for row in log].count("update") == 1 and programs.update is not None
    first = min(log, key=lambda row: row[2])
    assert first[:2] == ("train", max(b.nodes.mask.shape[-1] for _, b in train))
    intervals = sorted(row[2:4] for row in log)
    for (_, end), (start, _) in zip(intervals, intervals[1:]):
        assert start >= end                      # no two traces overlap
    assert not any(row[5] for row in log)        # all in the worker threads


def test_without_waiting_the_first_step_is_ready_first_and_the_rest_compiles_after(buckets):
    log, initialised = [], []
    _, train, evals = buckets
    order = [train[0], *evals, *train[1:]]               # the smallest train bucket first
    programs = _compile(buckets, log, order=order, wait=False,
                        while_compiling=lambda: initialised.append(len(log)))
    first = batch_key(train[0][1])
    assert initialised and first in programs.train and programs.update is not None
    assert ("train", first) not in programs.pending
    assert min(log, key=lambda row: row[2])[:2] == ("train", train[0][1].nodes.mask.shape[-1])
    programs.wait()                                       # every program
    assert not programs.pending and programs.compiled_s is not None
    assert len(log) == len(order) + 1
    assert len(programs.train) == len(train) and len(programs.eval) == len(evals)
    batch = train[-1][1]
    assert programs._program("train", batch_key(batch)).nodes == batch.nodes.mask.shape[-1]


def test_compiles_not_started_are_dropped_and_their_shapes_left_to_the_jitted_step(buckets):
    log = []
    state, train, evals = buckets
    train_step = TrainStep(RecordingStep("train", log), RecordingStep("update", log))
    slow = RecordingStep("eval", log, seconds=1.0)        # under way while it is cancelled
    programs = compile_programs(train_step, slow, state, [train[0], *evals, *train[1:]],
                                jnp.asarray(True), describe=str, memory_limit=10 ** 12,
                                workers=1, wait=False)
    queued = len(programs.pending)
    programs.cancel()                                     # one may be under way: it finishes
    assert queued >= 2 and len(programs.pending) <= 1
    programs.wait()
    assert len(log) <= 3 and programs._program("train", batch_key(train[-1][1])) is None


def test_a_largest_program_too_large_is_refused_at_its_first_use_when_not_waited_for(buckets):
    _, train, evals = buckets
    with pytest.raises(ResourceError, match="the largest padded batch"):
        _compile(buckets, [], train_bytes=10 ** 13)       # waited for: refused at once
    programs = _compile(buckets, [], order=[train[0], *evals, *train[1:]], wait=False,
                        train_bytes=10 ** 13)             # the first is not the largest
    with pytest.raises(ResourceError, match="the largest padded batch"):
        programs.wait()


def test_the_heap_is_frozen_while_compiling_and_a_callers_freeze_is_left_alone(buckets):
    log, seen = [], []
    before = gc.get_freeze_count()
    _compile(buckets, log, while_compiling=lambda: seen.append(gc.get_freeze_count()))
    assert all(row[4] for row in log) and seen[0] > 0
    assert gc.get_freeze_count() == before == 0
    marker = [[]]                                 # a tracked object the caller freezes
    gc.freeze()
    try:
        log.clear()
        _compile(buckets, log)
        assert gc.get_freeze_count() > 0
        # unfrozen, it would be back in the oldest generation
        assert not any(o is marker for o in gc.get_objects(generation=2))
    finally:
        gc.unfreeze()
    assert any(o is marker for o in gc.get_objects(generation=2))
