"""Compiling a run's programs in a process of their own, for a process that keeps freed memory.

A process in the kept-memory mode (`ambjax.host_memory.keep_freed_memory`: one malloc arena
for every thread, no memory returned) runs its train steps faster on the CPU, since each
step's ~450 MB of XLA temporaries are reused instead of mapped and zeroed afresh, but compiles
much more slowly: XLA's compile threads queue on that one arena's lock (an IEMOCAP cold
compile 13-15 s -> 18-37 s on 2-core CPUs; benchmarks/README.md). glibc fixes a thread's
arena, and the number of arenas, for the life of the process, so the mode cannot be left for
the compile. `compile_in_own_process` therefore compiles a `Trainer`'s programs in a fresh
Python process with the default allocator, which stores them in the executable store
(`ambjax.train.executables`) and JAX's persistent cache; the trainer's own compile then loads
them from there, as a warm start does.

The helper (`python -m ambjax.train.compile_helper FOLDER`) rebuilds the trainer from what
it is sent in FOLDER, a temporary folder: the config tree, the dataset's shapes, labels,
speakers and splits (`ambjax.data.dataset_arrays` arrays, no pickle; not its features, whose
values decide no program: the helper gives it zeros), the seeds, class weights and
`jax.config`'s settings. It is used only where its programs are certain to be the ones the
trainer would compile (AMB-DSGDN built from the config, one device and process, the CPU, the
store in use) and only where it can compare: before compiling, the helper checks that its
trainer's programs have the caller's identity (`Trainer.program_identity`, optimiser and
batch shapes).
Whatever it does not deliver (a mismatch, a failure, an interrupt) the trainer compiles itself,
so the helper changes how long a compile takes, never what is compiled.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
import tempfile
import time

import jax
import numpy as np

from ambjax.data.dataset_arrays import storable_ids, to_arrays
from ambjax.train.config import to_dict
from ambjax.train.executables import array_tree_bytes

logger = logging.getLogger("ambjax")

SPEC = "spec.json"
DATASET = "dataset.npt"
MISMATCH = 3                   # the helper's exit status when its programs would differ
REFUSED = 4                    # ... when its compile raised one of ambjax's errors
HELPER = "ambjax.train.compile_helper"          # the helper process's module


def identity_digest(trainer) -> str:
    """What the trainer's compile produces, short: its programs' identity, its optimiser's,
    the batch shapes it compiles for."""
    used = trainer.batcher.budgets_used(trainer.seeds, trainer.config.schedule.epochs)
    blob = json.dumps([trainer.program_identity(), trainer.optimiser_identity(),
                       {k: [repr(b) for b in v] for k, v in used.items()}],
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def _jax_settings() -> dict:
    """`jax.config`'s settings that JSON can carry (the executable store's key reads them
    all, so the helper takes every one the caller has)."""
    settings = {}
    for name, value in jax.config.values.items():
        try:
            json.dumps(value)
        except TypeError:
            continue
        settings[name] = value
    return settings


def why_not_own_process(trainer) -> str | None:
    """Why `trainer`'s programs cannot be compiled by a helper process, or None where they
    can (module docstring)."""
    if jax.process_count() > 1 or trainer.n_devices != 1:
        return "more than one device or process"
    if jax.default_backend() != "cpu":
        return f"the {jax.default_backend()} backend"
    if not jax.config.jax_compilation_cache_dir:
        return "JAX's persistent compilation cache is off"
    if not trainer.model_from_config():
        return "a model other than the config's AMB-DSGDN"
    if not storable_ids(list(trainer.dataset.dialogues)):
        return "dialogue ids that are neither all str nor all int"
    return None


def _helper_environment() -> dict:
    """This process's environment with this ambjax first on the module path."""
    import ambjax
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(ambjax.__file__)))
    env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in [env.get("PYTHONPATH")] if p])
    return env


def compile_in_own_process(trainer, *, memory_limit: int | None = None) -> bool:
    """Compile `trainer`'s programs (and its seeds' initial parameters) into the executable
    store from a fresh helper process (module docstring); returns whether it did. Where it
    cannot (`why_not_own_process`) or the helper fails, logs why and returns False: the
    trainer's own compile then compiles what the store lacks. `memory_limit`: as for
    `Trainer.compile`."""
    reason = why_not_own_process(trainer)
    if reason:
        logger.info(f"compiling in this process: {reason}")
        return False
    start = time.perf_counter()
    spec = {"config": to_dict(trainer.config), "seeds": list(trainer.seeds),
            "class_weights": None if trainer.class_weights is None
            else np.asarray(trainer.class_weights).tolist(),
            "memory_limit": memory_limit, "jax_config": _jax_settings(),
            "identity": identity_digest(trainer)}
    try:
        with tempfile.TemporaryDirectory(prefix="ambjax-compile-") as folder:
            with open(os.path.join(folder, SPEC), "w") as f:
                json.dump(spec, f)
            with open(os.path.join(folder, DATASET), "wb") as f:
                f.write(array_tree_bytes(to_arrays(trainer.dataset, features=False)))
            done = subprocess.run([sys.executable, "-m", HELPER, folder],
                                  env=_helper_environment(), capture_output=True, text=True)
    except OSError as e:             # no room for its folder, no interpreter to start, ...
        logger.warning(f"the compile process could not run ({e}); compiling here")
        return False
    last = (done.stderr.strip().splitlines() or ["no message"])[-1]
    if done.returncode == REFUSED:               # the trainer's own compile raises it too
        logger.info(f"the compile process stopped ({last}); compiling here")
        return False
    if done.returncode != 0:
        why = ("its programs would differ from this trainer's" if done.returncode == MISMATCH
               else f"exit status {done.returncode}: {last}")
        logger.warning(f"the compile process failed ({why}); compiling here")
        return False
    logger.info(f"compiled in a process of its own in {time.perf_counter() - start:.1f}s")
    return True
