import json

import numpy as np
import pytest
import torch
from helpers import LABELS, random_split, toy_store

from mmerkit.data.batch import StoreDataset, collate
from mmerkit.data.store import FeatureStore, SplitArrays, write_store
from mmerkit.errors import DataError


def test_round_trip_identical(tmp_path):
    splits = {"train": random_split(10, 1), "valid": random_split(5, 2), "test": random_split(7, 3)}
    store = write_store(tmp_path / "s", splits, LABELS, source="unit")
    assert store.splits == {"train": 10, "valid": 5, "test": 7}
    assert store.modalities == {"text": 8, "audio": 4}
    for name, arr in splits.items():
        sp = store.split(name)
        assert isinstance(sp.features["text"], np.memmap)
        np.testing.assert_array_equal(sp.labels, arr.labels)
        for m in ("text", "audio"):
            x = np.array(arr.features[m])
            x[np.arange(x.shape[1])[None] >= arr.lengths[m][:, None]] = 0  # padding is zeroed
            np.testing.assert_array_equal(sp.features[m], x)
            np.testing.assert_array_equal(sp.lengths[m], arr.lengths[m])
        assert sp.ids == arr.ids
    meta = json.loads((tmp_path / "s" / "meta.json").read_text())
    assert meta["format"] == "mmerkit-store/1" and meta["source"] == "unit"


def test_batches_trim_mask_and_flag_missing(tmp_path):
    store = toy_store(tmp_path / "s", missing=0.3)
    ds = StoreDataset(store, "train")
    batch = collate(ds.__getitems__([5, 0, 3, 9]))
    assert batch.index.tolist() == [5, 0, 3, 9]
    lens = store.split("train").lengths["audio"][[5, 0, 3, 9]]
    assert batch.inputs["audio"].shape[1] == max(lens.max(), 1)
    assert batch.masks["audio"].sum(1).tolist() == lens.tolist()
    assert batch.present[:, 1].tolist() == (lens > 0).tolist()
    single = collate([ds[5], ds[0]])
    torch.testing.assert_close(single.labels, batch.labels[:2])


def test_without_modality(tmp_path):
    ds = StoreDataset(toy_store(tmp_path / "s"), "test")
    b = collate(ds.__getitems__(list(range(8)))).without("audio")
    assert not b.present[:, 1].any() and not b.masks["audio"].any() and b.inputs["audio"].abs().sum() == 0


@pytest.mark.parametrize("policy", ["reject", "zero"])
def test_nan_policy(tmp_path, policy):
    sp = random_split(6, 1)
    sp.features["audio"][2, 0, 0] = np.nan
    if policy == "reject":
        with pytest.raises(DataError, match=r"'audio'.*sample 2 \(id 's1-2'\).*nan_policy"):
            write_store(tmp_path / "s", {"train": sp}, LABELS)
        assert not list(tmp_path.iterdir())  # nothing half-written
    else:
        with pytest.warns(UserWarning, match="replaced 1 NaN"):
            store = write_store(tmp_path / "s", {"train": sp}, LABELS, nan_policy="zero")
        assert np.isfinite(store.split("train").features["audio"]).all()


@pytest.mark.parametrize("mutate, message", [
    (lambda s: s.labels.__setitem__((1, 0), 2), "labels must be 0/1"),
    (lambda s: s.labels.__setitem__(slice(0, 2), 0), "empty label set"),
    (lambda s: s.lengths.__setitem__("audio", -np.ones(6, int)), "audio_len.*outside"),
    (lambda s: s.features.__setitem__("audio", s.features["audio"][:4]), "4 samples but labels has 6"),
])
def test_bad_arrays_are_rejected(tmp_path, mutate, message):
    sp = random_split(6, 1)
    mutate(sp)
    with pytest.raises(DataError, match=message):
        write_store(tmp_path / "s", {"train": sp}, LABELS)
    assert not (tmp_path / "s").exists()


