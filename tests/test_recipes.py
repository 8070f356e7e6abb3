"""Recipes (release / robust), train-split standardisation and the stall warning."""

import dataclasses
import json
import logging

import numpy as np
import pytest

from ambjax.data import make_synthetic, write_pickle
from ambjax.data.dataset import Dialogue
from ambjax.data.standardize import Standardizer, constant_modalities
from ambjax.cli import flag_hints
from ambjax.train import (Checkpoints, ConfigError, default_hooks, evaluate_checkpoint,
                          train_and_evaluate)
from experiments.configs import make_config


def test_recipes_set_their_fields_and_overrides_win():
    release, robust = make_config("meld"), make_config("meld", recipe="robust")
    assert release.run.recipe == "release" and release.optim.optimizer == "adam_l2"
    assert not release.data.standardize and release.optim.lr == 5e-5
    assert robust.run.recipe == "robust" and robust.data.standardize and robust.data.drop_constant
    assert (robust.optim.optimizer, robust.optim.lr, robust.optim.lr_schedule) == (
        "adamw", 1e-3, "warmup_cosine")
    assert make_config("meld", ["optim.lr=3e-4"], recipe="robust").optim.lr == 3e-4
    with pytest.raises(ConfigError, match="unknown recipe"):
        make_config("meld", recipe="fast")


def test_standardizer_uses_train_statistics_only():
    data = make_synthetic("iemocap", scale=0.1, dims={"text": 6, "audio": 5, "visual": 4})
    zero = {vid: Dialogue(id=d.id, speakers=d.speakers, labels=d.labels,
                          features={**d.features, "visual": np.zeros_like(d.features["visual"])})
            for vid, d in data.dialogues.items()}
    data = dataclasses.replace(data, dialogues=zero)
    stats = Standardizer.fit(data)
    assert stats.constant == ("visual",)
    out = stats.apply(data)
    train = np.concatenate([d.features["text"] for d in out.split("train")])
    np.testing.assert_allclose(train.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(train.std(0), 1, atol=1e-4)
    test = np.concatenate([d.features["text"] for d in out.split("test")])
    assert np.abs(test.mean(0)).max() > 1e-3          # test statistics were not used
    assert (np.concatenate([d.features["visual"] for d in out.split("test")]) == 0).all()


def test_constant_modalities_decide_as_the_full_statistics_do():
    """The first dialogue decides most modalities; the full standard deviation decides the
    rest, with the same threshold: near-constant features (spread below CONSTANT_STD) are
    constant, features constant in the first dialogue but not later are not."""
    data = make_synthetic("iemocap", scale=0.1, dims={"text": 6, "audio": 5, "visual": 4})
    rng = np.random.default_rng(0)
    train = set(data.splits["train"])
    first = data.splits["train"][0]

    def features(d, late_spread):
        n = len(d.labels)
        late = d.id != first and d.id in train
        return {**d.features,
                "audio": (1.0 + rng.normal(0, 1e-7, (n, 5))).astype(np.float32),
                "visual": np.full((n, 4), 0.5, np.float32)
                + (late * rng.normal(0, late_spread, (n, 4))).astype(np.float32)}

    for spread, expected in ((1e-3, ("audio",)), (1e-9, ("audio", "visual"))):
        changed = {vid: Dialogue(id=d.id, speakers=d.speakers, labels=d.labels,
                                 features=features(d, spread))
                   for vid, d in data.dialogues.items()}
        changed = dataclasses.replace(data, dialogues=changed)
        assert constant_modalities(changed) == Standardizer.fit(changed).constant == expected


def _scaled_tiny(path, factor):
    """The tiny preset's dialogues with text features that carry the label plainly (a one-hot
    plus noise), every feature multiplied by `factor`: learnable in a few steps at unit scale."""
    config = make_config("tiny")
    data = make_synthetic("iemocap", scale=config.data.synthetic_scale,
                          dims=dict(config.data.synthetic_dims))
    rng = np.random.default_rng(0)

    def text(d):
        x = rng.normal(0, 0.5, d.features["text"].shape).astype(np.float32)
        x[np.arange(len(d)), d.labels] += 2.0
        return x

    scaled = {vid: Dialogue(id=d.id, speakers=d.speakers, labels=d.labels,
                            features={m: (text(d) if m == "text" else x) * factor
                                      for m, x in d.features.items()})
              for vid, d in data.dialogues.items()}
    write_pickle(dataclasses.replace(data, dialogues=scaled), path)
    return str(path)


def test_robust_learns_scaled_features_that_stall_the_release_recipe(tmp_path, caplog):
    scaled = _scaled_tiny(tmp_path / "scaled.pkl", 1e-3)
    # one batch per epoch: 20 steps, at a learning rate that lets unit-scale features be
    # learnt in that many (the release recipe's optimiser at the same rate still stalls)
    common = ["schedule.epochs=20", "data.valid_fraction=0.3", "optim.lr=1e-2",
              "model.graph_heads=1", "model.graphs=inter"]                # fast compiles
    logs = {"release": [], "robust": []}
    reports = {}
    caplog.set_level(logging.INFO, logger="ambjax")
    for recipe in logs:
        caplog.clear()
        # the release recipe's run is not read back: no checkpoints (20 of them, ~4 s)
        hooks = [h for h in default_hooks()
                 if recipe == "robust" or not isinstance(h, Checkpoints)]
        reports[recipe] = train_and_evaluate(
            make_config("tiny", common + [f"data.path={scaled}"], recipe=recipe),
            str(tmp_path / recipe), n_devices=1, hooks=hooks)
        logs[recipe] = [r.getMessage() for r in caplog.records]
    release_warnings = [m for m in logs["release"] if "not learning" in m]
    assert len(release_warnings) == 1 and "`recipe` robust" in release_warnings[0]
    assert "--recipe robust" in flag_hints(release_warnings[0])
    assert reports["release"]["warning"] == release_warnings[0]
    assert reports["robust"]["warning"] is None
    assert not [m for m in logs["robust"] if "not learning" in m]
    assert reports["robust"]["recipe"] == "robust"
    assert (reports["robust"]["valid"]["weighted_f1"]
            > reports["release"]["valid"]["weighted_f1"] + 0.2)
    # the run folder keeps the train statistics; evaluation reuses them
    run = tmp_path / "robust"
    assert (run / "standardization.npz").is_file()
    assert json.loads((run / "config.json").read_text())["data"]["standardize"] is True
    again = evaluate_checkpoint(str(run))
    assert again["test"]["weighted_f1"] == pytest.approx(reports["robust"]["test"]["weighted_f1"])


def test_stall_warning_names_a_collapse_only():
    from ambjax.train.hooks import stall_warning
    names = ("a", "b", "c")
    release, robust = "release", "robust"
    collapsed = {"confusion": [[10, 0, 0], [9, 1, 0], [10, 0, 0]]}        # 29 of 30 say "a"
    dominant = {"confusion": [[24, 0, 1], [1, 2, 0], [0, 0, 2]]}          # "a" is 83% anyway
    spread = {"confusion": [[5, 3, 2], [2, 6, 2], [3, 2, 5]]}
    warning = stall_warning(collapsed, names, 3, release)
    assert "predicts 'a' for 97% of validation utterances" in warning
    assert "`recipe` robust" in warning
    assert "`recipe` robust" not in stall_warning(collapsed, names, 3, robust)
    assert stall_warning(dominant, names, 3, release) is None
    assert stall_warning(spread, names, 3, release) is None
