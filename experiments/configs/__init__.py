"""Presets (one small file each) and ablations.

A preset module defines `get_config() -> ExperimentConfig`; its docstring gives the command and
the result it gives. `load(name)` returns a preset's tree, `ABLATIONS` maps each ablation to the
dotted settings it changes, `RECIPES` (from `ambjax.train.config`) the release and robust
recipes, and `make_config` composes preset, recipe, ablation and `--set` overrides into one
validated tree.
"""

from __future__ import annotations

import importlib

from ambjax.train.config import (RECIPES, ConfigError, ExperimentConfig, apply_recipe, override,
                                 replace_key, validate)

PRESETS = ("iemocap", "meld", "synthetic", "tiny", "probe_common_mode", "probe_imbalance")
__all__ = ["PRESETS", "ABLATIONS", "RECIPES", "load", "make_config"]

ABLATIONS: dict[str, dict[str, object]] = {
    "full": {},
    "no_differential": {"model.differential": False},
    "no_balancing": {"model.balance": False},
    "no_intra": {"model.graphs": ("inter",)},
    "no_inter": {"model.graphs": ("intra",)},
    "text_only": {"data.modalities": ("text",)},
    "audio_only": {"data.modalities": ("audio",)},
    "visual_only": {"data.modalities": ("visual",)},
}


def load(name: str) -> ExperimentConfig:
    """The preset `name`'s config tree."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose from {list(PRESETS)}")
    return importlib.import_module(f"experiments.configs.{name}").get_config()


def make_config(preset: str, overrides=(), ablation: str = "full",
                recipe: str = "release") -> ExperimentConfig:
    """Preset, then recipe (`RECIPES`), then ablation, then "key=value" overrides (list or
    {key: string}) -> a validated `ExperimentConfig`.

    Example:
      >>> cfg = make_config("iemocap", ["model.hidden_dim=256", "optim.lr=1e-4"], "no_inter")
      >>> cfg.model.hidden_dim, cfg.optim.lr, cfg.model.graphs
      (256, 0.0001, ('intra',))
    """
    if ablation not in ABLATIONS:
        raise ConfigError(f"unknown ablation {ablation!r}; choose from {list(ABLATIONS)}")
    config = apply_recipe(load(preset), recipe)
    for key, value in ABLATIONS[ablation].items():
        config = replace_key(config, key, value)
    return validate(override(config, overrides))
