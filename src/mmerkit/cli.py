"""`mmer`: the command line. Parses arguments and calls `mmerkit.api` (no logic here)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import typer
import yaml
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from mmerkit import api
from mmerkit.errors import ConfigError, MMERError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Multi-modal multi-label emotion recognition: train, evaluate and predict.")
data_app = typer.Typer(no_args_is_help=True, help="Make, import and look at FeatureStores.")
app.add_typer(data_app, name="data")
console = Console()


def _table(rows: list[dict], title: str) -> Table:
    table = Table(title=title)
    for key in rows[0] if rows else []:
        table.add_column(key)
    for row in rows:
        table.add_row(*(str(v) for v in row.values()))
    return table


def _metrics_table(metrics: dict, title: str) -> Table:
    from mmerkit.metrics import MAIN_METRICS

    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k in MAIN_METRICS:
        if k in metrics:
            table.add_row(k, f"{metrics[k]:.4f}")
    return table


@app.command()
def models() -> None:
    """Table of registered models."""
    console.print(_table(api.models_table(), "models"))


@app.command()
def datasets() -> None:
    """Table of datasets mmerkit can make or convert."""
    console.print(_table(api.datasets_table(), "datasets"))


@data_app.command("synth")
def data_synth(out: Path = typer.Option(..., "--out", help="store directory to create"),
               samples: int | None = typer.Option(None, help="total samples (default 3000)"),
               seed: int | None = typer.Option(None, help="generator seed"),
               missing_rate: float | None = typer.Option(None, help="rate of samples missing one modality"),
               label_noise: float | None = typer.Option(None, help="label flip rate in train"),
               overwrite: bool = typer.Option(False, help="replace an existing store")) -> None:
    """Write the embedded synthetic MOSEI-shaped dataset."""
    extra = {k: v for k, v in {"missing_rate": missing_rate, "label_noise": label_noise}.items() if v is not None}
    store = api.data_synth(out, samples=samples, seed=seed, overwrite=overwrite, **extra)
    console.print(f"wrote {store}")


@data_app.command("convert", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def data_convert(ctx: typer.Context,
                 path: Path = typer.Argument(..., help="input file or directory"),
                 source: str = typer.Option(..., "--from", help="input format, see `mmer datasets`"),
                 out: Path = typer.Option(..., "--out", help="store directory to create"),
                 labels_from: Path | None = typer.Option(
                     None, help="labels source: the aligned .pt (mosei-unaligned) or the labels .csd (csd)"),
                 nan_policy: str = typer.Option("reject", help="reject | zero: what to do with NaN/inf"),
                 overwrite: bool = typer.Option(False, help="replace an existing store")) -> None:
    """Convert a published corpus file, or your own features, into a FeatureStore.

    Any further `--key value` is an option of that converter (docs/datasets.md lists them), e.g.
    `--folds CMU_MOSEI_Labels.csv`, `--label-set fine_grained`, `--max-len 60`, `--swap-visual-audio`.
    """
    options = converter_options(ctx.args)
    with console.status(f"converting {path} ({source})"):
        store = api.data_convert(source, path, out, labels_from=labels_from, nan_policy=nan_policy,
                                 overwrite=overwrite, **options)
    console.print(f"wrote {store}")


def converter_options(args: list[str]) -> dict[str, Any]:
    """`--max-len 60 --label-names a,b --swap-visual-audio` -> {max_len: 60, label_names: [a, b],
    swap_visual_audio: True}. Values are YAML scalars; a comma makes a list; a bare flag is True."""
    options: dict[str, Any] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or arg == "--":
            raise ConfigError(f"unexpected argument {arg!r}: converter options look like --key value")
        key, _, raw = arg[2:].partition("=")
        if not raw and (i + 1 == len(args) or args[i + 1].startswith("--")):
            options[key.replace("-", "_")] = True  # a bare flag
            i += 1
            continue
        if not raw:
            raw, i = args[i + 1], i + 1
        options[key.replace("-", "_")] = [_scalar(v) for v in raw.split(",")] if "," in raw else _scalar(raw)
        i += 1
    return options


def _scalar(raw: str) -> Any:
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


@data_app.command("inspect")
def data_inspect(store: Path = typer.Argument(..., help="store directory"),
                 as_json: bool = typer.Option(False, "--json", help="print JSON instead of tables")) -> None:
    """Sizes, lengths, label statistics and missing modalities of a store."""
    report = api.data_inspect(store)
    if as_json:
        print(json.dumps(report, indent=2))
        return
    console.print(f"[bold]{report['name']}[/] {report['path']}  labels {report['labels']}  "
                  f"modalities {report['modalities']}  aligned {report['aligned']}")
    rows = []
    for split, info in report["splits"].items():
        row = {"split": split, "samples": info["samples"], "labels/sample": f"{info['labels_per_sample']:.2f}",
               "empty": info["empty_label_sets"]}
        for m, mi in info["modalities"].items():
            row[f"{m} len"] = f"{mi['len_min']}-{mi['len_max']} ({mi['len_mean']:.1f})"
            row[f"{m} missing"] = f"{mi['missing_rate']:.1%}"
        rows.append(row)
    console.print(_table(rows, "splits"))
    freq = [{"label": lab, **{s: f"{info['label_frequency'][lab]:.3f}" for s, info in report["splits"].items()}}
            for lab in report["labels"]]
    console.print(_table(freq, "label frequency"))


@app.command()
def train(model: str | None = typer.Option(None, "-m", "--model", help="model name, see `mmer models`"),
          data: Path | None = typer.Option(None, "-d", "--data", help="store (default: embedded data)"),
          out: Path = typer.Option(Path("runs"), "--out", help="directory for run directories"),
          epochs: int | None = typer.Option(None, help="training epochs"),
          seeds: list[int] | None = typer.Option(None, "--seeds", help="one run per seed"),
          config: str | None = typer.Option(None, "--config", help="YAML file or packaged preset"),
          set_: list[str] | None = typer.Option(None, "--set", help="override, e.g. optim.lr=1e-4"),
          devices: str | None = typer.Option(None, help="devices per node (int or 'auto')"),
          accelerator: str | None = typer.Option(None, help="cpu | gpu | auto"),
          num_nodes: int | None = typer.Option(None, "--num-nodes"),
          strategy: str | None = typer.Option(None, help="auto | ddp | fsdp"),
          precision: str | None = typer.Option(None, help="32-true | bf16-mixed | 16-mixed"),
          deterministic: bool = typer.Option(False, "--deterministic", help="deterministic algorithms"),
          threshold: str | None = typer.Option(None, help="default | search | per-label | a number"),
          resume: bool = typer.Option(False, "--resume", help="continue the latest unfinished run in --out")) -> None:
    """Train a model; each seed gets its own run directory under --out."""
    results = api.train(model, data, out=out, epochs=epochs, seeds=seeds, config=config, overrides=set_ or [],
                        resume=resume, devices=devices, accelerator=accelerator, num_nodes=num_nodes,
                        strategy=strategy, precision=precision, deterministic=deterministic or None,
                        threshold=threshold)
    from lightning_fabric.utilities.rank_zero import rank_zero_only

    if getattr(rank_zero_only, "rank", 0) == 0:
        for r in results:
            console.print(f"run: {r.run_dir}")


@app.command("eval")
def evaluate(run: Path = typer.Argument(..., help="run directory"),
             data: Path | None = typer.Option(None, "-d", "--data", help="store (default: the run's)"),
             split: str = typer.Option("test", help="split to evaluate"),
             threshold: str | None = typer.Option(None, help="saved (default) | search | per-label | a number"),
             drop_modality: str | None = typer.Option(None, "--drop-modality", help="remove a modality"),
             save_threshold: bool = typer.Option(False, "--save-threshold",
                                                 help="store the threshold in RUN/export for predict")) -> None:
    """Evaluate a trained run on a split."""
    thr = threshold
    if threshold is not None and threshold not in ("search", "per-label", "default"):
        try:
            thr = float(threshold)
        except ValueError:
            raise ConfigError(f"--threshold {threshold!r}: expected search, per-label, default or a "
                              "number such as 0.25") from None
    metrics = api.evaluate(run, data, split=split, threshold=thr, drop_modality=drop_modality,
                           save_threshold=save_threshold)
    console.print(_metrics_table(metrics, f"{run} [{split}]"))
    print(json.dumps(metrics))


@app.command()
def predict(export: Path = typer.Argument(..., help="export directory (RUN/export)"),
            inputs: Path = typer.Option(..., "--inputs", help="store with the inputs"),
            split: str = typer.Option("test", help="split of the store"),
            out: Path = typer.Option(Path("preds.csv"), "--out", help=".csv or .jsonl")) -> None:
    """Predict label sets with an exported model."""
    preds = api.predict(export, inputs, split=split, out=out)
    console.print(f"wrote {len(preds.ids)} predictions to {out}")


@app.command()
def report(paths: list[Path] = typer.Argument(..., help="run directories or experiment directories"),
           fmt: str = typer.Option("md", "--format", help="md | csv | latex"),
           out: Path | None = typer.Option(None, "--out", help="also write the table to this file"),
           metrics: str | None = typer.Option(
               None, "--metrics", help="comma-separated columns, e.g. micro_f1,accuracy,macro_f1,"
               "hamming_loss (default: every metric and per-label F1)"),
           digits: int = typer.Option(4, "--digits", help="decimals")) -> None:
    """Mean ± std over seeds of the test metrics, one row per model, dataset and configuration."""
    from mmerkit.report import format_table

    chosen = [m.strip() for m in metrics.split(",") if m.strip()] if metrics else None
    rows = api.report(paths, fmt=fmt, out=out, metrics=chosen, digits=digits)
    print(format_table(rows, fmt, digits, chosen), end="")
    if out is not None:
        console.print(f"wrote {out}", highlight=False)


@app.command()
def ablate(model: str = typer.Option("carat", "-m", "--model", help="model with ablations (carat)"),
           data: Path | None = typer.Option(None, "-d", "--data", help="store (default: embedded data)"),
           out: Path = typer.Option(Path("ablation"), "--out", help="experiment directory"),
           seeds: list[int] | None = typer.Option(None, "--seeds", help="one run per seed and variant"),
           config: str | None = typer.Option(None, "--config", help="YAML file or packaged preset"),
           set_: list[str] | None = typer.Option(None, "--set", help="override, e.g. optim.lr=1e-4"),
           epochs: int | None = typer.Option(None, help="training epochs"),
           only: list[str] | None = typer.Option(None, "--only", help="ablations to run (default: all)"),
           devices: str | None = typer.Option(None, help="devices per node (int or 'auto')"),
           accelerator: str | None = typer.Option(None, help="cpu | gpu | auto"),
           precision: str | None = typer.Option(None, help="32-true | bf16-mixed | 16-mixed"),
           threshold: str | None = typer.Option(None, help="default | search | per-label | a number")) -> None:
    """Train the full model and each ablation (paper Table 3); writes OUT/ablation.md and .csv."""
    from mmerkit.report import format_ablation

    rows = api.ablate(model, data, out=out, seeds=seeds, config=config, overrides=set_ or [], epochs=epochs,
                      only=only, devices=devices, accelerator=accelerator, precision=precision,
                      threshold=threshold)
    if rows:
        print(format_ablation(rows, "md"), end="")
        console.print(f"wrote {out / 'ablation.md'} and {out / 'ablation.csv'}", highlight=False)


@app.command()
def plot(kind: str = typer.Argument(..., help="tsne | heatmap | curves | labels"),
         run: Path = typer.Argument(..., help="run directory"),
         out: Path | None = typer.Option(None, "--out", help=".png | .pdf | .svg (default RUN/plots/KIND.png)"),
         data: Path | None = typer.Option(None, "-d", "--data", help="store (default: the run's)"),
         split: str = typer.Option("test", help="split to plot (tsne, heatmap, labels)"),
         max_samples: int | None = typer.Option(None, "--max-samples", help="cap on samples (tsne: 300)"),
         feature: str | None = typer.Option(None, help="tsne: ModelOutput.features entry"),
         label: str | None = typer.Option(None, help="tsne: only this label's points / its polarity"),
         sample: str | None = typer.Option(None, help="heatmap: the per-sample view of this sample id")) -> None:
    """Figures of a run: t-SNE of latents, modality-to-label heatmap, training curves, per-label F1."""
    options: dict[str, Any] = {}
    if max_samples is not None:
        options["max_samples"] = max_samples
    if kind == "tsne":
        options.update({k: v for k, v in {"feature": feature, "label": label}.items() if v is not None})
    if kind == "heatmap" and sample is not None:
        options["sample"] = sample
    out = out or run / "plots" / f"{kind}.png"
    api.plot(kind, run, out=out, data=data, split=split, **options)
    console.print(f"wrote {out}", highlight=False)


@app.command()
def demo(out: Path = typer.Option(Path("runs/demo"), "--out")) -> None:
    """Train the flagship model on the embedded data and print the test metrics."""
    metrics = api.demo(out)
    console.print(_metrics_table(metrics, "demo: test metrics"))


def expand_multi_value(argv: list[str], options=("--seeds", "--only")) -> list[str]:
    """`--seeds 1 2 3` -> `--seeds 1 --seeds 2 --seeds 3` (click options take one value each)."""
    out, current = [], None
    for arg in argv:
        if arg in options:
            current = arg
            continue
        if current is not None and not arg.startswith("-"):
            out += [current, arg]
            continue
        current = None
        out.append(arg)
    return out


def main(argv: list[str] | None = None) -> None:
    try:
        app(expand_multi_value(list(sys.argv[1:] if argv is None else argv)), prog_name="mmer")
    except MMERError as e:
        # soft_wrap: one line per message however narrow the terminal; escape: paths may hold [ ]
        Console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/] {escape(str(e))}")
        sys.exit(2)


if __name__ == "__main__":
    main()
