"""Pure train and eval steps, and their jit / pmap wrappers.

`make_train_step(...)` returns `train_step(state, batch, balance_active) -> (state, metrics)`:
forward (dropout, modality balancing when `balance_active`), the AMB-DSGDN loss, gradients and
the optax update. With `axis_name` set it is meant for `jax.pmap`: gradients are summed from
per-device surrogates (exactly the global-batch gradient), confusion counts and loss sums are
reduced over the axis, so the balancing sees the global batch.

It is the composition of two pure parts, `make_gradient_step` (state, batch, balance_active)
-> (grads, metrics) and `make_update_step` (state, grads) -> state. `compile_steps` wraps them
as two programs (`TrainStep`): the gradient program depends on the batch shape and is compiled
per padding bucket, the optimiser's update does not and is compiled once for all of them
(the update was ~3.5 s of the IEMOCAP train program's ~14 s of compile CPU on a 2-core AMD
EPYC; benchmarks/README.md, eleventh session). The gradient program receives the state
without the optimiser's (`model_state`), so one compiled gradient program serves any optimiser.

metrics: "loss" [], "confusion" int32 [C, C] (fused predictions), "modality_f1" [M], "q" [M],
"utterances" int32 [] (real utterances in the global batch).

The step builders accept any `ambjax.nn.DialogueModel` (a `typing.Protocol`: Flax `apply` on a
`DialogueBatch` returning a `ModelOutput`), so models composed from ambjax's pieces train with
the same steps (see `experiments/compose.py`). The number of classes is read from the logits.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ambjax.errors import ConfigError
from ambjax.graphs.batch import DialogueBatch
from ambjax.hash_prng import HASH_PRNG
from ambjax.losses import amb_loss
from ambjax.metrics import confusion_matrix
from ambjax.nn.protocol import DialogueModel
from ambjax.nn.stack import squeeze_members, stack_member
from ambjax.train.state import TrainState

AXIS = "batch"


def _threefry_mask_keys(rng, fold):
    return tuple(jax.random.split(fold(rng)))


def _rbg_mask_keys(rng, fold):
    # the dropout masks (nearly all of a step's random bits) from XLA's RngBitGenerator,
    # seeded by four threefry words (one tiny call); the balancing draws stay threefry, so
    # that seeds vmapped draw what each seed alone does
    dropout_key, balance_key = jax.random.split(fold(rng))
    return (jax.random.wrap_key_data(jax.random.bits(dropout_key, (4,), jnp.uint32),
                                     impl="rbg"), balance_key)


def _hash_mask_keys(rng, fold):
    # every key of the step derived, and the dropout masks and balancing draws drawn, by the
    # counter hash (`ambjax.hash_prng`): no threefry loop in the program
    return tuple(jax.random.split(fold(jax.random.wrap_key_data(rng, impl=HASH_PRNG))))


# ModelConfig.mask_rng -> (dropout key, balancing key) of a step from the run's key uint32 [2]
# and `fold` (a key -> the step's key: the step count, under pmap the device, folded in)
MASK_KEYS = {"threefry": _threefry_mask_keys, "rbg": _rbg_mask_keys, "hash": _hash_mask_keys}


def make_gradient_step(model: DialogueModel, *, class_weights=None,
                       unimodal_weight: float = 0.1, axis_name: str | None = None,
                       mask_rng: str = "hash") -> Callable:
    """Build the pure `gradient_step(state, batch, balance_active) -> (grads, metrics)`: the
    train step's forward and backward pass (arguments as for `make_train_step`); grads has the
    structure, shapes and dtypes of `state.params` (summed over `axis_name` under pmap). It
    reads the state's step, rng and params only (`TrainStep` passes `model_state(state)`)."""
    if mask_rng not in MASK_KEYS:
        raise ConfigError(f"mask_rng must be one of {list(MASK_KEYS)}, got {mask_rng!r}")
    mask_keys = MASK_KEYS[mask_rng]

    def gradient_step(state: TrainState, batch: DialogueBatch, balance_active):
        def fold(key):
            key = jax.random.fold_in(key, state.step)
            if axis_name is not None:
                key = jax.random.fold_in(key, jax.lax.axis_index(axis_name))
            return key

        dropout_key, balance_key = mask_keys(state.rng, fold)
        nodes = batch.nodes

        def loss_fn(params):
            out = model.apply({"params": params}, batch, train=True,
                              balance_active=balance_active, axis_name=axis_name,
                              rngs={"dropout": dropout_key, "balance": balance_key})
            objective, aux = amb_loss(out["logits"], out["modality_logits"], nodes.label,
                                      nodes.mask, class_weights=class_weights,
                                      unimodal_weight=unimodal_weight, axis_name=axis_name)
            return objective, (aux, out)

        grads, (aux, out) = jax.grad(loss_fn, has_aux=True)(state.params)
        conf = confusion_matrix(nodes.label, jnp.argmax(out["logits"], -1), nodes.mask,
                                out["logits"].shape[-1])
        count = nodes.mask.sum(dtype=jnp.int32)
        if axis_name is not None:
            grads = jax.lax.psum(grads, axis_name)
            conf, count = jax.lax.psum((conf, count), axis_name)
        metrics = {"loss": aux["loss"], "confusion": conf, "modality_f1": out["modality_f1"],
                   "q": out["q"], "utterances": count}
        return grads, metrics

    return gradient_step


