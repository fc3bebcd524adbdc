import json

import numpy as np
import pytest

from mmerkit.data.catalogue import CONVERTERS
from mmerkit.data.custom import (
    convert_custom,
    from_arrays,
    from_manifest,
    from_npz,
)
from mmerkit.errors import DataError

SPLIT = ["train"] * 4 + ["valid"] * 2 + ["test"] * 2


def test_from_arrays_shapes_lengths_and_labels(tmp_path):
    rng = np.random.default_rng(0)
    seq = [rng.normal(size=(t, 3)) for t in (2, 5, 1, 4, 3, 2, 6, 1)]
    seq[2] = None  # missing for sample 2
    vec = rng.normal(size=(8, 7)).astype(np.float32)
    y = [["joy"], ["anger", "joy"], ["sad"], ["joy"], ["anger"], ["sad"], ["joy"], ["sad", "anger"]]
    s = from_arrays({"audio": seq, "text": vec}, y, SPLIT, tmp_path / "s", ids=[f"u{i}" for i in range(8)])
    assert s.labels == ["anger", "joy", "sad"] and s.modalities == {"audio": 3, "text": 7}
    assert s.splits == {"train": 4, "valid": 2, "test": 2} and not s.aligned
    tr = s.split("train")
    assert tr.lengths["audio"].tolist() == [2, 5, 0, 4] and tr.lengths["text"].tolist() == [1, 1, 1, 1]
    np.testing.assert_allclose(tr.features["audio"][1, :5], seq[1], rtol=1e-6)
    assert tr.labels[1].tolist() == [1, 1, 0] and s.split("test").ids == ["u6", "u7"]
    # (N, T, D) with lengths, a 0/1 matrix, truncation from the tail
    x = np.arange(8 * 5 * 2, dtype=np.float32).reshape(8, 5, 2)
    lens = np.array([5, 3, 5, 1, 2, 5, 4, 5])
    m = np.eye(8, 2, dtype=np.uint8)
    m[2:, 1] = 1
    s2 = from_arrays({"v": x}, m, SPLIT, tmp_path / "s2", label_names=["a", "b"], lengths={"v": lens},
                     max_len=2, truncate="tail")
    t2 = s2.split("train")
    assert t2.lengths["v"].tolist() == [2, 2, 2, 1] and s2.aligned
    np.testing.assert_array_equal(t2.features["v"][1], x[1, 1:3])  # the last 2 of 3 valid steps
    np.testing.assert_array_equal(t2.features["v"][3], [x[3, 0], [0, 0]])


def test_from_arrays_errors(tmp_path):
    x = np.ones((8, 2), np.float32)
    y = [["a"]] * 8
    with pytest.raises(DataError, match=r"sample 3 has split 'training'"):
        from_arrays({"v": x}, y, SPLIT[:3] + ["training"] + SPLIT[4:], tmp_path / "s")
    with pytest.raises(DataError, match=r"no sample in split\(s\) \['test'\]"):
        from_arrays({"v": x}, y, ["train"] * 6 + ["dev"] * 2, tmp_path / "s")
    with pytest.raises(DataError, match=r"sample 5 \(id 'i5'\) has label 'b', which is not in label_names"):
        from_arrays({"v": x}, y[:5] + [["b"]] + y[6:], SPLIT, tmp_path / "s", label_names=["a"],
                    ids=[f"i{i}" for i in range(8)])
    with pytest.raises(DataError, match=r"id 'k' appears twice \(sample 0 and sample 7\)"):
        from_arrays({"v": x}, y, SPLIT, tmp_path / "s", ids=["k"] + [str(i) for i in range(6)] + ["k"])
    with pytest.raises(DataError, match=r"sample 2, modality 'v' is 3-d but earlier samples are 2-d"):
        from_arrays({"v": [np.ones(2), np.ones(2), np.ones(3)] + [np.ones(2)] * 5}, y, SPLIT, tmp_path / "s")
    with pytest.raises(DataError, match="pass label_names"):
        from_arrays({"v": x}, np.ones((8, 1)), SPLIT, tmp_path / "s")
    assert not (tmp_path / "s").exists()


def npz_dict(n=10, seed=0):
    rng = np.random.default_rng(seed)
    split = np.array(["train"] * 6 + ["valid"] * 2 + ["test"] * 2)
    y = (rng.random((n, 3)) < 0.5).astype(np.uint8)
    y[y.sum(1) == 0, 0] = 1
    return {"audio": rng.normal(size=(n, 4, 5)).astype(np.float32), "audio_len": rng.integers(0, 5, n),
            "text": rng.normal(size=(n, 6)).astype(np.float32), "labels": y,
            "label_names": np.array(["x", "y", "z"]), "split": split, "ids": np.array([f"id{i}" for i in range(n)])}


