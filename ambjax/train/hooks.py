"""Per-epoch extras of `train_and_evaluate`, as hooks a user can add to or replace.

A hook is any object with some of three methods (`Hook` has them all as no-ops):

    on_start(run: RunContext)                      after the programs compiled, before epoch 1
    on_epoch(run: RunContext, epoch: EpochResult)  -> notes or None, once per seed and epoch
    on_end(run: RunContext, reports: list[dict])   after the last epoch

`on_epoch` runs with signals held (`ambjax.interrupts.deferred`), so what the hooks write for an
epoch is written whole. It may return notes ({"stall": "<warning>"}) that join the seed's
`RunProgress` and so its checkpoint and report; hooks run in order, each seeing the progress
with the notes of those before it. `default_hooks()` is what a run uses unless told otherwise:
run records (config.json, metrics.jsonl), the stall warning, checkpoints (which also restore a
resumed run), the epoch's log line, TensorBoard event files (when tensorboardX is installed) and
the reports with their plots.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any, Mapping

import numpy as np

import ambjax.train.checkpoint as ckpt
from ambjax.data.standardize import Standardizer
from ambjax.errors import ConfigError
from ambjax.files import atomic_write, write_json
from ambjax.train.config import replace_key, to_dict
from ambjax.train.progress import RunProgress
from ambjax.train.report import write_report
from ambjax.train.runs import CONFIG_FILE, METRICS_FILE, STATS_FILE, read_history

logger = logging.getLogger("ambjax")


@dataclasses.dataclass
class RunContext:
    """A run in progress, as hooks see it.

    Attributes:
      trainer: the `Trainer` (its `state`, `seeds`, `dataset`, `config`).
      out_dir: the run folder; folders: each seed's folder (`out_dir` itself for one seed).
      progress: each seed's `RunProgress` (the loop replaces the entries after each epoch).
      resume: continue from the folders' checkpoints; primary: this process writes files.
      stats: the standardisation statistics (None: features used raw).
      data_fingerprint: the raw data's fingerprint, recorded in config.json.
      extra_config: more entries for config.json (e.g. the model's class for a composed model).
    """

    trainer: Any
    out_dir: str
    folders: list[str]
    progress: list[RunProgress]
    resume: bool = False
    primary: bool = True
    stats: Standardizer | None = None
    data_fingerprint: str | None = None
    extra_config: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def start_epoch(self) -> int:
        return self.progress[0].epoch


@dataclasses.dataclass(frozen=True)
class EpochResult:
    """One seed's epoch: `record` is its metrics.jsonl line ("epoch", "selection", "train",
    "valid", "test", and "lambda" {layer: [member values]} for models with differential
    attention); `valid` and `test` are the full metrics (with confusion matrices); `score` the
    selection score; `progress` the seed's progress including this epoch."""

    index: int
    seed: int
    folder: str
    epoch: int
    record: Mapping[str, Any]
    valid: Mapping[str, Any]
    test: Mapping[str, Any]
    score: float
    progress: RunProgress

    @property
    def is_best(self) -> bool:
        return self.progress.best_epoch == self.epoch


class Hook:
    """A hook that does nothing: subclass it and override what you need. `on_start` runs
    before the first epoch is recorded (in a run that does not resume, once that epoch is
    computed: the folder is not touched before), `on_epoch` after each epoch, `on_end` once
    the run is done."""

    def on_start(self, run: RunContext) -> None:
        pass

    def on_epoch(self, run: RunContext, epoch: EpochResult) -> Mapping[str, str] | None:
        return None

    def on_end(self, run: RunContext, reports: list[dict]) -> None:
        pass


