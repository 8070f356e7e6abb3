"""The training loop: data -> graphs -> jit/pmap steps -> per-epoch evaluation, checkpoints,
metrics.jsonl and the final report. `train_and_evaluate` is what `experiments.train` runs."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from ambjax.data import DataFormatError, load_features, make_synthetic
from ambjax.data.dataset import DialogueDataset
from ambjax.graphs import GraphBatcher
from ambjax.losses import IEMOCAP_CLASS_WEIGHTS
from ambjax.metrics import classification_report, weighted_f1
from ambjax.nn.model import AMBDSGDN, ModelConfig, count_parameters
from ambjax.train import checkpoint as ckpt
from ambjax.train.config import (ConfigError, DataConfig, ExperimentConfig, fingerprint,
                                 from_dict, to_dict, validate)
from ambjax.train import run_folder
from ambjax.train.compile import compile_programs
from ambjax.train.report import write_report
from ambjax.train.run_folder import RunFolderError
from ambjax.train.state import create_optimizer, create_train_state
from ambjax.train.steps import compile_steps, replicate, unreplicate


def maybe_initialize_distributed() -> None:
    """`jax.distributed.initialize()` when a multi-host environment is configured."""
    if any(os.environ.get(k) for k in ("JAX_COORDINATOR_ADDRESS", "COORDINATOR_ADDRESS")):
        jax.distributed.initialize()


def load_dataset(data: DataConfig) -> DialogueDataset:
    """The feature file `data.path`, or the bundled synthetic set, restricted to
    `data.modalities`."""
    if data.path:
        dataset = load_features(data.path, text=data.text, valid_fraction=data.valid_fraction,
                                seed=0)
    else:
        dataset = make_synthetic(data.synthetic, seed=data.synthetic_seed,
                                 scale=data.synthetic_scale,
                                 dims=dict(data.synthetic_dims) or None)
    if data.modalities:
        missing = set(data.modalities) - set(dataset.modalities)
        if missing:
            raise ConfigError(f"data.modalities {sorted(missing)} are not in the data "
                              f"(it has {list(dataset.modalities)})")
        dataset = dataclasses.replace(dataset, modalities=data.modalities)
    where = data.path or f"synthetic {data.synthetic} data"
    for split in ("train", "valid", "test"):
        if not dataset.splits[split]:
            raise DataFormatError(f"{where}: the {split} split is empty; a run needs train, "
                                  "validation and test dialogues")
    return dataset


def model_for(config: ExperimentConfig, dataset: DialogueDataset) -> ModelConfig:
    """The run's `ModelConfig` filled with the data's widths, classes and speakers."""
    return config.model.with_data({m: dataset.dims[m] for m in dataset.modalities},
                                  dataset.num_classes, dataset.num_speakers)


def resolve_devices(n_devices: int | None) -> int:
    """`n_devices` checked against the local devices (None: all of them)."""
    available = jax.local_device_count()
    if n_devices is None:
        return available
    if not 1 <= n_devices <= available:
        raise ConfigError(f"--devices must be between 1 and the {available} local device(s) "
                          f"of this machine, got {n_devices}")
    return n_devices


def read_run_config(run_dir: str) -> ExperimentConfig:
    """The config tree of a run folder (its config.json)."""
    cfg_path = os.path.join(run_dir, "config.json")
    if not os.path.isfile(cfg_path):
        raise ckpt.CheckpointError(f"{run_dir}: no config.json (not a run folder)")
    try:
        with open(cfg_path) as f:
            blob = json.load(f)
    except (OSError, ValueError) as e:
        raise ckpt.CheckpointError(f"{cfg_path} is unreadable: {e}") from None
    if not isinstance(blob, dict):
        raise ckpt.CheckpointError(f"{cfg_path}: expected a JSON object")
    blob.pop("fingerprint", None)
    try:
        return validate(from_dict(blob))
    except ConfigError as e:
        raise ckpt.CheckpointError(f"{cfg_path}: {e}") from None


class Trainer:
    """The compiled steps, batcher and train state of one run.

    `state` lives on the device(s) between epochs (replicated along a leading device axis when
    `n_devices` > 1); only checkpoints copy it to the host.
    """

    def __init__(self, config: ExperimentConfig, dataset: DialogueDataset, *,
                 n_devices: int | None = None):
        self.config = config
        self.dataset = dataset
        self.n_devices = resolve_devices(n_devices)
        self.model_config = model_for(config, dataset)
        self.fingerprint = fingerprint(self.model_config)
        self.model = AMBDSGDN(self.model_config)
        data = config.data
        self.batcher = GraphBatcher(dataset, window=data.window, batch_size=data.batch_size,
                                    n_devices=self.n_devices, growth=data.budget_growth)
        weights = (jnp.asarray(IEMOCAP_CLASS_WEIGHTS) if config.optim.class_weights
                   and dataset.num_classes == len(IEMOCAP_CLASS_WEIGHTS) else None)
        self.optimizer = create_optimizer(config.optim.lr, config.optim.l2)
        self.train_step, self.eval_step = compile_steps(
            self.model, self.optimizer, self.n_devices, class_weights=weights,
            unimodal_weight=config.optim.unimodal_weight)
        example = self.batcher.build(dataset.split("train")[:1] * self.n_devices)
        if self.n_devices > 1:
            example = unreplicate(example)
        state = create_train_state(self.model, example, self.optimizer, config.run.seed)
        self.num_parameters = count_parameters(state.params)
        self.state = self.to_device(state)
        self.dims = {m: int(dataset.dims[m]) for m in dataset.modalities}

    def compile(self, log: Callable[[str], None] | None = None) -> None:
        """Compile every bucket's train and eval program now (concurrently), checking the
        largest one's memory first (`ambjax.train.compile`); steps then dispatch to them."""
        batches = [self.batcher.build([], budget) for budget in self.batcher.budgets]
        programs = compile_programs(self.train_step, self.eval_step, self.state, batches,
                                    jnp.asarray(True), describe=self._describe_largest,
                                    log=log)
        self.train_step, self.eval_step = programs.train_step, programs.eval_step

    def _describe_largest(self, batch) -> str:
        longest = max(self.dataset.dialogues.values(), key=len)
        return (f"{batch.nodes.mask.shape[-1]} node slots per device; the longest dialogue, "
                f"{longest.id!r}, has {len(longest)} utterances")

    def to_device(self, state):
        """A host or single-device state placed for the steps (replicated for pmap)."""
        return replicate(state, self.n_devices) if self.n_devices > 1 else jax.device_put(state)

    def host_state(self):
        """One copy of the state, as the checkpoint stores it."""
        return unreplicate(self.state) if self.n_devices > 1 else self.state

    def _gather(self, outputs: list) -> list:
        outputs = jax.device_get(outputs)
        return [unreplicate(o) for o in outputs] if self.n_devices > 1 else outputs

    def train_epoch(self, epoch: int) -> dict:
        """One pass over the shuffled train split; returns host-side epoch metrics."""
        cfg = self.config
        active = jnp.asarray(cfg.model.balance and epoch >= cfg.schedule.balance_warmup)
        outputs = []
        n = self.batcher.num_batches("train")
        report_every = max(1, n // 4) if n >= 20 else 0
        start = time.perf_counter()
        for i, batch in enumerate(self.batcher.batches("train", shuffle=True,
                                                       seed=cfg.run.seed, epoch=epoch)):
            self.state, metrics = self.train_step(self.state, batch, active)
            outputs.append(metrics)
            if report_every and (i + 1) % report_every == 0 and i + 1 < n:
                print(f"  epoch {epoch + 1}: {i + 1}/{n} batches "
                      f"({time.perf_counter() - start:.1f}s)", file=sys.stderr, flush=True)
        outputs = self._gather(outputs)
        elapsed = time.perf_counter() - start
        counts = np.array([o["utterances"] for o in outputs], np.float64)
        conf = np.sum([o["confusion"] for o in outputs], axis=0)
        report = classification_report(conf, self.dataset.label_names)
        return {"loss": float(np.dot([o["loss"] for o in outputs], counts) / counts.sum()),
                "accuracy": report["accuracy"], "weighted_f1": report["weighted_f1"],
                "modality_f1": np.mean([o["modality_f1"] for o in outputs], 0).tolist(),
                "q": np.mean([o["q"] for o in outputs], 0).tolist(),
                "seconds": elapsed, "steps_per_s": len(outputs) / elapsed}

    def evaluate(self, split: str) -> dict:
        """Metrics of the current params on a split: classification_report plus "loss" and
        "modality_f1" {m: weighted F1}."""
        outputs = self._gather([self.eval_step(self.state.params, b)
                                for b in self.batcher.batches(split)])
        total = sum(int(o["utterances"]) for o in outputs)
        report = classification_report(np.sum([o["confusion"] for o in outputs], 0),
                                       self.dataset.label_names)
        mod_conf = np.sum([o["modality_confusion"] for o in outputs], 0)
        report["loss"] = float(sum(o["loss_sum"] for o in outputs) / max(total, 1))
        report["modality_f1"] = dict(zip(self.dataset.modalities,
                                         np.asarray(weighted_f1(mod_conf)).tolist()))
        return report


def _fmt(x: float) -> str:
    return f"{100 * x:5.2f}"


def read_history(path: str, upto: int, log: Callable[[str], None]) -> list[dict]:
    """The epochs 1..`upto` of a metrics.jsonl; a torn last line (a run killed mid-write) is
    dropped with a message."""
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
            log(f"{path}: dropped a torn last line (the previous run stopped while writing it)")
    return [h for h in history if h.get("epoch", 0) <= upto]


def train_and_evaluate(config: ExperimentConfig, out_dir: str, *, resume: bool = False,
                       overwrite: bool = False, n_devices: int | None = None,
                       log: Callable[[str], None] = print) -> dict:
    """Train, select the best epoch, evaluate, and write the run folder. Returns the report.

    The configuration and the data are checked before anything on disk is touched. The run
    folder holds config.json (the config tree), metrics.jsonl (one object per epoch),
    checkpoints/ (orbax), report.json and report.md (and plots with matplotlib installed).
    """
    validate(config)
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite exclude each other: resume continues the "
                          "run in the folder, overwrite replaces it")
    maybe_initialize_distributed()
    dataset = load_dataset(config.data)
    trainer = Trainer(config, dataset, n_devices=n_devices)
    run_folder.check(out_dir, trainer.fingerprint, resume=resume, overwrite=overwrite)
    tag = (" [model selected on TEST: the release's protocol]"
           if config.run.selection == "test" else "")
    log(f"{dataset.name} ({dataset.layout}): {trainer.num_parameters:,} parameters, "
        f"{trainer.n_devices} device(s) ({jax.devices()[0].platform}), "
        f"{trainer.batcher.num_batches('train')} batches/epoch, "
        f"{len(trainer.batcher.budgets)} budget buckets{tag}")
    trainer.compile(log)
    lock = run_folder.RunLock(out_dir)
    try:
        run_folder.check(out_dir, trainer.fingerprint, resume=resume, overwrite=overwrite)
        if overwrite:
            run_folder.clear(out_dir)
        return _train(trainer, out_dir, resume=resume, log=log)
    finally:
        lock.release()