def make_update_step(optimizer: optax.GradientTransformation) -> Callable:
    """Build the pure `update_step(state, grads) -> state`: the optimiser's update of the
    parameters and its own state by `grads` (as `make_gradient_step` gives them), and the
    step count advanced by one."""
    def update_step(state: TrainState, grads) -> TrainState:
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        return state.replace(step=state.step + 1,
                             params=optax.apply_updates(state.params, updates),
                             opt_state=opt_state)

    return update_step


def make_train_step(model: DialogueModel, optimizer: optax.GradientTransformation, *,
                    class_weights=None, unimodal_weight: float = 0.1,
                    axis_name: str | None = None, mask_rng: str = "hash") -> Callable:
    """Build the pure train step (see module docstring): `make_update_step` after
    `make_gradient_step`.

    Args:
      model: `AMBDSGDN` or any `DialogueModel`.
      optimizer: an optax transformation (see `create_optimizer` for the release's).
      class_weights: float [C] loss weights or None.
      unimodal_weight: weight of the squared unimodal NLL terms.
      axis_name: pmap axis name (None: single device, wrap with `jax.jit`).
      mask_rng: a key of `MASK_KEYS`, the generator of the dropout and balancing masks.

    Returns:
      `train_step(state, batch, balance_active) -> (state, metrics)`, pure (a `TrainStep`
      of the two parts; `jax.jit` of it compiles them as one program).

    Example:
      >>> import jax, jax.numpy as jnp, optax
      >>> from ambjax.data import make_synthetic
      >>> from ambjax.graphs import GraphBatcher
      >>> from ambjax.nn import create_model
      >>> from ambjax.train import create_train_state, make_train_step
      >>> data = make_synthetic("meld", scale=0.01, dims={"text": 8, "audio": 8, "visual": 8})
      >>> batcher = GraphBatcher(data, window=2, batch_size=2, modalities=("text",))
      >>> batch = batcher.build(data.split("train")[:2])
      >>> model = create_model({"text": 8}, 7, 9, hidden_dim=8, num_heads=2, graph_heads=1,
      ...                      graphs=("inter",))
      >>> state = create_train_state(model, batch, optax.adam(1e-3), seed=0)
      >>> step = jax.jit(make_train_step(model, optax.adam(1e-3)))
      >>> state, metrics = step(state, batch, jnp.asarray(True))
      >>> int(state.step), bool(jnp.isfinite(metrics["loss"]))
      (1, True)
    """
    return TrainStep(make_gradient_step(model, class_weights=class_weights,
                                        unimodal_weight=unimodal_weight,
                                        axis_name=axis_name, mask_rng=mask_rng),
                     make_update_step(optimizer))


def model_state(state: TrainState) -> TrainState:
    """`state` as the gradient step receives it: the optimiser's state left out
    (`opt_state=()`; the forward and backward pass never read it), so that a compiled gradient
    program does not depend on the optimiser: the executable store shares it between runs that
    differ only in their optimiser (`Trainer.program_identity`). Works on concrete or abstract
    (`jax.ShapeDtypeStruct`) states, with or without seed and device axes."""
    return state.replace(opt_state=())


@dataclasses.dataclass(frozen=True)
class TrainStep:
    """A train step in two parts, called like one: `gradients(model_state(state), batch,
    balance_active) -> (grads, metrics)` and `update(state, grads) -> state`. Both pure
    (`make_train_step`) or both wrapped (`compile_steps`: then each part is a program of its
    own, the update's one for every batch shape)."""

    gradients: Callable
    update: Callable

    def __call__(self, state: TrainState, batch: DialogueBatch, balance_active):
        grads, metrics = self.gradients(model_state(state), batch, balance_active)
        return self.update(state, grads), metrics


def make_eval_step(model: DialogueModel, *, class_weights=None, unimodal_weight: float = 0.1,
                   axis_name: str | None = None) -> Callable:
    """Build `eval_step(params, batch) -> metrics` (no dropout, no balancing).

    Arguments as for `make_train_step`.

    metrics: "loss_sum" (loss times real utterances, for averaging over batches),
    "confusion" int32 [C, C], "modality_confusion" int32 [M, C, C], "utterances" int32 [].
    """
    def eval_step(params, batch: DialogueBatch):
        nodes = batch.nodes
        out = model.apply({"params": params}, batch, train=False)
        _, aux = amb_loss(out["logits"], out["modality_logits"], nodes.label, nodes.mask,
                          class_weights=class_weights, unimodal_weight=unimodal_weight,
                          axis_name=axis_name)
        num_classes = out["logits"].shape[-1]
        conf = confusion_matrix(nodes.label, jnp.argmax(out["logits"], -1), nodes.mask,
                                num_classes)
        mod_conf = jnp.stack([confusion_matrix(nodes.label, jnp.argmax(lm, -1), nodes.mask,
                                               num_classes)
                              for lm in out["modality_logits"].values()])
        count = nodes.mask.sum(dtype=jnp.int32)
        if axis_name is not None:
            conf, mod_conf, count = jax.lax.psum((conf, mod_conf, count), axis_name)
        return {"loss_sum": aux["loss"] * count, "confusion": conf,
                "modality_confusion": mod_conf, "utterances": count}

    return eval_step


