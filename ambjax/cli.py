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
