"""Ahead-of-time compilation of a run's programs, with a memory check before the first step.

Every padding bucket has its own train and eval program (a train step's gradients; its
optimiser update is one program for every bucket, `ambjax.train.steps.TrainStep`).
`compile_programs` lowers and compiles them all before training starts, concurrently in a
thread pool (XLA compiles outside the GIL), with one progress line, instead of one after
another inside the first epoch. The largest bucket's train program is compiled first and its
memory (XLA's own count of arguments, outputs and temporaries) is compared with what the
device has, so that a batch that cannot fit is refused in seconds with its size, not after a
minute of allocation failures. When the train
state is far below the limit (`ACTIVATION_FACTOR`), a refusal is unlikely and the other programs
compile beside the largest one, and the state initialises, from the start, so that both cores of
a small machine stay busy (a refusal then abandons them); near the limit nothing else starts
before the check has passed.

A run need not wait for all of them (`wait=False`): far below the limit, the programs then
compile in the order the run first needs them, and training starts once the first step's two
(its gradients and the update) are compiled and the state initialised; the others compile
beside the first steps, and a step whose program is still compiling waits for it.
`ambjax.train.train_and_evaluate` does so where the steps leave the host's cores to the
compile (`compiles_beside_steps`: on accelerators), not on the CPU.

With several members (seeds vmapped over a leading axis) the need is estimated before any of
them is compiled, from abstract shapes only: first the train state's own bytes (input and
output state, `jax.eval_shape`), then XLA's count of one member's largest train program times
the members. A run that cannot fit is refused with how many members would, before its train
state is built or its large programs compiled.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import gc
import logging
import os
import threading
import time
from typing import Any, Callable, Sequence

import jax
import numpy as np

from ambjax.errors import ResourceError  # noqa: F401 - re-exported
from ambjax.graphs.batch import DialogueBatch
from ambjax.train.cache import ensure_trusted_compile_cache
from ambjax.train.executables import ExecutableStore
from ambjax.train.steps import TrainStep, model_state

logger = logging.getLogger("ambjax")


def batch_key(batch: DialogueBatch) -> tuple:
    """The static shape of a batch: which compiled program runs it."""
    return (batch.nodes.mask.shape, batch.intra.senders.shape, batch.inter.senders.shape,
            batch.layout.dense_index.shape, batch.layout.band, batch.layout.packed)


def available_memory_bytes(device: jax.Device | None = None) -> int | None:
    """Memory a program may use on `device`: an accelerator's limit, or the host's available
    memory for the CPU backend (None when unknown)."""
    device = device or jax.local_devices()[0]
    stats = getattr(device, "memory_stats", lambda: None)()
    if stats and stats.get("bytes_limit"):
        return int(stats["bytes_limit"])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def program_bytes(compiled) -> int | None:
    """XLA's count of the memory one run of `compiled` needs (None when not reported)."""
    try:
        m = compiled.memory_analysis()
    except Exception:  # noqa: BLE001 - some backends do not implement it
        return None
    if m is None:
        return None
    return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
               - m.alias_size_in_bytes)


