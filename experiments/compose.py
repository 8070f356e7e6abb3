"""Composing ambjax's pieces into a model that is not AMB-DSGDN.

    python -m experiments.compose [--steps 40] [--seed 0]

`TwoModalityGraphClassifier` uses text and audio only, one `DifferentialGraphAttention` layer
per modality on the inter-speaker graph alone (no relational block, no transformer, no gate),
and ambjax's modality balancing (`modality_f1` -> `drop_probabilities` -> `ModalityDropout`).
It follows the model protocol of `ambjax.train.steps`, so the library's jitted train-step
builder trains it unchanged. The script trains it for a few steps on the
bundled synthetic data and prints the loss going down; it runs in seconds on a CPU.
"""

from __future__ import annotations

import argparse
import itertools
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ambjax.data import make_synthetic
from ambjax.graphs import DialogueBatch, GraphBatcher
from ambjax.nn import (DifferentialGraphAttention, ModalityDropout, drop_probabilities,
                       modality_f1)
from ambjax.train import create_train_state, make_train_step


class TwoModalityGraphClassifier(nn.Module):
    """Per modality: Linear -> DifferentialGraphAttention (inter graph) -> Linear head.

    Attributes:
      num_classes: C.
      hidden: width of the graph layer.
      modalities: the two (or more) modalities used.
      q_base, lam, p_exe: balancing constants.
    """

    num_classes: int
    hidden: int = 32
    modalities: tuple[str, ...] = ("text", "audio")
    q_base: float = 0.3
    lam: float = 0.9
    p_exe: float = 1.0

    @nn.compact
    def __call__(self, batch: DialogueBatch, *, train: bool = False, balance_active=False,
                 axis_name: str | None = None) -> dict:
        nodes = batch.nodes
        graph = batch.graph("inter")
        heads = {m: nn.Dense(self.num_classes, name=f"head_{m}") for m in self.modalities}
        z = {}
        for m in self.modalities:
            h = nn.Dense(self.hidden, name=f"input_{m}")(nodes["features"][m])
            z[m] = DifferentialGraphAttention(self.hidden, dropout_rate=0.1, name=f"graph_{m}")(
                graph._replace(nodes=h), deterministic=not train)
        logits = {m: heads[m](z[m]) for m in self.modalities}
        n_mod = len(self.modalities)
        f1 = q = jnp.zeros((n_mod,), jnp.float32)
        if train:
            f1 = modality_f1(nodes["label"], [logits[m] for m in self.modalities],
                             nodes["mask"], self.num_classes, axis_name)
            q = jnp.where(balance_active, drop_probabilities(f1, self.q_base, self.lam), 0.0)
            dropped, _, executed = ModalityDropout(self.p_exe)(
                jnp.stack([z[m] for m in self.modalities]), q, f1, nodes["graph"],
                batch.globals["mask"].shape[0], deterministic=False)
            logits = {m: jnp.where(balance_active & executed, heads[m](dropped[k]), logits[m])
                      for k, m in enumerate(self.modalities)}
        return {"logits": sum(logits.values()), "modality_logits": logits,
                "modality_f1": f1, "q": q}


def main(argv: list[str] | None = None) -> list[float]:
    p = argparse.ArgumentParser(prog="python -m experiments.compose")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    data = make_synthetic("iemocap", scale=0.1, seed=args.seed,
                          dims={"text": 64, "audio": 48, "visual": 8})
    batcher = GraphBatcher(data, window=4, batch_size=4, modalities=("text", "audio"),
                           growth=None)  # one padded shape: one compilation
    model = TwoModalityGraphClassifier(num_classes=data.num_classes)
    optimizer = optax.adam(3e-3)
    batches = itertools.cycle(list(batcher.batches("train", shuffle=True, seed=args.seed)))
    first = next(batches)
    state = create_train_state(model, first, optimizer, args.seed)
    train_step = jax.jit(make_train_step(model, optimizer, num_classes=data.num_classes))
    losses = []
    batch = first
    for step in range(args.steps):
        # balancing switches on after a short warm-up, as in AMB-DSGDN
        state, metrics = train_step(state, batch, jnp.asarray(step >= args.steps // 4))
        losses.append(float(metrics["loss"]))
        if step % 5 == 0 or step == args.steps - 1:
            print(f"step {step:3d} loss {losses[-1]:.4f} q {np.round(metrics['q'], 2)}")
        batch = next(batches)
    k = max(1, args.steps // 5)
    print(f"mean loss: first {k} steps {np.mean(losses[:k]):.4f}, last {k} steps "
          f"{np.mean(losses[-k:]):.4f}")
    return losses


if __name__ == "__main__":
    main(sys.argv[1:])
