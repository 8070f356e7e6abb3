"""Host memory (`ambjax.host_memory`): with kept memory, a large buffer freed and allocated
again reuses memory already mapped instead of faulting in fresh pages every time (what a
compiled XLA program's temporaries do on every step); with huge pages it faults them in 2 MB
at a time; the command-line tools restart themselves with huge pages."""

import json
import os
import subprocess
import sys

import pytest

from ambjax import host_memory
from ambjax.cli import run_main
from conftest import TEST_XLA_FLAGS

# what XLA's CPU runtime does with a step's temporaries: allocate 64 MB, touch it, free it, again
PROBE = """
import ctypes, json, resource, sys
from ambjax.host_memory import freed_memory_kept, keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else False
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = (ctypes.c_void_p,)
libc.memset.argtypes = (ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t)
size = 64 << 20
faults = []
for _ in range(4):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = libc.malloc(size)
    libc.memset(block, 1, size)
    libc.free(block)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"applied": applied, "kept": freed_memory_kept(), "faults": faults}))
"""


def _probe(mode, **extra):
    env = {k: v for k, v in os.environ.items()
           if k not in ("AMBJAX_KEEP_FREED_MEMORY", "GLIBC_TUNABLES")}
    env.update(extra)
    done = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True,
                          env=env, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_kept_memory_serves_the_next_calls_buffers_without_page_faults():
    plain, kept = _probe("plain"), _probe("keep")
    assert kept["applied"] and not plain["applied"]
    assert kept["kept"] and not plain["kept"]          # what the process can tell later
    # 64 MB = 16,384 pages: mapped afresh on every allocation by default, reused when kept
    assert min(plain["faults"]) > 8000
    assert kept["faults"][0] > 8000 and max(kept["faults"][1:]) < 100


@pytest.mark.parametrize("environ,cache,wanted", [
    ({}, True, True),                                 # the CPU, no accelerator installed
    ({"JAX_PLATFORMS": "cpu"}, True, True),
    ({"AMBJAX_KEEP_FREED_MEMORY": "0"}, True, False),
    ({"JAX_PLATFORMS": "cuda,cpu"}, True, False),
    ({"JAX_PLATFORMS": "cuda", "AMBJAX_KEEP_FREED_MEMORY": "1"}, True, True),
    ({"AMBJAX_COMPILE_CACHE": "0"}, True, False),     # no store for a helper to fill
    ({}, False, False),
    # several devices or processes: no helper, their compile would run on the one arena
    ({"XLA_FLAGS": "--xla_cpu_use_onednn=true --xla_force_host_platform_device_count=4"},
     True, False),
    ({"XLA_FLAGS": "--xla_force_host_platform_device_count=1"}, True, True),
    ({"XLA_FLAGS": "--xla_force_host_platform_device_count=2",
      "AMBJAX_KEEP_FREED_MEMORY": "1"}, True, True),
    ({"JAX_COORDINATOR_ADDRESS": "localhost:12355"}, True, False),
    ({"AMBJAX_DISTRIBUTED": "auto"}, True, False),
])
def test_freed_memory_is_kept_by_default_where_programs_run_on_the_cpu(
        monkeypatch, environ, cache, wanted):
    monkeypatch.setattr(host_memory, "accelerator_installed", lambda: False)
    monkeypatch.setattr(host_memory, "cpu_has_avx512", lambda: True)
    assert host_memory.keep_freed_memory_wanted(environ, compile_cache=cache) is wanted
    # without AVX-512 the mode measured slower: off unless asked for
    monkeypatch.setattr(host_memory, "cpu_has_avx512", lambda: False)
    asked = environ.get("AMBJAX_KEEP_FREED_MEMORY") == "1"
    assert host_memory.keep_freed_memory_wanted(environ, compile_cache=cache) is asked


def test_avx512_is_read_from_the_cpus_flags(tmp_path):
    info = tmp_path / "cpuinfo"
    flags = "fpu vme sse4_2 avx avx2 fma"
    info.write_text(f"processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: {flags}\n")
    assert not host_memory.cpu_has_avx512(str(info))
    info.write_text(f"processor\t: 0\nflags\t\t: {flags} avx512f avx512dq amx_tile\n")
    assert host_memory.cpu_has_avx512(str(info))
    info.write_text(f"flags\t\t: {flags} avx512_vnni\n")           # not the foundation
    assert not host_memory.cpu_has_avx512(str(info))
    assert not host_memory.cpu_has_avx512(str(tmp_path / "missing"))


def test_an_installed_accelerator_plugin_turns_the_default_off(monkeypatch, tmp_path):
    monkeypatch.setattr(host_memory, "cpu_has_avx512", lambda: True)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert host_memory.keep_freed_memory_wanted({}) is not host_memory.accelerator_installed()
    plugin = tmp_path / "jax_plugins" / "xla_example"  # a PJRT plugin as the CUDA one installs
    plugin.mkdir(parents=True)
    (plugin / "__init__.py").write_text("")
    assert host_memory.accelerator_installed()
    assert not host_memory.keep_freed_memory_wanted({})
    assert host_memory.keep_freed_memory_wanted({"JAX_PLATFORMS": "cpu"})


