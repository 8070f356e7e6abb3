"""The config tree: dotted overrides with types, validation, config.json round trip."""

import dataclasses
import json

import pytest

from ambjax.train.config import (ConfigError, ExperimentConfig, from_dict, keys, override,
                                 to_dict, validate)
from experiments.configs import ABLATIONS, PRESETS, load, make_config


def test_every_field_is_declared_once_across_the_tree():
    leaves = [k.split(".")[-1] for k in keys()]
    assert len(leaves) == len(set(leaves)), sorted(k for k in leaves if leaves.count(k) > 1)
    assert {k.split(".")[0] for k in keys()} == {"data", "model", "optim", "schedule", "run"}


def test_overrides_parse_by_type():
    cfg = override(ExperimentConfig(), [
        "model.hidden_dim=256", "optim.lr=1e-4", "model.balance=no", "data.path=none",
        "data.synthetic_dims=text:64, audio:16", "model.graphs=inter", "data.budget_growth=none"])
    assert cfg.model.hidden_dim == 256 and cfg.optim.lr == 1e-4 and cfg.model.balance is False
    assert cfg.data.synthetic_dims == (("text", 64), ("audio", 16))
    assert cfg.model.graphs == ("inter",) and cfg.data.budget_growth is None


@pytest.mark.parametrize("item,message", [
    ("model.hiden_dim=3", "did you mean 'model.hidden_dim'"),
    ("lr=0.1", "did you mean 'optim.lr'"),
    ("model=3", "is a section"),
    ("model.hidden_dim=1.5", "expected int"),
    ("model.balance=maybe", "expected true or false"),
    ("data.synthetic_dims=text", "name:value pairs"),
    ("optim.lr", "KEY=VALUE"),
])
def test_bad_overrides_name_the_key(item, message):
    with pytest.raises(ConfigError, match=message):
        override(ExperimentConfig(), [item])


@pytest.mark.parametrize("item,message", [
    ("model.dropout=2.0", "model.dropout must be in"),
    ("optim.lr=nan", "optim.lr must be a positive"),
    ("model.graphs=foo", "model.graphs must be"),
    ("model.graphs=inter,inter", "model.graphs must be"),
    ("model.hidden_dim=0", "model.hidden_dim must be"),
    ("data.compile_node_steps=-1", "data.compile_node_steps must be >= 0"),
    ("model.num_heads=3", "divide model.hidden_dim"),
    ("data.modalities=text,smell", "data.modalities"),
    ("run.selection=train", "run.selection"),
    ("model.num_classes=3", "come from the data"),
    ("schedule.epochs=0", "schedule.epochs"),
])
def test_validation_refuses_out_of_range_settings(item, message):
    with pytest.raises(ConfigError, match=message):
        make_config("tiny", [item])


def test_config_json_round_trip_and_type_checks():
    cfg = make_config("meld", ["data.modalities=text,audio"], "no_differential")
    blob = json.loads(json.dumps(to_dict(cfg)))
    assert from_dict(blob) == cfg
    with pytest.raises(ConfigError, match="unknown config keys"):
        from_dict({**blob, "extra": 1})
    with pytest.raises(ConfigError, match="model.hidden_dim: expected int"):
        from_dict({**blob, "model": {**blob["model"], "hidden_dim": "512"}})


def test_presets_and_ablations_are_valid_and_frozen():
    for name in PRESETS:
        cfg = validate(load(name))
        with pytest.raises(dataclasses.FrozenInstanceError):
            cfg.model.hidden_dim = 1
        for ablation in ABLATIONS:
            make_config(name, (), ablation)
    with pytest.raises(ConfigError, match="unknown preset"):
        load("nope")
