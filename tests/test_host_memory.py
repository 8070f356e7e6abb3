"""Host memory reuse (`ambjax.host_memory`): with it, a large buffer freed and allocated again
reuses memory already mapped instead of faulting in fresh pages every time (what a compiled
XLA program's temporaries do on every step)."""

import json
import os
import subprocess
import sys

import pytest

from ambjax import host_memory
from ambjax.cli import run_main

# what XLA's CPU runtime does with a step's temporaries: allocate 64 MB, touch it, free it, again
PROBE = """
import ctypes, json, resource, sys
from ambjax.host_memory import keep_freed_memory
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
print(json.dumps({"applied": applied, "faults": faults}))
"""


def _probe(mode):
    env = {k: v for k, v in os.environ.items() if k != "AMBJAX_KEEP_FREED_MEMORY"}
    done = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True,
                          env=env, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_kept_memory_serves_the_next_calls_buffers_without_page_faults():
    plain, kept = _probe("plain"), _probe("keep")
    assert kept["applied"] and not plain["applied"]
    # 64 MB = 16,384 pages: mapped afresh on every allocation by default, reused when kept
    assert min(plain["faults"]) > 8000
    assert kept["faults"][0] > 8000 and max(kept["faults"][1:]) < 100


def test_the_command_line_tools_keep_freed_memory_only_when_asked(monkeypatch):
    calls = []
    monkeypatch.setattr(host_memory, "keep_freed_memory", lambda: calls.append(1) or True)
    monkeypatch.delenv("AMBJAX_KEEP_FREED_MEMORY", raising=False)
    assert run_main(lambda argv: 0, []) == 0 and not calls
    monkeypatch.setenv("AMBJAX_KEEP_FREED_MEMORY", "1")
    assert run_main(lambda argv: 0, []) == 0 and calls == [1]
