"""Seeds as one program: N seeds vmapped train as N separate runs would."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp

from ambjax.graphs import GraphBatcher
from ambjax.nn import create_model
from ambjax.train import create_train_state, train_and_evaluate
from ambjax.train import checkpoint as ckpt
from ambjax.train.config import replace_key
from ambjax.train.steps import compile_steps, replicate
from experiments.configs import make_config

QUIET = dict(n_devices=1)


def _final_params(run_dir):
    manager = ckpt.create_manager(str(run_dir / "checkpoints"))
    state = manager.restore(manager.latest_step(), args=ocp.args.Composite(
        state=ocp.args.StandardRestore()))["state"]
    manager.close()
    return state["params"] if isinstance(state, dict) else state.params


def test_seeds_vmapped_equal_seeds_alone(tmp_path):
    # no dropout: dropout masks depend on the padded shape, which vmapped seeds share.
    # SGD: Adam turns float noise in gradients that are zero in exact arithmetic (the
    # attention key bias: softmax ignores it) into full +-lr steps, so with Adam the vmapped
    # and separate runs agree on every metric to 1e-5 but such parameters differ by ~lr.
    config = make_config("tiny", ["model.dropout=0", "model.graph_dropout=0",
                                  "schedule.epochs=2", "optim.optimizer=sgd", "optim.lr=0.1",
                                  "model.hidden_dim=8", "model.graph_heads=1",
                                  "model.graphs=inter", "data.modalities=text,audio"])
    together = train_and_evaluate(config, str(tmp_path / "together"), seeds=[1, 2], **QUIET)
    assert sorted(together["reports"]) == [1, 2]
    assert (tmp_path / "together" / "seeds_report.md").is_file()
    finals = {}
    for seed in (1, 2):
        alone = train_and_evaluate(replace_key(config, "run.seed", seed),
                                   str(tmp_path / f"alone{seed}"), **QUIET)
        vmapped = together["reports"][seed]
        for split in ("valid", "test"):
            for metric in ("accuracy", "weighted_f1", "loss"):
                np.testing.assert_allclose(vmapped[split][metric], alone[split][metric],
                                           atol=1e-5)
        a = _final_params(tmp_path / f"alone{seed}")
        b = _final_params(tmp_path / "together" / f"seed{seed}")
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
            np.testing.assert_allclose(x, y, atol=1e-5, rtol=1e-5)
        finals[seed] = a
    # the two seeds really are different runs
    assert any(not np.allclose(x, y) for x, y in zip(jax.tree.leaves(finals[1]),
                                                     jax.tree.leaves(finals[2])))


def test_seeds_times_devices_equals_seeds_on_one_device(iemocap_small):
    model = create_model(iemocap_small.dims, 6, 2, hidden_dim=8, num_heads=2, dropout=0.0,
                         graph_dropout=0.0, p_exe=0.0, graph_heads=1, graphs=("inter",))
    opt = optax.sgd(1.0)
    seeds = (3, 4)
    one = GraphBatcher(iemocap_small, window=2, batch_size=4, growth=None)
    two = GraphBatcher(iemocap_small, window=2, batch_size=4, n_devices=2, growth=None)
    example = one.build(iemocap_small.split("train")[:1])
    states = [create_train_state(model, example, opt, seed) for seed in seeds]
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *states)
    train1, _ = compile_steps(model, opt, 1, seed_axis=True)
    train2, _ = compile_steps(model, opt, 2, seed_axis=True)
    b1 = next(one.seed_batches("train", seeds, epoch=0))
    b2 = next(two.seed_batches("train", seeds, epoch=0))
    assert b1.nodes.mask.shape[0] == 2 and b2.nodes.mask.shape[:2] == (2, 2)
    s1, m1 = train1(jax.tree.map(jnp.copy, stacked), b1, jnp.asarray(True))
    s2, m2 = train2(replicate(stacked, 2), b2, jnp.asarray(True))
    np.testing.assert_allclose(m2["loss"][0], m1["loss"], rtol=1e-5)
    np.testing.assert_array_equal(m2["confusion"][0], m1["confusion"])
    for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s2.params)):
        np.testing.assert_allclose(np.asarray(b)[0], a, atol=1e-5, rtol=1e-5)
