"""Multi-label metrics, thresholding and threshold search for MMER.

Every score is derived from per-label counts (true positives, predicted and true totals) and
per-sample counts, computed once with vectorised numpy; the results agree with scikit-learn's
``precision_recall_fscore_support`` (micro / macro / weighted / samples, ``zero_division=0``),
``hamming_loss`` and ``accuracy_score`` (exact match).

"accuracy" is the example-based Jaccard score used by the CARAT, TAILOR and RAMer papers:
the mean over samples of |Y ∩ Ŷ| / |Y ∪ Ŷ|. It is not rounded (the authors' code rounds it to
4 decimals, which hides differences between runs). A sample whose true and predicted label
sets are both empty scores 1.0 by default (``empty="one"``: the prediction is exactly right)
and 0.0 with ``empty="reference"``, which reproduces the authors' code.

Example:
    >>> import numpy as np
    >>> y_true = np.array([[1, 0, 1], [0, 1, 0]])
    >>> probs = np.array([[0.9, 0.2, 0.3], [0.1, 0.7, 0.6]])
    >>> y_pred = binarize(probs, 0.5)
    >>> m = compute_metrics(y_true, y_pred, label_names=["happy", "sad", "angry"])
    >>> round(m["micro_f1"], 4), round(m["accuracy"], 4), m["support/happy"]
    (0.6667, 0.5, 1.0)
    >>> float(search_threshold(y_true, probs))
    0.25
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from mmerkit.registry import did_you_mean

__all__ = [
    "HIGHER_IS_BETTER",
    "MAIN_METRICS",
    "binarize",
    "compute_metrics",
    "format_metrics",
    "search_threshold",
]

MAIN_METRICS = (
    "accuracy",
    "micro_precision",
    "micro_recall",
    "micro_f1",
    "macro_f1",
    "hamming_loss",
)

# Scalar keys of `compute_metrics`, in output order; per-label keys follow them.
AGGREGATE_KEYS = (
    "accuracy",
    "micro_precision",
    "micro_recall",
    "micro_f1",
    "macro_precision",
    "macro_recall",
    "macro_f1",
    "weighted_f1",
    "samples_f1",
    "hamming_loss",
    "subset_accuracy",
)
PER_LABEL_KINDS = ("f1", "precision", "recall", "support")

# Plain dict on purpose: an unknown key (e.g. a loss) raises instead of silently being treated
# as higher-is-better. Per-label f1/precision/recall are higher-is-better too.
HIGHER_IS_BETTER: dict[str, bool] = {k: k != "hamming_loss" for k in AGGREGATE_KEYS}

EMPTY_CONVENTIONS = ("one", "reference")
SEARCH_MODES = ("global", "per-label")
DEFAULT_GRID = np.round(np.arange(0.05, 0.951, 0.05), 2)

# Bound on the elements of one (thresholds, N, L) boolean block, so a threshold search over a
# large split does not allocate grid-size copies of it at once (~16 MB per block).
_BLOCK_ELEMENTS = 1 << 24
# Scores equal up to float noise count as ties, so the tie rule (closest to 0.5) decides.
_TIE_TOL = 1e-12


# --------------------------------------------------------------------------------------------
# input handling


def _to_numpy(x: Any, name: str) -> np.ndarray:
    # Duck-typed so the module does not need torch just to accept tensors.
    if hasattr(x, "detach"):
        x = x.detach().cpu()
        try:
            x = x.numpy()
        except TypeError:  # bfloat16 has no numpy twin
            x = x.float().numpy()
    try:
        return np.asarray(x)
    except Exception as exc:  # ragged lists and the like
        raise ValueError(f"{name} could not be converted to an array: {exc}") from exc


def _check_2d(a: np.ndarray, name: str) -> None:
    if a.ndim != 2:
        raise ValueError(f"{name} must be 2-D (samples, labels) but has shape {a.shape}")
    if a.shape[0] == 0:
        raise ValueError(f"{name} has no samples (shape {a.shape})")
    if a.shape[1] == 0:
        raise ValueError(f"{name} has no labels (shape {a.shape})")


def _as_binary(x: Any, name: str) -> np.ndarray:
    a = _to_numpy(x, name)
    _check_2d(a, name)
    if a.dtype == bool:
        return a
    ok = (a == 0) | (a == 1)  # NaN fails both, so it is reported too
    if not ok.all():
        row, col = np.argwhere(~ok)[0]
        raise ValueError(
            f"{name} must contain only 0/1 values; found {a[row, col].item()!r} at sample {row}, "
            f"label {col}. Threshold probabilities with binarize() first."
        )
    return a.astype(bool)


def _check_same_shape(a: np.ndarray, b: np.ndarray, name_a: str, name_b: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{name_a} has shape {a.shape} but {name_b} has {b.shape}")


def _as_probs(x: Any, name: str = "probs") -> np.ndarray:
    a = _to_numpy(x, name)
    _check_2d(a, name)
    if not np.issubdtype(a.dtype, np.number) and a.dtype != bool:
        raise ValueError(f"{name} must be numeric, got dtype {a.dtype}")
    # Floating probabilities keep their dtype: thresholds are compared in that precision, like
    # `tensor > 0.3` in torch, so a float32 0.3 is not above a threshold of 0.3.
    if not np.issubdtype(a.dtype, np.floating):
        a = a.astype(np.float64)
    if not np.isfinite(a).all():
        row, col = np.argwhere(~np.isfinite(a))[0]
        raise ValueError(f"{name} contains {a[row, col]} at sample {row}, label {col}")
    return a


def _label_names(label_names: Sequence[Any] | None, n_labels: int) -> list[str]:
    if label_names is None:
        return [str(i) for i in range(n_labels)]
    names = [str(n) for n in label_names]
    if len(names) != n_labels:
        raise ValueError(f"label_names has {len(names)} names but the data has {n_labels} labels")
    if len(set(names)) != len(names):
        dupes = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"label_names contains duplicates: {dupes}")
    return names


# --------------------------------------------------------------------------------------------
# core: every score from counts, batched over a leading axis of candidate predictions


def _divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den with 0 where den == 0 (sklearn's zero_division=0)."""
    num, den = np.broadcast_arrays(np.asarray(num, np.float64), np.asarray(den, np.float64))
    return np.divide(num, den, out=np.zeros(num.shape), where=den != 0)


