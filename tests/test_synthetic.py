"""The embedded synthetic dataset: determinism, shapes, label statistics, knobs, baseline."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mmerkit.data.store import FeatureStore
from mmerkit.data.synthetic import (
    SynthConfig,
    jaccard_accuracy,
    make_synthetic,
    pooled_logreg_baseline,
    split_sizes,
    write_synthetic,
)
from mmerkit.errors import ConfigError, DataError

# small dims keep the statistics tests fast; label draws do not depend on dims or seq_len
SMALL_DIMS = {"text": 6, "visual": 5, "audio": 4}


def _all_labels(splits) -> np.ndarray:
    return np.concatenate([s.labels for s in splits.values()]).astype(int)


def test_default_shapes_and_ids():
    cfg = SynthConfig(samples=100, seq_len=12)
    splits = make_synthetic(cfg)
    assert list(splits) == ["train", "valid", "test"]
    assert {k: len(v.labels) for k, v in splits.items()} == {"train": 70, "valid": 10, "test": 20}
    for name, s in splits.items():
        n = len(s.labels)
        assert {m: x.shape for m, x in s.features.items()} == {
            "text": (n, 12, 300), "visual": (n, 12, 35), "audio": (n, 12, 74)}
        assert all(x.dtype == np.float32 for x in s.features.values())
        assert s.labels.shape == (n, 6) and s.labels.dtype == np.uint8
        assert s.ids[3] == f"synth-{name}-00003" and len(set(s.ids)) == n
        for ln in s.lengths.values():
            assert ln.shape == (n,) and ln.min() >= 1 and ln.max() <= 12


def test_deterministic_by_seed():
    cfg = SynthConfig(samples=120, seq_len=10, seed=7, missing_rate=0.2, label_noise=0.1)
    a, b = make_synthetic(cfg), make_synthetic(cfg)
    for k in a:
        assert np.array_equal(a[k].labels, b[k].labels)
        for m in a[k].features:
            assert np.array_equal(a[k].features[m], b[k].features[m])
            assert np.array_equal(a[k].lengths[m], b[k].lengths[m])
    c = make_synthetic(cfg.model_copy(update={"seed": 8}))
    assert not np.array_equal(a["train"].features["text"], c["train"].features["text"])


def test_label_statistics():
    y = _all_labels(make_synthetic(SynthConfig(samples=4000, seq_len=4, dims=SMALL_DIMS)))
    assert 1.4 <= y.sum(1).mean() <= 1.8
    assert y.sum(1).min() >= 1
    freq = y.mean(0)
    assert freq.argmax() == 0  # happy
    co = (y.T @ y) / y.sum(0)[:, None]  # co[i, j] = P(j | i)
    assert co[0, 1] < 0.12  # happy rarely with sad
    assert co[1, 2] > 0.25 and co[1, 4] > 0.25  # sad with anger and disgust


def test_variable_lengths_and_zero_padding():
    s = make_synthetic(SynthConfig(samples=300, seq_len=20, dims=SMALL_DIMS))["train"]
    ln = s.lengths["text"]
    assert (ln < 20).mean() > 0.15 and (ln == 20).mean() > 0.5
    steps = np.arange(20)[None, :, None]
    for m, x in s.features.items():
        assert np.array_equal(s.lengths[m], ln)  # aligned: one length per sample
        assert not np.abs(x * (steps >= ln[:, None, None])).any()


def test_missing_rate_honoured():
    s = make_synthetic(SynthConfig(samples=3000, seq_len=6, dims=SMALL_DIMS, missing_rate=0.3))
    lens = np.concatenate([np.stack(list(v.lengths.values()), 1) for v in s.values()])
    missing = lens == 0
    assert missing.sum(1).max() == 1  # one modality at most
    assert abs(missing.any(1).mean() - 0.3) < 0.04
    assert (missing.mean(0) > 0.06).all()  # every modality gets dropped sometimes
    feats = s["train"].features["visual"][s["train"].lengths["visual"] == 0]
    assert feats.size and not feats.any()
    none = make_synthetic(SynthConfig(samples=300, seq_len=6, dims=SMALL_DIMS))
    assert all((ln > 0).all() for v in none.values() for ln in v.lengths.values())


def test_label_noise_only_in_train():
    base = SynthConfig(samples=2000, seq_len=4, dims=SMALL_DIMS)
    clean, noisy = make_synthetic(base), make_synthetic(base.model_copy(update={"label_noise": 0.1}))
    for k in ("valid", "test"):
        assert np.array_equal(clean[k].labels, noisy[k].labels)
        assert np.array_equal(clean[k].features["text"], noisy[k].features["text"])
    flipped = (clean["train"].labels != noisy["train"].labels).mean()
    assert 0.06 < flipped < 0.11
    assert noisy["train"].labels.sum(1).min() >= 1


def test_other_labels_and_modalities():
    cfg = SynthConfig(samples=90, seq_len=5, dims={"a": 3, "b": 2}, labels=tuple("abcdefgh"))
    s = make_synthetic(cfg)
    assert s["train"].labels.shape[1] == 8 and set(s["test"].features) == {"a", "b"}
    assert _all_labels(s).sum(1).min() >= 1


@pytest.mark.parametrize("bad, says", [
    ({"split": (0.5, 0.1, 0.1)}, "option split: split fractions must be >= 0 and sum to 1"),
    ({"split": (1.2, -0.1, -0.1)}, "option split: split fractions"),
    ({"samples": 4, "split": (0.9, 0.05, 0.05)}, r"synthetic data: samples=4 .* leaves an empty split"),
    ({"labels": ("a", "a")}, "option labels: labels must be non-empty and unique"),
    ({"dims": {}}, "option dims: dims needs at least one modality"),
    ({"missing_rate": 1.5}, r"option missing_rate: .*less than or equal to 1 \(got 1.5\).*--missing-rate"),
    ({"colour": "red"}, "option colour: Extra inputs are not permitted .*Valid keys: samples"),
])
def test_config_validation(bad, says):
    """A bad knob is a ConfigError (the CLI prints it without a traceback) naming it."""
    with pytest.raises(ConfigError, match=says):
        SynthConfig(**bad)


def test_split_sizes():
    assert split_sizes(3000, (0.7, 0.1, 0.2)) == {"train": 2100, "valid": 300, "test": 600}


def test_write_synthetic(tmp_path):
    cfg = SynthConfig(samples=50, seq_len=6, dims=SMALL_DIMS)
    store = write_synthetic(tmp_path / "s", cfg)
    assert isinstance(store, FeatureStore)
    meta = json.loads((tmp_path / "s" / "meta.json").read_text())
    assert meta["name"] == "synthetic" and meta["source"] == "mmerkit synthetic" and meta["aligned"]
    assert store.labels == list(cfg.labels) and store.modalities == SMALL_DIMS
    mem = make_synthetic(cfg)
    assert np.array_equal(store.split("test").features["audio"], mem["test"].features["audio"])
    assert store.split("train").ids[0] == "synth-train-00000"
    with pytest.raises(DataError, match="already exists"):
        write_synthetic(tmp_path / "s", cfg)
    write_synthetic(tmp_path / "s", cfg.model_copy(update={"seed": 1}), overwrite=True)


def test_tiny_store_fixture(tiny_store):
    store = FeatureStore(tiny_store)
    assert store.splits == {"train": 96, "valid": 32, "test": 32}
    assert store.spec().max_len == {"text": 8, "visual": 8, "audio": 8}


def test_jaccard_accuracy():
    y = np.array([[1, 0, 1], [0, 1, 0], [0, 0, 0]])
    p = np.array([[1, 1, 0], [0, 1, 0], [0, 0, 0]])
    assert jaccard_accuracy(y, p) == pytest.approx((1 / 3 + 1 + 1) / 3)


def test_pooled_logreg_baseline(tiny_store):
    res = pooled_logreg_baseline(tiny_store)
    assert set(res) >= {"micro_f1", "accuracy"} and res["n_train"] == 96 and res["n_test"] == 32
    assert 0.0 <= res["micro_f1"] <= 1.0 and 0.0 <= res["accuracy"] <= 1.0
    mem = pooled_logreg_baseline(make_synthetic(SynthConfig(samples=200, seq_len=10, missing_rate=0.2)))
    assert 0.0 <= mem["micro_f1"] <= 1.0


def test_signal_makes_labels_learnable_easy_setting():
    # with little noise the pooled baseline is clearly above chance: the labels are in the features
    cfg = SynthConfig(samples=600, seq_len=6, dims=SMALL_DIMS, difficulty=0.1, distractor_rate=0.0)
    assert pooled_logreg_baseline(make_synthetic(cfg))["micro_f1"] > 0.6


def test_default_size_is_3000_samples():
    """The default's size, without generating its 245 MB: the splits make_synthetic cuts are
    split_sizes(samples, split) (checked on a small config in test_write_synthetic / sizes)."""
    cfg = SynthConfig()
    assert cfg.samples == 3000 and sum(split_sizes(cfg.samples, cfg.split).values()) == 3000
    small = SynthConfig(samples=90, seq_len=3, dims=SMALL_DIMS)
    assert {k: len(v.labels) for k, v in make_synthetic(small).items()} == split_sizes(90, small.split)


# ----------------------------------------------------------------------------- profiles


def _digest(cfg: SynthConfig) -> str:
    import hashlib

    h = hashlib.sha256()
    for _, s in sorted(make_synthetic(cfg).items()):
        for m in sorted(s.features):
            h.update(np.ascontiguousarray(s.features[m]).tobytes())
            h.update(np.asarray(s.lengths[m]).tobytes())
        h.update(np.asarray(s.labels).tobytes())
        h.update("".join(s.ids).encode())
    return h.hexdigest()


def test_default_profile_is_byte_identical():
    """Every published number was measured on these arrays: digests taken from the generator
    before profiles existed."""
    assert _digest(SynthConfig(samples=200, seq_len=12)) == \
        "ccba98c9aa87d29feded75ae446c903d98d36b1ffa8c83b0abb8f9c181e0ab81"
    assert _digest(SynthConfig(samples=120, missing_rate=0.3, label_noise=0.1, seed=5)) == \
        "6625e9756883bc27c78eb7a0e154ab9c9a8a4b5b68c9882a2656563c564bac9d"
    assert _digest(SynthConfig(samples=200, seq_len=12, profile="embedded")) == \
        _digest(SynthConfig(samples=200, seq_len=12))


def test_mosei_like_profile_statistics():
    cfg = SynthConfig(samples=2000, seq_len=20, dims=SMALL_DIMS, profile="mosei-like")
    splits = make_synthetic(cfg)
    assert _digest(cfg) == _digest(cfg)  # deterministic
    y = _all_labels(splits)
    freq = dict(zip(cfg.labels, y.mean(0), strict=True))
    assert 0.45 <= freq["happy"] <= 0.62  # happy in about half the samples
    assert freq["fear"] < 0.12 and freq["surprise"] < 0.14  # rare
    corr = np.corrcoef(y.T)
    sad, anger, disgust, happy = (cfg.labels.index(k) for k in ("sad", "anger", "disgust", "happy"))
    assert min(corr[sad, anger], corr[sad, disgust], corr[anger, disgust]) > 0.1  # negatives together
    assert corr[happy, sad] < -0.3
    train = splits["train"]
    assert 0.05 < np.mean(train.lengths["visual"] == 0) + np.mean(train.lengths["text"] == 0) < 0.2  # dropped
    blank = (np.abs(train.features["visual"]).sum((1, 2)) == 0) & (train.lengths["visual"] > 0)
    assert 0.1 < blank.mean() < 0.3  # blank visual streams at full length
    # heavy-tailed noise: the embedded profile's Gaussian noise has far fewer extreme values
    # (a wide modality, so that a bump adds little to any one dimension)
    wide = SynthConfig(samples=200, seq_len=20, dims={"text": 200}, profile="mosei-like")
    x = make_synthetic(wide)["train"].features["text"]
    gauss = make_synthetic(wide.model_copy(update={"profile": "embedded"}))["train"].features["text"]
    assert np.mean(np.abs(x) > 5) > 20 * max(np.mean(np.abs(gauss) > 5), 1e-5)
    assert _digest(cfg) != _digest(cfg.model_copy(update={"profile": "embedded"}))


def test_profile_from_cli_api_and_config(tmp_path):
    from typer.testing import CliRunner

    from mmerkit import api
    from mmerkit.cli import app

    res = CliRunner().invoke(app, ["data", "synth", "--out", str(tmp_path / "cli"), "--samples", "40",
                                   "--profile", "mosei-like"])
    assert res.exit_code == 0, res.output
    cli_store = FeatureStore(tmp_path / "cli")
    assert cli_store.meta["name"] == "synthetic-mosei-like"
    assert cli_store.meta["source"] == "mmerkit synthetic (mosei-like)"
    py_store = api.data_synth(tmp_path / "py", samples=40, profile="mosei-like")
    assert np.array_equal(py_store.split("test").features["audio"], cli_store.split("test").features["audio"])
    # a config selects it as data.synthetic.profile (what `--set data.synthetic.profile=...` sets)
    cached = api.embedded_store({"samples": 40, "profile": "mosei-like"})
    assert np.array_equal(cached.split("test").labels, cli_store.split("test").labels)
    with pytest.raises(ConfigError, match="Did you mean 'mosei-like'"):
        SynthConfig(profile="mosei_like")
