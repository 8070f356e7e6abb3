"""Which array library computes a pure function's arithmetic: numpy for host arrays, jax.numpy
for everything else.

A metric or an instrument written with `jnp` and called on numpy arrays (a run's epoch
summaries, read back with `jax.device_get`) runs every operation as an eager XLA program: one
compile per operation and shape in every process (with the seed slices of the checkpoints,
31 compiles and 1.3 s in the first epoch of the README's main job on a 2-core CPU;
benchmarks/README.md, twenty-fourth session). With `namespace` the same code computes those
calls in numpy, and under jit, vmap and grad (tracers) or on jax arrays in jax.numpy as
before.

This module sits on the ground floor: it imports nothing from `ambjax`.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np


def namespace(*arrays):
    """numpy when every argument is a numpy array or scalar, else jax.numpy.

    Example:
      >>> namespace(np.ones(2)) is np, namespace(np.ones(2), jnp.ones(2)) is jnp
      (True, True)
    """
    return np if all(isinstance(a, (np.ndarray, np.generic)) for a in arrays) else jnp
