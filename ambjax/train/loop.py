"""The training loop: data -> graphs -> jit/pmap steps -> per-epoch evaluation, checkpoints,
metrics.jsonl and the final report. `train_and_evaluate` is what `experiments.train` runs."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from ambjax.data import load_features, make_synthetic
from ambjax.data.dataset import DialogueDataset
from ambjax.graphs import GraphBatcher
from ambjax.losses import IEMOCAP_CLASS_WEIGHTS
from ambjax.metrics import classification_report, weighted_f1
from ambjax.nn.model import AMBDSGDN, ModelConfig, count_parameters
from ambjax.train import checkpoint as ckpt
from ambjax.train.config import TrainConfig
from ambjax.train.report import write_report
from ambjax.train.state import create_optimizer, create_train_state
from ambjax.train.steps import compile_steps, replicate, unreplicate


class RunFolderError(ValueError):
    """The output folder holds another run (and neither resume nor overwrite was asked)."""


def maybe_initialize_distributed() -> None:
    """`jax.distributed.initialize()` when a multi-host environment is configured."""
    if any(os.environ.get(k) for k in ("JAX_COORDINATOR_ADDRESS", "COORDINATOR_ADDRESS")):
        jax.distributed.initialize()


def load_dataset(config: TrainConfig) -> DialogueDataset:
    """The feature file `config.data`, or the bundled synthetic set, restricted to
    `config.modalities`."""
    if config.data:
        dataset = load_features(config.data, text=config.text,
                                valid_fraction=config.valid_fraction, seed=0)
    else:
        dims = {}
        for item in filter(None, config.synthetic_dims.split(",")):
            name, width = item.split(":")
            dims[name.strip()] = int(width)
        dataset = make_synthetic(config.dataset, seed=config.synthetic_seed,
                                 scale=config.synthetic_scale, dims=dims or None)
    if config.modalities:
        wanted = tuple(m.strip() for m in config.modalities.split(","))
        missing = set(wanted) - set(dataset.modalities)
        if missing:
            raise ValueError(f"modalities {sorted(missing)} are not in the data "
                             f"(it has {dataset.modalities})")
        dataset = dataclasses.replace(dataset, modalities=wanted)
    return dataset


def model_config(config: TrainConfig, dataset: DialogueDataset) -> ModelConfig:
    return ModelConfig(
        input_dims=tuple((m, dataset.dims[m]) for m in dataset.modalities),
        num_classes=dataset.num_classes, num_speakers=dataset.num_speakers,
        hidden_dim=config.hidden_dim, num_heads=config.num_heads,
        graph_heads=config.graph_heads, dropout=config.dropout,
        graph_dropout=config.graph_dropout, differential=config.differential, norm=config.norm,
        depth_dependent_lambda=config.depth_dependent_lambda,
        graphs=tuple(g.strip() for g in config.graphs.split(",")), balance=config.balance,
        q_base=config.q_base, lam=config.lam, p_exe=config.p_exe, dtype=config.dtype)


def prepare_run_folder(out_dir: str, config: TrainConfig, *, resume: bool, overwrite: bool) -> None:
    """Create `out_dir`, refusing to reuse a folder holding another run."""
    cfg_path = os.path.join(out_dir, "config.json")
    if os.path.exists(cfg_path) and not resume:
        if not overwrite:
            raise RunFolderError(f"{out_dir} already holds a run; pass --resume to continue it "
                                 "or --overwrite to replace it")
        shutil.rmtree(out_dir)
    if resume and os.path.exists(cfg_path):
        with open(cfg_path) as f:
            old = json.load(f)
        if old.get("fingerprint") != config.fingerprint():
            raise RunFolderError(f"{out_dir} holds a run of another model configuration; "
                                 "resume with the same preset and overrides")
    os.makedirs(out_dir, exist_ok=True)
    with open(cfg_path + ".tmp", "w") as f:
        json.dump({**config.to_json(), "fingerprint": config.fingerprint()}, f, indent=1)
    os.replace(cfg_path + ".tmp", cfg_path)


class Trainer:
    """Holds the compiled steps, batchers and state of one run."""

    def __init__(self, config: TrainConfig, dataset: DialogueDataset, *,
                 n_devices: int | None = None):
        self.config = config
        self.dataset = dataset
        self.n_devices = n_devices or jax.local_device_count()
        self.model = AMBDSGDN(model_config(config, dataset))
        self.batcher = GraphBatcher(dataset, window=config.window, batch_size=config.batch_size,
                                    n_devices=self.n_devices,
                                    growth=config.budget_growth or None)
        weights = (jnp.asarray(IEMOCAP_CLASS_WEIGHTS) if config.class_weights
                   and dataset.num_classes == len(IEMOCAP_CLASS_WEIGHTS) else None)
        self.optimizer = create_optimizer(config.lr, config.l2)
        self.train_step, self.eval_step = compile_steps(
            self.model, self.optimizer, self.n_devices, class_weights=weights,
            unimodal_weight=config.unimodal_weight)
        example = self.batcher.build(dataset.split("train")[:1] * self.n_devices)
        if self.n_devices > 1:
            example = unreplicate(example)
        self.state = create_train_state(self.model, example, self.optimizer, config.seed)
        self.num_parameters = count_parameters(self.state.params)
        self.dims = {m: int(dataset.dims[m]) for m in dataset.modalities}

    def _device_state(self, state):
        return replicate(state, self.n_devices) if self.n_devices > 1 else state

    def _host_state(self, state):
        return unreplicate(state) if self.n_devices > 1 else state

    def train_epoch(self, epoch: int) -> dict:
        """One pass over the shuffled train split; returns host-side epoch metrics."""
        cfg = self.config
        active = jnp.asarray(cfg.balance and epoch >= cfg.warmup_epochs)
        state = self._device_state(self.state)
        outputs = []
        n = self.batcher.num_batches("train")
        report_every = max(1, n // 4) if n >= 20 else 0
        start = time.perf_counter()
        for i, batch in enumerate(self.batcher.batches("train", shuffle=True, seed=cfg.seed,
                                                       epoch=epoch)):
            state, metrics = self.train_step(state, batch, active)
            outputs.append(metrics)
            if report_every and (i + 1) % report_every == 0 and i + 1 < n:
                print(f"  epoch {epoch + 1}: {i + 1}/{n} batches "
                      f"({time.perf_counter() - start:.1f}s)", file=sys.stderr, flush=True)
        outputs = jax.device_get(outputs)
        self.state = self._host_state(state)
        elapsed = time.perf_counter() - start
        if self.n_devices > 1:
            outputs = [unreplicate(o) for o in outputs]
        counts = np.array([o["utterances"] for o in outputs], np.float64)
        conf = np.sum([o["confusion"] for o in outputs], axis=0)
        report = classification_report(conf, self.dataset.label_names)
        return {"loss": float(np.dot([o["loss"] for o in outputs], counts) / counts.sum()),
                "accuracy": report["accuracy"], "weighted_f1": report["weighted_f1"],
                "modality_f1": np.mean([o["modality_f1"] for o in outputs], 0).tolist(),
                "q": np.mean([o["q"] for o in outputs], 0).tolist(),
                "seconds": elapsed, "steps_per_s": len(outputs) / elapsed}

    def evaluate(self, split: str, params=None) -> dict:
        """Metrics of `params` (default: current) on a split: classification_report plus
        "loss" and "modality_f1" {m: weighted F1}."""
        params = self.state.params if params is None else params
        params = replicate(params, self.n_devices) if self.n_devices > 1 else params
        outputs = [self.eval_step(params, b) for b in self.batcher.batches(split)]
        outputs = jax.device_get(outputs)
        if self.n_devices > 1:
            outputs = [unreplicate(o) for o in outputs]
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


def train_and_evaluate(config: TrainConfig, out_dir: str, *, resume: bool = False,
                       overwrite: bool = False, n_devices: int | None = None,
                       log: Callable[[str], None] = print) -> dict:
    """Train, select the best epoch, evaluate, and write the run folder. Returns the report.

    The run folder holds config.json, metrics.jsonl (one object per epoch), checkpoints/ (orbax),
    report.json and report.md (and plots with matplotlib installed).
    """
    maybe_initialize_distributed()
    prepare_run_folder(out_dir, config, resume=resume, overwrite=overwrite)
    dataset = load_dataset(config)
    trainer = Trainer(config, dataset, n_devices=n_devices)
    tag = " [model selected on TEST: the release's protocol]" if config.selection == "test" else ""
    log(f"{dataset.name} ({dataset.layout}): {trainer.num_parameters:,} parameters, "
        f"{trainer.n_devices} device(s) ({jax.devices()[0].platform}), "
        f"{trainer.batcher.num_batches('train')} batches/epoch, "
        f"{len(trainer.batcher.budgets)} budget buckets{tag}")
    manager = ckpt.create_manager(os.path.join(out_dir, "checkpoints"), config.keep_checkpoints)
    meta = {"epoch": 0, "best_score": -1.0, "best_epoch": -1, "best": None,
            "fingerprint": config.fingerprint(), "dims": trainer.dims}
    metrics_path = os.path.join(out_dir, "metrics.jsonl")
    if resume and manager.latest_step() is not None:
        trainer.state, meta = ckpt.restore(manager, manager.latest_step(), trainer.state,
                                           fingerprint=config.fingerprint(), dims=trainer.dims)
        log(f"resumed from epoch {meta['epoch']}")
    history = []
    if os.path.exists(metrics_path):
        with open(metrics_path) as f:
            history = [json.loads(line) for line in f if line.strip()]
    history = [h for h in history if h["epoch"] <= meta["epoch"]]
    with open(metrics_path, "w") as f:
        f.writelines(json.dumps(h) + "\n" for h in history)
    for epoch in range(meta["epoch"], config.epochs):
        train = trainer.train_epoch(epoch)
        valid, test = trainer.evaluate("valid"), trainer.evaluate("test")
        score = (valid if config.selection == "valid" else test)["weighted_f1"]
        if score > meta["best_score"]:
            meta.update(best_score=score, best_epoch=epoch + 1,
                        best={"valid": valid, "test": test})
        meta["epoch"] = epoch + 1
        record = {"epoch": epoch + 1, "selection": config.selection, "train": train,
                  "valid": {k: valid[k] for k in ("loss", "accuracy", "weighted_f1", "macro_f1",
                                                  "modality_f1")},
                  "test": {k: test[k] for k in ("loss", "accuracy", "weighted_f1", "macro_f1",
                                                "modality_f1")}}
        history.append(record)
        with open(metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        ckpt.save(manager, epoch + 1, trainer.state, meta, score)
        q = " ".join(f"{m[0]}{v:.2f}" for m, v in zip(dataset.modalities, train["q"]))
        log(f"epoch {epoch + 1:3d}/{config.epochs} {train['seconds']:6.1f}s "
            f"loss {train['loss']:.4f} | valid acc {_fmt(valid['accuracy'])} "
            f"wF1 {_fmt(valid['weighted_f1'])} | test acc {_fmt(test['accuracy'])} "
            f"wF1 {_fmt(test['weighted_f1'])} | q {q} | {train['steps_per_s']:.2f} steps/s"
            + (" *" if meta["best_epoch"] == epoch + 1 else ""))
    manager.close()
    report = {
        "selection": config.selection,
        "selection_note": ("best epoch chosen on the TEST split (the release's protocol)"
                           if config.selection == "test" else
                           "best epoch chosen on the validation split"),
        "best_epoch": meta["best_epoch"], "epochs": config.epochs,
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
      CheckpointError: no checkpoint, or one whose config/widths do not fit.
    """
    from ambjax.train.config import config_from_json
    cfg_path = os.path.join(run_dir, "config.json")
    if not os.path.isfile(cfg_path):
        raise ckpt.CheckpointError(f"{run_dir}: no config.json (not a run folder)")
    with open(cfg_path) as f:
        blob = json.load(f)
    blob.pop("fingerprint", None)
    config = config_from_json(blob)
    if data:
        config = dataclasses.replace(config, data=data)
    dataset = load_dataset(config)
    trainer = Trainer(config, dataset, n_devices=n_devices or 1)
    manager = ckpt.create_manager(os.path.join(run_dir, "checkpoints"), config.keep_checkpoints)
    step = step if step is not None else ckpt.best_step(manager)
    if step is None:
        raise ckpt.CheckpointError(f"{run_dir}: no checkpoint saved")
    trainer.state, meta = ckpt.restore(manager, step, trainer.state,
                                       fingerprint=config.fingerprint(), dims=trainer.dims)
    manager.close()
    return {"checkpoint_epoch": step, "valid": trainer.evaluate("valid"),
            "test": trainer.evaluate("test")}