def test_npz_round_trip_and_errors(tmp_path):
    d = npz_dict()
    np.savez(tmp_path / "f.npz", **d)
    s = CONVERTERS.get("custom")(tmp_path / "f.npz", tmp_path / "s")
    assert s.labels == ["x", "y", "z"] and s.modalities == {"audio": 5, "text": 6}
    assert s.split("train").lengths["audio"].tolist() == d["audio_len"][:6].tolist()
    assert s.split("test").ids == ["id8", "id9"] and s.meta["source"] == "custom:f.npz"
    np.testing.assert_array_equal(s.split("valid").labels, d["labels"][6:8])
    assert CONVERTERS.entry("custom").info["description"]

    def bad(name, match, **change):
        dd = {**npz_dict(), **change}
        dd = {k: v for k, v in dd.items() if v is not None}
        np.savez(tmp_path / f"{name}.npz", **dd)
        with pytest.raises(DataError, match=match):
            from_npz(tmp_path / f"{name}.npz", tmp_path / "bad")

    bad("nosplit", r"nosplit.npz has no 'split' array", split=None)
    bad("orphan", r"orphan.npz: \['video_len'\] have no matching modality", video_len=np.ones(10))
    bad("splitval", r"splitval.npz: sample 9 \(id 'id9'\) has split 'tst'",
        split=np.array(["train"] * 6 + ["valid"] * 2 + ["test", "tst"]))
    bad("dup", r"dup.npz: id 'id1' appears twice", ids=np.array(["id1"] * 10))
    bad("lab", r"labels have shape \(10, 2\), expected \(10, 3\)", labels=np.ones((10, 2), np.uint8))
    bad("len", r"audio_len 9, outside \[0, 4\]", audio_len=np.full(10, 9))
    np.savez(tmp_path / "obj.npz", **{**npz_dict(), "ids": np.array([1, "a"] * 5, dtype=object)})
    with pytest.raises(DataError, match="without pickle"):
        from_npz(tmp_path / "obj.npz", tmp_path / "bad")
    nan = npz_dict()
    nan["text"][7, 2] = np.nan
    np.savez(tmp_path / "nan.npz", **nan)
    with pytest.raises(DataError, match=r"split 'valid', modality 'text', sample 1 \(id 'id7'\) contains NaN"):
        from_npz(tmp_path / "nan.npz", tmp_path / "bad")
    assert not (tmp_path / "bad").exists() and not list(tmp_path.glob(".bad.tmp-*"))
    with pytest.raises(DataError, match="must be an .npz or a .csv/.jsonl"):
        convert_custom(tmp_path / "f.txt", tmp_path / "bad")


def write_npys(root, n=8, seed=0):
    rng = np.random.default_rng(seed)
    (root / "feats").mkdir(parents=True)
    for i in range(n):
        np.save(root / "feats" / f"a{i}.npy", rng.normal(size=(i + 1, 3)).astype(np.float32))
        np.save(root / "feats" / f"t{i}.npy", rng.normal(size=(5,)).astype(np.float32))


def csv_manifest(root, rows=None):
    rows = rows or [(f"s{i}", SPLIT[i], "joy;anger" if i % 2 else "sad", f"feats/a{i}.npy",
                     "" if i == 3 else f"feats/t{i}.npy") for i in range(8)]
    text = "id,split,labels,audio,text\n" + "".join(",".join(r) + "\n" for r in rows)
    (root / "m.csv").write_text(text)
    return root / "m.csv", rows


def test_csv_and_jsonl_manifests(tmp_path):
    write_npys(tmp_path)
    path, _ = csv_manifest(tmp_path)
    s = convert_custom(path, tmp_path / "s")
    assert s.labels == ["anger", "joy", "sad"] and s.modalities == {"audio": 3, "text": 5}
    tr = s.split("train")
    assert tr.lengths["audio"].tolist() == [1, 2, 3, 4] and tr.lengths["text"].tolist() == [1, 1, 1, 0]
    np.testing.assert_array_equal(tr.features["audio"][2, :3], np.load(tmp_path / "feats" / "a2.npy"))
    assert tr.labels.tolist()[:2] == [[0, 0, 1], [1, 1, 0]]
    lines = [json.dumps({"id": f"s{i}", "split": SPLIT[i], "labels": ["joy"] if i % 2 else ["sad", "joy"],
                         "audio": str(tmp_path / "feats" / f"a{i}.npy"), "text": None if i == 0 else f"feats/t{i}.npy"})
             for i in range(8)]
    (tmp_path / "m.jsonl").write_text("\n".join(lines) + "\n")
    s2 = from_manifest(tmp_path / "m.jsonl", tmp_path / "s2", label_names="sad,joy,fear",
                       empty_labels="allow")
    assert s2.labels == ["sad", "joy", "fear"] and s2.split("train").lengths["text"][0] == 0


