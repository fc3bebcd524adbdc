import pickle

import numpy as np
import pytest

from mmerkit.data.catalogue import CONVERTERS
from mmerkit.data.m3ed import LABELS, convert_m3ed
from mmerkit.errors import DataError

DIMS = {3: 6, 4: 5, 5: 3}  # text, reader's "visual", reader's "audio" (768/1024/342 in the release)


def m3ed_data(seed=0):
    """The authors' pickle layout in miniature: 4 train, 2 valid, 2 test dialogues."""
    rng = np.random.default_rng(seed)
    ids = {7: ["tr_0", "tr_1", "tr_2", "tr_long"], 8: ["va_0", "va_1"], 9: ["te_0", "te_1"]}
    labels, feats = {}, {k: {} for k in DIMS}
    for d in [i for v in ids.values() for i in v]:
        n = 65 if d == "tr_long" else int(rng.integers(2, 6))
        labels[d] = rng.integers(0, 7, n).tolist()
        for k, dim in DIMS.items():
            feats[k][d] = rng.normal(size=(n, dim)).astype(np.float32)
    labels["tr_long"][61:] = [6] * 4  # 'surprise' only after the 60-utterance cut
    labels["tr_long"][:61] = [0] * 61
    return [None, {"meta": 1}, labels, feats[3], feats[4], feats[5], None, ids[7], ids[8], ids[9]]


def write(tmp_path, data, name="feat.pkl"):
    p = tmp_path / name
    p.write_bytes(pickle.dumps(data))
    return p


def test_convert_layout_labels_and_truncation(tmp_path):
    data = m3ed_data()
    p = write(tmp_path, data)
    with pytest.warns(UserWarning, match="pickle"):
        store = convert_m3ed(p, tmp_path / "s")
    assert store.labels == LABELS == ["happy", "neutral", "sad", "disgust", "anger", "fear", "surprise"]
    assert store.modalities == {"text": 6, "visual": 5, "audio": 3}
    assert store.splits == {"train": 4, "valid": 2, "test": 2}
    assert store.meta["source"].startswith("m3ed:")
    tr = store.split("train")
    assert tr.ids == ["tr_0", "tr_1", "tr_2", "tr_long"]
    assert tr.features["text"].shape[1] == 60 and tr.lengths["text"][3] == 60
    # union over every utterance (CARAT): surprise counts although it is past the cut
    assert tr.labels[3].tolist() == [1, 0, 0, 0, 0, 0, 1]
    for i, d in enumerate(tr.ids[:3]):
        expect = np.zeros(7, np.uint8)
        expect[data[2][d]] = 1
        assert tr.labels[i].tolist() == expect.tolist()
        n = len(data[2][d])
        np.testing.assert_allclose(tr.features["visual"][i, :n], data[4][d])
        assert tr.lengths["audio"][i] == n and not tr.features["audio"][i, n:].any()
    assert CONVERTERS.entry("m3ed").info["description"]


def test_swap_visual_audio(tmp_path):
    p = write(tmp_path, m3ed_data())
    with pytest.warns(UserWarning):
        store = CONVERTERS.get("m3ed")(p, tmp_path / "s", swap_visual_audio=True, max_len=10, truncate="tail")
    assert store.modalities == {"text": 6, "visual": 3, "audio": 5}
    assert store.split("train").features["text"].shape[1] == 10
    assert "swapped" in store.meta["source"]


def no_output(tmp_path, out="s"):
    return not (tmp_path / out).exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(f".{out}")]


@pytest.mark.filterwarnings("ignore:loading")
def test_errors_name_file_key_and_dialogue(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        convert_m3ed(tmp_path / "none.pkl", tmp_path / "s")
    p = write(tmp_path, {"a": 1}, "dict.pkl")
    with pytest.raises(DataError, match=r"dict.pkl: expected the M3ED feature pickle"):
        convert_m3ed(p, tmp_path / "s")
    data = m3ed_data()
    data[2]["va_1"][1] = 9
    with pytest.raises(DataError, match=r"bad.pkl \[valid\]: dialogue 'va_1', utterance 1 has label 9"):
        convert_m3ed(write(tmp_path, data, "bad.pkl"), tmp_path / "s")
    data = m3ed_data()
    del data[5]["te_1"]
    with pytest.raises(DataError, match=r"modality 'audio': dialogue 'te_1' has no entry"):
        convert_m3ed(write(tmp_path, data, "miss.pkl"), tmp_path / "s")
    store = convert_m3ed(write(tmp_path, data, "miss.pkl"), tmp_path / "ok", missing="empty")
    assert store.split("test").lengths["audio"].tolist()[1] == 0
    data = m3ed_data()
    data[9] = data[9] + ["tr_0"]
    with pytest.raises(DataError, match=r"'tr_0' is listed in both 'train' and 'test'"):
        convert_m3ed(write(tmp_path, data, "overlap.pkl"), tmp_path / "s")
    data = m3ed_data()
    data[3] = [1, 2]
    with pytest.raises(DataError, match=r"item \[3\] should be a dict"):
        convert_m3ed(write(tmp_path, data, "t.pkl"), tmp_path / "s")
    (tmp_path / "trunc.pkl").write_bytes(pickle.dumps(m3ed_data())[:50])
    with pytest.raises(DataError, match="could not be unpickled"):
        convert_m3ed(tmp_path / "trunc.pkl", tmp_path / "s")
    data = m3ed_data()
    data[4]["tr_1"][0, 0] = np.nan
    with pytest.raises(DataError, match=r"split 'train', modality 'visual', sample 1 \(id 'tr_1'\)"):
        convert_m3ed(write(tmp_path, data, "nan.pkl"), tmp_path / "s")
    assert no_output(tmp_path)
    with pytest.raises(DataError, match="already exists"):
        convert_m3ed(write(tmp_path, m3ed_data()), tmp_path / "ok")
