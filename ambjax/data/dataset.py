"""The typed, immutable in-memory dataset every loader and generator produces.

A `DialogueDataset` holds dialogues (speaker ids, labels and per-modality float32 feature
matrices) and named splits of dialogue ids. Arrays are read-only numpy arrays; the containers are
frozen dataclasses and read-only mappings, so nothing downstream can change a loaded dataset.
"""

from __future__ import annotations

import dataclasses
import hashlib
import types
from typing import Hashable, Mapping, Sequence

import numpy as np

MODALITIES = ("text", "audio", "visual")

IEMOCAP_LABELS = ("hap", "sad", "neu", "ang", "exc", "fru")
MELD_LABELS = ("neutral", "surprise", "fear", "sadness", "joy", "disgust", "anger")
SPLITS = ("train", "valid", "test")


from ambjax.errors import DataFormatError  # noqa: F401 - re-exported


def _int32(values, field: str, vid) -> np.ndarray:
    """`values` as int32, refusing values that int32 cannot hold (a cast would wrap them)."""
    array = np.asarray(values)
    if array.size and np.issubdtype(array.dtype, np.integer) and (
            array.min() < np.iinfo(np.int32).min or array.max() > np.iinfo(np.int32).max):
        raise DataFormatError(f"dialogue {vid!r}: field {field} has value "
                              f"{array.max() if array.max() > 0 else array.min()}, outside int32")
    return array.astype(np.int32)


def _frozen(array: np.ndarray) -> np.ndarray:
    array = np.ascontiguousarray(array)
    array.setflags(write=False)
    return array


@dataclasses.dataclass(frozen=True)
class Dialogue:
    """One conversation.

    Attributes:
      id: the dialogue id of the source file (str for IEMOCAP, int for MELD).
      speakers: int32 [N] speaker slot of each utterance (IEMOCAP 0 = 'M', 1 = 'F'; MELD the
        order of first appearance inside the dialogue).
      labels: int32 [N] emotion class of each utterance.
      features: modality name -> float32 [N, D_m] features.
    """

    id: Hashable
    speakers: np.ndarray
    labels: np.ndarray
    features: Mapping[str, np.ndarray]

    def __post_init__(self):
        object.__setattr__(self, "speakers", _frozen(_int32(self.speakers, "speakers", self.id)))
        object.__setattr__(self, "labels", _frozen(_int32(self.labels, "labels", self.id)))
        feats = {m: _frozen(np.asarray(x, np.float32)) for m, x in self.features.items()}
        object.__setattr__(self, "features", types.MappingProxyType(feats))

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclasses.dataclass(frozen=True)
class DialogueDataset:
    """A whole feature file: dialogues, splits and label names.

    Attributes:
      name: "IEMOCAP" or "MELD" (or a synthetic preset's name).
      layout: the file layout it came from (see `ambjax.data.LAYOUTS`) or "synthetic".
      label_names: class names in label order.
      num_speakers: number of speaker slots (IEMOCAP 2, MELD 9); slot `num_speakers` is padding.
      modalities: modality names present, in canonical order (text, audio, visual).
      dims: modality -> feature width.
      dialogues: id -> Dialogue.
      splits: "train" / "valid" / "test" -> tuple of dialogue ids (disjoint).
    """

    name: str
    layout: str
    label_names: tuple[str, ...]
    num_speakers: int
    modalities: tuple[str, ...]
    dims: Mapping[str, int]
    dialogues: Mapping[Hashable, Dialogue]
    splits: Mapping[str, tuple]

    def __post_init__(self):
        object.__setattr__(self, "dims", types.MappingProxyType(dict(self.dims)))
        object.__setattr__(self, "dialogues", types.MappingProxyType(dict(self.dialogues)))
        object.__setattr__(
            self, "splits", types.MappingProxyType({k: tuple(v) for k, v in self.splits.items()}))

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    def split(self, name: str) -> list[Dialogue]:
        """The dialogues of one split, in the split's order."""
        if name not in self.splits:
            raise KeyError(f"unknown split {name!r}; this dataset has {sorted(self.splits)}")
        return [self.dialogues[i] for i in self.splits[name]]

    def fingerprint(self) -> str:
        """A hash of what a run sees of this dataset: splits (ids in order), labels, speakers
        and the features of `modalities` (16 hex digits). Equal for the same data however it
        was stored; different when a file is regenerated with other content, even at the
        same widths."""
        digest = hashlib.sha256(repr((self.name, self.label_names, self.modalities)).encode())
        for split in SPLITS:
            for vid in self.splits.get(split, ()):
                d = self.dialogues[vid]
                digest.update(f"{split}|{vid!r}|".encode())
                digest.update(d.labels.tobytes())
                digest.update(d.speakers.tobytes())
                for m in self.modalities:
                    digest.update(d.features[m].tobytes())
        return digest.hexdigest()[:16]

    def summary(self) -> dict:
        """JSON-ready description: layout, classes, modality widths, split sizes."""
        return {
            "name": self.name,
            "layout": self.layout,
            "num_classes": self.num_classes,
            "modalities": {m: int(self.dims[m]) for m in self.modalities},
            "splits": {
                s: {"dialogues": len(self.splits.get(s, ())),
                    "utterances": int(sum(len(d) for d in self.split(s))) if s in self.splits else 0}
                for s in SPLITS
            },
        }


