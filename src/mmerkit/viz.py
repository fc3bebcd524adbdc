"""Figures of a trained run: t-SNE of latents, modality-to-label heatmap, training curves and
per-label F1. Every function returns a matplotlib `Figure` (drawn on the Agg canvas, no pyplot
and no global backend switch), so tests and notebooks can inspect it; `save_figure` writes
PNG/PDF/SVG by the file suffix.

- t-SNE (paper Fig. 5): `ModelOutput.features` of a split. A (B, M, L, F) latent such as CARAT's
  `z` gives one point per (sample, modality, label) and is coloured by modality and by label
  polarity (positive / negative); pooled (B, F) latents give one point per sample coloured by
  the polarity of one label. Points of a missing modality are left out.
- heatmap: (a) for models with `ModelOutput.modality_label_scores` (CARAT's per-modality SRR
  classifier logits), how often each modality holds the max for each label; (b) for every model,
  the drop in each label's mean predicted probability when one modality is removed
  (`Batch.without`).
- curves: loss terms (train) and validation metrics per epoch from metrics.csv.
- labels: per-label F1 next to the label's frequency in the split.

Example:
    >>> from mmerkit import api
    >>> fig = api.plot("curves", "runs/early_fusion_synthetic_seed1")      # doctest: +SKIP
    >>> save_figure(fig, "curves.png")                                     # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from mmerkit.data.store import FeatureStore
from mmerkit.errors import ConfigError, DataError, MMERError
from mmerkit.models.base import MMERModel
from mmerkit.predict import forward_batches, split_batches

__all__ = ["curves_figure", "forward_split", "heatmap_figure", "labels_figure", "modality_label_stats",
           "plot_curves", "plot_heatmap", "plot_labels", "plot_timeline", "plot_tsne", "save_figure", "tsne_embed",
           "timeline_figure", "tsne_figure"]

PLOT_KINDS = ("tsne", "heatmap", "curves", "labels")
_POLARITY_COLORS = {"positive": "tab:red", "negative": "tab:blue"}


def new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, out: str | Path, dpi: int = 150) -> Path:
    """Write `fig` to `out` (format from the suffix: .png, .pdf, .svg)."""
    out = Path(out)
    if out.suffix.lower() not in (".png", ".pdf", ".svg"):
        raise MMERError(f"--out {out}: use a .png, .pdf or .svg file name")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi)
    return out


# ----------------------------------------------------------------------------- model outputs


def forward_split(model: MMERModel, store: FeatureStore, split: str = "test", *,
                  indices: Sequence[int] | None = None, drop_modality: str | None = None,
                  modalities: Sequence[str] | None = None, batch_size: int = 128,
                  keep: Sequence[str] = ("features", "scores")) -> dict[str, Any]:
    """Run `model` (eval mode) over `indices` of a split (all by default), through the one
    prediction loop (`mmerkit.predict.forward_batches`).

    Returns numpy arrays: probs (N, L), labels (N, L), present (N, M), and with `keep`,
    features {name: (N, ...)} and scores (N, M, L) or None.
    """
    out = forward_batches(model, split_batches(store, split, indices, modalities, batch_size), keep=keep,
                          drop_modality=drop_modality)
    return {"probs": out.probs, "labels": out.labels, "present": out.present, "features": out.features,
            "scores": out.scores, "modalities": out.modalities}


def _sample(n: int, max_samples: int | None, seed: int) -> np.ndarray:
    if max_samples is None or n <= max_samples:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, max_samples, replace=False))


# ----------------------------------------------------------------------------- t-SNE


def tsne_points(features: np.ndarray, labels: np.ndarray, present: np.ndarray,
                modalities: Sequence[str], label: int) -> dict[str, np.ndarray]:
    """Flatten a latent into points with a modality name and a polarity each.

    (N, M, L, F): point per (sample, modality, label); (N, L, F): per (sample, label);
    (N, M, F): per (sample, modality), polarity of `label`; (N, F): per sample, polarity of `label`.
    """
    n, M, L = features.shape[0], len(modalities), labels.shape[1]
    f = features
    if f.ndim == 2:
        f = f[:, None, None]
    elif f.ndim == 3:
        f = f[:, None] if f.shape[1] == L else f[:, :, None]
    elif f.ndim != 4:
        raise MMERError(f"t-SNE: latent of shape {features.shape} is not (N, [M,] [L,] F)")
    per_mod, per_label = f.shape[1], f.shape[2]
    mod_names = list(modalities) if per_mod == M and per_mod > 1 else ["fused"] * per_mod
    s, m, lab = np.meshgrid(np.arange(n), np.arange(per_mod), np.arange(per_label), indexing="ij")
    s, m, lab = s.ravel(), m.ravel(), lab.ravel()
    lab_idx = lab if per_label == L and per_label > 1 else np.full_like(lab, label)
    keep = present[s, m] if per_mod == M and per_mod > 1 else np.ones_like(s, dtype=bool)
    x = f.reshape(n * per_mod * per_label, -1)
    return {"x": x[keep], "modality": np.asarray(mod_names)[m[keep]],
            "positive": labels[s, lab_idx].astype(bool)[keep], "label": lab_idx[keep]}


def tsne_embed(x: np.ndarray, seed: int = 0, perplexity: float = 30.0) -> np.ndarray:
    """2-D t-SNE (scikit-learn, PCA init); perplexity is lowered for small point sets."""
    from sklearn.manifold import TSNE

    if len(x) < 5:
        raise MMERError(f"t-SNE needs at least 5 points, got {len(x)}")
    perp = float(min(perplexity, max((len(x) - 1) / 3, 2.0)))
    return TSNE(n_components=2, perplexity=perp, init="pca", learning_rate="auto",
                random_state=seed).fit_transform(np.asarray(x, dtype=np.float32))


def tsne_figure(xy: np.ndarray, modality: np.ndarray, positive: np.ndarray, *,
                polarity_of: str, title: str) -> Figure:
    """Two panels over the same embedding: coloured by modality, and by label polarity."""
    fig = new_figure(11, 5)
    ax_m, ax_p = fig.subplots(1, 2)
    for name in dict.fromkeys(modality.tolist()):
        sel = modality == name
        ax_m.scatter(xy[sel, 0], xy[sel, 1], s=6, alpha=0.7, label=name)
    ax_m.set_title("coloured by modality")
    for name, flag in (("negative", False), ("positive", True)):
        sel = positive == flag
        ax_p.scatter(xy[sel, 0], xy[sel, 1], s=6, alpha=0.7, c=_POLARITY_COLORS[name], label=name)
    ax_p.set_title(f"coloured by label polarity ({polarity_of})")
    for ax in (ax_m, ax_p):
        ax.set_xlabel("t-SNE 1")
        ax.set_ylabel("t-SNE 2")
        # below the axes: a legend inside would hide points of a dense embedding
        ax.legend(markerscale=2, fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.12), ncols=4)
    fig.suptitle(title)
    return fig


def plot_tsne(model: MMERModel, store: FeatureStore, split: str = "test", *, feature: str | None = None,
              label: str | None = None, max_samples: int = 300, max_points: int = 3000, seed: int = 0,
              modalities: Sequence[str] | None = None, title: str | None = None) -> Figure:
    """t-SNE of a model's latents on up to `max_samples` samples of a split (paper Fig. 5).

    `feature` picks a `ModelOutput.features` entry (default: the first); `label` restricts a
    per-label latent to one label, or picks the label whose polarity colours pooled latents
    (default: the most frequent label of the split).
    """
    names = list(store.labels)
    if label is not None and label not in names:  # before the forward pass: a typo fails at once
        from mmerkit.registry import did_you_mean

        raise ConfigError(f"--label {label!r} is not a label of {store.path}.{did_you_mean(label, names)} "
                          f"Labels: {', '.join(names)}")
    _check_max_samples(max_samples)
    n = len(store.split(split))
    out = forward_split(model, store, split, indices=_sample(n, max_samples, seed), modalities=modalities,
                        keep=("features",))
    if not out["features"]:
        raise MMERError(f"model {model.name} returns no ModelOutput.features to embed")
    name = feature or next(iter(out["features"]))
    if name not in out["features"]:
        raise MMERError(f"feature {name!r} not in the model's features {list(out['features'])}")
    freq_label = int(out["labels"].mean(0).argmax())
    lab = names.index(label) if label is not None else freq_label
    pts = tsne_points(out["features"][name], out["labels"], out["present"], out["modalities"], lab)
    sel = np.ones(len(pts["x"]), bool) if label is None else pts["label"] == lab
    idx = np.flatnonzero(sel)
    idx = idx[_sample(len(idx), max_points, seed)]
    xy = tsne_embed(pts["x"][idx], seed=seed)
    per_label = label is None and len(set(pts["label"].tolist())) > 1
    polarity_of = "each point's own label" if per_label else names[lab]
    title = title or f"t-SNE of {model.name} latent '{name}' ({split}, {len(idx)} points)"
    return tsne_figure(xy, pts["modality"][idx], pts["positive"][idx], polarity_of=polarity_of, title=title)


# ----------------------------------------------------------------------------- heatmap


def modality_label_stats(model: MMERModel, store: FeatureStore, split: str = "test", *,
                         max_samples: int | None = None, seed: int = 0,
                         modalities: Sequence[str] | None = None,
                         sample: str | None = None) -> dict[str, Any]:
    """win (M, L) or None: share of samples where modality m has the largest
    `modality_label_scores` for label l (missing modalities cannot win); drop (M, L): mean
    probability of label l minus the same with modality m removed (positive = m supports l).
    With `sample` (an id of the split) both are of that one sample: the per-sample view."""
    ids = store.split(split).ids
    if sample is not None:
        if sample not in ids:
            raise DataError(f"sample {sample!r} is not in split {split!r} of {store.path} "
                            f"(ids look like {ids[0]!r})")
        idx = np.array([ids.index(sample)])
    else:
        idx = _sample(len(ids), max_samples, seed)
    full = forward_split(model, store, split, indices=idx, modalities=modalities, keep=("scores",))
    mods = list(full["modalities"])
    win = None
    if full["scores"] is not None and full["scores"].shape[1] == len(mods):
        s = np.where(full["present"][:, :, None], full["scores"], -np.inf)
        best = s.argmax(1)  # (N, L)
        win = np.stack([(best == m).mean(0) for m in range(len(mods))])
    base = full["probs"].mean(0)
    drop = np.stack([base - forward_split(model, store, split, indices=idx, modalities=modalities,
                                          drop_modality=m, keep=())["probs"].mean(0) for m in mods])
    return {"win": win, "drop": drop, "modalities": mods, "labels": list(store.labels), "samples": len(idx),
            "sample": sample, "true": full["labels"][0] if sample is not None else None,
            "probs": full["probs"][0] if sample is not None else None}


def _annotated_heatmap(fig: Figure, ax, values: np.ndarray, rows: Sequence[str], cols: Sequence[str],
                       cmap: str, title: str, cbar: str, vmin=None, vmax=None) -> None:
    im = ax.imshow(values, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
    ax.set_xticks(range(len(cols)), labels=list(cols), rotation=30, ha="right")
    ax.set_yticks(range(len(rows)), labels=list(rows))
    ax.set_xlabel("label")
    ax.set_ylabel("modality")
    ax.set_title(title)
    small = float(np.abs(values).max()) < 0.01  # e.g. a weak modality's probability drop
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            v = values[i, j]
            r, g, b, _ = im.cmap(im.norm(v))
            dark = 0.299 * r + 0.587 * g + 0.114 * b < 0.5  # white text on dark cells
            ax.text(j, i, f"{v:.1e}" if small else f"{v:.2f}", ha="center", va="center",
                    fontsize="small", color="white" if dark else "black")
    fig.colorbar(im, ax=ax, label=cbar)


def heatmap_figure(stats: dict[str, Any], title: str) -> Figure:
    """One or two heatmaps (modality x label) from `modality_label_stats`."""
    win, drop = stats["win"], stats["drop"]
    fig = new_figure(6 + (5 if win is not None else 0), 1.2 + 0.7 * len(stats["modalities"]) + 1.5)
    axes = fig.subplots(1, 2 if win is not None else 1, squeeze=False)[0]
    one = stats.get("sample") is not None
    if win is not None:
        _annotated_heatmap(fig, axes[0], win, stats["modalities"], stats["labels"], "viridis",
                           "modality that wins the max (1 = wins)" if one else
                           "share of samples where the modality wins the max", "share", 0.0, 1.0)
    lim = float(np.abs(drop).max()) or 1e-3
    _annotated_heatmap(fig, axes[-1], drop, stats["modalities"], stats["labels"], "RdBu_r",
                       "drop in probability without the modality" if one else
                       "drop in mean probability without the modality", "Δ probability", -lim, lim)
    fig.suptitle(title)
    return fig


def _check_max_samples(max_samples: int | None) -> None:
    if max_samples is not None and max_samples < 1:
        raise ConfigError(f"--max-samples {max_samples}: give at least 1 (or omit it for the default)")


def plot_heatmap(model: MMERModel, store: FeatureStore, split: str = "test", *,
                 max_samples: int | None = None, modalities: Sequence[str] | None = None,
                 sample: str | None = None, title: str | None = None,
                 threshold: float | Sequence[float] | None = None) -> Figure:
    """Modality-to-label heatmap(s) of a model on a split, or of one `sample` (see
    `modality_label_stats`); the per-sample view names the sample's true and predicted labels
    (predicted at `threshold`, the run's exported one when called through `api.plot`; else 0.5)."""
    _check_max_samples(max_samples)
    stats = modality_label_stats(model, store, split, max_samples=max_samples, modalities=modalities,
                                 sample=sample)
    what = f"sample {sample}" if sample is not None else f"{stats['samples']} samples"
    if sample is not None:
        names = np.asarray(stats["labels"])
        thr = np.asarray(0.5 if threshold is None else threshold, dtype=float)
        true = ", ".join(names[np.asarray(stats["true"]) > 0]) or "none"
        pred = ", ".join(names[stats["probs"] >= thr]) or "none"
        what += f"; true: {true}; predicted: {pred}"
    return heatmap_figure(stats, title or f"modality-to-label: {model.name} ({split}, {what})")


# ----------------------------------------------------------------------------- curves, labels


_CURVE_METRICS = ("micro_f1", "macro_f1", "accuracy", "hamming_loss")


def curves_figure(history: list[dict[str, Any]], title: str, best_epoch: float | None = None) -> Figure:
    """Loss terms per epoch (train) and validation metrics per epoch (+ train micro-F1 dashed)."""
    train = [r for r in history if r.get("split") == "train"]
    valid = [r for r in history if r.get("split") == "valid"]
    if not train and not valid:
        raise MMERError("no epochs in metrics.csv to plot")
    fig = new_figure(11, 4.5)
    ax_l, ax_m = fig.subplots(1, 2)
    loss_keys = [k for k in (train[0] if train else {}) if k.startswith("loss/")]
    for k in loss_keys:
        pts = [(r["epoch"], r[k]) for r in train if r.get(k) is not None]
        if pts:
            ax_l.plot(*zip(*pts), marker="o", ms=3, label=k.split("/", 1)[1])
    ax_l.set_title("training loss terms")
    ax_l.set_xlabel("epoch")
    ax_l.set_ylabel("loss (mean over batches)")
    for k in _CURVE_METRICS:
        pts = [(r["epoch"], r[k]) for r in valid if r.get(k) is not None]
        if pts:
            ax_m.plot(*zip(*pts), marker="o", ms=3, label=f"valid {k}")
    pts = [(r["epoch"], r["micro_f1"]) for r in train if r.get("micro_f1") is not None]
    if pts:
        ax_m.plot(*zip(*pts), ls="--", color="gray", label="train micro_f1")
    if best_epoch is not None:
        ax_m.axvline(best_epoch, color="k", lw=0.8, ls=":", label=f"best epoch {best_epoch:g}")
    for ax in (ax_l, ax_m):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_m.set_title("validation metrics")
    ax_m.set_xlabel("epoch")
    ax_m.set_ylabel("metric")
    for ax in (ax_l, ax_m):
        if ax.lines:  # outside, right of the axes: curves fill the whole plot area
            ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
    fig.suptitle(title)
    return fig


def plot_curves(run_dir: str | Path) -> Figure:
    """Training curves of a run directory from its metrics.csv."""
    from mmerkit.run import Run

    run = Run(run_dir)
    history = run.read_history()
    if not history:
        raise MMERError(f"{run.path} has no metrics.csv (not a run directory, or no epoch finished)")
    test = run.read_test_metrics() or {}
    return curves_figure(history, f"training curves: {run.path.name}", test.get("best_epoch"))


def labels_figure(f1: Sequence[float], freq: Sequence[float], label_names: Sequence[str], title: str) -> Figure:
    """Grouped bars per label: F1 and the label's frequency (share of positive samples)."""
    fig = new_figure(max(6.0, 1.1 * len(label_names) + 2), 4.5)
    ax = fig.subplots()
    x = np.arange(len(label_names))
    bars = ax.bar(x - 0.2, f1, 0.4, label="F1", color="tab:blue")
    ax.bar(x + 0.2, freq, 0.4, label="frequency", color="tab:gray")
    ax.bar_label(bars, fmt="%.2f", fontsize="small")
    ax.set_xticks(x, labels=list(label_names), rotation=30, ha="right")
    ax.set_ylim(0, 1.25)  # head room: the legend sits above the tallest bar, not on it
    ax.set_xlabel("label")
    ax.set_ylabel("F1 / share of samples")
    ax.set_title(title)
    ax.legend(loc="upper center", ncols=2)
    return fig


def plot_labels(metrics: dict[str, float], store: FeatureStore, split: str = "test",
                title: str | None = None) -> Figure:
    """Per-label F1 (from `metrics`, e.g. test_metrics.json) with frequencies from the store split."""
    names = list(store.labels)
    missing = [n for n in names if f"f1/{n}" not in metrics]
    if missing:
        raise MMERError(f"metrics have no per-label F1 for {missing}")
    freq = np.asarray(store.split(split).labels, dtype=float).mean(0)
    return labels_figure([metrics[f"f1/{n}"] for n in names], freq, names,
                         title or f"per-label F1 and frequency ({split})")


# ----------------------------------------------------------------------------- timeline


def _clock(seconds: float, _pos: Any = None) -> str:
    """m:ss, or h:mm:ss from an hour on (axis labels of a timeline)."""
    s = int(round(seconds))
    h, m = divmod(s // 60, 60)
    return f"{h}:{m:02d}:{s % 60:02d}" if h else f"{m}:{s % 60:02d}"


def _predicted_runs(on: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(first, last + 1) indices of every run of consecutive True in a 1-D mask."""
    edges = np.diff(np.concatenate([[0], on.astype(np.int8), [0]]))
    return np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)


def timeline_figure(timeline: Any, title: str = "") -> Figure:
    """Labels by time: each window's probability as colour (grey: nothing to predict from), a
    white bar over the windows where the label is in the predicted set. One column per hop, so
    an hour at hop 2 s is 1,800 columns: drawn as one image, its clock axis in m:ss / h:mm:ss."""
    from matplotlib import colormaps
    from matplotlib.ticker import FuncFormatter

    labels = list(timeline.labels)
    starts, ends = np.asarray(timeline.starts, float), np.asarray(timeline.ends, float)
    if not len(starts):
        raise DataError("the timeline has no windows to plot")
    # one column per hop: the window's centre decides where it is drawn
    step = float(np.median(np.diff(starts))) if len(starts) > 1 else float(ends[0] - starts[0])
    fig = new_figure(min(16.0, 6.0 + len(starts) * 0.04), 1.0 + 0.45 * len(labels))
    ax = fig.add_subplot(1, 1, 1)
    cmap = colormaps["viridis"].with_extremes(bad="#bbbbbb")
    image = ax.imshow(np.ma.masked_invalid(np.asarray(timeline.probs, float).T), aspect="auto", cmap=cmap,
                      vmin=0.0, vmax=1.0, interpolation="nearest", origin="upper",
                      extent=(starts[0], starts[0] + step * len(starts), len(labels) - 0.5, -0.5))
    for j in range(len(labels)):
        first, stop = _predicted_runs(np.asarray(timeline.predicted)[:, j] > 0)
        if first.size:
            ax.hlines(np.full(first.size, j - 0.3), starts[0] + first * step, starts[0] + stop * step,
                      colors="white", linewidth=2.5)
    ax.set_yticks(range(len(labels)), labels)
    ax.xaxis.set_major_formatter(FuncFormatter(_clock))
    ax.xaxis.set_major_locator(MaxNLocator(12, steps=[1, 2, 3, 5, 6, 10]))
    ax.set_xlabel("time (window start; white bar: in the predicted set, grey: no modality)")
    if title:
        ax.set_title(title)
    fig.colorbar(image, ax=ax, label="probability", fraction=0.03, pad=0.01)
    return fig


def plot_timeline(timeline: Any, out: str | Path, title: str = "") -> Path:
    """`timeline_figure` of a `Timeline` (Predictor.predict_timeline) saved to `out`."""
    return save_figure(timeline_figure(timeline, title), out)
