import numpy as np
import pytest

from mmerkit.data.dialogue import build_dialogues, build_dialogues_from_dicts
from mmerkit.errors import DataError

NAMES = ["happy", "neutral", "sad"]


def table():
    # dialogues b (3 utterances, rows out of order) and a (2 utterances); b appears first
    dlg = np.array(["b", "a", "b", "a", "b"])
    order = np.array([2, 0, 0, 1, 1])
    labels = np.array([2, 1, 0, 1, 0])
    x = np.arange(5, dtype=np.float32)[:, None] * np.ones((1, 3), np.float32)
    return dlg, order, labels, x


def test_union_order_and_padding():
    dlg, order, labels, x = table()
    sa = build_dialogues(dlg, labels, {"text": x}, NAMES, order=order)
    assert sa.ids == ["b", "a"]
    assert sa.labels.tolist() == [[1, 0, 1], [0, 1, 0]]
    assert sa.lengths["text"].tolist() == [3, 2]
    # b's utterances in order 0, 1, 2 are rows 2, 4, 0
    np.testing.assert_array_equal(sa.features["text"][0, :, 0], [2, 4, 0])
    np.testing.assert_array_equal(sa.features["text"][1, :, 0], [1, 3, 0])  # padded with 0


@pytest.mark.parametrize("truncate,steps", [("head", [2, 4]), ("tail", [4, 0])])
def test_truncation(truncate, steps):
    dlg, order, _, x = table()
    labels = np.array([2, 1, 0, 1, 1])  # b = happy, neutral, sad in utterance order
    sa = build_dialogues(dlg, labels, {"text": x}, NAMES, order=order, max_len=2, truncate=truncate)
    assert sa.features["text"].shape == (2, 2, 3)
    np.testing.assert_array_equal(sa.features["text"][0, :, 0], steps)
    assert sa.labels[0].tolist() == [1, 1, 1]  # union_over="all": the cut utterance still counts
    kept = build_dialogues(dlg, labels, {"text": x}, NAMES, order=order, max_len=2, truncate=truncate,
                           union_over="kept")
    dropped_label = {"head": 2, "tail": 0}[truncate]  # head cuts the 'sad' utterance, tail the 'happy'
    assert kept.labels[0, dropped_label] == 0


def test_label_map_strings_and_ignored():
    dlg, _, _, x = table()
    raw = np.array(["joy", "neutral", "joy", "other", "sadness"])
    sa = build_dialogues(dlg, raw, {"text": x}, NAMES,
                         label_map={"joy": "happy", "neutral": "neutral", "sadness": "sad", "other": None})
    assert sa.labels.tolist() == [[1, 0, 1], [0, 1, 0]]
    sa2 = build_dialogues(dlg, ["sad", "neutral", "happy", "neutral", "happy"], {"t": x}, NAMES)
    assert sa2.labels.tolist() == [[1, 0, 1], [0, 1, 0]]


def test_unknown_labels_name_dialogue_and_utterance():
    dlg, order, labels, x = table()
    with pytest.raises(DataError, match=r"dialogue 'b', utterance 0 has label 7"):
        build_dialogues(dlg, [2, 1, 7, 1, 0], {"text": x}, NAMES, order=order, source="f.pkl")
    with pytest.raises(DataError, match=r"label 'joy'"):
        build_dialogues(dlg, ["joy"] * 5, {"text": x}, NAMES)
    with pytest.raises(DataError, match=r"two utterances at position"):
        build_dialogues(dlg, labels, {"text": x}, NAMES, order=[0, 0, 0, 1, 1])


def test_missing_policies():
    dlg, order, labels, x = table()
    audio = np.ones((5, 2), np.float32)
    present = {"audio": np.array([True, False, True, True, True])}  # a's utterance 0 lacks audio
    with pytest.raises(DataError, match=r"dialogue 'a', utterance 0 has no 'audio'"):
        build_dialogues(dlg, labels, {"text": x, "audio": audio}, NAMES, order=order, present=present)
    z = build_dialogues(dlg, labels, {"text": x, "audio": audio}, NAMES, order=order, present=present,
                        missing="zero")
    assert z.lengths["audio"].tolist() == [3, 2] and z.features["audio"][1, 0].tolist() == [0, 0]
    e = build_dialogues(dlg, labels, {"text": x, "audio": audio}, NAMES, order=order, present=present,
                        missing="empty")
    assert e.lengths["audio"].tolist() == [3, 0] and e.lengths["text"].tolist() == [3, 2]
    with pytest.warns(UserWarning, match="dropped 1 of 2"):
        d = build_dialogues(dlg, labels, {"text": x, "audio": audio}, NAMES, order=order, present=present,
                            missing="drop")
    assert d.ids == ["b"]
    whole = {"audio": np.array([True, False, True, False, True])}  # all of a's audio missing
    z2 = build_dialogues(dlg, labels, {"text": x, "audio": audio}, NAMES, order=order, present=whole,
                         missing="zero")
    assert z2.lengths["audio"].tolist() == [3, 0]


def test_from_dicts_and_errors():
    labels = {"d1": [0, 0, 2], "d2": [1]}
    feats = {"text": {"d1": np.ones((3, 4)), "d2": np.ones((1, 4))},
             "audio": {"d1": np.ones((3, 2))}}
    with pytest.raises(DataError, match=r"modality 'audio': dialogue 'd2' has no entry"):
        build_dialogues_from_dicts(labels, feats, NAMES, source="x.pkl")
    sa = build_dialogues_from_dicts(labels, feats, NAMES, missing="zero", source="x.pkl")
    assert sa.ids == ["d1", "d2"] and sa.lengths["audio"].tolist() == [3, 0]
    assert sa.labels.tolist() == [[1, 0, 1], [0, 1, 0]]
    bad = {"text": {"d1": np.ones((3, 4)), "d2": np.ones((1, 5))}}
    with pytest.raises(DataError, match=r"dialogue 'd2' has 5-d vectors"):
        build_dialogues_from_dicts(labels, bad, NAMES)
    with pytest.raises(DataError, match=r"dialogue 'zz' is listed but has no utterance labels"):
        build_dialogues_from_dicts(labels, {"text": feats["text"]}, NAMES, dialog_ids=["d1", "zz"])
    with pytest.raises(DataError, match="truncate"):
        build_dialogues(["a"], [0], {"t": np.ones((1, 2))}, NAMES, truncate="middle")


def test_missing_policy_per_modality():
    dlg, order, labels, x = table()
    audio, video = np.ones((5, 2), np.float32), np.ones((5, 1), np.float32)
    gaps = np.array([True, False, True, True, True])  # a's utterance 0
    feats = {"text": x, "audio": audio, "video": video}
    sa = build_dialogues(dlg, labels, feats, NAMES, order=order, present={"audio": gaps, "video": gaps},
                         missing={"audio": "empty", "video": "zero"})
    assert sa.lengths["audio"].tolist() == [3, 0] and sa.lengths["video"].tolist() == [3, 2]
    with pytest.raises(DataError, match="has no 'video' features"):
        build_dialogues(dlg, labels, feats, NAMES, order=order, present={"video": gaps}, missing={"audio": "zero"})
    with pytest.raises(DataError, match=r"names modalities \['face'\]"):
        build_dialogues(dlg, labels, feats, NAMES, missing={"face": "zero"})
