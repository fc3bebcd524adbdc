"""What `mmer tune` costs over plain training, and what a second worker buys.

1. Overhead of one trial over `mmer train` of the same configuration: a study of one trial
   (the packaged recipe, enqueued) against `api.train` with the same config, epochs and seed,
   alternated `--repeats` times; the medians of (a) the trial's own duration (Optuna's start to
   end: the training run, validation reports to the pruner, trial.json) and (b) the whole
   `api.tune` call (study creation in SQLite, the trial, trials.csv, best.yaml, the plots), each
   against the `api.train` wall time. A trial reads no test split and writes no export, which
   a plain run does: (a) can come out below 0%. So (c) the trial is also set against the same
   engine run without test split and export and without Optuna: what Optuna and the glue add.
2. Throughput: the same study of `--trials` trials with 1 worker (this process, every core)
   and with 2 workers (each half the cores), alternated `--study-repeats` times; median trials
   per minute.

Both paths train on the thread counts `mmer tune` gives them (mmerkit.tune.threads_per_worker),
and the plain runs on the 1-worker count; the threads each run used (its env.json) are in the
JSON, with the load average before and after each measurement. Imports and the embedded store
are warmed up first (a plain run and a 1-trial study): the one-off import of Optuna, SQLAlchemy
and matplotlib by a fresh `mmer tune` process is not counted.

    python benchmarks/tune_cost.py --out runs/tune_cost                 # defaults below
    python benchmarks/tune_cost.py --model late_fusion --epochs 5 --trials 4 --repeats 3
    OMP_WAIT_POLICY=PASSIVE python benchmarks/tune_cost.py --study-repeats 1   # README's run

On cores other processes also use, torch's spinning OpenMP threads make every 2-thread run
several times slower (README, "What a trial costs"): there, run it with OMP_WAIT_POLICY=PASSIVE.

Results go to OUT/tune_cost.json and a markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import time
from pathlib import Path

# searched: lr, weight decay, dropout, unimodal weight; not what changes a trial's cost (batch, width)
SAME_COST = {"train.batch_size": None, "model.hidden_size": None, "model.layers": None}


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def threads_used(out: Path) -> list[int]:
    """The torch threads of each run under `out` (env.json)."""
    return [json.loads(p.read_text())["torch_threads"] for p in sorted(out.rglob("env.json"))]


def glue_seconds(study_dir: Path) -> list[float]:
    """Per trained trial: Optuna's duration minus the engine's (trial.json `seconds`, timed around
    the training call): what Optuna and the glue add to a trial, measured inside the same trial."""
    import csv

    with open(study_dir / "trials.csv", newline="") as f:
        duration = {int(r["number"]): float(r["duration_s"]) for r in csv.DictReader(f)}
    trials = [json.loads(p.read_text()) for p in sorted((study_dir / "trials").glob("*/*/trial.json"))]
    return [round(duration[t["trial"]] - t["seconds"], 2) for t in trials]


def plain_train(model: str, sets: list[str], epochs: int, out: Path) -> dict:
    from mmerkit import api

    before, start = load(), time.perf_counter()
    api.train(model, None, out=out, epochs=epochs, seeds=[1], overrides=sets)
    return {"seconds": round(time.perf_counter() - start, 2), "threads": threads_used(out),
            "load_before": before, "load_after": load()}


def engine_only(model: str, sets: list[str], epochs: int, out: Path) -> dict:
    """What a trial trains, without Optuna: the engine run with no test split and no export."""
    from mmerkit.api import build_config
    from mmerkit.engine import prepare_training, train_seeds

    before, start = load(), time.perf_counter()
    train_seeds(prepare_training(lambda store: build_config(model, store, None, sets, epochs=epochs), None, out),
                [1], evaluate_test=False)
    return {"seconds": round(time.perf_counter() - start, 2), "threads": threads_used(out),
            "load_before": before, "load_after": load()}


def one_trial(model: str, sets: list[str], epochs: int, out: Path) -> dict:
    """The trial's own seconds and the whole api.tune call's seconds of a 1-trial study."""
    from mmerkit import api

    before, start = load(), time.perf_counter()
    res = api.tune(model, None, trials=1, epochs=epochs, out=out, overrides=sets, space=SAME_COST, pruner="none",
                   quiet=True)
    return {"trial_s": float(res.trials[0]["duration_s"]), "call_s": round(time.perf_counter() - start, 2),
            "glue_s": glue_seconds(out)[0], "threads": threads_used(out / "trials"),
            "load_before": before, "load_after": load()}


def study_throughput(model: str, sets: list[str], epochs: int, trials: int, workers: int, out: Path) -> dict:
    from mmerkit import api

    before, start = load(), time.perf_counter()
    res = api.tune(model, None, trials=trials, epochs=epochs, out=out, overrides=sets, space=SAME_COST,
                   workers=workers, pruner="none", quiet=True)
    seconds = time.perf_counter() - start
    done = sum(t["state"] in ("complete", "pruned") for t in res.trials)
    return {"workers": workers, "trials": done, "seconds": round(seconds, 1),
            "trials_per_minute": round(60 * done / seconds, 3),
            "trial_s": [t["duration_s"] for t in res.trials], "glue_s": glue_seconds(out),
            "threads": threads_used(out / "trials"),
            "load_before": before, "load_after": load()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="late_fusion")
    p.add_argument("--set", action="append", default=None,
                   help="override (default: hidden 64, FFN 128, 1200 embedded samples, no progress bar)")
    p.add_argument("--epochs", type=int, default=5, help="epochs of every run (5: about 30-60 s each on 2 cores)")
    p.add_argument("--repeats", type=int, default=3, help="plain run / 1-trial study pairs")
    p.add_argument("--trials", type=int, default=4, help="trials of the throughput studies")
    p.add_argument("--study-repeats", type=int, default=None, help="1- / 2-worker study pairs (default: --repeats)")
    p.add_argument("--out", type=Path, default=Path("runs/tune_cost"))
    args = p.parse_args()
    sets = args.set or ["model.hidden_size=64", "model.intermediate_size=128", "data.synthetic.samples=1200",
                        "train.progress=false"]
    import torch

    from mmerkit.tune import threads_per_worker, usable_cores

    torch.set_num_threads(threads_per_worker(1))  # the plain runs: what a 1-worker trial gets
    shutil.rmtree(args.out, ignore_errors=True)
    load_start = load()
    # embedded store, imports of the engine, Optuna, SQLAlchemy, matplotlib: not timed
    plain_train(args.model, sets, 1, args.out / "warm")
    one_trial(args.model, sets, 1, args.out / "warm_study")
    runs, engine, trials = [], [], []
    for i in range(args.repeats):  # alternated, so a change in the machine's load hits all three
        runs.append(plain_train(args.model, sets, args.epochs, args.out / f"train{i}"))
        engine.append(engine_only(args.model, sets, args.epochs, args.out / f"engine{i}"))
        trials.append(one_trial(args.model, sets, args.epochs, args.out / f"study{i}"))
    train_s, engine_s, trial_s, call_s = ([r["seconds"] for r in runs], [r["seconds"] for r in engine],
                                          [t["trial_s"] for t in trials], [t["call_s"] for t in trials])
    train_m, engine_m, trial_m, call_m = (statistics.median(x) for x in (train_s, engine_s, trial_s, call_s))
    overhead = {"train_s": train_s, "engine_no_test_s": engine_s, "trial_s": trial_s, "tune_call_s": call_s,
                "runs": runs, "engine_runs": engine, "trials": trials,
                "trial_overhead_pct": round(100 * (trial_m / train_m - 1), 1),
                "tune_call_overhead_pct": round(100 * (call_m / train_m - 1), 1),
                "trial_over_engine_pct": round(100 * (trial_m / engine_m - 1), 1),
                "glue_pct_of_trial": round(100 * statistics.median(t["glue_s"] / t["trial_s"] for t in trials), 2)}
    # 1 and 2 workers alternated, so a change in the machine's load hits both
    studies = [study_throughput(args.model, sets, args.epochs, args.trials, k, args.out / f"workers{k}_{i}")
               for i in range(args.study_repeats or args.repeats) for k in (1, 2)]
    throughput = [{"workers": k, "trials": args.trials,
                   "seconds": statistics.median(r["seconds"] for r in studies if r["workers"] == k),
                   "trials_per_minute": statistics.median(r["trials_per_minute"] for r in studies if r["workers"] == k)}
                  for k in (1, 2)]
    result = {"model": args.model, "overrides": sets, "epochs": args.epochs, "repeats": args.repeats,
              "cpu_count": os.cpu_count(), "usable_cores": usable_cores(),
              "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
              "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "nice": os.nice(0),
              "load_start": load_start, "load_end": load(),
              "overhead": overhead, "studies": studies, "throughput": throughput,
              "speedup_2_workers": round(throughput[1]["trials_per_minute"] / throughput[0]["trials_per_minute"], 2)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "tune_cost.json").write_text(json.dumps(result, indent=2))
    print("| measure | value |\n|---|---|")
    print(f"| `mmer train` (median of {args.repeats}) | {train_m:.1f} s |")
    print(f"| the same engine run without test split and export (median) | {engine_m:.1f} s |")
    print(f"| one trial (median) | {trial_m:.1f} s ({overhead['trial_overhead_pct']:+.1f}% over `mmer train`, "
          f"{overhead['trial_over_engine_pct']:+.1f}% over the engine run) |")
    print(f"| Optuna and glue inside the trial (its duration minus the engine's, median) | "
          f"{overhead['glue_pct_of_trial']:.2f}% |")
    print(f"| whole `api.tune` call, 1 trial (median) | {call_m:.1f} s ({overhead['tune_call_overhead_pct']:+.1f}%) |")
    for row in throughput:
        print(f"| {row['workers']} worker(s), {row['trials']} trials (median) | {row['seconds']:.0f} s, "
              f"{row['trials_per_minute']:.2f} trials/min |")
    print(f"| 2 workers vs 1 | x{result['speedup_2_workers']:.2f} |")


if __name__ == "__main__":
    main()
