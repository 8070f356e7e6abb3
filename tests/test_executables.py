"""The executable store: a warm start loads the compiled programs instead of tracing them, the
loaded programs compute what compiled ones do, nothing stale or damaged is trusted, and only
programs that XLA compiled afresh are stored."""

import os

import jax
import jax.numpy as jnp
import numpy as np

from conftest import TINY_PROGRAMS, compiled_trainer
from ambjax.train.config import replace_key
from ambjax.train.compile import batch_key
from ambjax.train.executables import STORE_FOLDER, ExecutableStore
from ambjax.train import Trainer, load_dataset
from ambjax.train.state import init_params
from experiments.configs import make_config


def _ready(config, data):
    """The compiled trainer and its last progress line (logger "ambjax")."""
    trainer, lines = compiled_trainer(config, data)
    return trainer, lines[-1]


def _step(trainer, batch):
    state = jax.tree.map(jnp.copy, trainer.state)        # the step donates its state
    return trainer.train_step(state, batch, jnp.asarray(True))


def test_warm_start_loads_programs_that_compute_the_same(cache_dir):
    config = make_config("tiny", TINY_PROGRAMS)
    data = load_dataset(config.data)
    cold, cold_line = _ready(config, data)
    entries = sorted((cache_dir / STORE_FOLDER).glob("*.pkl"))
    assert {p.name.split("-")[0] for p in entries} == {"gradients", "update", "eval"}
    assert len(list((cache_dir / STORE_FOLDER).glob("params-*.npy"))) == 1
    assert "executable store" not in cold_line
    warm, warm_line = _ready(config, data)
    assert f"({len(entries)} from the executable store)" in warm_line
    batch = next(cold.batcher.seed_batches("train", cold.seeds, epoch=0))
    (s1, m1), (s2, m2) = _step(cold, batch), _step(warm, batch)
    for a, b in zip(jax.tree.leaves((s1, m1)), jax.tree.leaves((s2, m2))):
        np.testing.assert_array_equal(a, b)
    # another optimiser, learning rate or run length is another update program, but the same
    # gradients and eval programs (shared); another loss weighting is another gradients program
    key, eval_key = batch_key(batch), batch_key(next(cold.batcher.batches("test")))

    def store_of(trainer):
        return ExecutableStore(str(cache_dir / STORE_FOLDER), trainer.program_identity(),
                               {"update": trainer.optimiser_identity()})

    for change in (("optim.optimizer", "sgd"), ("optim.lr", 0.5), ("schedule.epochs", 7)):
        store = store_of(Trainer.from_config(replace_key(config, *change), data, n_devices=1))
        assert store.load("update", ()) is None
        assert store.load("gradients", key) is not None and store.load("eval", eval_key)
    store = store_of(Trainer.from_config(replace_key(config, "optim.unimodal_weight", 0.3),
                                         data, n_devices=1))
    assert store.load("gradients", key) is None and store.load("eval", eval_key) is None
    stored = store_of(warm)
    assert stored.load("gradients", key) is not None and stored.load("update", ()) is not None
    # the shared programs run for another optimiser's state: the first step's loss is the same
    sgd, sgd_line = _ready(replace_key(config, "optim.optimizer", "sgd"), data)
    assert "(2 from the executable store)" in sgd_line
    np.testing.assert_array_equal(_step(sgd, batch)[1]["loss"], m1["loss"])


def test_damaged_entries_are_recompiled_and_cached_programs_not_stored(cache_dir):
    config = make_config("tiny", TINY_PROGRAMS)
    data = load_dataset(config.data)
    first, _ = _ready(config, data)
    store = cache_dir / STORE_FOLDER
    for entry in store.glob("*.pkl"):
        entry.write_bytes(entry.read_bytes()[:100])
    again, line = _ready(config, data)
    assert "executable store" not in line
    batch = next(first.batcher.seed_batches("train", first.seeds, epoch=0))
    np.testing.assert_array_equal(_step(first, batch)[1]["loss"], _step(again, batch)[1]["loss"])
    # a program that JAX's persistent cache served is not re-serialised (such copies break)
    for entry in store.glob("*.pkl"):
        entry.unlink()
    _ready(config, data)
    assert not list(store.glob("*.pkl"))


