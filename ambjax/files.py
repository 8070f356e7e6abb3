"""Writing files whole or not at all: the one write-then-rename helper of the package.

Every file ambjax writes for a user (run-folder records, reports, feature pickles,
standardisation statistics, executable-store entries) goes through `atomic_write`, so a crash or
a full disk never leaves a torn file where a good one was.
"""

from __future__ import annotations

import json
import os
import tempfile


def atomic_write(path: str | os.PathLike, data: str | bytes, *, mode: int | None = None) -> None:
    """Write `data` to `path` whole or not at all (a temporary file beside it, then a rename);
    a failed write (a full disk) leaves `path` as it was and no temporary file.

    Args:
      mode: the file's permission bits (default: what `open` would give under the umask).
    """
    path = os.fspath(path)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)),
                               prefix=os.path.basename(path) + ".", suffix=".tmp")
    if mode is None:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb" if isinstance(data, bytes) else "w") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_json(path: str | os.PathLike, blob) -> None:
    """Write `blob` to `path` as JSON, atomically (`atomic_write`)."""
    atomic_write(path, json.dumps(blob, indent=1))


def save_figure(fig, path: str | os.PathLike, **kwargs) -> None:
    """Save a matplotlib figure as PNG, atomically (`atomic_write`)."""
    import io
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", **kwargs)
    atomic_write(path, buffer.getvalue())
