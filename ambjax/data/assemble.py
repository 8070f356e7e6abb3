"""A run's dataset from its `DataConfig`: the feature file (or the bundled synthetic data),
restricted to the chosen modalities, without constant ones when asked, and standardised with
train statistics when asked."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from ambjax.data.config import DataConfig
from ambjax.data.dataset import DataFormatError, DialogueDataset
from ambjax.data.dataset_arrays import file_identity, from_arrays, to_arrays
from ambjax.data.loader import load_features
from ambjax.data.standardize import Standardizer, constant_modalities
from ambjax.data.synthetic import make_synthetic
from ambjax.errors import ConfigError

logger = logging.getLogger("ambjax")


def load_dataset(data: DataConfig, *, store: Any = None) -> DialogueDataset:
    """The dataset of a run before standardisation: the feature file `data.path` (or the
    bundled synthetic set), restricted to `data.modalities`, without constant modalities when
    `data.drop_constant`. Constant modalities are logged as a warning whatever the settings.
    `standardized` applies `data.standardize`.

    `store`: where the parsed feature file is kept (`parse_feature_file`); None parses it.

    Raises:
      ConfigError: `data.modalities` names a modality the data lacks.
      DataFormatError: a split is empty, the file is malformed, or every modality is constant.
    """
    if data.path:
        dataset = parse_feature_file(data, store)
    else:
        dataset = make_synthetic(data.synthetic, seed=data.synthetic_seed,
                                 scale=data.synthetic_scale,
                                 dims=dict(data.synthetic_dims) or None,
                                 valid_fraction=data.valid_fraction)
    if data.modalities:
        missing = set(data.modalities) - set(dataset.modalities)
        if missing:
            raise ConfigError(f"data.modalities {sorted(missing)} are not in the data "
                              f"(it has {list(dataset.modalities)})")
        dataset = dataclasses.replace(dataset, modalities=data.modalities)
    where = data.path or f"synthetic {data.synthetic} data"
    for split in ("train", "valid", "test"):
        if not dataset.splits[split]:
            raise DataFormatError(f"{where}: the {split} split is empty; a run needs train, "
                                  "validation and test dialogues")
    constant = constant_modalities(dataset)
    if constant:
        kept = tuple(m for m in dataset.modalities if m not in constant)
        if data.drop_constant and not kept:
            raise DataFormatError(f"{where}: every modality is constant over the train split; "
                                  "the features carry no information")
        action = (f"left out (data.drop_constant); training on {list(kept)}"
                  if data.drop_constant else "kept; `recipe` robust leaves them out")
        logger.warning("warning: modalities %s are constant (e.g. all zero) over the train "
                       "split and carry no information: %s", list(constant), action)
        if data.drop_constant:
            dataset = dataclasses.replace(dataset, modalities=kept)
    return dataset


def standardized(dataset: DialogueDataset, data: DataConfig,
                 stats: Standardizer | None = None) -> tuple[DialogueDataset, Standardizer | None]:
    """(`dataset` standardised with `stats` or its own train statistics, the statistics) when
    `data.standardize`, else (`dataset`, None)."""
    if not data.standardize:
        return dataset, None
    stats = stats or Standardizer.fit(dataset)
    return stats.apply(dataset), stats


def parse_feature_file(data: DataConfig, store: Any = None) -> DialogueDataset:
    """`load_features` of the file `data.path` with `data.text` and `data.valid_fraction`
    (seed 0), read from `store` when it holds this file's parse with those arguments, else
    parsed and kept there.

    `store`: an `ambjax.train.executables.ExecutableStore` (or any object with its
    `load_arrays` / `save_arrays`); entries are keyed by the file's identity
    (`ambjax.data.dataset_arrays.file_identity`: a file written again is parsed again) and
    the arguments. None parses every time.

    Raises:
      DataFormatError: as `load_features`.
    """
    def parse():
        return load_features(data.path, text=data.text, valid_fraction=data.valid_fraction,
                             seed=0)
    if store is None:
        return parse()
    try:
        key = file_identity(data.path) + [data.text, data.valid_fraction]
    except OSError:
        return parse()                   # a missing file: load_features says what is wrong
    tree = store.load_arrays("dataset", key)
    if tree is not None:
        try:
            return from_arrays(tree)
        except (KeyError, ValueError, IndexError, TypeError):
            pass                                       # a damaged entry: parse again
    dataset = parse()
    arrays = to_arrays(dataset)
    if arrays is not None:
        store.save_arrays("dataset", key, arrays)
    return dataset
