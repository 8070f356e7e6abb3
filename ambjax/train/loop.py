"""The training loop: data -> graphs -> jit/pmap steps -> per-epoch evaluation, with the
extras (records, checkpoints, logs, TensorBoard, reports) as hooks (`ambjax.train.hooks`).
`train_and_evaluate` is what `experiments.train` runs."""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import signal
from typing import Callable, Mapping, Sequence

import jax

import ambjax.interrupts as interrupts
import ambjax.train.checkpoint as ckpt
import ambjax.train.distributed as distributed
import ambjax.train.run_folder as run_folder
from ambjax.data.assemble import load_dataset, standardized
from ambjax.data.dataset import DialogueDataset
from ambjax.data.standardize import Standardizer
from ambjax.errors import ConfigError, DivergedError, Interrupted, RunFolderError
from ambjax.nn.attention import lambda_parameters, layer_lambdas
from ambjax.nn.model import AMBDSGDN
from ambjax.nn.protocol import DialogueModel
from ambjax.train.compile import compiles_beside_steps
from ambjax.train.config import ExperimentConfig, fingerprint, to_dict, validate
from ambjax.train.executables import dataset_store
from ambjax.train.hooks import EpochResult, Hook, RunContext, default_hooks
from ambjax.train.progress import RunProgress
from ambjax.train.report import summarize_seeds, write_seeds_report
from ambjax.train.trainer import Trainer, model_for

logger = logging.getLogger("ambjax")

ModelFactory = Callable[[DialogueDataset], DialogueModel]
"""Builds a run's model for its (standardised) dataset; None: AMB-DSGDN from config.model."""


@dataclasses.dataclass(frozen=True)
class PreparedRun:
    """What `prepare_run` checked and loaded: the (standardised) dataset, its statistics, the
    model, the run folders and the arguments of `run_folder.check` (`plan`)."""

    dataset: DialogueDataset
    stats: Standardizer | None
    model: DialogueModel
    folders: list[str]
    plan: dict


def prepare_run(config: ExperimentConfig, out_dir: str, *, model: ModelFactory | None = None,
                seeds: Sequence[int] | None = None, resume: bool = False,
                overwrite: bool = False, allow_changes: bool = False) -> PreparedRun:
    """Every check of a run that needs neither a device nor a compile: the config tree, the
    data (loaded, restricted, standardised) and the folder (`run_folder.check`). Read-only;
    `experiments.ablate` runs it for every variant before the first one trains. For a model
    other than AMB-DSGDN the folder's fingerprint is checked once the Trainer knows it.

    Raises:
      ConfigError, DataFormatError, RunFolderError: what is wrong, in one line.
    """
    validate(config)
    if resume and overwrite:
        raise ConfigError("`resume` and `overwrite` exclude each other: resume continues the "
                          "run in the folder, overwrite replaces it")
    raw = load_dataset(config.data, store=dataset_store())
    dataset, stats = standardized(raw, config.data)
    built = model(dataset) if model is not None else AMBDSGDN(model_for(config, dataset))
    plan = dict(config=to_dict(config), data_fingerprint=raw.fingerprint(), seeds=seeds,
                resume=resume, overwrite=overwrite, allow_changes=allow_changes)
    run_folder.check(out_dir, fingerprint=fingerprint(built.config)
                     if isinstance(built, AMBDSGDN) else None, **plan)
    return PreparedRun(dataset=dataset, stats=stats, model=built,
                       folders=run_folder.seed_folders(out_dir, seeds), plan=plan)


