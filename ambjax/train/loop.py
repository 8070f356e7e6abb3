"""The training loop: data -> graphs -> jit/pmap steps -> per-epoch evaluation, checkpoints,
metrics.jsonl and the final report. `train_and_evaluate` is what `experiments.train` runs."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
from typing import Callable, Sequence

import jax
import numpy as np

import ambjax.interrupts as interrupts
from ambjax.data import DataFormatError, load_features, make_synthetic
from ambjax.data.dataset import DialogueDataset
from ambjax.data.standardize import Standardizer, constant_modalities
import ambjax.train.checkpoint as ckpt
import ambjax.train.distributed as distributed
import ambjax.train.run_folder as run_folder
from ambjax.train.config import (ConfigError, DataConfig, ExperimentConfig, fingerprint,
                                 from_dict, replace_key, to_dict, validate)
from ambjax.errors import Interrupted
from ambjax.train.report import write_report
from ambjax.train.run_folder import RunFolderError
from ambjax.train.trainer import Trainer, model_for


STATS_FILE = "standardization.npz"


def _silent(_: str) -> None:
    pass


def load_dataset(data: DataConfig, *,
                 log: Callable[[str], None] | None = None) -> DialogueDataset:
    """The dataset of a run before standardisation: the feature file `data.path` (or the
    bundled synthetic set), restricted to `data.modalities`, without constant modalities when
    `data.drop_constant`. Constant modalities are reported through `log` whatever the
    settings. `standardized` applies `data.standardize`."""
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
    constant = constant_modalities(dataset)
    if constant:
        kept = tuple(m for m in dataset.modalities if m not in constant)
        if data.drop_constant and not kept:
            raise DataFormatError(f"{where}: every modality is constant over the train split; "
                                  "the features carry no information")
        if log:
            action = (f"left out (data.drop_constant); training on {list(kept)}"
                      if data.drop_constant else "kept; --recipe robust leaves them out")
            log(f"warning: modalities {list(constant)} are constant (e.g. all zero) over the "
                f"train split and carry no information: {action}")
        if data.drop_constant:
            dataset = dataclasses.replace(dataset, modalities=kept)
    return dataset


def standardized(dataset: DialogueDataset, data: DataConfig,
                 stats: Standardizer | None = None) -> tuple[DialogueDataset, Standardizer | None]:
    """(`dataset` standardised with `stats` or its own train statistics, the statistics) when
    `data.standardize`, else (`dataset`, None)."""
    if not data.standardize:
        return dataset, None
    stats = stats or Standardizer.fit(dataset)
    return stats.apply(dataset), stats


def read_run_config(run_dir: str) -> tuple[ExperimentConfig, dict]:
    """The config tree of a run folder and the fingerprints recorded beside it ("fingerprint",
    "data_fingerprint"; None where absent), from its config.json."""
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
    recorded = {k: blob.pop(k, None) for k in ("fingerprint", "data_fingerprint")}
    try:
        return validate(from_dict(blob)), recorded
    except ConfigError as e:
        raise ckpt.CheckpointError(f"{cfg_path}: {e}") from None


def _fmt(x: float) -> str:
    return f"{100 * x:5.2f}"


STALL_AFTER_EPOCHS = 3
STALL_SHARE = 0.8           # one class predicted for at least this share of utterances ...
STALL_EXCESS = 0.3          # ... and for this much more than its true share


def stall_warning(valid: dict, label_names, epoch: int, config: ExperimentConfig) -> str | None:
    """A one-line warning when, after `epoch` epochs, the model predicts one class for nearly
    all validation utterances (at least 80%, and 30 points more than that class's true share:
    a collapse, not a dominant class), with the likely causes and the flags to try; else
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
            "--recipe robust (standardised features, AdamW 1e-3)"
            if config.run.recipe == "release" else
            "a learning rate too large or too small (--set optim.lr=...), constant or "
            "uninformative features, or too few epochs")
    return (f"warning: after epoch {epoch} the model predicts '{label_names[top]}' "
            f"for {100 * share:.0f}% of validation utterances (it is not learning); likely "
            f"causes: {hint}")


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


def seed_folders(out_dir: str, seeds: Sequence[int] | None) -> list[str]:
    """The run folder of each seed: `out_dir` itself for a single run, `out_dir/seed<k>`
    when `seeds` are given."""
    return [out_dir] if not seeds else [os.path.join(out_dir, f"seed{s}") for s in seeds]