def test_manifest_errors(tmp_path):
    write_npys(tmp_path)
    _, rows = csv_manifest(tmp_path)

    def fails(match, rows=None, text=None, **kw):
        if text is not None:
            (tmp_path / "m.csv").write_text(text)
        else:
            csv_manifest(tmp_path, rows)
        with pytest.raises(DataError, match=match):
            from_manifest(tmp_path / "m.csv", tmp_path / "bad", **kw)

    r = list(map(list, rows))
    r[2][3] = "feats/missing.npy"
    fails(r"m.csv, line 4 \(id 's2'\), column 'audio': file .*missing.npy does not exist", [tuple(x) for x in r])
    np.save(tmp_path / "feats" / "wide.npy", np.ones((2, 4), np.float32))
    r = list(map(list, rows))
    r[5][3] = "feats/wide.npy"
    fails(r"m.csv: line 7 \(id 's5'\), modality 'audio' is 4-d but earlier samples are 3-d", [tuple(x) for x in r])
    r = list(map(list, rows))
    r[6][0] = "s1"
    fails(r"m.csv: id 's1' appears twice \(line 3 \(id 's1'\) and line 8", [tuple(x) for x in r])
    r = list(map(list, rows))
    r[4][1] = "holdout"
    fails(r"m.csv: line 6 \(id 's4'\) has split 'holdout'; use train, valid or test", [tuple(x) for x in r])
    r = [tuple(x) for x in rows if x[1] != "valid"]
    fails(r"m.csv: no sample in split\(s\) \['valid'\]", r)
    fails(r"m.csv: line 2 \(id 's0'\) has label 'sad', which is not in label_names \['joy', 'anger'\]",
          label_names=["joy", "anger"])
    fails(r"the header lacks column\(s\) \['labels'\]", text="id,split,audio\ns0,train,feats/a0.npy\n")
    fails(r"no modality columns", text="id,split,labels\ns0,train,joy\n")
    np.save(tmp_path / "feats" / "cube.npy", np.ones((2, 2, 2), np.float32))
    r = list(map(list, rows))
    r[0][3] = "feats/cube.npy"
    fails(r"line 2 \(id 's0'\), column 'audio': .*cube.npy has shape \(2, 2, 2\)", [tuple(x) for x in r])
    (tmp_path / "m.jsonl").write_text('{"id": "a", "split": "train"}\n')
    with pytest.raises(DataError, match=r"m.jsonl, line 1: missing key 'labels'"):
        from_manifest(tmp_path / "m.jsonl", tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


def test_inspect_store(tmp_path):
    import json as _json

    from mmerkit.data.inspect import inspect_store

    seq = [np.ones((t, 2)) for t in (1, 2, 3, 4, 2, 2, 1, 3)]
    seq[1] = None
    y = [["a"], ["a", "b"], ["b"], ["a", "b", "c"], ["a"], ["c"], ["b"], ["a"]]
    store = from_arrays({"v": seq, "w": np.ones((8, 3))}, y, SPLIT, tmp_path / "s")
    x = np.load(tmp_path / "s" / "train" / "v.npy", mmap_mode="r+")
    x[0, 0, 0], x[2, 1, 1] = np.nan, -np.inf
    x.flush()
    del x
    r = inspect_store(tmp_path / "s")
    _json.dumps(r)  # JSON-able
    tr = r["splits"]["train"]
    assert tr["samples"] == 4 and r["samples"] == 8
    assert tr["label_counts"] == {"a": 3, "b": 3, "c": 1} and tr["labels_per_sample"] == 1.75
    assert tr["labels_per_sample_hist"] == {"1": 2, "2": 1, "3": 1}
    assert tr["cooccurrence"] == [[3, 2, 1], [2, 3, 1], [1, 1, 1]]
    v = tr["modalities"]["v"]
    assert (v["len_min"], v["len_median"], v["len_max"], v["missing"]) == (0, 2.0, 4, 1)
    assert v["missing_rate"] == 0.25 and v["nan"] == 1 and v["inf"] == 1 and v["nonfinite"] == 2
    assert tr["modalities"]["w"]["nonfinite"] == 0 and tr["all_modalities_missing"] == 0
    assert r["splits"]["test"]["label_frequency"] == {"a": 0.5, "b": 0.5, "c": 0.0}
    assert store.labels == r["labels"]