def replicate(tree, n_devices: int):
    """Give every leaf a leading device axis of size `n_devices` (for `jax.pmap`).

    Goes through host memory: `jax.pmap` places host arrays itself, whereas a device array
    that already carries a sharding must match the one pmap expects.
    """
    return jax.tree.map(lambda x: np.broadcast_to(np.asarray(x), (n_devices,) + np.shape(x)),
                        jax.device_get(tree))


def unreplicate(tree):
    """The first device's copy of a replicated tree."""
    return jax.tree.map(lambda x: x[0], tree)


def map_members(f: Callable, in_axes: tuple) -> Callable:
    """`jax.vmap(f, in_axes)` over a leading member axis (0 or None per positional argument),
    except that a member axis of size 1 is squeezed away and f runs on the member itself.

    The result is the same; the program is not: XLA's CPU backend (jax 0.10.2) runs reductions
    over arrays with a size-1 dimension (such as the norms' parameter gradients of a vmapped
    single seed, [1, M, N, d] summed over N) several times slower than over the same arrays
    without it (`python -m benchmarks.twins`), and a one-seed run is the common case.
    """
    vmapped = jax.vmap(f, in_axes=in_axes)

    def mapped(*args):
        size = {jax.tree.leaves(a)[0].shape[0] for a, ax in zip(args, in_axes) if ax == 0}
        if size != {1}:
            return vmapped(*args)
        return stack_member(f(*(squeeze_members(a) if ax == 0 else a
                                for a, ax in zip(args, in_axes))))

    return mapped


def donates_state(platform: str) -> bool:
    """Whether the train step donates the state's buffers on `platform` ("cpu", "gpu", ...).

    On accelerators it does: the updated state reuses the old one's memory. On XLA's CPU
    backend it does not: there donation keeps the state's memory but makes XLA copy every
    parameter (and, for one seed, every optimiser moment) at the start of each step, as its
    copy insertion cannot order the update after the forward and backward reads; a step
    without donation is faster (IEMOCAP train epoch 4.06 -> 3.83 s on a 2-core Intel Xeon,
    bit for bit the same parameters; benchmarks/README.md) at the price of a second copy of the
    train state in host memory during the step (about 160 MB per seed at the release's size).
    """
    return platform != "cpu"


def compile_steps(model: DialogueModel, optimizer: optax.GradientTransformation, n_devices: int, *,
                  class_weights=None, unimodal_weight: float = 0.1, seed_axis: bool = False,
                  mask_rng: str = "hash", donate: bool | None = None):
    """(train_step, eval_step) wrapped for `n_devices`: `jax.jit` for 1, `jax.pmap` (axis
    "batch") for more. The train step is a `TrainStep` of two wrapped programs, its gradients
    (one compile per batch shape) and its update (one compile for all). With pmap the state,
    params and step outputs carry a leading device axis (use `replicate` / `unreplicate`).
    `donate`: whether the train step donates the state's buffers (the caller's state is then
    consumed by the update program); default `donates_state` of the default backend
    (accelerators yes, CPU no).

    With `seed_axis`, several independent runs (seeds) train as one program: the step is
    `jax.vmap`ped over a seed axis of the state and the batch (train) or of the params (eval;
    the batch is shared), inside the pmap when there are several devices, so arrays are
    [S, ...] on one device and [n_devices, S, ...] on several.
    """
    kwargs = dict(class_weights=class_weights, unimodal_weight=unimodal_weight)
    axis = None if n_devices == 1 else AXIS
    gradients = make_gradient_step(model, axis_name=axis, mask_rng=mask_rng, **kwargs)
    update = make_update_step(optimizer)
    evaluate = make_eval_step(model, axis_name=axis, **kwargs)
    if seed_axis:
        gradients = map_members(gradients, in_axes=(0, 0, None))
        update = map_members(update, in_axes=(0, 0))
        evaluate = map_members(evaluate, in_axes=(0, None))
    if donate is None:
        donate = donates_state(jax.default_backend())
    donated = (0,) if donate else ()
    if n_devices == 1:
        return (TrainStep(jax.jit(gradients), jax.jit(update, donate_argnums=donated)),
                jax.jit(evaluate))
    return (TrainStep(jax.pmap(gradients, axis_name=AXIS, in_axes=(0, 0, None)),
                      jax.pmap(update, axis_name=AXIS, donate_argnums=donated)),
            jax.pmap(evaluate, axis_name=AXIS))