def _batched_scores(t: np.ndarray, p: np.ndarray, empty: str) -> dict[str, np.ndarray]:
    """Scores of G candidate predictions p (G, N, L) against t (N, L).

    Aggregates come back with shape (G,), per-label scores ("f1", "precision", "recall",
    "support") with shape (G, L). Batching lets the threshold search score a whole grid in one
    pass with the same code that `compute_metrics` uses, so the two cannot disagree.
    """
    hit = p & t  # (G, N, L)
    n_samples, n_labels = t.shape

    # Per-label counts (G, L). fp = pred - tp and fn = true - tp, so pred/true totals suffice.
    tp = hit.sum(axis=1)
    pred = p.sum(axis=1)
    true = np.broadcast_to(t.sum(axis=0), tp.shape)
    precision = _divide(tp, pred)
    recall = _divide(tp, true)
    # 2tp / (2tp + fp + fn) is sklearn's form: 0 only when tp = fp = fn = 0 (zero_division).
    f1 = _divide(2 * tp, pred + true)

    TP, PRED, TRUE = tp.sum(-1), pred.sum(-1), true.sum(-1)
    # sklearn falls back to the unweighted mean when no label has support.
    weighted_f1 = np.where(TRUE > 0, _divide((f1 * true).sum(-1), TRUE), f1.mean(-1))

    # Per-sample counts (G, N).
    s_tp = hit.sum(axis=2)
    s_pred = p.sum(axis=2)
    s_true = np.broadcast_to(t.sum(axis=1), s_tp.shape)
    union = s_pred + s_true - s_tp
    both_empty = 1.0 if empty == "one" else 0.0
    jaccard = np.where(union == 0, both_empty, _divide(s_tp, union))

    wrong = (s_pred + s_true - 2 * s_tp).sum(-1)  # symmetric difference, summed over samples
    return {
        "accuracy": jaccard.mean(-1),
        "micro_precision": _divide(TP, PRED),
        "micro_recall": _divide(TP, TRUE),
        "micro_f1": _divide(2 * TP, PRED + TRUE),
        "macro_precision": precision.mean(-1),
        "macro_recall": recall.mean(-1),
        "macro_f1": f1.mean(-1),
        "weighted_f1": weighted_f1,
        "samples_f1": _divide(2 * s_tp, s_pred + s_true).mean(-1),
        "hamming_loss": wrong / (n_samples * n_labels),
        "subset_accuracy": (s_tp == np.maximum(s_pred, s_true)).mean(-1),
        "f1": f1,
        "precision": precision,
        "recall": recall,
        "support": true.astype(np.float64),
    }


