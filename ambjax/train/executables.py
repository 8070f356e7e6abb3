"""A persistent store of compiled programs (and of initial parameters), so that a warm start
skips tracing and initialising as well.

JAX's persistent compilation cache spares XLA's compilation, but every start still traces and
lowers each program in Python before it can look the program up: for AMB-DSGDN at hidden 512
that is ~2 s per program on a 2-core CPU, most of a warm start. This store keeps the compiled
executables themselves (`jax.experimental.serialize_executable`) under a key made of
everything that decides a program without tracing it:

- the caller's `identity` (a run's model, class weights and loss weights, device and seed
  counts, the abstract train state: see `Trainer.program_identity`), and what one program
  computes besides (`per_program`: the update's optimiser and schedule, which the gradients
  and eval programs do not depend on, so that runs that differ only there share those);
- the program's name ("gradients" / "update" / "eval") and its batch shape (`batch_key`;
  none for the update, which every batch shape shares);
- the versions of jax, jaxlib, flax and optax, the backend, device kind and XLA_FLAGS;
- every setting in `jax.config` (read from it, not from a list: a setting such as
  `jax_threefry_partitionable` changes the traced program without changing anything above),
  except the caches' own (their folder, minimum compile time, ...);
- a hash of ambjax's own source files, so that any change to the code misses.

Each entry begins with its full key, which is compared with the key wanted before anything else
of the entry is read: an entry renamed or copied from another configuration is a miss.

It is used for single-device, single-process programs on the default device (a pmapped or
multi-process executable is bound to its devices and processes), lives in the compilation cache folder
(`<cache>/executables`, only when JAX's persistent cache is on), and is a cache: an entry that
is missing, damaged or from another build is recompiled and rewritten, never trusted. Entries
hold compiled native code and pickled tree structures, which run code when loaded, like JAX's
own cache; so the store is used only in a folder that `ambjax.train.cache.untrusted_reason`
accepts (yours alone, writable by no one else), and an entry is read only when it is yours
and writable by no one else.

The store also keeps each seed's initial parameters (`load_arrays` / `save_arrays`, plain
`.npy` data, no pickle): initialising AMB-DSGDN runs its ~120 initialisers op by op, ~1.7 s of
a warm start even with every small program in JAX's cache, against ~0.1 s to read 52 MB (hidden
512). The stored values are the ones computed, so a run's start does not change them. And it
keeps parsed feature files and generated synthetic sets (`dataset_store`, used by the runs'
`load_dataset`): a release-size IEMOCAP pickle parses in 3.3-4.6 s, its arrays read back in
~0.03 s (`ambjax.data.dataset_arrays`).
Array entries are kept within `ExecutableStore.ARRAY_BUDGET_BYTES` (2 GB), the least recently used
removed first (a read counts as a use).

Only programs that XLA really compiled are stored: an executable that JAX's persistent cache
served is not re-serialised (with jax 0.10.2 on CPU such a copy loads but fails at run time,
"Function ... not found"), so the store fills on a cold compile. To tell the two apart the
first store registers one `jax.monitoring` event listener for the process (it notes, per
compiling thread, whether JAX's cache served the compile). So that JAX's cache does not serve
a program the store lacks only because the store's key changed (an edit or upgrade of ambjax,
another `jax.config` setting) while the program did not, a program compiled for the store on
the CPU carries its entry's name into JAX's cache key (`ExecutableStore.get_or_compile`): the
first start under a new key compiles it and stores it (once), instead of every start tracing
it again for JAX's cache to serve.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import io
import json
import logging
import os
import pickle
import re
import threading
from typing import Any, Callable

import jax
import numpy as np
from jax.experimental.serialize_executable import deserialize_and_load, serialize

from ambjax.files import atomic_write
from ambjax.train.cache import make_private_dirs, trusted_file, untrusted_reason

log = logging.getLogger(__name__)
STORE_FOLDER = "executables"
_CACHE_HIT_EVENT = "/jax/compilation_cache/cache_hits"
_warned: set[str] = set()            # untrusted store folders already reported
_compile = threading.local()          # per compiling thread: did JAX's cache serve it?
# see `ExecutableStore.get_or_compile`; its value, a store entry's file name, is never used
ENTRY_OPTION = "xla_gpu_dump_autotune_results_to"


def _note_cache_hit(event: str, **_) -> None:
    if event == _CACHE_HIT_EVENT:
        _compile.served_from_cache = True


@functools.lru_cache(maxsize=1)
def _listen_for_cache_hits() -> None:
    jax.monitoring.register_event_listener(_note_cache_hit)


@functools.lru_cache(maxsize=1)
def _source_hash() -> str:
    """A hash of ambjax's source files."""
    digest = hashlib.sha256()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))   # ambjax/
    for folder, dirs, files in sorted(os.walk(root)):
        dirs.sort()
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                digest.update(os.path.relpath(path, root).encode())
                with open(path, "rb") as f:
                    digest.update(f.read())
    return digest.hexdigest()


