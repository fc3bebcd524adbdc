"""Multi-seed and multi-run tables: mean ± std of test metrics, as markdown, CSV or LaTeX.

A *run directory* is what `mmer train` writes (config.yaml, test_metrics.json, metrics.csv);
an *experiment directory* is any directory with run directories somewhere below it. `report`
groups the finished runs by model, dataset and configuration (everything but the seed and
the device settings), so three seeds of one configuration make one row. When one model on
one dataset was run with several configurations (e.g. CARAT and its ablations), each row gets a
`variant` naming the settings where it differs from the most common configuration (a setting
without a majority value is named in every row).

The std is the sample std (ddof=1), 0 for a single seed, as `aggregate.json` of `mmer train`;
the tables show a single seed's value without "± std" (and an empty std cell in CSV).

Example:
    >>> from mmerkit.report import report, format_table
    >>> rows = report(["runs/exp"])                          # doctest: +SKIP
    >>> print(format_table(rows, "md"))                      # doctest: +SKIP
    | model | dataset | micro_f1 | ...
"""

from __future__ import annotations

import csv
import io
import re
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mmerkit.errors import MMERError
from mmerkit.run import Run, find_runs, read_history

__all__ = ["ABLATION_METRICS", "REPORT_METRICS", "ablation_rows", "config_fingerprint", "find_runs",
           "format_ablation", "format_table", "read_history", "read_run", "report"]

# Column order of the report (the paper's main metrics first); per-label F1 follows.
REPORT_METRICS = ("micro_f1", "accuracy", "macro_f1", "hamming_loss", "micro_precision", "micro_recall")
# The paper's Table 3 columns.
ABLATION_METRICS = ("micro_f1", "accuracy", "macro_f1", "hamming_loss")
LOWER_IS_BETTER = {"hamming_loss"}

# Config keys that do not change what a run learns: runs differing only here are one group.
_IGNORED_KEYS = {"train.seed", "train.progress", "train.devices", "train.accelerator", "train.num_nodes",
                 "train.strategy", "train.checkpoint_every_n_steps", "train.logger", "train.eval_batch_size",
                 "data.num_workers", "data.path"}

_PRETTY = {"micro_f1": "micro-F1", "accuracy": "Acc", "macro_f1": "macro-F1", "hamming_loss": "HL",
           "micro_precision": "micro-P", "micro_recall": "micro-R", "best_epoch": "best epoch",
           "seeds": "seeds"}


# ----------------------------------------------------------------------------- reading runs


def read_run(run_dir: str | Path) -> dict[str, Any] | None:
    """model, dataset, seed, config, test metrics and best epoch of one run; None if unfinished."""
    run = Run(run_dir)
    test = run.read_test_metrics()
    if test is None:
        return None
    cfg = run.read_config_dict()
    model = str(cfg.get("model", {}).get("name", "?"))
    best = test.get("best_epoch")
    if best is None:
        best = _best_epoch_from_csv(run.metrics_csv, cfg.get("train", {}).get("select_metric", "micro_f1"))
    return {"run_dir": str(run.path), "model": model, "dataset": run.dataset,
            "seed": test.get("seed", cfg.get("train", {}).get("seed")), "config": cfg,
            "metrics": {k: float(v) for k, v in test.items() if isinstance(v, (int, float))},
            "best_epoch": best, "epochs": _epochs_in_csv(run.metrics_csv), "warnings": run.read_warnings()}


def _best_epoch_from_csv(path: Path, metric: str) -> float | None:
    valid = [r for r in read_history(path) if r.get("split") == "valid" and r.get(metric) is not None]
    if not valid:
        return None
    pick = min if metric in LOWER_IS_BETTER else max
    # ties go to the later epoch, as in the engine
    return pick(reversed(valid), key=lambda r: r[metric])["epoch"]


def _epochs_in_csv(path: Path) -> int | None:
    epochs = [r["epoch"] for r in read_history(path) if r.get("epoch") is not None]
    return int(max(epochs)) if epochs else None


