"""The AMB-DSGDN loss (DESIGN.md section 8), masked over real utterances:

    L = NLL(log_softmax(l), y) + sum_m w_u * NLL(log_softmax(l_m), y) ** 2      (w_u = 0.1)

NLL is class-weighted and normalised by the sum of class_weight[y] over real utterances (torch's
`NLLLoss(weight=...)`, mean reduction). IEMOCAP uses `IEMOCAP_CLASS_WEIGHTS`; MELD is unweighted.
Under `pmap`, sums are taken over the global batch (`axis_name`).
"""

from __future__ import annotations

from typing import Mapping

import chex
import jax
import jax.numpy as jnp
import numpy as np

IEMOCAP_CLASS_WEIGHTS = tuple(
    float(x) for x in 1.0 / np.array([0.086747, 0.144406, 0.227883, 0.160585, 0.127711, 0.252668]))


def weighted_nll_sums(logits: jax.Array, labels: jax.Array, mask: jax.Array,
                      class_weights: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """Sums of the class-weighted NLL and of the weights over masked entries.

    Args:
      logits: float [N, C]; labels: int [N]; mask: bool [N]; class_weights: float [C] or None.

    Returns:
      (sum_i w_{y_i} nll_i, sum_i w_{y_i}) over entries with mask, float32 scalars.
    """
    chex.assert_rank(logits, 2)
    chex.assert_equal_shape([labels, mask])
    logp = jax.nn.log_softmax(logits.astype(jnp.float32))
    # the label's entry as a masked sum, not a gather: the gradient is then a select, where a
    # gather's is a scatter (one XLA kernel of its own per use on the CPU backend)
    picked = labels[:, None].astype(jnp.int32) == jnp.arange(logp.shape[-1])
    nll = -jnp.sum(jnp.where(picked, logp, 0.0), axis=1)
    w = mask.astype(jnp.float32)
    if class_weights is not None:
        w = w * jnp.asarray(class_weights, jnp.float32)[labels]
    return jnp.sum(w * nll), jnp.sum(w)


def masked_nll(logits, labels, mask, class_weights=None) -> jax.Array:
    """Class-weighted mean NLL over masked entries (0 when nothing is masked in)."""
    num, den = weighted_nll_sums(logits, labels, mask, class_weights)
    return num / jnp.maximum(den, 1e-12)


def amb_loss(logits: jax.Array, modality_logits: Mapping[str, jax.Array], labels: jax.Array,
             mask: jax.Array, *, class_weights=None, unimodal_weight: float = 0.1,
             axis_name: str | None = None) -> tuple[jax.Array, dict]:
    """The AMB-DSGDN loss.

    Args:
      logits: float [N, C] fused logits; modality_logits: {m: float [N, C]}.
      labels: int [N]; mask: bool [N] real utterances.
      class_weights: float [C] or None (unweighted).
      unimodal_weight: weight of the squared unimodal terms (0.1).
      axis_name: pmap axis; sums run over the global batch.

    Returns:
      (objective, aux). On one device the objective is L. Under pmap it is a per-device
      surrogate whose gradients, summed (psum) over `axis_name`, equal dL/dparams of the global
      batch. aux: "loss" (L of the global batch), "fused_nll", "{m}_nll".

    Example:
      >>> import jax.numpy as jnp
      >>> logits = jnp.zeros((3, 2))                    # uniform: NLL = log 2 per utterance
      >>> objective, aux = amb_loss(logits, {"text": logits}, jnp.array([0, 1, 0]),
      ...                           jnp.array([True, True, False]))
      >>> round(float(aux["fused_nll"]), 4), round(float(aux["loss"]), 4)
      (0.6931, 0.7412)
    """
    psum = (lambda x: x) if axis_name is None else (lambda x: jax.lax.psum(x, axis_name))
    num, den = weighted_nll_sums(logits, labels, mask, class_weights)
    den = jnp.maximum(psum(jax.lax.stop_gradient(den)), 1e-12)
    fused = psum(num) / den
    objective = num / den if axis_name else fused
    loss = fused
    aux = {"fused_nll": fused}
    for m, lm in modality_logits.items():
        num_m, _ = weighted_nll_sums(lm, labels, mask, class_weights)
        nll_m = psum(num_m) / den
        aux[f"{m}_nll"] = nll_m
        loss = loss + unimodal_weight * nll_m ** 2
        if axis_name:
            objective = objective + unimodal_weight * 2 * jax.lax.stop_gradient(nll_m) * num_m / den
        else:
            objective = objective + unimodal_weight * nll_m ** 2
    aux["loss"] = loss
    return objective, aux
