"""What `mmer tune` costs over plain training, and what a second worker buys.

1. Overhead of one trial over `mmer train` of the same configuration: a study of one trial
   (the packaged recipe, enqueued) against `api.train` with the same config, epochs and seed,
   alternated `--repeats` times; the medians of (a) the trial's own duration (Optuna's start to
   end: the training run, validation reports to the pruner, trial.json) and (b) the whole
   `api.tune` call (study creation in SQLite, the trial, trials.csv, best.yaml, the plots), each
   against the `api.train` wall time. A trial reads no test split and writes no export, which
   a plain run does: (a) can come out below 0%.
2. Throughput: the same study of `--trials` trials with 1 worker (this process, every core)
   and with 2 workers (each half the cores), alternated `--repeats` times; median trials per minute.

    python benchmarks/tune_cost.py --out runs/tune_cost                 # defaults below
    python benchmarks/tune_cost.py --model late_fusion --epochs 2 --trials 6 --repeats 3

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


def plain_train(model: str, sets: list[str], epochs: int, out: Path) -> float:
    from mmerkit import api

    start = time.perf_counter()
    api.train(model, None, out=out, epochs=epochs, seeds=[1], overrides=sets)
    return time.perf_counter() - start


def one_trial(model: str, sets: list[str], epochs: int, out: Path) -> tuple[float, float]:
    """(the trial's own seconds, the whole api.tune call's seconds) of a 1-trial study."""
    from mmerkit import api

    start = time.perf_counter()
    res = api.tune(model, None, trials=1, epochs=epochs, out=out, overrides=sets, space=SAME_COST, pruner="none",
                   quiet=True)
    return float(res.trials[0]["duration_s"]), time.perf_counter() - start


def study_throughput(model: str, sets: list[str], epochs: int, trials: int, workers: int, out: Path) -> dict:
    from mmerkit import api

    start = time.perf_counter()
    res = api.tune(model, None, trials=trials, epochs=epochs, out=out, overrides=sets, space=SAME_COST,
                   workers=workers, pruner="none", quiet=True)
    seconds = time.perf_counter() - start
    done = sum(t["state"] in ("complete", "pruned") for t in res.trials)
    return {"workers": workers, "trials": done, "seconds": round(seconds, 1),
            "trials_per_minute": round(60 * done / seconds, 3)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="late_fusion")
    p.add_argument("--set", action="append", default=None,
                   help="override (default: hidden 64, FFN 128, 1200 embedded samples, no progress bar)")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--trials", type=int, default=6, help="trials of the throughput studies")
    p.add_argument("--out", type=Path, default=Path("runs/tune_cost"))
    args = p.parse_args()
    sets = args.set or ["model.hidden_size=64", "model.intermediate_size=128", "data.synthetic.samples=1200",
                        "train.progress=false"]
    import torch

    torch.set_num_threads(os.cpu_count() or 1)  # one worker uses every core, as a plain run does
    shutil.rmtree(args.out, ignore_errors=True)
    plain_train(args.model, sets, args.epochs, args.out / "warm")  # embedded store, imports: not timed
    train_s, trial_s, call_s = [], [], []
    for i in range(args.repeats):  # alternated, so a change in the machine's load hits both
        train_s.append(plain_train(args.model, sets, args.epochs, args.out / f"train{i}"))
        trial, call = one_trial(args.model, sets, args.epochs, args.out / f"study{i}")
        trial_s.append(trial)
        call_s.append(call)
    train_m, trial_m, call_m = (statistics.median(x) for x in (train_s, trial_s, call_s))
    overhead = {"train_s": train_s, "trial_s": trial_s, "tune_call_s": call_s,
                "trial_overhead_pct": round(100 * (trial_m / train_m - 1), 1),
                "tune_call_overhead_pct": round(100 * (call_m / train_m - 1), 1)}
    # 1 and 2 workers alternated, so a change in the machine's load hits both
    studies = [study_throughput(args.model, sets, args.epochs, args.trials, k, args.out / f"workers{k}_{i}")
               for i in range(args.repeats) for k in (1, 2)]
    throughput = [{"workers": k, "trials": args.trials,
                   "seconds": statistics.median(r["seconds"] for r in studies if r["workers"] == k),
                   "trials_per_minute": statistics.median(r["trials_per_minute"] for r in studies if r["workers"] == k)}
                  for k in (1, 2)]
    result = {"model": args.model, "overrides": sets, "epochs": args.epochs, "repeats": args.repeats,
              "cpu_count": os.cpu_count(), "overhead": overhead, "studies": studies, "throughput": throughput,
              "speedup_2_workers": round(throughput[1]["trials_per_minute"] / throughput[0]["trials_per_minute"], 2)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "tune_cost.json").write_text(json.dumps(result, indent=2))
    print("| measure | value |\n|---|---|")
    print(f"| `mmer train` (median of {args.repeats}) | {train_m:.1f} s |")
    print(f"| one trial (median) | {trial_m:.1f} s ({overhead['trial_overhead_pct']:+.1f}%) |")
    print(f"| whole `api.tune` call, 1 trial (median) | {call_m:.1f} s ({overhead['tune_call_overhead_pct']:+.1f}%) |")
    for row in throughput:
        print(f"| {row['workers']} worker(s), {row['trials']} trials (median) | {row['seconds']:.0f} s, "
              f"{row['trials_per_minute']:.2f} trials/min |")
    print(f"| 2 workers vs 1 | x{result['speedup_2_workers']:.2f} |")


if __name__ == "__main__":
    main()