@dataclasses.dataclass(frozen=True)
class PreparedRun:
    """What `prepare_run` checked and loaded: the (standardised) dataset, its statistics, the
    run folders and the arguments of `run_folder.check` (`plan`)."""

    dataset: DialogueDataset
    stats: Standardizer | None
    folders: list[str]
    plan: dict


def prepare_run(config: ExperimentConfig, out_dir: str, *, seeds: Sequence[int] | None = None,
                resume: bool = False, overwrite: bool = False, allow_changes: bool = False,
                log: Callable[[str], None] = _silent) -> PreparedRun:
    """Every check of a run that needs neither a device nor a compile: the config tree, the
    data (loaded, restricted, standardised) and the folder (`run_folder.check`). Read-only;
    `experiments.ablate` runs it for every variant before the first one trains.

    Raises:
      ConfigError, DataFormatError, RunFolderError: what is wrong, in one line.
    """
    validate(config)
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite exclude each other: resume continues the "
                          "run in the folder, overwrite replaces it")
    raw = load_dataset(config.data, log=log)
    dataset, stats = standardized(raw, config.data)
    plan = dict(config=to_dict(config), data_fingerprint=raw.fingerprint(), seeds=seeds,
                resume=resume, overwrite=overwrite, allow_changes=allow_changes)
    run_folder.check(out_dir, fingerprint=fingerprint(model_for(config, dataset)), **plan)
    return PreparedRun(dataset=dataset, stats=stats, folders=seed_folders(out_dir, seeds),
                       plan=plan)


def train_and_evaluate(config: ExperimentConfig, out_dir: str, *, seeds: Sequence[int] | None = None,
                       resume: bool = False, overwrite: bool = False,
                       allow_changes: bool = False, n_devices: int | None = None,
                       log: Callable[[str], None] = print) -> dict:
    """Train, select the best epoch, evaluate, and write the run folder(s).

    With `seeds`, all seeds train together as one vmapped program (`Trainer`); each gets its
    own run folder `out_dir/seed<k>` and `out_dir` gets seeds_report.json / .md (mean +- std of
    every reported metric). Without, `config.run.seed` trains into `out_dir`.

    The configuration, the data and the folder are checked (`run_folder.check`: a folder
    holding anything but a run is refused; `resume` must keep the seeds, the model, the data
    and, unless `allow_changes`, every other setting but the epoch count), the folders locked,
    and every program compiled (with a memory check), before anything on disk is changed. A
    run folder holds config.json (the config tree and the model's and data's fingerprints),
    metrics.jsonl (one object per epoch), checkpoints/ (orbax), report.json and report.md
    (and plots with matplotlib installed).

    Returns:
      The report (one run), or {"seeds", "reports": {seed: report}, "summary"} with `seeds`.

    Raises:
      Interrupted: SIGINT or SIGTERM arrived (with `raise_on_signals` installed); its `kept`
        says which checkpoint is kept. Epoch records and checkpoints are written whole.
    """
    primary = distributed.is_primary()
    if not primary:
        log = _silent
    prepared = prepare_run(config, out_dir, seeds=seeds, resume=resume, overwrite=overwrite,
                           allow_changes=allow_changes, log=log)
    dataset, stats, folders, plan = (prepared.dataset, prepared.stats, prepared.folders,
                                     prepared.plan)
    data_fingerprint = plan["data_fingerprint"]
    existed = os.path.isdir(out_dir)
    locks = run_folder.lock_all(out_dir, folders) if primary else []
    try:
        try:
            trainer = Trainer(config, dataset, n_devices=n_devices, seeds=seeds)
            tag = (" [model selected on TEST: the release's protocol]"
                   if config.run.selection == "test" else "")
            log(f"{dataset.name} ({dataset.layout}): {trainer.num_parameters:,} parameters, "
                f"{len(trainer.seeds)} seed(s) as one program, "
                f"{trainer.n_devices} device(s) ({jax.devices()[0].platform}), "
                f"{trainer.batcher.num_batches('train')} batches/epoch, "
                f"{len(trainer.batcher.budgets)} budget buckets{tag}")
            trainer.compile(log)
        except BaseException as e:
            run_folder.release_all(locks, cleanup=True)   # refused before any work
            locks = []
            if isinstance(e, (KeyboardInterrupt, Interrupted)):
                raise Interrupted(getattr(e, "signum", signal.SIGINT),
                                  f"no epoch had run; {out_dir} is as it was" if existed
                                  else "no epoch had run; nothing was written") from None
            raise
        if primary:
            run_folder.check(out_dir, fingerprint=trainer.fingerprint, **plan)
            if overwrite:
                run_folder.clear(out_dir)
        distributed.barrier("ambjax-run-folder-ready")
        reports = _train(trainer, out_dir, folders, stats=stats, resume=resume,
                         data_fingerprint=data_fingerprint, log=log)
        if not seeds:
            return reports[0]
        summary = summarize_seeds(dict(zip(trainer.seeds, reports)))
        if primary:
            write_seeds_report(out_dir, summary)
        t = summary["test"]
        log(f"{len(trainer.seeds)} seeds: test acc {100 * t['accuracy']['mean']:.2f} ± "
            f"{100 * t['accuracy']['std']:.2f}, wF1 {100 * t['weighted_f1']['mean']:.2f} ± "
            f"{100 * t['weighted_f1']['std']:.2f}; {os.path.join(out_dir, 'seeds_report.md')}")
        return {"seeds": list(trainer.seeds), "reports": dict(zip(trainer.seeds, reports)),
                "summary": summary}
    finally:
        run_folder.release_all(locks)


