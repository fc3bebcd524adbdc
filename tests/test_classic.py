"""Classic baselines BR / CC / LP: checked against scikit-learn fitted directly on the same pooled
features, and run end to end through `mmer train` / `mmer eval` / `mmer predict`."""

import json

import numpy as np
import pytest
import torch
from helpers import LABELS, random_split, toy_store
from sklearn.linear_model import LogisticRegression
from sklearn.multioutput import ClassifierChain
from typer.testing import CliRunner

from mmerkit.cli import app, expand_multi_value
from mmerkit.data.batch import StoreDataset, collate
from mmerkit.data.store import DataSpec, write_store
from mmerkit.data.synthetic import _pool
from mmerkit.models.base import create_model
from mmerkit.predict import Predictor

runner = CliRunner()
C, MAX_ITER = 0.5, 500


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """3 labels, text 8 + audio 4, variable lengths and 25% missing modalities."""
    return toy_store(tmp_path_factory.mktemp("classic") / "store", n_train=64, n_valid=24, n_test=32,
                     missing=0.25)


def split_batch(store, split):
    ds = StoreDataset(store, split)
    return collate(ds.__getitems__(list(range(len(ds)))))


def fitted(name, store, **params):
    """(model fitted on train, standardised train / test features as sklearn sees them)."""
    model = create_model(name, store.spec(), {"C": C, "max_iter": MAX_ITER, **params})
    train, test = split_batch(store, "train"), split_batch(store, "test")
    x_tr = model.pooled_features(train).numpy().astype(np.float64)
    x_te = model.pooled_features(test).numpy().astype(np.float64)
    model.fit_arrays(x_tr, train.labels, seed=3)
    mean, std = x_tr.mean(0), x_tr.std(0)
    std[std < 1e-12] = 1.0
    return model, (x_tr - mean) / std, (x_te - mean) / std, train, test


def test_pooled_features_are_mean_max_per_modality_with_zeros_for_missing(store):
    split = store.split("train")
    batch = split_batch(store, "train")
    model = create_model("br", store.spec(), {})
    lengths = {m: np.asarray(split.lengths[m]) for m in store.modalities}
    want = _pool({m: np.asarray(split.features[m]) for m in store.modalities}, lengths)
    got = model.pooled_features(batch).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert (lengths["audio"] == 0).any()
    assert (got[lengths["audio"] == 0][:, -8:] == 0).all()  # audio block: mean 4 + max 4


def test_br_equals_sklearn_logistic_regression_per_label(store):
    model, z_tr, z_te, train, test = fitted("br", store)
    y = train.labels.numpy().astype(int)
    want = np.stack([LogisticRegression(C=C, max_iter=MAX_ITER).fit(z_tr, y[:, j]).predict_proba(z_te)[:, 1]
                     for j in range(y.shape[1])], 1)
    with torch.no_grad():
        got = model(test).probs.numpy()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


@pytest.mark.parametrize("order", ["random", "labels"])
def test_cc_equals_sklearn_classifier_chain(store, order):
    model, z_tr, z_te, train, test = fitted("cc", store, order=order)
    chain = ClassifierChain(LogisticRegression(C=C, max_iter=MAX_ITER),
                            order="random" if order == "random" else None, random_state=3)
    chain.fit(z_tr, train.labels.numpy().astype(int))
    assert model.order.tolist() == list(chain.order_)
    with torch.no_grad():
        got = model(test).probs.numpy()
    np.testing.assert_allclose(got, chain.predict_proba(z_te), rtol=0, atol=1e-6)