@dataclasses.dataclass
class Programs:
    """Compiled train (gradient) and eval programs by `batch_key`, and the one update program;
    called like the jitted steps. A program still compiling (`compile_programs` with
    `wait=False`) is waited for at its first use; a shape that was not compiled ahead goes to
    the jitted step, which compiles it then."""

    train: dict[tuple, Any]
    eval: dict[tuple, Any]
    update: Any
    largest_key: tuple                    # the largest bucket's train program
    jit_train: TrainStep
    jit_eval: Callable
    pending: dict[tuple[str, tuple], concurrent.futures.Future] = dataclasses.field(
        default_factory=dict)             # ("train" | "eval", key) -> its compile
    compiled_s: float | None = None       # seconds from the start to the last compile's end

    def _program(self, kind: str, key: tuple):
        done = self.train if kind == "train" else self.eval
        future = self.pending.get((kind, key))
        if future is not None:
            done[key] = future.result()   # its compile's error, if any, is raised here
            del self.pending[(kind, key)]
        return done.get(key)

    def train_step(self, state, batch, balance_active):
        gradients = self._program("train", batch_key(batch)) or self.jit_train.gradients
        return TrainStep(gradients, self.update)(state, batch, balance_active)

    def eval_step(self, params, batch):
        return (self._program("eval", batch_key(batch)) or self.jit_eval)(params, batch)

    def wait(self) -> None:
        """Wait until every program is compiled (the largest train program's memory checked).

        Raises:
          ResourceError, or any error of a compile still under way.
        """
        for kind, key in list(self.pending):
            self._program(kind, key)

    def cancel(self) -> None:
        """Drop the compiles not started yet (the ones under way finish in their threads);
        their shapes then compile at their first step, if any comes."""
        for job, future in list(self.pending.items()):
            if future.cancel():
                del self.pending[job]

    @property
    def largest_train_bytes(self) -> int | None:
        """XLA's count for the largest bucket's gradients (waits for its compile)."""
        return program_bytes(self._program("train", self.largest_key))

    def flops(self, kind: str, batch) -> float:
        """FLOPs of one call of the compiled `kind` ("train": gradients and update, or
        "eval") program for `batch`'s shape (XLA's cost analysis; 0 when it gives none).

        Raises:
          KeyError: no program of that kind was compiled for that shape.
        """
        program = self._program(kind, batch_key(batch))
        if program is None:
            raise KeyError(f"no {kind} program compiled for {batch_key(batch)}")
        return _flops(program) + (_flops(self.update) if kind == "train" else 0.0)


def stored_programs(store: ExecutableStore, batches: Sequence[tuple[str, DialogueBatch]]) -> bool:
    """Whether `store` holds every program that `compile_programs` would compile for these
    batches (the gradients of each train shape, the update, each eval shape)."""
    names = {"train": "gradients", "eval": "eval"}
    return store.has("update", ()) and all(store.has(names[kind], batch_key(b))
                                           for kind, b in batches)


def compiles_beside_steps(platform: str) -> bool:
    """Whether a run whose steps run on `platform` ("cpu", "gpu", "tpu", ...) starts training
    before every program is compiled (`compile_programs`' `wait=False`). On an accelerator
    it does: the steps leave the host's cores to XLA's compile (not measured here: no
    accelerator was lent). On the CPU it does not: the compile and the steps share the same
    cores, so the first step comes earlier but the first epoch takes about as much longer.
    The release-size IEMOCAP run (seed 2094 needs its 1024-node bucket at its first step, its
    832-node one at its second, its eval program at the first epoch's end) on a 2-core AMD
    EPYC (Zen 3), four alternating pairs of fresh processes: its first step after 21.1-26.0 s
    instead of 32.8-35.7 s, its second epoch done after 49.5-64.8 s against 55.4-58.8 s, no
    gain beyond the machine's swing (benchmarks/README.md, twenty-fifth session)."""
    return platform != "cpu"


def _flops(compiled) -> float:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float((cost or {}).get("flops", 0.0))


