"""The `Trainer`: one or several seeds of a run as one compiled program.

The train state carries a leading seed axis [S, ...] (S = number of seeds; [n_devices, S, ...]
under pmap): one jitted step is `jax.vmap`ped over it. Each seed keeps its own initialisation,
dropout and balancing keys (its `TrainState.rng`) and its own data order (the batch order of a
run of that seed alone); at each step the seeds' batches are padded to one budget, the largest
they need. Evaluation batches are packed into one padding bucket
(`GraphBatcher.with_packed_eval`), so that a run compiles one eval program. The state
lives on the device(s) between epochs; checkpoints copy one seed's slice to the host.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ambjax.data.dataset import DialogueDataset
from ambjax.graphs import GraphBatcher, merge_budgets
from ambjax.metrics import classification_report, weighted_f1
from ambjax.nn.model import AMBDSGDN, ModelConfig, count_parameters
from ambjax.nn.protocol import DialogueModel
from ambjax.host_memory import freed_memory_kept
from ambjax.train.compile import compile_programs, stored_programs
from ambjax.train.compile_process import compile_in_own_process
from ambjax.train.config import ConfigError, ExperimentConfig, fingerprint
from ambjax.train.distributed import local_device_range
from ambjax.train.executables import default_store
from ambjax.train.state import create_optimizer, create_train_state, parameter_initialiser
from ambjax.train.steps import compile_steps, model_state, replicate


logger = logging.getLogger("ambjax")


def _tree_identity(tree) -> list:
    """A tree's structure and its leaves' shapes and dtypes, as text (a store key's part)."""
    return [str(jax.tree_util.tree_structure(tree))] + [(tuple(x.shape), str(x.dtype))
                                                       for x in jax.tree.leaves(tree)]


def resolve_devices(n_devices: int | None) -> int:
    """`n_devices` checked against the local devices (None: all of them). A multi-process run
    uses every device of every process."""
    if jax.process_count() > 1:
        if n_devices not in (None, jax.device_count()):
            raise ConfigError(f"`n_devices` cannot be combined with {jax.process_count()} "
                              "processes: every device of every process is used")
        return jax.device_count()
    available = jax.local_device_count()
    if n_devices is None:
        return available
    if not 1 <= n_devices <= available:
        raise ConfigError(f"`n_devices` must be between 1 and the {available} local device(s) "
                          f"of this machine, got {n_devices}")
    return n_devices


def model_for(config: ExperimentConfig, dataset: DialogueDataset) -> ModelConfig:
    """The run's `ModelConfig` filled with the data's widths, classes and speakers."""
    return config.model.with_data({m: dataset.dims[m] for m in dataset.modalities},
                                  dataset.num_classes, dataset.num_speakers)


def model_fingerprint(model: DialogueModel, params) -> str:
    """What fixes the shapes of a model's parameters, for checkpoint compatibility: for
    AMB-DSGDN its config's `fingerprint` (settings such as dropout may change on resume); for
    any other model the hash of its class and of its parameter tree's paths, shapes and
    dtypes (`params` may be abstract)."""
    if isinstance(model, AMBDSGDN):
        return fingerprint(model.config)
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    blob = json.dumps([type(model).__name__] + [
        (jax.tree_util.keystr(path), list(np.shape(x)), str(x.dtype)) for path, x in leaves])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _same_shapes(tree, like) -> bool:
    """Whether `tree` has the structure, shapes and dtypes of `like`."""
    leaves, treedef = jax.tree.flatten(tree)
    like_leaves, like_treedef = jax.tree.flatten(like)
    return treedef == like_treedef and all(
        np.shape(a) == tuple(b.shape) and np.result_type(a) == b.dtype
        for a, b in zip(leaves, like_leaves))


class Trainer:
    """Compiled steps, batcher and train state of a run over `seeds` (default: the config's).

    Attributes:
      seeds: the seeds trained together (S of them).
      state: `TrainState` with a leading seed axis, on the device(s) (built when first used).
      abstract_state: its shapes and dtypes (`jax.ShapeDtypeStruct`), known without building it;
        abstract_seed_state: the same for one seed (no seed or device axis).
      num_parameters: parameters of one seed's model.
    """

    def __init__(self, model: DialogueModel, config: ExperimentConfig,
                 dataset: DialogueDataset, *, class_weights: Sequence[float] | None = None,
                 n_devices: int | None = None, seeds: Sequence[int] | None = None):
        """
        Args:
          model: any `ambjax.nn.DialogueModel` built for `dataset` (its modalities, widths,
            classes); `Trainer.from_config` builds AMB-DSGDN from `config.model`.
          config: the run's tree: data (window, batch size, buckets), optim, schedule and run
            (seed) are used; `config.model` only for `mask_rng`.
          dataset: the (standardised) dataset.
          class_weights: float [C] loss weights, one per class of `dataset`; None: unweighted.
          n_devices: local devices (None: all); seeds: trained together (default: the
            config's seed).

        Raises:
          ConfigError: class weights that do not fit the data, repeated seeds, or more devices
            than there are.
        """
        self.config = config
        self.dataset = dataset
        self.seeds = tuple(seeds) if seeds else (config.run.seed,)
        if len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"seeds must be distinct, got {list(self.seeds)}")
        if class_weights is not None and len(class_weights) != dataset.num_classes:
            raise ConfigError(f"{len(class_weights)} class weights (optim.class_weights) for "
                              f"data of {dataset.num_classes} classes "
                              f"{list(dataset.label_names)}")
        self.n_devices = resolve_devices(n_devices)
        self.n_local = jax.local_device_count() if jax.process_count() > 1 else self.n_devices
        self.model = model
        data = config.data
        self.batcher = GraphBatcher(dataset, window=data.window, batch_size=data.batch_size,
                                    n_devices=self.n_devices, growth=data.budget_growth,
                                    local_devices=local_device_range()
                                    if jax.process_count() > 1 else None)
        steps = self.batcher.run_steps(self.seeds, config.schedule.epochs)
        kept = merge_budgets(self.batcher.budgets, steps, data.compile_node_steps)
        # evaluation then packed into one of the kept buckets: one eval program, not one for
        # every bucket that batch_size consecutive dialogues of valid or test happen to need
        self.batcher = self.batcher.with_budgets(kept).with_packed_eval()
        if data.pack_rows:
            self.batcher = self.batcher.with_packed_rows(self.seeds, config.schedule.epochs)
        # (padding buckets the run uses, those padded into a larger one instead)
        self.bucket_counts = (sum(1 for b in steps if b in kept),
                              sum(1 for b in steps if b not in kept))
        weights = None if class_weights is None else jnp.asarray(class_weights, jnp.float32)
        self.total_steps = config.schedule.epochs * self.batcher.num_batches("train")
        self.class_weights = weights
        self.optimizer = create_optimizer(config.optim, total_steps=self.total_steps)
        self.train_step, self.eval_step = compile_steps(
            self.model, self.optimizer, self.n_devices, class_weights=weights,
            unimodal_weight=config.optim.unimodal_weight, seed_axis=True,
            mask_rng=config.model.mask_rng)
        example = self.batcher.build(dataset.split("train")[:self.n_devices])   # local shards
        if self.n_devices > 1:
            example = jax.tree.map(lambda x: x[0], example)
        self._example = example
        self._params_store = self._store({"init": repr(model), "example": [
            (tuple(np.shape(x)), str(np.result_type(x))) for x in jax.tree.leaves(example)]},
            n_devices=1)                                  # parameters do not depend on them
        stored = self._params_store and self._params_store.load_arrays("params", self.seeds[0])
        # a stored initialisation gives the state's shapes without tracing the model; else
        # the model's initialisation is traced once, for the shapes and every seed's values
        self._stored_params = {} if stored is None else {self.seeds[0]: stored}
        self._initialise, params = (None, stored) if stored is not None else \
            parameter_initialiser(self.model, example)
        one = jax.eval_shape(lambda p: create_train_state(self.model, example, self.optimizer, 0,
                                                          params=p), params)
        lead = ((self.n_local,) if self.n_devices > 1 else ()) + (len(self.seeds),)
        self.abstract_seed_state = one
        self.abstract_state = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(lead + x.shape, x.dtype), one)
        self.num_parameters = count_parameters(one.params)
        self.fingerprint = model_fingerprint(model, one.params)
        self._state = None
        self.programs = None           # after `compile`: the compiled executables by shape
        self.dims = {m: int(dataset.dims[m]) for m in dataset.modalities}

    @classmethod
    def from_config(cls, config: ExperimentConfig, dataset: DialogueDataset, *,
                    model: DialogueModel | None = None, **kwargs) -> "Trainer":
        """The Trainer of `model` (default: AMB-DSGDN as `config.model` describes it) with the
        class weights of `config.optim` (none when empty); keyword arguments as for
        `Trainer`."""
        return cls(model or AMBDSGDN(model_for(config, dataset)), config, dataset,
                   class_weights=config.optim.class_weights or None, **kwargs)

    def model_from_config(self) -> bool:
        """Whether the model is the AMB-DSGDN that `config.model` describes for this data
        (as `from_config` builds it), so that the config alone rebuilds it."""
        return repr(self.model) == repr(AMBDSGDN(model_for(self.config, self.dataset)))

    # --- state -------------------------------------------------------------------------------

    @property
    def state(self):
        """The `TrainState` of every seed, stacked [S, ...] ([n_devices, S, ...] under pmap),
        on the device(s); initialised from the seeds when first used (so that a run's memory
        is checked from `abstract_state` before any of it is allocated)."""
        self.init_state()
        return self._state

    def init_state(self) -> None:
        """Initialise every seed's train state now, unless it exists (`compile` calls this
        once the memory check has passed)."""
        if self._state is None:
            self._state = self.to_device([
                create_train_state(self.model, self._example, self.optimizer, seed,
                                   params=self._initial_params(seed))
                for seed in self.seeds])

    @state.setter
    def state(self, value) -> None:
        self._state = value

    def _initial_params(self, seed: int):
        """Seed `seed`'s initial parameters from the store in the compilation cache, computed
        (`init_params`) and stored there when missing; the same values either way."""
        params = self._stored_params.pop(seed, None)
        if params is None and self._params_store:
            params = self._params_store.load_arrays("params", seed)
        if params is not None and _same_shapes(params, self.abstract_seed_state.params):
            return params
        if self._initialise is None:           # the first seed's were stored, this one's not
            self._initialise = parameter_initialiser(self.model, self._example)[0]
        params = self._initialise(seed)
        if self._params_store:
            self._params_store.save_arrays("params", seed, params)
        return params

    def _store(self, identity: dict, n_devices: int, per_program: dict | None = None):
        """The store of compiled programs and initial parameters for `identity`
        (`default_store`), for ambjax's own models only: a store entry is trusted to match
        the code it was made by through the hash of ambjax's source, which does not cover a
        model defined elsewhere."""
        if not type(self.model).__module__.startswith("ambjax."):
            return None
        return default_store(identity, n_devices, per_program)

    def to_device(self, states: Sequence):
        """Per-seed host states -> the stacked device state (replicated for pmap)."""
        # stacked in host memory and placed in one transfer (one eager op per leaf would
        # dispatch ~120 small programs); one seed's leaves take the seed axis as views, which
        # XLA's CPU backend places without a copy (IEMOCAP's 157 MB state: `init_state` on a
        # warm start 0.7-1.1 -> 0.1-0.4 s on a 2-core AMD EPYC)
        stacked = jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]) if len(xs) > 1
                               else np.asarray(xs[0])[None], *states)
        return replicate(stacked, self.n_local) if self.n_devices > 1 else jax.device_put(stacked)

    def seed_state(self, k: int):
        """Seed k's state (no seed or device axis), as its checkpoint stores it: a host copy
        read from this process's first device, so that no process issues device work the
        others do not (in a multi-process run every device op must be matched)."""
        return self.seed_slice(self.state, k)

    def seed_slice(self, tree, k: int):
        """Seed k's slice (no seed or device axis) of a tree stacked like the state (e.g. a
        part of `state.params`), as a host copy read as `seed_state` reads it. A CPU array
        is sliced in host memory (`x[k]` would compile a program per leaf shape); an
        accelerator's on the device, so that only the seed's slice is copied."""
        def pick(x):
            if self.n_devices > 1:
                local = x.addressable_shards[0].data if hasattr(x, "addressable_shards") else x
                return np.asarray(local)[0, k]
            on_host = not isinstance(x, jax.Array) or {d.platform for d in x.devices()} == {"cpu"}
            return np.asarray(x)[k] if on_host else np.asarray(x[k])
        return jax.tree.map(pick, tree)

    def _per_seed(self, outputs: list) -> list[list[dict]]:
        """Step outputs [S, ...] (or [D, S, ...]) -> for each seed, its list of outputs."""
        outputs = jax.device_get(outputs)
        if self.n_devices > 1:
            outputs = [jax.tree.map(lambda x: x[0], o) for o in outputs]
        return [[jax.tree.map(lambda x: x[k], o) for o in outputs]
                for k in range(len(self.seeds))]

    # --- compilation -------------------------------------------------------------------------

    def compile(self, *, memory_limit: int | None = None, wait: bool = True) -> None:
        """Compile every bucket's train and eval program now (concurrently), checking the
        largest one's memory first against `memory_limit` bytes (default: what the device
        has; `ambjax.train.compile`); steps then dispatch to them. `wait=False`: return once
        the first step can run, the other programs compiling in the background in the order
        the run needs them (`compile_programs`; `self.programs.wait()` waits for them all)."""
        axis = 1 if self.n_devices > 1 else 0

        def example(kind: str, budget):    # an all-padding batch; train ones per seed
            batch = self.batcher.build([], budget)
            return batch if kind == "eval" else jax.tree.map(
                lambda x: np.stack([x] * len(self.seeds), axis=axis), batch)

        batches = [(kind, example(kind, b))
                   for kind, b in self.batcher.use_order(self.seeds, self.config.schedule.epochs)]
        if jax.process_count() > 1:
            # an ahead-of-time pmap executable expects global shapes when called in a
            # multi-process run, and lowering one costs a second compile: the pmapped steps
            # compile when first called, without the memory check (at every start, but for
            # process 0: JAX 0.10.2 writes persistent-cache entries from process 0 only, and
            # on the CPU its key for a program differs between processes)
            logger.info("multi-process run: programs compile at their first step")
            return
        store = self._store(self.program_identity(), self.n_devices,
                            {"update": self.optimiser_identity()})
        kept = store is not None and freed_memory_kept()
        stored = kept and stored_programs(store, batches)
        if kept and not stored:
            # XLA's compile threads would queue on this process's one malloc arena
            # (`ambjax.host_memory`): a helper process compiles into the store instead
            stored = (compile_in_own_process(self, memory_limit=memory_limit)
                      and stored_programs(store, batches))
        # on that one arena, one thread loads stored programs faster than two (IEMOCAP's
        # five: 1.8 s against 2.6 s on a 2-core AMD EPYC)
        workers = 1 if stored else None
        programs = compile_programs(self.train_step, self.eval_step, self.abstract_state,
                                    batches, jnp.asarray(True), describe=self._describe_largest,
                                    memory_limit=memory_limit, store=store, workers=workers,
                                    members=len(self.seeds), member_axis=axis,
                                    while_compiling=self.init_state, wait=wait)
        self.programs = programs
        self.train_step, self.eval_step = programs.train_step, programs.eval_step

    def wait_compiled(self) -> None:
        """Wait for the programs that `compile(wait=False)` left compiling (at once when
        none are).

        Raises:
          ResourceError (the largest train step cannot fit), or what a compile raised.
        """
        if self.programs is not None:
            self.programs.wait()

    def stop_compiling(self) -> None:
        """Drop the compiles that `compile(wait=False)` queued and did not start (the ones
        under way finish); their shapes compile at their first step, if any comes."""
        if self.programs is not None:
            self.programs.cancel()

    def program_flops(self, kind: str, batch) -> float:
        """FLOPs of one compiled `kind` ("train" or "eval") step on `batch`'s shape (after
        `compile`); a train batch carries the seed axis."""
        return self.programs.flops(kind, batch)

    @property
    def largest_train_step_bytes(self) -> int | None:
        """XLA's memory count of the largest compiled train step (after `compile`)."""
        return self.programs.largest_train_bytes

    def program_identity(self) -> dict:
        """What the compiled steps compute besides their batch shapes and the optimiser: the
        key of their entries in the executable store (`ambjax.train.executables`). The
        gradients and eval programs depend on nothing else (the gradients program receives
        the state without the optimiser's, `ambjax.train.steps.model_state`); the update
        program on `optimiser_identity()` too, so runs that differ only in their optimiser,
        learning rate or length share the other two."""
        return {"model": repr(self.model), "mask_rng": self.config.model.mask_rng,
                "unimodal_weight": self.config.optim.unimodal_weight,
                "class_weights": None if self.class_weights is None
                else np.asarray(self.class_weights).tolist(),
                "devices": self.n_devices, "seeds": len(self.seeds),
                "state": _tree_identity(model_state(self.abstract_state))}

    def optimiser_identity(self) -> dict:
        """What the update program computes besides `program_identity()`: the optimiser's
        settings, the schedule's length and the optimiser state's structure."""
        return {"optim": dataclasses.asdict(self.config.optim), "total_steps": self.total_steps,
                "opt_state": _tree_identity(self.abstract_state.opt_state)}

    def _describe_largest(self, batch) -> str:
        longest = max(self.dataset.dialogues.values(), key=len)
        seeds = f"{len(self.seeds)} seeds x " if len(self.seeds) > 1 else ""
        return (f"{seeds}{batch.nodes.mask.shape[-1]} node slots per device; the longest "
                f"dialogue, {longest.id!r}, has {len(longest)} utterances")

    # --- epochs ------------------------------------------------------------------------------

    def train_epoch(self, epoch: int) -> list[dict]:
        """One pass over the train split for every seed (each in its own order); returns each
        seed's host-side epoch metrics."""
        cfg = self.config
        active = np.asarray(cfg.model.balance and epoch >= cfg.schedule.balance_warmup)
        outputs = []
        n = self.batcher.num_batches("train")
        report_every = max(1, n // 4) if n >= 20 else 0
        start = time.perf_counter()
        for i, batch in enumerate(self.batcher.seed_batches("train", self.seeds, epoch=epoch)):
            self.state, metrics = self.train_step(self.state, batch, active)
            outputs.append(metrics)
            if report_every and (i + 1) % report_every == 0 and i + 1 < n:
                logger.info("  epoch %d: %d/%d batches (%.1fs)", epoch + 1, i + 1, n,
                            time.perf_counter() - start)
        per_seed = self._per_seed(outputs)
        elapsed = time.perf_counter() - start
        return [self._train_metrics(o, elapsed) for o in per_seed]

    def _train_metrics(self, outputs: list[dict], elapsed: float) -> dict:
        counts = np.array([o["utterances"] for o in outputs], np.float64)
        conf = np.sum([o["confusion"] for o in outputs], axis=0)
        report = classification_report(conf, self.dataset.label_names)
        return {"loss": float(np.dot([o["loss"] for o in outputs], counts) / counts.sum()),
                "accuracy": report["accuracy"], "weighted_f1": report["weighted_f1"],
                "modality_f1": np.mean([o["modality_f1"] for o in outputs], 0).tolist(),
                "q": np.mean([o["q"] for o in outputs], 0).tolist(),
                "seconds": elapsed, "steps_per_s": len(outputs) / elapsed}

    def evaluate(self, split: str) -> list[dict]:
        """Each seed's metrics on a split: classification_report plus "loss" and
        "modality_f1" {m: weighted F1}."""
        per_seed = self._per_seed([self.eval_step(self.state.params, b)
                                   for b in self.batcher.batches(split)])
        return [self._eval_report(o) for o in per_seed]

    def _eval_report(self, outputs: list[dict]) -> dict:
        total = sum(int(o["utterances"]) for o in outputs)
        report = classification_report(np.sum([o["confusion"] for o in outputs], 0),
                                       self.dataset.label_names)
        mod_conf = np.sum([o["modality_confusion"] for o in outputs], 0)
        report["loss"] = float(sum(o["loss_sum"] for o in outputs) / max(total, 1))
        report["modality_f1"] = dict(zip(self.dataset.modalities,
                                         np.asarray(weighted_f1(mod_conf)).tolist()))
        return report
