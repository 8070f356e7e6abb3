"""A persistent store of compiled programs, so that a warm start skips tracing as well.

JAX's persistent compilation cache spares XLA's compilation, but every start still traces and
lowers each program in Python before it can look the program up: for AMB-DSGDN at hidden 512
that is ~2 s per program on a 2-core CPU, most of a warm start. This store keeps the compiled
executables themselves (`jax.experimental.serialize_executable`) under a key made of
everything that decides a program without tracing it:

- the caller's `identity` (a run's model and optimiser configuration, schedule, class weights,
  device and seed counts, the abstract train state: see `Trainer.program_identity`);
- the program's name ("train" / "eval") and its batch shape (`batch_key`);
- the versions of jax, jaxlib, flax and optax, the backend, device kind and XLA_FLAGS;
- a hash of ambjax's own source files, so that any change to the code misses.

It is used for single-device, single-process programs on the default device (a pmapped or
multi-process executable is bound to its devices and processes), lives in the compilation cache folder
(`<cache>/executables`, only when JAX's persistent cache is on), and is a cache: an entry that
is missing, damaged or from another build is recompiled and rewritten, never trusted. Entries
are pickles that can run code when loaded, like JAX's own cache: keep the folder private.

Only programs that XLA really compiled are stored: an executable that JAX's persistent cache
served is not re-serialised (with jax 0.10.2 on CPU such a copy loads but fails at run time,
"Function ... not found"), so the store fills on a cold compile. To tell the two apart the
first store registers one `jax.monitoring` event listener for the process (it notes, per
compiling thread, whether JAX's cache served the compile).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import os
import pickle
import tempfile
import threading
from typing import Any, Callable

import jax
from jax.experimental.serialize_executable import deserialize_and_load, serialize

import ambjax

STORE_FOLDER = "executables"
_CACHE_HIT_EVENT = "/jax/compilation_cache/cache_hits"
_compile = threading.local()          # per compiling thread: did JAX's cache serve it?


def _note_cache_hit(event: str, **_) -> None:
    if event == _CACHE_HIT_EVENT:
        _compile.served_from_cache = True


@functools.lru_cache(maxsize=1)
def _listen_for_cache_hits() -> None:
    jax.monitoring.register_event_listener(_note_cache_hit)


@functools.lru_cache(maxsize=1)
def _build_identity() -> str:
    """Versions, backend and a hash of ambjax's source: what invalidates every entry."""
    digest = hashlib.sha256()
    root = os.path.dirname(os.path.abspath(ambjax.__file__))
    for folder, dirs, files in sorted(os.walk(root)):
        dirs.sort()
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                digest.update(os.path.relpath(path, root).encode())
                with open(path, "rb") as f:
                    digest.update(f.read())
    device = jax.devices()[0]
    versions = {p: importlib.metadata.version(p) for p in ("jax", "jaxlib", "flax", "optax")}
    return json.dumps({"source": digest.hexdigest(), "versions": versions,
                       "platform": device.platform, "device_kind": device.device_kind,
                       "xla_flags": os.environ.get("XLA_FLAGS", "")}, sort_keys=True)


class ExecutableStore:
    """Compiled programs on disk, keyed by `identity`, program name and batch shape.

    Args:
      folder: where the entries live (created on the first save).
      identity: JSON-serialisable description of what the programs compute (beyond their
        batch shapes); two stores with equal identities share entries.

    Example:
      >>> import jax, jax.numpy as jnp, tempfile
      >>> store = ExecutableStore(tempfile.mkdtemp(), {"fn": "double"})
      >>> x = jnp.ones(3)
      >>> store.load("double", x.shape) is None
      True
      >>> store.save("double", x.shape, jax.jit(lambda v: 2 * v).lower(x).compile())
      >>> store.load("double", x.shape)(x).tolist()
      [2.0, 2.0, 2.0]
    """

    def __init__(self, folder: str, identity: Any):
        _listen_for_cache_hits()
        self.folder = folder
        self.identity = json.dumps(identity, sort_keys=True, default=str) + _build_identity()

    def _path(self, name: str, key: Any) -> str:
        digest = hashlib.sha256(f"{self.identity}|{name}|{key!r}".encode()).hexdigest()
        return os.path.join(self.folder, f"{name}-{digest[:40]}.pkl")

    def get_or_compile(self, name: str, key: Any, build: Callable[[], Any]) -> tuple[Any, bool]:
        """The stored program for (`name`, `key`), else `build()` (which lowers and compiles
        it), stored when XLA compiled it afresh. Returns (compiled, whether it was loaded)."""
        compiled = self.load(name, key)
        if compiled is not None:
            return compiled, True
        _compile.served_from_cache = False
        compiled = build()
        if not _compile.served_from_cache:
            self.save(name, key, compiled)
        return compiled, False

    def load(self, name: str, key: Any):
        """The stored `jax.stages.Compiled` for (`name`, `key`), or None (missing, damaged, or
        not loadable here)."""
        try:
            with open(self._path(name, key), "rb") as f:
                payload, in_tree, out_tree = pickle.load(f)
            return deserialize_and_load(payload, in_tree, out_tree,
                                        execution_devices=jax.devices()[:1])
        except Exception:  # noqa: BLE001 - any unreadable entry is a miss, recompiled
            return None

    def save(self, name: str, key: Any, compiled) -> None:
        """Store `compiled` (a `jax.stages.Compiled`); programs that cannot be serialised and
        unwritable folders are skipped (the store is a cache)."""
        tmp = None
        try:
            blob = pickle.dumps(serialize(compiled))
            os.makedirs(self.folder, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.folder, suffix=".tmp")
            with os.fdopen(fd, "wb") as f:
                f.write(blob)
            os.replace(tmp, self._path(name, key))   # whole entries only, never a torn one
        except Exception:  # noqa: BLE001
            if tmp and os.path.exists(tmp):
                os.remove(tmp)


def default_store(identity: Any, n_devices: int) -> ExecutableStore | None:
    """The store in JAX's persistent compilation cache folder for programs over `n_devices`
    devices, or None when that cache is off or the programs are not single-device,
    single-process ones."""
    cache = jax.config.jax_compilation_cache_dir
    if not cache or n_devices != 1 or jax.process_count() > 1:
        return None
    return ExecutableStore(os.path.join(cache, STORE_FOLDER), identity)
