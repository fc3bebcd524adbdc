"""`mmer data convert --from mmsa`: small pickles written in MMSA's published layout
(aligned_50.pkl / unaligned_50.pkl: a dict per split with text, text_bert, audio with -inf,
vision, id `video$_$clip`, raw_text, sentiment labels, lengths when unaligned) and a label CSV."""

import csv
import pickle

import numpy as np
import pytest
from helpers import assert_mentions, mmer_fails, mmer_ok

from mmerkit import api
from mmerkit.data.mmsa import convert_mmsa, read_label_csv
from mmerkit.data.store import FeatureStore
from mmerkit.errors import DataError

EMOTIONS = ("happy", "sad", "anger", "surprise", "disgust", "fear")
SIZES = {"train": 6, "valid": 3, "test": 4}
quiet = pytest.mark.filterwarnings("ignore:loading .* unpickles:UserWarning")  # checked in the CLI test


def split_ids(split: str, n: int) -> list[str]:
    return [f"vid{split}{i // 2}$_${i % 2 + 1}" for i in range(n)]


def mmsa_split(split: str, n: int, aligned: bool, rng) -> dict:
    t_a, t_v = (50, 50) if aligned else (70, 60)
    audio = rng.normal(size=(n, t_a, 74)).astype(np.float32)
    audio[0, 3, 5] = -np.inf  # COVAREP's silent frames
    d = {"raw_text": np.array([f"words {i}" for i in range(n)], dtype=object),
         "audio": audio, "vision": rng.normal(size=(n, t_v, 35)).astype(np.float32),
         "id": np.array(split_ids(split, n), dtype=object),
         "text": rng.normal(size=(n, 50, 768)).astype(np.float32),
         "text_bert": np.stack([rng.integers(0, 30000, (n, 50)), np.ones((n, 50)), np.zeros((n, 50))],
                               1).astype(np.float32),
         "annotations": np.array(["Positive"] * n, dtype=object),
         "classification_labels": np.zeros(n, np.float32),
         "regression_labels": rng.normal(size=n).astype(np.float32)}
    if not aligned:
        d["audio_lengths"] = [int(x) for x in rng.integers(20, t_a + 1, n)]
        d["vision_lengths"] = [int(x) for x in rng.integers(10, t_v + 1, n)]
    return d


def write_pickle(tmp_path, aligned=True, name=None):
    rng = np.random.default_rng(0)
    data = {s: mmsa_split(s, n, aligned, rng) for s, n in SIZES.items()}
    path = tmp_path / (name or ("aligned_50.pkl" if aligned else "unaligned_50.pkl"))
    with open(path, "wb") as f:
        pickle.dump(data, f)
    return path, data


def label_rows(skip: set[str] = frozenset()) -> list[dict]:
    """One row per segment with intensities (0 = absent), every sample at least one emotion."""
    rows = []
    for split, n in SIZES.items():
        for i, sid in enumerate(split_ids(split, n)):
            if sid in skip:
                continue
            inten = [0.0] * 6
            inten[i % 6] = 1.5
            inten[(i + 2) % 6] = 0.3 if i % 3 == 0 else 0.0
            rows.append({"id": sid, **dict(zip(EMOTIONS, inten, strict=True))})
    return rows


def write_csv(path, rows, split_id=False, upper=False):
    out = []
    for r in rows:
        r = dict(r)
        if split_id:
            video, clip = r.pop("id").split("$_$")
            r = {"video_id": video, "clip_id": f"{clip}.0", "text": "words", "mode": "train", **r}
        out.append({(k.capitalize() if upper and k in EMOTIONS else k): v for k, v in r.items()})
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(out[0]))
        w.writeheader()
        w.writerows(out)
    return path


def expected_labels(split: str) -> np.ndarray:
    y = np.zeros((SIZES[split], 6), np.uint8)
    for i in range(SIZES[split]):
        y[i, i % 6] = 1
        if i % 3 == 0:
            y[i, (i + 2) % 6] = 1
    return y


@quiet
def test_aligned_pickle_with_id_column(tmp_path):
    pkl, data = write_pickle(tmp_path)
    labels = write_csv(tmp_path / "labels.csv", label_rows())
    with pytest.warns(UserWarning, match="train 6 of 6 ids, valid 3 of 3 ids, test 4 of 4 ids"):
        store = convert_mmsa(pkl, tmp_path / "store", labels=str(labels))
    assert store.labels == list(EMOTIONS) and list(store.modalities) == ["text", "visual", "audio"]
    assert store.meta["aligned"] is True
    train = store.split("train")
    np.testing.assert_array_equal(np.asarray(train.labels), expected_labels("train"))
    assert train.ids == split_ids("train", 6)
    audio = np.asarray(train.features["audio"])
    assert np.isfinite(audio).all() and audio[0, 3, 5] == 0  # -inf -> 0
    np.testing.assert_array_equal(np.asarray(train.features["text"]), data["train"]["text"])
    np.testing.assert_array_equal(np.asarray(train.features["visual"]), data["train"]["vision"])


