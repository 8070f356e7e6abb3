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
                       seed) -> TrainState:
    """Initialise parameters from `seed` (an int, or an int array [S] for S seeds stacked on
    a leading axis) on an example batch.

    One jitted program: the forward pass is only traced on the batch's shapes
    (`lazy_init`), the initialisers run, and the optimiser state is built; under jit the
    program comes from the persistent compilation cache on a warm start (run op by op, the
    many small initialisers took 6-8 s at every start). Several seeds are `jax.vmap`ped, with
    the values each seed alone gets.
    """
    shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), jnp.result_type(x)),
                          example_batch)

    def init(one_seed):
        init_key, run_key = jax.random.split(jax.random.PRNGKey(one_seed))
        params = model.lazy_init(init_key, shapes)["params"]
        return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                          opt_state=optimizer.init(params), rng=run_key)

    seed = jnp.asarray(seed)
    return jax.jit(jax.vmap(init) if seed.ndim else init)(seed)
