"""Done-when of the foundation and CARAT issues: a file in the published aligned CMU-MOSEI layout
converts, trains (early fusion and CARAT), evaluates and predicts through `mmer`, and the MulT
unaligned pickle converts with labels from the aligned file."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from test_cli import mmer
from test_mosei import _aligned, _save_pkl, _save_pt, _unaligned

from mmerkit.data.store import FeatureStore
from mmerkit.models.base import model_class

pytestmark = pytest.mark.filterwarnings("ignore:loading .* unpickles:UserWarning")


def _sets(model: str) -> list[str]:
    """--set arguments for the model's tiny test configuration."""
    out = []
    for key, value in model_class(model).test_params.items():
        text = json.dumps(value).replace('"', "")  # {text: 1, ...} is valid YAML flow style
        out += ["--set", f"model.{key}={text}"]
    return out


@pytest.mark.parametrize("model", ["early_fusion", "carat"])
def test_aligned_mosei_file_through_the_cli(tmp_path, model):
    pt = _save_pt(_aligned(), tmp_path / "train_valid_test.pt")
    store_dir = tmp_path / "mosei"
    mmer("data", "convert", "--from", "mosei-aligned", str(pt), "--out", str(store_dir))
    store = FeatureStore(store_dir)
    raw = torch.load(pt, weights_only=False)
    for split in ("train", "valid", "test"):  # the store holds the file's arrays, unchanged
        for m, key in (("text", "src-text"), ("visual", "src-visual"), ("audio", "src-audio")):
            np.testing.assert_array_equal(store.split(split).features[m], raw[split][key])

    runs = tmp_path / "runs"
    mmer("train", "-m", model, "-d", str(store_dir), "--epochs", "2", "--out", str(runs), *_sets(model),
         "--set", "train.batch_size=4", "--set", "train.progress=false")
    (run,) = [p for p in runs.iterdir() if p.is_dir()]
    saved = json.loads((run / "test_metrics.json").read_text())
    metrics = json.loads(mmer("eval", str(run), "--split", "test", "--json"))
    for key in ("micro_f1", "accuracy", "hamming_loss", "macro_f1"):  # eval reproduces the run's test
        assert metrics[key] == pytest.approx(saved[key]), key

    mmer("predict", str(run / "export"), "--inputs", str(store_dir), "--split", "test",
         "--out", str(tmp_path / "preds.csv"))
    with open(tmp_path / "preds.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and list(rows[0])[:7] == ["id", *store.labels]
    # the CSV holds the probabilities that reproduce the saved test metrics at the saved threshold
    probs = np.array([[float(r[lab]) for lab in store.labels] for r in rows])
    from mmerkit.metrics import binarize, compute_metrics

    again = compute_metrics(store.split("test").labels, binarize(probs, saved["threshold"]), store.labels)
    assert again["micro_f1"] == pytest.approx(saved["micro_f1"], abs=1e-6)


def test_unaligned_mosei_with_labels_from(tmp_path):
    pt = _save_pt(_aligned(), tmp_path / "train_valid_test.pt")
    pkl = _save_pkl(_unaligned(), tmp_path / "mosei_senti_data_noalign.pkl")
    mmer("data", "convert", "--from", "mosei-unaligned", str(pkl), "--labels-from", str(pt),
         "--out", str(tmp_path / "unaligned"))
    store = FeatureStore(tmp_path / "unaligned")
    assert not store.aligned and store.split("train").features["visual"].shape[1] == 10
