"""Orbax checkpoints of the train state.

Each epoch saves the state (params, optimiser state, step, RNG) and a JSON record (epoch, best
score and epoch, config fingerprint, input widths). The manager keeps the last `keep` epochs and
the best one. Orbax writes into a temporary folder and renames it when complete, so a crash
mid-save never leaves a checkpoint that `latest_step` would pick up.
"""

from __future__ import annotations

import os
import re

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as ocm


from ambjax.errors import CheckpointError  # noqa: F401 - re-exported


def _damaged(where: str, e: Exception) -> CheckpointError:
    text = " ".join(str(e).split())[:300]
    return CheckpointError(f"{where}: damaged or unreadable checkpoint "
                           f"({type(e).__name__}: {text})")


def _score(metrics: dict) -> float:
    return metrics["score"]


def create_manager(directory: str, keep: int = 2) -> ocp.CheckpointManager:
    """A manager in `directory` keeping the `keep` latest checkpoints and the best one."""
    policy = ocm.AnyPreservationPolicy([
        ocm.LatestN(keep),
        ocm.BestN(get_metric_fn=_score, n=1,
                  keep_checkpoints_without_metrics=False),
    ])
    # best_fn makes orbax write each step's metrics next to it, so that a manager opened by a
    # later process (a resume) still knows which step is the best one and keeps it
    options = ocp.CheckpointManagerOptions(preservation_policy=policy, create=True,
                                           best_fn=_score, best_mode="max",
                                           enable_async_checkpointing=False)
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise CheckpointError(f"{directory} is a file, expected a checkpoint folder")
    return ocp.CheckpointManager(os.path.abspath(directory), options=options)


def save(manager: ocp.CheckpointManager, epoch: int, state, meta: dict, score: float) -> None:
    """Save `state` (host copy) and `meta` as checkpoint `epoch` with metric `score`.

    Raises:
      CheckpointError: the checkpoint could not be written (a full disk, a read-only folder);
        the checkpoints saved before are kept, and orbax leaves no partial one that a resume
        would pick up.
    """
    host_state = jax.tree.map(np.asarray, jax.device_get(state))
    try:
        manager.save(epoch, args=ocp.args.Composite(state=ocp.args.StandardSave(host_state),
                                                    meta=ocp.args.JsonSave(meta)),
                     # ties go to the earlier epoch, as the loop's selection (a strict >)
                     # does; without this, orbax's BestN keeps the later of two equal scores
                     metrics={"score": float(score) - 1e-9 * epoch})
        manager.wait_until_finished()
    except Exception as e:  # noqa: BLE001 - orbax wraps file-system errors in many kinds
        where = os.path.join(str(manager.directory), str(epoch))
        raise CheckpointError(f"{where}: could not write the checkpoint ({_cause(e)}); the "
                              "earlier checkpoints are kept") from None


def read_meta(manager: ocp.CheckpointManager, epoch: int) -> dict:
    """The JSON record saved with checkpoint `epoch`."""
    try:
        meta = manager.restore(epoch, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    except Exception as e:  # noqa: BLE001 - orbax raises many kinds on damaged files
        raise _damaged(os.path.join(str(manager.directory), str(epoch)), e) from None
    if not isinstance(meta, dict) or "epoch" not in meta:
        raise CheckpointError(f"{os.path.join(str(manager.directory), str(epoch))}: damaged "
                              "checkpoint record (no epoch)")
    return meta


def best_step(manager: ocp.CheckpointManager) -> int | None:
    """Epoch of the best checkpoint (by the selection score), None if nothing is saved."""
    latest = manager.latest_step()
    if latest is None:
        return None
    best = read_meta(manager, latest)["best_epoch"]
    return best if best in manager.all_steps() else latest


def restore(manager: ocp.CheckpointManager, epoch: int, target_state, *, fingerprint: str,
            dims: dict) -> tuple:
    """Restore checkpoint `epoch` into the structure of `target_state` (arrays or
    `jax.ShapeDtypeStruct`s); returns (the host state, the checkpoint's JSON record).

    Raises:
      CheckpointError: the checkpoint was written by another model configuration, or for data
        of other feature widths.
    """
    meta = read_meta(manager, epoch)
    where = os.path.join(str(manager.directory), str(epoch))
    if meta.get("dims") != dict(dims):
        raise CheckpointError(f"{where}: checkpoint expects feature widths {meta.get('dims')}, "
                              f"the data has {dict(dims)}")
    if meta.get("fingerprint") != fingerprint:
        raise CheckpointError(f"{where}: checkpoint of another model configuration "
                              f"(fingerprint {meta.get('fingerprint')} != {fingerprint}); "
                              "use the run's own config or a new `out_dir` folder")
    abstract = jax.tree.map(lambda x: x if isinstance(x, jax.ShapeDtypeStruct)
                            else ocp.utils.to_shape_dtype_struct(np.asarray(x)), target_state)
    try:
        state = manager.restore(epoch, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract)))["state"]
    except Exception as e:  # noqa: BLE001 - orbax raises many kinds on damaged files
        raise _damaged(where, e) from None
    return state, meta


def _cause(e: BaseException) -> str:
    """The file-system error behind `e`, else `e` in brief. orbax and tensorstore wrap it: as
    an OSError in the chain of causes, or as "[os_error_code='28']" in a message."""
    seen, chain = set(), []
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        chain.append(e)
        e = e.__cause__ or e.__context__
    for x in chain:
        if isinstance(x, OSError) and x.strerror:
            return x.strerror
        code = re.search(r"os_error_code='?(\d+)", str(x))
        if code:
            return os.strerror(int(code.group(1)))
    last = chain[-1]
    return " ".join(f"{type(last).__name__}: {last}".split())[:200]