class RunRecords(Hook):
    """config.json (the tree with the seed, the model's and the data's fingerprints),
    standardization.npz, and metrics.jsonl (one line per epoch; on resume cut back to the
    resumed epoch)."""

    def on_start(self, run: RunContext) -> None:
        if not run.primary:
            return
        config = run.trainer.config
        for folder, seed, progress in zip(run.folders, run.trainer.seeds, run.progress):
            blob = {**to_dict(replace_key(config, "run.seed", seed)),
                    "fingerprint": run.trainer.fingerprint,
                    "data_fingerprint": run.data_fingerprint, **run.extra_config}
            write_json(os.path.join(folder, CONFIG_FILE), blob)
            if run.stats is not None:
                run.stats.save(os.path.join(folder, STATS_FILE))
            path = os.path.join(folder, METRICS_FILE)
            history = read_history(path, progress.epoch)
            atomic_write(path, "".join(json.dumps(h) + "\n" for h in history))

    def on_epoch(self, run: RunContext, epoch: EpochResult) -> None:
        if run.primary:
            with open(os.path.join(epoch.folder, METRICS_FILE), "a") as f:
                f.write(json.dumps(epoch.record) + "\n")


STALL_AFTER_EPOCHS = 3
STALL_SHARE = 0.8           # one class predicted for at least this share of utterances ...
STALL_EXCESS = 0.3          # ... and for this much more than its true share


def stall_warning(valid: Mapping, label_names, epoch: int, recipe: str) -> str | None:
    """A one-line warning when, after `epoch` epochs, the model predicts one class for nearly
    all validation utterances (at least `STALL_SHARE`, and `STALL_EXCESS` more than that
    class's true share: a collapse, not a dominant class), with the likely causes; else
    None."""
    conf = np.asarray(valid["confusion"])
    predicted, actual = conf.sum(0), conf.sum(1)
    total = predicted.sum()
    if total == 0:
        return None
    top = int(predicted.argmax())
    share = predicted[top] / total
    if share < STALL_SHARE or share < actual[top] / total + STALL_EXCESS:
        return None
    hint = ("features of an unusual scale or a learning rate too small for them: try "
            "`recipe` robust (standardised features, AdamW 1e-3)" if recipe == "release" else
            "a learning rate too large or too small (`set` optim.lr=...), constant or "
            "uninformative features, or too few epochs")
    return (f"warning: after epoch {epoch} the model predicts '{label_names[top]}' "
            f"for {100 * share:.0f}% of validation utterances (it is not learning); likely "
            f"causes: {hint}")


class StallWarning(Hook):
    """Warns once per seed, from epoch `STALL_AFTER_EPOCHS` on, when the model predicts one
    class for nearly every validation utterance (`stall_warning`); the warning is noted in
    the progress ("stall") and so in the report."""

    def on_epoch(self, run: RunContext, epoch: EpochResult) -> Mapping[str, str] | None:
        if "stall" in epoch.progress.notes or epoch.epoch < STALL_AFTER_EPOCHS:
            return None
        message = stall_warning(epoch.valid, run.trainer.dataset.label_names, epoch.epoch,
                                run.trainer.config.run.recipe)
        if not message:
            return None
        logger.warning(message if len(run.folders) == 1 else f"seed {epoch.seed}: {message}")
        return {"stall": message}


class Checkpoints(Hook):
    """Orbax checkpoints of each seed's state and progress every epoch (the latest
    `run.keep_checkpoints` and the best are kept); what `resume` continues from."""

    def __init__(self):
        self.managers: list = []

    def on_start(self, run: RunContext) -> None:
        keep = run.trainer.config.run.keep_checkpoints
        self.managers = [ckpt.create_manager(os.path.join(f, "checkpoints"), keep)
                         for f in run.folders]

    def on_epoch(self, run: RunContext, epoch: EpochResult) -> None:
        ckpt.save(self.managers[epoch.index], epoch.epoch, run.trainer.seed_state(epoch.index),
                  epoch.progress.to_json(), epoch.score)

    def on_end(self, run: RunContext, reports: list[dict]) -> None:
        for manager in self.managers:
            manager.close()


def _pct(x: float) -> str:
    return f"{100 * x:5.2f}"


