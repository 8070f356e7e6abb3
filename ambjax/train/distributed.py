"""Several processes, one run: `jax.distributed` set-up and the few process-aware helpers.

Every process runs the same program and owns its local devices; `jax.pmap` maps over the local
devices while its collectives (gradient and confusion-count sums) span every process's devices.
Each process builds only its own devices' shards of every global batch (`GraphBatcher` with a
`local_devices` range), process 0 alone writes metrics, reports and plots, and orbax saves and
restores checkpoints with every process taking part.

Set-up comes from `coordinator` (HOST:PORT), `num_processes` (N) and `process_id` (I), or from the
environment (`JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES`, `JAX_PROCESS_ID`), or, with
`AMBJAX_DISTRIBUTED=auto`, from a cluster JAX detects itself (SLURM, Cloud TPU pods). On the
CPU backend the cross-process collectives use gloo. With an explicit coordinator the processes
first meet on the next port (PORT + 1, so PORT must be at most 65534): a process that cannot
reach all the others within `timeout_s` stops with one line (XLA's own set-up would abort the
process instead).

The connections of that meeting stay open for the whole run as a watchdog (`PeerWatch`):
every process sends a heartbeat every `timeout_s / 4` seconds, and a process that sees a peer's
connection close (it died) or hears nothing from it for `timeout_s` seconds prints one line and
exits with status 2; process 0 exiting closes its connections, so every survivor stops the same
way, within `timeout_s` at most and at once when a process dies. XLA's own heartbeat timeout is
set past that (2 x timeout_s + 10 s), so its abort never comes first. A run that ends normally
says goodbye (`finish`) before it closes the connections.
"""

from __future__ import annotations

import logging
import os
import select
import socket
import threading
import time
from typing import Callable

import jax

