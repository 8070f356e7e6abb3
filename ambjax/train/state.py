"""Train state and optimiser.

The release's optimiser ("adam_l2") is torch's `Adam(weight_decay=l2)`: the L2 term l2 * param
is added to the gradient before the Adam moments (not decoupled AdamW decay), with a constant
learning rate and no clipping. The robust recipe uses "adamw" (decoupled decay), a warm-up +
cosine schedule and gradient clipping (`ambjax.train.config.OptimConfig`).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable

import flax.linen as nn
import flax.struct
import jax
import jax.extend.core
import jax.numpy as jnp
import numpy as np
import optax

from ambjax.errors import ConfigError


@flax.struct.dataclass
class TrainState:
    """step int32 []; params; opt_state; rng uint32 [2] (the run's base key; per-step keys are
    `fold_in(rng, step)`)."""

    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array


def _warmup_cosine(lr: float, total_steps: int):
    warmup = max(1, int(0.05 * total_steps))
    return optax.warmup_cosine_decay_schedule(0.0, lr, warmup, max(total_steps, warmup + 1),
                                              end_value=0.0)


# OptimConfig.lr_schedule -> (peak lr, total steps) -> a float or an optax schedule
LR_SCHEDULES: dict[str, Callable[[float, int], Any]] = {
    "constant": lambda lr, total_steps: lr,
    "warmup_cosine": _warmup_cosine,
}

# OptimConfig.optimizer -> (learning rate or schedule, l2) -> the optimiser
OPTIMIZERS: dict[str, Callable[[Any, float], optax.GradientTransformation]] = {
    # torch's Adam(weight_decay=l2): L2 added to the gradient before the moments
    "adam_l2": lambda lr, l2: optax.chain(optax.add_decayed_weights(l2), optax.scale_by_adam(),
                                          optax.scale_by_learning_rate(lr)),
    "adamw": lambda lr, l2: optax.adamw(lr, weight_decay=l2),
    "sgd": lambda lr, l2: optax.chain(optax.add_decayed_weights(l2), optax.sgd(lr)),
}


def _choice(table: dict, name: str, key: str):
    if name not in table:
        raise ConfigError(f"{key} must be one of {list(table)}, got {name!r}")
    return table[name]


def learning_rate(optim, total_steps: int):
    """The learning rate (a float or an optax schedule of the step) of an `OptimConfig`."""
    return _choice(LR_SCHEDULES, optim.lr_schedule, "optim.lr_schedule")(optim.lr, total_steps)


def create_optimizer(optim, total_steps: int = 1) -> optax.GradientTransformation:
    """The optimiser of an `OptimConfig` over `total_steps` steps (for schedules).

    Raises:
      ConfigError: an optimiser or schedule name not in `OPTIMIZERS` / `LR_SCHEDULES`.

    Example:
      >>> from ambjax.train.config import OptimConfig
      >>> opt = create_optimizer(OptimConfig(lr=1e-3, l2=0.0))     # the release's Adam + L2
      >>> opt = create_optimizer(OptimConfig(optimizer="adamw", lr_schedule="warmup_cosine",
      ...                                    clip_norm=1.0), total_steps=100)
    """
    build = _choice(OPTIMIZERS, optim.optimizer, "optim.optimizer")
    clip = [optax.clip_by_global_norm(optim.clip_norm)] if optim.clip_norm else []
    return optax.chain(*clip, build(learning_rate(optim, total_steps), optim.l2))


def init_params(model: nn.Module, example_batch, seed: int):
    """The parameters `create_train_state` initialises from `seed`: `model.init`'s values.

    Only the initialisers run, op by op, not under jit (XLA compiles the many small
    initialisers faster that way than one fused init program, and they give exactly the values
    of an eager `model.init`): `model.init` is traced on the batch's shapes (`jax.make_jaxpr`),
    the operations the parameters do not depend on are dropped (the forward pass, including
    what it computes from the parameters alone, which Flax's `lazy_init` would run eagerly),
    and the rest is evaluated: the exact steps (scales, zeros, reshapes) in numpy, the random
    draws eagerly through XLA, each sampler at one size (the first values of its largest
    draw: the same bits). On AMB-DSGDN at hidden 512 with the optimiser's state
    (`create_train_state`) that is 13 small XLA compiles, against 22 with a program per
    draw's shape, 57 with every step through XLA and 171 through `lazy_init`. For several
    seeds, `parameter_initialiser` traces once.

    Raises:
      ConfigError: the parameters depend on the batch's values, not only on its shapes.
    """
    return parameter_initialiser(model, example_batch)[0](seed)


def parameter_initialiser(model: nn.Module, example_batch) -> tuple[Callable[[int], Any], Any]:
    """(seed -> `init_params(model, example_batch, seed)`, the parameters'
    `jax.ShapeDtypeStruct`s), with `model.init` traced once for every seed (and the shapes
    without initialising anything).

    Raises:
      ConfigError: the parameters depend on the batch's values, not only on its shapes.
    """
    shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), jnp.result_type(x)),
                          example_batch)
    key_shape = jax.eval_shape(jax.random.PRNGKey, 0)
    closed, out = jax.make_jaxpr(lambda key, batch: model.init(key, batch)["params"],
                                 return_shape=True)(key_shape, shapes)
    key_var, *batch_vars = closed.jaxpr.invars
    eqns, needed = _needed_equations(closed.jaxpr)
    if needed.intersection(batch_vars):
        raise ConfigError(f"{type(model).__name__}'s parameters depend on the values of the "
                          "batch they are initialised on, not only on its shapes")
    pruned = closed.jaxpr.replace(invars=[key_var], eqns=eqns)

    def initialise(seed: int):
        init_key, _ = jax.random.split(jax.random.PRNGKey(seed))
        return jax.device_put(jax.tree.unflatten(
            jax.tree.structure(out), _evaluate(pruned, closed.consts, [init_key])))

    return initialise, out


def _broadcast_in_dim(x, shape, broadcast_dimensions):
    """`lax.broadcast_in_dim` in numpy: `x`'s axes at `broadcast_dimensions` of `shape`."""
    kept = [1] * len(shape)
    for axis, size in zip(broadcast_dimensions, np.shape(x)):
        kept[axis] = size
    return np.broadcast_to(np.reshape(x, kept), shape)


# primitives that numpy computes exactly as XLA does, on floating-point values: IEEE-rounded
# arithmetic and data movement. `_evaluate` runs them on the host instead of compiling a small
# XLA program for each of their shapes (the initialisers' scales, zero biases, Adam's zero
# moments: about 35 of the ~57 small compiles of AMB-DSGDN's initialisation)
_HOST_EXACT: dict[str, tuple[Callable, tuple[str, ...]]] = {   # name: (function, its parameters)
    "mul": (np.multiply, ()), "div": (np.divide, ()), "add": (np.add, ()),
    "sub": (np.subtract, ()), "neg": (np.negative, ()), "sqrt": (np.sqrt, ()),
    "convert_element_type": (lambda x: x, ()),
    "broadcast_in_dim": (_broadcast_in_dim, ("shape", "broadcast_dimensions")),
    "reshape": (np.reshape, ("new_sizes",)),
}
# parameters that change nothing here (one dtype throughout, one device); any other parameter
# a primitive has but its function does not take must be None (e.g. `mul`'s out_dtype), or
# XLA runs it
_HOST_IGNORED = ("sharding", "new_dtype", "weak_type")


def _host_arrays(eqn, values: list) -> list | None:
    """`values` as numpy arrays when `eqn` may run in numpy (a `_HOST_EXACT` primitive on
    concrete values of one floating-point dtype: no keys, no integers, whose division rounds
    differently, no conversions between dtypes, no tracers), else None."""
    name = eqn.primitive.name
    dtypes = {getattr(v.aval, "dtype", None) for v in (*eqn.invars, *eqn.outvars)}
    if (name not in _HOST_EXACT or eqn.primitive.multiple_results or len(dtypes) != 1
            or not jnp.issubdtype(dtypes.pop() or np.bool_, jnp.floating)
            or any(v is not None for k, v in eqn.params.items()
                   if k not in _HOST_EXACT[name][1] + _HOST_IGNORED)):
        return None
    try:
        return [np.asarray(x, v.aval.dtype) for x, v in zip(values, eqn.invars)]
    except jax.errors.TracerArrayConversionError:
        return None


def _evaluate(jaxpr, consts: list, args: list) -> list:
    """`jax.extend.core.jaxpr_as_fun`'s values of `jaxpr`, with the `_HOST_EXACT` equations
    run in numpy, the `_SAMPLERS`' draws at one size per sampler (`_draw_sizes`; bit for bit
    the same values: `tests/test_state.py`) and the others bound eagerly as there. Outputs
    computed on the host are numpy arrays."""
    env: dict = {}

    def read(atom):
        return atom.val if isinstance(atom, jax.extend.core.Literal) else env[atom]

    env.update(zip(jaxpr.constvars, consts))
    env.update(zip(jaxpr.invars, args))
    kinds = [_draw_kind(eqn) for eqn in jaxpr.eqns]
    sizes = _draw_sizes(jaxpr.eqns, kinds)
    for eqn, kind in zip(jaxpr.eqns, kinds):
        values = [read(v) for v in eqn.invars]
        if kind is not None:
            env[eqn.outvars[0]] = _draw_at(kind, sizes[kind], eqn.outvars[0].aval, values)
            continue
        arrays = _host_arrays(eqn, values)
        if arrays is not None:
            function, taken = _HOST_EXACT[eqn.primitive.name]
            env[eqn.outvars[0]] = np.array(      # a copy: broadcasts give read-only views
                function(*arrays, *(eqn.params[k] for k in taken)), eqn.outvars[0].aval.dtype)
            continue
        # jax 0.10 returns the parameters, earlier versions (subfunctions, parameters)
        bound = eqn.primitive.get_bind_params(eqn.params)
        subfuns, params = bound if isinstance(bound, tuple) else ((), bound)
        result = eqn.primitive.bind(*subfuns, *values, **params)
        env.update(zip(eqn.outvars, result if eqn.primitive.multiple_results else [result]))
    return [read(v) for v in jaxpr.outvars]


# JAX's samplers (the names of their jitted functions in a jaxpr) -> the public call drawing
# `size` values with the equation's inputs (key, then the bounds)
_SAMPLERS: dict[str, Callable] = {
    "_normal": lambda key, size, dtype: jax.random.normal(key, (size,), dtype),
    "_truncated_normal": lambda key, lower, upper, size, dtype: jax.random.truncated_normal(
        key, lower, upper, (size,), dtype),
    "_uniform": lambda key, low, high, size, dtype: jax.random.uniform(
        key, (size,), dtype, low, high),
}


def _draw_kind(eqn) -> tuple | None:
    """(sampler, dtype) of an equation that draws from a threefry key with one of
    `_SAMPLERS`, else None. With threefry's partitionable bits (JAX's default) a value's bits
    depend only on the key and the value's flat index, so a draw of n values is the first n
    of any longer draw of the same key, bit for bit."""
    name = eqn.params.get("name") if eqn.primitive.name in ("pjit", "jit") else None
    if (name not in _SAMPLERS or len(eqn.outvars) != 1
            or not jax.config.jax_threefry_partitionable
            or not str(eqn.invars[0].aval.dtype).startswith("key<fry>")):
        return None
    keys = eqn.invars[0].aval.shape
    if eqn.outvars[0].aval.shape[:len(keys)] != keys or any(
            v.aval.shape for v in eqn.invars[1:]):
        return None
    return name, eqn.outvars[0].aval.dtype


def _draw_at(kind: tuple, size: int, out, values: list):
    """An equation's draw (`_draw_kind` `kind`, output aval `out`, inputs `values`: the key
    first) as the first values of the sampler's draw of `size`, so that one compiled program
    serves every shape; keys stacked over leading axes (modality members) draw a row each."""
    key = values[0]
    draw = functools.partial(_SAMPLERS[kind[0]], size=size, dtype=out.dtype)
    n = math.prod(out.shape[key.ndim:])
    if isinstance(key, jax.core.Tracer):                # traced under a jit: one vmapped draw
        for _ in range(key.ndim):
            draw = jax.vmap(draw, in_axes=(0,) + (None,) * (len(values) - 1))
        return draw(*values).reshape(-1, size)[:, :n].reshape(out.shape)
    impl, data = jax.random.key_impl(key), np.asarray(jax.random.key_data(key))
    rows = [np.asarray(draw(jax.random.wrap_key_data(row, impl=impl), *values[1:]))[:n]
            for row in data.reshape(-1, data.shape[-1])]
    return np.stack(rows).reshape(out.shape)


def _draw_sizes(eqns, kinds: list) -> dict[tuple, int]:
    """The largest draw per key of each (sampler, dtype) among `eqns` (their `_draw_kind`s
    `kinds`): the one size `_evaluate` draws them all at (one small XLA program per sampler,
    not per shape)."""
    sizes: dict[tuple, int] = {}
    for eqn, kind in zip(eqns, kinds):
        if kind is not None:
            keys = len(eqn.invars[0].aval.shape)
            size = math.prod(eqn.outvars[0].aval.shape[keys:])
            sizes[kind] = max(sizes.get(kind, 0), size)
    return sizes


def _needed_equations(jaxpr) -> tuple[list, set]:
    """The equations of `jaxpr` that its outputs depend on, in order, and the variables those
    read (inputs among them)."""
    def variables(atoms):
        return {a for a in atoms if not isinstance(a, jax.extend.core.Literal)}
    needed, kept = variables(jaxpr.outvars), []
    for eqn in reversed(jaxpr.eqns):
        if needed.intersection(eqn.outvars):
            kept.append(eqn)
            needed |= variables(eqn.invars)
    return kept[::-1], needed


def create_train_state(model: nn.Module, example_batch, optimizer: optax.GradientTransformation,
                       seed: int, params=None) -> TrainState:
    """Initialise parameters from `seed` on an example batch, or take `params` (as
    `init_params` gave them for this seed, e.g. read back from a store).

    The parameters are `init_params`': only the initialisers run, the forward pass is only
    traced. The values equal `model.init`'s, the optimiser state's `optimizer.init`'s (its
    zeros made on the host like the initialisers' exact steps, not by one small XLA program
    per shape).
    """
    _, run_key = jax.random.split(jax.random.PRNGKey(seed))
    if params is None:
        params = init_params(model, example_batch, seed)
    closed, shapes = jax.make_jaxpr(optimizer.init, return_shape=True)(params)
    leaves = _evaluate(closed.jaxpr, closed.consts, jax.tree.leaves(params))
    opt_state = jax.device_put(jax.tree.unflatten(jax.tree.structure(shapes), leaves))
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=opt_state,
                      rng=run_key)
