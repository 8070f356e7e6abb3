"""Train state and optimiser.

The release's optimiser ("adam_l2") is torch's `Adam(weight_decay=l2)`: the L2 term l2 * param
is added to the gradient before the Adam moments (not decoupled AdamW decay), with a constant
learning rate and no clipping. The robust recipe uses "adamw" (decoupled decay), a warm-up +
cosine schedule and gradient clipping (`ambjax.train.config.OptimConfig`).
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


def learning_rate(optim, total_steps: int):
    """The learning rate (a float or an optax schedule of the step) of an `OptimConfig`."""
    if optim.lr_schedule == "constant":
        return optim.lr
    warmup = max(1, int(0.05 * total_steps))
    return optax.warmup_cosine_decay_schedule(0.0, optim.lr, warmup,
                                              max(total_steps, warmup + 1), end_value=0.0)


def create_optimizer(optim, total_steps: int = 1) -> optax.GradientTransformation:
    """The optimiser of an `OptimConfig` over `total_steps` steps (for schedules).

    Example:
      >>> from ambjax.train.config import OptimConfig
      >>> opt = create_optimizer(OptimConfig(lr=1e-3, l2=0.0))     # the release's Adam + L2
      >>> opt = create_optimizer(OptimConfig(optimizer="adamw", lr_schedule="warmup_cosine",
      ...                                    clip_norm=1.0), total_steps=100)
    """
    lr = learning_rate(optim, total_steps)
    clip = [optax.clip_by_global_norm(optim.clip_norm)] if optim.clip_norm else []
    if optim.optimizer == "adamw":
        return optax.chain(*clip, optax.adamw(lr, weight_decay=optim.l2))
    if optim.optimizer == "sgd":
        return optax.chain(*clip, optax.add_decayed_weights(optim.l2), optax.sgd(lr))
    scale = (optax.scale_by_schedule(lambda step: -lr(step)) if callable(lr)
             else optax.scale(-lr))
    return optax.chain(*clip, optax.add_decayed_weights(optim.l2), optax.scale_by_adam(), scale)


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