def _resume_epoch(folders: list[str]) -> int | None:
    """The epoch every seed can resume from (the latest one all have), or None when no seed
    has a checkpoint. Reads the folders only.

    Raises:
      RunFolderError: the seeds have no checkpoint epoch in common.
    """
    steps = [run_folder.checkpoint_steps(f) for f in folders]
    if not any(steps):
        return None
    target = min(s[-1] if s else 0 for s in steps)
    if target == 0 or any(target not in s for s in steps):
        raise RunFolderError(f"seed folders {folders} hold checkpoints of different epochs "
                             f"{[s[-1] if s else None for s in steps]} and no common one; "
                             "resume is impossible, use --overwrite")
    return target


def _train(trainer: Trainer, out_dir: str, folders: list[str], *,
           stats: Standardizer | None, resume: bool, data_fingerprint: str,
           log: Callable[[str], None]) -> list[dict]:
    """The epochs of `train_and_evaluate` in checked, locked run folders (one per seed)."""
    config, dataset = trainer.config, trainer.dataset
    n = len(folders)
    primary = distributed.is_primary()
    start_epoch = _resume_epoch(folders) if resume else None
    if primary:
        for folder in folders:
            os.makedirs(folder, exist_ok=True)
    distributed.barrier("ambjax-seed-folders")
    managers = [ckpt.create_manager(os.path.join(f, "checkpoints"), config.run.keep_checkpoints)
                for f in folders]
    metas = [{"epoch": 0, "best_score": -1.0, "best_epoch": -1, "best": None,
              "fingerprint": trainer.fingerprint, "dims": trainer.dims} for _ in folders]
    if start_epoch is not None:
        states = []
        for k, manager in enumerate(managers):
            for step in manager.all_steps():   # a seed saved past the others (killed mid-epoch)
                if step > start_epoch:
                    manager.delete(step)
            state, metas[k] = ckpt.restore(manager, start_epoch, trainer.seed_state(k),
                                           fingerprint=trainer.fingerprint, dims=trainer.dims)
            states.append(state)
        trainer.state = trainer.to_device(states)
        log(f"resumed from epoch {start_epoch}")
    configs = [replace_key(config, "run.seed", seed) for seed in trainer.seeds]
    histories = []
    for folder, cfg, meta in zip(folders, configs, metas):
        history = []
        if primary:
            run_folder.write_json(os.path.join(folder, "config.json"),
                                  {**to_dict(cfg), "fingerprint": trainer.fingerprint,
                                   "data_fingerprint": data_fingerprint})
            if stats is not None:
                stats.save(os.path.join(folder, STATS_FILE))
            path = os.path.join(folder, "metrics.jsonl")
            history = read_history(path, meta["epoch"], log)
            run_folder.atomic_write(path, "".join(json.dumps(h) + "\n" for h in history))
        histories.append(history)
    epochs = config.schedule.epochs
    try:
        for epoch in range(metas[0]["epoch"], epochs):
            _epoch(trainer, epoch, folders, managers, metas, histories, log)
    except (KeyboardInterrupt, Interrupted) as e:
        completed = metas[0]["epoch"]              # recorded whole (signals are held then)
        kept = (f"the checkpoint of epoch {completed} is kept in {out_dir} (continue with "
                "--resume)" if completed else f"no epoch had completed; nothing is kept in "
                f"{out_dir}")
        raise Interrupted(getattr(e, "signum", signal.SIGINT), kept) from None
    reports = []
    for k in range(n):
        managers[k].close()
        meta = metas[k]
        report = {
            "selection": config.run.selection,
            "selection_note": ("best epoch chosen on the TEST split (the release's protocol)"
                               if config.run.selection == "test" else
                               "best epoch chosen on the validation split"),
            "best_epoch": meta["best_epoch"], "epochs": epochs, "seed": trainer.seeds[k],
            "devices": trainer.n_devices, "platform": jax.devices()[0].platform,
            "parameters": trainer.num_parameters, "dataset": dataset.name,
            "layout": dataset.layout, "label_names": list(dataset.label_names),
            "recipe": config.run.recipe, "modalities": list(dataset.modalities),
            "warning": meta.get("stall"),
            "valid": meta["best"]["valid"], "test": meta["best"]["test"],
        }
        if primary:
            write_report(folders[k], report, histories[k])
        log(f"{'seed %d: ' % trainer.seeds[k] if n > 1 else ''}best epoch "
            f"{report['best_epoch']} ({report['selection_note']}): test acc "
            f"{_fmt(report['test']['accuracy'])} wF1 {_fmt(report['test']['weighted_f1'])}; "
            f"report in {folders[k]}")
        reports.append(report)
    return reports