def train_and_evaluate(config: ExperimentConfig, out_dir: str, *,
                       model: ModelFactory | None = None, seeds: Sequence[int] | None = None,
                       resume: bool = False, overwrite: bool = False,
                       allow_changes: bool = False, n_devices: int | None = None,
                       hooks: Sequence[Hook] | None = None,
                       extra_hooks: Sequence[Hook] = ()) -> dict:
    """Train, select the best epoch, evaluate, and write the run folder(s).

    With `seeds`, all seeds train together as one vmapped program (`Trainer`); each gets its
    own run folder `out_dir/seed<k>` and `out_dir` gets seeds_report.json / .md (mean +- std of
    every reported metric). Without, `config.run.seed` trains into `out_dir`.

    The configuration, the data and the folder are checked (`run_folder.check`: a folder
    holding anything but a run is refused; `resume` must keep the seeds, the model, the data
    and, unless `allow_changes`, every other setting but the epoch count), the folders locked,
    and every program compiled (with a memory check), before anything on disk is changed: a
    run that does not resume clears the folder (`overwrite`) and writes only once its first
    epoch is computed too (on an accelerator that epoch trains while the later programs
    compile: `ambjax.train.compile.compiles_beside_steps`). With
    the default hooks a run folder holds config.json, metrics.jsonl (one object per epoch),
    checkpoints/ (orbax), report.json and report.md (and plots with matplotlib, tensorboard/
    with tensorboardX). Progress is logged to the "ambjax" logger.

    Args:
      model: builds the model from the dataset (any `DialogueModel`); None: AMB-DSGDN.
      hooks: replace `default_hooks()`; extra_hooks: run after them.

    Returns:
      The report (one run), or {"seeds", "reports": {seed: report}, "summary"} with `seeds`.

    Raises:
      Interrupted: SIGINT or SIGTERM arrived (with `raise_on_signals` installed); its `kept`
        says which checkpoint is kept. Epoch records and checkpoints are written whole.
    """
    hooks = list(default_hooks() if hooks is None else hooks) + list(extra_hooks)
    primary = distributed.is_primary()
    prepared = prepare_run(config, out_dir, model=model, seeds=seeds, resume=resume,
                           overwrite=overwrite, allow_changes=allow_changes)
    existed = os.path.isdir(out_dir)
    locks = run_folder.lock_all(out_dir, prepared.folders) if primary else []
    trainer = None
    try:
        try:
            trainer = Trainer.from_config(config, prepared.dataset, model=prepared.model,
                                          n_devices=n_devices, seeds=seeds)
            tag = (" [model selected on TEST: the release's protocol]"
                   if config.run.selection == "test" else "")
            logger.info(f"{trainer.dataset.name} ({trainer.dataset.layout}): "
                        f"{trainer.num_parameters:,} parameters, {len(trainer.seeds)} seed(s) "
                        f"as one program, {trainer.n_devices} device(s) "
                        f"({jax.devices()[0].platform}), "
                        f"{trainer.batcher.num_batches('train')} batches/epoch, "
                        f"{trainer.bucket_counts[0]} padding bucket(s)"
                        + (f", {trainer.bucket_counts[1]} merged into larger ones"
                           if trainer.bucket_counts[1] else "") + tag)
            if primary:   # again under the locks (and with the model's own fingerprint)
                run_folder.check(out_dir, fingerprint=trainer.fingerprint, **prepared.plan)
            # on an accelerator a fresh run's first epoch trains while its later programs
            # compile; nothing on disk changes before every program is compiled (the memory
            # checked) and the first epoch computed
            trainer.compile(wait=resume or not compiles_beside_steps(jax.default_backend()))
            first = (_compute_epoch(trainer, 0)
                     if not resume and config.schedule.epochs > 0 else None)
            trainer.wait_compiled()
        except BaseException as e:
            run_folder.release_all(locks, cleanup=True)   # refused before any work
            locks = []
            unchanged = f"{out_dir} is as it was" if existed else "nothing was written"
            if isinstance(e, (KeyboardInterrupt, Interrupted)):
                raise Interrupted(getattr(e, "signum", signal.SIGINT),
                                  f"no epoch was recorded; {unchanged}") from None
            if isinstance(e, DivergedError):
                raise DivergedError(f"{e}; {unchanged}") from None
            raise
        if primary and overwrite:
            run_folder.clear(out_dir)
        distributed.barrier("ambjax-run-folder-ready")
        if primary:
            for folder in prepared.folders:
                os.makedirs(folder, exist_ok=True)
        distributed.barrier("ambjax-seed-folders")
        progress = [RunProgress(fingerprint=trainer.fingerprint, dims=trainer.dims)
                    for _ in prepared.folders]
        run = RunContext(trainer=trainer, out_dir=out_dir, folders=prepared.folders,
                         progress=progress, resume=resume, primary=primary,
                         stats=prepared.stats,
                         data_fingerprint=prepared.plan["data_fingerprint"],
                         extra_config={"model_class": type(trainer.model).__name__})
        reports = _train(run, hooks, first)
        if not seeds:
            return reports[0]
        summary = summarize_seeds(dict(zip(trainer.seeds, reports)))
        if primary:
            write_seeds_report(out_dir, summary)
        t = summary["test"]
        logger.info(f"{len(trainer.seeds)} seeds: test acc {100 * t['accuracy']['mean']:.2f} "
                    f"± {100 * t['accuracy']['std']:.2f}, wF1 "
                    f"{100 * t['weighted_f1']['mean']:.2f} ± "
                    f"{100 * t['weighted_f1']['std']:.2f}; "
                    f"{os.path.join(out_dir, 'seeds_report.md')}")
        return {"seeds": list(trainer.seeds), "reports": dict(zip(trainer.seeds, reports)),
                "summary": summary}
    finally:
        if trainer is not None:       # compiles not started yet, after a failure: dropped
            trainer.stop_compiling()
        run_folder.release_all(locks)


