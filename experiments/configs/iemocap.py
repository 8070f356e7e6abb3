"""The release's IEMOCAP run (run_iemocap.sh): hidden 512, Adam 6.8e-5, L2 5e-5, batch 16,
61 epochs, dropout 0.5, window 20, balancing 0.3 / 0.9 / 0.5 after 60 warm-up epochs.

    python -m experiments.train --preset iemocap --data iemocap_multimodal_features.pkl

Needs the release's feature pickle (not bundled). Without `--data` it trains on IEMOCAP-shaped
synthetic data at full size. Not measured here on the release's real features (none are
available); its results on MiniLM text features of the real transcripts are in the README
("Real dialogues"), kept there only.
"""

from ambjax.train.config import ExperimentConfig


def get_config() -> ExperimentConfig:
    return ExperimentConfig()
