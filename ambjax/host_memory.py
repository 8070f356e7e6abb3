"""Host memory reuse for XLA's CPU backend.

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
about 50 s and the warm start from 4.5 to 6.1 s (`python -m benchmarks.versus_release`, run
13). So it pays in long runs on a warm compilation cache and is off by default: the
command-line tools call it at start (`ambjax.cli.run_main`) when
`AMBJAX_KEEP_FREED_MEMORY=1`. It acts on the threads created after it is called, so it has to
run before JAX starts its CPU backend (the first computation). On a C library other than
glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import os

# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8
SETTINGS = ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, 2**31 - 1))
"""One arena for every thread, no request served by `mmap`, the heap's free top kept up to
2 GiB."""


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
    return all([mallopt(param, value) == 1 for param, value in SETTINGS])


def keep_freed_memory_if_asked() -> bool:
    """`keep_freed_memory` when `AMBJAX_KEEP_FREED_MEMORY=1`; returns whether it acted."""
    return os.environ.get("AMBJAX_KEEP_FREED_MEMORY", "0") == "1" and keep_freed_memory()