def test_lp_label_sets_marginals_and_sklearn(store):
    model, z_tr, z_te, train, test = fitted("lp", store)
    y = train.labels.numpy().astype(int)
    sets = np.unique(y, axis=0)
    np.testing.assert_array_equal(model.label_sets.numpy(), sets)  # one class per distinct train set
    codes = np.array([np.flatnonzero((sets == row).all(1))[0] for row in y])
    want_sets = LogisticRegression(C=C, max_iter=MAX_ITER).fit(z_tr, codes).predict_proba(z_te)
    with torch.no_grad():
        out = model(test)
    q, p = out.aux["set_probs"].numpy(), out.probs.numpy()
    np.testing.assert_allclose(q, want_sets, rtol=0, atol=1e-6)
    np.testing.assert_allclose(q.sum(1), 1.0, atol=1e-9)
    np.testing.assert_allclose(p, q @ sets, atol=1e-6)  # p_l = sum of P(set) over sets holding l
    np.testing.assert_allclose(p.sum(1), q @ sets.sum(1), atol=1e-5)  # expected cardinality
    assert ((p >= 0) & (p <= 1)).all()


@pytest.mark.parametrize("n_sets", [1, 2])
def test_lp_with_one_or_two_label_sets(n_sets):
    spec = DataSpec(("a", "b"), {"text": 3})
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20, 6))
    y = np.zeros((20, 2))
    y[:, 0] = 1
    if n_sets == 2:
        y[10:, 1] = 1
        x[10:, 0] += 3
    model = create_model("lp", spec, {}).fit_arrays(x, y)
    assert model.label_sets.shape == (n_sets, 2)
    batch = collate({"modalities": ("text",), "x:text": rng.normal(size=(5, 1, 3)).astype(np.float32),
                     "len:text": np.ones(5, np.int64), "labels": np.zeros((5, 2), np.float32),
                     "index": np.arange(5)})
    p = model(batch).probs
    assert torch.allclose(p[:, 0], torch.ones(5))
    if n_sets == 1:
        assert torch.allclose(p[:, 1], torch.zeros(5))


@pytest.mark.parametrize("name", ["br", "cc"])
def test_label_constant_in_train_predicts_its_smoothed_rate(name):
    spec = DataSpec(("a", "b"), {"text": 3})
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 6))
    y = np.stack([(x[:, 0] > 0), np.zeros(30)], 1)  # "b" never occurs in train
    model = create_model(name, spec, {}).fit_arrays(x, y)
    z = (torch.from_numpy(x) - model.mean) / model.scale
    p = model._predict(z)[0]
    torch.testing.assert_close(p[:, 1], torch.full((30,), 0.5 / 31, dtype=torch.float64))


