"""Per-dimension standardisation of features, with statistics from the train split only.

Users' own features come at any scale (sentence embeddings of norm 1, raw acoustic statistics in
the thousands, all-zero placeholders). `Standardizer.fit` measures every modality's
per-dimension mean and standard deviation over the train split's utterances; `apply` maps
x -> (x - mean) / std (dimensions that are constant in train are only centred). A modality whose
every dimension is constant over the train split carries no information and is listed in
`constant`. The statistics are saved with a run (`save` / `load`, an .npz file) so that
evaluation reuses exactly the training statistics.
"""

from __future__ import annotations

import dataclasses
import io
import math
import os
import types
from typing import Mapping

import numpy as np

from ambjax.files import atomic_write
from ambjax.data.dataset import DataFormatError, Dialogue, DialogueDataset

CONSTANT_STD = 1e-6


def constant_modalities(dataset: DialogueDataset, split: str = "train") -> tuple[str, ...]:
    """Modalities whose every feature dimension is constant over `split`'s utterances: the
    standard deviation below `CONSTANT_STD` (`Standardizer.constant`, the same decisions).

    Most modalities are decided from the split's first dialogue alone: among n utterances,
    two values a dimension takes that differ by d give it a standard deviation of at least
    d / sqrt(2 n), so a difference above twice sqrt(2 n) CONSTANT_STD proves the modality not
    constant without the split's full statistics (part of every start: 0.1-0.35 s for
    IEMOCAP's synthetic train split); the others are measured in full.
    """
    dialogues = _split_dialogues(dataset, split)
    bound = 2.0 * math.sqrt(2.0 * sum(len(d) for d in dialogues)) * CONSTANT_STD
    first = dialogues[0].features
    undecided = [m for m in dataset.modalities
                 if not float(np.max(np.ptp(first[m], axis=0), initial=0.0)) > bound]
    return tuple(m for m in undecided
                 if float(np.max(_moments(dialogues, m)[1], initial=0.0)) < CONSTANT_STD)


def _split_dialogues(dataset: DialogueDataset, split: str) -> list[Dialogue]:
    dialogues = dataset.split(split)
    if not dialogues:
        raise DataFormatError(f"cannot standardise: the {split} split is empty")
    return dialogues


def _moments(dialogues: list[Dialogue], modality: str) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation float32 [D] of `modality` over the dialogues' utterances
    (computed in float64)."""
    x = np.concatenate([d.features[modality] for d in dialogues]).astype(np.float64)
    return x.mean(0).astype(np.float32), x.std(0).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class Standardizer:
    """Per-modality feature statistics: mean and std float32 [D_m] each."""

    mean: Mapping[str, np.ndarray]
    std: Mapping[str, np.ndarray]

    @property
    def constant(self) -> tuple[str, ...]:
        return tuple(m for m, s in self.std.items() if float(np.max(s, initial=0.0)) < CONSTANT_STD)

    @classmethod
    def fit(cls, dataset: DialogueDataset, split: str = "train") -> "Standardizer":
        """Statistics of every modality of `dataset` over the utterances of `split`."""
        dialogues = _split_dialogues(dataset, split)
        moments = {m: _moments(dialogues, m) for m in dataset.modalities}
        return cls(types.MappingProxyType({m: v[0] for m, v in moments.items()}),
                   types.MappingProxyType({m: v[1] for m, v in moments.items()}))

    def apply(self, dataset: DialogueDataset) -> DialogueDataset:
        """`dataset` with every modality it shares with the statistics standardised."""
        missing = set(dataset.modalities) - set(self.mean)
        if missing:
            raise DataFormatError(f"no standardisation statistics for modalities {sorted(missing)}")
        for m in dataset.modalities:
            if dataset.dims[m] != self.mean[m].shape[0]:
                raise DataFormatError(f"modality {m} has width {dataset.dims[m]}, the "
                                      f"standardisation statistics {self.mean[m].shape[0]}")
        scale = {m: np.where(s < CONSTANT_STD, 1.0, s).astype(np.float32)
                 for m, s in self.std.items()}
        dialogues = {
            vid: Dialogue(id=d.id, speakers=d.speakers, labels=d.labels,
                          features={m: (x - self.mean[m]) / scale[m] if m in self.mean else x
                                    for m, x in d.features.items()})
            for vid, d in dataset.dialogues.items()}
        return dataclasses.replace(dataset, dialogues=dialogues)

    def save(self, path: str | os.PathLike) -> None:
        """Write the statistics as an .npz file (atomically)."""
        arrays = {f"{k}/{m}": v for k, table in (("mean", self.mean), ("std", self.std))
                  for m, v in table.items()}
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        atomic_write(path, buffer.getvalue())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Standardizer":
        try:
            with np.load(path, allow_pickle=False) as f:
                tables: dict = {"mean": {}, "std": {}}
                for key in f.files:
                    kind, m = key.split("/", 1)
                    tables[kind][m] = f[key].astype(np.float32)
        except (OSError, ValueError, KeyError) as e:
            raise DataFormatError(f"{path}: unreadable standardisation statistics ({e})") \
                from None
        return cls(types.MappingProxyType(tables["mean"]), types.MappingProxyType(tables["std"]))