@quiet
def test_unaligned_pickle_with_video_and_clip_columns_and_unmatched_ids(tmp_path):
    pkl, data = write_pickle(tmp_path, aligned=False)
    dropped = {"vidtrain0$_$2", "vidtest1$_$1"}
    labels = write_csv(tmp_path / "labels.csv", label_rows(dropped), split_id=True, upper=True)
    with pytest.warns(UserWarning, match=r"train 5 of 6 ids, valid 3 of 3 ids, test 3 of 4 ids; samples "
                                         "without a CSV row are left out"):
        store = convert_mmsa(pkl, tmp_path / "store", labels=str(labels))
    assert store.meta["aligned"] is False and store.splits == {"train": 5, "valid": 3, "test": 3}
    train = store.split("train")
    keep = [0, 2, 3, 4, 5]  # sample 1 (vidtrain0$_$2) has no row
    assert train.ids == [split_ids("train", 6)[i] for i in keep]
    np.testing.assert_array_equal(np.asarray(train.labels), expected_labels("train")[keep])
    np.testing.assert_array_equal(np.asarray(train.lengths["audio"]),
                                  np.asarray(data["train"]["audio_lengths"])[keep])
    np.testing.assert_array_equal(np.asarray(train.lengths["visual"]),
                                  np.asarray(data["train"]["vision_lengths"])[keep])
    assert (np.asarray(train.lengths["text"]) == 50).all()


@quiet
def test_text_bert_is_refused_as_features_with_the_fix(tmp_path):
    pkl, _ = write_pickle(tmp_path)
    labels = write_csv(tmp_path / "labels.csv", label_rows())
    with pytest.raises(DataError) as e:
        convert_mmsa(pkl, tmp_path / "store", labels=str(labels), text_key="text_bert")
    assert_mentions(str(e.value), "text_bert", "token ids", "--text-key text")
    assert not (tmp_path / "store").exists()


@quiet
def test_a_text_key_with_features_is_used(tmp_path):
    rng = np.random.default_rng(1)
    pkl, data = write_pickle(tmp_path)
    for sd in data.values():
        sd["text_glove"] = rng.normal(size=(len(sd["id"]), 50, 300)).astype(np.float32)
    with open(pkl, "wb") as f:
        pickle.dump(data, f)
    labels = write_csv(tmp_path / "labels.csv", label_rows())
    with pytest.warns(UserWarning, match="ids"):
        store = convert_mmsa(pkl, tmp_path / "store", labels=str(labels), text_key="text_glove")
    assert store.modalities["text"] == 300


@pytest.mark.parametrize(("rows", "pattern"), [
    ([{"segment": "a$_$1", **dict.fromkeys(EMOTIONS, 1)}], r"no 'id' column.*video_id"),
    ([{"id": "a$_$1", "happy": 1, "sad": 0}], r"anger.*--emotions"),
    ([{"id": "a$_$1", **dict.fromkeys(EMOTIONS, 1), "fear": "high"}], r"line 2: fear is 'high'"),
])
def test_bad_label_csv_names_the_problem(tmp_path, rows, pattern):
    path = write_csv(tmp_path / "labels.csv", rows)
    with pytest.raises(DataError, match=pattern):
        read_label_csv(path)


@quiet
def test_no_matching_id_is_an_error_with_examples(tmp_path):
    pkl, _ = write_pickle(tmp_path)
    rows = [{**r, "id": r["id"].replace("$_$", "_")} for r in label_rows()]
    labels = write_csv(tmp_path / "labels.csv", rows)
    with pytest.raises(DataError, match=r"none of the 6 ids of split 'train'.*'vidtrain0\$_\$1'.*video_id\$_\$clip_id"):
        convert_mmsa(pkl, tmp_path / "store", labels=str(labels))


def test_cli_convert_and_the_pickle_warning(tmp_path, capsys):
    pkl, _ = write_pickle(tmp_path, aligned=False)
    labels = write_csv(tmp_path / "labels.csv", label_rows())
    mmer_ok("data", "convert", str(pkl), "--from", "mmsa", "--labels", str(labels),
            "--out", str(tmp_path / "store"))
    err = capsys.readouterr().err  # the CLI prints each warning as one line
    assert_mentions(err, r"warning: loading unaligned_50.pkl unpickles it, which can execute code",
                    r"warning: .*labels from labels.csv for train 6 of 6 ids")
    assert FeatureStore(tmp_path / "store").splits == SIZES
    assert "mmsa" in [d["name"] for d in api.datasets_table()]


@quiet
def test_cli_bad_inputs_exit_2(tmp_path, capsys):
    pkl, _ = write_pickle(tmp_path)
    labels = write_csv(tmp_path / "labels.csv", label_rows())
    err = mmer_fails(capsys, "data", "convert", str(pkl), "--from", "mmsa", "--out", str(tmp_path / "s"))
    assert_mentions(err, "--labels CSV")
    err = mmer_fails(capsys, "data", "convert", str(tmp_path / "nope.pkl"), "--from", "mmsa", "--labels",
                     str(labels), "--out", str(tmp_path / "s"))
    assert_mentions(err, "nope.pkl", "MMSA")
    (tmp_path / "junk.pkl").write_bytes(b"not a pickle")
    err = mmer_fails(capsys, "data", "convert", str(tmp_path / "junk.pkl"), "--from", "mmsa", "--labels",
                     str(labels), "--out", str(tmp_path / "s"))
    assert_mentions(err, "junk.pkl", "could not be read")
    assert not (tmp_path / "s").exists()