def validate_dialogue(dialogue: Dialogue, *, num_classes: int, num_speakers: int,
                      dims: Mapping[str, int], where: str) -> None:
    """Raise `DataFormatError` unless `dialogue` is well formed.

    Checks: non-empty; speakers, labels and every feature matrix agree on the utterance count;
    feature widths equal `dims`; finite features; labels in [0, num_classes); speakers in
    [0, num_speakers). `where` (usually the file path) prefixes every message.
    """
    n = len(dialogue)
    tag = f"{where}: dialogue {dialogue.id!r}"
    if n == 0:
        raise DataFormatError(f"{tag}: empty dialogue (no utterances)")
    if dialogue.speakers.shape != (n,):
        raise DataFormatError(
            f"{tag}: field speakers has {dialogue.speakers.shape[0]} entries, labels has {n}")
    for m, x in dialogue.features.items():
        if x.ndim != 2 or x.shape[0] != n:
            raise DataFormatError(
                f"{tag}: field {m} has shape {x.shape}, expected ({n}, {dims.get(m, 'D')}) "
                f"to match {n} labels")
        if x.shape[1] != dims[m]:
            raise DataFormatError(
                f"{tag}: field {m} has width {x.shape[1]}, other dialogues have {dims[m]}")
        if not np.isfinite(x).all():
            bad = int(np.argwhere(~np.isfinite(x))[0, 0])
            raise DataFormatError(f"{tag}: field {m} has NaN/inf features (utterance {bad})")
    if n and (dialogue.labels.min() < 0 or dialogue.labels.max() >= num_classes):
        bad = int(dialogue.labels[(dialogue.labels < 0) | (dialogue.labels >= num_classes)][0])
        raise DataFormatError(
            f"{tag}: field labels has label {bad}, expected 0..{num_classes - 1}")
    if n and (dialogue.speakers.min() < 0 or dialogue.speakers.max() >= num_speakers):
        raise DataFormatError(
            f"{tag}: field speakers has a speaker slot outside 0..{num_speakers - 1}")


def validation_split(train_ids: Sequence, fraction: float, seed: int) -> tuple[list, list]:
    """Split train ids into (train, valid): a seeded `fraction` of them (at least one) is valid."""
    train_ids = list(train_ids)
    if fraction <= 0 or len(train_ids) < 2:
        return train_ids, []
    n_valid = min(len(train_ids) - 1, max(1, int(round(fraction * len(train_ids)))))
    order = np.random.default_rng(seed).permutation(len(train_ids))
    valid = set(order[:n_valid].tolist())
    return ([i for k, i in enumerate(train_ids) if k not in valid],
            [i for k, i in enumerate(train_ids) if k in valid])
