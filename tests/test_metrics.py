"""mmerkit.metrics against scikit-learn, hand-computed cases and brute-force threshold search."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from sklearn.metrics import (
    accuracy_score,
    hamming_loss,
    jaccard_score,
    precision_recall_fscore_support,
)

from mmerkit.metrics import (
    HIGHER_IS_BETTER,
    MAIN_METRICS,
    binarize,
    compute_metrics,
    format_metrics,
    search_threshold,
)

TOL = 1e-6


def sklearn_metrics(y_true: np.ndarray, y_pred: np.ndarray, empty: str = "one") -> dict:
    """The reference: every key of compute_metrics, computed by scikit-learn."""
    n_labels = y_true.shape[1]
    ref = {"hamming_loss": hamming_loss(y_true, y_pred)}
    if n_labels == 1:
        # sklearn reads an (N, 1) array as binary, not multi-label (samples averaging then
        # fails). An all-zero extra column in both changes no count of label 0 and no
        # per-sample count; `labels=` below keeps it out of every average.
        y_true = np.hstack([y_true, np.zeros_like(y_true)])
        y_pred = np.hstack([y_pred, np.zeros_like(y_pred)])
    prfs = functools.partial(
        precision_recall_fscore_support, labels=list(range(n_labels)), zero_division=0
    )
    for avg in ("micro", "macro"):
        p, r, f, _ = prfs(y_true, y_pred, average=avg)
        ref.update({f"{avg}_precision": p, f"{avg}_recall": r, f"{avg}_f1": f})
    for avg in ("weighted", "samples"):
        ref[f"{avg}_f1"] = prfs(y_true, y_pred, average=avg)[2]
    # sklearn's samples-Jaccard scores an empty-vs-empty sample with zero_division.
    ref["accuracy"] = jaccard_score(
        y_true, y_pred, average="samples", zero_division=1 if empty == "one" else 0
    )
    ref["subset_accuracy"] = accuracy_score(y_true, y_pred)
    p, r, f, s = prfs(y_true, y_pred, average=None)
    for i in range(n_labels):
        ref.update({f"precision/{i}": p[i], f"recall/{i}": r[i], f"f1/{i}": f[i]})
        ref[f"support/{i}"] = s[i]
    return ref


def assert_matches_sklearn(y_true, y_pred, empty="one"):
    ours = compute_metrics(y_true, y_pred, empty=empty)
    ref = sklearn_metrics(y_true, y_pred, empty=empty)
    assert set(ours) == set(ref)
    for key, value in ref.items():
        assert isinstance(ours[key], float), key
        assert ours[key] == pytest.approx(float(value), abs=TOL), key


def random_pair(seed, shape, density):
    rng = np.random.default_rng(seed)
    y_true = (rng.random(shape) < density).astype(np.uint8)
    y_pred = (rng.random(shape) < density).astype(np.uint8)
    if shape[0] > 2 and shape[1] > 2:
        # Force the hard cases into every larger draw: an empty row in both, a label never
        # true, a label never predicted.
        row = rng.integers(shape[0])
        y_true[row] = 0
        y_pred[row] = 0
        y_true[:, 0] = 0
        y_pred[:, 1] = 0
    return y_true, y_pred


# ---------------------------------------------------------------------------- vs scikit-learn


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("shape", [(1, 1), (1, 6), (9, 1), (40, 6), (123, 7)])
@pytest.mark.parametrize("density", [0.0, 0.1, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("empty", ["one", "reference"])
def test_random_inputs_match_sklearn(seed, shape, density, empty):
    y_true, y_pred = random_pair(seed, shape, density)
    assert_matches_sklearn(y_true, y_pred, empty)


@pytest.mark.parametrize(
    "y_true, y_pred",
    [
        pytest.param([[1, 0, 1], [0, 1, 0]], [[0, 0, 0], [0, 0, 0]], id="all-zero-pred"),
        pytest.param([[0, 0, 0], [0, 0, 0]], [[1, 0, 1], [0, 1, 0]], id="all-zero-true"),
        pytest.param([[0, 0, 0], [0, 0, 0]], [[0, 0, 0], [0, 0, 0]], id="all-zero-both"),
        pytest.param([[1, 1, 1], [1, 1, 1]], [[1, 1, 1], [1, 1, 1]], id="all-one-both"),
        pytest.param([[1, 0, 0], [1, 1, 0]], [[1, 0, 1], [0, 1, 0]], id="label-never-true"),
        pytest.param([[1, 0], [0, 1]], [[0, 1], [1, 0]], id="all-wrong"),
        pytest.param([[1, 0, 1]], [[1, 1, 0]], id="one-sample"),
        pytest.param([[1], [0], [1]], [[1], [1], [0]], id="one-label"),
        pytest.param([[0]], [[0]], id="one-cell-empty"),
        pytest.param([[1]], [[1]], id="one-cell-hit"),
    ],
)
def test_edge_cases_match_sklearn(y_true, y_pred):
    y_true, y_pred = np.array(y_true), np.array(y_pred)
    assert_matches_sklearn(y_true, y_pred, "one")
    assert_matches_sklearn(y_true, y_pred, "reference")


def test_torch_bool_and_float_inputs_agree_with_numpy():
    y_true, y_pred = random_pair(7, (30, 5), 0.4)
    expected = compute_metrics(y_true, y_pred)
    assert compute_metrics(torch.from_numpy(y_true), torch.from_numpy(y_pred)) == expected
    assert compute_metrics(y_true.astype(bool), y_pred.astype(bool)) == expected
    assert compute_metrics(y_true.astype(np.float32), y_pred.tolist()) == expected


# ---------------------------------------------------------------------------- Jaccard accuracy

# Samples: {0} vs {0,1} -> 1/2; {} vs {} -> empty convention; {0,1} vs {1} -> 1/2.
HAND_TRUE = np.array([[1, 0, 0], [0, 0, 0], [1, 1, 0]])
HAND_PRED = np.array([[1, 1, 0], [0, 0, 0], [0, 1, 0]])


def test_empty_convention_one_scores_empty_sample_as_one():
    assert compute_metrics(HAND_TRUE, HAND_PRED)["accuracy"] == pytest.approx(2 / 3)


def test_empty_convention_reference_scores_empty_sample_as_zero():
    m = compute_metrics(HAND_TRUE, HAND_PRED, empty="reference")
    assert m["accuracy"] == pytest.approx(1 / 3)


def test_accuracy_is_not_rounded():
    y_true = np.array([[1, 1, 1], [1, 0, 0], [1, 0, 0]])
    y_pred = np.array([[1, 0, 0], [1, 0, 0], [1, 0, 0]])
    assert compute_metrics(y_true, y_pred)["accuracy"] == pytest.approx(7 / 9, abs=1e-12)


def test_empty_convention_only_changes_accuracy():
    one = compute_metrics(HAND_TRUE, HAND_PRED)
    ref = compute_metrics(HAND_TRUE, HAND_PRED, empty="reference")
    assert {k for k in one if one[k] != ref[k]} == {"accuracy"}


# ---------------------------------------------------------------------------- keys


def test_per_label_keys_use_names_and_support_is_true_count():
    m = compute_metrics(HAND_TRUE, HAND_PRED, label_names=["happy", "sad", "anger"])
    assert m["support/happy"] == 2.0 and m["support/sad"] == 1.0 and m["support/anger"] == 0.0
    assert m["precision/happy"] == 1.0 and m["recall/happy"] == 0.5
    assert m["f1/happy"] == pytest.approx(2 / 3)
    assert m["precision/sad"] == 0.5 and m["recall/sad"] == 1.0
    assert m["f1/anger"] == 0.0 and m["precision/anger"] == 0.0 and m["recall/anger"] == 0.0
    assert not any(k.endswith("/0") for k in m)
    assert all(isinstance(v, float) for v in m.values())


def test_default_label_names_are_indices():
    m = compute_metrics(HAND_TRUE, HAND_PRED)
    for kind in ("f1", "precision", "recall", "support"):
        assert [k for k in m if k.startswith(kind + "/")] == [f"{kind}/{i}" for i in range(3)]


def test_main_metrics_and_directions_are_known_keys():
    m = compute_metrics(HAND_TRUE, HAND_PRED)
    assert set(MAIN_METRICS) <= set(m)
    assert set(HIGHER_IS_BETTER) <= set(m)
    assert HIGHER_IS_BETTER["hamming_loss"] is False
    assert all(v for k, v in HIGHER_IS_BETTER.items() if k != "hamming_loss")


def test_format_metrics_one_line_four_decimals():
    m = {"micro_f1": 0.51234, "micro_precision": 0.5, "accuracy": 1 / 3, "hamming_loss": 0.25}
    assert format_metrics(m) == (
        "micro_f1 0.5123 | micro_precision 0.5000 | accuracy 0.3333 | hamming_loss 0.2500"
    )
    assert format_metrics(m, keys=("accuracy",)) == "accuracy 0.3333"


# ---------------------------------------------------------------------------- binarize


def test_binarize_is_strict():
    probs = np.array([[0.25, 0.2500001, 0.1], [0.5, 0.0, 1.0]])
    out = binarize(probs, 0.25)
    assert out.dtype == np.uint8
    assert out.tolist() == [[0, 1, 0], [1, 0, 1]]


def test_binarize_per_label_thresholds_and_torch_input():
    probs = torch.tensor([[0.3, 0.3, 0.3], [0.6, 0.6, 0.6]])
    out = binarize(probs, np.array([0.2, 0.3, 0.5]))
    assert out.tolist() == [[1, 0, 0], [1, 1, 1]]


def test_binarize_rejects_bad_threshold_shape():
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        binarize(np.zeros((2, 3)), [0.5, 0.5])


# ---------------------------------------------------------------------------- threshold search


def test_search_global_finds_the_only_separating_threshold():
    # Positives at 0.62 and 0.8, negatives at 0.2 and 0.58: only 0.6 separates them.
    y_true = np.array([[1], [1], [0], [0]])
    probs = np.array([[0.62], [0.8], [0.2], [0.58]])
    thr = search_threshold(y_true, probs)
    assert isinstance(thr, float) and thr == pytest.approx(0.6)
    assert compute_metrics(y_true, binarize(probs, thr))["micro_f1"] == 1.0


def test_search_global_ties_go_to_closest_to_half_then_lower():
    y_true = np.array([[1], [0]])
    # Every threshold in [0.2, 0.85] separates 0.9 from 0.2 -> 0.5 (0.2 itself: strict >).
    assert search_threshold(y_true, np.array([[0.9], [0.2]])) == pytest.approx(0.5)
    # Here 0.5 predicts the 0.52 negative; 0.55 is the closest perfect threshold.
    assert search_threshold(y_true, np.array([[0.9], [0.52]])) == pytest.approx(0.55)
    # Equally close to 0.5 -> the lower one.
    assert search_threshold(y_true, np.array([[0.9], [0.1]]), grid=[0.6, 0.4]) == 0.4


def test_search_global_minimises_hamming_loss():
    y_true = np.array([[1, 0], [0, 1], [1, 1]])
    probs = np.array([[0.7, 0.2], [0.6, 0.4], [0.8, 0.45]])
    thr = search_threshold(y_true, probs, metric="hamming_loss")
    grid = np.round(np.arange(0.05, 0.951, 0.05), 2)
    losses = [compute_metrics(y_true, binarize(probs, g))["hamming_loss"] for g in grid]
    assert compute_metrics(y_true, binarize(probs, thr))["hamming_loss"] == min(losses)


def brute_force_threshold(y_true, probs, metric, grid):
    sign = 1.0 if HIGHER_IS_BETTER.get(metric.split("/")[0], True) else -1.0
    scores = [sign * compute_metrics(y_true, binarize(probs, g))[metric] for g in grid]
    best = max(scores)
    ties = [g for g, s in zip(grid, scores) if s >= best - 1e-12]
    return min(ties, key=lambda g: (round(abs(g - 0.5), 9), g))


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("metric", ["micro_f1", "macro_f1", "accuracy", "hamming_loss", "f1/2"])
def test_search_global_matches_brute_force(seed, metric):
    rng = np.random.default_rng(seed)
    y_true = (rng.random((60, 4)) < 0.35).astype(np.uint8)
    # Informative but noisy probabilities, so the best threshold is somewhere inside the grid.
    probs = np.clip(0.3 * y_true + rng.random((60, 4)) * 0.7, 0, 1)
    grid = np.round(np.arange(0.05, 0.951, 0.05), 2)
    expected = brute_force_threshold(y_true, probs, metric, grid)
    assert search_threshold(y_true, probs, metric=metric) == pytest.approx(expected)


def test_search_handles_grid_larger_than_one_block(monkeypatch):
    from mmerkit import metrics

    rng = np.random.default_rng(0)
    y_true = (rng.random((50, 3)) < 0.5).astype(np.uint8)
    probs = rng.random((50, 3))
    whole = search_threshold(y_true, probs, metric="macro_f1")
    monkeypatch.setattr(metrics, "_BLOCK_ELEMENTS", 150 * 4)  # blocks of 4 thresholds
    assert search_threshold(y_true, probs, metric="macro_f1") == whole


def test_search_per_label():
    y_true = np.array([[1, 0, 0, 1], [0, 1, 0, 1], [1, 1, 0, 0], [0, 0, 0, 0]])
    probs = np.array(
        [
            [0.72, 0.10, 0.9, 0.95],
            [0.68, 0.25, 0.1, 0.90],
            [0.80, 0.40, 0.4, 0.05],
            [0.10, 0.10, 0.3, 0.10],
        ]
    )
    thr = search_threshold(y_true, probs, mode="per-label")
    assert isinstance(thr, np.ndarray) and thr.shape == (4,)
    # label 0: only (0.68, 0.72) separates -> 0.7; label 1: (0.1, 0.25) -> 0.2 closest to 0.5;
    # label 2 has no positives -> 0.5; label 3: (0.1, 0.9) -> 0.5.
    np.testing.assert_allclose(thr, [0.7, 0.2, 0.5, 0.5])
    per_label = compute_metrics(y_true, binarize(probs, thr))
    assert per_label["f1/0"] == per_label["f1/1"] == per_label["f1/3"] == 1.0


def test_search_per_label_matches_brute_force():
    rng = np.random.default_rng(3)
    y_true = (rng.random((80, 5)) < 0.3).astype(np.uint8)
    y_true[:, 4] = 0
    probs = np.clip(0.3 * y_true + rng.random((80, 5)) * 0.7, 0, 1)
    grid = np.round(np.arange(0.05, 0.951, 0.05), 2)
    thr = search_threshold(y_true, probs, mode="per-label")
    expected = [brute_force_threshold(y_true, probs, f"f1/{i}", grid) for i in range(4)]
    np.testing.assert_allclose(thr, expected + [0.5])


# ---------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize(
    "y_true, y_pred, message",
    [
        (np.zeros((4, 6)), np.zeros((4, 3)), r"y_pred has shape \(4, 3\) but y_true has \(4, 6\)"),
        (np.zeros(6), np.zeros(6), r"y_true must be 2-D"),
        (np.zeros((2, 2, 2)), np.zeros((2, 2, 2)), r"y_true must be 2-D"),
        (np.zeros((0, 6)), np.zeros((0, 6)), r"no samples"),
        (np.zeros((3, 0)), np.zeros((3, 0)), r"no labels"),
        (np.array([[0, 2]]), np.array([[0, 1]]), r"y_true must contain only 0/1.*label 1"),
        (np.array([[0, 1]]), np.array([[0.5, 1]]), r"y_pred must contain only 0/1"),
        (np.array([[0, 1]]), np.array([[np.nan, 1]]), r"y_pred must contain only 0/1"),
    ],
)
def test_compute_metrics_rejects_bad_inputs(y_true, y_pred, message):
    with pytest.raises(ValueError, match=message):
        compute_metrics(y_true, y_pred)


def test_compute_metrics_rejects_bad_options():
    with pytest.raises(ValueError, match="empty must be one of"):
        compute_metrics(HAND_TRUE, HAND_PRED, empty="zero")
    with pytest.raises(ValueError, match="2 names but the data has 3 labels"):
        compute_metrics(HAND_TRUE, HAND_PRED, label_names=["a", "b"])
    with pytest.raises(ValueError, match="duplicates"):
        compute_metrics(HAND_TRUE, HAND_PRED, label_names=["a", "b", "a"])


def test_search_threshold_rejects_bad_inputs():
    y_true = np.array([[1, 0], [0, 1]])
    probs = np.array([[0.9, 0.1], [0.2, 0.8]])
    with pytest.raises(ValueError, match=r"mode 'perlabel'.*'per-label'.*global, per-label"):
        search_threshold(y_true, probs, mode="perlabel")
    with pytest.raises(ValueError, match=r"metric 'micro-f1'.*'micro_f1'.*Valid metrics"):
        search_threshold(y_true, probs, metric="micro-f1")
    with pytest.raises(ValueError, match=r"probs has shape \(2, 3\) but y_true has \(2, 2\)"):
        search_threshold(y_true, np.zeros((2, 3)))
    with pytest.raises(ValueError, match="probs contains nan"):
        search_threshold(y_true, np.array([[np.nan, 0.1], [0.2, 0.8]]))
    with pytest.raises(ValueError, match="grid must be a non-empty"):
        search_threshold(y_true, probs, grid=[])


def test_float32_probs_are_compared_in_float32():
    # float32(0.3) is slightly above float64 0.3; torch's `p > 0.3` compares in float32, so
    # this prob is *at* the threshold and must be negative, in binarize and in the search alike.
    probs32 = torch.tensor([[0.3], [0.9]], dtype=torch.float32)
    assert binarize(probs32, 0.3).tolist() == [[0], [1]]
    assert binarize(probs32.to(torch.bfloat16), 0.9).tolist() == [[0], [0]]
    y_true = np.array([[0], [1]])
    assert search_threshold(y_true, probs32, grid=[0.3, 0.25]) == 0.3


def test_metrics_at_records_the_threshold_as_one_number():
    """The one threshold-and-metrics step (training's final evaluation and `evaluate`)."""
    from mmerkit.metrics import binarize, compute_metrics, metrics_at

    rng = np.random.default_rng(0)
    y, p = (rng.random((40, 3)) < 0.4).astype(np.uint8), rng.random((40, 3))
    per_label = [0.2, 0.5, 0.7]
    got = metrics_at(y, p, per_label)
    assert got["threshold"] == pytest.approx(np.mean(per_label))
    assert got["micro_f1"] == compute_metrics(y, binarize(p, np.asarray(per_label)))["micro_f1"]
    assert metrics_at(y, p, 0.3)["threshold"] == 0.3
