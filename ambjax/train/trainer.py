"""The `Trainer`: one or several seeds of a run as one compiled program.

The train state carries a leading seed axis [S, ...] (S = number of seeds; [n_devices, S, ...]
under pmap): one jitted step is `jax.vmap`ped over it. Each seed keeps its own initialisation,
dropout and balancing keys (its `TrainState.rng`) and its own data order (the batch order of a
run of that seed alone); at each step the seeds' batches are padded to one budget, the largest
they need. The state lives on the device(s) between epochs; checkpoints copy one seed's slice to
the host.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ambjax.data.dataset import DialogueDataset
from ambjax.graphs import GraphBatcher
from ambjax.losses import IEMOCAP_CLASS_WEIGHTS
from ambjax.metrics import classification_report, weighted_f1
from ambjax.nn.model import AMBDSGDN, ModelConfig, count_parameters
from ambjax.train.compile import compile_programs
from ambjax.train.config import ConfigError, ExperimentConfig, fingerprint
from ambjax.train.distributed import local_device_range
from ambjax.train.executables import default_store
from ambjax.train.state import create_optimizer, create_train_state
from ambjax.train.steps import compile_steps, replicate


def resolve_devices(n_devices: int | None) -> int:
    """`n_devices` checked against the local devices (None: all of them). A multi-process run
    uses every device of every process."""
    if jax.process_count() > 1:
        if n_devices not in (None, jax.device_count()):
            raise ConfigError(f"--devices cannot be combined with {jax.process_count()} "
                              "processes: every device of every process is used")
        return jax.device_count()
    available = jax.local_device_count()
    if n_devices is None:
        return available
    if not 1 <= n_devices <= available:
        raise ConfigError(f"--devices must be between 1 and the {available} local device(s) "
                          f"of this machine, got {n_devices}")
    return n_devices


def model_for(config: ExperimentConfig, dataset: DialogueDataset) -> ModelConfig:
    """The run's `ModelConfig` filled with the data's widths, classes and speakers."""
    return config.model.with_data({m: dataset.dims[m] for m in dataset.modalities},
                                  dataset.num_classes, dataset.num_speakers)


def _stack(trees):
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


class Trainer:
    """Compiled steps, batcher and train state of a run over `seeds` (default: the config's).

    Attributes:
      seeds: the seeds trained together (S of them).
      state: `TrainState` with a leading seed axis, on the device(s) (built when first used).
      abstract_state: its shapes and dtypes (`jax.ShapeDtypeStruct`), known without building it.
      num_parameters: parameters of one seed's model.
    """

    def __init__(self, config: ExperimentConfig, dataset: DialogueDataset, *,
                 n_devices: int | None = None, seeds: Sequence[int] | None = None):
        self.config = config
        self.dataset = dataset
        self.seeds = tuple(seeds) if seeds else (config.run.seed,)
        if len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"seeds must be distinct, got {list(self.seeds)}")
        self.n_devices = resolve_devices(n_devices)
        self.n_local = jax.local_device_count() if jax.process_count() > 1 else self.n_devices
        self.model_config = model_for(config, dataset)
        self.fingerprint = fingerprint(self.model_config)
        self.model = AMBDSGDN(self.model_config)
        data = config.data
        self.batcher = GraphBatcher(dataset, window=data.window, batch_size=data.batch_size,
                                    n_devices=self.n_devices, growth=data.budget_growth,
                                    local_devices=local_device_range()
                                    if jax.process_count() > 1 else None)
        weights = (jnp.asarray(IEMOCAP_CLASS_WEIGHTS) if config.optim.class_weights
                   and dataset.num_classes == len(IEMOCAP_CLASS_WEIGHTS) else None)
        self.total_steps = config.schedule.epochs * self.batcher.num_batches("train")
        self.class_weights = weights
        self.optimizer = create_optimizer(config.optim, total_steps=self.total_steps)
        self.train_step, self.eval_step = compile_steps(
            self.model, self.optimizer, self.n_devices, class_weights=weights,
            unimodal_weight=config.optim.unimodal_weight, seed_axis=True,
            mask_rng=self.model_config.mask_rng)
        example = self.batcher.build(dataset.split("train")[:self.n_devices])   # local shards
        if self.n_devices > 1:
            example = jax.tree.map(lambda x: x[0], example)
        self._example = example
        one = jax.eval_shape(lambda: create_train_state(self.model, example, self.optimizer, 0))
        lead = ((self.n_local,) if self.n_devices > 1 else ()) + (len(self.seeds),)
        self.abstract_state = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(lead + x.shape, x.dtype), one)
        self.num_parameters = count_parameters(one.params)
        self._state = None
        self.dims = {m: int(dataset.dims[m]) for m in dataset.modalities}

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
                create_train_state(self.model, self._example, self.optimizer, seed)
                for seed in self.seeds])

    @state.setter
    def state(self, value) -> None:
        self._state = value

    def to_device(self, states: Sequence):
        """Per-seed host states -> the stacked device state (replicated for pmap)."""
        stacked = _stack([jax.tree.map(jnp.asarray, s) for s in states])
        return replicate(stacked, self.n_local) if self.n_devices > 1 else stacked

    def seed_state(self, k: int):
        """Seed k's state (no seed or device axis), as its checkpoint stores it: a host copy
        read from this process's first device, so that no process issues device work the
        others do not (in a multi-process run every device op must be matched)."""
        def pick(x):
            if self.n_devices > 1:
                local = x.addressable_shards[0].data if hasattr(x, "addressable_shards") else x
                return np.asarray(local)[0, k]
            return x[k]
        return jax.tree.map(pick, self.state)

    def _per_seed(self, outputs: list) -> list[list[dict]]:
        """Step outputs [S, ...] (or [D, S, ...]) -> for each seed, its list of outputs."""
        outputs = jax.device_get(outputs)
        if self.n_devices > 1:
            outputs = [jax.tree.map(lambda x: x[0], o) for o in outputs]
        return [[jax.tree.map(lambda x: x[k], o) for o in outputs]
                for k in range(len(self.seeds))]

    # --- compilation -------------------------------------------------------------------------

    def compile(self, log: Callable[[str], None] | None = None, *,
                memory_limit: int | None = None) -> None:
        """Compile every bucket's train and eval program now (concurrently), checking the
        largest one's memory first against `memory_limit` bytes (default: what the device
        has; `ambjax.train.compile`); steps then dispatch to them."""
        axis = 1 if self.n_devices > 1 else 0
        used = self.batcher.budgets_used(self.seeds, self.config.schedule.epochs)
        train = [jax.tree.map(lambda x: np.stack([x] * len(self.seeds), axis=axis),
                              self.batcher.build([], b)) for b in used["train"]]
        evals = [self.batcher.build([], b) for b in used["eval"]]
        if jax.process_count() > 1:
            # an ahead-of-time pmap executable expects global shapes when called in a
            # multi-process run, and lowering one costs a second compile: the pmapped steps
            # compile when first called (through the persistent cache), without the memory check
            if log:
                log("multi-process run: programs compile at their first step")
            return
        store = default_store(self.program_identity(), self.n_devices)
        programs = compile_programs(self.train_step, self.eval_step, self.abstract_state, train,
                                    evals, jnp.asarray(True), describe=self._describe_largest,
                                    memory_limit=memory_limit, log=log, store=store,
                                    members=len(self.seeds), member_axis=axis)
        self.programs = programs
        self.train_step, self.eval_step = programs.train_step, programs.eval_step
        self.init_state()

    def program_identity(self) -> dict:
        """What the compiled steps compute besides their batch shapes: the key of their
        entries in the executable store (`ambjax.train.executables`)."""
        return {"model": dataclasses.asdict(self.model_config),
                "optim": dataclasses.asdict(self.config.optim), "total_steps": self.total_steps,
                "class_weights": None if self.class_weights is None
                else np.asarray(self.class_weights).tolist(),
                "devices": self.n_devices, "seeds": len(self.seeds),
                "state": [str(jax.tree_util.tree_structure(self.abstract_state))]
                + [(tuple(x.shape), str(x.dtype)) for x in jax.tree.leaves(self.abstract_state)]}

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
        active = jnp.asarray(cfg.model.balance and epoch >= cfg.schedule.balance_warmup)
        outputs = []
        n = self.batcher.num_batches("train")
        report_every = max(1, n // 4) if n >= 20 else 0
        start = time.perf_counter()
        for i, batch in enumerate(self.batcher.seed_batches("train", self.seeds, epoch=epoch)):
            self.state, metrics = self.train_step(self.state, batch, active)
            outputs.append(metrics)
            if report_every and (i + 1) % report_every == 0 and i + 1 < n:
                print(f"  epoch {epoch + 1}: {i + 1}/{n} batches "
                      f"({time.perf_counter() - start:.1f}s)", file=sys.stderr, flush=True)
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
