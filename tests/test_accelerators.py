"""GPU and TPU readiness without a device: the train and eval steps of every preset lower for
the `cuda` and `tpu` platforms on this CPU machine (float32 and bfloat16, one and two devices,
one and several seeds), so that an accelerator-only lowering failure shows up in CI."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ambjax.train import Trainer, load_dataset, steps
from experiments.configs import PRESETS, make_config

PLATFORMS = ("cuda", "tpu")


@pytest.fixture(autouse=True)
def accelerator_steps(monkeypatch):
    """The steps as an accelerator machine builds them: the train state donated (on this CPU
    machine the Trainer would build non-donating steps)."""
    monkeypatch.setattr(steps, "donates_state", lambda platform: True)


def _lowered(preset, overrides=(), n_devices=1, seeds=None):
    config = make_config(preset, list(overrides))
    trainer = Trainer.from_config(config, load_dataset(config.data), n_devices=n_devices, seeds=seeds)
    axis = 1 if n_devices > 1 else 0
    used = trainer.batcher.budgets_used(trainer.seeds, 1)
    batch = jax.tree.map(lambda x: np.stack([x] * len(trainer.seeds), axis=axis),
                         trainer.batcher.build([], used["train"][-1]))
    evaluation = trainer.batcher.build([], used["eval"][-1])
    # a pmapped step lowers for another platform inside a jit
    train = trainer.train_step if n_devices == 1 else jax.jit(trainer.train_step)
    evaluate = trainer.eval_step if n_devices == 1 else jax.jit(trainer.eval_step)
    lowered = [train.trace(trainer.abstract_state, batch, jnp.asarray(True)).lower(
                   lowering_platforms=PLATFORMS),
               evaluate.trace(trainer.abstract_state.params, evaluation).lower(
                   lowering_platforms=PLATFORMS)]
    assert trainer._state is None                 # nothing was allocated for the check
    return [low.as_text() for low in lowered]


# tiny is lowered by the two-device case below
@pytest.mark.parametrize("preset, dtype", [(p, "bfloat16" if p == "synthetic" else "float32")
                                           for p in sorted(PRESETS) if p != "tiny"])
def test_every_preset_lowers_for_gpu_and_tpu(preset, dtype):
    train, evaluate = _lowered(preset, [f"model.dtype={dtype}"])
    assert "stablehlo.dot_general" in train and "stablehlo.dot_general" in evaluate
    assert "tf.aliasing_output" in train             # the state's buffers are donated
    assert ("bf16" in train) == (dtype == "bfloat16")


def test_two_devices_and_three_seeds_lower_for_gpu_and_tpu():
    train, evaluate = _lowered("tiny", n_devices=2, seeds=[1, 2, 3])
    assert "all-reduce" in train or "all_reduce" in train
