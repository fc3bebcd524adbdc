"""End-to-end tests on small real corpora from ../shared/data (skipped where that folder is absent).

The data is read in place and never copied into the repository or the package.
"""

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import TINY

from mmerkit import api
from mmerkit.data.csd import folds_from_labels_csv
from mmerkit.data.custom import convert_custom
from mmerkit.data.dialogue import build_dialogues
from mmerkit.data.inspect import inspect_store
from mmerkit.data.m3ed import LABELS as M3ED_LABELS
from mmerkit.data.store import write_store

torch.set_num_threads(1)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
MELD = DATA / "meld_text"
AVEC = DATA / "avec_iemocap_dimensional"
MOSEI_CSV = DATA / "mosei_labels_s3prl" / "CMU_MOSEI_Labels.csv"

# MELD's 7 classes are M3ED's (joy = happy)
MELD_TO_M3ED = {"joy": "happy", "neutral": "neutral", "sadness": "sad", "disgust": "disgust", "anger": "anger",
                "fear": "fear", "surprise": "surprise"}


def need(path: Path):
    return pytest.mark.skipif(not path.exists(), reason=f"real test data {path} is absent (only in the dev checkout)")


def read_meld(split: str) -> list[dict]:
    with open(MELD / f"{split}_sent_emo.csv", newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
@need(MELD)
def test_meld_dialogues_train_and_evaluate(tmp_path):
    from sklearn.feature_extraction.text import TfidfVectorizer

    rows = {s: read_meld(s) for s in ("train", "dev", "test")}
    tfidf = TfidfVectorizer(max_features=64, dtype=np.float32).fit([r["Utterance"] for r in rows["train"]])
    splits = {}
    for split, rs in rows.items():
        x = tfidf.transform([r["Utterance"] for r in rs]).toarray()
        splits["valid" if split == "dev" else split] = build_dialogues(
            [int(r["Dialogue_ID"]) for r in rs], [r["Emotion"] for r in rs], {"text": x}, M3ED_LABELS,
            order=[int(r["Utterance_ID"]) for r in rs], label_map=MELD_TO_M3ED, source=f"{split}_sent_emo.csv")
    sizes = {s: len(a.ids) for s, a in splits.items()}
    assert sizes == {"train": 1038, "valid": 114, "test": 280}
    per = {s: float(a.labels.sum(1).mean()) for s, a in splits.items()}
    assert per["train"] == pytest.approx(3.30, abs=0.01) and per["valid"] == pytest.approx(3.35, abs=0.01)
    assert per["test"] == pytest.approx(3.24, abs=0.01)
    assert int(splits["test"].lengths["text"].max()) == 33
    store = write_store(tmp_path / "meld", splits, M3ED_LABELS, source="custom:MELD dialogues (test)")
    report = inspect_store(store)
    assert report["splits"]["train"]["samples"] == 1038 and report["splits"]["train"]["modalities"]["text"]["nonfinite"] == 0
    [res] = api.train("early_fusion", store.path, out=tmp_path / "runs", epochs=2, overrides=TINY,
                      batch_size=64, progress=False)
    metrics = api.evaluate(res.run_dir, split="test")
    assert metrics["micro_f1"] == pytest.approx(res.test_metrics["micro_f1"])  # the export reproduces the run
    # dialogue-level multi-label sets: the trained model beats predicting no label at all (F1 0)
    assert metrics["micro_f1"] > 0.3


def load_avec(name: str) -> np.ndarray:
    return np.loadtxt(AVEC / name, delimiter=",", dtype=np.float32, ndmin=2)


@pytest.mark.slow
@need(AVEC)
def test_avec_custom_npz_beats_majority(tmp_path):
    feats = {"audio": load_avec("uttAVEC_GeMAPS.csv"), "text": load_avec("uttAVEC_CSA.csv"),
             "prosody": load_avec("utt_AVEC_GP+DN.csv")}
    y = load_avec("uttAVEC_biAV.csv").astype(np.uint8)
    n = len(y)
    assert n == 3262 and {m: x.shape[1] for m, x in feats.items()} == {"audio": 88, "text": 63, "prosody": 8}
    order = np.random.RandomState(0).permutation(n)
    split = np.empty(n, dtype="<U5")
    split[order[: int(0.7 * n)]] = "train"
    split[order[int(0.7 * n): int(0.8 * n)]] = "valid"
    split[order[int(0.8 * n):]] = "test"
    train = split == "train"
    for m, x in feats.items():  # standardise with train statistics, as a user would
        feats[m] = (x - x[train].mean(0)) / (x[train].std(0) + 1e-6)
    np.savez(tmp_path / "avec.npz", **feats, labels=y, label_names=np.array(["arousal", "valence"]), split=split,
             ids=np.array([f"utt{i}" for i in range(n)]))
    store = convert_custom(tmp_path / "avec.npz", tmp_path / "store", empty_labels="allow")
    assert store.splits == {"train": 2283, "valid": 326, "test": 653}
    majority = (y[train].mean(0) >= 0.5).astype(np.uint8)
    yt = y[split == "test"]
    pred = np.broadcast_to(majority, yt.shape)
    tp = int((pred & yt).sum())
    base_f1 = 2 * tp / (int(pred.sum()) + int(yt.sum()))
    [res] = api.train("early_fusion", store.path, out=tmp_path / "runs", epochs=15, overrides=TINY,
                      batch_size=64, threshold="search", progress=False)
    f1 = api.evaluate(res.run_dir, split="test")["micro_f1"]
    assert f1 > base_f1 + 0.02, (f1, base_f1)


@need(MOSEI_CSV)
def test_official_mosei_folds():
    seg = folds_from_labels_csv(MOSEI_CSV, level="segment")
    assert {s: len(v) for s, v in seg.items()} == {"train": 16327, "valid": 1871, "test": 4662}
    vid = folds_from_labels_csv(MOSEI_CSV)
    assert {s: len(v) for s, v in vid.items()} == {"train": 2249, "valid": 300, "test": 676}
    assert not set(vid["train"]) & set(vid["test"])
