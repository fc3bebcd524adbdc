"""The invocations the docs show, run through the real `mmer` entry point (in-process)."""

import json
import re

import numpy as np
import pytest
import torch
from helpers import TINY, toy_store
from typer.testing import CliRunner

from mmerkit.cli import app, converter_options, expand_multi_value, main

torch.set_num_threads(1)
runner = CliRunner()


def mmer(*args: str):
    result = runner.invoke(app, expand_multi_value(list(args)), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_tables():
    assert "early_fusion" in mmer("models")
    assert "mosei-aligned" in mmer("datasets")


def test_seeds_expand():
    assert expand_multi_value(["train", "--seeds", "1", "2", "--out", "x"]) == \
        ["train", "--seeds", "1", "--seeds", "2", "--out", "x"]


def test_train_eval_predict_inspect(tmp_path):
    store = toy_store(tmp_path / "store").path
    sets = [a for s in TINY for a in ("--set", s)]
    mmer("train", "-m", "early_fusion", "-d", str(store), "--epochs", "2", "--out", str(tmp_path / "runs"),
         "--seeds", "1", "2", *sets, "--set", "train.batch_size=16", "--set", "train.progress=false")
    runs = sorted(p for p in (tmp_path / "runs").iterdir() if p.is_dir())
    assert [p.name for p in runs] == ["early_fusion_toy_seed1", "early_fusion_toy_seed2"]
    agg = json.loads((tmp_path / "runs" / "aggregate.json").read_text())
    assert set(agg["micro_f1"]) == {"mean", "std"}
    out = mmer("eval", str(runs[0]), "-d", str(store), "--split", "test", "--json")
    saved = json.loads((runs[0] / "test_metrics.json").read_text())
    assert json.loads(out)["micro_f1"] == pytest.approx(saved["micro_f1"])
    assert agg["micro_f1"]["mean"] == pytest.approx(
        np.mean([json.loads((r / "test_metrics.json").read_text())["micro_f1"] for r in runs]))
    mmer("predict", str(runs[0] / "export"), "--inputs", str(store), "--split", "test", "--out", str(tmp_path / "p.csv"))
    assert (tmp_path / "p.csv").read_text().startswith("id,happy,sad,")
    assert "label frequency" in mmer("data", "inspect", str(store))
    report = json.loads(mmer("data", "inspect", str(store), "--json"))
    assert report["splits"]["train"]["samples"] == 64


def test_errors_are_one_line_without_traceback(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "-d", str(tmp_path / "missing"), "--out", str(tmp_path)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "Traceback" not in err


def test_convert_options_reach_the_converter(tmp_path, capsys):
    import numpy as np
    from test_custom import npz_dict

    np.savez(tmp_path / "f.npz", **npz_dict())
    mmer("data", "convert", "--from", "custom", str(tmp_path / "f.npz"), "--out", str(tmp_path / "s"),
         "--max-len", "2", "--truncate=tail")
    report = json.loads(mmer("data", "inspect", str(tmp_path / "s"), "--json"))
    assert report["splits"]["train"]["modalities"]["audio"]["len_max"] <= 2
    with pytest.raises(SystemExit) as e:  # a typo in a converter option names the valid one
        main(["data", "convert", "--from", "m3ed", str(tmp_path / "x.pkl"), "--out", str(tmp_path / "m"),
              "--swap-visual-adio"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and re.search(r"Did you mean '?(--)?swap[-_]visual[-_]audio", err), err
    assert converter_options(["--label-names", "a,b", "--swap-visual-audio", "--max-len=60", "--seed", "3"]) == \
        {"label_names": ["a", "b"], "swap_visual_audio": True, "max_len": 60, "seed": 3}


def test_cli_imports_only_the_api():
    """cli.py parses and prints; everything else is reached through mmerkit.api (issue 11.5)."""
    import ast
    from pathlib import Path

    import mmerkit.cli

    tree = ast.parse(Path(mmerkit.cli.__file__).read_text())
    used = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mmerkit"):
            used |= {f"{node.module}.{a.name}" if node.module == "mmerkit" else node.module for a in node.names}
        elif isinstance(node, ast.Import):
            used |= {a.name for a in node.names if a.name.startswith("mmerkit")}
    assert used == {"mmerkit.api"}, used


def test_the_package_exports_the_public_api():
    import mmerkit
    from mmerkit import api
    from mmerkit.predict import Predictor

    assert mmerkit.train is api.train and mmerkit.Predictor is Predictor and mmerkit.api is api
    assert {"train", "evaluate", "predict", "Predictor", "FeatureStore", "RunConfig", "Run", "MMERError"} <= set(dir(mmerkit))
    with pytest.raises(AttributeError, match="no attribute 'trian'"):
        mmerkit.trian  # noqa: B018
