"""The release's MELD run: hidden 512, Adam 5e-5, L2 7.5e-5, batch 64, 20 epochs, dropout 0.11,
window 6, balancing 0.2 / 0.9 / 0.2 from the first epoch, no class weights.

    python -m experiments.train --preset meld --data meld_multimodal_features.pkl --selection test

Needs the release's feature pickle (not bundled); without `--data` it trains on MELD-shaped
synthetic data. Not measured here on the release's real features (none are available); its
results on MiniLM text features of the real transcripts are in the README ("Real dialogues"),
kept there only, so that they cannot drift from the runs that produced them.
"""

from ambjax.nn import ModelConfig
from ambjax.train.config import (DataConfig, ExperimentConfig, OptimConfig, ScheduleConfig)


def get_config() -> ExperimentConfig:
    return ExperimentConfig(
        data=DataConfig(synthetic="meld", window=6, batch_size=64),
        model=ModelConfig(dropout=0.11, q_base=0.2, lam=0.9, p_exe=0.2),
        optim=OptimConfig(lr=5e-5, l2=7.5e-5, class_weights=()),
        schedule=ScheduleConfig(epochs=20, balance_warmup=0))
