"""Compiling in a process of its own (`ambjax.train.compile_process`): a trainer in the
kept-memory mode has a helper process compile its programs into the executable store and loads
them from there; they compute what the trainer's own compile gives; where the helper cannot be
used, fails or would compile other programs, the trainer compiles itself; a warm store starts
no helper."""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ambjax.train.trainer as trainer_module
from ambjax.nn.model import AMBDSGDN
from ambjax.errors import ResourceError
from ambjax.train import Trainer, load_dataset
from ambjax.train import compile_process
from ambjax.train.compile_process import why_not_own_process
from ambjax.train.config import replace_key
from ambjax.train.trainer import model_for
from conftest import TINY_PROGRAMS, compiled_trainer
from experiments.configs import make_config


@pytest.fixture
def kept_memory(monkeypatch):
    """This process taken for one in the kept-memory mode (`ambjax.host_memory`), without
    changing its allocator."""
    monkeypatch.setattr(trainer_module, "freed_memory_kept", lambda: True)


@pytest.fixture(scope="module")
def run():
    config = make_config("tiny", TINY_PROGRAMS)
    return config, load_dataset(config.data)


def _first_step(trainer):
    batch = next(trainer.batcher.seed_batches("train", trainer.seeds, epoch=0))
    return trainer.train_step(jax.tree.map(jnp.copy, trainer.state), batch, jnp.asarray(True))


def test_programs_compiled_by_a_helper_process_are_loaded_and_compute_the_same(
        run, cache_dir, kept_memory, monkeypatch):
    config, data = run
    helped, lines = compiled_trainer(config, data)
    assert any(line.startswith("compiled in a process of its own") for line in lines), lines
    programs = len(helped.programs.train) + 1 + len(helped.programs.eval)   # 1: the update
    assert f"({programs} from the executable store)" in lines[-1], lines
    monkeypatch.setattr(trainer_module, "freed_memory_kept", lambda: False)
    jax.config.update("jax_compilation_cache_dir", None)        # compiled here, no store
    own, lines = compiled_trainer(config, data)
    assert not any("executable store" in line or "own" in line for line in lines), lines
    for a, b in zip(jax.tree.leaves(_first_step(helped)), jax.tree.leaves(_first_step(own))):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("fault", ["no helper", "other programs", "no temporary folder"])
def test_a_helper_that_fails_or_would_compile_other_programs_leaves_the_compile_here(
        run, cache_dir, kept_memory, monkeypatch, tmp_path, fault):
    config, data = run
    if fault == "no helper":
        monkeypatch.setattr(compile_process, "HELPER", "ambjax.no_such_module")
        expected = "the compile process failed (exit status 1: "
    elif fault == "other programs":   # the rebuilt trainer is told to expect other programs
        monkeypatch.setattr(compile_process, "identity_digest", lambda trainer: "another")
        expected = "the compile process failed (its programs would differ"
    else:
        monkeypatch.setattr(compile_process.tempfile, "tempdir", str(tmp_path / "missing"))
        expected = "the compile process could not run ("
    trainer, lines = compiled_trainer(config, data)
    assert any(line.startswith(expected) for line in lines), lines
    assert "executable store" not in lines[-1], lines
    assert np.isfinite(_first_step(trainer)[1]["loss"]).all()


def test_an_error_in_the_helpers_compile_is_reported_once_by_the_trainers_own(
        run, cache_dir, kept_memory, caplog):
    config, data = run
    trainer = Trainer.from_config(config, data, n_devices=1)
    with caplog.at_level(logging.INFO, logger="ambjax"), pytest.raises(ResourceError):
        trainer.compile(memory_limit=1)
    assert any(r.getMessage().startswith("the compile process stopped (") for r in caplog.records)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.records


def test_a_warm_store_starts_no_helper(run, cache_dir, monkeypatch):
    config, data = run
    compiled_trainer(config, data)                              # fills the store
    monkeypatch.setattr(trainer_module, "freed_memory_kept", lambda: True)
    monkeypatch.setattr(compile_process.subprocess, "run", pytest.fail)
    _, lines = compiled_trainer(config, data)
    assert "from the executable store" in lines[-1], lines


def test_the_helper_is_used_only_where_the_config_rebuilds_the_trainer(run, cache_dir):
    config, data = run
    assert why_not_own_process(Trainer.from_config(config, data, n_devices=1)) is None
    other = AMBDSGDN(model_for(replace_key(config, "model.dropout", 0.3), data))
    assert why_not_own_process(Trainer(other, config, data, n_devices=1)) == (
        "a model other than the config's AMB-DSGDN")
    assert why_not_own_process(Trainer.from_config(config, data, n_devices=2)) == (
        "more than one device or process")
    jax.config.update("jax_compilation_cache_dir", None)
    assert why_not_own_process(Trainer.from_config(config, data, n_devices=1)) == (
        "JAX's persistent compilation cache is off")