class EpochLog(Hook):
    """The epoch's one-line summary (logger "ambjax", INFO)."""

    def on_epoch(self, run: RunContext, epoch: EpochResult) -> None:
        trainer, r = run.trainer, epoch.record
        train, valid, test = r["train"], r["valid"], r["test"]
        q = " ".join(f"{m[0]}{v:.2f}" for m, v in zip(trainer.dataset.modalities, train["q"]))
        who = f"seed {epoch.seed} " if len(run.folders) > 1 else ""
        logger.info(
            f"{who}epoch {epoch.epoch:3d}/{trainer.config.schedule.epochs} "
            f"{train['seconds']:6.1f}s loss {train['loss']:.4f} | valid acc "
            f"{_pct(valid['accuracy'])} wF1 {_pct(valid['weighted_f1'])} | test acc "
            f"{_pct(test['accuracy'])} wF1 {_pct(test['weighted_f1'])} | q {q} | "
            f"{train['steps_per_s']:.2f} steps/s" + (" *" if epoch.is_best else ""))


def scalars(record: Mapping[str, Any], modalities) -> dict[str, float]:
    """A metrics.jsonl record as flat scalar tags: "train/loss", "valid/weighted_f1",
    "test/modality_f1/text", "q/audio", "lambda/<layer>/<member>", ..."""
    out = {}
    for split in ("train", "valid", "test"):
        part = record[split]
        for name in ("loss", "accuracy", "weighted_f1", "macro_f1"):
            if name in part:
                out[f"{split}/{name}"] = float(part[name])
        f1 = part.get("modality_f1")
        if isinstance(f1, Mapping):
            out.update({f"{split}/modality_f1/{m}": float(v) for m, v in f1.items()})
        elif f1 is not None:
            out.update({f"{split}/modality_f1/{m}": float(v) for m, v in zip(modalities, f1)})
    out.update({f"q/{m}": float(v) for m, v in zip(modalities, record["train"]["q"])})
    for layer, values in record.get("lambda", {}).items():
        for i, v in enumerate(values):
            out[f"lambda/{layer}/{i}"] = float(v)
    return out


class TensorBoard(Hook):
    """TensorBoard event files in `<seed folder>/tensorboard`: every scalar of `scalars` per
    epoch (losses, accuracy, weighted and macro F1, per-modality F1, q, lambda). Needs the
    optional extra tensorboardX (`pip install ambjax[tensorboard]`).

    Raises:
      ConfigError: tensorboardX is not installed.
    """

    FOLDER = "tensorboard"

    def __init__(self):
        try:
            from tensorboardX import SummaryWriter
        except ImportError:
            raise ConfigError("TensorBoard event files need tensorboardX (pip install "
                              "'ambjax[tensorboard]')") from None
        self._writer_class = SummaryWriter
        self.writers: list = []

    @staticmethod
    def available() -> bool:
        try:
            import tensorboardX  # noqa: F401
        except ImportError:
            return False
        return True

    def on_start(self, run: RunContext) -> None:
        if run.primary:
            self.writers = [self._writer_class(os.path.join(f, self.FOLDER))
                            for f in run.folders]

    def on_epoch(self, run: RunContext, epoch: EpochResult) -> None:
        if not self.writers:
            return
        writer = self.writers[epoch.index]
        for tag, value in scalars(epoch.record, run.trainer.dataset.modalities).items():
            writer.add_scalar(tag, value, epoch.epoch)
        writer.flush()

    def on_end(self, run: RunContext, reports: list[dict]) -> None:
        for writer in self.writers:
            writer.close()


class Reports(Hook):
    """report.json, report.md and (with matplotlib) the plots of each seed's folder."""

    def on_end(self, run: RunContext, reports: list[dict]) -> None:
        if not run.primary:
            return
        for folder, report in zip(run.folders, reports):
            write_report(folder, report, read_history(os.path.join(folder, METRICS_FILE),
                                                      report["epochs"]))


def default_hooks() -> list[Hook]:
    """The hooks of a run unless told otherwise (see the module docstring)."""
    # StallWarning before Checkpoints, so that its note is saved with the epoch's checkpoint
    hooks: list[Hook] = [RunRecords(), StallWarning(), Checkpoints(), EpochLog()]
    if TensorBoard.available():
        hooks.append(TensorBoard())
    return hooks + [Reports()]
