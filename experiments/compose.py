"""Composing ambjax's pieces into a model that is not AMB-DSGDN, trained by the same Trainer.

    python -m experiments.compose [--epochs 6] [--seeds 1,2] [--out runs/compose] [--resume]

`TwoModalityGraphClassifier` uses text and audio only, one `DifferentialGraphAttention` layer
per modality on the inter-speaker graph alone (no relational block, no transformer, no gate),
and ambjax's modality balancing unit (`ModalityBalancing`: P_m -> q_m -> modality dropout ->
re-classify, the same unit AMB-DSGDN uses). It is an `ambjax.nn.DialogueModel`, so
`train_and_evaluate` trains it through the library's `Trainer` unchanged: several seeds as one
vmapped program, pmap over devices, checkpoints, `--resume`, reports. It trains on a small
slice of the bundled synthetic data in seconds on a CPU; read it back with
`ambjax.train.load_run(OUT, model=TwoModalityGraphClassifier(6))`.
"""

from __future__ import annotations

import os
import sys

import flax.linen as nn
import jax.numpy as jnp

from ambjax.cli import ArgumentParser, run_main
from ambjax.errors import UsageError
from ambjax.graphs import DialogueBatch
from ambjax.nn import DifferentialGraphAttention, ModalityBalancing, ModelOutput
from ambjax.train import (DataConfig, ExperimentConfig, OptimConfig, RunConfig, ScheduleConfig,
                          train_and_evaluate)
from experiments.train import parse_seeds


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


def config(epochs: int) -> ExperimentConfig:
    """The run's tree: text and audio of a small IEMOCAP-shaped synthetic set, one padded
    shape, Adam 3e-3, balancing after a third of the epochs."""
    return ExperimentConfig(
        data=DataConfig(synthetic_scale=0.1, synthetic_dims=(("text", 64), ("audio", 48),
                                                              ("visual", 8)),
                        modalities=("text", "audio"), window=4, batch_size=4,
                        budget_growth=None),
        optim=OptimConfig(optimizer="adamw", lr=3e-3, l2=0.0, class_weights=()),
        schedule=ScheduleConfig(epochs=epochs, balance_warmup=max(1, epochs // 3)),
        run=RunConfig(seed=0))


def train(argv: list[str]) -> dict:
    """Train the two-modality classifier; returns `train_and_evaluate`'s result."""
    p = ArgumentParser(prog="python -m experiments.compose")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--seeds", help="comma-separated seeds trained together (vmapped)")
    p.add_argument("--out", default=os.path.join("runs", "compose"))
    p.add_argument("--resume", action="store_true")
    p.add_argument("--overwrite", action="store_true")
    args = p.parse_args(argv)
    if args.epochs < 1:
        raise UsageError(f"--epochs must be >= 1, got {args.epochs}")
    seeds = parse_seeds(args.seeds) if args.seeds else None
    return train_and_evaluate(
        config(args.epochs), args.out, seeds=seeds, resume=args.resume,
        overwrite=args.overwrite,
        model=lambda data: TwoModalityGraphClassifier(num_classes=data.num_classes,
                                                      modalities=data.modalities))


def main(argv: list[str] | None = None) -> int:
    def command(args: list[str]) -> int:
        train(args)
        return 0
    return run_main(command, argv)


if __name__ == "__main__":
    sys.exit(main())