# ----------------------------------------------------------------------------- grouping


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v if not isinstance(v, list) else tuple(v)
    return out


def config_fingerprint(cfg: dict) -> tuple:
    """What a run learns from its config: every setting but the seed and the device settings."""
    flat = _flatten(cfg)
    return tuple(sorted((k, repr(v)) for k, v in flat.items() if k not in _IGNORED_KEYS))


def _mean_std(values: Sequence[float]) -> dict[str, Any]:
    a = np.asarray(values, dtype=float)
    return {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if len(a) > 1 else 0.0,
            "values": [float(x) for x in a]}


def report(paths: Iterable[str | Path] | str | Path) -> list[dict[str, Any]]:
    """One row per (model, dataset, configuration) over the finished runs under `paths`.

    Each row: model, dataset, variant ("" unless the same model/dataset has several
    configurations), seeds (count), seed_list, runs (paths), best_epoch (mean), labels, and
    metrics: {name: {"mean", "std", "values"}} for the report metrics and "f1/<label>".

    Example:
        >>> rows = report(["runs/exp"])                                    # doctest: +SKIP
        >>> rows[0]["model"], rows[0]["metrics"]["micro_f1"]["mean"]       # doctest: +SKIP
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    runs, unfinished = [], []
    for d in find_runs(paths):
        info = read_run(d)
        (runs if info is not None else unfinished).append(info or d)
    if unfinished:
        warnings.warn(f"skipped {len(unfinished)} unfinished run(s) without test_metrics.json: "
                      f"{', '.join(str(p) for p in unfinished)}", stacklevel=2)
    if not runs:
        raise MMERError("no finished runs (with test_metrics.json) under " + ", ".join(map(str, paths)))
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        groups.setdefault((r["model"], r["dataset"], config_fingerprint(r["config"])), []).append(r)
    variants = _variant_names(groups)
    rows = [_row(key, members, variants[key]) for key, members in groups.items()]
    for r in runs:  # a degenerate run is said again wherever its numbers are shown
        for note in r["warnings"]:
            warnings.warn(f"{r['run_dir']}: {note}", stacklevel=2)
    return sorted(rows, key=lambda r: (r["dataset"], r["model"], r["variant"]))


def _row(key: tuple, members: list[dict], variant: str) -> dict[str, Any]:
    model, dataset, _ = key
    members = sorted(members, key=lambda r: (r["seed"] is None, r["seed"]))
    labels = [k.split("/", 1)[1] for k in members[0]["metrics"] if k.startswith("f1/")]
    names = [*REPORT_METRICS, *(f"f1/{lab}" for lab in labels)]
    metrics = {n: _mean_std([r["metrics"][n] for r in members]) for n in names
               if all(n in r["metrics"] for r in members)}
    best = [r["best_epoch"] for r in members if r["best_epoch"] is not None]
    return {"model": model, "dataset": dataset, "variant": variant, "seeds": len(members),
            "seed_list": [r["seed"] for r in members], "runs": [r["run_dir"] for r in members],
            "best_epoch": float(np.mean(best)) if best else None, "labels": labels, "metrics": metrics,
            "warnings": [f"{r['run_dir']}: {note}" for r in members for note in r.get("warnings", [])]}


def _variant_names(groups: dict[tuple, list[dict]]) -> dict[tuple, str]:
    """Name each configuration by the settings where it differs from the most common one."""
    names = {key: "" for key in groups}
    by_md: dict[tuple, list[tuple]] = {}
    for key in groups:
        by_md.setdefault(key[:2], []).append(key)
    for keys in by_md.values():
        if len(keys) < 2:
            continue
        flats = {k: dict(k[2]) for k in keys}
        all_keys = sorted({name for f in flats.values() for name in f})
        reference = {}
        for name in all_keys:
            values = [flats[k].get(name) for k in keys]
            counts = sorted((values.count(v) for v in set(values)), reverse=True)
            # only a strict majority is a reference; without one every row shows its own value
            if len(counts) == 1 or counts[0] > counts[1]:
                reference[name] = max(values, key=values.count)
        for k in keys:
            diffs = [f"{_short(n)}={_plain(flats[k].get(n))}" for n in all_keys
                     if n not in reference or flats[k].get(n) != reference[n]]
            names[k] = ", ".join(diffs) or "base"
    return names


def _short(key: str) -> str:
    return key[len("model."):] if key.startswith("model.") else key


def _plain(r: str | None) -> str:
    return "-" if r is None else r.strip("'")


# ----------------------------------------------------------------------------- formatting


def _fmt(ms: dict[str, Any] | None, digits: int, pm: str) -> str:
    if ms is None:
        return "-"
    if len(ms.get("values", ())) == 1:  # one seed has no spread: "± 0.0000" would claim one
        return f"{ms['mean']:.{digits}f}"
    return f"{ms['mean']:.{digits}f}{pm}{ms['std']:.{digits}f}"


def _columns(rows: list[dict], metrics: Sequence[str] | None = None) -> list[str]:
    labels: list[str] = []
    for r in rows:
        labels += [lab for lab in r["labels"] if lab not in labels]
    every = [*REPORT_METRICS, *(f"f1/{lab}" for lab in labels)]
    if metrics is None:
        return every
    unknown = [m for m in metrics if m not in every]
    if unknown:
        raise MMERError(f"unknown report metric(s) {', '.join(unknown)}; choose from {', '.join(every)}")
    return list(metrics)


def _best_per_column(rows: list[dict], cols: Sequence[str]) -> set[tuple[int, str]]:
    """(row, column) cells holding the best mean of their column among rows of the same dataset."""
    best: set[tuple[int, str]] = set()
    for dataset in {r["dataset"] for r in rows}:
        members = [i for i, r in enumerate(rows) if r["dataset"] == dataset]
        for c in cols:
            scored = {i: rows[i]["metrics"][c]["mean"] for i in members if c in rows[i]["metrics"]}
            if len(scored) > 1:
                top = (min if c in LOWER_IS_BETTER else max)(scored.values())
                best |= {(i, c) for i, v in scored.items() if v == top}
    return best


def format_table(rows: list[dict[str, Any]], fmt: str = "md", digits: int = 4,
                 metrics: Sequence[str] | None = None) -> str:
    """The report as a markdown table ("md"), CSV with separate mean/std columns ("csv") or a
    LaTeX tabular ("latex"). The best mean of each column is bold in md and latex. `metrics`
    picks the metric columns (keys as in test_metrics.json, per-label F1 as "f1/<label>");
    default: every metric and every label's F1.

    Example:
        >>> print(format_table(report("runs/exp"), "latex"))               # doctest: +SKIP
    """
    if fmt not in ("md", "csv", "latex"):
        raise MMERError(f"unknown report format {fmt!r}; use md, csv or latex")
    cols = _columns(rows, metrics)
    show_variant = any(r["variant"] for r in rows)
    head = ["model", "dataset", *(["variant"] if show_variant else [])]
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow([*head, *(f"{c}_{s}" for c in cols for s in ("mean", "std")), "best_epoch", "seeds"])
        for r in rows:
            vals = []
            for c in cols:
                ms = r["metrics"].get(c)
                one = ms is not None and len(ms.get("values", ())) == 1
                vals += [f"{ms['mean']:.6g}", "" if one else f"{ms['std']:.6g}"] if ms else ["", ""]
            best = "" if r["best_epoch"] is None else f"{r['best_epoch']:.6g}"
            w.writerow([*(r[h] for h in head), *vals, best, r["seeds"]])
        return buf.getvalue()
    best = _best_per_column(rows, cols)
    pm = " ± " if fmt == "md" else r" $\pm$ "
    header = [*head, *(_PRETTY.get(c, c.replace("f1/", "F1 ")) for c in cols), "best epoch", "seeds"]
    body = []
    for i, r in enumerate(rows):
        cells = [str(r[h]) for h in head]
        for c in cols:
            cell = _fmt(r["metrics"].get(c), digits, pm)
            if (i, c) in best:
                cell = f"**{cell}**" if fmt == "md" else rf"\textbf{{{cell}}}"
            cells.append(cell)
        cells += ["-" if r["best_epoch"] is None else f"{r['best_epoch']:.1f}", str(r["seeds"])]
        body.append(cells)
    return _markdown(header, body, len(head)) if fmt == "md" else _latex(header, body, n_left=len(head))


def _markdown(header: list[str], body: list[list[str]], n_left: int) -> str:
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---" if i < n_left else "---:" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return "\n".join(lines) + "\n"


def _latex_escape(s: str) -> str:
    if r"\textbf" in s or r"$\pm$" in s:
        return s  # already LaTeX (numbers only)
    return re.sub(r"([_%&#$])", r"\\\1", s)


def _latex(header: list[str], body: list[list[str]], n_left: int) -> str:
    spec = "l" * n_left + "r" * (len(header) - n_left)
    lines = [rf"\begin{{tabular}}{{{spec}}}", r"\toprule",
             " & ".join(_latex_escape(h) for h in header) + r" \\", r"\midrule"]
    lines += [" & ".join(_latex_escape(c) for c in cells) + r" \\" for cells in body]
    lines += [r"\bottomrule", r"\end{tabular}",
              r"% \toprule, \midrule and \bottomrule need \usepackage{booktabs} in the preamble"]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- ablation table


def ablation_rows(variants: dict[str, dict[str, Any]], full: str) -> list[dict[str, Any]]:
    """Table 3 rows from {variant name: report row}: the full model first, then the others in
    the given order, each metric with mean, std and the difference of means from the full model."""
    if full not in variants:
        raise MMERError(f"ablation table: no results for the full model {full!r}")
    base = variants[full]["metrics"]
    rows = []
    for name in [full, *(v for v in variants if v != full)]:
        m = variants[name]["metrics"]
        cells = {}
        for k in ABLATION_METRICS:
            if k in m:
                delta = None if name == full or k not in base else m[k]["mean"] - base[k]["mean"]
                cells[k] = {"mean": m[k]["mean"], "std": m[k]["std"], "delta": delta}
        rows.append({"variant": name, "seeds": variants[name]["seeds"], "metrics": cells})
    return rows


def format_ablation(rows: list[dict[str, Any]], fmt: str = "md", digits: int = 4) -> str:
    """The ablation table: md/latex cells "mean ± std (Δ vs full)", CSV mean/std/delta columns."""
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["variant", *(f"{k}_{s}" for k in ABLATION_METRICS for s in ("mean", "std", "delta")), "seeds"])
        for r in rows:
            vals = []
            for k in ABLATION_METRICS:
                c = r["metrics"].get(k)
                vals += ["", "", ""] if c is None else [
                    f"{c['mean']:.6g}", f"{c['std']:.6g}", "" if c["delta"] is None else f"{c['delta']:.6g}"]
            w.writerow([r["variant"], *vals, r["seeds"]])
        return buf.getvalue()
    if fmt not in ("md", "latex"):
        raise MMERError(f"unknown table format {fmt!r}; use md, csv or latex")
    pm = " ± " if fmt == "md" else r" $\pm$ "
    header = ["variant", *(_PRETTY[k] + (" ↓" if k in LOWER_IS_BETTER and fmt == "md" else "")
                           for k in ABLATION_METRICS), "seeds"]
    body = []
    for r in rows:
        cells = [r["variant"]]
        for k in ABLATION_METRICS:
            c = r["metrics"].get(k)
            cell = _fmt(c, digits, pm)
            if c is not None and c["delta"] is not None:
                cell += f" ({c['delta']:+.{digits}f})"
            cells.append(cell)
        body.append([*cells, str(r["seeds"])])
    return _markdown(header, body, 1) if fmt == "md" else _latex(header, body, n_left=1)
