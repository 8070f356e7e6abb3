"""Host memory for XLA's CPU backend: huge pages for its temporaries, or kept freed memory.

Each run of a compiled XLA program on the CPU allocates its temporary buffers (about 400 MB for
a release-size IEMOCAP train step) and frees them at the end. glibc's malloc serves requests
that large with a fresh `mmap` and returns them to the system with `munmap` when freed, so
every step touches its temporaries as new pages: about 100,000 page faults per IEMOCAP step,
the kernel zeroing 400 MB. `keep_freed_memory` tells malloc (`mallopt`) to serve every
request from one heap and to keep what is freed for the next request, so after the first
steps the temporaries reuse the same, already mapped memory (`python -m benchmarks.step_time`:
see benchmarks/README.md, 2026-12-05, fourth session).

It changes how the whole process allocates: memory freed is kept, not returned to the system
(the process stays at its peak), and every thread allocates from one arena, which makes
XLA's compilation (many threads allocating at once) much slower: on a 2-core Intel Xeon the
IEMOCAP train epoch fell from 3.62 to 3.24 s, but the cold compile rose from about 30 to
about 50 s (`python -m benchmarks.versus_release`, run 13). So a `Trainer` in this mode has a
helper process with the default allocator compile its programs into the executable store and
loads them from there (`ambjax.train.compile_process`). On a 2-core AMD EPYC with AVX-512
(benchmarks/README.md, eighteenth session): steady IEMOCAP train epochs 4-9% faster (five
alternating pairs of processes), cold compile 13.9 -> 18.7 s and warm start 1.6 -> 2.2 s
(`python -m benchmarks.throughput`, back to back), and against the release on IEMOCAP, end
to end from a cold start, 2.07x -> 2.37x and 2.33x -> 2.30x in two back-to-back pairs of
`python -m benchmarks.versus_release`: the cold start's cost about what the epochs gain, a
warm start's (~0.5 s) much less.

The command-line tools call it at start (`ambjax.cli.run_main`), before JAX starts its CPU
backend (the first computation: it acts on the threads created after it is called), as
`keep_freed_memory_wanted` decides: by default where the run's programs run on a CPU with
AVX-512 (without it the mode measured slower, steps and compile: benchmarks/README.md,
twentieth session) and a helper can compile them (JAX's persistent cache on, one device, one
process); `AMBJAX_KEEP_FREED_MEMORY=1` or `0` decides instead. On a C library other than
glibc it does nothing.

Transparent huge pages cut the same cost without those drawbacks: with glibc's tunable
`glibc.malloc.hugetlb=1` malloc asks the kernel (`madvise`) for 2 MB pages in the blocks it
maps, so a step's 400 MB of temporaries fault in 2 MB at a time instead of 4 KB (a few
hundred faults instead of 100,000), and compilation keeps its many arenas: on a 2-core Intel
Xeon the IEMOCAP train epoch 3.60 / 3.68 -> 3.37 / 3.42 s, MELD's 6.09 -> 5.71 s (`python -m
benchmarks.step_time`; benchmarks/README.md, 2026-12-05, fifth session). glibc reads
tunables only when a process starts, so the command-line tools, run as programs, run
themselves again at once with it set (`restart_with_huge_pages`: the same process id and
arguments; `restart_if_run_as_module` before their imports) where the kernel grants huge
pages only on request ("madvise", a common default; with "always" they come anyway, with
"never" not at all); `AMBJAX_HUGE_PAGES=0` turns that off. Processes they start inherit
it. In your own script, start Python with `GLIBC_TUNABLES=glibc.malloc.hugetlb=1` in its
environment.
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import importlib.util
import os
import pkgutil
import sys
from typing import Mapping

# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8
SETTINGS = ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, 2**31 - 1))
"""One arena for every thread, no request served by `mmap`, the heap's free top kept up to
2 GiB."""
_kept = False                        # `freed_memory_kept`


def keep_freed_memory() -> bool:
    """Make this process's malloc keep freed memory for reuse (see the module docstring).

    Call it before the first JAX computation. Returns True when the settings took effect,
    False when the C library is not glibc.
    """
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt, libc.gnu_get_libc_version  # glibc's, not another C library's
    except (OSError, AttributeError):
        return False
    mallopt = libc.mallopt
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    global _kept
    took = all([mallopt(param, value) == 1 for param, value in SETTINGS])
    _kept = _kept or took
    return took


def accelerator_installed() -> bool:
    """Whether JAX would find an accelerator here: a PJRT plugin (a module of the
    `jax_plugins` namespace package or an entry point of that group, as the CUDA and ROCm
    plugins install themselves) or libtpu; found without importing JAX."""
    try:
        if importlib.metadata.entry_points(group="jax_plugins"):
            return True
    except Exception:  # noqa: BLE001 - unreadable package metadata: look at the modules
        pass
    try:
        plugins = importlib.util.find_spec("jax_plugins")
    except (ImportError, ValueError):
        plugins = None
    if plugins is not None and any(pkgutil.iter_modules(plugins.submodule_search_locations
                                                         or [])):
        return True
    return importlib.util.find_spec("libtpu") is not None


def several_processes_configured(environ: Mapping[str, str]) -> bool:
    """Whether `environ` makes a run one of several processes without flags
    (`ambjax.train.distributed`): a coordinator's address (`JAX_COORDINATOR_ADDRESS` or
    `COORDINATOR_ADDRESS`), or `AMBJAX_DISTRIBUTED=auto`."""
    return (any(environ.get(k) for k in ("JAX_COORDINATOR_ADDRESS", "COORDINATOR_ADDRESS"))
            or environ.get("AMBJAX_DISTRIBUTED") == "auto")


def forced_host_devices(environ: Mapping[str, str]) -> int:
    """The CPU devices that XLA_FLAGS in `environ` asks for
    (`--xla_force_host_platform_device_count=N`), 1 where it asks for none."""
    count = 1
    for flag in environ.get("XLA_FLAGS", "").split():
        name, _, value = flag.partition("=")
        if name == "--xla_force_host_platform_device_count" and value.isdigit():
            count = int(value)
    return count


CPUINFO = "/proc/cpuinfo"


def cpu_flags(cpuinfo: str = CPUINFO) -> frozenset[str]:
    """The first CPU's feature flags in `cpuinfo` (e.g. "avx2", "avx512f", "amx_tile"); empty
    where the file is missing or unreadable (not Linux)."""
    try:
        with open(cpuinfo) as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "flags":
                    return frozenset(value.split())
    except OSError:
        pass
    return frozenset()


def cpu_has_avx512(cpuinfo: str = CPUINFO) -> bool:
    """Whether the CPU has AVX-512 (`avx512f` among `cpu_flags(cpuinfo)`)."""
    return "avx512f" in cpu_flags(cpuinfo)


def keep_freed_memory_wanted(environ: Mapping[str, str], *, compile_cache: bool = True,
                             several_processes: bool = False) -> bool:
    """Whether a command-line tool run with `environ` keeps freed memory (module docstring).
    `AMBJAX_KEEP_FREED_MEMORY=1` or `0` decides; unset (or anything else), it does where its
    programs will run on a CPU with AVX-512 (`JAX_PLATFORMS` names the CPU first, or, unset,
    no accelerator is installed; `cpu_has_avx512`) and a helper process can compile them:
    JAX's persistent compilation cache on (`compile_cache`, the tool's `no_compile_cache` not
    given, and not `AMBJAX_COMPILE_CACHE=0`), one device (XLA_FLAGS fakes no more CPU devices:
    `forced_host_devices`) and one process (not `several_processes`, as the tool's flags ask,
    nor `several_processes_configured(environ)`): there is no helper for several devices or
    processes, and their programs would compile on the one arena. Without AVX-512 the mode
    measured slower: on a 2-core AMD EPYC (Zen 3) its IEMOCAP steps 13-19% slower in three
    alternating pairs of processes and its cold compile 5-18 s longer (benchmarks/README.md,
    twentieth session), where the CPUs with AVX-512 ran their epochs faster with it (Zen 4:
    4-9%; Intel Xeon: 3.62 -> 3.24 s)."""
    asked = environ.get("AMBJAX_KEEP_FREED_MEMORY", "")
    if asked in ("0", "1"):
        return asked == "1"
    if not compile_cache or environ.get("AMBJAX_COMPILE_CACHE", "1") == "0":
        return False
    if (several_processes or forced_host_devices(environ) > 1
            or several_processes_configured(environ)):
        return False
    platforms = environ.get("JAX_PLATFORMS", "").strip()
    on_cpu = (platforms.split(",")[0].strip().lower() == "cpu" if platforms
              else not accelerator_installed())
    return on_cpu and cpu_has_avx512()


def keep_freed_memory_if_wanted(compile_cache: bool = True,
                                several_processes: bool = False) -> bool:
    """`keep_freed_memory` where `keep_freed_memory_wanted(os.environ, ...)` (the same
    arguments); returns whether it acted."""
    return keep_freed_memory_wanted(os.environ, compile_cache=compile_cache,
                                    several_processes=several_processes) and \
        keep_freed_memory()


def freed_memory_kept() -> bool:
    """Whether `keep_freed_memory` took effect in this process (malloc's settings are the
    process's own: a benchmark records with it what its timed process ran under)."""
    return _kept


HUGE_PAGES_TUNABLE = "glibc.malloc.hugetlb=1"
THP_MODE_FILE = "/sys/kernel/mm/transparent_hugepage/enabled"


def huge_pages_environment(environ: Mapping[str, str],
                           thp_mode_file: str = THP_MODE_FILE) -> dict[str, str] | None:
    """`environ` with `HUGE_PAGES_TUNABLE` added to GLIBC_TUNABLES, or None where a restart
    with it would change nothing: it is set already (or `AMBJAX_HUGE_PAGES=0`), the C
    library is not glibc 2.35 or newer, or the kernel's transparent huge pages (the selected
    [mode] in `thp_mode_file`) are not granted on request only ("madvise")."""
    tunables = environ.get("GLIBC_TUNABLES", "")
    if (environ.get("AMBJAX_HUGE_PAGES", "1") == "0"
            or "glibc.malloc.hugetlb=" in tunables or _glibc_version() < (2, 35)):
        return None
    try:
        with open(thp_mode_file) as f:
            if "[madvise]" not in f.read():
                return None
    except OSError:
        return None
    return {**environ, "GLIBC_TUNABLES": ":".join(t for t in (tunables, HUGE_PAGES_TUNABLE)
                                                  if t)}


def restart_with_huge_pages() -> None:
    """Replace this process with itself run again (`os.execve`: same process id, interpreter
    options and arguments) with malloc using transparent huge pages (module docstring);
    returns at once where that would change nothing (`huge_pages_environment`), where the
    program cannot be run again (read from standard input, or interactive) or the restart
    fails. Call it first thing in a program, before it has done anything that a second run
    would repeat (output, files)."""
    env = huge_pages_environment(os.environ)
    if env is None or sys.argv[0] in ("", "-"):
        return
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, sys.orig_argv, env)
    except OSError:
        pass


def restart_if_run_as_module() -> None:
    """`restart_with_huge_pages` while Python locates a module to run as the program (`python
    -m package.module`: `sys.argv[0]` is "-m" then). The packages of the command-line tools
    (`experiments`, `benchmarks`) call it in their `__init__`, so that the restart comes
    before the tool has imported JAX (`ambjax`'s own names are imported when first used),
    and costs an interpreter start instead of the imports."""
    if sys.argv[:1] == ["-m"]:
        restart_with_huge_pages()


def _glibc_version() -> tuple[int, ...]:
    """The running glibc's version, (0,) under another C library."""
    try:
        get = ctypes.CDLL(None).gnu_get_libc_version
    except (OSError, AttributeError):
        return (0,)
    get.restype = ctypes.c_char_p
    try:
        return tuple(int(x) for x in get().decode().split(".")[:2])
    except ValueError:
        return (0,)
