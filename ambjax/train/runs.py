"""Reading run folders: their config, metrics history and checkpoints, as a user (or a later
command) finds them on disk. `load_run` gives a run's parameters ready for `model.apply`;
`evaluate_checkpoint` re-evaluates a checkpoint on the run's (or other) data."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any

import ambjax.train.checkpoint as ckpt
import ambjax.train.run_folder as run_folder
from ambjax.data.assemble import load_dataset, standardized
from ambjax.data.dataset import DialogueDataset
from ambjax.data.standardize import Standardizer
from ambjax.errors import CheckpointError, ConfigError, RunFolderError
from ambjax.nn.protocol import DialogueModel
from ambjax.train.config import ExperimentConfig, from_dict, validate
from ambjax.train.executables import dataset_store
from ambjax.train.trainer import Trainer

logger = logging.getLogger("ambjax")

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
STATS_FILE = "standardization.npz"
RECORDED = ("fingerprint", "data_fingerprint", "model_class")
"""Entries of config.json beside the config tree."""


def read_run_config(run_dir: str) -> tuple[ExperimentConfig, dict]:
    """The config tree of a run folder and what is recorded beside it (`RECORDED`; None
    where absent), from its config.json.

    Raises:
      CheckpointError: no config.json, or one that is unreadable or not a config tree.
    """
    cfg_path = os.path.join(run_dir, CONFIG_FILE)
    if not os.path.isfile(cfg_path):
        raise CheckpointError(f"{run_dir}: no {CONFIG_FILE} (not a run folder)")
    try:
        with open(cfg_path) as f:
            blob = json.load(f)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{cfg_path} is unreadable: {e}") from None
    if not isinstance(blob, dict):
        raise CheckpointError(f"{cfg_path}: expected a JSON object")
    recorded = {k: blob.pop(k, None) for k in RECORDED}
    try:
        return validate(from_dict(blob)), recorded
    except ConfigError as e:
        raise CheckpointError(f"{cfg_path}: {e}") from None


def read_history(path: str, upto: int) -> list[dict]:
    """The epochs 1..`upto` of a metrics.jsonl; a torn last line (a run killed mid-write) is
    dropped with a logged message.

    Raises:
      RunFolderError: a line before the last is not JSON.
    """
    if not os.path.exists(path):
        return []
    with open(path) as f:
        lines = [line for line in f.read().split("\n") if line.strip()]
    history = []
    for i, line in enumerate(lines):
        try:
            history.append(json.loads(line))
        except ValueError:
            if i < len(lines) - 1:
                raise RunFolderError(f"{path}: line {i + 1} is not JSON; the run folder is "
                                     "damaged") from None
            logger.info(f"{path}: dropped a torn last line (the previous run stopped while "
                        "writing it)")
    return [h for h in history if h.get("epoch", 0) <= upto]


@dataclasses.dataclass(frozen=True)
class LoadedRun:
    """A run read back from its folder (`load_run`).

    Attributes:
      config: the run's config tree; epoch: the checkpoint's epoch.
      model: the model (AMB-DSGDN built from `config`, or the one passed to `load_run`).
      params: that epoch's parameters (host arrays), for `model.apply({"params": params}, ...)`.
      dataset: the run's data as it trained on it (standardised with the run's statistics).
      stats: the standardisation statistics (None: raw features).
    """

    config: ExperimentConfig
    epoch: int
    model: Any
    params: Any
    dataset: DialogueDataset
    stats: Standardizer | None


def _run_trainer(run_dir: str, data: str | None, model: DialogueModel | None,
                 n_devices: int | None) -> tuple[Trainer, Standardizer | None]:
    config, recorded = read_run_config(run_dir)
    if data:
        config = dataclasses.replace(config, data=dataclasses.replace(config.data, path=data))
    stats = None
    if config.data.standardize:
        stats_path = os.path.join(run_dir, STATS_FILE)
        if not os.path.isfile(stats_path):
            raise CheckpointError(f"{run_dir}: the run standardised its features but "
                                  f"{STATS_FILE} is missing")
        stats = Standardizer.load(stats_path)
    raw = load_dataset(config.data, store=dataset_store())
    trained_on = recorded["data_fingerprint"]
    if not data and trained_on not in (None, raw.fingerprint()):
        raise CheckpointError(
            f"{run_dir}: its data {config.data.path or 'synthetic data'} changed since the run "
            "trained on it (same widths, other content); pass other `data` to evaluate on "
            "this file anyway")
    dataset, _ = standardized(raw, config.data, stats)
    if model is None and recorded["model_class"] not in (None, "AMBDSGDN"):
        raise CheckpointError(f"{run_dir}: the run trained a {recorded['model_class']}; pass "
                              "that model to read it")
    return Trainer.from_config(config, dataset, model=model, n_devices=n_devices or 1), stats


def _restore(run_dir: str, trainer: Trainer, step: int | None):
    kept = run_folder.checkpoint_steps(run_dir)
    if not kept:
        raise CheckpointError(f"{run_dir}: no checkpoint saved")
    if step is not None and step not in kept:
        raise CheckpointError(f"{run_dir}: no checkpoint of epoch {step}; kept epochs: {kept}")
    manager = ckpt.create_manager(os.path.join(run_dir, "checkpoints"),
                                  trainer.config.run.keep_checkpoints)
    try:
        step = step if step is not None else ckpt.best_step(manager)
        state, _ = ckpt.restore(manager, step, trainer.abstract_seed_state,
                                fingerprint=trainer.fingerprint, dims=trainer.dims)
    finally:
        manager.close()
    return step, state


def load_run(run_dir: str, *, step: int | None = None,
             model: DialogueModel | None = None) -> LoadedRun:
    """The config and the best (or epoch `step`'s) parameters of a run folder.

    Args:
      run_dir: one seed's run folder (written by `train_and_evaluate`).
      step: the checkpoint epoch (default: the best kept one).
      model: the model the run trained, when it is not AMB-DSGDN (a composed model).

    Example:
      run = load_run("runs/synthetic")
      batch = GraphBatcher(run.dataset, window=run.config.data.window).build(...)
      out = run.model.apply({"params": run.params}, batch)

    Raises:
      CheckpointError: no run folder or checkpoint, or one that does not fit.
    """
    trainer, stats = _run_trainer(run_dir, None, model, 1)
    epoch, state = _restore(run_dir, trainer, step)
    return LoadedRun(config=trainer.config, epoch=epoch, model=trainer.model,
                     params=state.params, dataset=trainer.dataset, stats=stats)


def evaluate_checkpoint(run_dir: str, *, data: str | None = None, step: int | None = None,
                        n_devices: int | None = None,
                        model: DialogueModel | None = None) -> dict:
    """Evaluate a saved checkpoint of a run folder (default: its best) on valid and test.

    Args:
      run_dir: a folder written by `train_and_evaluate` (one seed's folder).
      data: a feature file to evaluate on instead of the run's own data (its widths must match).
      step: the checkpoint epoch (default: the best kept one).
      model: as for `load_run`.

    Raises:
      CheckpointError: no run folder or checkpoint, or one whose config/widths do not fit.
    """
    trainer, _ = _run_trainer(run_dir, data, model, n_devices)
    step, state = _restore(run_dir, trainer, step)
    trainer.state = trainer.to_device([state])
    return {"checkpoint_epoch": step, "valid": trainer.evaluate("valid")[0],
            "test": trainer.evaluate("test")[0]}
