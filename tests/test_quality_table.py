"""benchmarks/quality.py --table: the README's comparison table from saved results. Both saved
row formats (aggregates, or per-seed test metrics only) give the same means, and a later file's
entry replaces an earlier one's."""

from __future__ import annotations

import importlib.util
import json
import statistics
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "quality.py"


@pytest.fixture(scope="module")
def quality():
    spec = importlib.util.spec_from_file_location("quality_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def seed_row(seed: int, micro: float, trivial: bool) -> dict:
    test = {"micro_f1": micro, "accuracy": micro - 0.1, "macro_f1": micro - 0.2, "hamming_loss": 1 - micro,
            "f1/happy": micro, "f1/sad": 0.0 if trivial else micro / 2}
    return {"seed": seed, "micro_f1": micro, "trivial": trivial, "test": test}


def test_table_from_both_formats_later_files_win(quality, tmp_path):
    per_seed_only = {"entry": "a", "per_seed": [seed_row(1, 0.5, True), seed_row(2, 0.7, False)]}
    aggregated = {"entry": "b", "seeds": [1, 2, 3], "per_seed": [{"trivial": False}] * 3,
                  **{k: {"mean": 0.6, "std": 0.01} for k in ("micro_f1", "accuracy", "macro_f1", "hamming_loss",
                                                          "f1/happy", "f1/sad")}}
    old = tmp_path / "old.json"
    old.write_text(json.dumps([per_seed_only, {**aggregated, "micro_f1": {"mean": 0.1, "std": 0.0}}]))
    new = tmp_path / "new.json"
    new.write_text(json.dumps([aggregated]))
    lines = quality.comparison_table([old, new]).splitlines()
    assert lines[0].split(" | ")[-3:] == ["sad", "seeds", "constant seeds |"]
    row_a, row_b = lines[2], lines[3]
    mean, std = statistics.fmean([0.5, 0.7]), statistics.stdev([0.5, 0.7])
    assert row_a.startswith(f"| a | {mean:.3f} ± {std:.3f} |") and row_a.endswith("| 2 | 1 |")
    assert row_b.startswith("| b | 0.600 ± 0.010 |") and row_b.endswith("| 3 | 0 |")  # new.json's b
    assert quality.comparison_table([old, new], only=["b"]).count("\n") == 2  # header, rule, b


def test_full_width_suite_tiny_runs_every_entry_and_writes_what_the_table_reads(quality, tmp_path):
    """`quality.py --suite --tiny`: every suite entry at its registry test size (one epoch, one
    seed) and the contrastive-loss throughput rows, into the files the README table reads."""
    quality.main(["--suite", "--tiny", "--out", str(tmp_path)])
    rows = json.loads((tmp_path / "quality.json").read_text())
    assert [r["entry"] for r in rows] == quality.SUITE
    assert all(len(r["per_seed"]) == 1 and 0 <= r["micro_f1"]["mean"] <= 1 for r in rows)
    speed = json.loads((tmp_path / "throughput.json").read_text())
    assert [r["model"] for r in speed] == ["carat", "carat (dense SupCon)", "lddu", "lddu (dense SupCon)"]
    table = quality.comparison_table([tmp_path / "quality.json"]).splitlines()
    assert len(table) == 2 + len(quality.SUITE)
    plan = quality.suite_plan([1, 2, 3])
    assert [p["entry"] for p in plan] == quality.SUITE and all(p["steps"] > 0 for p in plan)


def test_robustness_covers_every_neural_model(quality):
    """--robustness must not silently leave out a model added to the registry."""
    from mmerkit.models.base import list_models, model_class

    neural = {n for n in list_models() if not model_class(n).closed_form}
    covered = {quality.ENTRIES[e][0] for e in quality.ROBUSTNESS}
    assert neural <= covered, f"add to ROBUSTNESS: {sorted(neural - covered)}"
    # a model's own sets for one data set name a real data set and model, and are valid config
    from mmerkit import api

    for (data, model), sets in quality.ROBUSTNESS_MODEL_DATA.items():
        assert data in quality.ROBUSTNESS_DATA and model in covered
        api.build_config(model, None, None, sets)


def test_robustness_tiny_writes_cells_with_margins(quality, tmp_path, capsys):
    """`quality.py --robustness --tiny`: each cell has the test micro-F1 and its margin over the
    best constant label set of that data set's test split (the profiles differ, so do constants)."""
    quality.main(["--robustness", "--tiny", "--only", "late_fusion", "--out", str(tmp_path)])
    cells = json.loads((tmp_path / "robustness.json").read_text())
    wanted = ["embedded", "mosei-like"] + (["iemocap"] if quality.AVEC_DIR.is_dir() else [])
    assert [c["data"] for c in cells] == wanted
    for c in cells:
        seed = c["per_seed"][0]
        assert c["margin"] == pytest.approx(seed["micro_f1"] - seed["constant_micro_f1"])
        assert 0 < c["constant_micro_f1"] <= 1
    # --tiny's one epoch is exact: the entry's step budget (train.min_steps) does not lengthen it
    assert all(c["per_seed"][0]["best_epoch"] == 1 for c in cells)
    assert {p.parent.name for p in tmp_path.rglob("metrics.csv")} and all(
        p.read_text().count("\n1,valid") == 1 and "\n2," not in p.read_text() for p in tmp_path.rglob("metrics.csv"))
    assert cells[0]["constant_micro_f1"] != cells[1]["constant_micro_f1"]
    table = quality.robustness_markdown(cells).splitlines()
    assert len(table) == 2 + len(cells) and table[3].startswith("| mosei-like | late_fusion |")
    # --resume reads the finished runs back: the same cells, no new run directory
    runs = sorted(p.parent for p in tmp_path.rglob("metrics.csv"))
    quality.main(["--robustness", "--tiny", "--only", "late_fusion", "--out", str(tmp_path), "--resume"])
    assert sorted(p.parent for p in tmp_path.rglob("metrics.csv")) == runs
    again = json.loads((tmp_path / "robustness.json").read_text())
    assert [c["micro_f1"] for c in again] == [c["micro_f1"] for c in cells]
    # ... and a seed that never started under --resume is trained, not refused
    fresh = tmp_path / "fresh"
    quality.main(["--robustness", "--tiny", "--only", "late_fusion", "--profiles", "embedded", "--out", str(fresh),
                  "--resume"])
    assert json.loads((fresh / "robustness.json").read_text())[0]["micro_f1"] == cells[0]["micro_f1"]
    # --table reads the saved cells back as one grid: a row per entry, a column per data set,
    # a later file's cell replacing an earlier one's
    later = [{**cells[1], "micro_f1": {"mean": 0.999, "std": 0.0}}]
    (tmp_path / "later.json").write_text(json.dumps(later))
    capsys.readouterr()
    quality.main(["--robustness", "--table", str(tmp_path / "robustness.json"), str(tmp_path / "later.json")])
    grid = capsys.readouterr().out.splitlines()
    assert grid[0] == "| entry | " + " | ".join(f"{c['data']} (constant {c['constant_micro_f1']:.3f})" for c in cells) + " |"
    [row] = grid[2:]
    assert row.startswith("| late_fusion | ") and row.count("0.999 ± 0.000") == 1 and row.count("; n=1)") == len(cells)


def test_tuned_tiny_compares_packaged_and_tuned_at_the_same_budget(quality, tmp_path):
    """`quality.py --tuned`: the packaged recipe and `mmer tune`'s best, same trials, epochs and
    seeds, into OUT/tuned.json; the entry's fixed `--set`s stay out of the search space. --epochs
    is exact in every run (packaged, trials, final), also for an entry whose `--set`s restate a
    step budget (late_fusion: train.min_steps=384 would be ~128 epochs of these 3 steps)."""
    tiny = [a for s in [*quality.TINY_DATA, *quality.tiny_overrides("late_fusion")] for a in ("--set", s)]
    quality.main(["--tuned", "--only", "late_fusion", "--trials", "2", "--epochs", "1", "--seeds", "1",
                  "--out", str(tmp_path), *tiny])
    (row,) = json.loads((tmp_path / "tuned.json").read_text())
    assert row["entry"] == "late_fusion" and row["trials"] == 2 and row["epochs"] == 1
    assert sum(row["states"].values()) == 2
    assert 0 <= row["packaged"]["micro_f1"]["mean"] <= 1 and 0 <= row["tuned"]["micro_f1"]["mean"] <= 1
    assert not {"model.hidden_size", "train.epochs", "train.min_steps"} & set(row["best_params"])
    histories = [p.read_text() for p in tmp_path.rglob("metrics.csv")]
    assert len(histories) == 4 and all("\n1,valid" in h and "\n2," not in h for h in histories)  # 1 + 2 trials + 1