def test_zero_samples_and_dim_mismatch(tmp_path):
    empty = SplitArrays({"text": np.zeros((0, 3, 8), np.float32)}, np.zeros((0, 3), np.uint8))
    with pytest.raises(DataError, match="'valid' has zero samples"):
        write_store(tmp_path / "s", {"train": random_split(4, 1, dims=(("text", 8),)), "valid": empty}, LABELS)
    with pytest.raises(DataError, match="same modalities with the same dims"):
        write_store(tmp_path / "s", {"train": random_split(4, 1), "valid": random_split(4, 2, dims=(("text", 9), ("audio", 4)))}, LABELS)
    with pytest.raises(DataError, match="labels must be \\(N, 2\\)"):
        write_store(tmp_path / "s", {"train": random_split(4, 1)}, LABELS[:2])


def test_existing_store_needs_overwrite(tmp_path):
    toy_store(tmp_path / "s")
    with pytest.raises(DataError, match="already exists"):
        write_store(tmp_path / "s", {"train": random_split(4, 1)}, LABELS)


def test_open_detects_damage(tmp_path):
    path = tmp_path / "s"
    toy_store(path)
    with pytest.raises(DataError, match="not a FeatureStore"):
        FeatureStore(tmp_path)
    meta = json.loads((path / "meta.json").read_text())
    meta["splits"]["train"] = 65  # meta disagrees with arrays
    (path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="meta.json"):
        FeatureStore(path)
    meta["splits"]["train"] = 64
    (path / "meta.json").write_text(json.dumps(meta))
    raw = (path / "train" / "text.npy").read_bytes()
    (path / "train" / "text.npy").write_bytes(raw[: len(raw) // 2])  # truncated file
    with pytest.raises(DataError, match="text.npy is truncated"):
        FeatureStore(path)
    (path / "meta.json").write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        FeatureStore(path)
    (path / "meta.json").write_text(json.dumps({"format": "other/1"}))
    with pytest.raises(DataError, match="format is 'other/1'"):
        FeatureStore(path)


def test_open_detects_bad_labels_and_lengths(tmp_path):
    path = tmp_path / "s"
    toy_store(path)
    y = np.load(path / "valid" / "labels.npy")
    y[3, 1] = 7
    np.save(path / "valid" / "labels.npy", y)
    with pytest.raises(DataError, match="sample 3 has labels"):
        FeatureStore(path)
    toy_store(path)
    ln = np.load(path / "test" / "audio_len.npy")
    ln[2] = -1
    np.save(path / "test" / "audio_len.npy", ln)
    with pytest.raises(DataError, match="sample 2 has length -1"):
        FeatureStore(path)


def test_unknown_split_suggests(tmp_path):
    store = toy_store(tmp_path / "s")
    with pytest.raises(DataError, match="Did you mean 'valid'"):
        store.split("vaild")


def test_pad_ragged_pads_cuts_and_keeps_a_time_axis():
    """The one ragged-padding helper (converters, extraction, media prediction, the server)."""
    from mmerkit.data.padding import pad_ragged

    seqs = [np.arange(6, dtype=np.float64).reshape(3, 2), np.zeros((0, 2)), np.ones((1, 2))]
    x, lens = pad_ragged(seqs, 2)
    assert x.dtype == np.float32 and x.shape == (3, 3, 2) and lens.tolist() == [3, 0, 1]
    assert np.array_equal(x[0], seqs[0]) and not x[1].any() and x[2, 0].tolist() == [1, 1] and not x[2, 1:].any()
    x, lens = pad_ragged(seqs, 2, max_len=2)
    assert x.shape == (3, 2, 2) and lens.tolist() == [2, 0, 1] and np.array_equal(x[0], seqs[0][:2])
    assert pad_ragged([np.zeros((0, 4))], 4)[0].shape == (1, 1, 4)  # empty: still one step
    assert pad_ragged([np.zeros((0, 4))], 4, min_steps=0)[0].shape == (1, 0, 4)
    assert pad_ragged([], 4)[0].shape == (0, 1, 4)
