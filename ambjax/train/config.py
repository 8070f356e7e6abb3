"""Experiment configurations: one frozen dataclass, presets with the release's hyper-parameters
(DESIGN.md section 9), ablations, and `KEY=VALUE` overrides from the command line."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import typing
from typing import Any

SELECTIONS = ("valid", "test")
DTYPES = ("float32", "bfloat16")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything a run depends on (saved as config.json with every run and checkpoint).

    Data: `data` (a feature pickle) or, when None, the bundled synthetic set of shape `dataset`
    ("iemocap"/"meld") at `synthetic_scale`, with optional `synthetic_dims` (e.g. "text:64,...").
    """

    dataset: str = "iemocap"
    data: str | None = None
    synthetic_scale: float = 1.0
    synthetic_dims: str = ""
    synthetic_seed: int = 0
    text: str = "first"
    valid_fraction: float = 0.1
    modalities: str = ""            # comma-separated subset, "" = all in the data
    window: int = 20
    batch_size: int = 16
    epochs: int = 61
    lr: float = 6.8e-5
    l2: float = 5e-5
    hidden_dim: int = 512
    num_heads: int = 8
    graph_heads: int = 2
    dropout: float = 0.5
    graph_dropout: float = 0.2
    differential: bool = True
    norm: str = "layernorm"
    depth_dependent_lambda: bool = False
    graphs: str = "inter,intra"
    balance: bool = True
    q_base: float = 0.3
    lam: float = 0.9
    p_exe: float = 0.5
    dtype: str = "float32"          # compute dtype: "float32" or "bfloat16" (mixed precision)
    warmup_epochs: int = 60
    class_weights: bool = True
    unimodal_weight: float = 0.1
    seed: int = 2094
    selection: str = "valid"
    keep_checkpoints: int = 2
    budget_growth: float = 1.25     # ratio between padding buckets; 0 = a single bucket

    def fingerprint(self) -> str:
        """Hash of the fields that fix the parameter shapes (for checkpoint compatibility)."""
        keys = ("dataset", "modalities", "hidden_dim", "num_heads", "graph_heads", "graphs",
                "differential", "norm")
        blob = json.dumps({k: getattr(self, k) for k in keys}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


PRESETS: dict[str, TrainConfig] = {
    # The release's IEMOCAP run (run_iemocap.sh).
    "iemocap": TrainConfig(),
    # The release's MELD run.
    "meld": TrainConfig(dataset="meld", window=6, batch_size=64, epochs=20, lr=5e-5, l2=7.5e-5,
                        dropout=0.11, q_base=0.2, lam=0.9, p_exe=0.2, warmup_epochs=0,
                        class_weights=False),
    # The README's main job: IEMOCAP-shaped synthetic data, a small model, minutes on a CPU.
    # One padding bucket: on a CPU, compiling a bucket costs more than its padding saves.
    "synthetic": TrainConfig(hidden_dim=64, epochs=12, lr=1e-3, l2=1e-5, dropout=0.2,
                             warmup_epochs=4, budget_growth=0.0),
    # Seconds-long smoke run for tests.
    "tiny": TrainConfig(synthetic_scale=0.05, synthetic_dims="text:24,audio:16,visual:12",
                        hidden_dim=16, num_heads=2, epochs=2, lr=1e-3, dropout=0.1,
                        warmup_epochs=1, batch_size=4, window=4, budget_growth=0.0),
}

ABLATIONS: dict[str, dict[str, Any]] = {
    "full": {},
    "no_differential": {"differential": False},
    "no_balancing": {"balance": False},
    "no_intra": {"graphs": "inter"},
    "no_inter": {"graphs": "intra"},
    "text_only": {"modalities": "text"},
    "audio_only": {"modalities": "audio"},
    "visual_only": {"modalities": "visual"},
}


class ConfigError(ValueError):
    """An unknown preset, ablation or override key, or an unparsable value."""


def _parse(value: str, annotation, key: str):
    kind = typing.get_args(annotation)[0] if typing.get_args(annotation) else annotation
    if isinstance(kind, str):
        kind = {"int": int, "float": float, "bool": bool, "str": str}.get(kind.split(" ")[0], str)
    if value.lower() in ("none", "null") and "None" in str(annotation):
        return None
    try:
        if kind is bool:
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(value)
            return value.lower() in ("true", "1", "yes")
        return kind(value)
    except ValueError:
        raise ConfigError(f"--set {key}={value}: expected a {kind.__name__}") from None


def make_config(preset: str, overrides: dict[str, str] | None = None,
                ablation: str = "full") -> TrainConfig:
    """Preset + ablation + string overrides -> validated `TrainConfig`."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
    if ablation not in ABLATIONS:
        raise ConfigError(f"unknown ablation {ablation!r}; choose from {sorted(ABLATIONS)}")
    config = dataclasses.replace(PRESETS[preset], **ABLATIONS[ablation])
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    parsed = {}
    for key, value in (overrides or {}).items():
        if key not in fields:
            raise ConfigError(f"unknown config key {key!r} in --set; known keys: "
                              f"{', '.join(sorted(fields))}")
        parsed[key] = _parse(value, fields[key].type, key)
    config = dataclasses.replace(config, **parsed)
    if config.selection not in SELECTIONS:
        raise ConfigError(f"selection must be one of {SELECTIONS}, got {config.selection!r}")
    if config.batch_size < 1 or config.epochs < 1 or config.hidden_dim % 2:
        raise ConfigError("batch_size and epochs must be >= 1 and hidden_dim even")
    if config.dtype not in DTYPES:
        raise ConfigError(f"dtype must be one of {DTYPES}, got {config.dtype!r}")
    return config


def parse_overrides(items: list[str]) -> dict[str, str]:
    """["key=value", ...] -> {key: value}."""
    out = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        out[key.strip()] = value.strip()
    return out


def config_from_json(blob: dict) -> TrainConfig:
    """Inverse of `TrainConfig.to_json` (unknown keys are an error)."""
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = set(blob) - fields
    if unknown:
        raise ConfigError(f"config.json has unknown keys {sorted(unknown)}")
    return TrainConfig(**blob)
