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
    gradients, update, evaluate = (f if n_devices == 1 else jax.jit(f) for f in (
        trainer.train_step.gradients, trainer.train_step.update, trainer.eval_step))
    state = trainer.abstract_state
    lowered = [gradients.trace(steps.model_state(state), batch, jnp.asarray(True)).lower(
                   lowering_platforms=PLATFORMS),
               update.trace(state, state.params).lower(lowering_platforms=PLATFORMS),
               evaluate.trace(state.params, evaluation).lower(lowering_platforms=PLATFORMS)]
    assert trainer._state is None                 # nothing was allocated for the check
    return [low.as_text() for low in lowered]


# tiny is lowered by the two-device case below
@pytest.mark.parametrize("preset, dtype", [(p, "bfloat16" if p == "synthetic" else "float32")
                                           for p in sorted(PRESETS) if p != "tiny"])
def test_every_preset_lowers_for_gpu_and_tpu(preset, dtype):
    gradients, update, evaluate = _lowered(preset, [f"model.dtype={dtype}"])
    assert "stablehlo.dot_general" in gradients and "stablehlo.dot_general" in evaluate
    assert "tf.aliasing_output" in update        # the update reuses the state's buffers
    assert ("bf16" in gradients) == (dtype == "bfloat16")


def test_two_devices_and_three_seeds_lower_for_gpu_and_tpu():
    gradients, _, evaluate = _lowered("tiny", n_devices=2, seeds=[1, 2, 3])
    assert "all-reduce" in gradients or "all_reduce" in gradients
