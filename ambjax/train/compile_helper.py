"""The helper process of `ambjax.train.compile_process`: `python -m ambjax.train.compile_helper
FOLDER` rebuilds the trainer that `compile_in_own_process` wrote to FOLDER, checks that its
programs are the caller's, and compiles them into the executable store; exit status 0 when it
did, `compile_process.MISMATCH` when the programs would differ, `compile_process.REFUSED`
when the compile raised one of ambjax's errors (the caller's own compile then meets it too,
and reports it)."""

from __future__ import annotations

import json
import os
import sys

import jax
import numpy as np

from ambjax.data.dataset_arrays import from_arrays
from ambjax.errors import AmbjaxError
from ambjax.nn.model import AMBDSGDN
from ambjax.train.compile_process import DATASET, MISMATCH, REFUSED, SPEC, identity_digest
from ambjax.train.config import from_dict
from ambjax.train.executables import read_array_tree
from ambjax.train.trainer import Trainer, model_for


def main(folder: str) -> int:
    """Rebuild, check and compile the trainer described in `folder`; returns the exit
    status (module docstring)."""
    with open(os.path.join(folder, SPEC)) as f:
        spec = json.load(f)
    for name, value in spec["jax_config"].items():
        if jax.config.values.get(name) != value:
            try:
                jax.config.update(name, value)
            except Exception:  # noqa: BLE001 - then the store's key differs: the caller compiles
                pass
    with open(os.path.join(folder, DATASET), "rb") as f:
        tree = read_array_tree(f)
    # the features' values decide no program: zeros of their widths, which stay unwritten,
    # so not resident (a second copy of a large feature set would double the memory)
    rows = int(tree["lengths"].sum())
    tree["features"] = {m: np.zeros((rows, x.shape[1]), np.float32)
                        for m, x in tree["features"].items()}
    dataset = from_arrays(tree)
    config = from_dict(spec["config"])
    trainer = Trainer(AMBDSGDN(model_for(config, dataset)), config, dataset,
                      class_weights=spec["class_weights"], n_devices=1, seeds=spec["seeds"])
    if identity_digest(trainer) != spec["identity"]:
        print("the rebuilt trainer's programs differ from the caller's", file=sys.stderr)
        return MISMATCH
    try:
        trainer.compile(memory_limit=spec["memory_limit"])
    except AmbjaxError as e:                      # e.g. a program larger than the memory
        print(" ".join(str(e).split()), file=sys.stderr)
        return REFUSED
    return 0


if __name__ == "__main__":
    status = main(sys.argv[1])
    sys.stdout.flush()
    sys.stderr.flush()
    # everything it made is written (the store's and JAX's cache files, synchronously); the
    # interpreter's teardown of the compiled programs and arrays (~1 s) is skipped
    os._exit(status)
