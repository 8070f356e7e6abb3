"""Test set-up: 4 fake CPU devices (for pmap tests), a persistent compilation cache so that
identical programs compile once per session, and small shared datasets."""

import os
import tempfile

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=4").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_compilation_cache_dir",
                  os.path.join(tempfile.gettempdir(), "ambjax-test-jax-cache"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)

from ambjax.data import make_synthetic  # noqa: E402

SMALL_DIMS = {"text": 12, "audio": 10, "visual": 8}


@pytest.fixture(scope="session")
def iemocap_small():
    return make_synthetic("iemocap", scale=0.08, dims=SMALL_DIMS, seed=3)


@pytest.fixture(scope="session")
def meld_small():
    return make_synthetic("meld", scale=0.03, dims=SMALL_DIMS, seed=4)
