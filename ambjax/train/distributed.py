"""Several processes, one run: `jax.distributed` set-up and the few process-aware helpers.

Every process runs the same program and owns its local devices; `jax.pmap` maps over the local
devices while its collectives (gradient and confusion-count sums) span every process's devices.
Each process builds only its own devices' shards of every global batch (`GraphBatcher` with a
`local_devices` range), process 0 alone writes metrics, reports and plots, and orbax saves and
restores checkpoints with every process taking part.

Set-up comes from `--coordinator HOST:PORT --num-processes N --process-id I`, or from the
environment (`JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES`, `JAX_PROCESS_ID`), or, with
`AMBJAX_DISTRIBUTED=auto`, from a cluster JAX detects itself (SLURM, Cloud TPU pods). On the CPU backend the cross-process collectives use
gloo. With an explicit coordinator the processes first meet on the next port (PORT + 1): a
process that cannot reach all the others within `timeout_s` stops with one line (XLA's own
set-up would abort the process instead). A process lost later is detected by XLA's heartbeats
(timeout_s / 2), which stop the others with XLA's message: never a hang.
"""

from __future__ import annotations

import os
import socket
import time

import jax

from ambjax.errors import DistributedError

ENV_KEYS = ("JAX_COORDINATOR_ADDRESS", "COORDINATOR_ADDRESS")


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, *, timeout_s: int = 120) -> bool:
    """Join a multi-process run when one is configured (flags or environment).

    Returns:
      True when this process is one of several, False for a single-process run.

    Raises:
      DistributedError: incomplete flags, or the other processes did not come up in time.
    """
    given = [coordinator, num_processes, process_id]
    if any(v is not None for v in given) and any(v is None for v in given):
        raise DistributedError("--coordinator, --num-processes and --process-id go together")
    if (coordinator is None and not any(os.environ.get(k) for k in ENV_KEYS)
            and os.environ.get("AMBJAX_DISTRIBUTED") != "auto"):
        return False
    if num_processes is not None and not 0 <= process_id < num_processes:
        raise DistributedError(f"--process-id must be in 0..{num_processes - 1}, got "
                               f"{process_id}")
    if jax.config.jax_platforms in (None, "", "cpu") or "cpu" in str(jax.config.jax_platforms):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if coordinator is not None:
        rendezvous(coordinator, num_processes, process_id, timeout_s)
    try:
        jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                                   process_id=process_id, initialization_timeout=timeout_s,
                                   heartbeat_timeout_seconds=max(10, timeout_s // 2),
                                   shutdown_timeout_seconds=max(10, timeout_s // 2))
    except Exception as e:  # noqa: BLE001 - jaxlib raises its own runtime errors
        where = coordinator or os.environ.get("JAX_COORDINATOR_ADDRESS", "the coordinator")
        raise DistributedError(f"could not join the multi-process run at {where} within "
                               f"{timeout_s} s ({type(e).__name__}: "
                               f"{' '.join(str(e).split())[:200]})") from None
    return jax.process_count() > 1


def rendezvous(coordinator: str, num_processes: int, process_id: int, timeout_s: float) -> None:
    """Wait until all `num_processes` processes are up: process 0 listens on the coordinator's
    port + 1 and every other process connects to it.

    Raises:
      DistributedError: not everyone arrived within `timeout_s` seconds.
    """
    host, _, port = coordinator.rpartition(":")
    if not host or not port.isdigit():
        raise DistributedError(f"--coordinator expects HOST:PORT, got {coordinator!r}")
    address = (host, int(port) + 1)
    deadline = time.monotonic() + timeout_s
    missing = (f"could not join the multi-process run at {coordinator} within {timeout_s} s: "
               "{} (start every process with the same --coordinator and --num-processes)")
    if process_id == 0:
        with socket.create_server(address, reuse_port=False) as server:
            peers = []
            while len(peers) < num_processes - 1:
                server.settimeout(max(0.01, deadline - time.monotonic()))
                try:
                    peers.append(server.accept()[0])
                except (socket.timeout, TimeoutError):
                    for p in peers:
                        p.close()
                    raise DistributedError(missing.format(
                        f"{len(peers) + 1} of {num_processes} processes arrived")) from None
            for p in peers:
                p.sendall(b"go")
                p.close()
        return
    while True:
        try:
            with socket.create_connection(address, timeout=max(0.01, deadline - time.monotonic())) \
                    as conn:
                conn.settimeout(max(0.01, deadline - time.monotonic()))
                if conn.recv(2) == b"go":
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise DistributedError(missing.format(f"process 0 did not answer at {host}:"
                                                  f"{int(port) + 1}"))
        time.sleep(0.2)


def is_primary() -> bool:
    """True on the process that writes metrics, reports and run-folder files (process 0)."""
    return jax.process_index() == 0


def local_device_range() -> tuple[int, int]:
    """[start, stop) of this process's devices in the global device order (pmap's order)."""
    n = jax.local_device_count()
    return jax.process_index() * n, (jax.process_index() + 1) * n


def barrier(name: str) -> None:
    """Wait until every process reaches `name` (a no-op in a single-process run)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(name)
