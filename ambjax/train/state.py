"""Train state and optimiser.

The optimiser is torch's `Adam(weight_decay=l2)`: the L2 term l2 * param is added to the gradient
before the Adam moments (not decoupled AdamW decay); no schedule, no clipping.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax


@flax.struct.dataclass
class TrainState:
    """step int32 []; params; opt_state; rng uint32 [2] (the run's base key; per-step keys are
    `fold_in(rng, step)`)."""

    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array


def create_optimizer(lr: float, l2: float) -> optax.GradientTransformation:
    """Adam with L2 added to the gradient (torch-style weight_decay)."""
    return optax.chain(optax.add_decayed_weights(l2), optax.scale_by_adam(), optax.scale(-lr))


def create_train_state(model: nn.Module, example_batch, optimizer: optax.GradientTransformation,
                       seed: int) -> TrainState:
    """Initialise parameters from `seed` on an example batch.

    Uses Flax's `lazy_init` on the batch's shapes: only the initialisers run (op by op, not
    under jit; XLA compiles the many small initialisers faster that way than one fused init
    program), the forward pass is only traced. The values equal `model.init`'s.
    """
    init_key, run_key = jax.random.split(jax.random.PRNGKey(seed))
    shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), jnp.result_type(x)),
                          example_batch)
    params = model.lazy_init(init_key, shapes)["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=optimizer.init(params), rng=run_key)
