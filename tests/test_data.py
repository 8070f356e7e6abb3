"""Feature-file loading, validation errors, the synthetic generator and `describe`."""

import dataclasses
import json
import os
import pickle

import numpy as np
import pytest

from ambjax.data import (LAYOUTS, DataFormatError, load_features, make_synthetic,
                         to_layout_fields, write_pickle)
from ambjax.data.__main__ import main as describe_main


def _assert_same(a, b, splits=("train", "valid", "test")):
    assert a.modalities == b.modalities and dict(a.dims) == dict(b.dims)
    for s in splits:
        assert a.splits[s] == b.splits[s], s
    for vid, d in a.dialogues.items():
        e = b.dialogues[vid]
        np.testing.assert_array_equal(d.labels, e.labels)
        np.testing.assert_array_equal(d.speakers, e.speakers)
        for m in a.modalities:
            np.testing.assert_array_equal(d.features[m], e.features[m])


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_round_trip_every_layout(layout, iemocap_small, meld_small, tmp_path):
    source = iemocap_small if LAYOUTS[layout][0] == "IEMOCAP" else meld_small
    path = tmp_path / f"{layout}.pkl"
    write_pickle(source, path, layout)
    loaded = load_features(path)
    assert loaded.layout == layout and loaded.name == source.name
    if layout == "dialoguernn_meld":  # no visual field, no dev split: valid re-derived from train
        assert loaded.modalities == ("text", "audio")
        assert set(loaded.splits["train"]) | set(loaded.splits["valid"]) == (
            set(source.splits["train"]) | set(source.splits["valid"]))
        assert loaded.splits["test"] == source.splits["test"]
    else:
        _assert_same(source, loaded)
    for d in loaded.dialogues.values():  # immutable
        with pytest.raises(ValueError):
            d.labels[0] = 1


def test_text_mean_of_four_layers(iemocap_small, tmp_path):
    fields = list(to_layout_fields(iemocap_small, "sdt_iemocap"))
    vid = iemocap_small.splits["test"][0]
    fields[4] = {k: v * 3 for k, v in fields[4].items()}  # roberta2 = 3 x layer 1
    path = tmp_path / "f.pkl"
    path.write_bytes(pickle.dumps(tuple(fields), protocol=2))
    mean = load_features(path, text="mean4").dialogues[vid].features["text"]
    np.testing.assert_allclose(mean, iemocap_small.dialogues[vid].features["text"] * 1.5,
                               rtol=1e-5)


def test_meld_dev_split_and_set_ids(meld_small, tmp_path):
    fields = list(to_layout_fields(meld_small, "sdt_meld"))
    dev = fields[12]
    fields[10] = set(fields[10]) | set(dev)  # train lists the dev ids too; a set, not a list
    path = tmp_path / "m.pkl"
    path.write_bytes(pickle.dumps(tuple(fields), protocol=2))
    ds = load_features(path)
    assert ds.splits["valid"] == tuple(dev)
    assert not set(ds.splits["train"]) & set(dev)
    assert list(ds.splits["train"]) == sorted(ds.splits["train"])


def test_iemocap_valid_split_is_seeded_and_never_test(iemocap_small, tmp_path):
    path = tmp_path / "i.pkl"
    write_pickle(iemocap_small, path)
    a, b, c = (load_features(path, seed=s) for s in (0, 0, 1))
    assert a.splits["valid"] == b.splits["valid"] != c.splits["valid"]
    assert not set(a.splits["valid"]) & set(a.splits["test"])
    assert len(a.splits["valid"]) == round(0.1 * (len(a.splits["train"]) + len(a.splits["valid"])))


def _corrupt(dataset, path, edit, layout=None):
    layout = layout or ("sdt_iemocap" if dataset.name == "IEMOCAP" else "sdt_meld")
    fields = list(to_layout_fields(dataset, layout))
    vid = dataset.splits["train"][-1]  # not the first dialogue read, which fixes the widths
    edit(fields, vid)
    path.write_bytes(pickle.dumps(tuple(fields), protocol=2))
    return vid


def _set(field, value):
    def edit(fields, vid):
        fields[field][vid] = value(fields[field][vid])
    return edit


