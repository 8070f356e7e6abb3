"""Bundled synthetic datasets shaped like IEMOCAP and MELD, with planted structure.

No transcript or feature of the real corpora ships here, only published statistics of them
(dialogue-length distributions, speakers per dialogue, class priors, split sizes; taken from
the label/split files of the real corpora). Feature widths default to those of the real files
(IEMOCAP 1024/1582/342, MELD 1024/300/342).

Planted structure, so that every part of the model has something to find:
- emotional inertia: an utterance often repeats the label of the same speaker's last utterance;
- contagion: otherwise it often takes the label of the last utterance of another speaker;
- text carries a strong but noisy signal that confuses pairs of classes (e.g. hap/exc), while
  audio and visual carry weaker signals that separate those pairs (complementary modalities);
- a noise component shared by all modalities (per utterance and per dialogue), i.e. common-mode
  noise that a differential attention can cancel.
Everything is a deterministic function of the seed.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
from typing import Mapping

import numpy as np

from ambjax.errors import ConfigError
from ambjax.data.dataset import (IEMOCAP_LABELS, MELD_LABELS, Dialogue, DialogueDataset,
                                 validation_split)
from ambjax.data.loader import LAYOUTS, MELD_SPEAKER_SLOTS, fields_in_order
from ambjax.files import atomic_write

# Dialogue lengths of the 151 IEMOCAP dialogues (sorted), a published statistic.
IEMOCAP_LENGTHS = (
    8, 18, 18, 20, 23, 24, 26, 26, 26, 26, 26, 26, 26, 27, 27, 28, 28, 28, 29, 29, 30, 30, 31, 32,
    32, 33, 34, 34, 34, 34, 35, 35, 35, 36, 37, 37, 37, 37, 38, 38, 39, 39, 40, 40, 40, 41, 42, 42,
    42, 42, 43, 43, 43, 43, 43, 43, 44, 44, 44, 44, 44, 44, 44, 44, 44, 45, 45, 46, 46, 46, 47, 47,
    47, 47, 47, 47, 49, 49, 50, 50, 50, 51, 51, 51, 51, 52, 52, 52, 52, 53, 53, 53, 53, 53, 53, 53,
    53, 54, 54, 54, 54, 54, 56, 56, 57, 57, 58, 58, 58, 58, 59, 59, 59, 59, 59, 60, 60, 60, 60, 61,
    61, 61, 62, 62, 62, 63, 63, 63, 64, 64, 66, 66, 68, 69, 69, 69, 72, 74, 74, 75, 77, 78, 79, 83,
    83, 83, 84, 87, 91, 94, 110)
# MELD: number of dialogues of each length 0..33 (1,432 dialogues).
MELD_LENGTH_HISTOGRAM = (
    0, 88, 81, 78, 69, 101, 90, 89, 90, 77, 82, 79, 79, 54, 57, 55, 60, 47, 32, 38, 27, 23, 18,
    12, 5, 0, 0, 0, 0, 0, 0, 0, 0, 1)
# MELD: number of dialogues with 0..9 distinct speakers.
MELD_SPEAKER_HISTOGRAM = (0, 123, 643, 367, 171, 79, 33, 12, 3, 1)


@dataclasses.dataclass(frozen=True)
class SyntheticPreset:
    """Statistics a synthetic dataset follows. All probabilities are per utterance."""

    name: str
    label_names: tuple[str, ...]
    class_counts: tuple[int, ...]        # real label counts (priors)
    length_histogram: tuple[int, ...]    # number of dialogues of each length
    speaker_histogram: tuple[int, ...]   # number of dialogues with k distinct speakers
    num_speakers: int                    # speaker slots
    split_sizes: tuple[int, int, int]    # train, valid (0: seeded 10% of train), test dialogues
    dims: tuple[tuple[str, int], ...]
    text_pairs: tuple[int, ...]          # class -> group that text cannot split
    window: int                          # reach of inertia and contagion
    switch_prob: float = 0.8
    inertia: float = 0.45
    contagion: float = 0.2
    text_flip: float = 0.2               # share of utterances whose text points at a random class
    strength: tuple[tuple[str, float], ...] = (("text", 1.0), ("audio", 0.4), ("visual", 0.35))
    noise: float = 2.5                   # per-utterance latent noise
    distractor: float = 0.0              # per-speaker common-mode distractor (see PRESETS)
    silent: float = 0.0                  # share of utterances whose text carries no label
    shortcut: float = 0.0                # train-only text signature of every class (PRESETS)
    anchor: float = 0.0                  # share of marked utterances that alone show the label


PRESETS: dict[str, SyntheticPreset] = {
    "iemocap": SyntheticPreset(
        name="IEMOCAP", label_names=IEMOCAP_LABELS,
        class_counts=(648, 1084, 1708, 1103, 1041, 1849),
        length_histogram=tuple(np.bincount(IEMOCAP_LENGTHS).tolist()),
        speaker_histogram=(0, 0, 151), num_speakers=2, split_sizes=(120, 0, 31),
        dims=(("text", 1024), ("audio", 1582), ("visual", 342)),
        text_pairs=(0, 1, 2, 3, 0, 2), window=20),
    "meld": SyntheticPreset(
        name="MELD", label_names=MELD_LABELS,
        class_counts=(4710, 1205, 268, 683, 1743, 271, 1109),
        length_histogram=MELD_LENGTH_HISTOGRAM, speaker_histogram=MELD_SPEAKER_HISTOGRAM,
        num_speakers=MELD_SPEAKER_SLOTS, split_sizes=(1038, 114, 280),
        dims=(("text", 1024), ("audio", 300), ("visual", 342)),
        text_pairs=(0, 1, 2, 3, 4, 6, 6), window=6),
}
_LATENT = 32


# Probes: data built so that one mechanism of AMB-DSGDN should be necessary (their presets
# and what they plant: experiments/configs/probe_*.py; results: README "What each mechanism
# buys"). Both keep IEMOCAP's shape and labels (inertia, contagion) and report as IEMOCAP.
PRESETS["common_mode"] = dataclasses.replace(
    PRESETS["iemocap"],
    # text alone separates every class (no pairs, no flips), but every dialogue adds one
    # strong distractor to all its utterances: the whole text signature of a random class,
    # 1.5x to 4.5x an utterance's own signal (so no projection and no normalisation removes
    # it). A softmax map averages it into whatever it attends to; the difference of two maps
    # can cancel it.
    text_pairs=tuple(range(6)), text_flip=0.0, distractor=3.0, noise=1.5, inertia=0.15,
    contagion=0.55)
# ... and half of the utterances carry no label in their text (only the distractor and
# noise): their labels can only come from context, mostly the other speaker (contagion)
PRESETS["common_mode_silent"] = dataclasses.replace(PRESETS["common_mode"], silent=0.5)
# ... and relevance that attention scores can see: every utterance of a dialogue has the
# dialogue's label (its mood), but only "anchors" (20%) show it in their text, together with a
# marker that a sender's score can pick out; the rest carry only the distractor and noise. A
# map that selects the anchors still averages their speakers' distractors in; the difference
# of an anchor-selecting and an even map can cancel them.
PRESETS["common_mode_anchor"] = dataclasses.replace(PRESETS["common_mode"], anchor=0.2)
PRESETS["imbalance"] = dataclasses.replace(
    PRESETS["iemocap"],
    # text is strong and fast to fit but cannot split three pairs of classes (and points at
    # a random class for 10% of utterances); audio and visual are individually weak (noisy)
    # but each separates every class: the information that resolves text's confusions sits
    # in the modalities that a text-dominated model leaves under-trained.
    text_pairs=(0, 1, 2, 3, 0, 2), text_flip=0.1,
    strength=(("text", 1.6), ("audio", 0.55), ("visual", 0.5)), noise=2.5)


# ... and, in the dialogues of the train split only (so also in the validation hold-out drawn
# from it), text carries a second signature that splits every class: text fits the train
# split alone, so a fused model has no reason to learn what audio and visual add, which the
# test split (without the shortcut) needs. The greedy-learning setting pushed to a train/test
# shift of the dominant modality.
PRESETS["imbalance_shortcut"] = dataclasses.replace(PRESETS["imbalance"], shortcut=1.5)


def _speaker_sequence(rng: np.random.Generator, n: int, k: int, switch: float) -> np.ndarray:
    """Speaker slots numbered by first appearance; k distinct speakers (if n allows)."""
    k = min(k, n)
    seq = np.zeros(n, np.int32)
    for i in range(1, n):
        seen = int(seq[:i].max()) + 1
        remaining = n - i
        if seen < k and (remaining <= k - seen or rng.random() < switch):
            seq[i] = seen if (remaining <= k - seen or rng.random() < 0.5) else rng.integers(seen)
        elif rng.random() < switch and seen > 1:
            others = [s for s in range(seen) if s != seq[i - 1]]
            seq[i] = others[rng.integers(len(others))]
        else:
            seq[i] = seq[i - 1]
    return seq


def _label_sequence(rng: np.random.Generator, speakers: np.ndarray, prior: np.ndarray,
                    p: SyntheticPreset) -> np.ndarray:
    n = len(speakers)
    labels = rng.choice(len(prior), size=n, p=prior).astype(np.int32)
    for i in range(1, n):
        lo = max(0, i - p.window)
        same = [j for j in range(i - 1, lo - 1, -1) if speakers[j] == speakers[i]]
        other = [j for j in range(i - 1, lo - 1, -1) if speakers[j] != speakers[i]]
        r = rng.random()
        if r < p.inertia and same:
            labels[i] = labels[same[0]]
        elif r < p.inertia + p.contagion and other:
            labels[i] = labels[other[0]]
    return labels


def make_synthetic(preset: str = "iemocap", *, seed: int = 0, scale: float = 1.0,
                   dims: Mapping[str, int] | None = None, valid_seed: int = 0,
                   valid_fraction: float = 0.1, length: int | None = None) -> DialogueDataset:
    """Generate a synthetic dataset following `PRESETS[preset]`.

    Args:
      preset: a key of `PRESETS`: "iemocap", "meld", or the probes "common_mode",
        "common_mode_silent", "common_mode_anchor", "imbalance" and "imbalance_shortcut".
      seed: generator seed (the dataset is a deterministic function of all arguments).
      scale: fraction of the real number of dialogues per split (at least 2 train, 1 valid and
        1 test dialogue); lengths keep the real distribution.
      dims: override feature widths, e.g. {"text": 32, "audio": 24, "visual": 16} for tests.
      length: give every dialogue this many utterances instead of the real distribution (for
        scaling benchmarks).
      valid_seed, valid_fraction: seed and share of the validation hold-out from train
        (IEMOCAP has no dev split; MELD's is fixed); the loader's defaults are seed 0 and 10%,
        so a written-and-reloaded dataset with those has the same splits.

    Returns:
      A `DialogueDataset` with layout "synthetic".
    """
    if preset not in PRESETS:
        raise ConfigError(f"unknown synthetic preset {preset!r}; choose from {sorted(PRESETS)}")
    p = PRESETS[preset]
    widths = dict(p.dims)
    if dims:
        unknown = set(dims) - set(widths)
        if unknown:
            raise ConfigError(f"dims: unknown modalities {sorted(unknown)}")
        widths.update(dims)
    rng = np.random.default_rng(seed)
    n_train, n_valid, n_test = (max(m, int(round(s * scale)))
                                for s, m in zip(p.split_sizes, (2, 1 if p.split_sizes[1] else 0, 1)))
    total = n_train + n_valid + n_test
    lengths_p = np.asarray(p.length_histogram, np.float64) / sum(p.length_histogram)
    speakers_p = np.asarray(p.speaker_histogram, np.float64) / sum(p.speaker_histogram)
    prior = np.asarray(p.class_counts, np.float64) / sum(p.class_counts)
    n_classes = len(prior)

    # Latent prototypes and fixed projections into each modality's feature space.
    group_proto = rng.normal(size=(n_classes, _LATENT))
    own = {m: rng.normal(size=(n_classes, _LATENT)) for m in widths}
    project = {m: rng.normal(size=(_LATENT, d)) / np.sqrt(_LATENT) for m, d in widths.items()}
    shared_project = {m: rng.normal(size=(_LATENT, d)) / np.sqrt(_LATENT)
                      for m, d in widths.items()}
    strength = dict(p.strength)
    text_groups = np.asarray(p.text_pairs)
    shortcut_proto = rng.normal(size=(n_classes, _LATENT)) if p.shortcut else None
    marker = rng.normal(size=_LATENT) if p.anchor else None

    dialogues = {}
    ids = []
    for k in range(total):
        vid = f"Syn{k:04d}" if p.name == "IEMOCAP" else k
        n = length or int(rng.choice(len(lengths_p), p=lengths_p))
        n_spk = int(rng.choice(len(speakers_p), p=speakers_p))
        speakers = _speaker_sequence(rng, n, n_spk, p.switch_prob)
        labels = _label_sequence(rng, speakers, prior, p)
        if p.anchor:
            labels = np.full(n, rng.choice(n_classes, p=prior), np.int32)
            anchors = rng.random(n) < p.anchor
            anchors[rng.integers(n)] = True
        common = rng.normal(size=(n, _LATENT)) * 0.8 + rng.normal(size=(1, _LATENT)) * 0.5
        if p.distractor:    # per speaker: a random class's whole text signature, at a
            c = rng.integers(n_classes, size=n_spk)     # random strength
            weight = p.distractor * rng.uniform(0.5, 1.5, size=(n_spk, 1))
            distractor = (weight * (group_proto[text_groups[c]] + 0.3 * own["text"][c]))[
                speakers]
        else:
            distractor = 0.0
        feats = {}
        for m, d in widths.items():
            if m == "text":
                shown = np.where(rng.random(n) < p.text_flip, rng.integers(n_classes, size=n),
                                 labels)
                latent = group_proto[text_groups[shown]] + 0.3 * own[m][shown]
                if p.silent:
                    latent = latent * (rng.random(n) >= p.silent)[:, None]
                if p.shortcut and k < n_train:
                    latent = latent + p.shortcut * shortcut_proto[labels]
                if p.anchor:
                    latent = (latent + marker) * anchors[:, None]
                latent = latent + distractor
            else:
                latent = own[m][labels]
            latent = strength[m] * latent + p.noise * rng.normal(size=(n, _LATENT))
            x = latent @ project[m] + common @ shared_project[m]
            feats[m] = (x + 0.3 * rng.normal(size=(n, d))).astype(np.float32)
        dialogues[vid] = Dialogue(id=vid, speakers=speakers, labels=labels, features=feats)
        ids.append(vid)
    train, valid, test = ids[:n_train], ids[n_train:n_train + n_valid], ids[n_train + n_valid:]
    if not valid:
        train, valid = validation_split(train, valid_fraction, valid_seed)
    return DialogueDataset(name=p.name, layout="synthetic", label_names=p.label_names,
                           num_speakers=p.num_speakers, modalities=tuple(widths), dims=widths,
                           dialogues=dialogues,
                           splits={"train": train, "valid": valid, "test": test})


def default_layout(dataset: DialogueDataset) -> str:
    """The AMB-DSGDN/SDT layout for the dataset's corpus."""
    return "sdt_iemocap" if dataset.name == "IEMOCAP" else "sdt_meld"


def to_layout_fields(dataset: DialogueDataset, layout: str) -> tuple:
    """The dataset as the tuple of fields of a real feature file (see `ambjax.data.LAYOUTS`).

    IEMOCAP-layout files get 'M'/'F' speakers, MELD-layout files one-hot speaker vectors. Layouts
    without a dev field fold the valid split back into train (the loader then re-derives it).
    """
    if layout not in LAYOUTS:
        raise ConfigError(f"unknown layout {layout!r}; choose from {sorted(LAYOUTS)}")
    corpus, names = LAYOUTS[layout]
    if corpus != dataset.name:
        raise ConfigError(f"layout {layout} holds {corpus} data, the dataset is {dataset.name}")
    needed = {"text", "audio", "visual"} & set(names)
    if not needed <= set(dataset.modalities):
        raise ConfigError(f"layout {layout} needs modalities {sorted(needed)}")
    ds = dataset.dialogues
    spk = {}
    for vid, d in ds.items():
        if corpus == "IEMOCAP":
            spk[vid] = ["M" if s == 0 else "F" for s in d.speakers]
        else:
            spk[vid] = np.eye(MELD_SPEAKER_SLOTS, dtype=np.int64)[d.speakers].tolist()
    has_dev = "extra" in names
    train = list(dataset.splits["train"]) + ([] if has_dev else list(dataset.splits["valid"]))
    if not has_dev:
        order = {vid: k for k, vid in enumerate(ds)}
        train.sort(key=order.__getitem__)
    values = {
        "ids": {vid: [f"{vid}_{k}" for k in range(len(d))] for vid, d in ds.items()},
        "speakers": spk,
        "labels": {vid: d.labels.tolist() for vid, d in ds.items()},
        "sentences": {vid: [f"utterance {k}" for k in range(len(d))] for vid, d in ds.items()},
        "train": train,
        "test": list(dataset.splits["test"]),
        "extra": list(dataset.splits["valid"]),
        "sentiment": {vid: [0] * len(d) for vid, d in ds.items()},
    }
    for m in needed:
        values[m] = {vid: d.features[m] for vid, d in ds.items()}
    for k in (2, 3, 4):
        values[f"roberta{k}"] = {vid: d.features["text"] for vid, d in ds.items()}
    return fields_in_order(layout, values)


def write_pickle(dataset: DialogueDataset, path: str | os.PathLike,
                 layout: str | None = None) -> str:
    """Write `dataset` as a real-layout feature pickle (default: the SDT layout of its corpus).

    Per-utterance features are written as lists of float32 vectors, as the released files hold
    them. The file is written to a temporary name and renamed, so it is never half-written.
    Returns the layout written.
    """
    layout = layout or default_layout(dataset)
    fields = list(to_layout_fields(dataset, layout))
    names = LAYOUTS[layout][1]
    for i, n in enumerate(names):
        if n in ("text", "audio", "visual") or n.startswith("roberta"):
            fields[i] = {vid: list(x) for vid, x in fields[i].items()}
    atomic_write(path, pickle.dumps(tuple(fields), protocol=2))
    return layout

