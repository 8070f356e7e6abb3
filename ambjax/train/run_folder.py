"""The run folder: what it holds, whether a new run may use it, and its lock.

A folder "holds a run" once a run finished an epoch there (a checkpoint or a metrics line); a
folder whose run failed during set-up holds nothing worth keeping and is simply reused. A run
holds an exclusive lock (`flock` on `.lock`) on its folder for its whole life, so two runs never
write into one folder. Nothing in a folder is removed before the new run is ready to start
(`--overwrite` clears it only then), and config.json is written only once a resumed checkpoint
has been accepted.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil

LOCK_NAME = ".lock"


class RunFolderError(ValueError):
    """The output folder cannot be used (it holds another run, is in use, or is no folder)."""


def holds_run(out_dir: str) -> bool:
    """True when a run completed at least one epoch in `out_dir`."""
    checkpoints = os.path.join(out_dir, "checkpoints")
    metrics = os.path.join(out_dir, "metrics.jsonl")
    return ((os.path.isdir(checkpoints) and any(
        name.isdigit() for name in os.listdir(checkpoints)))
        or (os.path.isfile(metrics) and os.path.getsize(metrics) > 0))


def check(out_dir: str, fingerprint: str, *, resume: bool, overwrite: bool) -> None:
    """Read-only checks that a run may start in `out_dir` (before any work is done).

    Raises:
      RunFolderError: `out_dir` is a file; holds a run and neither `resume` nor `overwrite` is
        set; or, for `resume`, holds a run of another model configuration.
    """
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise RunFolderError(f"--out {out_dir} is a file, not a folder")
    if not os.path.isdir(out_dir):
        return
    if holds_run(out_dir) and not (resume or overwrite):
        raise RunFolderError(f"{out_dir} already holds a run; pass --resume to continue it "
                             "or --overwrite to replace it")
    cfg_path = os.path.join(out_dir, "config.json")
    if resume and holds_run(out_dir):
        try:
            with open(cfg_path) as f:
                old = json.load(f)
        except (OSError, ValueError) as e:
            raise RunFolderError(f"{cfg_path} is missing or unreadable ({e}); cannot resume "
                                 "(use --overwrite to start again)") from None
        if not isinstance(old, dict) or old.get("fingerprint") != fingerprint:
            raise RunFolderError(f"{out_dir} holds a run of another model configuration "
                                 "(or of an older ambjax parameter layout); resume with the "
                                 "same preset and overrides")


class RunLock:
    """An exclusive lock on a run folder, held until `release` (or process exit)."""

    def __init__(self, out_dir: str):
        os.makedirs(out_dir, exist_ok=True)
        self.path = os.path.join(out_dir, LOCK_NAME)
        self.file = open(self.path, "a+")
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.file.seek(0)
            owner = self.file.read().strip() or "unknown"
            self.file.close()
            raise RunFolderError(f"{out_dir} is in use by another run (pid {owner}); wait for "
                                 "it to finish or choose another --out") from None
        self.file.seek(0)
        self.file.truncate()
        self.file.write(str(os.getpid()))
        self.file.flush()

    def release(self) -> None:
        if not self.file.closed:
            fcntl.flock(self.file, fcntl.LOCK_UN)
            self.file.close()


def remove_if_empty(out_dir: str) -> None:
    """Remove `out_dir` if it holds nothing but its lock (a run refused before it started)."""
    if os.path.isdir(out_dir) and set(os.listdir(out_dir)) <= {LOCK_NAME}:
        shutil.rmtree(out_dir)


def clear(out_dir: str) -> None:
    """Remove everything in `out_dir` except its lock (for `--overwrite`, once the new run is
    ready to start)."""
    for name in os.listdir(out_dir):
        if name == LOCK_NAME:
            continue
        path = os.path.join(out_dir, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.remove(path)


def write_json(path: str, blob: dict) -> None:
    """Write `blob` to `path` atomically (a temporary file, then a rename)."""
    with open(path + ".tmp", "w") as f:
        json.dump(blob, f, indent=1)
    os.replace(path + ".tmp", path)