BAD_CASES = {
    "tuple_length": (lambda f, v: f.pop(), r"found a tuple of 11 fields, expected 9, 10, 12 or 13"),
    "missing_from_modality": (lambda f, v: f[7].pop(v), r"missing from field audio"),
    "count_mismatch": (_set(3, lambda x: x[:-1]), r"field text has shape .* to match"),
    "width_mismatch": (_set(8, lambda x: [r[:-1] for r in x]), r"field visual has width"),
    "ragged_rows": (_set(8, lambda x: [x[0][:-1]] + list(x[1:])), r"field visual: utterance vectors"),
    "label_out_of_range": (_set(2, lambda x: [7] + x[1:]), r"field labels has label 7, expected 0..5"),
    "unknown_speaker": (_set(1, lambda x: ["X"] + x[1:]), r"unknown speaker 'X'"),
    "nan_feature": (_set(3, lambda x: [np.full_like(x[0], np.nan)] + list(x[1:])), r"NaN/inf"),
    "empty_dialogue": (lambda f, v: [f[k].__setitem__(v, []) for k in (0, 1, 2, 3, 4, 5, 6, 7, 8, 9)],
                       r"empty dialogue"),
    "speaker_count": (_set(1, lambda x: x[:-1]), r"field speakers has"),
    "split_not_ids": (lambda f, v: f.__setitem__(10, 5), r"field train should be a collection"),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_input_names_file_dialogue_field(case, iemocap_small, tmp_path):
    edit, pattern = BAD_CASES[case]
    path = tmp_path / f"{case}.pkl"
    vid = _corrupt(iemocap_small, path, edit)
    with pytest.raises(DataFormatError, match=pattern) as info:
        load_features(path)
    assert str(path) in str(info.value)
    if case not in ("tuple_length", "split_not_ids"):
        assert repr(vid) in str(info.value)


def test_meld_unknown_speaker(meld_small, tmp_path):
    path = tmp_path / "spk.pkl"
    _corrupt(meld_small, path, _set(1, lambda x: [[1, 1, 0, 0, 0, 0, 0, 0, 0]] + x[1:]))
    with pytest.raises(DataFormatError, match="not a one-hot"):
        load_features(path)


def test_truncated_and_non_pickle_files(iemocap_small, tmp_path):
    good = tmp_path / "good.pkl"
    write_pickle(iemocap_small, good)
    truncated = tmp_path / "trunc.pkl"
    truncated.write_bytes(good.read_bytes()[: os.path.getsize(good) // 2])
    text = tmp_path / "notes.pkl"
    text.write_text("this is not a pickle")
    for path in (truncated, text):
        with pytest.raises(DataFormatError, match="not a readable feature pickle"):
            load_features(path)
    with pytest.raises(DataFormatError, match="no such file"):
        load_features(tmp_path / "absent.pkl")


class _Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_restricted_unpickler_refuses_code(tmp_path):
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps((_Exploit(),) * 12))
    with pytest.raises(DataFormatError, match="refusing to load"):
        load_features(path)


def test_describe_json_and_errors(iemocap_small, tmp_path, capsys):
    path = tmp_path / "d.pkl"
    write_pickle(iemocap_small, path)
    assert describe_main(["describe", str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["layout"] == "sdt_iemocap" and info["num_classes"] == 6
    assert info["modalities"] == {"text": 12, "audio": 10, "visual": 8}
    total = sum(len(d) for d in iemocap_small.dialogues.values())
    assert sum(s["utterances"] for s in info["splits"].values()) == total
    assert info["splits"]["test"]["dialogues"] == len(iemocap_small.splits["test"])
    bad = tmp_path / "bad.pkl"
    bad.write_bytes(b"garbage")
    assert describe_main(["describe", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(bad) in err[0] and "Traceback" not in err[0]


def test_synthetic_follows_real_statistics():
    ds = make_synthetic("iemocap")
    assert dict(ds.dims) == {"text": 1024, "audio": 1582, "visual": 342}
    assert len(ds.splits["train"]) + len(ds.splits["valid"]) == 120
    assert len(ds.splits["test"]) == 31
    lengths = np.array([len(d) for d in ds.dialogues.values()])
    assert 40 < lengths.mean() < 58 and lengths.max() <= 110
    meld = make_synthetic("meld", scale=0.2, dims={"text": 8, "audio": 8, "visual": 8})
    assert max(int(d.speakers.max()) for d in meld.dialogues.values()) < 9
    counts = np.bincount(np.concatenate([d.labels for d in meld.dialogues.values()]), minlength=7)
    assert counts.argmax() == 0  # neutral dominates, as in MELD
    again = make_synthetic("meld", scale=0.2, dims={"text": 8, "audio": 8, "visual": 8})
    vid = meld.splits["test"][0]
    np.testing.assert_array_equal(meld.dialogues[vid].features["audio"],
                                  again.dialogues[vid].features["audio"])


def test_synthetic_plants_inertia_and_text_signal():
    ds = make_synthetic("iemocap", scale=0.5, dims={"text": 32, "audio": 32, "visual": 32})
    same = []
    for d in ds.dialogues.values():
        for i in range(1, len(d)):
            prev = [j for j in range(i - 1, -1, -1) if d.speakers[j] == d.speakers[i]]
            if prev:
                same.append(d.labels[prev[0]] == d.labels[i])
    prior = np.bincount(np.concatenate([d.labels for d in ds.dialogues.values()]))
    prior = prior / prior.sum()
    assert np.mean(same) > (prior ** 2).sum() + 0.2  # far above chance agreement


# --- parsed feature files kept in a store -----------------------------------------------------

def _assert_equal_datasets(a, b):
    """Equal in every field a run reads, ids of the same type, arrays read-only and of the
    same dtype."""
    assert (a.name, a.layout, a.label_names, a.num_speakers, a.modalities) == (
        b.name, b.layout, b.label_names, b.num_speakers, b.modalities)
    assert list(a.dims.items()) == list(b.dims.items())
    assert list(a.dialogues) == list(b.dialogues)
    assert [type(i) for i in a.dialogues] == [type(i) for i in b.dialogues]
    assert dict(a.splits) == dict(b.splits)
    _assert_same(a, b)
    for d, e in zip(a.dialogues.values(), b.dialogues.values()):
        for x, y in [(d.labels, e.labels), (d.speakers, e.speakers)] + [
                (d.features[m], e.features[m]) for m in a.modalities]:
            assert x.dtype == y.dtype and not y.flags.writeable
    assert a.fingerprint() == b.fingerprint()


def _counted(monkeypatch, module, *names) -> list:
    """A list that gets one entry per call of `module`'s functions `names` (which still run)."""
    calls = []
    for name in names:
        real = getattr(module, name)
        monkeypatch.setattr(module, name,
                            lambda *a, real=real, **k: calls.append(1) or real(*a, **k))
    return calls


@pytest.mark.parametrize("corpus", ["iemocap", "meld"])
def test_a_parsed_file_is_read_back_from_the_store_and_parsed_again_once_rewritten(
        corpus, iemocap_small, meld_small, tmp_path, monkeypatch):
    import ambjax.data.assemble as assemble
    from ambjax.data import DataConfig, load_dataset
    from ambjax.train.executables import ExecutableStore
    source = iemocap_small if corpus == "iemocap" else meld_small       # str / int ids
    path = tmp_path / "features.pkl"
    write_pickle(source, path)
    data = dataclasses.replace(DataConfig(), path=str(path))
    store = ExecutableStore(str(tmp_path / "store"), {"test": 1})
    parsed = load_dataset(data)
    first = load_dataset(data, store=store)             # parsed, then kept
    _assert_equal_datasets(parsed, first)
    parses = _counted(monkeypatch, assemble, "load_features")
    _assert_equal_datasets(parsed, load_dataset(data, store=store))
    assert parses == []                                  # read back, not parsed
    # the same file written again with other features (one dialogue's text moved by 1)
    vid, d = next(iter(source.dialogues.items()))
    changed = dataclasses.replace(d, features={**d.features, "text": d.features["text"] + 1})
    write_pickle(dataclasses.replace(source, dialogues={**source.dialogues, vid: changed}), path)
    again = load_dataset(data, store=store)
    assert parses == [1]
    _assert_equal_datasets(load_features(path), again)
    assert again.fingerprint() != parsed.fingerprint()
    # other loader arguments are other entries
    load_dataset(dataclasses.replace(data, valid_fraction=0.3), store=store)
    assert parses == [1, 1]


def test_a_generated_synthetic_set_is_read_back_from_the_store(tmp_path, monkeypatch):
    """The same synthetic config is generated once and read back after; another seed, size,
    width or validation share is another entry."""
    import ambjax.data.assemble as assemble
    from ambjax.data import DataConfig, load_dataset
    from ambjax.train.executables import ExecutableStore
    data = dataclasses.replace(DataConfig(), synthetic="iemocap", synthetic_scale=0.1,
                               synthetic_dims=(("text", 12), ("audio", 8), ("visual", 6)))
    store = ExecutableStore(str(tmp_path / "store"), {"test": 1})
    generated = load_dataset(data)
    _assert_equal_datasets(generated, load_dataset(data, store=store))  # generated, kept
    made = _counted(monkeypatch, assemble, "make_synthetic")
    _assert_equal_datasets(generated, load_dataset(data, store=store))
    assert made == []                                    # read back, not generated
    for change in ({"synthetic_seed": 1}, {"synthetic_scale": 0.2},
                   {"synthetic_dims": (("text", 12), ("audio", 8), ("visual", 7))},
                   {"valid_fraction": 0.3}):
        other = load_dataset(dataclasses.replace(data, **change), store=store)
        assert other.fingerprint() != generated.fingerprint() and made.pop() == 1


def test_a_damaged_or_foreign_store_entry_is_parsed_again(iemocap_small, tmp_path):
    from ambjax.data import DataConfig, load_dataset
    from ambjax.data.dataset_arrays import to_arrays

    class Store:                      # hands back what it was given, less one field
        def __init__(self):
            self.saved = None

        def load_arrays(self, name, key):
            return None if self.saved is None else {
                k: v for k, v in self.saved.items() if k != "lengths"}

        def save_arrays(self, name, key, tree):
            self.saved = tree
    path = tmp_path / "features.pkl"
    write_pickle(iemocap_small, path)
    data = dataclasses.replace(DataConfig(), path=str(path))
    store = Store()
    load_dataset(data, store=store)
    assert store.saved is not None
    _assert_equal_datasets(load_dataset(data), load_dataset(data, store=store))
    # ids that are neither all str nor all int are not cached
    mixed = dataclasses.replace(iemocap_small, dialogues={
        (k if n % 2 else n): d for n, (k, d) in enumerate(iemocap_small.dialogues.items())})
    assert to_arrays(mixed) is None
    nul = dataclasses.replace(iemocap_small, dialogues={
        f"{k}\0": d for k, d in iemocap_small.dialogues.items()}, splits={})
    assert to_arrays(nul) is None                   # numpy's strings would drop the NUL


@pytest.mark.parametrize("source", ["file", "synthetic"])
def test_a_runs_second_preparation_reads_its_data_from_the_store(
        source, iemocap_small, tmp_path, monkeypatch):
    """The runs' `prepare_run` keeps the parsed file or the generated synthetic set in the
    compilation cache folder's store (this suite's cache is on, `conftest`), so a second
    start neither parses nor generates it again."""
    import ambjax.data.assemble as assemble
    from ambjax.train.loop import prepare_run
    from experiments.configs import make_config
    path = tmp_path / "features.pkl"
    write_pickle(iemocap_small, path)
    # a synthetic seed of its own: no other test's run has kept this set
    config = make_config("tiny", [f"data.path={path}"] if source == "file"
                         else [f"data.synthetic_seed={abs(hash(str(tmp_path))) % 10**6 + 7}"])
    first = prepare_run(config, str(tmp_path / "run"))
    built = _counted(monkeypatch, assemble, "load_features", "make_synthetic")
    second = prepare_run(config, str(tmp_path / "run"))
    assert built == []
    assert first.plan["data_fingerprint"] == second.plan["data_fingerprint"]