def _resume_epoch(folders: list[str]) -> int | None:
    """The epoch every seed can resume from (the latest one all have), or None when no seed
    has a checkpoint.

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
                             "resume is impossible, use `overwrite`")
    return target


def restore(run: RunContext) -> None:
    """Continue `run` from the latest checkpoint every seed has (nothing when no seed has
    one): the state into the trainer, each seed's `RunProgress`; checkpoints a seed saved
    past the others (a run killed mid-epoch) are removed."""
    start = _resume_epoch(run.folders)
    if start is None:
        return
    trainer = run.trainer
    states = []
    for k, folder in enumerate(run.folders):
        manager = ckpt.create_manager(os.path.join(folder, "checkpoints"),
                                      trainer.config.run.keep_checkpoints)
        try:
            for step in manager.all_steps():
                if step > start:
                    manager.delete(step)
            state, meta = ckpt.restore(manager, start, trainer.abstract_seed_state,
                                       fingerprint=trainer.fingerprint, dims=trainer.dims)
        finally:
            manager.close()
        states.append(state)
        run.progress[k] = RunProgress.from_json(meta)
    trainer.state = trainer.to_device(states)
    logger.info(f"resumed from epoch {start}")


def _train(run: RunContext, hooks: list[Hook], first: tuple | None = None) -> list[dict]:
    """The epochs of `train_and_evaluate` in checked, locked run folders (one per seed);
    `first`: the first epoch already computed (`_compute_epoch`, a run that does not
    resume)."""
    trainer = run.trainer
    if run.resume:
        restore(run)
    for hook in hooks:
        hook.on_start(run)
    try:
        for epoch in range(run.start_epoch, trainer.config.schedule.epochs):
            computed = first if epoch == 0 and first is not None else \
                _compute_epoch(trainer, epoch)
            _record_epoch(run, epoch, hooks, computed)
    except (KeyboardInterrupt, Interrupted) as e:
        raise Interrupted(getattr(e, "signum", signal.SIGINT), _kept(run)) from None
    except DivergedError as e:
        raise DivergedError(f"{e}; {_kept(run, resumable=False)}") from None
    reports = [final_report(run, k) for k in range(len(run.folders))]
    for hook in hooks:
        hook.on_end(run, reports)
    for report, folder in zip(reports, run.folders):
        who = f"seed {report['seed']}: " if len(run.folders) > 1 else ""
        logger.info(f"{who}best epoch {report['best_epoch']} ({report['selection_note']}): "
                    f"test acc {100 * report['test']['accuracy']:5.2f} wF1 "
                    f"{100 * report['test']['weighted_f1']:5.2f}; report in {folder}")
    return reports


def _kept(run: RunContext, *, resumable: bool = True) -> str:
    """What a stopped run leaves behind: the checkpoint of its last recorded epoch (epochs are
    recorded whole: signals are held then), or nothing."""
    completed = run.progress[0].epoch
    if not completed:
        return f"no epoch had completed; nothing is kept in {run.out_dir}"
    return (f"the checkpoint of epoch {completed} is kept in {run.out_dir}"
            + (" (continue with `resume`)" if resumable else ""))


def check_finite_loss(trains: Sequence[Mapping], seeds: Sequence[int], epoch: int) -> None:
    """Raise `DivergedError` when a seed's train loss of epoch `epoch` (1-based) is not a
    finite number, naming the seeds and the usual causes."""
    bad = [(seed, t["loss"]) for seed, t in zip(seeds, trains) if not math.isfinite(t["loss"])]
    if bad:
        who = "" if len(seeds) == 1 else " (seed " + ", ".join(str(s) for s, _ in bad) + ")"
        raise DivergedError(
            f"training diverged: the train loss of epoch {epoch} is {bad[0][1]}{who}; likely "
            "causes: a learning rate too large (`set` optim.lr=...), features of an unusual "
            "scale (try `recipe` robust) or non-finite values in the features")


METRIC_KEYS = ("loss", "accuracy", "weighted_f1", "macro_f1", "modality_f1")


def _compute_epoch(trainer: Trainer, epoch: int) -> tuple:
    """Train and evaluate epoch `epoch` (0-based) for every seed: (trains, valids, tests,
    lambda parameters), nothing recorded yet.

    Raises:
      DivergedError: a seed's train loss is not finite.
    """
    trains = trainer.train_epoch(epoch)
    check_finite_loss(trains, trainer.seeds, epoch + 1)
    valids, tests = trainer.evaluate("valid"), trainer.evaluate("test")
    return trains, valids, tests, lambda_parameters(trainer.state.params)  # a few per layer


def _record_epoch(run: RunContext, epoch: int, hooks: list[Hook], computed: tuple) -> None:
    """Hand each seed's result of epoch `epoch` (`_compute_epoch`) to the hooks with signals
    held (`interrupts.deferred`), so an epoch is recorded whole or not at all."""
    trainer = run.trainer
    selection = trainer.config.run.selection
    trains, valids, tests, lambda_params = computed
    with interrupts.deferred():
        for k, (train, valid, test) in enumerate(zip(trains, valids, tests)):
            score = (valid if selection == "valid" else test)["weighted_f1"]
            progress = run.progress[k].after_epoch(score, valid, test)
            record = {"epoch": epoch + 1, "selection": selection, "train": train,
                      "valid": {x: valid[x] for x in METRIC_KEYS},
                      "test": {x: test[x] for x in METRIC_KEYS}}
            lambdas = layer_lambdas(trainer.seed_slice(lambda_params, k))
            if lambdas:
                record["lambda"] = {name: [float(v) for v in value.reshape(-1)]
                                    for name, value in lambdas.items()}
            for hook in hooks:
                result = EpochResult(index=k, seed=trainer.seeds[k], folder=run.folders[k],
                                     epoch=epoch + 1, record=record, valid=valid, test=test,
                                     score=score, progress=progress)
                progress = progress.noted(hook.on_epoch(run, result))
            run.progress[k] = progress


def final_report(run: RunContext, k: int) -> dict:
    """Seed k's report: the selected epoch's valid and test metrics and what the run was."""
    trainer, progress = run.trainer, run.progress[k]
    config, dataset = trainer.config, trainer.dataset
    return {
        "selection": config.run.selection,
        "selection_note": ("best epoch chosen on the TEST split (the release's protocol)"
                           if config.run.selection == "test" else
                           "best epoch chosen on the validation split"),
        "best_epoch": progress.best_epoch, "epochs": config.schedule.epochs,
        "seed": trainer.seeds[k], "devices": trainer.n_devices,
        "platform": jax.devices()[0].platform, "parameters": trainer.num_parameters,
        "model": type(trainer.model).__name__, "dataset": dataset.name,
        "layout": dataset.layout, "label_names": list(dataset.label_names),
        "recipe": config.run.recipe, "modalities": list(dataset.modalities),
        "warning": progress.notes.get("stall"),
        "valid": progress.best["valid"], "test": progress.best["test"],
    }
