"""The one error path of every command-line entry point.

Known failures (`ambjax.errors.AmbjaxError`: bad data, flags or settings, run-folder and
checkpoint problems, lost peers, out-of-memory estimates; and file-system errors such as a full
disk) print one line, `error: <what is wrong>`, on stderr and exit 2; so do malformed command
lines (`ArgumentParser`). SIGINT (Ctrl-C) and SIGTERM (what SLURM and Kubernetes send) stop the
run in order and print one line saying what is kept, exiting 130 and 143. Warnings the library
logs (`logging`) are printed as lines of their own. `AMBJAX_DEBUG=1` (or `--debug` on the
command line) shows tracebacks and the libraries' own logs.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import sys
import threading
import warnings
from typing import Callable, Iterator, NoReturn, Sequence

import ambjax.interrupts as interrupts
from ambjax.errors import AmbjaxError, Interrupted, UsageError
from ambjax.host_memory import keep_freed_memory_if_wanted, restart_with_huge_pages

EXIT_ERROR = 2


class ArgumentParser(argparse.ArgumentParser):
    """`argparse.ArgumentParser` whose errors are one line (`UsageError`, exit 2 through
    `run_main`) instead of a usage block."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message} (see --help)")


def known_errors() -> tuple[type[BaseException], ...]:
    """The exception types reported as one line."""
    return (AmbjaxError, OSError, MemoryError)


# the library names its options as `parameter` (train_and_evaluate's arguments, config
# settings); on the command line they are these flags
FLAGS = {"out_dir": "--out", "overwrite": "--overwrite", "resume": "--resume",
         "allow_changes": "--allow-changes", "seeds": "--seeds", "data": "--data",
         "n_devices": "--devices", "coordinator": "--coordinator",
         "num_processes": "--num-processes", "process_id": "--process-id",
         "recipe": "--recipe", "set": "--set"}


def flag_hints(text: str) -> str:
    """`text` with the library's `parameter` names turned into their command-line flags
    (`FLAGS`); other back-quoted names lose their quotes."""
    return re.sub(r"`([a-z_]+)`", lambda m: FLAGS.get(m.group(1), m.group(1)), text)


class _Lines(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return flag_hints(super().format(record))


class _Below(logging.Filter):
    def __init__(self, level: int):
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < self.level


@contextlib.contextmanager
def _command_output(debug: bool) -> Iterator[None]:
    """While a command runs: the library's log as plain lines, progress (INFO) on stdout and
    warnings on stderr, option names as flags (`flag_hints`); without `debug`,
    orbax's and absl's logs and the tracebacks of background tasks that fail after the main
    thread has reported the failure (the callbacks of orbax's and tensorstore's writes into a
    closed event loop, once a checkpoint write failed) kept out of the way. The log handler is
    removed afterwards, and after a success everything else is put back too (commands also run
    inside other programs, e.g. tests)."""
    ours = logging.getLogger("ambjax")
    progress = logging.StreamHandler(sys.stdout)
    progress.addFilter(_Below(logging.WARNING))
    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(logging.WARNING)
    for h in (progress, handler):
        h.setFormatter(_Lines("%(message)s"))
    others = {name: logging.getLogger(name) for name in
              ("absl", "orbax", "jax._src.distributed", "asyncio")}
    saved = (ours.level, ours.propagate, {n: lg.level for n, lg in others.items()},
             threading.excepthook, sys.unraisablehook, warnings.showwarning)
    ours.addHandler(progress)
    ours.addHandler(handler)
    ours.propagate = False
    ours.setLevel(logging.DEBUG if debug else logging.INFO)
    # Python warnings (e.g. JAX's "could not write the compilation cache" on a full disk) as
    # one line each
    warnings.showwarning = lambda message, category, *_, **__: ours.warning(
        "warning: %s", " ".join(str(message).split()))
    if not debug:
        for lg in others.values():
            lg.setLevel(logging.CRITICAL)

        def quiet(args) -> None:
            ours.debug("a background task failed", exc_info=(
                args.exc_type, args.exc_value, args.exc_traceback))
        threading.excepthook = sys.unraisablehook = quiet
    try:
        yield
    except BaseException:
        # a failed command: its process is about to exit, while the background tasks of a
        # failed write may still report; they stay quiet until then
        raise
    else:
        threading.excepthook, sys.unraisablehook = saved[3], saved[4]
        warnings.showwarning = saved[5]
        for name, level in saved[2].items():
            others[name].setLevel(level)
    finally:
        ours.removeHandler(progress)
        ours.removeHandler(handler)
        ours.level, ours.propagate = saved[0], saved[1]


def run_main(main: Callable[[list[str]], int | None], argv: Sequence[str] | None = None) -> int:
    """Run `main(argv)` under the common error path; returns the exit status. Run as the
    program (`argv` None: its own arguments), it first restarts itself with huge pages for
    XLA's temporaries where that helps (`ambjax.host_memory.restart_with_huge_pages`)."""
    if argv is None:
        restart_with_huge_pages()
    argv = list(sys.argv[1:] if argv is None else argv)
    # before JAX's CPU backend starts (ambjax.host_memory)
    keep_freed_memory_if_wanted(compile_cache="--no-compile-cache" not in argv,
                                several_processes=any(a.split("=")[0] == "--coordinator"
                                                      for a in argv))
    debug = os.environ.get("AMBJAX_DEBUG", "") not in ("", "0") or "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    handlers = interrupts.raise_on_signals()
    try:
        with _command_output(debug):
            return int(main(argv) or 0)
    except (Interrupted, KeyboardInterrupt) as e:
        if debug:
            raise
        stop = e if isinstance(e, Interrupted) else Interrupted(interrupts.signal.SIGINT)
        print(f"interrupted: {flag_hints(str(stop))}", file=sys.stderr, flush=True)
        return stop.exit_code
    except Exception as e:  # noqa: BLE001 - filtered just below
        if debug or not isinstance(e, known_errors()):
            raise
        print(f"error: {one_line(e)}", file=sys.stderr, flush=True)
        return EXIT_ERROR
    finally:
        interrupts.restore(handlers)


def stop_process(message: str) -> None:
    """Print `message` (option names as flags) on stderr and end the process with status 2
    at once: for failures found off the main thread (a lost peer of a multi-process run)."""
    print(flag_hints(message), file=sys.stderr, flush=True)
    os._exit(EXIT_ERROR)


def one_line(e: BaseException) -> str:
    """The message of `e` on one line (OSErrors name the path)."""
    if isinstance(e, OSError) and e.filename:
        text = f"{e.filename}: {e.strerror or e}"
    else:
        text = str(e) or type(e).__name__
    return flag_hints(" ".join(text.split()))
