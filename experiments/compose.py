"""Composing ambjax's pieces into a model that is not AMB-DSGDN.

    python -m experiments.compose [--steps 40] [--seed 0]

`TwoModalityGraphClassifier` uses text and audio only, one `DifferentialGraphAttention` layer
per modality on the inter-speaker graph alone (no relational block, no transformer, no gate),
and ambjax's modality balancing unit (`ModalityBalancing`: P_m -> q_m -> modality dropout ->
re-classify, the same unit AMB-DSGDN uses). It is an `ambjax.nn.DialogueModel`, so the
library's jitted train-step builder trains it unchanged. The script trains it for a few steps on the
bundled synthetic data and prints the loss going down; it runs in seconds on a CPU.
"""

from __future__ import annotations

import itertools
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ambjax.cli import ArgumentParser, run_main
from ambjax.data import make_synthetic
from ambjax.errors import UsageError
from ambjax.graphs import DialogueBatch, GraphBatcher
from ambjax.nn import DifferentialGraphAttention, ModalityBalancing, ModelOutput
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
                 axis_name: str | None = None) -> ModelOutput:
        nodes = batch.nodes
        graph = batch.graph("inter")
        heads = {m: nn.Dense(self.num_classes, name=f"head_{m}") for m in self.modalities}
        z = {}
        for m in self.modalities:
            h = nn.Dense(self.hidden, name=f"input_{m}")(nodes.features[m])
            z[m] = DifferentialGraphAttention(self.hidden, dropout_rate=0.1, name=f"graph_{m}")(
                graph._replace(nodes=h), deterministic=not train)

        def classify(feats):
            return {m: heads[m](x) for m, x in feats.items()}

        logits = classify(z)
        f1 = q = jnp.zeros((len(self.modalities),), jnp.float32)
        if train:
            logits, f1, q, _ = ModalityBalancing(self.q_base, self.lam, self.p_exe)(
                z, logits, classify, nodes.label, nodes.mask, nodes.graph, batch.n_graph,
                active=balance_active, axis_name=axis_name)
        return {"logits": sum(logits.values()), "modality_logits": logits,
                "modality_f1": f1, "q": q}


def train(argv: list[str]) -> list[float]:
    """Train the two-modality classifier for `--steps` steps; returns the losses."""
    p = ArgumentParser(prog="python -m experiments.compose")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.steps < 1:
        raise UsageError(f"--steps must be >= 1, got {args.steps}")
    data = make_synthetic("iemocap", scale=0.1, seed=args.seed,
                          dims={"text": 64, "audio": 48, "visual": 8})
    batcher = GraphBatcher(data, window=4, batch_size=4, modalities=("text", "audio"),
                           growth=None)  # one padded shape: one compilation
    model = TwoModalityGraphClassifier(num_classes=data.num_classes)
    optimizer = optax.adam(3e-3)
    batches = itertools.cycle(list(batcher.batches("train", shuffle=True, seed=args.seed)))
    first = next(batches)
    state = create_train_state(model, first, optimizer, args.seed)
    train_step = jax.jit(make_train_step(model, optimizer))
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


def main(argv: list[str] | None = None) -> int:
    def command(args: list[str]) -> int:
        train(args)
        return 0
    return run_main(command, argv)


if __name__ == "__main__":
    sys.exit(main())
