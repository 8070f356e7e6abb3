"""The run's configuration: one nested, frozen tree, validated as a whole.

    ExperimentConfig
      data      DataConfig       where the dialogues come from, how they are batched
      model     ModelConfig      the architecture (`ambjax.nn.ModelConfig` itself)
      optim     OptimConfig      optimiser and loss weights
      schedule  ScheduleConfig   epochs and the balancing warm-up
      run       RunConfig        seed, model selection, checkpoints

Every field is declared once. Dotted keys address fields (`model.hidden_dim`, `optim.lr`):
`override` parses a command-line string by the field's type (ints, floats, bools, `none` for
optional fields, comma lists for tuples: `model.graphs=inter`, `data.synthetic_dims=text:64,
audio:16`); `to_dict` / `from_dict` are the run folder's config.json. Presets are small files
under `experiments/configs/`.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import hashlib
import json
import math
import types
import typing
from typing import Any

from ambjax.data.config import DataConfig
from ambjax.data.dataset import MODALITIES
from ambjax.data.loader import TEXT_OPTIONS
from ambjax.data.synthetic import PRESETS as SYNTHETIC_SHAPES
from ambjax.graphs.edges import GRAPH_KINDS
from ambjax.losses import IEMOCAP_CLASS_WEIGHTS
from ambjax.nn.attention import NORMS
from ambjax.nn.model import ModelConfig
from ambjax.train.state import LR_SCHEDULES, OPTIMIZERS
from ambjax.train.steps import MASK_KEYS

SELECTIONS = ("valid", "test")
DTYPES = ("float32", "bfloat16")


from ambjax.errors import ConfigError  # noqa: F401 - re-exported


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """The optimiser and the loss weights.

    Attributes:
      optimizer: "adam_l2" (the release's torch Adam: L2 added to the gradient), "adamw"
        (decoupled weight decay `l2`) or "sgd" (plain SGD + L2: no moment normalisation, so
        float-level differences stay float-level; for exact comparisons).
      lr: peak learning rate; l2: L2 coefficient / weight decay.
      lr_schedule: "constant" (the release's) or "warmup_cosine" (linear warm-up over the first
        5% of steps, then cosine decay to 0 at the last step).
      clip_norm: clip the global gradient norm to this value (None: no clipping).
      class_weights: a loss weight per class, in label order (as many as the data has
        classes); () = unweighted. The default is the release's IEMOCAP weights; the MELD
        preset is unweighted.
      unimodal_weight: weight of the squared unimodal NLL terms.
    """

    optimizer: str = "adam_l2"
    lr: float = 6.8e-5
    l2: float = 5e-5
    lr_schedule: str = "constant"
    clip_norm: float | None = None
    class_weights: tuple[float, ...] = IEMOCAP_CLASS_WEIGHTS
    unimodal_weight: float = 0.1


@dataclasses.dataclass(frozen=True)
class ScheduleConfig:
    """Attributes: epochs; balance_warmup: epochs before modality balancing switches on."""

    epochs: int = 61
    balance_warmup: int = 60


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Attributes: seed (init, dropout, balancing, data order); selection: the split that
    picks the best epoch ("valid", or "test" for the release's protocol); keep_checkpoints:
    latest checkpoints kept besides the best; recipe: the name of the recipe applied
    (`RECIPES`), recorded with the run."""

    recipe: str = "release"
    seed: int = 2094
    selection: str = "valid"
    keep_checkpoints: int = 2


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """Everything a run depends on; saved as the run folder's config.json."""

    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    schedule: ScheduleConfig = dataclasses.field(default_factory=ScheduleConfig)
    run: RunConfig = dataclasses.field(default_factory=RunConfig)


# Named bundles of settings, applied after the preset (and before `set` overrides).
RECIPES: dict[str, dict[str, Any]] = {
    # the authors' optimiser settings on raw features: what parity and reproduction use
    "release": {"run.recipe": "release"},
    # features of unknown scale (e.g. users' own sentence embeddings): standardised with
    # train statistics, constant modalities left out, AdamW 1e-3 with warm-up and cosine decay,
    # gradients clipped
    "robust": {"run.recipe": "robust", "data.standardize": True, "data.drop_constant": True,
               "optim.optimizer": "adamw", "optim.lr": 1e-3, "optim.l2": 1e-4,
               "optim.lr_schedule": "warmup_cosine", "optim.clip_norm": 1.0},
}


# --- the tree: types, dotted keys, dictionaries ------------------------------------------------

@functools.cache
def _field_types(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_section(kind) -> bool:
    return isinstance(kind, type) and dataclasses.is_dataclass(kind)


def keys(cls=ExperimentConfig, prefix: str = "") -> list[str]:
    """All dotted leaf keys of a config class, e.g. ["data.path", ..., "run.keep_checkpoints"]."""
    out = []
    for name, kind in _field_types(cls).items():
        out += keys(kind, f"{prefix}{name}.") if _is_section(kind) else [prefix + name]
    return out


def _describe(kind) -> str:
    return getattr(kind, "__name__", None) or str(kind).replace("typing.", "")


def _check(value, kind, key: str):
    """`value` converted to `kind` (lists -> tuples), or ConfigError naming `key`."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _check(value, inner, key)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_check(v, args[0], key) for v in value)
        if len(value) != len(args):
            raise ConfigError(f"{key}: expected {len(args)} items, got {value!r}")
        return tuple(_check(v, a, key) for v, a in zip(value, args))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(f"{key}: expected {_describe(kind)}, got {value!r}")
    return value


def _parse(text: str, kind, key: str):
    """A command-line string as a value of `kind`."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        if text.strip().lower() in ("none", "null"):
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _parse(text, inner, key)
    if origin is tuple:
        items = [t.strip() for t in text.split(",") if t.strip()]
        if args and typing.get_origin(args[0]) is tuple:      # pairs "name:value"
            pairs = []
            for item in items:
                name, sep, value = item.partition(":")
                if not sep:
                    raise ConfigError(f"{key}: expected name:value pairs, got {item!r}")
                pairs.append((name.strip(), _parse(value, typing.get_args(args[0])[1], key)))
            return tuple(pairs)
        return tuple(_parse(t, args[0], key) for t in items)
    text = text.strip()
    if kind is bool:
        if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise ConfigError(f"{key}={text}: expected true or false")
        return text.lower() in ("true", "1", "yes")
    try:
        return kind(text)
    except ValueError:
        raise ConfigError(f"{key}={text}: expected {_describe(kind)}") from None


def _locate(config, key: str):
    """(section classes path, leaf type) of a dotted key, or ConfigError with suggestions."""
    node_cls, parts = type(config), key.split(".")
    for i, part in enumerate(parts):
        hints = _field_types(node_cls)
        if part not in hints:
            known = keys()
            close = difflib.get_close_matches(key, known, n=1) or [
                k for k in known if k.endswith("." + parts[-1])][:1]
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"unknown config key {key!r}{hint} (keys: {', '.join(known)})")
        kind = hints[part]
        if i < len(parts) - 1:
            if not _is_section(kind):
                raise ConfigError(f"unknown config key {key!r}: {'.'.join(parts[:i + 1])} "
                                  "is a setting, not a section")
            node_cls = kind
        elif _is_section(kind):
            raise ConfigError(f"{key!r} is a section; set one of its fields, e.g. "
                              f"{keys(kind, key + '.')[0]!r}")
    return kind


def replace_key(config: ExperimentConfig, key: str, value) -> ExperimentConfig:
    """A copy of `config` with the dotted `key` set to `value` (type-checked)."""
    kind = _locate(config, key)
    value = _check(value, kind, key)
    head, _, rest = key.partition(".")
    if not rest:
        return dataclasses.replace(config, **{head: value})
    return dataclasses.replace(config, **{head: replace_key(getattr(config, head), rest, value)})


def override(config: ExperimentConfig, items) -> ExperimentConfig:
    """Apply "key=value" strings (or a {key: string} mapping) from a command line.

    Example:
      >>> cfg = override(ExperimentConfig(), ["model.hidden_dim=256", "model.graphs=inter"])
      >>> cfg.model.hidden_dim, cfg.model.graphs
      (256, ('inter',))
    """
    pairs = items.items() if isinstance(items, dict) else [_split(i) for i in items]
    for key, text in pairs:
        key = key.strip()
        config = replace_key(config, key, _parse(str(text), _locate(config, key), key))
    return config


def _split(item: str) -> tuple[str, str]:
    if "=" not in item:
        raise ConfigError(f"expected KEY=VALUE, got {item!r}")
    key, value = item.split("=", 1)
    return key, value


def to_dict(config) -> dict:
    """The tree as plain JSON-able dictionaries (tuples become lists)."""
    return dataclasses.asdict(config)


def from_dict(blob: dict, cls=ExperimentConfig, prefix: str = ""):
    """Inverse of `to_dict`; unknown keys and wrong types are a ConfigError naming the key."""
    if not isinstance(blob, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {blob!r}")
    hints = _field_types(cls)
    unknown = sorted(set(blob) - set(hints))
    if unknown:
        raise ConfigError(f"unknown config keys {[prefix + k for k in unknown]}")
    values = {}
    for name, value in blob.items():
        kind = hints[name]
        values[name] = (from_dict(value, kind, f"{prefix}{name}.") if _is_section(kind)
                        else _check(value, kind, prefix + name))
    return cls(**values)


# --- validation ---------------------------------------------------------------------------------

def _rules(c: ExperimentConfig):
    """(ok, message) for every rule the tree must satisfy."""
    d, m, o, s, r = c.data, c.model, c.optim, c.schedule, c.run
    finite = lambda x: math.isfinite(x)  # noqa: E731
    return [
        (d.synthetic in SYNTHETIC_SHAPES,
         f"data.synthetic must be one of {tuple(SYNTHETIC_SHAPES)}, got {d.synthetic!r}"),
        (finite(d.synthetic_scale) and 0 < d.synthetic_scale <= 1,
         f"data.synthetic_scale must be in (0, 1], got {d.synthetic_scale}"),
        (all(k in MODALITIES and w >= 1 for k, w in d.synthetic_dims),
         f"data.synthetic_dims must pair modalities of {MODALITIES} with widths >= 1, "
         f"got {d.synthetic_dims}"),
        (d.text in TEXT_OPTIONS, f"data.text must be one of {TEXT_OPTIONS}, got {d.text!r}"),
        (finite(d.valid_fraction) and 0 <= d.valid_fraction < 1,
         f"data.valid_fraction must be in [0, 1), got {d.valid_fraction}"),
        (set(d.modalities) <= set(MODALITIES) and len(set(d.modalities)) == len(d.modalities),
         f"data.modalities must be distinct names from {MODALITIES}, got {d.modalities}"),
        (d.window >= 1, f"data.window must be >= 1, got {d.window}"),
        (d.batch_size >= 1, f"data.batch_size must be >= 1, got {d.batch_size}"),
        (d.budget_growth is None or (finite(d.budget_growth) and d.budget_growth > 1),
         f"data.budget_growth must be > 1 or none, got {d.budget_growth}"),
        (finite(d.compile_node_steps) and d.compile_node_steps >= 0,
         f"data.compile_node_steps must be >= 0, got {d.compile_node_steps}"),
        (not m.input_dims and m.num_classes == 0 and m.num_speakers == 0,
         "model.input_dims, model.num_classes and model.num_speakers come from the data; "
         "leave them unset"),
        (m.hidden_dim >= 2 and m.hidden_dim % 2 == 0,
         f"model.hidden_dim must be even and >= 2, got {m.hidden_dim}"),
        (m.num_heads >= 1 and m.hidden_dim % max(m.num_heads, 1) == 0,
         f"model.num_heads must be >= 1 and divide model.hidden_dim {m.hidden_dim}, "
         f"got {m.num_heads}"),
        (m.graph_heads >= 1, f"model.graph_heads must be >= 1, got {m.graph_heads}"),
        (finite(m.dropout) and 0 <= m.dropout < 1,
         f"model.dropout must be in [0, 1), got {m.dropout}"),
        (finite(m.graph_dropout) and 0 <= m.graph_dropout < 1,
         f"model.graph_dropout must be in [0, 1), got {m.graph_dropout}"),
        (m.norm in NORMS, f"model.norm must be one of {list(NORMS)}, got {m.norm!r}"),
        (bool(m.graphs) and set(m.graphs) <= set(GRAPH_KINDS)
         and len(set(m.graphs)) == len(m.graphs),
         f"model.graphs must be distinct names from {GRAPH_KINDS}, got {m.graphs}"),
        (finite(m.q_base) and 0 <= m.q_base <= 1,
         f"model.q_base must be in [0, 1], got {m.q_base}"),
        (finite(m.lam) and m.lam >= 0, f"model.lam must be >= 0, got {m.lam}"),
        (finite(m.p_exe) and 0 <= m.p_exe <= 1,
         f"model.p_exe must be in [0, 1], got {m.p_exe}"),
        (m.dtype in DTYPES, f"model.dtype must be one of {DTYPES}, got {m.dtype!r}"),
        (m.mask_rng in MASK_KEYS,
         f"model.mask_rng must be one of {list(MASK_KEYS)}, got {m.mask_rng!r}"),
        (o.optimizer in OPTIMIZERS,
         f"optim.optimizer must be one of {list(OPTIMIZERS)}, got {o.optimizer!r}"),
        (o.lr_schedule in LR_SCHEDULES,
         f"optim.lr_schedule must be one of {list(LR_SCHEDULES)}, got {o.lr_schedule!r}"),
        (all(finite(w) and w >= 0 for w in o.class_weights),
         f"optim.class_weights must be finite and >= 0, got {o.class_weights}"),
        (o.clip_norm is None or (finite(o.clip_norm) and o.clip_norm > 0),
         f"optim.clip_norm must be > 0 or none, got {o.clip_norm}"),
        (r.recipe in RECIPES, f"run.recipe must be one of {tuple(RECIPES)}, got {r.recipe!r}"),
        (finite(o.lr) and o.lr > 0, f"optim.lr must be a positive number, got {o.lr}"),
        (finite(o.l2) and o.l2 >= 0, f"optim.l2 must be >= 0, got {o.l2}"),
        (finite(o.unimodal_weight) and o.unimodal_weight >= 0,
         f"optim.unimodal_weight must be >= 0, got {o.unimodal_weight}"),
        (s.epochs >= 1, f"schedule.epochs must be >= 1, got {s.epochs}"),
        (s.balance_warmup >= 0, f"schedule.balance_warmup must be >= 0, got {s.balance_warmup}"),
        (r.selection in SELECTIONS,
         f"run.selection must be one of {SELECTIONS}, got {r.selection!r}"),
        (r.keep_checkpoints >= 1, f"run.keep_checkpoints must be >= 1, got {r.keep_checkpoints}"),
    ]


def apply_recipe(config: ExperimentConfig, name: str) -> ExperimentConfig:
    """`config` with the settings of recipe `name` (see `RECIPES`)."""
    if name not in RECIPES:
        raise ConfigError(f"unknown recipe {name!r}; choose from {list(RECIPES)}")
    for key, value in RECIPES[name].items():
        config = replace_key(config, key, value)
    return config


def validate(config: ExperimentConfig) -> ExperimentConfig:
    """Check every type, range, choice and cross-field rule; return `config` unchanged.

    Raises:
      ConfigError: the first rule broken, naming the key, what it must be and what it is.
    """
    from_dict(to_dict(config))  # types
    for ok, message in _rules(config):
        if not ok:
            raise ConfigError(message)
    return config


PARAM_LAYOUT = 2
"""Version of the parameter tree's layout (2: modality streams stacked, `ambjax.nn.stack`);
part of the fingerprint, so that a run saved by an older layout is refused on resume."""


def fingerprint(model: ModelConfig) -> str:
    """Hash of what fixes the parameter shapes of a model built for its data (a `ModelConfig`
    after `with_data`) and of `PARAM_LAYOUT`: for checkpoint compatibility. Settings such as
    dropout or the learning rate may change on resume."""
    fields = ("input_dims", "num_classes", "num_speakers", "hidden_dim", "num_heads",
              "graph_heads", "graphs", "differential", "norm")
    blob = json.dumps({"layout": PARAM_LAYOUT, **{k: getattr(model, k) for k in fields}},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