def test_the_command_line_tools_keep_freed_memory_where_wanted(monkeypatch):
    monkeypatch.setattr(host_memory, "cpu_has_avx512", lambda: True)
    calls = []
    monkeypatch.setattr(host_memory, "keep_freed_memory", lambda: calls.append(1) or True)
    monkeypatch.setenv("AMBJAX_KEEP_FREED_MEMORY", "0")
    assert run_main(lambda argv: 0, []) == 0 and not calls
    monkeypatch.delenv("AMBJAX_KEEP_FREED_MEMORY")
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.setenv("XLA_FLAGS", TEST_XLA_FLAGS)                  # one CPU device
    assert run_main(lambda argv: 0, ["--no-compile-cache"]) == 0 and not calls
    assert run_main(lambda argv: 0, ["--coordinator=localhost:12355"]) == 0 and not calls
    assert run_main(lambda argv: 0, []) == 0 and calls == [1]


def _thp_mode() -> str:
    try:
        with open(host_memory.THP_MODE_FILE) as f:
            return f.read().split("[")[1].split("]")[0]
    except (OSError, IndexError):
        return "none"


needs_madvise_thp = pytest.mark.skipif(
    _thp_mode() != "madvise" or host_memory._glibc_version() < (2, 35),
    reason="transparent huge pages on request (madvise) and glibc 2.35+")


@needs_madvise_thp
def test_huge_pages_fault_a_large_buffer_in_far_fewer_pages():
    plain = _probe("plain")
    huge = _probe("plain", GLIBC_TUNABLES=host_memory.HUGE_PAGES_TUNABLE)
    # 64 MB: 16,384 pages of 4 KB on every allocation, or 32 of 2 MB (a few more at the edges
    # of the mapping, or where the kernel has no huge page at hand)
    assert min(plain["faults"]) > 8000
    assert max(huge["faults"]) < 2000


def test_the_huge_pages_environment_is_asked_for_only_where_it_changes_something(tmp_path):
    mode = tmp_path / "enabled"
    mode.write_text("always [madvise] never\n")
    if host_memory._glibc_version() < (2, 35):
        assert host_memory.huge_pages_environment({}, str(mode)) is None
        return
    env = host_memory.huge_pages_environment({"PATH": "/bin"}, str(mode))
    assert env == {"PATH": "/bin", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}
    other = host_memory.huge_pages_environment({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"},
                                               str(mode))
    assert other["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
    for environ in ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, {"AMBJAX_HUGE_PAGES": "0"}):
        assert host_memory.huge_pages_environment(environ, str(mode)) is None
    for text in ("[always] madvise never\n", "always madvise [never]\n"):
        mode.write_text(text)
        assert host_memory.huge_pages_environment({}, str(mode)) is None
    assert host_memory.huge_pages_environment({}, str(tmp_path / "missing")) is None


# a program: says when it starts, then runs its main through the command-line tools' entry
PROGRAM = """
import os, sys
print("start", os.getpid(), flush=True)
from ambjax.cli import run_main
sys.exit(run_main(lambda argv: print("main", argv, os.environ.get("GLIBC_TUNABLES")) or 3))
"""


@needs_madvise_thp
@pytest.mark.parametrize("ask", ["1", "0"])
def test_a_command_line_tool_restarts_itself_once_with_huge_pages(ask):
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    done = subprocess.run([sys.executable, "-c", PROGRAM, "--flag"], capture_output=True,
                          text=True, env={**env, "AMBJAX_HUGE_PAGES": ask})
    lines = done.stdout.splitlines()
    starts = [line for line in lines if line.startswith("start")]
    assert done.returncode == 3
    if ask == "1":       # run again as the same process, its arguments kept; main runs once
        assert len(starts) == 2 and starts[0] == starts[1]
        assert lines[-1] == "main ['--flag'] glibc.malloc.hugetlb=1"
    else:
        assert len(starts) == 1 and lines[-1] == "main ['--flag'] None"


@needs_madvise_thp
def test_a_tool_run_with_python_m_restarts_before_it_imports_jax():
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "experiments.train",
                           "--help"], capture_output=True, text=True,
                          env={**env, "AMBJAX_HUGE_PAGES": "1"}, check=True)
    def imported(module):     # how often -X importtime saw `module` imported
        return sum(1 for line in done.stderr.splitlines()
                   if line.startswith("import time:") and line.split("|")[-1].strip() == module)
    # two interpreter starts (the restart), JAX imported once: after the restart (a restart
    # after the tool's imports would show it twice)
    assert "usage" in done.stdout
    assert imported("encodings") == 2 and imported("ambjax.host_memory") == 2
    assert imported("jax") == 1
