"""A run's dataset from its `DataConfig`: the feature file (or the bundled synthetic data),
restricted to the chosen modalities, without constant ones when asked, and standardised with
train statistics when asked."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Callable

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

    `store`: where the parsed feature file or the generated synthetic set is kept
    (`parse_feature_file`, `generate_synthetic`); None parses or generates it.

    Raises:
      ConfigError: `data.modalities` names a modality the data lacks.
      DataFormatError: a split is empty, the file is malformed, or every modality is constant.
    """
    dataset = (parse_feature_file(data, store) if data.path
               else generate_synthetic(data, store))
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


def kept_in_store(store: Any, key: list, build: Callable[[], DialogueDataset]
                  ) -> DialogueDataset:
    """The dataset that `build()` returns, read from `store` when it holds one under `key`,
    else built and kept there (when its dialogue ids can be stored:
    `ambjax.data.dataset_arrays.to_arrays`). A damaged entry is built again.

    `store`: an `ambjax.train.executables.ExecutableStore` (or any object with its
    `load_arrays` / `save_arrays`), whose key adds a hash of ambjax's source (an edit of the
    code that builds the dataset misses); None builds every time.
    """
    if store is None:
        return build()
    tree = store.load_arrays("dataset", key)
    if tree is not None:
        try:
            return from_arrays(tree)
        except (KeyError, ValueError, IndexError, TypeError):
            pass                                       # a damaged entry: build again
    dataset = build()
    arrays = to_arrays(dataset)
    if arrays is not None:
        store.save_arrays("dataset", key, arrays)
    return dataset


def parse_feature_file(data: DataConfig, store: Any = None) -> DialogueDataset:
    """`load_features` of the file `data.path` with `data.text` and `data.valid_fraction`
    (seed 0), read from `store` when it holds this file's parse with those arguments, else
    parsed and kept there (`kept_in_store`).

    Entries are keyed by the file's identity (`ambjax.data.dataset_arrays.file_identity`: a
    file written again is parsed again) and the arguments.

    Raises:
      DataFormatError: as `load_features`.
    """
    def parse():
        return load_features(data.path, text=data.text, valid_fraction=data.valid_fraction,
                             seed=0)
    if store is None:
        return parse()                   # no key needed: the identity reads the file
    try:
        key = file_identity(data.path) + [data.text, data.valid_fraction]
    except OSError:
        return parse()                   # a missing file: load_features says what is wrong
    return kept_in_store(store, key, parse)


def generate_synthetic(data: DataConfig, store: Any = None) -> DialogueDataset:
    """The synthetic set that `data` describes (`make_synthetic` of `data.synthetic` with its
    seed, scale, feature widths and validation share), read from `store` when it holds it,
    else generated and kept there (`kept_in_store`): generating an IEMOCAP- or MELD-size set
    takes ~1.2 s on a 2-core AMD EPYC (~22 million normal numbers), keeping it ~0.7 s once,
    reading it back 0.03-0.1 s.

    Raises:
      ConfigError: as `make_synthetic`.
    """
    key = ["synthetic", data.synthetic, data.synthetic_seed, data.synthetic_scale,
           sorted(data.synthetic_dims), data.valid_fraction]
    return kept_in_store(store, key, lambda: make_synthetic(
        data.synthetic, seed=data.synthetic_seed, scale=data.synthetic_scale,
        dims=dict(data.synthetic_dims) or None, valid_fraction=data.valid_fraction))
