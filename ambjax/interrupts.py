"""SIGINT and SIGTERM as exceptions, and sections they may not cut in half.

`raise_on_signals()` (installed by the command-line layer) turns both signals into
`ambjax.errors.Interrupted`, so Ctrl-C and the SIGTERM that SLURM or Kubernetes send unwind the
run the same way: compile threads cancelled, locks released, one line. `deferred()` holds the
two signals while a block runs (a checkpoint save, an epoch's metrics line) and delivers them
when it ends, so that what the block writes is whole. Both only act in the main thread (the
only one Python delivers signals to); elsewhere they do nothing.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

from ambjax.errors import Interrupted

SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _raise(signum, _frame) -> None:
    raise Interrupted(signum)


def raise_on_signals() -> dict:
    """Make SIGINT and SIGTERM raise `Interrupted` in the main thread. Returns the previous
    handlers (for `restore`)."""
    if not _in_main_thread():
        return {}
    return {s: signal.signal(s, _raise) for s in SIGNALS}


def restore(handlers: dict) -> None:
    """Put back the handlers `raise_on_signals` returned."""
    for s, h in handlers.items():
        signal.signal(s, h)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Run the block with SIGINT and SIGTERM held; a signal that arrived meanwhile is then
    handled as it would have been (by the handler in force before the block)."""
    if not _in_main_thread():
        yield
        return
    arrived: list[int] = []
    previous = {s: signal.signal(s, lambda signum, _: arrived.append(signum)) for s in SIGNALS}
    try:
        yield
    finally:
        restore(previous)
    if arrived:
        handler = previous[arrived[0]]
        if callable(handler):
            handler(arrived[0], None)
        elif handler == signal.SIG_DFL:
            signal.raise_signal(arrived[0])
