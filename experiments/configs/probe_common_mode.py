"""Probe for the differential graph attention: common-mode distractors in the text.

    python -m experiments.ablate --preset probe_common_mode --ablations no_differential \\
        --out runs/probe-common-mode

IEMOCAP-shaped synthetic dialogues (`ambjax.data.synthetic.PRESETS["common_mode"]`), text only
(balancing has nothing to balance), text width 256. What it plants: text alone separates
every class, but each dialogue adds one strong distractor to all of its utterances (the latent
prototype of a random class, 3x an utterance's own signal, in the same directions). Every
neighbour in the window carries it; one softmax map averages it into whatever it attends to,
while the difference of two maps (weights summing to 1 - lambda) can cancel it. Labels keep
the inertia and contagion of the bundled data, so the graph is needed too. Model as the
`synthetic` preset (hidden 64, 12 epochs). Results: README "What each mechanism buys".
"""

from ambjax.nn import ModelConfig
from ambjax.train.config import DataConfig, ExperimentConfig, OptimConfig, ScheduleConfig


def get_config() -> ExperimentConfig:
    return ExperimentConfig(
        data=DataConfig(synthetic="common_mode",
                        synthetic_dims=(("text", 256), ("audio", 16), ("visual", 16)),
                        modalities=("text",), budget_growth=None),
        model=ModelConfig(hidden_dim=64, dropout=0.2),
        optim=OptimConfig(lr=1e-3, l2=1e-5),
        schedule=ScheduleConfig(epochs=12, balance_warmup=4))
