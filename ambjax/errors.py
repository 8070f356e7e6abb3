"""ambjax's errors: one root, `AmbjaxError`, for every failure a user can cause and fix.

This module imports nothing of ambjax, so every package can raise these without an import
circle. The command-line layer (`ambjax.cli`) prints any `AmbjaxError` as one line and exits 2;
library callers catch `AmbjaxError` (or a subclass) to handle them. Signals are not errors:
`Interrupted` derives from `BaseException`, like `KeyboardInterrupt`, so `except Exception`
does not swallow it.
"""

from __future__ import annotations

import signal


class AmbjaxError(ValueError):
    """Root of every error a user can cause (bad flags, settings, files, folders, resources).

    A `ValueError` too, so that code written against the older classes keeps working."""


class UsageError(AmbjaxError):
    """A command-line argument that is missing, unknown or malformed."""


class DataFormatError(AmbjaxError):
    """A feature file (or in-memory dataset) does not have the expected structure.

    The message names the file, the dialogue and the field where the problem was found.
    """


class ConfigError(AmbjaxError):
    """An unknown key, an unparsable value, or a setting out of its range."""


class RunFolderError(AmbjaxError):
    """The output folder cannot be used (it holds another run or other files, is in use, or is
    no folder)."""


class CheckpointError(AmbjaxError):
    """A checkpoint that is missing, damaged, cannot be written, or does not belong to this
    configuration or data."""


class ResourceError(AmbjaxError):
    """A run that cannot fit the device's memory."""


class DistributedError(AmbjaxError):
    """The processes of a multi-process run could not be set up or lost each other."""


class DivergedError(AmbjaxError):
    """Training produced a loss that is not a finite number (nan or inf): the parameters are
    lost from that step on, so the run stops instead of training on."""


class Interrupted(BaseException):
    """The run was stopped by a signal (SIGINT or SIGTERM).

    Attributes:
      signum: the signal's number.
      kept: what the stopped run left behind, in words (e.g. which checkpoint is kept).
    """

    def __init__(self, signum: int, kept: str = ""):
        super().__init__(signum, kept)
        self.signum = int(signum)
        self.kept = kept

    @property
    def exit_code(self) -> int:
        """The shell's convention: 128 + the signal number (130 for SIGINT, 143 for SIGTERM)."""
        return 128 + self.signum

    def __str__(self) -> str:
        name = signal.Signals(self.signum).name
        return f"stopped by {name}" + (f"; {self.kept}" if self.kept else "")
