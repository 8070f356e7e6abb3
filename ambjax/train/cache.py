"""The compilation cache folder, and when it may be trusted.

XLA's persistent compilation cache and ambjax's executable store (`ambjax.train.executables`)
both load compiled programs from disk: native code, and, for the store, pickled tree
structures. Whoever can write into that folder can run code as you. So a folder is used only
when it is *trusted*: it, each of its parents and each of its entries belong to you (or to
root) and no one else can write them (no group or world write bit; a parent such as /tmp with
the sticky bit set is fine, since others cannot replace what you own there). An untrusted
folder is refused with one warning and the run compiles as if there were no cache.

Where the cache lives: `$AMBJAX_CACHE_DIR`, else `$XDG_CACHE_HOME/ambjax/xla`, else
`~/.cache/ambjax/xla`; new folders are created private (mode 0700).
"""

from __future__ import annotations

import logging
import os
import stat

log = logging.getLogger(__name__)


def compile_cache_dir() -> str:
    """Where the command-line tools keep XLA's persistent compilation cache:
    $AMBJAX_CACHE_DIR, else $XDG_CACHE_HOME/ambjax/xla, else ~/.cache/ambjax/xla."""
    if os.environ.get("AMBJAX_CACHE_DIR"):
        return os.environ["AMBJAX_CACHE_DIR"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "ambjax", "xla")


def _foreign(st: os.stat_result) -> str | None:
    """Why a file with stat `st` is not the user's own, or None."""
    if st.st_uid not in (os.geteuid(), 0):
        return f"is owned by uid {st.st_uid}, not by you (uid {os.geteuid()})"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"can be written by others (mode {stat.S_IMODE(st.st_mode):04o})"
    return None


def untrusted_reason(path: str, *, entries: bool = True) -> str | None:
    """Why the cache folder `path` must not be used, or None when it may be.

    Checks the folder and every parent (owned by you or root, not writable by group or
    others unless sticky) and, with `entries`, every file and folder directly inside it. A
    folder that does not exist yet is judged by its nearest existing parent.
    """
    path = os.path.realpath(path)          # a link is judged by where it leads
    current = path
    while True:
        if os.path.lexists(current):
            st = os.stat(current)
            why = _foreign(st)
            # a sticky folder above (such as /tmp) lets no one replace what you own in it
            sticky_above = current != path and st.st_mode & stat.S_ISVTX
            if why and not (sticky_above and st.st_uid in (os.geteuid(), 0)):
                return f"{current} {why}"
        parent = os.path.dirname(current)
        if parent == current:
            break
        current = parent
    if entries and os.path.isdir(path):
        for entry in os.scandir(path):
            why = _foreign(entry.stat(follow_symlinks=False))
            if why:
                return f"{entry.path} {why}"
    return None


def trusted_file(path: str) -> bool:
    """True when the file at `path` is the user's own and only the user can write it."""
    try:
        return _foreign(os.stat(path, follow_symlinks=False)) is None
    except OSError:
        return False


def make_private_dirs(path: str) -> None:
    """Create `path` (and missing parents) readable and writable by the user alone."""
    os.makedirs(path, mode=0o700, exist_ok=True)


def enable_compile_cache(enabled: bool = True) -> str | None:
    """Turn on JAX's persistent compilation cache (so a second identical run starts in
    seconds) unless `enabled` is False or AMBJAX_COMPILE_CACHE=0. A folder already configured
    (by the user or a test) is kept if it is trusted. An untrusted folder is turned off with
    one warning (logged), and the run compiles without a cache. Returns the folder used, or
    None."""
    import jax
    path = jax.config.jax_compilation_cache_dir
    if not enabled or os.environ.get("AMBJAX_COMPILE_CACHE", "1") == "0":
        return None
    if not path:
        path = compile_cache_dir()
        try:
            make_private_dirs(path)
        except OSError:
            return None                               # an unwritable home: run uncached
        jax.config.update("jax_compilation_cache_dir", path)
        # every program, however small: the train state's initialisers run op by op (their
        # values must not depend on whether a cache was warm), and on a warm start loading
        # their small programs from the cache is much faster than compiling them again
        # (measured in benchmarks/README.md, "Changes and what they did")
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    return ensure_trusted_compile_cache()


def ensure_trusted_compile_cache() -> str | None:
    """The folder of JAX's persistent compilation cache if one is configured and trusted;
    an untrusted one is switched off for this process with one warning (logged). Called
    before every compile (`ambjax.train.compile`), so library use is guarded too."""
    import jax
    path = jax.config.jax_compilation_cache_dir
    if not path:
        return None
    why = untrusted_reason(path)
    if why:
        log.warning("warning: compilation cache not used: %s (anyone who can write it could "
                    "run code as you; use a private folder via AMBJAX_CACHE_DIR)", why)
        disable_compile_cache()
        return None
    return path


def disable_compile_cache() -> None:
    """Stop JAX from reading or writing its persistent compilation cache in this process."""
    import jax
    from jax._src import compilation_cache
    jax.config.update("jax_compilation_cache_dir", None)
    compilation_cache.reset_cache()
