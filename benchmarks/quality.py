"""Quality on the embedded synthetic data: models and ablations, mean ± std over seeds.

Every entry is trained with `mmerkit.api.train` exactly as `mmer train` would (model selection and
threshold on validation, test evaluated once), plus the pooled-feature logistic regression of
`mmerkit.data.synthetic`. Results go to OUT/quality.json and a markdown table on stdout.

    python benchmarks/quality.py --out runs/quality                       # every entry, seeds 1 2 3
    python benchmarks/quality.py --only carat early_fusion --seeds 1      # a subset
    python benchmarks/quality.py --only carat --set optim.lr=1e-4 --tag lr1e-4
    python benchmarks/quality.py --table old/quality.json runs/quality/quality.json   # one table
    python benchmarks/quality.py --table a/quality.json b/quality.json --only carat tailor
    python benchmarks/quality.py --suite --out runs/full-width            # the full-width suite (GPU)
    python benchmarks/quality.py --suite --plan                          # its steps and time estimate
    python benchmarks/quality.py --suite --tiny --out /tmp/suite         # the same at test size, CPU
    python benchmarks/quality.py --tuned --trials 8 --epochs 6 --only carat late_fusion-w64 tailor mult
    python benchmarks/quality.py --robustness --out runs/robust           # every neural model x data
    python benchmarks/quality.py --robustness --only tailor amp --profiles mosei-like --seeds 1
    python benchmarks/quality.py --robustness --tiny --out /tmp/robust    # test size, CPU (tests)
    python benchmarks/quality.py --robustness --table a/robustness.json b/robustness.json   # one grid

`--robustness` trains every neural model at its CPU-width entry (ROBUSTNESS) on every data set
of ROBUSTNESS_DATA (each synthetic profile, and the real AVEC/IEMOCAP features of
../shared/data when present) and reports, per cell, the test micro-F1 mean ± std and its
margin over the best constant label set of that test split (mean margin, and the smallest
margin of any seed). Results go to OUT/robustness.json and a markdown table; `--robustness
--table FILES` prints the saved cells as one grid (entries x data sets).

`--tuned` compares each entry's packaged recipe with what `mmer tune` finds at an equal budget:
every entry gets the same number of trials of the same number of epochs (its `--set`s stay
fixed and leave the search space), then the best configuration is retrained with `--seeds`
and tested once per seed; the packaged recipe is trained with the same epochs and seeds.
Results go to OUT/tuned.json and a markdown table.

`--table` prints one markdown table (per-label F1 and constant seeds included) from saved
quality.json files; an entry in a later file replaces the same entry of an earlier one.

Each entry's rows carry the per-label test F1 and, per seed, whether the run sits at a trivial
solution (a constant prediction such as "always happy"; see per_seed).

An entry is NAME: (model, config preset or None, extra `--set` overrides).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import time
from pathlib import Path

# CARAT entries share the `carat-small` preset (the architecture at a CPU-sized width) so that
# the full comparison fits a 2-core machine; the ablations only flip the paper's switches.
ENTRIES: dict[str, tuple[str, str | None, list[str]]] = {
    # the baselines at as many epochs as carat-small, with their recipes' step budget (an epoch count
    # set alone is exact, configs/models/*.yaml's min_steps would not apply): the same 12 epochs on
    # the embedded data, more on a smaller training split (README, "Robustness")
    "early_fusion": ("early_fusion", None, ["train.epochs=12", "train.min_steps=384"]),
    "carat": ("carat", "carat-small", []),
    "carat-no-cl": ("carat", "carat-small", ["model.cl_weight=0"]),
    "carat-no-recon": ("carat", "carat-small",
                       ["model.recon_mse_weight=0", "model.aug_mse_weight=0", "model.beta_mse_weight=0"]),
    "carat-batch-anchors": ("carat", "carat-small", ["model.anchors=batch"]),
    "carat-bf16": ("carat", "carat-small", ["train.precision=bf16-mixed"]),
    # the model comparison (README): every model at a CPU-sized width, 12 epochs
    "ramer": ("ramer", "ramer-small", []),
    "late_fusion": ("late_fusion", None, ["train.epochs=12", "train.min_steps=384"]),
    "mult": ("mult", None, ["train.epochs=12", "train.min_steps=1044"]),
    "amp": ("amp", "amp-small", []),
    "tailor": ("tailor", "tailor-small", []),
    "univa": ("univa", "univa-small", []),
    "lddu": ("lddu", "lddu-small", []),
    "br": ("br", None, []),
    "cc": ("cc", None, []),
    "lp": ("lp", None, []),
    "ramer-random-shuffle": ("ramer", "ramer-small", ["model.shuffle_mode=random"]),
    "ramer-upstream-shuffle": ("ramer", "ramer-small", ["model.shuffle_mode=upstream_reverse"]),
    # incomplete modalities: 30% of the samples of every split lose one random modality
    "carat-missing30": ("carat", "carat-small", ["data.synthetic.missing_rate=0.3"]),
    "ramer-missing30": ("ramer", "ramer-small", ["data.synthetic.missing_rate=0.3"]),
    # does the contrastive loss help when labels are noisy or data are scarce? (README, CARAT)
    "carat-noise20": ("carat", "carat-small", ["data.synthetic.label_noise=0.2"]),
    "carat-no-cl-noise20": ("carat", "carat-small", ["data.synthetic.label_noise=0.2", "model.cl_weight=0"]),
    "carat-1000": ("carat", "carat-small", ["data.synthetic.samples=1000"]),
    "carat-no-cl-1000": ("carat", "carat-small", ["data.synthetic.samples=1000", "model.cl_weight=0"]),
    "carat-1000-36ep": ("carat", "carat-small", ["data.synthetic.samples=1000", "train.epochs=36"]),
    "carat-no-cl-1000-36ep": ("carat", "carat-small", ["data.synthetic.samples=1000", "train.epochs=36",
                                                       "model.cl_weight=0"]),
    # is the contrastive term redundant with the per-modality label classifiers (MRM branch)?
    "carat-no-mrm": ("carat", "carat-small", ["model.use_mrm=false"]),
    "carat-no-mrm-no-cl": ("carat", "carat-small", ["model.use_mrm=false", "model.cl_weight=0"]),
    # is the late-fusion baseline's lead a matter of width? (README, model comparison)
    "late_fusion-w64": ("late_fusion", None, ["train.epochs=12", "model.hidden_size=64", "model.intermediate_size=128"]),
    "carat-w128": ("carat", "carat-small", ["model.hidden_size=128", "model.intermediate_size=256"]),
    # every neural model at its packaged default (the authors' widths: a GPU's work, hours on
    # 2 CPU cores) and TAILOR / AMP at their authors' whole recipes (presets)
    "carat-default": ("carat", None, []),
    "ramer-default": ("ramer", None, []),
    "tailor-default": ("tailor", None, []),
    "amp-default": ("amp", None, []),
    "early_fusion-default": ("early_fusion", None, []),
    "late_fusion-default": ("late_fusion", None, []),
    "mult-default": ("mult", None, []),
    "tailor-authors": ("tailor", "tailor-authors", []),
    "amp-authors": ("amp", "amp-authors", []),
    "univa-default": ("univa", None, []),
    "univa-authors": ("univa", "univa-authors", []),
    "lddu-default": ("lddu", None, []),
    "lddu-authors": ("lddu", "lddu-authors", []),
    "carat-authors": ("carat", "carat-authors", []),
    "ramer-authors": ("ramer", "ramer-authors", []),
    "carat-noise05": ("carat", "carat-small", ["data.synthetic.label_noise=0.05"]),
    "carat-no-cl-noise05": ("carat", "carat-small", ["data.synthetic.label_noise=0.05", "model.cl_weight=0"]),
}
# The full-width suite (README, "Full-width suite"): every neural model at mmerkit's recipe at
# its packaged (the authors') width, and at the authors' whole recipe where a preset holds it,
# seeds 1 2 3; plus the contrastive terms of CARAT and LDDU against the releases' dense form.
SUITE = ["carat-default", "carat-authors", "ramer-default", "ramer-authors", "tailor-default",
         "tailor-authors", "amp-default", "amp-authors", "univa-default", "univa-authors",
         "lddu-default", "lddu-authors", "early_fusion-default", "late_fusion-default", "mult-default"]
SUITE_THROUGHPUT = [("carat", "chunked"), ("carat", "dense"), ("lddu", "chunked"), ("lddu", "dense")]
# --tiny: the same entries and code paths at each model's registry test size (test_params), on
# 60 samples of 8 steps, one epoch, one seed: what CI runs on CPU (tests/test_quality_table.py)
TINY_DATA = ["data.synthetic.samples=60", "data.synthetic.seq_len=8", "train.batch_size=16"]
REPORTED = ("micro_f1", "accuracy", "macro_f1", "hamming_loss")
# --robustness: every neural model at its CPU-width entry (tests/test_quality_table.py checks
# that this covers the registry's neural models) ...
ROBUSTNESS = ["carat", "ramer", "tailor", "amp", "univa", "lddu", "early_fusion", "late_fusion", "mult"]
# ... on every data set: a synthetic profile is `--set`s; "iemocap" is a store built from the
# AVEC/IEMOCAP utterance features (avec_store). mosei-like has the issue-25 file's sizes
# (1,000 / 200 / 400).
MOSEI_LIKE = ["data.synthetic.profile=mosei-like", "data.synthetic.samples=1600",
              "data.synthetic.split=[0.625,0.125,0.25]"]
ROBUSTNESS_DATA: dict[str, list[str]] = {"embedded": [], "mosei-like": MOSEI_LIKE, "iemocap": []}
# ... and what one model needs on one data set: UniVA's valence-arousal table has no point for the
# AVEC labels (high arousal, positive valence), so they get the obvious ones on its [0, 1] scale
ROBUSTNESS_MODEL_DATA: dict[tuple[str, str], list[str]] = {
    ("iemocap", "univa"): ["model.va_table={arousal: [0.5, 1.0], valence: [1.0, 0.5]}"]}
AVEC_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "avec_iemocap_dimensional"


def summarise(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def exact_epochs(epochs: int | None) -> list[str]:
    """An epoch count given here (--epochs, --tiny's 1) is exact, also for the entries whose
    `--set`s restate a step budget (train.min_steps would lengthen it otherwise)."""
    return ["train.min_steps=0"] if epochs is not None else []


def run_entry(name: str, seeds: list[int], out: Path, extra: list[str], epochs: int | None,
              data: Path | None = None, resume: bool = False) -> dict:
    from mmerkit import api

    model, config, sets = ENTRIES[name]
    start = time.perf_counter()
    overrides = [*sets, *extra, *exact_epochs(epochs), "train.progress=false"]
    if resume:  # seed by seed: one that never started (or left no checkpoint) starts afresh
        results = [api.train(model, data, out=out / name, seeds=[seed], config=config, epochs=epochs,
                             overrides=overrides, resume=has_checkpoint(out / name, model, seed))[0]
                   for seed in seeds]
    else:
        results = api.train(model, data, out=out / name, seeds=seeds, config=config, epochs=epochs,
                            overrides=overrides)
    row = {"entry": name, "model": model, "config": config, "overrides": [*sets, *extra], "seeds": seeds,
           "seconds": round(time.perf_counter() - start, 1)}
    for key in REPORTED:
        row[key] = summarise([r.test_metrics[key] for r in results])
    row["valid_micro_f1"] = summarise([r.valid_metrics["micro_f1"] for r in results])
    labels = sorted(k for k in results[0].test_metrics if k.startswith("f1/"))
    for key in labels:
        row[key] = summarise([r.test_metrics[key] for r in results])
    trivial = (constant_baseline([*sets, *extra]) if data is None
               else best_constant_micro_f1(api.FeatureStore(data).split("test").labels))
    row["per_seed"] = [per_seed(seed, r, labels, trivial) for seed, r in zip(seeds, results, strict=True)]
    return row


def has_checkpoint(out: Path, model: str, seed: int) -> bool:
    """Whether OUT holds a run of this model and seed that api.train(resume=True) can take up:
    finished (read back) or with a last.ckpt (resumed)."""
    from mmerkit.run import Run

    runs = [Run(p) for p in out.glob(f"{model}_*_seed{seed}*") if re.fullmatch(rf".+_seed{seed}(_\d+)?", p.name)]
    return any(r.finished or r.resumable for r in runs)


def best_constant_micro_f1(labels) -> float:
    """The best micro-F1 of predicting one fixed label set for every sample (the trivial
    solutions: "always happy", "always happy and sad", "always every label", ...)."""
    import numpy as np

    y = np.asarray(labels) > 0.5
    sets = (np.arange(1, 2 ** y.shape[1])[:, None] >> np.arange(y.shape[1])) & 1
    return float((2 * (sets @ y.sum(0)) / (sets.sum(1) * y.shape[0] + y.sum())).max())


def constant_baseline(overrides: list[str]) -> float:
    """best_constant_micro_f1 on the test split of the embedded data these overrides select."""
    from mmerkit import api
    from mmerkit.config import deep_merge, parse_override

    merged: dict = {}
    for item in overrides:
        merged = deep_merge(merged, parse_override(item))
    params = merged.get("data", {}).get("synthetic", {})
    return best_constant_micro_f1(api.embedded_store(params).split("test").labels)


def per_seed(seed: int, result, labels: list[str], trivial_f1: float) -> dict:
    """One seed's test numbers and whether it is at a trivial solution: a test micro-F1 within
    0.01 of the best constant prediction's (0.503 on the embedded data: "happy" alone scores
    0.467), or F1 > 0 on at most one label."""
    m = result.test_metrics
    scored = [k[3:] for k in labels if m[k] > 0]
    return {"seed": seed, "micro_f1": m["micro_f1"], "macro_f1": m["macro_f1"],
            "valid_micro_f1": result.valid_metrics["micro_f1"], "best_epoch": result.best_epoch,
            "labels_with_f1": scored, "constant_micro_f1": trivial_f1,
            "trivial": len(scored) <= 1 or m["micro_f1"] <= trivial_f1 + 0.01}


def run_logreg(seeds: list[int]) -> dict:
    """The pooled baseline on the same embedded store (deterministic: nothing to seed)."""
    from mmerkit import api
    from mmerkit.data.synthetic import pooled_logreg_baseline

    score = pooled_logreg_baseline(api.embedded_store({}))
    row = {"entry": "pooled_logreg", "model": "logistic regression (mean+max pooled)", "config": None,
           "overrides": [], "seeds": [0], "note": "deterministic; threshold 0.5"}
    for key in ("micro_f1", "accuracy", "macro_f1"):
        row[key] = summarise([score[key]])
    return row


def markdown(rows: list[dict]) -> str:
    lines = ["| entry | micro-F1 | accuracy | macro-F1 | valid micro-F1 | time/seed |",
             "|---|---|---|---|---|---|"]

    def fmt(row, key):
        v = row.get(key)
        return f"{v['mean']:.3f} ± {v['std']:.3f}" if v else "-"

    for r in rows:
        per_seed = f"{r['seconds'] / len(r['seeds']):.0f} s" if "seconds" in r else "-"
        lines.append(f"| {r['entry']} | {fmt(r, 'micro_f1')} | {fmt(r, 'accuracy')} | {fmt(r, 'macro_f1')} "
                     f"| {fmt(r, 'valid_micro_f1')} | {per_seed} |")
    return "\n".join(lines)


def row_summary(row: dict) -> dict:
    """Mean/std of every reported metric of a saved row: its aggregates, or (rows saved as
    per-seed test metrics only) summarised from `per_seed[i]["test"]`."""
    if isinstance(row.get("micro_f1"), dict):
        return {k: v for k, v in row.items() if isinstance(v, dict) and "mean" in v}
    tests = [seed["test"] for seed in row["per_seed"]]
    return {k: summarise([t[k] for t in tests]) for k in tests[0]}


def comparison_table(files: list[Path], only: list[str] | None = None) -> str:
    """The README's comparison table from saved quality.json files (later files win), limited
    to the entries `only` when given."""
    rows = {name: row for name, row in merge_saved(files, lambda r: r["entry"]).items() if not only or name in only}
    labels = sorted({k for r in rows.values() for k in row_summary(r) if k.startswith("f1/")})
    head = ["entry", "micro-F1", "Acc", "macro-F1", "HL", *[k[3:] for k in labels], "seeds", "constant seeds"]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for name, row in sorted(rows.items()):
        summary = row_summary(row)
        cells = [f"{summary[k]['mean']:.3f} ± {summary[k]['std']:.3f}" if k in summary else "-"
                 for k in (*REPORTED, *labels)]
        seeds = row.get("per_seed") or []
        trivial = sum(s["trivial"] for s in seeds) if seeds else "-"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {len(row.get('seeds') or seeds)} | {trivial} |")
    return "\n".join(lines)


def run_tuned(name: str, seeds: list[int], out: Path, extra: list[str], epochs: int | None, trials: int,
              workers: int, resume: bool = False) -> dict:
    """The packaged recipe and the tuned one of one entry, at the same epochs and seeds."""
    from mmerkit import api

    model, config, sets = ENTRIES[name]
    fixed = [*sets, *extra]
    packaged = run_entry(name, seeds, out / "packaged", extra, epochs, resume=resume)
    # what the entry fixes is not searched (e.g. late_fusion-w64's width)
    space = {item.split("=", 1)[0]: None for item in fixed if item.split(".", 1)[0] in ("model", "optim", "train")}
    start = time.perf_counter()
    res = api.tune(model, None, trials=trials, config=config, space=space, epochs=epochs,
                   out=out / "tuned" / name, overrides=[*fixed, *exact_epochs(epochs), "train.progress=false"], workers=workers,
                   final_seeds=seeds, seed=0)
    total = time.perf_counter() - start
    recipe = next((t for t in res.trials if t["number"] == 0), {})
    return {"entry": name, "model": model, "config": config, "overrides": fixed, "seeds": seeds,
            "trials": trials, "epochs": epochs, "workers": workers,
            "packaged": {k: packaged[k] for k in REPORTED}, "packaged_seconds": packaged["seconds"],
            "tuned": res.final_summary, "best_trial": res.best_trial, "best_params": res.best_params,
            "valid_packaged": recipe.get("value"), "valid_best": res.best_value,
            "states": {s: sum(t["state"] == s for t in res.trials) for s in ("complete", "pruned", "fail")},
            "tuning_seconds": round(res.seconds, 1), "final_seconds": round(total - res.seconds, 1),
            "study_dir": str(res.study_dir)}


def run_tuned_entries(names: list[str], seeds: list[int], out: Path, extra: list[str], epochs: int | None,
                      trials: int, workers: int, resume: bool = False) -> list[dict]:
    """run_tuned for each entry; OUT/tuned.json is rewritten after each, so a stop keeps the rest."""
    rows = []
    for name in names:
        rows.append(run_tuned(name, seeds, out, extra, epochs, trials, workers, resume))
        out.mkdir(parents=True, exist_ok=True)
        (out / "tuned.json").write_text(json.dumps(rows, indent=2, default=str))
        print(tuned_markdown(rows[-1:]).splitlines()[-1], flush=True)
    print(tuned_markdown(rows))
    return rows


def tuned_markdown(rows: list[dict]) -> str:
    lines = ["| entry | packaged: test micro-F1 | tuned: test micro-F1 | packaged: macro-F1 | tuned: macro-F1 "
             "| valid micro-F1, trial 0 -> best | best trial | trials (complete/pruned/failed) | tuning + final time |",
             "|---|---|---|---|---|---|---|---|---|"]

    def fmt(d, key):
        v = d.get(key)
        return f"{v['mean']:.3f} ± {v['std']:.3f}" if v else "-"

    for r in rows:
        st = r["states"]
        lines.append(f"| {r['entry']} | {fmt(r['packaged'], 'micro_f1')} | {fmt(r['tuned'], 'micro_f1')} "
                     f"| {fmt(r['packaged'], 'macro_f1')} | {fmt(r['tuned'], 'macro_f1')} "
                     f"| {r['valid_packaged']:.3f} -> {r['valid_best']:.3f} | {r['best_trial']} "
                     f"| {st['complete']}/{st['pruned']}/{st['fail']} "
                     f"| {r['tuning_seconds']:.0f} s + {r['final_seconds']:.0f} s |")
    return "\n".join(lines)


def tiny_overrides(model: str) -> list[str]:
    """`--set` strings that shrink `model` to its registry test size (JSON is YAML)."""
    from mmerkit.models.base import model_class

    return [f"model.{k}={json.dumps(v)}" for k, v in model_class(model).test_params.items()]


def suite_plan(seeds: list[int]) -> list[dict]:
    """Optimiser steps of every suite entry, from its resolved config and the embedded data's
    train split, for the time estimate (`--suite --plan`)."""
    import math

    from mmerkit.config import load_config
    from mmerkit.data.synthetic import SynthConfig

    synth = SynthConfig()
    train = int(synth.samples * synth.split[0])
    rows = []
    for name in SUITE:
        model, preset, sets = ENTRIES[name]
        cfg = load_config(model, config=preset, overrides=sets)
        per_epoch = (train // cfg.train.batch_size if cfg.train.drop_last
                     else math.ceil(train / cfg.train.batch_size))
        rows.append({"entry": name, "epochs": cfg.train.epochs, "batch_size": cfg.train.batch_size,
                     "steps": cfg.train.epochs * per_epoch * len(seeds)})
    return rows


def run_throughput(out: Path, tiny: bool, device: str) -> list[dict]:
    """SUITE_THROUGHPUT through benchmarks/throughput.py (each in its own process)."""
    import subprocess
    import sys

    bench = Path(__file__).with_name("throughput.py")
    rows = []
    for model, supcon in SUITE_THROUGHPUT:
        target = out / f"throughput-{model}-{supcon}.json"
        size = (["--batch-size", "4", "--seq-len", "8", "--steps", "1", "--warmup", "0",
                 *[a for s in tiny_overrides(model) for a in ("--set", s)]] if tiny
                else ["--batch-size", "64", "--steps", "20", "--warmup", "3"])
        subprocess.run([sys.executable, str(bench), "--model", model, "--supcon", supcon, "--device", device,
                        *size, "--json", str(target)], check=True, capture_output=True, text=True)
        rows += json.loads(target.read_text())
    return rows


def run_suite(out: Path, seeds: list[int], tiny: bool, device: str) -> None:
    """Every SUITE entry (OUT/quality.json, the file `--table` reads) and the throughput rows
    (OUT/throughput.json)."""
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in SUITE:
        extra = [*TINY_DATA, *tiny_overrides(ENTRIES[name][0])] if tiny else []
        rows.append(run_entry(name, seeds, out, extra, 1 if tiny else None))
        (out / "quality.json").write_text(json.dumps(rows, indent=2))
        print(markdown(rows[-1:]).splitlines()[-1], flush=True)
    (out / "throughput.json").write_text(json.dumps(run_throughput(out, tiny, device), indent=2))
    print(comparison_table([out / "quality.json"]))


def avec_store(out: Path) -> Path:
    """The AVEC/IEMOCAP utterance features (arousal, valence: 2 labels) as a store, through the
    `custom` converter as a user would: a fixed random 70/10/20 split, features standardised
    with train statistics (the same recipe as tests/test_real_data.py)."""
    import numpy as np

    from mmerkit.data.custom import convert_custom

    path = out / "avec-store"
    if (path / "meta.json").exists():
        return path
    def load(name):
        return np.loadtxt(AVEC_DIR / name, delimiter=",", dtype=np.float32, ndmin=2)
    feats = {"audio": load("uttAVEC_GeMAPS.csv"), "text": load("uttAVEC_CSA.csv"), "prosody": load("utt_AVEC_GP+DN.csv")}
    y = load("uttAVEC_biAV.csv").astype(np.uint8)
    n = len(y)
    order = np.random.RandomState(0).permutation(n)
    split = np.empty(n, dtype="<U5")
    split[order[: int(0.7 * n)]], split[order[int(0.7 * n): int(0.8 * n)]] = "train", "valid"
    split[order[int(0.8 * n):]] = "test"
    train = split == "train"
    feats = {m: (x - x[train].mean(0)) / (x[train].std(0) + 1e-6) for m, x in feats.items()}
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / "avec.npz", **feats, labels=y, label_names=np.array(["arousal", "valence"]), split=split,
             ids=np.array([f"utt{i}" for i in range(n)]))
    convert_custom(out / "avec.npz", path, empty_labels="allow", overwrite=True)
    return path


def robustness_cell(row: dict) -> dict:
    """One cell: test micro-F1 mean/std and the margin over the best constant label set."""
    margins = [s["micro_f1"] - s["constant_micro_f1"] for s in row["per_seed"]]
    return {"entry": row["entry"], "micro_f1": row["micro_f1"], "constant_micro_f1": row["per_seed"][0]["constant_micro_f1"],
            "margin": statistics.fmean(margins), "min_margin": min(margins), "seeds": row["seeds"],
            "per_seed": row["per_seed"], "overrides": row["overrides"], "seconds": row["seconds"]}


def run_robustness(out: Path, names: list[str], datasets: list[str], seeds: list[int], epochs: int | None,
                   tiny: bool, extra: list[str], resume: bool = False) -> list[dict]:
    """Every entry x data set; OUT/robustness.json is rewritten after each cell."""
    out.mkdir(parents=True, exist_ok=True)
    cells = []
    for dataset in datasets:
        if dataset == "iemocap" and not AVEC_DIR.is_dir():
            print(f"iemocap: {AVEC_DIR} not found, skipped", flush=True)
            continue
        data = avec_store(out) if dataset == "iemocap" else None
        for name in names:
            sets = [*ROBUSTNESS_DATA[dataset], *ROBUSTNESS_MODEL_DATA.get((dataset, ENTRIES[name][0]), []), *extra]
            if tiny:
                sets += [*(TINY_DATA if data is None else TINY_DATA[2:]), *tiny_overrides(ENTRIES[name][0])]
            row = run_entry(name, seeds, out / dataset, sets, 1 if tiny else epochs, data=data, resume=resume)
            cells.append({"data": dataset, **robustness_cell(row)})
            (out / "robustness.json").write_text(json.dumps(cells, indent=2))
            print(robustness_markdown(cells[-1:]).splitlines()[-1], flush=True)
    return cells


def robustness_markdown(cells: list[dict]) -> str:
    lines = ["| data | entry | test micro-F1 | best constant | margin (mean) | margin (worst seed) | seeds |",
             "|---|---|---|---|---|---|---|"]
    for c in cells:
        m = c["micro_f1"]
        lines.append(f"| {c['data']} | {c['entry']} | {m['mean']:.3f} ± {m['std']:.3f} | {c['constant_micro_f1']:.3f} "
                     f"| {c['margin']:+.3f} | {c['min_margin']:+.3f} | {' '.join(map(str, c['seeds']))} |")
    return "\n".join(lines)


def robustness_grid(cells: list[dict]) -> str:
    """One row per entry, one column per data set: test micro-F1 mean ± std and (margin over the
    best constant: mean / worst seed); a cell whose worst seed is under +0.03 is marked with !."""
    datasets = list(dict.fromkeys(c["data"] for c in cells))
    entries = sorted({c["entry"] for c in cells}, key=lambda e: ROBUSTNESS.index(e) if e in ROBUSTNESS else len(ROBUSTNESS))
    by_key = {(c["data"], c["entry"]): c for c in cells}
    constants = {d: next(c["constant_micro_f1"] for c in cells if c["data"] == d) for d in datasets}
    lines = ["| entry | " + " | ".join(f"{d} (constant {constants[d]:.3f})" for d in datasets) + " |",
             "|---|" + "---|" * len(datasets)]
    for entry in entries:
        row = []
        for d in datasets:
            c = by_key.get((d, entry))
            if c is None:
                row.append("-")
                continue
            mark = " !" if c["min_margin"] < 0.03 else ""
            row.append(f"{c['micro_f1']['mean']:.3f} ± {c['micro_f1']['std']:.3f} ({c['margin']:+.3f} / "
                       f"{c['min_margin']:+.3f}; n={len(c['seeds'])}){mark}")
        lines.append(f"| {entry} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def merge_saved(files: list[Path], key) -> dict:
    """The rows of saved JSON lists (quality.json, robustness.json) by `key(row)`, a later file's
    row replacing an earlier one's."""
    merged = {}
    for file in files:
        for row in json.loads(file.read_text()):
            merged[key(row)] = row
    return merged


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", nargs="+", choices=[*ENTRIES, "pooled_logreg"], help="entries to run")
    p.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    p.add_argument("--epochs", type=int, default=None, help="override every entry's epochs")
    p.add_argument("--set", action="append", default=[], help="extra override for every entry")
    p.add_argument("--tag", default="", help="suffix of the output folder, to keep variants apart")
    p.add_argument("--out", type=Path, default=Path("runs/quality"))
    p.add_argument("--table", nargs="+", type=Path, help="print one table from saved quality.json files")
    p.add_argument("--suite", action="store_true", help="the full-width suite (SUITE, SUITE_THROUGHPUT)")
    p.add_argument("--tiny", action="store_true",
                   help="with --suite / --robustness: every entry at test size, 1 epoch, 1 seed")
    p.add_argument("--robustness", action="store_true", help="every neural model on every data set (ROBUSTNESS)")
    p.add_argument("--profiles", nargs="+", choices=list(ROBUSTNESS_DATA), help="with --robustness: data sets")
    p.add_argument("--plan", action="store_true", help="with --suite: print each entry's steps and the estimate")
    p.add_argument("--ms-per-step", type=float, default=60.0, help="--plan's assumed time of one step")
    p.add_argument("--device", default="cuda", help="--suite's throughput device (training uses the engine's)")
    p.add_argument("--tuned", action="store_true", help="packaged recipe vs `mmer tune` at an equal budget")
    p.add_argument("--trials", type=int, default=8, help="trials per entry (--tuned)")
    p.add_argument("--workers", type=int, default=1, help="trial processes (--tuned)")
    p.add_argument("--resume", action="store_true",
                   help="an entry's finished seeds in OUT are read back, an interrupted one resumes (api.train resume)")
    args = p.parse_args(argv)
    if args.table:
        missing = [str(f) for f in args.table if not f.is_file()]
        if missing:
            p.error(f"--table: no such file {missing[0]} (pass quality.json files written by this script)")
        if args.robustness:
            wrong = [str(f) for f in args.table if any("data" not in c for c in json.loads(f.read_text()))]
            if wrong:
                p.error(f"--robustness --table: {wrong[0]} has no robustness cells (pass robustness.json files; "
                        "quality.json files go to --table without --robustness)")
            print(robustness_grid(list(merge_saved(args.table, lambda c: (c["data"], c["entry"])).values())))
        else:
            print(comparison_table(args.table, args.only))
        return
    if args.suite and args.plan:
        plan = suite_plan(args.seeds)
        for row in plan:
            print(f"{row['entry']:22s} {row['epochs']:3d} epochs x batch {row['batch_size']:3d}: {row['steps']:6d} steps")
        total = sum(r["steps"] for r in plan)
        print(f"{total} steps; at {args.ms_per_step:.0f} ms a step about {total * args.ms_per_step / 3.6e6:.1f} h")
        return
    if args.robustness:
        bad = [n for n in args.only or [] if n not in ROBUSTNESS]
        if bad:
            p.error(f"--robustness --only: {bad[0]} is not one of ROBUSTNESS ({', '.join(ROBUSTNESS)})")
        cells = run_robustness(args.out, args.only or ROBUSTNESS, args.profiles or list(ROBUSTNESS_DATA),
                               args.seeds[:1] if args.tiny else args.seeds, args.epochs, args.tiny, args.set,
                               args.resume)
        print(robustness_markdown(cells))
        print(robustness_grid(cells))
        return
    if args.suite:
        seeds = args.seeds[:1] if args.tiny else args.seeds
        run_suite(args.out, seeds, args.tiny, "cpu" if args.tiny else args.device)
        return
    out = args.out / args.tag if args.tag else args.out
    if args.tuned:
        if not args.only or "pooled_logreg" in args.only:
            p.error("--tuned: name the entries to tune with --only (pooled_logreg has nothing to tune)")
        run_tuned_entries(args.only, args.seeds, out, args.set, args.epochs, args.trials, args.workers, args.resume)
        return
    names = args.only or [*ENTRIES, "pooled_logreg"]
    rows = []
    for name in names:
        rows.append(run_logreg(args.seeds) if name == "pooled_logreg"
                    else run_entry(name, args.seeds, out, args.set, args.epochs, resume=args.resume))
        out.mkdir(parents=True, exist_ok=True)
        (out / "quality.json").write_text(json.dumps(rows, indent=2))
        print(markdown(rows[-1:]).splitlines()[-1], flush=True)
    print(markdown(rows))


if __name__ == "__main__":
    main()
