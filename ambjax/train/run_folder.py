"""The run folder: what it holds, whether a new run may use it, and its locks.

A folder "holds a run" once a run finished an epoch there (a checkpoint or a metrics line); a
folder whose run failed during set-up holds nothing worth keeping and is simply reused. A run
writes only the entries named in `RUN_ENTRIES` (and, with several seeds, `seed<k>` folders of
them). A folder that holds anything else (a thesis, another program's output, the working
folder) is never written into by a new run and never cleared: `clear` removes run entries only,
and `check` refuses such a folder before any work is done, naming what is there.

A run holds an exclusive lock (`flock` on `.lock`) on its folder and on every seed folder for
its whole life, so two runs never write into one folder, whichever of them names the parent
and whichever a seed folder. Nothing in a folder is removed before the new run is ready to
start, and config.json is written only once a resumed checkpoint has been accepted.
"""

from __future__ import annotations

import fcntl
import fnmatch
import json
import os
import re
import shutil
from typing import Mapping, Sequence

from ambjax.errors import RunFolderError
from ambjax.files import atomic_write, write_json  # noqa: F401 - re-exported

LOCK_NAME = ".lock"
# every entry a run writes into its folder (plots and atomic writes' temporary files included)
RUN_ENTRIES = ("config.json", "metrics.jsonl", "checkpoints", "report.json", "report.md",
               "curves.png", "confusion.png", "standardization.npz", "seeds_report.json",
               "seeds_report.md", "tensorboard", LOCK_NAME, "*.tmp")
SEED_FOLDER = re.compile(r"seed-?\d+$")
# settings a resumed run may change without being told (how long it trains, which seed a
# seed folder holds)
RESUMABLE_CHANGES = ("schedule.epochs", "run.seed", "run.keep_checkpoints")


def _is_run_entry(name: str) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in RUN_ENTRIES)


def _written_by_a_run(out_dir: str) -> bool:
    """Whether ambjax wrote into `out_dir`: its lock, a config.json with a model fingerprint,
    or a checkpoints folder. (A file merely named like a run's, in a folder no run wrote, is
    the user's.)"""
    if os.path.isfile(os.path.join(out_dir, LOCK_NAME)) or os.path.isdir(
            os.path.join(out_dir, "checkpoints")):
        return True
    try:
        with open(os.path.join(out_dir, "config.json")) as f:
            blob = json.load(f)
    except (OSError, ValueError):
        return False
    return isinstance(blob, dict) and "fingerprint" in blob


def foreign_entries(out_dir: str) -> list[str]:
    """What `out_dir` holds besides a run's own entries (paths relative to it, folders with a
    trailing '/'), looking into seed folders too; [] for a folder that is missing or holds a
    run and nothing else. In a folder no run wrote into, every entry is foreign."""
    if not os.path.isdir(out_dir):
        return []
    ours = _written_by_a_run(out_dir)
    found = []
    for name in sorted(os.listdir(out_dir)):
        path = os.path.join(out_dir, name)
        if SEED_FOLDER.match(name) and os.path.isdir(path) and not os.path.islink(path):
            found += [os.path.join(name, x) for x in foreign_entries(path)]
        elif not (ours and _is_run_entry(name)):
            found.append(name + ("/" if os.path.isdir(path) else ""))
    return found


def checkpoint_steps(folder: str) -> list[int]:
    """The epochs of the complete checkpoints in `folder`/checkpoints (orbax's folder names)."""
    checkpoints = os.path.join(folder, "checkpoints")
    if not os.path.isdir(checkpoints):
        return []
    return sorted(int(n) for n in os.listdir(checkpoints) if n.isdigit())


def holds_run(out_dir: str) -> bool:
    """True when a run completed at least one epoch in `out_dir` itself."""
    metrics = os.path.join(out_dir, "metrics.jsonl")
    return bool(checkpoint_steps(out_dir)) or (os.path.isfile(metrics)
                                               and os.path.getsize(metrics) > 0)


def seed_runs(out_dir: str) -> list[int]:
    """The seeds whose folders `out_dir/seed<k>` hold a run."""
    if not os.path.isdir(out_dir):
        return []
    return sorted(int(n[4:]) for n in os.listdir(out_dir)
                  if SEED_FOLDER.match(n) and holds_run(os.path.join(out_dir, n)))


def read_config(folder: str) -> dict:
    """A run folder's config.json as a dict.

    Raises:
      RunFolderError: missing, unreadable or not a JSON object.
    """
    path = os.path.join(folder, "config.json")
    try:
        with open(path) as f:
            blob = json.load(f)
    except (OSError, ValueError) as e:
        raise RunFolderError(f"{path} is missing or unreadable ({e}); the run folder is "
                             "damaged (use `overwrite` to start again)") from None
    if not isinstance(blob, dict):
        raise RunFolderError(f"{path}: expected a JSON object")
    return blob


