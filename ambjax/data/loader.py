"""Readers for the community's pre-extracted feature pickles (see FORMATS.md of the design).

Supported layouts (detected from the number of fields and their structure):

| layout | fields |
|---|---|
| ``sdt_iemocap`` (12) | ids, speakers, labels, text, roberta2-4, audio, visual, sentences, train, test |
| ``sdt_meld`` (13) | the same plus a trailing ``extra`` (the dev split when it is one) |
| ``mmgcn_iemocap`` (9) | ids, speakers, labels, text, audio, visual, sentences, train, test |
| ``mmgcn_meld`` (10) | the same plus ``extra`` |
| ``dialoguernn_meld`` (9) | ids, speakers, labels, text, audio, sentences, train, test, sentiment |

Files are unpickled by `ambjax.data.safe_pickle.read_pickle` (builtin containers and numpy
arrays only, allocations bounded by the file's size, nesting bounded, `encoding="latin1"` for
Python 2 files), so loading a file cannot run code or exhaust memory.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Hashable, Mapping

import numpy as np

from ambjax.errors import ConfigError
from ambjax.data.dataset import (IEMOCAP_LABELS, MELD_LABELS, DataFormatError, Dialogue,
                                 DialogueDataset, validate_dialogue, validation_split)
from ambjax.data.safe_pickle import read_pickle

log = logging.getLogger(__name__)

# layout -> (dataset, field names in file order)
LAYOUTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "sdt_iemocap": ("IEMOCAP", ("ids", "speakers", "labels", "text", "roberta2", "roberta3",
                                "roberta4", "audio", "visual", "sentences", "train", "test")),
    "sdt_meld": ("MELD", ("ids", "speakers", "labels", "text", "roberta2", "roberta3", "roberta4",
                          "audio", "visual", "sentences", "train", "test", "extra")),
    "mmgcn_iemocap": ("IEMOCAP", ("ids", "speakers", "labels", "text", "audio", "visual",
                                  "sentences", "train", "test")),
    "mmgcn_meld": ("MELD", ("ids", "speakers", "labels", "text", "audio", "visual", "sentences",
                            "train", "test", "extra")),
    "dialoguernn_meld": ("MELD", ("ids", "speakers", "labels", "text", "audio", "sentences",
                                  "train", "test", "sentiment")),
}
TEXT_OPTIONS = ("first", "mean4")


def fields_in_order(layout: str, values: Mapping[str, Any]) -> tuple:
    """The fields of a `layout` file, from `values` {field name: value} (the names of
    `LAYOUTS[layout]`; extra entries are ignored): the one place that knows their order."""
    if layout not in LAYOUTS:
        raise ConfigError(f"unknown layout {layout!r}; choose from {sorted(LAYOUTS)}")
    names = LAYOUTS[layout][1]
    missing = [n for n in names if n not in values]
    if missing:
        raise ConfigError(f"layout {layout} needs the fields {missing}")
    return tuple(values[n] for n in names)
MELD_SPEAKER_SLOTS = 9

def detect_layout(fields: Any, path: str = "<memory>") -> str:
    """Name the layout of an unpickled feature file from its field count and structure."""
    if not isinstance(fields, (tuple, list)):
        raise DataFormatError(f"{path}: expected a tuple of fields, found {type(fields).__name__}")
    n = len(fields)
    if n == 12:
        return "sdt_iemocap"
    if n == 13:
        return "sdt_meld"
    if n == 10:
        return "mmgcn_meld"
    if n == 9:
        # DialogueRNN MELD ends with a per-dialogue dict (sentiment labels); the IEMOCAP
        # layouts end with the test id collection.
        return "dialoguernn_meld" if isinstance(fields[8], dict) else "mmgcn_iemocap"
    raise DataFormatError(
        f"{path}: found a tuple of {n} fields, expected 9, 10, 12 or 13 "
        "(DialogueRNN/MMGCN or AMB-DSGDN/SDT layouts)")


def _id_list(value: Any, field: str, path: str) -> list:
    """The dialogue ids of a split field: a list, tuple, array or set (sorted) of hashable ids
    of one type."""
    if not isinstance(value, (set, frozenset, list, tuple, np.ndarray)):
        raise DataFormatError(f"{path}: field {field} should be a collection of dialogue ids, "
                              f"found {type(value).__name__}")
    ids = [v.item() if isinstance(v, np.generic) else v for v in value]
    kinds = sorted({type(i).__name__ for i in ids})
    if len(kinds) > 1:
        raise DataFormatError(f"{path}: field {field} mixes dialogue ids of types "
                              f"{', '.join(kinds)}; ids must all be of one type")
    seen: set = set()
    for i in ids:
        try:
            if i in seen:
                raise DataFormatError(f"{path}: field {field} lists dialogue {i!r} twice")
            seen.add(i)
        except TypeError:
            raise DataFormatError(f"{path}: field {field} holds an unhashable dialogue id "
                                  f"of type {type(i).__name__}") from None
    return sorted(ids) if isinstance(value, (set, frozenset)) else ids


def _speaker_ids(raw: Any, dataset: str, vid: Hashable, path: str) -> np.ndarray:
    tag = f"{path}: dialogue {vid!r}: field speakers"
    if not isinstance(raw, (list, tuple, np.ndarray)):
        raise DataFormatError(f"{tag}: expected a list of speakers, found {type(raw).__name__}")
    if dataset == "IEMOCAP":
        out = []
        for k, s in enumerate(raw):
            if s not in ("M", "F"):
                raise DataFormatError(f"{tag}: unknown speaker {s!r} at utterance {k}, "
                                      "expected 'M' or 'F'")
            out.append(0 if s == "M" else 1)
        return np.asarray(out, np.int32)
    try:
        onehot = np.asarray(raw, np.float64)
    except (TypeError, ValueError):
        raise DataFormatError(f"{tag}: expected one-hot speaker vectors") from None
    if onehot.ndim != 2 or onehot.shape[1] > MELD_SPEAKER_SLOTS or onehot.shape[0] == 0:
        raise DataFormatError(f"{tag}: expected a list of one-hot vectors of width "
                              f"{MELD_SPEAKER_SLOTS}, found shape {onehot.shape}")
    bad = ~((onehot == 0) | (onehot == 1)).all(axis=1) | (onehot.sum(axis=1) != 1)
    if bad.any():
        raise DataFormatError(f"{tag}: unknown speaker at utterance {int(np.argmax(bad))} "
                              "(not a one-hot vector)")
    return np.argmax(onehot, axis=1).astype(np.int32)


def _feature_matrix(raw: Any, field: str, vid: Hashable, path: str) -> np.ndarray:
    try:
        x = np.asarray(raw if not isinstance(raw, list) else [np.asarray(r) for r in raw],
                       dtype=np.float32)
    except (TypeError, ValueError):
        raise DataFormatError(f"{path}: dialogue {vid!r}: field {field}: utterance vectors "
                              "have different widths or are not numbers") from None
    if x.ndim == 1 and x.shape[0] == 0:
        x = x.reshape(0, 0)
    if x.ndim != 2:
        raise DataFormatError(f"{path}: dialogue {vid!r}: field {field}: expected an "
                              f"(utterances x width) matrix, found shape {x.shape}")
    return x


def load_features(path: str | os.PathLike, *, text: str = "first", valid_fraction: float = 0.1,
                  seed: int = 0) -> DialogueDataset:
    """Load a feature pickle of any supported layout into a `DialogueDataset`.

    Args:
      path: the pickle file.
      text: "first" (the release's choice: `videoText`, the first RoBERTa layer) or "mean4" (mean of
        the four RoBERTa layers; only for the 12/13-field layouts).
      valid_fraction: share of train dialogues held out as validation when the file has no dev
        split (MELD dev is used when present). Never taken from test.
      seed: seed of that hold-out.

    Returns:
      The dataset with splits "train", "valid", "test".

    Raises:
      DataFormatError: naming the file, dialogue and field of the first problem found.
    """
    if text not in TEXT_OPTIONS:
        raise ConfigError(f"text must be one of {TEXT_OPTIONS}, got {text!r}")
    path = os.fspath(path)
    fields = read_pickle(path)
    layout = detect_layout(fields, path)
    name, names = LAYOUTS[layout]
    f = dict(zip(names, fields))
    if text == "mean4" and "roberta2" not in f:
        raise DataFormatError(f"{path}: text='mean4' needs the four RoBERTa layers of the SDT "
                              f"layout; this file is {layout}")
    per_dialogue = ["ids", "speakers", "labels", "text", "audio"] + (
        ["visual"] if "visual" in f else []) + (["roberta2", "roberta3", "roberta4"]
                                                if text == "mean4" else [])
    for field in per_dialogue:
        if not isinstance(f[field], dict):
            raise DataFormatError(f"{path}: field {field} should be a dict keyed by dialogue id, "
                                  f"found {type(f[field]).__name__}")
    train = _id_list(f["train"], "train", path)
    test = _id_list(f["test"], "test", path)
    valid: list = []
    if "extra" in f:
        extra = f["extra"]
        ids = None
        if isinstance(extra, (list, tuple, set, frozenset, np.ndarray)):
            try:
                ids = _id_list(extra, "extra", path)
                ok = len(ids) > 0 and all(i in f["labels"] for i in ids) and not set(ids) & set(test)
            except TypeError:
                ok = False
        else:
            ok = False
        if ok:
            valid = ids
            dev = set(valid)
            train = [i for i in train if i not in dev]
        else:
            log.info("%s: trailing field is not a dev split (a collection of dialogue ids disjoint "
                     "from test); ignored", path)
    if set(train) & set(test):
        raise DataFormatError(f"{path}: fields train and test share dialogues "
                              f"{list(set(train) & set(test))[:3]}")
    if not valid:
        train, valid = validation_split(train, valid_fraction, seed)

    modalities = ("text", "audio") + (("visual",) if "visual" in f else ())
    num_speakers = 2 if name == "IEMOCAP" else MELD_SPEAKER_SLOTS
    label_names = IEMOCAP_LABELS if name == "IEMOCAP" else MELD_LABELS
    dialogues: dict = {}
    dims: dict = {}
    for vid in train + valid + test:
        for field in per_dialogue:
            if vid not in f[field]:
                raise DataFormatError(f"{path}: dialogue {vid!r} is listed in a split but missing "
                                      f"from field {field}")
        labels = np.asarray(f["labels"][vid])
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            if labels.size == 0:
                raise DataFormatError(f"{path}: dialogue {vid!r}: empty dialogue (no utterances)")
            raise DataFormatError(f"{path}: dialogue {vid!r}: field labels should be a list of "
                                  f"ints, found dtype {labels.dtype} shape {labels.shape}")
        n = labels.shape[0]
        out_of_range = (labels < 0) | (labels >= len(label_names))
        if out_of_range.any():   # before any cast to int32, which would wrap large values
            raise DataFormatError(f"{path}: dialogue {vid!r}: field labels has label "
                                  f"{labels[out_of_range][0]}, expected 0..{len(label_names) - 1}")
        for field in ("ids", "sentences"):
            value = f[field].get(vid) if isinstance(f.get(field), dict) else None
            if isinstance(value, (list, tuple, np.ndarray)) and len(value) != n:
                raise DataFormatError(f"{path}: dialogue {vid!r}: field {field} has {len(value)} "
                                      f"utterances, labels has {n}")
        if n == 0:
            raise DataFormatError(f"{path}: dialogue {vid!r}: empty dialogue (no utterances)")
        feats = {m: _feature_matrix(f[m][vid], m, vid, path) for m in modalities}
        if text == "mean4":
            layers = [feats["text"]] + [_feature_matrix(f[k][vid], k, vid, path)
                                        for k in ("roberta2", "roberta3", "roberta4")]
            if len({x.shape for x in layers}) != 1:
                raise DataFormatError(f"{path}: dialogue {vid!r}: the four RoBERTa fields have "
                                      f"different shapes {[x.shape for x in layers]}")
            feats["text"] = np.mean(layers, axis=0)
        for m, x in feats.items():
            dims.setdefault(m, x.shape[1])
        dialogue = Dialogue(id=vid, speakers=_speaker_ids(f["speakers"][vid], name, vid, path),
                            labels=labels, features=feats)
        validate_dialogue(dialogue, num_classes=len(label_names), num_speakers=num_speakers,
                          dims=dims, where=path)
        dialogues[vid] = dialogue
    return DialogueDataset(name=name, layout=layout, label_names=label_names,
                           num_speakers=num_speakers, modalities=modalities, dims=dims,
                           dialogues=dialogues,
                           splits={"train": train, "valid": valid, "test": test})
