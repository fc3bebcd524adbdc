"""CMU-MOSEI converters, on tiny files written in the published layouts (see specs/carat.md §8)."""

from __future__ import annotations

import argparse
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from mmerkit.data.catalogue import CONVERTERS
from mmerkit.data.mosei import (
    LABELS,
    convert_mosei_aligned,
    convert_mosei_unaligned,
    parse_targets,
)
from mmerkit.data.store import FeatureStore
from mmerkit.errors import DataError

pytestmark = pytest.mark.filterwarnings("ignore:loading .* unpickles:UserWarning")

SIZES = {"train": 7, "valid": 3, "test": 4}
DIMS = {"text": 300, "visual": 35, "audio": 74}
T = 5


def _tgt(n: int, offset: int = 0) -> list[list[int]]:
    """Cycle through all six labels, with a two-label set every third sample."""
    out = []
    for i in range(n):
        ids = [4 + (i + offset) % 6]
        if i % 3 == 0:
            ids.append(4 + (i + offset + 2) % 6)
        out.append([2, *ids, 3])
    return out


def _aligned(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    data = {}
    for k, (split, n) in enumerate(SIZES.items()):
        data[split] = {f"src-{m}": rng.standard_normal((n, T, d)).astype(np.float32)
                       for m, d in DIMS.items()}
        data[split]["tgt"] = _tgt(n, k)
    data["dict"] = {"src": {"<pad>": 0}, "tgt": {"<s>": 2, "</s>": 3, **{l: 4 + i for i, l in enumerate(LABELS)}}}
    data["settings"] = argparse.Namespace(max_text_seq_len=60, max_token_seq_len=8)
    return data


def _save_pt(data: dict, path: Path) -> Path:
    torch.save(data, path)
    return path


def _unaligned(sizes=SIZES, valid_key: str = "valid", seed: int = 1) -> dict:
    rng = np.random.default_rng(seed)
    data = {}
    for split, n in sizes.items():
        data[valid_key if split == "valid" else split] = {
            "text": rng.standard_normal((n, 6, 300)).astype(np.float32),
            "vision": rng.standard_normal((n, 10, 35)).astype(np.float32),
            "audio": rng.standard_normal((n, 10, 74)),  # float64, as np.array makes it
            "labels": rng.standard_normal((n, 1, 1)).astype(np.float32),
            "id": np.array([[f"vid{i}", "0", "1"] for i in range(n)]),
        }
    return data


def _save_pkl(data: dict, path: Path) -> Path:
    with open(path, "wb") as f:
        pickle.dump(data, f)
    return path


def _only_inputs_left(tmp_path: Path, *inputs: Path) -> None:
    assert sorted(tmp_path.iterdir()) == sorted(inputs), "a failed conversion left files behind"


# ----------------------------------------------------------------------------- aligned


def test_aligned_round_trip(tmp_path):
    data = _aligned()
    pt = _save_pt(data, tmp_path / "train_valid_test.pt")
    with pytest.warns(UserWarning, match="trust"):
        store = convert_mosei_aligned(pt, tmp_path / "store")
    assert isinstance(store, FeatureStore)
    assert store.labels == list(LABELS) and store.modalities == DIMS and store.aligned
    assert store.splits == SIZES
    assert store.meta["source"] == "mosei-aligned:train_valid_test.pt"
    for split, n in SIZES.items():
        s = store.split(split)
        for m in DIMS:
            assert s.features[m].dtype == np.float32
            assert np.array_equal(s.features[m], data[split][f"src-{m}"])
            assert (np.asarray(s.lengths[m]) == T).all()
        assert s.ids == [f"{split}-{i}" for i in range(n)]
    # [2, 4, 6, 3] -> happy + anger; [2, 5, 3] -> sad; [2, 9, 3] -> fear
    y = np.asarray(store.split("train").labels)
    assert y[0].tolist() == [1, 0, 1, 0, 0, 0]
    assert y[1].tolist() == [0, 1, 0, 0, 0, 0]
    assert y[5].tolist() == [0, 0, 0, 0, 0, 1]


def test_parse_targets_order():
    y = parse_targets([[2, 4, 5, 6, 7, 8, 9, 3], [2, 7, 7, 3]], "f")
    assert y.tolist() == [[1] * 6, [0, 0, 0, 1, 0, 0]]
    assert y.dtype == np.uint8


def test_aligned_lists_of_arrays_and_float64(tmp_path):
    data = _aligned()
    for split in SIZES:
        data[split]["src-text"] = [x.astype(np.float64) for x in data[split]["src-text"]]
        data[split]["src-visual"] = torch.from_numpy(data[split]["src-visual"])
    pt = _save_pt(data, tmp_path / "f.pt")
    store = convert_mosei_aligned(pt, tmp_path / "store")
    ref = _aligned()
    for split in SIZES:
        for m in DIMS:
            assert np.array_equal(store.split(split).features[m], ref[split][f"src-{m}"])


def test_audio_neg_inf_becomes_zero(tmp_path):
    data = _aligned()
    audio = data["train"]["src-audio"]
    audio[1, 2, :10] = -np.inf
    pt = _save_pt(data, tmp_path / "f.pt")
    got = np.asarray(convert_mosei_aligned(pt, tmp_path / "store").split("train").features["audio"])
    assert (got[1, 2, :10] == 0).all()
    assert np.array_equal(got[1, 2, 10:], audio[1, 2, 10:])
    assert np.isfinite(got).all()


@pytest.mark.parametrize("modality,value", [("text", np.nan), ("audio", np.nan), ("audio", np.inf),
                                            ("visual", -np.inf)])
def test_nan_policy(tmp_path, modality, value):
    data = _aligned()
    data["valid"][f"src-{modality}"][2, 0, 0] = value
    pt = _save_pt(data, tmp_path / "mosei.pt")
    with pytest.raises(DataError, match=rf"mosei\.pt.*'valid'.*'{modality}'.*sample 2"):
        convert_mosei_aligned(pt, tmp_path / "store")
    _only_inputs_left(tmp_path, pt)
    with pytest.warns(UserWarning, match="replaced 1 NaN/inf"):
        store = convert_mosei_aligned(pt, tmp_path / "store", nan_policy="zero")
    assert store.split("valid").features[modality][2, 0, 0] == 0


def test_unknown_token(tmp_path):
    data = _aligned()
    data["test"]["tgt"][2] = [2, 4, 11, 3]
    pt = _save_pt(data, tmp_path / "mosei.pt")
    with pytest.raises(DataError, match=r"mosei\.pt.*'test'.*'tgt'.*sample 2.*token 11.*4=happy"):
        convert_mosei_aligned(pt, tmp_path / "store")
    _only_inputs_left(tmp_path, pt)


def test_tgt_without_bos_eos(tmp_path):
    data = _aligned()
    data["train"]["tgt"][4] = [4, 5]
    pt = _save_pt(data, tmp_path / "mosei.pt")
    with pytest.raises(DataError, match=r"mosei\.pt.*'train'.*sample 4.*\[2, ids\.\.\., 3\]"):
        convert_mosei_aligned(pt, tmp_path / "store")


def test_empty_label_set(tmp_path):
    data = _aligned()
    data["train"]["tgt"][3] = [2, 3]
    pt = _save_pt(data, tmp_path / "mosei.pt")
    with pytest.raises(DataError, match=r"mosei\.pt.*'train'.*sample 3.*empty label set.*empty_labels='allow' \(CLI: --empty-labels allow\)"):
        convert_mosei_aligned(pt, tmp_path / "store")
    _only_inputs_left(tmp_path, pt)
    store = convert_mosei_aligned(pt, tmp_path / "store", empty_labels="allow")
    assert np.asarray(store.split("train").labels[3]).sum() == 0


def _drop(key):
    def edit(d):
        del d["valid"][key]
    return edit


def _set(split, key, value_fn):
    def edit(d):
        d[split][key] = value_fn(d[split][key])
    return edit


@pytest.mark.parametrize("edit,pattern", [
    (lambda d: d.pop("test"), r"mosei\.pt has no split key 'test'"),
    (_drop("src-visual"), r"mosei\.pt: split 'valid' has no key 'src-visual'"),
    (_drop("tgt"), r"mosei\.pt: split 'valid' has no key 'tgt'"),
    (_set("train", "src-audio", lambda x: x[:-1]), r"mosei\.pt, split 'train'.*'src-audio' 6.*"),
    (_set("train", "tgt", lambda t: t + [[2, 4, 3]]), r"mosei\.pt, split 'train'.*'tgt' 8"),
    (_set("test", "src-visual", lambda x: x[..., :30]), r"mosei\.pt, split 'test', key 'src-visual'.*35"),
    (_set("test", "src-text", lambda x: x[:, :, None]), r"mosei\.pt, split 'test', key 'src-text'"),
    (_set("valid", "src-text", lambda x: x[:, :3]), r"mosei\.pt, split 'valid'.*same number of steps"),
    (lambda d: d.__setitem__("valid", [1, 2]), r"mosei\.pt: key 'valid' holds a list"),
])
def test_aligned_layout_errors(tmp_path, edit, pattern):
    data = _aligned()
    edit(data)
    pt = _save_pt(data, tmp_path / "mosei.pt")
    with pytest.raises(DataError, match=pattern):
        convert_mosei_aligned(pt, tmp_path / "store")
    _only_inputs_left(tmp_path, pt)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"nothere\.pt does not exist"):
        convert_mosei_aligned(tmp_path / "nothere.pt", tmp_path / "store")
    _only_inputs_left(tmp_path)


