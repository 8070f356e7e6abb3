"""A loaded dataset as a tree of plain arrays and back, for a cache of parsed or generated datasets.

Parsing a release-size feature pickle is a large part of a warm start on real data: the
release-layout IEMOCAP file that `benchmarks.versus_release` writes (273 MB) takes 3.3-4.6 s on
a 2-core AMD EPYC (the safety scan of its opcodes ~1.1 s, unpickling ~1.6 s, the dialogue
checks), against ~0.03 s to read the dataset's 88 MB of arrays back as `.npy` data.
`to_arrays` turns a `DialogueDataset` into nested dicts of numpy arrays (what
`ambjax.train.executables.ExecutableStore.save_arrays` keeps: no pickle, no code) and
`from_arrays` rebuilds an equal dataset; `file_identity` names a file's current content, so
that a file written again is parsed again. `ambjax.data.assemble.load_dataset` uses them
when given a store (for generated synthetic sets too).

Tree layout (U = number of utterances of all dialogues in file order, G = dialogues):
  "features": {modality: float32 [U, D_m]}, "speakers", "labels": int32 [U],
  "lengths": int64 [G], "ids": str [G] or int64 [G],
  "splits": {split: int64 [n] positions of its dialogues among the G},
  "meta": {"name", "layout": str [], "label_names", "modalities", "dims": str [k],
           "num_speakers": int64 []}.
"""

from __future__ import annotations

import hashlib
import os

import numpy as np

from ambjax.data.dataset import Dialogue, DialogueDataset

_SAMPLE = 1 << 16                     # bytes of each sample `file_identity` hashes


def file_identity(path: str | os.PathLike) -> list:
    """What tells this file's content apart from any earlier one at the same path: its real
    path, device, inode, size, modification and change times (the change time moves with
    every write and cannot be set back), and a hash of three 64 kB samples of its bytes (the
    start, the middle and the end: two writes within one tick of the file system's clock)."""
    real = os.path.realpath(path)
    digest = hashlib.sha256()
    with open(real, "rb") as f:
        st = os.fstat(f.fileno())
        for offset in sorted({0, max(0, st.st_size // 2 - _SAMPLE), max(0, st.st_size - _SAMPLE)}):
            f.seek(offset)
            digest.update(f.read(_SAMPLE))
    return [real, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns,
            digest.hexdigest()]


def storable_ids(ids) -> bool:
    """Whether `to_arrays` keeps these dialogue ids: all `str` (none ending in a NUL
    character, which numpy's strings drop) or all `int`."""
    kinds = {type(i) for i in ids}
    return kinds in ({str}, {int}) and not (kinds == {str} and any(i.endswith("\0")
                                                                    for i in ids))


def to_arrays(dataset: DialogueDataset, *, features: bool = True) -> dict | None:
    """The tree of arrays (module docstring) that `from_arrays` turns back into `dataset`; None
    when its dialogue ids are not all `str` or all `int`, or a `str` id ends in a NUL
    character (which numpy's strings drop): such a dataset is not cached. `features=False`:
    each modality's features as an empty float32 [0, D_m] array, the dataset's shapes without
    its values (not a tree `from_arrays` reads until they are filled in)."""
    ids = list(dataset.dialogues)
    if not storable_ids(ids):
        return None
    kinds = {type(i) for i in ids}
    position = {vid: k for k, vid in enumerate(ids)}
    dialogues = list(dataset.dialogues.values())

    def joined(get, dtype, width=None):
        parts = [get(d) for d in dialogues]
        return (np.concatenate(parts) if parts else np.zeros((0,) if width is None
                                                             else (0, width), dtype))
    return {
        "features": {m: joined(lambda d, m=m: d.features[m], np.float32, dataset.dims[m])
                     if features else np.zeros((0, dataset.dims[m]), np.float32)
                     for m in dataset.dims},
        "speakers": joined(lambda d: d.speakers, np.int32),
        "labels": joined(lambda d: d.labels, np.int32),
        "lengths": np.asarray([len(d) for d in dialogues], np.int64),
        "ids": np.asarray(ids, str if kinds == {str} else np.int64),
        "splits": {s: np.asarray([position[v] for v in vids], np.int64)
                   for s, vids in dataset.splits.items()},
        "meta": {"name": np.asarray(dataset.name), "layout": np.asarray(dataset.layout),
                 "label_names": np.asarray(dataset.label_names, str),
                 "modalities": np.asarray(dataset.modalities, str),
                 "dims": np.asarray(list(dataset.dims), str),
                 "num_speakers": np.asarray(dataset.num_speakers, np.int64)},
    }


def from_arrays(tree: dict) -> DialogueDataset:
    """The dataset `to_arrays` was given (equal ids, splits, arrays and metadata).

    Raises:
      KeyError, ValueError, IndexError, TypeError: `tree` is not such a tree (a damaged
        cache entry).
    """
    meta = tree["meta"]
    ids = [str(i) if tree["ids"].dtype.kind == "U" else int(i) for i in tree["ids"]]
    lengths = tree["lengths"]
    if len(ids) != len(lengths):
        raise ValueError("ids and lengths differ in number")
    ends = np.cumsum(lengths)
    total = int(ends[-1]) if len(ends) else 0
    dims = [str(m) for m in meta["dims"]]
    columns = {"speakers": tree["speakers"], "labels": tree["labels"],
               **{m: tree["features"][m] for m in dims}}
    if any(len(x) != total for x in columns.values()):
        raise ValueError("arrays do not hold the dialogues' utterances")
    dialogues = {}
    for vid, end, n in zip(ids, ends.tolist(), lengths.tolist()):
        rows = slice(end - n, end)
        dialogues[vid] = Dialogue(id=vid, speakers=tree["speakers"][rows],
                                  labels=tree["labels"][rows],
                                  features={m: tree["features"][m][rows] for m in dims})
    return DialogueDataset(
        name=str(meta["name"]), layout=str(meta["layout"]),
        label_names=tuple(str(x) for x in meta["label_names"]),
        num_speakers=int(meta["num_speakers"]),
        modalities=tuple(str(x) for x in meta["modalities"]),
        dims={m: int(tree["features"][m].shape[1]) for m in dims},
        dialogues=dialogues,
        splits={s: tuple(ids[k] for k in positions.tolist())
                for s, positions in tree["splits"].items()})