def _flat(tree: Mapping, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        if isinstance(v, Mapping):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def changed_settings(old: Mapping, new: Mapping) -> list[str]:
    """The dotted keys whose values differ between two config trees (as dicts), as
    'key old -> new', leaving out `RESUMABLE_CHANGES`."""
    a, b = _flat(old), _flat(new)
    return [f"{k} {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b))
            if k not in RESUMABLE_CHANGES and json.dumps(a.get(k)) != json.dumps(b.get(k))]


def seed_folders(out_dir: str, seeds: Sequence[int] | None) -> list[str]:
    """The run folder of each seed: `out_dir` itself for a single run, `out_dir/seed<k>`
    when `seeds` are given."""
    return [out_dir] if not seeds else [os.path.join(out_dir, f"seed{s}") for s in seeds]


def check(out_dir: str, *, fingerprint: str | None, config: Mapping, data_fingerprint: str,
          seeds: Sequence[int] | None, resume: bool, overwrite: bool,
          allow_changes: bool = False) -> None:
    """Read-only checks that a run may start in `out_dir` (before any work is done).

    Args:
      fingerprint: the model's fingerprint (`ambjax.train.trainer.model_fingerprint`); None:
        not known yet (checked again once it is).
      config: the run's config tree as a dict (`to_dict`), compared on resume.
      data_fingerprint: the data's fingerprint (`DialogueDataset.fingerprint`), compared on
        resume.
      seeds: the seeds of a several-seed run (folders `seed<k>`), None for one run.
      allow_changes: resume although optimiser, data or schedule settings changed.

    Raises:
      RunFolderError: `out_dir` is a file; holds files that are not a run's (unless resuming);
        holds a run and neither `resume` nor `overwrite` is set; or, for `resume`, holds a run
        of other seeds, another model configuration, other data, or other settings.
    """
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise RunFolderError(f"`out_dir` {out_dir} is a file, not a folder")
    if not os.path.isdir(out_dir):
        return
    foreign = foreign_entries(out_dir)
    if foreign and not resume:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5
                                          else "")
        raise RunFolderError(f"{out_dir} holds files that are not part of an ambjax run "
                             f"({shown}); a run only starts in a new or empty folder or "
                             "replaces a run folder: choose another `out_dir`")
    existing = seed_runs(out_dir)
    top = holds_run(out_dir)
    if not (top or existing):
        return
    if not (resume or overwrite):
        raise RunFolderError(f"{out_dir} already holds a run; pass `resume` to continue it "
                             "or `overwrite` to replace it")
    if not resume:
        return
    held = f"seeds {existing}" if existing else "a single run"
    if (seeds and (top or sorted(seeds) != existing)) or (not seeds and existing):
        wanted = f"seeds {sorted(seeds)}" if seeds else "a single run"
        raise RunFolderError(f"{out_dir} holds {held}, not {wanted}; resume with the same "
                             "`seeds`, or use `overwrite` or another `out_dir`")
    folders = seed_folders(out_dir, seeds)
    for folder in folders:
        old = read_config(folder)
        if fingerprint is not None and old.get("fingerprint") != fingerprint:
            raise RunFolderError(f"{folder} holds a run of another model configuration "
                                 "(or of an older ambjax parameter layout); resume with the "
                                 "same preset and overrides")
        if old.get("data_fingerprint", data_fingerprint) != data_fingerprint:
            raise RunFolderError(f"{folder} was trained on other data (the data file changed "
                                 "since, or `data` names another file); resume with its own "
                                 "data or start a new run")
        changes = changed_settings({k: v for k, v in old.items()
                                    if k not in ("fingerprint", "data_fingerprint",
                                                 "model_class")}, config)
        if changes and not allow_changes:
            raise RunFolderError(f"{folder}: resuming with changed settings "
                                 f"({'; '.join(changes[:4])}); pass `allow_changes` to "
                                 "resume with them anyway, or start a new run")


class RunLock:
    """An exclusive lock on a run folder, held until `release` (or process exit).

    Attributes:
      created: whether the folder was created for the lock (so `release(cleanup=True)` may
        remove it again when it holds nothing else).
    """

    def __init__(self, out_dir: str):
        self.folder = out_dir
        self.created = not os.path.isdir(out_dir)
        os.makedirs(out_dir, exist_ok=True)
        self.path = os.path.join(out_dir, LOCK_NAME)
        self.file = open(self.path, "a+")
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.file.seek(0)
            owner = self.file.read().strip() or "unknown"
            self.file.close()
            if self.created:
                remove_if_empty(out_dir)
            raise RunFolderError(f"{out_dir} is in use by another run (pid {owner}); wait for "
                                 "it to finish or choose another `out_dir`") from None
        self.file.seek(0)
        self.file.truncate()
        self.file.write(str(os.getpid()))
        self.file.flush()

    def release(self, cleanup: bool = False) -> None:
        """Unlock; with `cleanup`, remove the folder if the lock created it and it holds
        nothing else (a run refused before it started)."""
        if not self.file.closed:
            fcntl.flock(self.file, fcntl.LOCK_UN)
            self.file.close()
        if cleanup and self.created:
            remove_if_empty(self.folder)


def lock_all(out_dir: str, folders: Sequence[str]) -> list[RunLock]:
    """Lock `out_dir` and every seed folder in `folders` (all or none).

    Raises:
      RunFolderError: one of them is in use by another run.
    """
    locks: list[RunLock] = []
    try:
        for folder in dict.fromkeys([out_dir, *folders]):
            locks.append(RunLock(folder))
    except BaseException:
        release_all(locks, cleanup=True)
        raise
    return locks


def release_all(locks: Sequence[RunLock], cleanup: bool = False) -> None:
    """Release `locks` (seed folders first), with `RunLock.release`'s `cleanup`."""
    for lock in reversed(locks):
        lock.release(cleanup)


def remove_if_empty(out_dir: str) -> None:
    """Remove `out_dir` if it holds nothing but its lock."""
    if os.path.isdir(out_dir) and set(os.listdir(out_dir)) <= {LOCK_NAME}:
        shutil.rmtree(out_dir)


def clear(out_dir: str) -> None:
    """Remove a run's own entries from `out_dir` and its seed folders, except the locks (for
    `overwrite`, once the new run is ready to start); anything else is left alone."""
    for name in os.listdir(out_dir):
        path = os.path.join(out_dir, name)
        if SEED_FOLDER.match(name) and os.path.isdir(path) and not os.path.islink(path):
            clear(path)
        elif name != LOCK_NAME and _is_run_entry(name):
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                os.remove(path)