def test_foreign_and_truncated_files(tmp_path):
    text = tmp_path / "notes.pt"
    text.write_text("these are not the features you are looking for\n")
    with pytest.raises(DataError, match=r"notes\.pt could not be read as a torch pickle"):
        convert_mosei_aligned(text, tmp_path / "store")
    full = _save_pt(_aligned(), tmp_path / "full.pt")
    cut = tmp_path / "cut.pt"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(DataError, match=r"cut\.pt could not be read.*download it again"):
        convert_mosei_aligned(cut, tmp_path / "store")
    listed = _save_pt([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(DataError, match=r"list\.pt holds a list"):
        convert_mosei_aligned(listed, tmp_path / "store")
    _only_inputs_left(tmp_path, text, full, cut, listed)


def test_overwrite(tmp_path):
    pt = _save_pt(_aligned(), tmp_path / "mosei.pt")
    convert_mosei_aligned(pt, tmp_path / "store")
    with pytest.raises(DataError, match="already exists"):
        convert_mosei_aligned(pt, tmp_path / "store")
    pt2 = _save_pt(_aligned(seed=5), tmp_path / "other.pt")
    store = convert_mosei_aligned(pt2, tmp_path / "store", overwrite=True)
    assert np.array_equal(store.split("test").features["text"], _aligned(seed=5)["test"]["src-text"])
    with pytest.raises(DataError, match="nan_policy"):
        convert_mosei_aligned(pt, tmp_path / "store2", nan_policy="drop")


# ----------------------------------------------------------------------------- unaligned


@pytest.mark.parametrize("valid_key", ["valid", "dev"])
def test_unaligned_round_trip(tmp_path, valid_key):
    pt = _save_pt(_aligned(), tmp_path / "train_valid_test.pt")
    data = _unaligned(valid_key=valid_key)
    data["test"]["audio"][0, 3, 5] = -np.inf
    pkl = _save_pkl(data, tmp_path / "mosei_senti_data_noalign.pkl")
    with pytest.warns(UserWarning, match="trust"):
        store = convert_mosei_unaligned(pkl, pt, tmp_path / "store")
    assert not store.aligned and store.splits == SIZES and store.modalities == DIMS
    assert "mosei_senti_data_noalign.pkl" in store.meta["source"]
    ref, labels = _unaligned(valid_key=valid_key), _aligned()
    for split, n in SIZES.items():
        src = ref[valid_key if split == "valid" else split]
        s = store.split(split)
        assert s.features["text"].shape == (n, 6, 300)
        assert np.array_equal(s.features["text"], src["text"])
        assert np.array_equal(s.features["visual"], src["vision"])
        want_audio = src["audio"].astype(np.float32)
        if split == "test":
            want_audio[0, 3, 5] = 0
        assert np.array_equal(s.features["audio"], want_audio)
        assert np.array_equal(s.labels, parse_targets(labels[split]["tgt"], "x"))


def test_unaligned_size_mismatch(tmp_path):
    pt = _save_pt(_aligned(), tmp_path / "tvt.pt")
    pkl = _save_pkl(_unaligned(sizes={"train": 7, "valid": 2, "test": 4}), tmp_path / "noalign.pkl")
    with pytest.raises(DataError, match=r"'valid' has 2 samples in noalign\.pkl but 3 labels in tvt\.pt"):
        convert_mosei_unaligned(pkl, pt, tmp_path / "store")
    _only_inputs_left(tmp_path, pt, pkl)


def test_unaligned_layout_errors(tmp_path):
    pt = _save_pt(_aligned(), tmp_path / "tvt.pt")
    data = _unaligned()
    del data["train"]["vision"]
    pkl = _save_pkl(data, tmp_path / "noalign.pkl")
    with pytest.raises(DataError, match=r"noalign\.pkl: split 'train' has no key 'vision'"):
        convert_mosei_unaligned(pkl, pt, tmp_path / "store")
    data = _unaligned()
    del data["valid"]
    _save_pkl(data, pkl)
    with pytest.raises(DataError, match=r"noalign\.pkl has no split key 'valid' or 'dev'"):
        convert_mosei_unaligned(pkl, pt, tmp_path / "store")
    data = _unaligned()
    data["test"]["audio"] = data["test"]["audio"][..., :70]
    _save_pkl(data, pkl)
    with pytest.raises(DataError, match=r"noalign\.pkl, split 'test', key 'audio'.*74"):
        convert_mosei_unaligned(pkl, pt, tmp_path / "store")
    data = _unaligned()
    data["test"]["text"][1, 1, 1] = np.nan
    _save_pkl(data, pkl)
    with pytest.raises(DataError, match=r"noalign\.pkl.*'test'.*'text'.*sample 1"):
        convert_mosei_unaligned(pkl, pt, tmp_path / "store")
    pkl.write_bytes(pickle.dumps(_unaligned())[:200])
    with pytest.raises(DataError, match=r"noalign\.pkl could not be read as a pickle"):
        convert_mosei_unaligned(pkl, pt, tmp_path / "store")
    with pytest.raises(DataError, match=r"missing\.pkl does not exist"):
        convert_mosei_unaligned(tmp_path / "missing.pkl", pt, tmp_path / "store")
    with pytest.raises(DataError, match=r"missing\.pt does not exist"):
        convert_mosei_unaligned(pkl, tmp_path / "missing.pt", tmp_path / "store")
    _only_inputs_left(tmp_path, pt, pkl)


def test_converters_registry():
    assert CONVERTERS.get("mosei-aligned") is convert_mosei_aligned
    assert CONVERTERS.get("mosei-unaligned") is convert_mosei_unaligned
    # the converter that cannot work without the aligned file says so in its registration
    assert "train_valid_test.pt" in CONVERTERS.entry("mosei-unaligned").info["needs_labels_from"]
    assert CONVERTERS.entry("mosei-aligned").info["needs_labels_from"] is None


def test_a_converter_needing_labels_from_is_refused_without_it(tmp_path):
    from mmerkit import api
    from mmerkit.errors import ConfigError

    with pytest.raises(ConfigError, match="needs labels_from .CLI: --labels-from. = train_valid_test.pt"):
        api.data_convert("mosei-unaligned", tmp_path / "x.pkl", tmp_path / "out")
    assert not (tmp_path / "out").exists()
