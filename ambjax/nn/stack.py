"""Modality streams as one stacked computation.

The modality streams of AMB-DSGDN have identical shapes once their inputs are projected to the
hidden width d: the audio and visual context encoders are the same layer, and so are the
relational blocks of every modality. `stacked_call` runs such a module once over a leading
modality axis M (`flax.linen.vmap`) instead of once per modality: the traced and compiled
program holds one copy of the layer instead of M, which shortens tracing and XLA compilation of
those layers (the whole IEMOCAP-size program compiles 25-30% faster), and the M members'
matmuls run as batched matmuls. On a 2-core CPU the step is 5-8% slower, as XLA no longer
overlaps three independent streams (`benchmarks/RUNS.md`).

Each member keeps its own parameters (every leaf gains the leading axis M, members initialised
from their own split of the "params" key) and its own dropout masks (the "dropout" key is split
too), so the stack computes what M separate modules compute (up to float rounding). `ambjax.convert` maps the
release's per-modality weights onto these stacked leaves.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jraph

GRAPH_AXES = jraph.GraphsTuple(nodes=0, edges=None, senders=None, receivers=None, globals=None,
                               n_node=None, n_edge=None)
"""`in_axes` for a `jraph.GraphsTuple` whose nodes are stacked [M, N, F] over one shared
topology (edges, senders, receivers and layout broadcast to every member)."""


def stacked_call(module: nn.Module, size: int, in_axes: tuple[Any, ...], *args, **kwargs):
    """Call `module` as M = `size` independent members mapped over a leading axis.

    Args:
      module: a Flax submodule (declared in the caller's `setup` or compact body); its
        parameters get a leading axis M under the module's own name.
      size: M, the number of members (e.g. modalities).
      in_axes: per positional argument, 0 (stacked: [M, ...]) or None (shared by all
        members), or a pytree prefix such as `GRAPH_AXES`.
      *args: the positional arguments of the module's call.
      **kwargs: keyword arguments passed to every member alike (static, e.g. `deterministic`).

    Returns:
      The members' outputs stacked [M, ...].

    With M = 1 the member runs on its squeezed parameters and inputs instead (same leaves
    [1, ...] in the tree): XLA's CPU backend runs reductions over arrays with a size-1
    dimension several times slower (see `ambjax.train.steps.map_members`).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> class Twice(nn.Module):
      ...     @nn.compact
      ...     def __call__(self, x):
      ...         return stacked_call(nn.Dense(4, name="dense"), 3, (0,), x)
      >>> x = jnp.ones((3, 5, 2))
      >>> params = Twice().init(jax.random.PRNGKey(0), x)["params"]
      >>> params["dense"]["kernel"].shape, Twice().apply({"params": params}, x).shape
      ((3, 2, 4), (3, 5, 4))
    """
    if size == 1:
        return _single_member(module, in_axes, *args, **kwargs)
    return nn.vmap(lambda member, *inputs: member(*inputs, **kwargs),
                   variable_axes={"params": 0, "intermediates": 0},
                   split_rngs={"params": True, "dropout": True},
                   in_axes=in_axes, out_axes=0, axis_size=size)(module, *args)


def squeeze_members(tree):
    """The member of a one-member stack: every leaf's leading axis of size 1 dropped."""
    return jax.tree.map(lambda x: x[0], tree)


def stack_member(tree):
    """A one-member stack: every leaf gains a leading axis of size 1."""
    return jax.tree.map(lambda x: x[None], tree)


def _single_member(module: nn.Module, in_axes: tuple[Any, ...], *args, **kwargs):
    """`stacked_call` for M = 1: parameters stored [1, ...], seen by the module without the
    axis; inputs mapped over axis 0 squeezed; the output gains the axis back."""
    inputs = jax.tree.map(lambda axis, sub: sub if axis is None else squeeze_members(sub),
                          in_axes, args, is_leaf=lambda x: x is None)
    # initialise through the map only in `init` (else a mutable collection such as the
    # instruments' "intermediates" would make flax initialise again from the stored leaves)
    init = module.parent.is_initializing()
    call = nn.map_variables(lambda member, *xs: member(*xs, **kwargs), "params",
                            trans_in_fn=squeeze_members, trans_out_fn=stack_member, init=init,
                            mutable=init)
    # what the member sows (`attention_weights`) gains the axis too
    call = nn.map_variables(call, "intermediates", trans_in_fn=squeeze_members,
                            trans_out_fn=stack_member, mutable=True)
    return stack_member(call(module, *inputs))