def _build_identity() -> str:
    """Versions, backend, JAX's settings and a hash of ambjax's source: what invalidates
    every entry."""
    device = jax.devices()[0]
    versions = {p: importlib.metadata.version(p) for p in ("jax", "jaxlib", "flax", "optax")}
    # every setting but those of the caches themselves (where and when programs are cached
    # changes no program)
    settings = {k: repr(v) for k, v in jax.config.values.items() if "cache" not in k}
    return json.dumps({"source": _source_hash(), "versions": versions,
                       "platform": device.platform, "device_kind": device.device_kind,
                       "xla_flags": os.environ.get("XLA_FLAGS", ""), "jax_config": settings},
                      sort_keys=True)


def array_tree_bytes(tree: Any) -> bytes | None:
    """A tree of nested dicts with string keys and array leaves (e.g. Flax parameters) as
    bytes: a JSON index of the leaves' paths, then each leaf as `.npy` data (no pickle); None
    for any other tree. `read_array_tree` reads it back."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    paths = []
    for path, _ in leaves:
        if not path or not all(isinstance(k, jax.tree_util.DictKey) and isinstance(k.key, str)
                               for k in path):
            return None
        paths.append([k.key for k in path])
    index = json.dumps(paths).encode()
    buffer = io.BytesIO()
    buffer.write(len(index).to_bytes(8, "little") + index)
    for _, x in leaves:
        np.save(buffer, np.asarray(x), allow_pickle=False)
    return buffer.getvalue()


def read_array_tree(f) -> dict | None:
    """The tree that `array_tree_bytes` wrote, read from the binary file `f` up to its end,
    with numpy leaves; None when `f` holds anything else (damaged, or more data than its
    index names)."""
    try:
        paths = json.loads(f.read(int.from_bytes(f.read(8), "little")))
        tree: dict = {}
        for path in paths:
            node = tree
            for part in path[:-1]:
                node = node.setdefault(part, {})
            node[path[-1]] = np.load(f, allow_pickle=False)
        return None if f.read(1) else tree
    except Exception:  # noqa: BLE001 - a damaged tree is no tree
        return None


class ExecutableStore:
    """Compiled programs on disk, keyed by `identity`, program name and batch shape; and
    trees of arrays (entry names in `ARRAYS`, e.g. a seed's initial parameters), keyed alike.

    Args:
      folder: where the entries live (created on the first save).
      identity: JSON-serialisable description of what the programs compute (beyond their
        batch shapes); two stores with equal identities share entries.
      per_program: {program name: JSON-serialisable description of what that program
        computes besides `identity`}; a name not in it depends on `identity` alone.

    Example:
      >>> import jax, jax.numpy as jnp, tempfile
      >>> store = ExecutableStore(tempfile.mkdtemp(), {"fn": "double"})
      >>> x = jnp.ones(3)
      >>> store.load("double", x.shape) is None
      True
      >>> store.save("double", x.shape, jax.jit(lambda v: 2 * v).lower(x).compile())
      >>> store.load("double", x.shape)(x).tolist()
      [2.0, 2.0, 2.0]
      >>> store.save_arrays("params", 0, {"w": x})
      >>> store.load_arrays("params", 0)["w"].tolist()
      [1.0, 1.0, 1.0]
    """

    # entry names that hold arrays (`save_arrays`), not programs: a seed's initial
    # parameters; a parsed feature file or generated synthetic set
    # (`ambjax.data.assemble.load_dataset`)
    ARRAYS = ("params", "dataset")
    # at most this many bytes of array entries in the folder (a 32-seed run at the release's
    # size stores 1.7 GB); the least recently used go first
    ARRAY_BUDGET_BYTES = 2 * 1024 ** 3

    def __init__(self, folder: str, identity: Any, per_program: dict[str, Any] | None = None):
        _listen_for_cache_hits()
        self.folder = folder
        self.identity = json.dumps(identity, sort_keys=True, default=str) + _build_identity()
        self.per_program = {name: json.dumps(extra, sort_keys=True, default=str)
                            for name, extra in (per_program or {}).items()}

    def _key(self, name: str, key: Any) -> bytes:
        return f"{self.identity}|{name}|{self.per_program.get(name, '')}|{key!r}".encode()

    def _path(self, name: str, key: Any) -> str:
        digest = hashlib.sha256(self._key(name, key)).hexdigest()
        kind = "npy" if name in self.ARRAYS else "pkl"
        return os.path.join(self.folder, f"{name}-{digest[:40]}.{kind}")

    def get_or_compile(self, name: str, key: Any, lower: Callable[[], Any]) -> tuple[Any, bool]:
        """The stored program for (`name`, `key`), else `lower()` (a `jax.stages.Lowered`)
        compiled, and stored when XLA compiled it afresh. Returns (compiled, whether it was
        loaded).

        On the CPU the compile names this entry in JAX's persistent-cache key (`ENTRY_OPTION`,
        a GPU compiler's option that the CPU compiler never reads): otherwise, once the
        store's key changed (an edit or upgrade of ambjax, another `jax.config` setting) while
        the program did not, JAX's cache would serve it, a served program cannot be stored,
        and every later start would trace and lower it again (a release-layout IEMOCAP run's
        "compiled" line at 4.2-5.2 s instead of ~1.7 s from the store)."""
        compiled = self.load(name, key)
        if compiled is not None:
            return compiled, True
        lowered = lower()
        options = ({ENTRY_OPTION: os.path.basename(self._path(name, key))}
                   if jax.devices()[0].platform == "cpu" else None)
        _compile.served_from_cache = False
        compiled = lowered.compile(compiler_options=options)
        if not _compile.served_from_cache:
            self.save(name, key, compiled)
        return compiled, False

    def _entry(self, name: str, key: Any):
        """The open entry for (`name`, `key`), positioned after its key, or None (missing,
        not the user's own, or recorded under another key)."""
        path = self._path(name, key)
        if not trusted_file(path):
            return None
        wanted = self._key(name, key)
        try:
            f = open(path, "rb")
        except OSError:
            return None
        size = int.from_bytes(f.read(8), "little")
        if size != len(wanted) or f.read(size) != wanted:
            f.close()
            return None                                  # renamed or copied from another key
        return f

    def has(self, name: str, key: Any) -> bool:
        """Whether an entry for (`name`, `key`) is there (the user's own, under this key;
        whether it loads is known only when it is loaded)."""
        f = self._entry(name, key)
        if f is not None:
            f.close()
        return f is not None

    def _write(self, name: str, key: Any, payload: bytes) -> None:
        """Store a whole entry (never a torn one), readable by the owner alone; an unwritable
        folder is skipped (the store is a cache)."""
        try:
            make_private_dirs(self.folder)
            header = self._key(name, key)
            atomic_write(self._path(name, key),
                         len(header).to_bytes(8, "little") + header + payload, mode=0o600)
        except Exception:  # noqa: BLE001
            pass

    def load(self, name: str, key: Any):
        """The stored `jax.stages.Compiled` for (`name`, `key`), or None (missing, damaged,
        recorded under another key, not the user's own, or not loadable here)."""
        f = self._entry(name, key)
        if f is None:
            return None
        try:
            with f:
                payload, in_tree, out_tree = pickle.load(f)
            return deserialize_and_load(payload, in_tree, out_tree,
                                        execution_devices=jax.devices()[:1])
        except Exception:  # noqa: BLE001 - any unreadable entry is a miss, recompiled
            return None

    def save(self, name: str, key: Any, compiled) -> None:
        """Store `compiled` (a `jax.stages.Compiled`); programs that cannot be serialised are
        skipped."""
        try:
            blob = pickle.dumps(serialize(compiled))
        except Exception:  # noqa: BLE001
            return
        self._write(name, key, blob)

    def load_arrays(self, name: str, key: Any):
        """The arrays stored for (`name`, `key`) as the nested dicts `save_arrays` was given,
        with numpy leaves, or None (missing or damaged). Read as a JSON index and plain
        `.npy` data: no pickle, no code."""
        f = self._entry(name, key)
        if f is None:
            return None
        with f:
            tree = read_array_tree(f)
        if tree is None:
            return None
        try:
            os.utime(self._path(name, key))              # recently used: evicted last
        except OSError:
            pass
        return tree

    def save_arrays(self, name: str, key: Any, tree: Any) -> None:
        """Store a tree of nested dicts with string keys and array leaves (e.g. Flax
        parameters) as a JSON index of the leaves' paths and `.npy` data; any other tree is
        not stored."""
        payload = array_tree_bytes(tree)
        if payload is not None:
            self._write(name, key, payload)
            self._evict_arrays(keep=self._path(name, key))

    def _evict_arrays(self, keep: str) -> None:
        """Delete the least recently used array entries (this store's own files, named
        `<name>-<digest>.npy`) while they exceed `ARRAY_BUDGET_BYTES`; never `keep`."""
        pattern = re.compile(r"(%s)-[0-9a-f]{40}\.npy" % "|".join(map(re.escape, self.ARRAYS)))
        try:
            entries = [e for e in os.scandir(self.folder)
                       if pattern.fullmatch(e.name) and e.is_file(follow_symlinks=False)]
            stats = sorted(((e.stat(follow_symlinks=False), e.path) for e in entries),
                           key=lambda item: item[0].st_mtime_ns)
        except OSError:
            return
        total = sum(st.st_size for st, _ in stats)
        for st, path in stats:
            if total <= self.ARRAY_BUDGET_BYTES:
                break
            if path == keep:
                continue
            try:
                os.unlink(path)
                total -= st.st_size
            except OSError:
                pass


def dataset_store() -> ExecutableStore | None:
    """The store of parsed feature files and generated synthetic sets
    (`ambjax.data.assemble.load_dataset`) in JAX's persistent compilation cache folder; None
    when that cache is off (as `default_store`)."""
    return default_store({"entries": "datasets"}, 1)


def default_store(identity: Any, n_devices: int,
                  per_program: dict[str, Any] | None = None) -> ExecutableStore | None:
    """The store (`ExecutableStore(folder, identity, per_program)`) in JAX's persistent
    compilation cache folder for programs over `n_devices` devices, or None when that cache
    is off, the programs are not single-device, single-process ones, or the store's folder
    is not trusted (then with one warning)."""
    cache = jax.config.jax_compilation_cache_dir
    if not cache or n_devices != 1 or jax.process_count() > 1:
        return None
    folder = os.path.join(cache, STORE_FOLDER)
    why = untrusted_reason(folder)
    if why:
        if folder in _warned:
            return None
        _warned.add(folder)
        log.warning("warning: executable store not used: %s (anyone who can write it could "
                    "run code as you)", why)
        return None
    return ExecutableStore(folder, identity, per_program)