def compile_programs(train_step: TrainStep, eval_step, state,
                     batches: Sequence[tuple[str, DialogueBatch]], balance_active, *,
                     describe: Callable[[DialogueBatch], str],
                     memory_limit: int | None = None, workers: int | None = None,
                     store: ExecutableStore | None = None, members: int = 1,
                     member_axis: int = 0,
                     while_compiling: Callable[[], None] | None = None,
                     wait: bool = True) -> Programs:
    """Compile `train_step` and `eval_step` (jit- or pmap-wrapped) for every batch shape.

    Args:
      train_step, eval_step: the wrapped steps (`compile_steps`).
      state: the train state, or its `jax.ShapeDtypeStruct`s (only shapes are used).
      batches: ("train" | "eval", batch): one batch of each shape to compile, in the order
        the run first needs them (`GraphBatcher.use_order`; e.g. all-padding
        `GraphBatcher.build([], budget)`; train batches carry the seed axis when the steps are
        vmapped over seeds); at least one train batch.
      balance_active: an example of the balancing switch (a bool scalar).
      describe: names what the largest batch holds, for the memory message.
      memory_limit: bytes a program may use (default: `available_memory_bytes()`).
      workers: compile threads (default: the CPU count, at most the number of programs).
      store: where compiled programs are looked up first and saved after compiling
        (`ambjax.train.executables`; None: always compile).
      members: size of the members (seeds) axis `member_axis` of the state and train batches;
        with more than one, the memory is estimated from one member first.
      while_compiling: work for the calling thread while the other programs compile (the
        trainer initialises the train state there): at once when the state is far below the
        memory limit (`ACTIVATION_FACTOR`), else once the memory check has passed.
      wait: return once every program is compiled (the largest train program first, for the
        memory check). False: where the state is far below the memory limit, the programs
        compile in the order of `batches`, the update right after the first, and this returns
        once those two are compiled (and `while_compiling` is done); the others go on
        compiling in the background, each step waits for its own (`Programs.wait` for all;
        the largest's memory check raises at its first use). Near the limit, as with `wait`.

    Raises:
      ResourceError: the largest bucket's train program needs more memory than the device has.
      Interrupted / KeyboardInterrupt: passed on once the compile threads are stopped (the
        programs not started are cancelled).
    """
    start = time.perf_counter()
    ensure_trusted_compile_cache()
    keyed = {(kind, batch_key(b)): b for kind, b in batches}
    largest = max((k for k in keyed if k[0] == "train"),
                  key=lambda k: keyed[k].nodes.mask.shape[-1])
    logger.info(f"compiling {sum(k[0] == 'train' for k in keyed)} train and "
                f"{sum(k[0] == 'eval' for k in keyed)} eval shape(s) ...")

    loaded = []

    def stored(name, key, lower):
        if store is None:
            return lower().compile()
        compiled, was_loaded = store.get_or_compile(name, key, lower)
        if was_loaded:
            loaded.append(key)
        return compiled

    lowering = threading.Lock()

    def alone(lower: Callable):
        # tracing holds the GIL: programs traced side by side all reach XLA late; one at a
        # time, in the order submitted (the first needed first), each goes on to XLA's
        # compile (which runs outside the GIL) as soon as it is traced
        with lowering:
            return lower()

    limit = available_memory_bytes() if memory_limit is None else memory_limit

    def program(job):
        kind, key = job
        if kind == "update":
            return stored("update", (), lambda: alone(lambda: train_step.update.lower(
                state, state.params)))
        batch = keyed[job]
        if kind == "eval":
            return stored("eval", key, lambda: alone(lambda: eval_step.lower(
                state.params, batch)))
        compiled = stored("gradients", key, lambda: alone(lambda: train_step.gradients.lower(
            model_state(state), batch, balance_active)))
        need = program_bytes(compiled) if job == largest else None
        if need is not None and limit is not None and need > limit:
            raise ResourceError(
                f"the largest padded batch ({describe(batch)}) needs {need / 1e9:.1f} GB for "
                f"one train step; {limit / 1e9:.1f} GB are available. Lower data.batch_size, "
                "split or drop the longest dialogues, lower model.hidden_dim, or use a device "
                "with more memory")
        return compiled

    # far below the limit a refusal is unlikely: everything compiles at once (and the state
    # initialises) while the largest program's memory is checked; near it, nothing else starts
    # before that check has passed
    at_once = limit is None or _nbytes(state) * ACTIVATION_FACTOR <= limit
    background = at_once and not wait
    update = ("update", ())
    if background:           # in the order of first use, the update right after the first
        order = list(keyed)[:1] + [update] + list(keyed)[1:]
        ready = order[:2]
    else:                    # the largest train program first: its memory check
        order = [largest] + [k for k in keyed if k != largest and k[0] == "eval"] + [
            k for k in keyed if k != largest and k[0] == "train"] + [update]
        ready = order
    workers = max(1, min(workers or os.cpu_count() or 1, len(order)))
    # every compile runs in a worker thread, so that the main thread, waiting on it, takes
    # Ctrl-C / SIGTERM at once (a signal is only handled between Python bytecodes)
    pool = concurrent.futures.ThreadPoolExecutor(workers)
    futures = {}
    try:
        with _objects_so_far_frozen():
            if members > 1 and limit is not None:
                _check_members(train_step, state, keyed[largest], balance_active, members,
                               member_axis, limit,
                               lambda *a: pool.submit(stored, *a).result())
            if at_once:
                futures = {job: pool.submit(program, job) for job in order}
            else:        # the eval programs need no memory check: beside the largest
                futures = {job: pool.submit(program, job) for job in order
                           if job == largest or job[0] == "eval"}
                futures[largest].result()
                futures.update({job: pool.submit(program, job) for job in order
                                if job not in futures})
            if while_compiling is not None:
                while_compiling()
            results = {job: futures[job].result() for job in ready}
    except BaseException:
        # Ctrl-C / SIGTERM, a refusal or a failed compile: drop the programs not started; the
        # ones running finish in their threads before the interpreter exits (never torn down
        # mid-compile)
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=False)          # the background compiles, if any, go on
    pending = {job: f for job, f in futures.items() if job not in results}
    programs = Programs(
        train={key: c for (kind, key), c in results.items() if kind == "train"},
        eval={key: c for (kind, key), c in results.items() if kind == "eval"},
        update=results[update], largest_key=largest[1], jit_train=train_step,
        jit_eval=eval_step, pending=pending)
    from_store = f" ({len(loaded)} from the executable store)" if loaded else ""
    took = time.perf_counter() - start
    if not pending:
        programs.compiled_s = took
        need = programs.largest_train_bytes
        logger.info(f"compiled {len(order)} programs in {took:.1f}s{from_store}"
                    + (f"; largest train step {need / 1e9:.2f} GB" if need is not None else ""))
        return programs
    logger.info(f"compiled {len(results)} of {len(order)} programs in {took:.1f}s{from_store}; "
                f"the other {len(pending)} compile beside the first steps")
    last, watched = threading.Lock(), list(pending.values())

    def when_all_done(_):
        with last:
            if programs.compiled_s is None and all(f.done() for f in watched):
                programs.compiled_s = time.perf_counter() - start

    for future in watched:
        future.add_done_callback(when_all_done)
    return programs


