"""A seconds-long smoke run for tests: 5% of IEMOCAP-shaped synthetic dialogues with narrow
features, hidden 16, one differential attention layer per relational block (the release has
two: `model.graph_heads=2` restores them; one makes the programs ~35% cheaper to trace and
compile, which is most of the test suite's time), 2 epochs, no class weights.

    python -m experiments.train --preset tiny --out runs/tiny

Result: a complete run folder in well under a minute on a 2-core CPU; the accuracy means
nothing at this size.
"""

from ambjax.nn import ModelConfig
from ambjax.train.config import (DataConfig, ExperimentConfig, OptimConfig, ScheduleConfig)


def get_config() -> ExperimentConfig:
    return ExperimentConfig(
        data=DataConfig(synthetic_scale=0.05,
                        synthetic_dims=(("text", 24), ("audio", 16), ("visual", 12)),
                        window=4, batch_size=4, budget_growth=None),
        model=ModelConfig(hidden_dim=16, num_heads=2, graph_heads=1, dropout=0.1),
        optim=OptimConfig(lr=1e-3, class_weights=()),
        schedule=ScheduleConfig(epochs=2, balance_warmup=1))