@pytest.mark.parametrize("name", ["br", "cc", "lp"])
def test_train_eval_predict_through_the_cli(name, store, tmp_path):
    def mmer(*args):
        result = runner.invoke(app, expand_multi_value(list(args)), catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.output

    assert name in mmer("models")
    mmer("train", "-m", name, "-d", str(store.path), "--out", str(tmp_path / "runs"), "--seeds", "1",
         "--set", f"model.max_iter={MAX_ITER}", "--set", f"model.C={C}", "--set", "train.threshold=search",
         "--set", "train.progress=false")
    run = tmp_path / "runs" / f"{name}_toy_seed1"  # named by the store's own name
    for f in ("config.yaml", "env.json", "metrics.csv", "valid_metrics.json", "test_metrics.json",
              "export/config.json", "export/model.safetensors"):
        assert (run / f).exists(), f
    lines = (run / "metrics.csv").read_text().splitlines()
    assert len(lines) == 3 and lines[1].startswith("1,train") and lines[2].startswith("1,valid")
    test = json.loads((run / "test_metrics.json").read_text())
    assert test["best_epoch"] == 1 and 0 <= test["micro_f1"] <= 1 and "f1/happy" in test
    evaluated = json.loads(mmer("eval", str(run), "-d", str(store.path), "--json"))
    assert evaluated["micro_f1"] == pytest.approx(test["micro_f1"])  # the export reproduces the run
    dropped = json.loads(mmer("eval", str(run), "--drop-modality", "text", "--json"))
    # the text block of the pooled features became zeros: the predictions change
    assert (dropped["micro_f1"], dropped["hamming_loss"]) != (evaluated["micro_f1"], evaluated["hamming_loss"])
    mmer("predict", str(run / "export"), "--inputs", str(store.path), "--out", str(tmp_path / "p.csv"))
    assert (tmp_path / "p.csv").read_text().startswith("id," + ",".join(LABELS) + ",labels")


def test_predictor_on_missing_modalities_gives_finite_probabilities(tmp_path):
    from mmerkit import api

    store = toy_store(tmp_path / "store", n_train=48, n_valid=16, n_test=16)
    (res,) = api.train("lp", store.path, out=tmp_path / "runs", overrides=["train.progress=false"])
    test = random_split(12, seed=7, missing=0.0)
    test.lengths["audio"][:6] = 0
    test.lengths["text"][6:] = 0  # text carries the signal; without it the model still answers
    other = write_store(tmp_path / "other", {"test": test}, LABELS, source="toy")
    preds = Predictor.from_pretrained(res.run_dir / "export").predict(other.path)
    assert preds.probs.shape == (12, len(LABELS)) and np.isfinite(preds.probs).all()
    # the pooled features of a missing modality are zeros: the model answers from the other one,
    # so rows differ by what is present (a model ignoring the inputs would give one row for all)
    assert np.ptp(preds.probs[:6], axis=0).max() > 1e-3 and np.ptp(preds.probs[6:], axis=0).max() > 1e-3


def test_br_run_matches_the_pooled_logreg_baseline(tiny_store, tmp_path):
    """Same features, scaling and classifier as data.synthetic's reference baseline, threshold 0.5."""
    from mmerkit import api
    from mmerkit.data.synthetic import pooled_logreg_baseline

    (res,) = api.train("br", tiny_store, out=tmp_path, overrides=["train.progress=false", "model.C=1.0"])
    ref = pooled_logreg_baseline(tiny_store)
    assert res.threshold == 0.5
    assert res.test_metrics["micro_f1"] == pytest.approx(ref["micro_f1"], abs=1e-9)
    assert res.test_metrics["macro_f1"] == pytest.approx(ref["macro_f1"], abs=1e-9)


def test_C_is_chosen_on_validation(store):
    """C: null fits every C of C_grid on train and keeps the best validation micro-F1; the
    engine's hook reads train and valid through SplitData, never test."""
    from mmerkit.metrics import binarize, compute_metrics
    from mmerkit.models.base import SplitData

    grid = (1e-4, 0.05, 10.0)
    batches = {s: split_batch(store, s) for s in ("train", "valid", "test")}
    read_splits = []

    def read(split, fn):
        read_splits.append(split)
        return fn(batches[split]).numpy()

    model = create_model("br", store.spec(), {"C_grid": grid, "max_iter": MAX_ITER})
    logged = model.fit_closed_form(SplitData(read=read, seed=1))
    assert set(read_splits) == {"train", "valid"}
    y_valid = batches["valid"].labels.numpy()
    scores = {}
    for C in grid:
        ref = create_model("br", store.spec(), {"C": C, "max_iter": MAX_ITER})
        ref.fit_arrays(read("train", ref.pooled_features), batches["train"].labels)
        with torch.no_grad():
            scores[C] = compute_metrics(y_valid, binarize(ref(batches["valid"]).probs.numpy(), 0.5))["micro_f1"]
    best = max(grid, key=lambda C: (scores[C], -C))
    assert len(set(scores.values())) > 1, scores  # the grid makes a difference on this data
    assert logged["C"] == best and logged["valid_micro_f1"] == pytest.approx(scores[best])
    with torch.no_grad():
        got = model(batches["test"]).probs
    ref = create_model("br", store.spec(), {"C": best, "max_iter": MAX_ITER})
    ref.fit_arrays(ref.pooled_features(batches["train"]), batches["train"].labels)
    with torch.no_grad():
        torch.testing.assert_close(got, ref(batches["test"]).probs)
