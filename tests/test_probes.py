"""The probe presets plant what their docstrings say, and change nothing of the bundled data."""

import numpy as np

from ambjax.data import make_synthetic
from ambjax.data.assemble import load_dataset
from experiments.configs import make_config

DIMS = {"text": 64, "audio": 16, "visual": 16}


def _speaker_means(data):
    """Per (dialogue, speaker): the mean text feature of its utterances, minus the mean of the
    class prototypes' contributions (approximately: the per-label mean over the whole set)."""
    feats = np.concatenate([d.features["text"] for d in data.dialogues.values()])
    labels = np.concatenate([d.labels for d in data.dialogues.values()])
    by_label = {c: feats[labels == c].mean(0) for c in np.unique(labels)}
    means = []
    for d in data.dialogues.values():
        residual = d.features["text"] - np.stack([by_label[c] for c in d.labels])
        for s in np.unique(d.speakers):
            if (d.speakers == s).sum() >= 4:
                means.append(residual[d.speakers == s].mean(0))
    return np.linalg.norm(np.stack(means), axis=1).mean()


def test_common_mode_probe_plants_a_shared_per_speaker_component():
    plain = make_synthetic("iemocap", scale=0.2, dims=DIMS)
    probe = make_synthetic("common_mode", scale=0.2, dims=DIMS)
    # what a speaker's utterances share beyond their labels: several times the bundled data's
    assert _speaker_means(probe) > 3 * _speaker_means(plain)


def test_imbalance_probe_makes_text_dominant_and_the_others_complementary():
    plain = make_synthetic("iemocap", scale=0.2, dims=DIMS)
    probe = make_synthetic("imbalance", scale=0.2, dims=DIMS)

    def separation(data, m):
        """Between-class over within-class variance of modality m (a Fisher ratio)."""
        x = np.concatenate([d.features[m] for d in data.dialogues.values()])
        y = np.concatenate([d.labels for d in data.dialogues.values()])
        centre = x.mean(0)
        between = sum((y == c).sum() * np.sum((x[y == c].mean(0) - centre) ** 2)
                      for c in np.unique(y))
        within = sum(np.sum((x[y == c] - x[y == c].mean(0)) ** 2) for c in np.unique(y))
        return between / within

    assert separation(probe, "text") > 1.5 * separation(plain, "text")
    for m in ("audio", "visual"):
        assert separation(probe, m) > separation(plain, m)
        assert separation(probe, m) < separation(probe, "text") / 3


def test_probe_presets_and_the_main_jobs_validation_split():
    for name in ("probe_common_mode", "probe_imbalance"):
        config = make_config(name)
        assert config.data.synthetic in ("common_mode", "imbalance")
    common = make_config("probe_common_mode")
    assert common.data.modalities == ("text",)
    # the main job validates on 30 of the 120 training dialogues (a quarter)
    data = load_dataset(make_config("synthetic", ["data.synthetic_dims=text:8,audio:8,visual:8"]
                                    ).data)
    assert len(data.splits["valid"]) == 30 and len(data.splits["train"]) == 90


def test_shortcut_probe_splits_text_pairs_on_train_only():
    """imbalance_shortcut: text separates the classes it pairs up on the train split (and its
    validation hold-out) but not on test; every other modality and the labels are those of a
    dataset generated the same way."""
    data = make_synthetic("imbalance_shortcut", scale=0.3, dims=DIMS)

    def pair_gap(split):
        x = np.concatenate([d.features["text"] for d in data.split(split)])
        y = np.concatenate([d.labels for d in data.split(split)])
        # classes 0 and 4 share text's group in the imbalance probe
        within = np.sqrt(x[(y == 0) | (y == 4)].var(0).sum())
        return np.linalg.norm(x[y == 0].mean(0) - x[y == 4].mean(0)) / within

    assert pair_gap("train") > 3 * pair_gap("test")
    assert pair_gap("valid") > 3 * pair_gap("test")


def test_anchor_probe_gives_each_dialogue_one_label_shown_by_few_utterances(monkeypatch):
    """`common_mode_anchor`: a dialogue's utterances share its label, and only the anchors
    (a fifth) show it: with every utterance an anchor (same generator draws), the text of
    about four fifths of the utterances changes and nothing else does."""
    import dataclasses
    from ambjax.data.synthetic import PRESETS
    probe = make_synthetic("common_mode_anchor", scale=0.3, dims=DIMS)
    assert all(len(set(d.labels.tolist())) == 1 for d in probe.dialogues.values())
    assert len({int(d.labels[0]) for d in probe.dialogues.values()}) > 2
    monkeypatch.setitem(PRESETS, "all_anchors",
                        dataclasses.replace(PRESETS["common_mode_anchor"], anchor=1.0))
    shown = make_synthetic("all_anchors", scale=0.3, dims=DIMS)
    changed = []
    for k, d in probe.dialogues.items():
        e = shown.dialogues[k]
        np.testing.assert_array_equal(d.labels, e.labels)
        np.testing.assert_array_equal(d.features["audio"], e.features["audio"])
        changed += (np.abs(d.features["text"] - e.features["text"]).max(1) > 1e-4).tolist()
    assert 0.7 < np.mean(changed) < 0.9