def test_initial_parameters_are_stored_and_read_back_unchanged(cache_dir, monkeypatch):
    config = make_config("tiny", TINY_PROGRAMS)
    data = load_dataset(config.data)
    cold = Trainer.from_config(config, data, n_devices=1, seeds=(3, 4))
    expected = [init_params(cold.model, cold._example, seed) for seed in (3, 4)]
    cold.init_state()
    for k, params in enumerate(expected):
        for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(cold.seed_state(k).params)):
            np.testing.assert_array_equal(a, b)
    entries = sorted((cache_dir / STORE_FOLDER).glob("params-*.npy"))
    assert len(entries) == 2

    # a warm start reads them: no initialiser runs, the values are the same bits
    def refuse(*_):
        raise AssertionError("initialised again")

    monkeypatch.setattr("ambjax.train.trainer.parameter_initialiser", refuse)
    monkeypatch.setattr("ambjax.train.state.parameter_initialiser", refuse)
    warm = Trainer.from_config(config, data, n_devices=1, seeds=(3, 4))
    # the state's shapes come from the stored parameters, without tracing the model
    assert (jax.tree.structure(warm.abstract_state) == jax.tree.structure(cold.abstract_state))
    assert jax.tree.leaves(warm.abstract_state) == jax.tree.leaves(cold.abstract_state)
    warm.init_state()
    for a, b in zip(jax.tree.leaves(cold.state), jax.tree.leaves(warm.state)):
        np.testing.assert_array_equal(a, b)

    # a damaged entry, or one whose arrays do not fit the model, is recomputed
    monkeypatch.undo()
    whole = entries[0].read_bytes()
    entries[0].write_bytes(whole[:-10])
    other = Trainer.from_config(config, data, n_devices=1, seeds=(3, 4))
    other.init_state()
    for a, b in zip(jax.tree.leaves(cold.state), jax.tree.leaves(other.state)):
        np.testing.assert_array_equal(a, b)
    assert entries[0].read_bytes() == whole                # rewritten whole


def test_stored_arrays_come_back_as_the_same_tree(tmp_path):
    store = ExecutableStore(str(tmp_path), {"fn": "f"})
    tree = {"b": {"kernel": np.arange(6, dtype=np.float32).reshape(2, 3)},
            "a": np.zeros(4, np.int32)}
    store.save_arrays("params", 1, tree)
    back = store.load_arrays("params", 1)
    assert jax.tree.structure(back) == jax.tree.structure(tree)
    assert jax.tree.all(jax.tree.map(
        lambda x, y: x.dtype == y.dtype and np.array_equal(x, y), back, tree))
    assert store.load_arrays("params", 2) is None                            # another key
    store.save_arrays("params", 3, [np.zeros(2)])                           # not nested dicts
    assert store.load_arrays("params", 3) is None
    path = next(tmp_path.glob("params-*.npy"))
    path.write_bytes(path.read_bytes() + b"\0")                             # trailing data
    assert store.load_arrays("params", 1) is None


def test_models_defined_outside_ambjax_use_no_store(cache_dir):
    """A store entry is trusted through the hash of ambjax's source: a model from elsewhere
    could change without its entries changing, so its programs and parameters are not kept."""
    from experiments.compose import TwoModalityGraphClassifier
    config = make_config("tiny", TINY_PROGRAMS + ["data.modalities=text,audio"])  # its two
    data = load_dataset(config.data)
    trainer = Trainer(TwoModalityGraphClassifier(data.num_classes), config, data, n_devices=1)
    trainer.compile()
    trainer.init_state()
    assert not list((cache_dir / STORE_FOLDER).glob("*"))


def test_array_entries_stay_within_their_budget_least_recently_used_first(tmp_path,
                                                                            monkeypatch):
    store = ExecutableStore(str(tmp_path), {"fn": "f"})
    tree = {"w": np.zeros(1000, np.float32)}                   # ~4 kB per entry
    store.save_arrays("params", 0, tree)
    size = next(tmp_path.glob("params-*.npy")).stat().st_size
    monkeypatch.setattr(ExecutableStore, "ARRAY_BUDGET_BYTES", 2 * size)
    other = tmp_path / "train-0123.pkl"                         # not an array entry: kept
    other.write_bytes(b"x" * 3 * size)
    for seed in (1, 2):
        store.save_arrays("params", seed, tree)
        for entry in tmp_path.glob("params-*.npy"):             # distinct, ordered use times
            os.utime(entry, (entry.stat().st_atime, entry.stat().st_mtime - 1))
    # seed 0 was used least recently: gone; 1 and 2 fit the budget
    assert store.load_arrays("params", 0) is None
    assert store.load_arrays("params", 1) is not None and other.exists()
    # reading seed 1 made it the most recent, so the next save evicts seed 2
    store.save_arrays("params", 3, tree)
    assert store.load_arrays("params", 2) is None
    assert store.load_arrays("params", 1) is not None
    assert store.load_arrays("params", 3) is not None


def test_a_program_jaxs_cache_holds_under_another_store_key_is_compiled_and_stored(cache_dir):
    """The store's key changes (an edit or upgrade of ambjax, another `jax.config` setting)
    while the program does not: JAX's persistent cache holds it, but a program it serves
    cannot be stored (jax 0.10.2 on CPU), so without a compile of the store's own every later
    start would trace it again. The new key's first start compiles and stores it."""
    x = jnp.arange(8.0)
    f = jax.jit(lambda v: jnp.sin(v) * 2)
    old = ExecutableStore(str(cache_dir / STORE_FOLDER), {"ambjax": "before"})
    old.get_or_compile("f", x.shape, lambda: f.lower(x))
    assert old.load("f", x.shape) is not None
    jax.clear_caches()                     # as a new process: only JAX's persistent cache left
    new = ExecutableStore(str(cache_dir / STORE_FOLDER), {"ambjax": "after"})
    compiled, loaded = new.get_or_compile("f", x.shape, lambda: f.lower(x))
    assert not loaded
    np.testing.assert_array_equal(compiled(x), f(x))
    stored = new.load("f", x.shape)
    assert stored is not None
    np.testing.assert_array_equal(stored(x), f(x))
