"""Test set-up: 4 fake CPU devices (for pmap tests), a persistent compilation cache so that
identical programs compile once per session, and small shared datasets.

XLA's backend (LLVM) optimisation is off (`--xla_backend_optimization_level=0`) and its fusions
use the legacy emitters (`--xla_cpu_use_fusion_emitters=false`): the suite is dominated by
compiling many small programs, which the first makes ~40% faster and the second another ~40%
(a tiny eager op 36 -> 20 ms on a 2-core AMD EPYC), while the programs compute the same values
up to float rounding (the HLO passes still run; LLVM's levels do not reassociate float
arithmetic). A test that needs the bits of the default code generation compiles with
`compiler_options` (tests/test_train.py). Subprocesses started by tests inherit the flags.

The command-line tools run as programs restart themselves with huge pages
(`ambjax.host_memory.restart_with_huge_pages`); in the suite they do not
(`AMBJAX_HUGE_PAGES=0`): a module run as __main__ inside a test process would replace that
process, and a restart costs the subprocess tests a second import. Nor do they keep freed
memory (`AMBJAX_KEEP_FREED_MEMORY=0`): the tools called in the test process would put the
whole suite on one malloc arena (`ambjax.host_memory`). The tests of the restart and of the
kept-memory mode set the variables themselves.
"""

import os
import tempfile

TEST_XLA_FLAGS = "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + TEST_XLA_FLAGS
                           + " --xla_force_host_platform_device_count=4").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["AMBJAX_HUGE_PAGES"] = "0"
os.environ["AMBJAX_KEEP_FREED_MEMORY"] = "0"

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_compilation_cache_dir",
                  os.path.join(tempfile.gettempdir(), "ambjax-test-jax-cache"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)

import gc  # noqa: E402
import hashlib  # noqa: E402
import logging  # noqa: E402

from ambjax.data import make_synthetic  # noqa: E402

# the suite's CPU is mostly tracing and lowering, which allocate millions of objects that
# live until a trace ends: Python's cyclic collector runs far less often (its youngest
# generation every 50,000 allocations, not 700; the older ones every 50 and 100 of those, not
# 10 and 10): tests/test_accelerators.py alone 6-24% faster in four alternating pairs, the whole
# suite's CPU ~6% less in one hour (610 -> 573 s); 2-core AMD EPYC, benchmarks/README.md,
# twenty-second session
gc.set_threshold(50_000, 50, 100)

SMALL_DIMS = {"text": 12, "audio": 10, "visual": 8}
# the tiny preset cut to the least that compiles a whole run (hidden 8, one attention layer,
# one relational block, text only): ~half the tracing and compiling of two modalities, for
# the tests of how programs are compiled, stored and loaded, which any model shows
TINY_PROGRAMS = ["model.hidden_dim=8", "model.graph_heads=1", "model.graphs=inter",
                 "data.modalities=text"]


@pytest.fixture
def cache_dir(tmp_path):
    """A new, empty compilation cache folder (and executable store) for one test, with every
    program written to it, as the command-line tools have it (the suite's own threshold,
    0.5 s, would leave out a program that happened to compile faster)."""
    before = (jax.config.jax_compilation_cache_dir,
              jax.config.jax_persistent_cache_min_compile_time_secs)
    jax.config.update("jax_compilation_cache_dir", str(tmp_path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    yield tmp_path
    jax.config.update("jax_compilation_cache_dir", before[0])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", before[1])


def compiled_trainer(config, data):
    """`Trainer.from_config(config, data, n_devices=1)` compiled, and the progress lines it
    logged meanwhile (logger "ambjax")."""
    from ambjax.train import Trainer
    lines = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())
    logger = logging.getLogger("ambjax")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        trainer = Trainer.from_config(config, data, n_devices=1)
        trainer.compile()
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    return trainer, lines


@pytest.fixture(scope="session")
def iemocap_small():
    return make_synthetic("iemocap", scale=0.08, dims=SMALL_DIMS, seed=3)


@pytest.fixture(scope="session")
def meld_small():
    return make_synthetic("meld", scale=0.03, dims=SMALL_DIMS, seed=4)


def snapshot(folder) -> dict:
    """Relative path -> sha256 of every file under `folder` (to prove nothing changed)."""
    out = {}
    for base, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(base, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, folder)] = hashlib.sha256(f.read()).hexdigest()
    return out


def one_error_line(capsys, *needles) -> str:
    """The captured stderr is one `error:` line holding every needle; returns it."""
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:"), err
    for needle in needles:
        assert needle in err[0], (needle, err[0])
    return err[0]
