"""MELD transcripts -> manifest -> dialogue-level multi-label text store (benchmarks/meld_text.py).

Reads MELD's utterance CSVs from ../shared/data/meld_text (or $MMERKIT_MELD_TEXT); they are
not shipped with mmerkit (GPL-3.0), so the tests skip, saying so, where they are absent. The
text extractor here is the fake one (a few dialogues, no model); the benchmark uses MiniLM.
"""

from __future__ import annotations

import csv
import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest

MELD = Path(os.environ.get("MMERKIT_MELD_TEXT", Path(__file__).resolve().parents[2] / "shared/data/meld_text"))
pytestmark = pytest.mark.skipif(not (MELD / "train_sent_emo.csv").exists(),
                                reason=f"MELD's CSVs are not at {MELD} (set MMERKIT_MELD_TEXT; not shipped)")
TESTS = Path(__file__).parent


def _bench():
    spec = importlib.util.spec_from_file_location("meld_text", TESTS.parent / "benchmarks" / "meld_text.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_manifest_keeps_every_utterance_with_meld_split_and_dialogues(tmp_path):
    man = _bench().write_manifest(MELD, tmp_path / "m.csv")
    rows = list(csv.DictReader(open(man, encoding="utf-8")))
    sizes = {s: sum(r["split"] == s for r in rows) for s in ("train", "valid", "test")}
    assert sizes == {"train": 9989, "valid": 1109, "test": 2610}
    dialogues = {s: len({r["dialogue"] for r in rows if r["split"] == s}) for s in sizes}
    assert dialogues == {"train": 1038, "valid": 114, "test": 280}
    assert {r["labels"] for r in rows} == {"anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise"}
    assert all(r["media"] == "" and r["transcript"] for r in rows)


def test_dialogue_store_labels_are_the_union_of_utterance_emotions(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(TESTS))
    from mmerkit.extract.config import ExtractConfig
    from mmerkit.extract.pipeline import run_extract

    rows = list(csv.DictReader(open(_bench().write_manifest(MELD, tmp_path / "all.csv"), encoding="utf-8")))
    keep = {"train-0", "train-1", "train-2", "train-3", "valid-0", "valid-1", "test-0", "test-1"}
    small = [r for r in rows if r["dialogue"] in keep]
    with open(tmp_path / "m.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(small[0]))
        w.writeheader()
        w.writerows(small)
    cfg = ExtractConfig(text="fake_text", audio=None, visual=None, asr="off", plugins=["fake_extractors"])
    store = run_extract(tmp_path / "m.csv", tmp_path / "store", config=cfg).store
    assert store.meta["extract"]["level"] == "dialogue" and store.modalities == {"text": 6}
    tr = store.split("train")
    for k, did in enumerate(tr.ids):
        utts = [r for r in small if r["dialogue"] == did]
        assert tr.lengths["text"][k] == len(utts)  # one step per utterance
        want = sorted({r["labels"] for r in utts})
        assert [store.labels[j] for j in np.flatnonzero(tr.labels[k])] == want