from ambjax.errors import DistributedError
from ambjax.host_memory import several_processes_configured


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, *, timeout_s: int = 120,
               on_lost: Callable[[str], None] | None = None) -> bool:
    """Join a multi-process run when one is configured (arguments or environment).

    `on_lost` receives the one-line message when a peer is lost (`PeerWatch`; default: log
    it and end the process with status 2).

    Returns:
      True when this process is one of several, False for a single-process run.

    Raises:
      DistributedError: incomplete flags, or the other processes did not come up in time.
    """
    given = [coordinator, num_processes, process_id]
    if any(v is not None for v in given) and any(v is None for v in given):
        raise DistributedError("`coordinator`, `num_processes` and `process_id` go together")
    if coordinator is None and not several_processes_configured(os.environ):
        return False
    if coordinator is not None:
        _address(coordinator)                      # a malformed address: one line, now
    if num_processes is not None and num_processes < 2:
        raise DistributedError(f"`num_processes` must be at least 2, got {num_processes}")
    if num_processes is not None and not 0 <= process_id < num_processes:
        raise DistributedError(f"`process_id` must be in 0..{num_processes - 1}, got "
                               f"{process_id}")
    if jax.config.jax_platforms in (None, "", "cpu") or "cpu" in str(jax.config.jax_platforms):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    watch = None
    if coordinator is not None:
        watch = PeerWatch(rendezvous(coordinator, num_processes, process_id, timeout_s),
                          timeout_s, on_lost)
    try:
        jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                                   process_id=process_id, initialization_timeout=timeout_s,
                                   heartbeat_timeout_seconds=2 * timeout_s + 10,
                                   shutdown_timeout_seconds=max(10, timeout_s // 2))
    except Exception as e:  # noqa: BLE001 - jaxlib raises its own runtime errors
        where = coordinator or os.environ.get("JAX_COORDINATOR_ADDRESS", "the coordinator")
        raise DistributedError(f"could not join the multi-process run at {where} within "
                               f"{timeout_s} s ({type(e).__name__}: "
                               f"{' '.join(str(e).split())[:200]})") from None
    if watch is not None:
        watch.start()
        _watches.append(watch)
    return jax.process_count() > 1


_watches: list = []


def finish() -> None:
    """Tell the other processes that this one ends normally (no 'lost process' for them) and
    stop watching them; call it once the run is complete."""
    while _watches:
        _watches.pop().finish()


def _address(coordinator: str) -> tuple[str, int]:
    """HOST:PORT -> (host, port), the port in 1..65534 (the meeting uses PORT + 1)."""
    host, _, port = coordinator.rpartition(":")
    if not host or not port.isdigit() or not 1 <= int(port) <= 65534:
        raise DistributedError(f"`coordinator` expects HOST:PORT with PORT in 1..65534 (the "
                               f"processes also meet on PORT + 1), got {coordinator!r}")
    return host, int(port)


def rendezvous(coordinator: str, num_processes: int, process_id: int,
               timeout_s: float) -> dict[int, socket.socket]:
    """Wait until all `num_processes` processes are up: process 0 listens on the coordinator's
    port + 1 and every other process connects to it and says its id.

    Returns:
      The open connections by the peer's process id (process 0: every other process; the
      others: process 0), for `PeerWatch`.

    Raises:
      DistributedError: not everyone arrived within `timeout_s` seconds.
    """
    host, port = _address(coordinator)
    address = (host, port + 1)
    deadline = time.monotonic() + timeout_s
    missing = (f"could not join the multi-process run at {coordinator} within {timeout_s} s: "
               "{} (start every process with the same `coordinator` and `num_processes`)")
    if process_id == 0:
        peers: dict[int, socket.socket] = {}
        with socket.create_server(address, reuse_port=False) as server:
            while len(peers) < num_processes - 1:
                server.settimeout(max(0.01, deadline - time.monotonic()))
                try:
                    conn = server.accept()[0]
                    conn.settimeout(max(0.01, deadline - time.monotonic()))
                    peers[int(conn.recv(16).split(b"\n")[0])] = conn
                except (socket.timeout, TimeoutError, ValueError):
                    for p in peers.values():
                        p.close()
                    raise DistributedError(missing.format(
                        f"{len(peers) + 1} of {num_processes} processes arrived")) from None
            for p in peers.values():
                p.sendall(b"go")
        return peers
    while True:
        conn = None
        try:
            conn = socket.create_connection(address,
                                            timeout=max(0.01, deadline - time.monotonic()))
            conn.settimeout(max(0.01, deadline - time.monotonic()))
            conn.sendall(f"{process_id}\n".encode())
            if conn.recv(2) == b"go":
                return {0: conn}
        except OSError:
            pass
        if conn is not None:
            conn.close()
        if time.monotonic() > deadline:
            raise DistributedError(missing.format(f"process 0 did not answer at {host}:"
                                                  f"{port + 1}"))
        time.sleep(0.2)


class PeerWatch:
    """Heartbeats over the rendezvous connections; a lost peer stops this process.

    Args:
      peers: open connections by the peer's process id (`rendezvous`).
      timeout_s: silence after which a peer counts as lost.
      on_lost: called with the one-line message (default: log it (logger "ambjax") and end the
        process with status 2 at once, since the main thread may be blocked in a collective
        that would never return).
    """

    HEARTBEAT, GOODBYE = b"h", b"b"

    def __init__(self, peers: dict[int, socket.socket], timeout_s: float, on_lost=None):
        self.peers = dict(peers)
        self.timeout_s = float(timeout_s)
        self.on_lost = on_lost or _stop_process
        self.finished = threading.Event()
        self.heard = {k: time.monotonic() for k in self.peers}
        for conn in self.peers.values():
            conn.setblocking(False)

    def start(self) -> None:
        threading.Thread(target=self._run, name="ambjax-peer-watch", daemon=True).start()

    def finish(self) -> None:
        """Say goodbye to every peer and stop watching."""
        self.finished.set()
        for conn in self.peers.values():
            try:
                conn.setblocking(True)
                conn.sendall(self.GOODBYE)
            except OSError:
                pass

    def _lost(self, k: int, why: str) -> None:
        if not self.finished.is_set():
            self.finished.set()
            self.on_lost(f"error: lost process {k} of the multi-process run ({why}); this "
                         f"process {jax.process_index()} stops too; the run folder keeps its "
                         "last complete checkpoint (continue with `resume`)")

    def _run(self) -> None:
        beat = max(0.05, self.timeout_s / 4)
        watching = dict(self.peers)
        next_beat = 0.0
        while watching and not self.finished.is_set():
            now = time.monotonic()
            if now >= next_beat:
                next_beat = now + beat
                for k, conn in list(watching.items()):
                    try:
                        conn.send(self.HEARTBEAT)
                    except BlockingIOError:
                        pass
                    except OSError:
                        return self._lost(k, "its connection broke: it stopped")
            readable, _, _ = select.select(list(watching.values()), [], [], beat / 2)
            for conn in readable:
                k = next(i for i, c in watching.items() if c is conn)
                try:
                    data = conn.recv(4096)
                except OSError:
                    data = b""
                if not data:
                    return self._lost(k, "its connection closed: it stopped")
                self.heard[k] = time.monotonic()
                if self.GOODBYE in data:
                    del watching[k]
            for k in watching:
                if time.monotonic() - self.heard[k] > self.timeout_s:
                    return self._lost(k, f"no heartbeat for {self.timeout_s:.0f} s: it hangs "
                                         "or the network is down")


def _stop_process(message: str) -> None:
    logging.getLogger("ambjax").critical(message)
    os._exit(2)


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