def _grid_scores(t: np.ndarray, probs: np.ndarray, grid: np.ndarray) -> dict[str, np.ndarray]:
    """`_batched_scores` for every threshold of the grid, in memory-bounded blocks."""
    step = max(1, _BLOCK_ELEMENTS // t.size)
    grid = grid.astype(probs.dtype)  # same precision as `binarize`
    parts = []
    for start in range(0, len(grid), step):
        block = grid[start : start + step]
        parts.append(_batched_scores(t, probs[None] > block[:, None, None], "one"))
    return {k: np.concatenate([part[k] for part in parts]) for k in parts[0]}


# --------------------------------------------------------------------------------------------
# public API


def binarize(probs: Any, threshold: float | Sequence[float] | np.ndarray) -> np.ndarray:
    """Turn probabilities (N, L) into 0/1 predictions with a strict ``probs > threshold``.

    Strict, as in the authors' code, so a probability exactly at the threshold is negative.
    ``threshold`` is one float or one per label, shape (L,). Returns uint8 (N, L).

    Example:
        >>> binarize(np.array([[0.25, 0.3], [0.9, 0.1]]), 0.25).tolist()
        [[0, 1], [1, 0]]
        >>> binarize(np.array([[0.25, 0.3]]), [0.2, 0.5]).tolist()
        [[1, 0]]
    """
    p = _as_probs(probs)
    thr = np.asarray(_to_numpy(threshold, "threshold"), dtype=np.float64)
    if thr.ndim > 1 or (thr.ndim == 1 and thr.shape[0] != p.shape[1]):
        raise ValueError(
            f"threshold must be a float or have shape ({p.shape[1]},) (one per label), "
            f"got shape {thr.shape}"
        )
    if not np.isfinite(thr).all():
        raise ValueError(f"threshold must be finite, got {thr}")
    return (p > thr.astype(p.dtype)).astype(np.uint8)


def compute_metrics(
    y_true: Any,
    y_pred: Any,
    label_names: Sequence[Any] | None = None,
    empty: str = "one",
) -> dict[str, float]:
    """All multi-label scores of 0/1 predictions, as a flat dict of python floats.

    ``y_true`` and ``y_pred`` are (N, L) 0/1 numpy arrays or torch tensors. Keys: "accuracy"
    (example-based Jaccard), "micro_precision", "micro_recall", "micro_f1", "macro_precision",
    "macro_recall", "macro_f1", "weighted_f1", "samples_f1", "hamming_loss",
    "subset_accuracy", then per label "f1/<name>", "precision/<name>", "recall/<name>",
    "support/<name>" (names default to "0", "1", ...). Undefined ratios score 0.
    ``empty`` chooses how "accuracy" scores a sample with no true and no predicted label:
    "one" (1.0) or "reference" (0.0, as the authors' code).

    Example:
        >>> m = compute_metrics([[1, 0], [0, 0]], [[1, 1], [0, 0]])
        >>> m["accuracy"], m["micro_precision"], m["f1/1"], m["support/0"]
        (0.75, 0.5, 0.0, 1.0)
        >>> compute_metrics([[1, 0], [0, 0]], [[1, 1], [0, 0]], empty="reference")["accuracy"]
        0.25
    """
    if empty not in EMPTY_CONVENTIONS:
        raise ValueError(f"empty must be one of {EMPTY_CONVENTIONS}, got {empty!r}")
    t = _as_binary(y_true, "y_true")
    p = _as_binary(y_pred, "y_pred")
    _check_same_shape(p, t, "y_pred", "y_true")
    names = _label_names(label_names, t.shape[1])

    scores = _batched_scores(t, p[None], empty)
    out = {k: float(scores[k][0]) for k in AGGREGATE_KEYS}
    for kind in PER_LABEL_KINDS:
        values = scores[kind][0]
        for name, value in zip(names, values):
            out[f"{kind}/{name}"] = float(value)
    return out


def _pick(scores: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Index of the best grid entry along axis 0; ties go to the threshold closest to 0.5,
    then the lower one. Works for (G,) and (G, L) scores."""
    # Rounded so that e.g. 0.45 and 0.55 are equally close despite float error.
    dist = np.round(np.abs(grid - 0.5), 9)
    order = np.lexsort((grid, dist))  # preference order: distance first, then value
    ranked = scores[order]
    best = ranked.max(axis=0)
    is_best = ranked >= best - _TIE_TOL
    return order[np.argmax(is_best, axis=0)]


def search_threshold(
    y_true: Any,
    probs: Any,
    mode: str = "global",
    metric: str = "micro_f1",
    grid: Sequence[float] | np.ndarray | None = None,
) -> float | np.ndarray:
    """Choose decision thresholds on validation data (never on the test split).

    ``mode="global"``: the grid value that maximises ``metric`` (any key of
    `compute_metrics` with default label names; "hamming_loss" is minimised), as a float.
    ``mode="per-label"``: an (L,) array whose entry l maximises label l's F1 (``metric`` is
    not used); labels with no positive in ``y_true`` keep 0.5, since any threshold fits them.
    Ties go to the threshold closest to 0.5, then the lower one. The default grid is
    0.05, 0.10, ..., 0.95. Thresholds are applied strictly, as in `binarize`.

    Example:
        >>> y = np.array([[1, 0], [0, 1], [1, 1]])
        >>> p = np.array([[0.7, 0.2], [0.6, 0.4], [0.8, 0.45]])
        >>> float(search_threshold(y, p))
        0.35
        >>> search_threshold(y, p, mode="per-label").tolist()
        [0.6, 0.35]
    """
    if mode not in SEARCH_MODES:
        raise ValueError(
            f"unknown threshold search mode {mode!r}.{did_you_mean(mode, SEARCH_MODES)} "
            f"Valid modes: {', '.join(SEARCH_MODES)}."
        )
    t = _as_binary(y_true, "y_true")
    p = _as_probs(probs)
    _check_same_shape(p, t, "probs", "y_true")
    metric = _check_metric(metric, t.shape[1])
    g = _check_grid(grid)

    scores = _grid_scores(t, p, g)
    if mode == "per-label":
        thresholds = g[_pick(scores["f1"], g)]
        return np.where(t.any(axis=0), thresholds, 0.5)

    kind, _, label = metric.partition("/")
    values = scores[kind][:, int(label)] if label else scores[kind]
    if not HIGHER_IS_BETTER.get(kind, True):
        values = -values
    return float(g[_pick(values, g)])


def _check_metric(metric: str, n_labels: int) -> str:
    per_label = [f"{k}/{i}" for k in PER_LABEL_KINDS for i in range(n_labels)]
    if metric in AGGREGATE_KEYS or metric in per_label:
        return metric
    raise ValueError(
        f"unknown metric {metric!r}.{did_you_mean(metric, AGGREGATE_KEYS + tuple(per_label))} "
        f"Valid metrics: {', '.join(AGGREGATE_KEYS)} (or per label, e.g. 'f1/0')."
    )


def _check_grid(grid: Sequence[float] | np.ndarray | None) -> np.ndarray:
    if grid is None:
        return DEFAULT_GRID.copy()
    g = np.asarray(_to_numpy(grid, "grid"), dtype=np.float64)
    if g.ndim != 1 or g.size == 0:
        raise ValueError(
            f"grid must be a non-empty 1-D sequence of thresholds, got shape {g.shape}"
        )
    if not np.isfinite(g).all():
        raise ValueError(f"grid must contain finite thresholds, got {g.tolist()}")
    return g


def choose_threshold(mode, default: float, labels: np.ndarray, probs: np.ndarray):
    """The prediction threshold, chosen on VALIDATION data only: a float or a per-label list.
    `mode` is "default" (the model's own), "search" (one global), "per-label", or a number."""
    if mode == "default":
        return float(default)
    if mode == "search":
        return float(search_threshold(labels, probs, mode="global"))
    if mode == "per-label":
        return [float(x) for x in search_threshold(labels, probs, mode="per-label")]
    return float(mode)


def metrics_at(labels: Any, probs: Any, threshold: float | Sequence[float] | np.ndarray,
               label_names: Sequence[Any] | None = None) -> dict[str, float]:
    """Every metric of `probs` cut at `threshold` (a float or one per label), with the threshold
    recorded as one number ("threshold": itself, or the mean of per-label ones). The one
    threshold-and-metrics step of training's final evaluation and of `evaluate`."""
    t = np.asarray(threshold, dtype=np.float64)
    metrics = compute_metrics(labels, binarize(probs, t), label_names)
    metrics["threshold"] = float(t) if t.ndim == 0 else float(np.mean(t))
    return metrics


def format_metrics(
    m: dict[str, float],
    keys: Sequence[str] = (
        "micro_f1",
        "micro_precision",
        "micro_recall",
        "macro_f1",
        "accuracy",
        "hamming_loss",
    ),
) -> str:
    """One console line such as ``"micro_f1 0.5123 | accuracy 0.4012"``.

    Keys absent from ``m`` are skipped, so the same call works for partial dicts.

    Example:
        >>> format_metrics({"micro_f1": 0.51234, "accuracy": 0.4}, keys=("micro_f1", "accuracy"))
        'micro_f1 0.5123 | accuracy 0.4000'
    """
    return " | ".join(f"{k} {float(m[k]):.4f}" for k in keys if k in m)


# fewer samples than this in the split that chooses the epoch and threshold (or in the test
# split) make those choices, and the test number, noise: one sample is 5 points of F1 or more
MIN_SPLIT_SAMPLES = 20


def degenerate_notes(predicted: dict[str, np.ndarray], label_names: Sequence[str]) -> list[str]:
    """Warnings about results that look like numbers and are not: a split under
    MIN_SPLIT_SAMPLES samples, or one label set predicted for every sample of a split.
    `predicted`: split name -> (N, L) 0/1 predictions at the chosen threshold."""
    notes = []
    for split, pred in predicted.items():
        pred = np.asarray(pred)
        n = len(pred)
        role = {"valid": "the best epoch and the threshold are chosen on it",
                "test": "its metrics measure next to nothing"}.get(split, "its metrics are noise")
        if n < MIN_SPLIT_SAMPLES:
            notes.append(f"the {split} split has only {n} sample(s): {role}; give it at least "
                         f"{MIN_SPLIT_SAMPLES} (a seeded split of a small manifest gives tiny splits)")
        if n >= 2 and (pred == pred[0]).all():
            chosen = [str(label_names[j]) for j in np.flatnonzero(pred[0])]
            what = ("every label" if len(chosen) == len(label_names) else "no label" if not chosen
                    else ", ".join(chosen))
            notes.append(f"every {split} sample gets the same prediction ({what}): the model does not tell "
                         "samples apart; train longer or check the data before reading its metrics")
    return notes
