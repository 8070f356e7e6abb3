"""Probe for adaptive modality balancing: a dominant modality that hides the others.

    python -m experiments.ablate --preset probe_imbalance --ablations no_balancing \\
        --out runs/probe-imbalance

IEMOCAP-shaped synthetic dialogues (`ambjax.data.synthetic.PRESETS["imbalance"]`), widths
text 256, audio 128, visual 64. What it plants: text is strong and quick to fit but cannot
split three pairs of classes (and points at a random class for 10% of utterances); audio and
visual are each weak and noisy but separate every class. Fused training fits text first and
its loss then leaves little gradient for the others: the setting of OGM-GE and of "greedy"
multimodal learning, where dropping the dominant modality by its measured F1 should keep the
weak ones learning. Balancing on after 2 warm-up epochs of 12; model as the `synthetic`
preset. Variant `--set data.synthetic=imbalance_shortcut`: on the train split only, text also
splits every class (a shortcut the test split lacks), so text alone fits the training data.
Results: README "What each mechanism buys".
"""

from ambjax.nn import ModelConfig
from ambjax.train.config import DataConfig, ExperimentConfig, OptimConfig, ScheduleConfig


def get_config() -> ExperimentConfig:
    return ExperimentConfig(
        data=DataConfig(synthetic="imbalance",
                        synthetic_dims=(("text", 256), ("audio", 128), ("visual", 64)),
                        budget_growth=None),
        model=ModelConfig(hidden_dim=64, dropout=0.2),
        optim=OptimConfig(lr=1e-3, l2=1e-5),
        schedule=ScheduleConfig(epochs=12, balance_warmup=2))