METRIC_KEYS = ("loss", "accuracy", "weighted_f1", "macro_f1", "modality_f1")


def _epoch(trainer: Trainer, epoch: int, folders: list[str], managers: list, metas: list[dict],
           histories: list[list[dict]], log: Callable[[str], None]) -> None:
    """Train and evaluate epoch `epoch` for every seed, then record it: the metrics line and
    the checkpoint of each seed are written with signals held (`interrupts.deferred`), so an
    epoch is recorded whole or not at all."""
    config, dataset = trainer.config, trainer.dataset
    n, epochs = len(folders), config.schedule.epochs
    primary = distributed.is_primary()
    trains = trainer.train_epoch(epoch)
    valids, tests = trainer.evaluate("valid"), trainer.evaluate("test")
    with interrupts.deferred():
        for k in range(n):
            train, valid, test, meta = trains[k], valids[k], tests[k], metas[k]
            if meta.get("stall") is None and epoch + 1 >= STALL_AFTER_EPOCHS:
                stall = stall_warning(valid, dataset.label_names, epoch + 1, config)
                if stall:
                    log(stall if n == 1 else f"seed {trainer.seeds[k]}: {stall}")
                    meta["stall"] = stall
            score = (valid if config.run.selection == "valid" else test)["weighted_f1"]
            if score > meta["best_score"]:
                meta.update(best_score=score, best_epoch=epoch + 1,
                            best={"valid": valid, "test": test})
            meta["epoch"] = epoch + 1
            record = {"epoch": epoch + 1, "selection": config.run.selection, "train": train,
                      "valid": {x: valid[x] for x in METRIC_KEYS},
                      "test": {x: test[x] for x in METRIC_KEYS}}
            histories[k].append(record)
            if primary:
                with open(os.path.join(folders[k], "metrics.jsonl"), "a") as f:
                    f.write(json.dumps(record) + "\n")
            ckpt.save(managers[k], epoch + 1, trainer.seed_state(k), meta, score)
            q = " ".join(f"{m[0]}{v:.2f}" for m, v in zip(dataset.modalities, train["q"]))
            who = f"seed {trainer.seeds[k]} " if n > 1 else ""
            log(f"{who}epoch {epoch + 1:3d}/{epochs} {train['seconds']:6.1f}s "
                f"loss {train['loss']:.4f} | valid acc {_fmt(valid['accuracy'])} "
                f"wF1 {_fmt(valid['weighted_f1'])} | test acc {_fmt(test['accuracy'])} "
                f"wF1 {_fmt(test['weighted_f1'])} | q {q} | {train['steps_per_s']:.2f} steps/s"
                + (" *" if meta["best_epoch"] == epoch + 1 else ""))


