import json
import sys

import numpy as np
import pytest

from mmerkit.data import csd as csd_mod
from mmerkit.data.catalogue import CONVERTERS
from mmerkit.data.csd import (
    EMOTIONS,
    align_to_intervals,
    convert_csd,
    folds_from_labels_csv,
    read_folds,
)
from mmerkit.errors import DataError

h5py = pytest.importorskip("h5py")

DIMS = {"text": 4, "visual": 3, "audio": 2}


def write_csd(path, root_name, videos):
    """A computational sequence: <root>/data/<vid>/{features, intervals} and <root>/metadata."""
    with h5py.File(path, "w") as f:
        g = f.create_group(root_name)
        d = g.create_group("data")
        for vid, (x, iv) in videos.items():
            v = d.create_group(vid)
            v.create_dataset("features", data=x)
            v.create_dataset("intervals", data=iv)
        meta = g.create_group("metadata")
        meta.attrs["root name"] = root_name


def make_corpus(root, seed=0, inf_in_audio=False):
    """5 videos, 2 segments each; words 0.5 s long; visual at 10 Hz, audio at 20 Hz."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    text, visual, audio, labels = {}, {}, {}, {}
    for k in range(5):
        vid = f"vid{k}"
        n_words = 12
        w_iv = np.stack([np.arange(n_words) * 0.5, np.arange(n_words) * 0.5 + 0.5], 1)
        text[vid] = (rng.normal(size=(n_words, DIMS["text"])).astype(np.float32), w_iv)
        v_t = np.arange(0, 6, 0.1)
        visual[vid] = (rng.normal(size=(len(v_t), DIMS["visual"])), np.stack([v_t, v_t + 0.1], 1))
        a_t = np.arange(0, 6, 0.05)
        a = rng.normal(size=(len(a_t), DIMS["audio"]))
        if inf_in_audio and k == 2:
            a[3, 1] = -np.inf
        audio[vid] = (a, np.stack([a_t, a_t + 0.05], 1))
        lab = np.zeros((2, 7))
        lab[:, 0] = rng.normal(size=2)  # sentiment
        lab[0, 1 + k % 6] = 1.3
        lab[1, 1 + (k + 2) % 6] = 0.6
        lab[1, 1] = 0.3
        labels[vid] = (lab, np.array([[0.0, 3.0], [3.0, 6.0]]))
    del visual["vid4"]  # a video without FACET features
    write_csd(root / "CMU_MOSEI_TimestampedWordVectors.csd", "glove_vectors", text)
    write_csd(root / "CMU_MOSEI_VisualFacet42.csd", "FACET 4.2", visual)
    write_csd(root / "CMU_MOSEI_COVAREP.csd", "COVAREP", audio)
    write_csd(root / "CMU_MOSEI_Labels.csd", "All Labels", labels)
    return text, visual, audio, labels


FOLDS = {"train": ["vid0", "vid1", "vid4"], "valid": ["vid2"], "test": ["vid3"]}


def brute_force(ref, iv, x):
    out = np.zeros((len(ref), x.shape[1]))
    for i, (a, b) in enumerate(ref):
        ov = np.minimum(b, iv[:, 1]) - np.maximum(a, iv[:, 0])
        w = np.where(ov >= 0, np.maximum(ov, 0) + 1e-9, 0)
        if w.sum() > 0:
            out[i] = (w[:, None] * x).sum(0) / w.sum()
    return out


def test_alignment_matches_brute_force():
    rng = np.random.default_rng(3)
    starts = np.sort(rng.uniform(0, 10, 40))
    iv = np.stack([starts, starts + rng.uniform(0, 1.5, 40)], 1)[rng.permutation(40)]  # overlapping, unsorted
    x = rng.normal(size=(40, 3))
    w0 = np.sort(rng.uniform(-1, 12, 15))
    ref = np.stack([w0, w0 + rng.uniform(0, 0.8, 15)], 1)
    ref[4, 1] = ref[4, 0]  # a zero-length word
    got, covered = align_to_intervals(ref, iv, x)
    np.testing.assert_allclose(got, brute_force(ref, iv, x), rtol=1e-5, atol=1e-6)
    assert covered.tolist() == (np.abs(brute_force(ref, iv, np.ones((40, 1))))[:, 0] > 0).tolist()


def test_convert_aligned_store(tmp_path):
    text, visual, audio, labels = make_corpus(tmp_path / "csd")
    with pytest.warns(UserWarning, match="no_modality"):
        store = convert_csd(tmp_path / "csd", tmp_path / "s", folds=FOLDS)
    assert store.labels == EMOTIONS and store.modalities == DIMS and store.aligned
    assert store.meta["source"].startswith("mosei-aligned:")
    assert store.splits == {"train": 6, "valid": 2, "test": 2}
    tr = store.split("train")
    assert tr.ids[:2] == ["vid0[0]", "vid0[1]"]
    # segment [0, 3] holds words 0..5 (midpoints 0.25..2.75)
    assert tr.lengths["text"][0] == 6
    np.testing.assert_allclose(tr.features["text"][0, :6], text["vid0"][0][:6])
    vx, viv = visual["vid0"]
    np.testing.assert_allclose(tr.features["visual"][0, :6], brute_force(text["vid0"][1][:6], viv, vx), rtol=1e-5)
    ax, aiv = audio["vid0"]
    np.testing.assert_allclose(tr.features["audio"][1, :6], brute_force(text["vid0"][1][6:], aiv, ax), rtol=1e-5)
    # labels: intensity > 0; segment 1 has 'happy' at 0.3 plus another emotion
    assert tr.labels[0].tolist() == (labels["vid0"][0][0, 1:] > 0).astype(int).tolist()
    assert tr.labels[1].tolist() == (labels["vid0"][0][1, 1:] > 0).astype(int).tolist()
    vid4 = [i for i, s in enumerate(tr.ids) if s.startswith("vid4")]
    assert tr.lengths["visual"][vid4].tolist() == [0, 0] and (tr.lengths["audio"][vid4] > 0).all()
    assert CONVERTERS.entry("csd").info["description"]


def test_options_folds_files_and_threshold(tmp_path):
    make_corpus(tmp_path / "csd")
    (tmp_path / "folds.txt").write_text("# split video\ntrain vid0\ntrain vid1\ndev vid2\ntest vid3\n")
    s = CONVERTERS.get("csd")(tmp_path / "csd", tmp_path / "a", folds=tmp_path / "folds.txt", max_len=4,
                          truncate="tail", threshold=0.5)
    tr = s.split("train")
    assert tr.features["text"].shape[1] == 4 and s.splits == {"train": 4, "valid": 2, "test": 2}
    assert tr.labels[1].sum() == 1  # the 0.3 'happy' is below the threshold
    (tmp_path / "folds.json").write_text(json.dumps({"train": ["vid0[0]", "vid1"], "valid": ["vid2"],
                                                     "test": ["vid3[1]"]}))
    s = convert_csd(tmp_path / "csd", tmp_path / "b", folds=tmp_path / "folds.json")
    assert s.split("train").ids == ["vid0[0]", "vid1[0]", "vid1[1]"] and s.split("test").ids == ["vid3[1]"]


@pytest.mark.filterwarnings("ignore:.csd conversion")
def test_nonfinite_audio(tmp_path):
    make_corpus(tmp_path / "csd", inf_in_audio=True)
    with pytest.raises(DataError, match=r"CMU_MOSEI_COVAREP.csd, COVAREP/data/vid2/features has 1 NaN/inf"):
        convert_csd(tmp_path / "csd", tmp_path / "s", folds=FOLDS)
    assert not (tmp_path / "s").exists()
    with pytest.warns(UserWarning, match="set 1 NaN/inf"):
        s = convert_csd(tmp_path / "csd", tmp_path / "s", folds=FOLDS, nan_policy="zero")
    assert np.isfinite(s.split("valid").features["audio"]).all()


def test_folds_and_errors(tmp_path):
    csv = tmp_path / "labels.csv"
    csv.write_text(",file,index,start,end,label2a,label2b,label6,label7,split\n"
                   "0,a,0,0,1,1,1,0,1,0\n1,a,1,1,2,1,1,0,1,0\n2,b,0,0,1,1,1,0,1,1\n"
                   "3,c,0,0,1,1,1,0,1,2\n4,d,0,0,1,1,1,0,1,3\n")
    assert folds_from_labels_csv(csv) == {"train": ["a"], "valid": ["b"], "test": ["c"]}
    assert folds_from_labels_csv(csv, level="segment")["train"] == ["a[0]", "a[1]"]
    with pytest.raises(DataError, match="needs folds"):
        read_folds(None)
    with pytest.raises(DataError, match=r"no ids for split\(s\) \['test'\]"):
        read_folds({"train": ["a"], "valid": ["b"]})
    with pytest.raises(DataError, match=r"'a' is in both 'train' and 'test'"):
        read_folds({"train": ["a"], "valid": ["b"], "test": ["a"]})
    (tmp_path / "f.txt").write_text("train a b\n")
    with pytest.raises(DataError, match=r"f.txt, line 1: expected '<split> <video_id>'"):
        read_folds(tmp_path / "f.txt")
    make_corpus(tmp_path / "csd")
    (tmp_path / "csd" / "CMU_MOSEI_COVAREP.csd").write_bytes(b"not hdf5")
    with pytest.raises(DataError, match=r"CMU_MOSEI_COVAREP.csd is not a readable HDF5"):
        convert_csd(tmp_path / "csd", tmp_path / "s", folds=FOLDS)
    with pytest.raises(DataError, match=r"nope.csd is missing \(labels"):
        convert_csd(tmp_path / "csd", tmp_path / "s", folds=FOLDS, labels_from="nope.csd",
                    audio="CMU_MOSEI_VisualFacet42.csd")
    with pytest.raises(DataError, match="no labelled segment"):
        convert_csd(tmp_path / "csd", tmp_path / "s", audio="CMU_MOSEI_VisualFacet42.csd",
                    folds={"train": ["vid0"], "valid": ["vid1"], "test": ["other"]})
    assert not (tmp_path / "s").exists()


def test_missing_h5py_message(monkeypatch):
    monkeypatch.setitem(sys.modules, "h5py", None)
    with pytest.raises(DataError, match=r"pip install 'mmerkit\[csd\]'"):
        csd_mod._h5py()


@pytest.mark.filterwarnings("ignore:.csd conversion")
def test_empty_label_segments(tmp_path):
    make_corpus(tmp_path / "csd")
    with h5py.File(tmp_path / "csd" / "CMU_MOSEI_Labels.csd", "r+") as f:
        f["All Labels/data/vid0/features"][0, 1:] = 0.0
    with pytest.warns(UserWarning, match="dropped 1 segments with no emotion"):
        s = convert_csd(tmp_path / "csd", tmp_path / "a", folds=FOLDS)
    assert "vid0[0]" not in s.split("train").ids
    s = convert_csd(tmp_path / "csd", tmp_path / "b", folds=FOLDS, empty_labels="allow")
    assert s.split("train").ids[0] == "vid0[0]" and s.split("train").labels[0].sum() == 0
    with pytest.raises(DataError, match="empty label set"):
        convert_csd(tmp_path / "csd", tmp_path / "c", folds=FOLDS, empty_labels="reject")
