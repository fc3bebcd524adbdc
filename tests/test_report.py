"""`mmer report` (mean ± std over seeds of the runs' test metrics) and `mmer ablate`."""

import csv
import io
import json

import numpy as np
import pytest
import torch
import yaml
from helpers import CARAT_TINY, LABELS, QUIET, TINY, toy_store
from typer.testing import CliRunner

from mmerkit import api
from mmerkit.cli import app, expand_multi_value
from mmerkit.errors import MMERError
from mmerkit.report import ablation_rows, format_ablation, format_table, report

torch.set_num_threads(1)
runner = CliRunner()


def mmer(*args: str) -> str:
    result = runner.invoke(app, expand_multi_value(list(args)), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def fake_run(root, model, seed, metrics, **model_cfg):
    """A finished run directory as api.train writes it (only the files report reads)."""
    d = root / f"{model}_toy_seed{seed}"
    d.mkdir(parents=True)
    cfg = {"model": {"name": model, **model_cfg}, "train": {"seed": seed, "epochs": 3}}
    (d / "config.yaml").write_text(yaml.safe_dump(cfg))
    full = {**metrics, "best_epoch": seed, "seed": seed, "threshold": 0.5}
    (d / "test_metrics.json").write_text(json.dumps(full))
    (d / "metrics.csv").write_text("epoch,split,micro_f1\n1,valid,0.1\n2,valid,0.3\n3,valid,0.2\n")
    return d


def metrics_for(rng):
    keys = ["micro_f1", "accuracy", "macro_f1", "hamming_loss", "micro_precision", "micro_recall",
            *(f"f1/{lab}" for lab in LABELS)]
    return {k: float(rng.random()) for k in keys}


def test_report_numbers_are_mean_and_sample_std(tmp_path):
    rng = np.random.default_rng(0)
    exp = tmp_path / "exp"
    ms = {s: metrics_for(rng) for s in (1, 2, 3)}
    for s, m in ms.items():
        fake_run(exp, "early_fusion", s, m, hidden_size=16)
    fake_run(exp / "other", "carat", 1, metrics_for(rng))
    (exp / "carat_toy_seed9").mkdir()  # unfinished: config.yaml but no test_metrics.json
    (exp / "carat_toy_seed9" / "config.yaml").write_text("model: {name: carat}\n")
    with pytest.warns(UserWarning, match="unfinished"):
        rows = report([exp])
    assert [(r["model"], r["dataset"], r["seeds"]) for r in rows] == [("carat", "toy", 1), ("early_fusion", "toy", 3)]
    ef = rows[1]
    for k in ["micro_f1", "hamming_loss", "f1/sad"]:
        vals = np.array([ms[s][k] for s in (1, 2, 3)])
        assert ef["metrics"][k]["mean"] == pytest.approx(vals.mean())
        assert ef["metrics"][k]["std"] == pytest.approx(vals.std(ddof=1))
    assert rows[0]["metrics"]["micro_f1"]["std"] == 0.0
    assert ef["best_epoch"] == pytest.approx(2.0) and ef["seed_list"] == [1, 2, 3]
    md = format_table(rows, "md")
    assert md.splitlines()[0].startswith("| model | dataset | micro-F1 | Acc | macro-F1 | HL |")
    assert "F1 happy" in md and f"{ef['metrics']['micro_f1']['mean']:.4f} ± " in md
    table = list(csv.DictReader(io.StringIO(format_table(rows, "csv"))))
    assert float(table[1]["micro_f1_std"]) == pytest.approx(ef["metrics"]["micro_f1"]["std"], rel=1e-5)
    assert table[1]["seeds"] == "3"
    tex = format_table(rows, "latex")
    assert tex.startswith(r"\begin{tabular}") and r"$\pm$" in tex and r"early\_fusion" in tex


def test_configurations_are_separate_rows_named_by_their_difference(tmp_path):
    rng = np.random.default_rng(1)
    for s in (1, 2):
        fake_run(tmp_path / "full", "carat", s, metrics_for(rng), cl_weight=1.0, use_agg=True)
        fake_run(tmp_path / "no-cl", "carat", s, metrics_for(rng), cl_weight=0.0, use_agg=True)
        fake_run(tmp_path / "no-agg", "carat", s, metrics_for(rng), cl_weight=1.0, use_agg=False)
    fake_run(tmp_path / "full2", "carat", 3, metrics_for(rng), cl_weight=1.0, use_agg=True)
    rows = report(tmp_path)
    assert sorted((r["variant"], r["seeds"]) for r in rows) == \
        [("base", 3), ("cl_weight=0.0", 2), ("use_agg=False", 2)]
    assert "| variant |" in format_table(rows, "md")
    # two configurations: no majority, so both rows name their own value
    rows = report([tmp_path / "full", tmp_path / "no-cl"])
    assert sorted(r["variant"] for r in rows) == ["cl_weight=0.0", "cl_weight=1.0"]


def test_report_errors(tmp_path):
    with pytest.raises(MMERError, match="does not exist"):
        report([tmp_path / "nope"])
    with pytest.raises(MMERError, match="no run directories"):
        report([tmp_path])
    with pytest.raises(MMERError, match="format"):
        format_table([], "html")
    with pytest.raises(MMERError, match=r"unknown report metric\(s\) f1/joy; choose from micro_f1"):
        format_table([], "md", metrics=["micro_f1", "f1/joy"])


def test_ablation_table_layout():
    def row(v, n=2):
        return {"seeds": n, "metrics": {k: {"mean": v, "std": 0.01} for k in
                                        ("micro_f1", "accuracy", "macro_f1", "hamming_loss")}}

    rows = ablation_rows({"carat-no-cl": row(0.4), "full": row(0.5)}, "full")
    assert [r["variant"] for r in rows] == ["full", "carat-no-cl"]
    assert rows[1]["metrics"]["micro_f1"]["delta"] == pytest.approx(-0.1)
    md = format_ablation(rows, "md").splitlines()
    assert md[0] == "| variant | micro-F1 | Acc | macro-F1 | HL ↓ | seeds |"
    assert md[2].startswith("| full | 0.5000 ± 0.0100 |") and "(-0.1000)" in md[3]
    assert "micro_f1_delta" in format_ablation(rows, "csv")


def test_train_report_and_ablate_end_to_end(tmp_path):
    store = toy_store(tmp_path / "store").path
    sets = [a for s in [*TINY, *QUIET] for a in ("--set", s)]
    mmer("train", "-m", "early_fusion", "-d", str(store), "--epochs", "1", "--out", str(tmp_path / "exp"),
         "--seeds", "1", "2", *sets)
    out = mmer("report", str(tmp_path / "exp"), "--format", "csv", "--out", str(tmp_path / "r.csv"))
    row = next(csv.DictReader(io.StringIO((tmp_path / "r.csv").read_text())))
    vals = [json.loads((tmp_path / "exp" / f"early_fusion_toy_seed{s}" / "test_metrics.json").read_text())["micro_f1"]
            for s in (1, 2)]
    assert float(row["micro_f1_mean"]) == pytest.approx(np.mean(vals), abs=1e-5)
    assert float(row["micro_f1_std"]) == pytest.approx(np.std(vals, ddof=1), abs=1e-5)
    assert row["seeds"] == "2" and "micro_f1_mean" in out
    out = mmer("report", str(tmp_path / "exp"), "--metrics", "micro_f1,hamming_loss,f1/sad", "--digits", "2")
    assert out.splitlines()[0] == "| model | dataset | micro-F1 | HL | F1 sad | best epoch | seeds |"
    assert f"{np.mean(vals):.2f} ± {np.std(vals, ddof=1):.2f}" in out

    # a user config must still apply under the ablation switches
    user = tmp_path / "tiny.yaml"
    user.write_text(yaml.safe_dump({"model": {"proj_size": 8}, "train": {"epochs": 1}}))
    abl = tmp_path / "abl"
    sets = [a for s in [*CARAT_TINY, *QUIET] for a in ("--set", s)]
    args = ["ablate", "-m", "carat", "-d", str(store), "--seeds", "1", "--out", str(abl),
            "--config", str(user), "--only", "no-cl", *sets]
    out = mmer(*args)
    table = (abl / "ablation.md").read_text().splitlines()
    assert table[2].startswith("| full |") and table[3].startswith("| carat-no-cl |") and len(table) == 4
    assert "wrote" in out and (abl / "ablation.csv").exists()
    cfg = yaml.safe_load((abl / "carat-no-cl" / "carat_toy_seed1" / "config.yaml").read_text())
    assert cfg["model"]["cl_weight"] == 0.0 and cfg["model"]["proj_size"] == 8 and cfg["model"]["hidden_size"] == 16
    full = yaml.safe_load((abl / "full" / "carat_toy_seed1" / "config.yaml").read_text())
    assert full["model"]["cl_weight"] > 0
    # a second call reuses the finished runs instead of training again
    rows = api.ablate("carat", store, out=abl, seeds=[1], config=str(user), overrides=[*CARAT_TINY, *QUIET],
                      only=["carat-no-cl"])
    assert sorted(p.name for p in (abl / "carat-no-cl").iterdir()) == ["carat_toy_seed1"]
    assert rows[1]["variant"] == "carat-no-cl" and rows[1]["metrics"]["micro_f1"]["delta"] is not None


def test_ablate_rejects_unknown_variant(tmp_path):
    with pytest.raises(MMERError, match="Did you mean 'carat-no-cl'"):
        api.ablate("carat", None, out=tmp_path, only=["no-c"])
    with pytest.raises(MMERError, match="defines no ablations"):
        api.ablate("early_fusion", None, out=tmp_path)


def test_degenerate_results_are_warned_after_training_and_in_report(tmp_path, capsys):
    """Issue 20 item 5: a tiny validation/test split and a constant prediction (here every label
    for every sample, at threshold 0) passed without a word; now training warns at its end, the
    run keeps the warnings (warnings.json), and `mmer report` says them again."""
    from helpers import API_QUIET

    from mmerkit.cli import main

    store = toy_store(tmp_path / "store", n_train=32, n_valid=5, n_test=8)
    with pytest.warns(UserWarning) as caught:
        [run] = api.train("early_fusion", store.path, out=tmp_path / "runs", epochs=1, overrides=TINY,
                          threshold=0.0, **API_QUIET)
    said = " | ".join(str(w.message) for w in caught)
    assert "the valid split has only 5 sample(s): the best epoch and the threshold are chosen on it" in said
    assert "the test split has only 8 sample(s)" in said
    assert "every valid sample gets the same prediction (every label)" in said
    assert "every test sample gets the same prediction (every label)" in said
    assert run.warnings == json.loads((run.run_dir / "warnings.json").read_text()) and len(run.warnings) == 4
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(["report", str(tmp_path / "runs")])
    assert e.value.code in (0, None)
    err = capsys.readouterr().err
    assert err.count("warning:") == 4 and "every valid sample gets the same prediction" in err
    assert [r["warnings"] for r in api.report(tmp_path / "runs")][0] == [f"{run.run_dir}: {n}" for n in run.warnings]


def test_a_healthy_run_has_no_warnings(tmp_path):
    from helpers import API_QUIET

    store = toy_store(tmp_path / "store", n_train=64, n_valid=24, n_test=32)
    with warnings_as_list() as caught:
        [run] = api.train("early_fusion", store.path, out=tmp_path / "runs", epochs=3, overrides=TINY, **API_QUIET)
    assert run.warnings == [] or all("same prediction" in w for w in run.warnings), run.warnings
    assert not [w for w in caught if "sample(s)" in str(w.message)]


def warnings_as_list():
    import warnings

    return warnings.catch_warnings(record=True)


def test_one_seed_shows_no_spread(tmp_path):
    """Issue 20 item 7: one seed has no std; "± 0.0000" claimed one."""
    fake_run(tmp_path / "exp", "carat", 1, {"micro_f1": 0.5, "accuracy": 0.4})
    rows = report(tmp_path / "exp")
    md = format_table(rows, "md")
    assert "0.5000" in md and "±" not in md
    assert "micro_f1_mean,micro_f1_std" in format_table(rows, "csv") and ",0.5,," in format_table(rows, "csv")
