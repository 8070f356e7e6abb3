"""The compile cache and the executable store load nothing that others could have planted:
folders and entries that are not the user's own, or that others can write, are refused with
one line and the run compiles as if there were no cache; every entry is checked against the
full key it was stored under; JAX settings that change the program are part of that key."""

import os
import pickle
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from ambjax.train.cache import untrusted_reason
from ambjax.train.executables import STORE_FOLDER, ExecutableStore, default_store

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class _Planted:
    """Unpickling this creates the file `path`: a stand-in for code an attacker runs."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def _compiled():
    x = jnp.ones(3)
    return x, jax.jit(lambda v: 2 * v).lower(x).compile()


def test_untrusted_reason_judges_owner_mode_parents_and_entries(tmp_path):
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    assert untrusted_reason(str(private)) is None
    assert untrusted_reason(str(private / "not" / "yet")) is None      # judged by its parents
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    assert "can be written by others (mode 0777)" in untrusted_reason(str(shared))
    assert "can be written by others" in untrusted_reason(str(shared / "sub"))
    (private / "entry").write_bytes(b"x")
    (private / "entry").chmod(0o666)
    assert untrusted_reason(str(private)).startswith(str(private / "entry"))
    # a sticky, world-writable parent (like /tmp) is fine: no one can replace what you own
    sticky = tmp_path / "sticky"
    sticky.mkdir()
    sticky.chmod(0o1777)
    (sticky / "mine").mkdir(mode=0o700)
    assert untrusted_reason(str(sticky / "mine")) is None


def test_a_planted_or_swapped_entry_is_never_loaded(tmp_path):
    folder = tmp_path / "store"
    x, compiled = _compiled()
    store = ExecutableStore(str(folder), {"fn": "double", "lr": 1e-3})
    other = ExecutableStore(str(folder), {"fn": "double", "lr": 0.05})
    store.save("double", x.shape, compiled)
    assert store.load("double", x.shape)(x).tolist() == [2.0, 2.0, 2.0]
    # the lr 1e-3 entry renamed to where the lr 0.05 entry would be: its key does not match
    os.replace(store._path("double", x.shape), other._path("double", x.shape))
    assert other.load("double", x.shape) is None
    # a planted pickle (no key header) is not unpickled, even with private permissions
    marker = tmp_path / "pwned"
    path = store._path("double", x.shape)
    with open(path, "wb") as f:
        pickle.dump(_Planted(str(marker)), f)
    os.chmod(path, 0o600)
    assert store.load("double", x.shape) is None and not marker.exists()
    # a genuine entry that others can write is not read either
    store.save("double", x.shape, compiled)
    os.chmod(path, 0o666)
    assert store.load("double", x.shape) is None
    os.chmod(path, 0o600)
    assert store.load("double", x.shape) is not None


def test_jax_settings_are_part_of_the_key(tmp_path):
    before = jax.config.jax_threefry_partitionable
    a = ExecutableStore(str(tmp_path), {"fn": "f"})
    try:
        jax.config.update("jax_threefry_partitionable", not before)
        b = ExecutableStore(str(tmp_path), {"fn": "f"})
    finally:
        jax.config.update("jax_threefry_partitionable", before)
    assert a._path("train", (3,)) != b._path("train", (3,))


def test_library_compiles_refuse_an_untrusted_jax_cache_and_links_are_followed(tmp_path,
                                                                               caplog):
    from ambjax.train.cache import ensure_trusted_compile_cache
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    (tmp_path / "private").mkdir(mode=0o700)
    (tmp_path / "private" / "link").symlink_to(shared)
    assert "mode 0777" in untrusted_reason(str(tmp_path / "private" / "link"))
    before = jax.config.jax_compilation_cache_dir
    jax.config.update("jax_compilation_cache_dir", str(shared))
    try:
        assert ensure_trusted_compile_cache() is None
        assert jax.config.jax_compilation_cache_dir is None    # JAX reads nothing from it
    finally:
        jax.config.update("jax_compilation_cache_dir", before)
    assert "compilation cache not used" in caplog.text


def test_default_store_refuses_a_folder_others_can_write(tmp_path, caplog):
    cache = tmp_path / "cache"
    (cache / STORE_FOLDER).mkdir(parents=True)
    (cache / STORE_FOLDER).chmod(0o777)
    before = jax.config.jax_compilation_cache_dir
    jax.config.update("jax_compilation_cache_dir", str(cache))
    try:
        assert default_store({"fn": "f"}, 1) is None
    finally:
        jax.config.update("jax_compilation_cache_dir", before)
    assert "executable store not used" in caplog.text and "mode 0777" in caplog.text


def test_a_world_writable_cache_is_turned_off_with_one_warning(tmp_path):
    cache = tmp_path / "shared-cache"
    (cache / STORE_FOLDER).mkdir(parents=True)
    cache.chmod(0o777)
    marker = tmp_path / "pwned"
    for folder in (cache, cache / STORE_FOLDER):
        with open(folder / "planted.pkl", "wb") as f:
            pickle.dump(_Planted(str(marker)), f)
    # what every command does first, then a compile: nothing is read from or written to it
    code = ("import jax, logging; from ambjax.cli import run_main; "
            "from ambjax.train.cache import enable_compile_cache; "
            "from ambjax.train.executables import default_store\n"
            "def main(_):\n"
            "    print(enable_compile_cache(), default_store({}, 1))\n"
            "    jax.jit(lambda x: x + 1)(1.0).block_until_ready()\n"
            "raise SystemExit(run_main(main, []))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, timeout=120,
                            env={**os.environ, "AMBJAX_CACHE_DIR": str(cache)})
    assert result.returncode == 0, result.stderr[-800:]
    assert result.stdout.split() == ["None", "None"]
    warning = result.stderr.strip().splitlines()
    assert len(warning) == 1 and "compilation cache not used" in warning[0], result.stderr
    assert "can be written by others (mode 0777)" in warning[0]
    assert not marker.exists()
    assert sorted(os.listdir(cache)) == ["executables", "planted.pkl"]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to own a folder as another user")
def test_a_folder_owned_by_someone_else_is_refused(tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir(mode=0o755)
    os.chown(foreign, 12345, 12345)
    assert "is owned by uid 12345" in untrusted_reason(str(foreign))