@contextlib.contextmanager
def _objects_so_far_frozen():
    """Python's cyclic garbage collector leaves the objects that exist on entry alone until
    exit (`gc.freeze`): a run's data, model and caches are not garbage of the compile, and a
    full collection during tracing would walk them all, 10-18% of a train program's tracing
    with IEMOCAP's data loaded. A caller's own frozen objects are left as they are (nothing
    is frozen then)."""
    if gc.get_freeze_count():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


# a train step's memory is at most this many times its state's (AMB-DSGDN at hidden 512 on
# IEMOCAP: 1.0 GB for a 0.16 GB state); runs below the limit by that margin skip the one-seed
# estimate (a compile) and rely on the largest program's check
ACTIVATION_FACTOR = 16


def _nbytes(tree) -> int:
    return int(sum(np.prod(x.shape) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree)))


def _check_members(train_step: TrainStep, state, batch, balance_active, members: int, axis: int,
                   limit: int, stored: Callable) -> None:
    """Refuse `members` members (on `axis`) that cannot fit `limit` bytes: from the state's
    abstract size, then, unless far below the limit (`ACTIVATION_FACTOR`), from XLA's count
    of one member's train program."""
    per_device = (lambda x: x.shape[0]) if axis == 1 else (lambda x: 1)
    state_bytes = _nbytes(state) // max(1, per_device(jax.tree.leaves(state)[0]))
    if 2 * state_bytes > limit:                       # the state in, the updated state out
        raise ResourceError(
            f"{members} seeds need at least {2 * state_bytes / 1e9:.1f} GB for their train "
            f"states alone; {limit / 1e9:.1f} GB are available: at most "
            f"{max(0, members * limit // (2 * state_bytes))} seeds fit (lower `seeds` or "
            "model.hidden_dim)")
    if state_bytes * ACTIVATION_FACTOR <= limit:
        return             # far from the limit: the largest program's own check will do
    one = jax.tree.map(lambda x: jax.ShapeDtypeStruct(
        x.shape[:axis] + (1,) + x.shape[axis + 1:], x.dtype), (state, batch))
    logger.info(f"estimating the memory of {members} seeds from one ...")
    compiled = stored("gradients-one-seed", batch_key(one[1]),
                      lambda: train_step.gradients.lower(model_state(one[0]), one[1],
                                                         balance_active))
    per_member = program_bytes(compiled)
    if per_member is None:
        return
    if per_member * members > limit:
        raise ResourceError(
            f"{members} seeds need about {per_member * members / 1e9:.1f} GB "
            f"({per_member / 1e9:.2f} GB per seed, XLA's count of one seed's largest train "
            f"step); {limit / 1e9:.1f} GB are available: at most {limit // per_member} seeds "
            "fit (lower `seeds`, data.batch_size or model.hidden_dim)")
