"""`mmer plot`: each figure is a non-empty image with readable titles, axis labels and tick names."""

import numpy as np
import pytest
import torch
from helpers import CARAT_TINY, LABELS, QUIET, TINY, toy_store
from matplotlib.image import imread
from typer.testing import CliRunner

from mmerkit import api
from mmerkit.cli import app
from mmerkit.errors import MMERError
from mmerkit.viz import tsne_points

torch.set_num_threads(1)
runner = CliRunner()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("viz")
    store = toy_store(root / "store").path
    carat = api.train("carat", store, out=root / "runs", epochs=2, overrides=[*CARAT_TINY, *QUIET])[0].run_dir
    ef = api.train("early_fusion", store, out=root / "runs", epochs=1, overrides=[*TINY, *QUIET])[0].run_dir
    return {"carat": carat, "early_fusion": ef, "store": store, "root": root}


def assert_png(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    img = imread(path)
    assert img.shape[0] > 100 and img.shape[1] > 100 and img.std() > 0  # not a blank canvas


def tick_names(ax, axis="x"):
    ticks = ax.get_xticklabels() if axis == "x" else ax.get_yticklabels()
    return [t.get_text() for t in ticks]


def test_curves(runs, tmp_path):
    fig = api.plot("curves", runs["carat"], out=tmp_path / "curves.png")
    assert_png(tmp_path / "curves.png")
    loss_ax, metric_ax = fig.axes
    assert loss_ax.get_title() == "training loss terms" and loss_ax.get_xlabel() == "epoch"
    assert metric_ax.get_title() == "validation metrics"
    names = [line.get_label() for line in loss_ax.lines]
    assert "total" in names and len(names) > 2  # CARAT's named loss terms
    assert "valid micro_f1" in [line.get_label() for line in metric_ax.lines]
    assert len(loss_ax.lines[0].get_xdata()) == 2  # one point per epoch


def test_labels(runs, tmp_path):
    fig = api.plot("labels", runs["early_fusion"], out=tmp_path / "labels.png")
    assert_png(tmp_path / "labels.png")
    (ax,) = fig.axes
    assert tick_names(ax) == LABELS and ax.get_ylabel() == "F1 / share of samples"
    assert len(ax.patches) == 2 * len(LABELS)
    freq = np.asarray([p.get_height() for p in ax.patches[len(LABELS):]])
    from mmerkit.data.store import FeatureStore

    expected = FeatureStore(runs["store"]).split("test").labels.mean(0)
    assert np.allclose(freq, expected)


def test_heatmap_carat_and_any_model(runs, tmp_path):
    fig = api.plot("heatmap", runs["carat"], out=tmp_path / "heat.png")
    assert_png(tmp_path / "heat.png")
    win_ax, drop_ax = [ax for ax in fig.axes if ax.get_title()]
    assert "wins the max" in win_ax.get_title() and "without the modality" in drop_ax.get_title()
    assert tick_names(win_ax) == LABELS and tick_names(win_ax, "y") == ["text", "audio"]
    win = win_ax.images[0].get_array()
    assert np.allclose(np.asarray(win).sum(0), 1.0)  # each label's max goes to exactly one modality
    # a model without modality_label_scores gets the removal panel only
    fig = api.plot("heatmap", runs["early_fusion"], out=tmp_path / "heat.pdf")
    assert (tmp_path / "heat.pdf").read_bytes()[:4] == b"%PDF"
    assert [ax.get_title() for ax in fig.axes if ax.get_title()] == ["drop in mean probability without the modality"]


def test_tsne(runs, tmp_path):
    result = runner.invoke(app, ["plot", "tsne", str(runs["carat"]), "--out", str(tmp_path / "t.png"),
                                 "--max-samples", "20"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert_png(tmp_path / "t.png")
    fig = api.plot("tsne", runs["carat"], max_samples=20)
    by_mod, by_pol = fig.axes
    assert by_mod.get_title() == "coloured by modality" and by_mod.get_xlabel() == "t-SNE 1"
    assert [t.get_text() for t in by_mod.get_legend().get_texts()] == ["text", "audio"]
    assert [t.get_text() for t in by_pol.get_legend().get_texts()] == ["negative", "positive"]
    assert sum(len(c.get_offsets()) for c in by_mod.collections) == 20 * 2 * len(LABELS)
    # pooled latents: one point per sample, the default run location for the file
    out = runner.invoke(app, ["plot", "tsne", str(runs["early_fusion"]), "--max-samples", "20"])
    assert out.exit_code == 0, out.output
    assert_png(runs["early_fusion"] / "plots" / "tsne.png")


def test_tsne_points_shapes():
    labels = np.array([[1, 0, 0], [0, 1, 1]], np.uint8)
    present = np.array([[True, True], [True, False]])
    pts = tsne_points(np.zeros((2, 2, 3, 4)), labels, present, ("text", "audio"), 0)
    assert len(pts["x"]) == 9  # the missing audio of sample 1 gives no points; positives: 2 modalities x 1 label + 1 x 2
    assert pts["positive"].sum() == 2 + 2 and set(pts["modality"]) == {"text", "audio"}
    pts = tsne_points(np.zeros((2, 5)), labels, present, ("text", "audio"), 1)
    assert pts["positive"].tolist() == [False, True] and set(pts["modality"]) == {"fused"}


def test_plot_errors(runs, tmp_path):
    with pytest.raises(MMERError, match="Did you mean 'tsne'"):
        api.plot("tnse", runs["carat"])
    with pytest.raises(MMERError, match=".png, .pdf or .svg"):
        api.plot("curves", runs["carat"], out=tmp_path / "x.jpg")


def test_heatmap_per_sample_view(runs, tmp_path):
    from mmerkit.data.store import FeatureStore
    from mmerkit.errors import DataError

    store = FeatureStore(runs["store"])
    sid = store.split("test").ids[1]
    result = runner.invoke(app, ["plot", "heatmap", str(runs["carat"]), "--sample", sid,
                                 "--out", str(tmp_path / "one.png")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert_png(tmp_path / "one.png")
    fig = api.plot("heatmap", runs["carat"], sample=sid)
    win_ax, _ = [ax for ax in fig.axes if ax.get_title()]
    assert f"sample {sid}" in fig._suptitle.get_text() and "1 = wins" in win_ax.get_title()
    win = np.asarray(win_ax.images[0].get_array())
    assert set(np.unique(win)) <= {0.0, 1.0} and np.allclose(win.sum(0), 1.0)
    with pytest.raises(DataError, match="is not in split 'test'"):
        api.plot("heatmap", runs["carat"], sample="no-such-id")
