"""The one error path of every command-line entry point.

Known failures (bad data, bad flags or settings, run-folder and checkpoint problems, file-system
errors, out-of-memory estimates) print one line, `error: <what is wrong>`, on stderr and exit 2;
Ctrl-C prints one line and exits 130 (a run folder stays resumable: checkpoints are written
whole or not at all). `AMBJAX_DEBUG=1` (or `--debug` on the command line) shows the traceback.
"""

from __future__ import annotations

import os
import sys
from typing import Callable, Sequence

EXIT_ERROR = 2
EXIT_INTERRUPTED = 130


class UserError(ValueError):
    """A failure the user can fix (flags, settings, files); base of ambjax's own errors."""


def known_errors() -> tuple[type[BaseException], ...]:
    """The exception types reported as one line (imported lazily: cheap `--help`)."""
    from ambjax.data import DataFormatError
    from ambjax.train import CheckpointError, ConfigError, RunFolderError
    return (UserError, DataFormatError, ConfigError, RunFolderError, CheckpointError, OSError,
            MemoryError)


def run_main(main: Callable[[list[str]], int | None], argv: Sequence[str] | None = None) -> int:
    """Run `main(argv)` under the common error path; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = os.environ.get("AMBJAX_DEBUG", "") not in ("", "0") or "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    try:
        return int(main(argv) or 0)
    except KeyboardInterrupt:
        if debug:
            raise
        print("interrupted: stopped by Ctrl-C; the last completed epoch's checkpoint is kept "
              "(continue with --resume)", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:  # noqa: BLE001 - filtered just below
        if debug or not isinstance(e, known_errors()):
            raise
        print(f"error: {one_line(e)}", file=sys.stderr)
        return EXIT_ERROR


def one_line(e: BaseException) -> str:
    """The message of `e` on one line (OSErrors name the path)."""
    if isinstance(e, OSError) and e.filename:
        text = f"{e.filename}: {e.strerror or e}"
    else:
        text = str(e) or type(e).__name__
    return " ".join(text.split())


def compile_cache_dir() -> str:
    """Where the command-line tools keep XLA's persistent compilation cache:
    $AMBJAX_CACHE_DIR, else $XDG_CACHE_HOME/ambjax/xla, else ~/.cache/ambjax/xla."""
    if os.environ.get("AMBJAX_CACHE_DIR"):
        return os.environ["AMBJAX_CACHE_DIR"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "ambjax", "xla")


def enable_compile_cache(enabled: bool = True) -> str | None:
    """Turn on JAX's persistent compilation cache (so a second identical run starts in
    seconds) unless `enabled` is False or AMBJAX_COMPILE_CACHE=0. Returns the folder used."""
    if not enabled or os.environ.get("AMBJAX_COMPILE_CACHE", "1") == "0":
        return None
    import jax
    if jax.config.jax_compilation_cache_dir:        # already set by the user or a test
        return jax.config.jax_compilation_cache_dir
    path = compile_cache_dir()
    try:
        os.makedirs(path, exist_ok=True)
    except OSError:
        return None                                   # an unwritable home: run uncached
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    return path