def _train(trainer: Trainer, out_dir: str, *, resume: bool, log: Callable[[str], None]) -> dict:
    """The epochs of `train_and_evaluate` in a checked, locked run folder."""
    config, dataset = trainer.config, trainer.dataset
    manager = ckpt.create_manager(os.path.join(out_dir, "checkpoints"),
                                  config.run.keep_checkpoints)
    meta = {"epoch": 0, "best_score": -1.0, "best_epoch": -1, "best": None,
            "fingerprint": trainer.fingerprint, "dims": trainer.dims}
    metrics_path = os.path.join(out_dir, "metrics.jsonl")
    if resume and manager.latest_step() is not None:
        state, meta = ckpt.restore(manager, manager.latest_step(), trainer.host_state(),
                                   fingerprint=trainer.fingerprint, dims=trainer.dims)
        trainer.state = trainer.to_device(state)
        log(f"resumed from epoch {meta['epoch']}")
    run_folder.write_json(os.path.join(out_dir, "config.json"),
                          {**to_dict(config), "fingerprint": trainer.fingerprint})
    history = read_history(metrics_path, meta["epoch"], log)
    with open(metrics_path, "w") as f:
        f.writelines(json.dumps(h) + "\n" for h in history)
    epochs = config.schedule.epochs
    for epoch in range(meta["epoch"], epochs):
        train = trainer.train_epoch(epoch)
        valid, test = trainer.evaluate("valid"), trainer.evaluate("test")
        score = (valid if config.run.selection == "valid" else test)["weighted_f1"]
        if score > meta["best_score"]:
            meta.update(best_score=score, best_epoch=epoch + 1,
                        best={"valid": valid, "test": test})
        meta["epoch"] = epoch + 1
        keys = ("loss", "accuracy", "weighted_f1", "macro_f1", "modality_f1")
        record = {"epoch": epoch + 1, "selection": config.run.selection, "train": train,
                  "valid": {k: valid[k] for k in keys}, "test": {k: test[k] for k in keys}}
        history.append(record)
        with open(metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        ckpt.save(manager, epoch + 1, trainer.host_state(), meta, score)
        q = " ".join(f"{m[0]}{v:.2f}" for m, v in zip(dataset.modalities, train["q"]))
        log(f"epoch {epoch + 1:3d}/{epochs} {train['seconds']:6.1f}s "
            f"loss {train['loss']:.4f} | valid acc {_fmt(valid['accuracy'])} "
            f"wF1 {_fmt(valid['weighted_f1'])} | test acc {_fmt(test['accuracy'])} "
            f"wF1 {_fmt(test['weighted_f1'])} | q {q} | {train['steps_per_s']:.2f} steps/s"
            + (" *" if meta["best_epoch"] == epoch + 1 else ""))
    manager.close()
    report = {
        "selection": config.run.selection,
        "selection_note": ("best epoch chosen on the TEST split (the release's protocol)"
                           if config.run.selection == "test" else
                           "best epoch chosen on the validation split"),
        "best_epoch": meta["best_epoch"], "epochs": epochs,
        "devices": trainer.n_devices, "platform": jax.devices()[0].platform,
        "parameters": trainer.num_parameters, "dataset": dataset.name, "layout": dataset.layout,
        "label_names": list(dataset.label_names),
        "valid": meta["best"]["valid"], "test": meta["best"]["test"],
    }
    write_report(out_dir, report, history)
    log(f"best epoch {report['best_epoch']} ({report['selection_note']}): test acc "
        f"{_fmt(report['test']['accuracy'])} wF1 {_fmt(report['test']['weighted_f1'])}; "
        f"report in {out_dir}")
    return report


def evaluate_checkpoint(run_dir: str, *, data: str | None = None, step: int | None = None,
                        n_devices: int | None = None) -> dict:
    """Evaluate a saved checkpoint of a run folder (default: its best) on valid and test.

    Args:
      run_dir: a folder written by `train_and_evaluate`.
      data: a feature file to evaluate on instead of the run's own data (its widths must match).
      step: the checkpoint epoch (default: the best kept one).

    Raises:
      CheckpointError: no run folder or checkpoint, or one whose config/widths do not fit.
    """
    config = read_run_config(run_dir)
    if data:
        config = dataclasses.replace(config, data=dataclasses.replace(config.data, path=data))
    dataset = load_dataset(config.data)
    trainer = Trainer(config, dataset, n_devices=n_devices or 1)
    manager = ckpt.create_manager(os.path.join(run_dir, "checkpoints"),
                                  config.run.keep_checkpoints)
    step = step if step is not None else ckpt.best_step(manager)
    if step is None:
        raise ckpt.CheckpointError(f"{run_dir}: no checkpoint saved")
    state, _ = ckpt.restore(manager, step, trainer.host_state(), fingerprint=trainer.fingerprint,
                            dims=trainer.dims)
    trainer.state = trainer.to_device(state)
    manager.close()
    return {"checkpoint_epoch": step, "valid": trainer.evaluate("valid"),
            "test": trainer.evaluate("test")}