def summarize_seeds(reports: dict) -> dict:
    """Mean and sample std over seeds of every reported metric: {"seeds", "selection",
    split: {metric: {"mean", "std", "values"}}} for accuracy, weighted and macro F1, each
    modality's weighted F1 ("modality_f1/<m>") and each class's F1 ("f1/<class>")."""
    seeds = list(reports)
    first = reports[seeds[0]]
    out = {"seeds": seeds, "selection": first["selection"], "recipe": first.get("recipe")}
    for split in ("valid", "test"):
        names = ["accuracy", "weighted_f1", "macro_f1"] + [
            f"modality_f1/{m}" for m in first[split]["modality_f1"]] + [
            f"f1/{c}" for c in first[split]["per_class_f1"]]

        def value(report, name):
            part = report[split]
            if name.startswith("modality_f1/"):
                return part["modality_f1"][name.split("/", 1)[1]]
            if name.startswith("f1/"):
                return part["per_class_f1"][name.split("/", 1)[1]]
            return part[name]

        out[split] = {}
        for name in names:
            values = np.array([value(reports[s], name) for s in seeds], np.float64)
            out[split][name] = {"mean": float(values.mean()),
                                "std": float(values.std(ddof=1)) if len(seeds) > 1 else 0.0,
                                "values": values.tolist()}
    return out


def write_seeds_report(out_dir: str, summary: dict) -> None:
    """seeds_report.json and seeds_report.md (mean +- std, percent) in `out_dir`."""
    run_folder.write_json(os.path.join(out_dir, "seeds_report.json"), summary)
    lines = [f"# {len(summary['seeds'])} seeds: {', '.join(map(str, summary['seeds']))}", "",
             f"Model selection on {summary['selection']}; recipe {summary.get('recipe')}. "
             "Mean ± sample std over seeds, percent.", "",
             "| metric | valid | test |", "|---|---|---|"]
    for name in summary["test"]:
        cells = [f"{100 * summary[s][name]['mean']:.2f} ± {100 * summary[s][name]['std']:.2f}"
                 for s in ("valid", "test")]
        lines.append(f"| {name} | {cells[0]} | {cells[1]} |")
    run_folder.atomic_write(os.path.join(out_dir, "seeds_report.md"), "\n".join(lines) + "\n")


def evaluate_checkpoint(run_dir: str, *, data: str | None = None, step: int | None = None,
                        n_devices: int | None = None) -> dict:
    """Evaluate a saved checkpoint of a run folder (default: its best) on valid and test.

    Args:
      run_dir: a folder written by `train_and_evaluate` (one seed's folder).
      data: a feature file to evaluate on instead of the run's own data (its widths must match).
      step: the checkpoint epoch (default: the best kept one).

    Raises:
      CheckpointError: no run folder or checkpoint, or one whose config/widths do not fit.
    """
    config, recorded = read_run_config(run_dir)
    if data:
        config = dataclasses.replace(config, data=dataclasses.replace(config.data, path=data))
    stats = None
    if config.data.standardize:
        stats_path = os.path.join(run_dir, STATS_FILE)
        if not os.path.isfile(stats_path):
            raise ckpt.CheckpointError(f"{run_dir}: the run standardised its features but "
                                       f"{STATS_FILE} is missing")
        stats = Standardizer.load(stats_path)
    raw = load_dataset(config.data)
    trained_on = recorded["data_fingerprint"]
    if not data and trained_on not in (None, raw.fingerprint()):
        raise ckpt.CheckpointError(
            f"{run_dir}: its data {config.data.path or 'synthetic data'} changed since the run "
            "trained on it (same widths, other content); pass --data to evaluate on this file "
            "anyway")
    dataset, _ = standardized(raw, config.data, stats)
    kept = run_folder.checkpoint_steps(run_dir)
    if not kept:
        raise ckpt.CheckpointError(f"{run_dir}: no checkpoint saved")
    if step is not None and step not in kept:
        raise ckpt.CheckpointError(f"{run_dir}: no checkpoint of epoch {step}; kept epochs: "
                                   f"{kept}")
    trainer = Trainer(config, dataset, n_devices=n_devices or 1)
    manager = ckpt.create_manager(os.path.join(run_dir, "checkpoints"),
                                  config.run.keep_checkpoints)
    step = step if step is not None else ckpt.best_step(manager)
    state, _ = ckpt.restore(manager, step, trainer.seed_state(0), fingerprint=trainer.fingerprint,
                            dims=trainer.dims)
    trainer.state = trainer.to_device([state])
    manager.close()
    return {"checkpoint_epoch": step, "valid": trainer.evaluate("valid")[0],
            "test": trainer.evaluate("test")[0]}
