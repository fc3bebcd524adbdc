"""`mmer`: the command line. Parses arguments and calls `mmerkit.api` (no logic here)."""

from __future__ import annotations

import atexit
import contextlib
import errno
import gc
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
from mmerkit.api import CommandInterrupted, ConfigError, MMERError, TrainingInterrupted

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Multi-modal multi-label emotion recognition: train, evaluate and predict.")
data_app = typer.Typer(no_args_is_help=True, help="Make, import and look at FeatureStores.")
app.add_typer(data_app, name="data")
# piped or redirected output (no terminal) gets tables as wide as their content: rich would
# otherwise squeeze them into 80 columns and cut cells to "spl…"
console = Console() if sys.stdout.isatty() else Console(width=100_000)


def _table(rows: list[dict], title: str) -> Table:
    table = Table(title=escape(title), min_width=len(title))  # a title wider than the table stays on one line
    for key in rows[0] if rows else []:
        table.add_column(key)
    for row in rows:
        table.add_row(*(str(v) for v in row.values()))
    return table


def _metrics_table(metrics: dict, title: str) -> Table:
    # "[test]" in a title is text, not rich markup; a title wider than the table stays on one line
    table = Table(title=escape(title), min_width=len(title))
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k in api.MAIN_METRICS:
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
               profile: str | None = typer.Option(None, help="generator: embedded (default) or mosei-like "
                                                  "(docs/datasets.md)"),
               overwrite: bool = typer.Option(False, help="replace an existing store")) -> None:
    """Write the embedded synthetic MOSEI-shaped dataset (or another profile of it)."""
    extra = {k: v for k, v in {"missing_rate": missing_rate, "label_noise": label_noise,
                               "profile": profile}.items() if v is not None}
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
        row["NaN/inf"] = sum(mi["nonfinite"] for mi in info["modalities"].values()) + \
            sum(e["nonfinite"] for e in info["extras"].values())
        rows.append(row)
    console.print(_table(rows, "splits"))
    for split, info in report["splits"].items():
        for m, mi in {**info["modalities"], **info["extras"]}.items():
            if mi["nonfinite"]:
                console.print(f"[bold red]{split}/{m}: {mi['nonfinite']} NaN/inf values[/] (training refuses this "
                              "store; convert the data again with --nan-policy zero)", highlight=False)
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
          strategy: str | None = typer.Option(None, help="auto | ddp"),
          precision: str | None = typer.Option(None, help="32-true | bf16-mixed | 16-mixed"),
          deterministic: bool = typer.Option(False, "--deterministic", help="deterministic algorithms"),
          threshold: str | None = typer.Option(None, help="default | search | per-label | a number"),
          resume: bool = typer.Option(False, "--resume", help="continue the latest unfinished run in --out"),
          dry_run: bool = typer.Option(False, "--dry-run", help="check data, config, devices and memory; print "
                                       "the plan; train and write nothing")) -> None:
    """Train a model; each seed gets its own run directory under --out."""
    with _report_interrupts():
        results = api.train(model, data, out=out, epochs=epochs, seeds=seeds, config=config, overrides=set_ or [],
                            resume=resume, devices=devices, accelerator=accelerator, num_nodes=num_nodes,
                            strategy=strategy, precision=precision, deterministic=deterministic or None,
                            threshold=threshold, dry_run=dry_run)
    if dry_run:
        for line in api.format_plan(results):
            console.print(line, highlight=False, soft_wrap=True)
        return
    if api.is_main_process():
        for r in results:
            console.print(f"run: {r.run_dir}")


@app.command()
def tune(model: str | None = typer.Option(None, "-m", "--model", help="model name, see `mmer models`"),
         data: Path | None = typer.Option(None, "-d", "--data", help="store (default: embedded data)"),
         trials: int = typer.Option(20, "--trials", help="trials in the study in total (resuming counts earlier ones)"),
         config: str | None = typer.Option(None, "--config", help="YAML file or packaged preset trials start from"),
         space: Path | None = typer.Option(None, "--space", help="YAML search space merged over the model's default"),
         epochs: int | None = typer.Option(None, help="training epochs of every trial"),
         metric: str = typer.Option("micro_f1", "--metric", help="validation metric to optimise"),
         out: Path = typer.Option(Path("study"), "--out", help="study directory (trials/, best.yaml, trials.csv, plots/)"),
         storage: str | None = typer.Option(None, "--storage", help="postgresql://USER:PASS@HOST:PORT/DB to share "
                                            "the study between machines (default: SQLite in --out)"),
         study_name: str | None = typer.Option(None, "--study-name", help="study name in the storage (default: the model)"),
         workers: int = typer.Option(1, "--workers", help="trial processes on this machine (each its share of the cores)"),
         pruner: str = typer.Option("median", "--pruner", help="median | hyperband | none"),
         timeout: float | None = typer.Option(None, "--timeout", help="start no trial after this many seconds"),
         seed: int = typer.Option(0, "--seed", help="sampler seed"),
         final_seeds: list[int] | None = typer.Option(None, "--final-seeds", help="retrain the best configuration "
                                                      "with these seeds and evaluate the test split once each"),
         set_: list[str] | None = typer.Option(None, "--set", help="fixed override, e.g. train.batch_size=32"),
         heartbeat: int = typer.Option(10, "--heartbeat", help="seconds between a trial's heartbeats; a trial "
                                       "silent for twice that is marked failed"),
         show: Path | None = typer.Option(None, "--show", help="print the trials of a study directory and exit")) -> None:
    """Search hyper-parameters with Optuna: each trial an ordinary training run scored on validation."""
    if show is not None:
        _show_study(api.tune_show(show))
        return
    with _report_interrupts():
        res = api.tune(model, data, trials=trials, config=config, space=space, epochs=epochs, metric=metric,
                       out=out, storage=storage, study_name=study_name, workers=workers, pruner=pruner,
                       timeout=timeout, seed=seed, final_seeds=final_seeds or (), overrides=set_ or [],
                       heartbeat=heartbeat)
    if res.best_trial is None:  # nothing to use: a script must not read this as success
        logs = res.study_dir / "logs"
        where = f"{res.trials_csv} (each trial's state and note)" + (f" and the worker logs in {logs}"
                                                                      if logs.is_dir() else "")
        say("error", f"no trial of study {res.study_name!r} completed: see {where}")
        raise typer.Exit(1)
    console.print(f"best trial {res.best_trial}: validation {metric} {res.best_value:.4f}", highlight=False)
    for key, value in res.best_params.items():
        console.print(f"  {key} = {value}", highlight=False)
    console.print(f"config: {res.best_config}\ntrials: {res.trials_csv}\n"
                  f"plots: {', '.join(str(p) for p in res.plots) or '-'}", highlight=False, soft_wrap=True)
    if res.final_summary:
        _print_final(res.final_summary, len(res.final))


def _show_study(shown: dict) -> None:
    info = shown["study"]
    rows = [{k.removeprefix("params."): _cell(v) for k, v in row.items() if k != "run_dir"} for row in shown["trials"]]
    console.print(_table(rows, f"study {info['study_name']} ({info['model']}, {info['metric']}, "
                               f"{info['epochs']} epochs)"))
    if info.get("best_trial") is not None:
        console.print(f"best trial {info['best_trial']}: {info['metric']} {info['best_value']:.4f}", highlight=False)
    if shown["final"]:
        _print_final(shown["final"]["test"], len(shown["final"]["seeds"]))


def _cell(v: str) -> str:
    try:
        return f"{float(v):.4g}"
    except ValueError:
        return v


def _print_final(summary: dict, seeds: int) -> None:
    cells = "  ".join(f"{k} {v['mean']:.4f} ± {v['std']:.4f}" for k, v in summary.items())
    console.print(f"test, best configuration over {seeds} seeds: {cells}", highlight=False, soft_wrap=True)


@app.command("eval")
def evaluate(run: Path = typer.Argument(..., help="run directory"),
             data: Path | None = typer.Option(None, "-d", "--data", help="store (default: the run's)"),
             split: str = typer.Option("test", help="split to evaluate"),
             threshold: str | None = typer.Option(None, help="saved (default) | search | per-label | a number"),
             drop_modality: str | None = typer.Option(None, "--drop-modality", help="remove a modality"),
             save_threshold: bool = typer.Option(False, "--save-threshold",
                                                 help="store the threshold in RUN/export for predict"),
             as_json: bool = typer.Option(False, "--json", help="print every metric as JSON instead of the table")) -> None:
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
    if as_json:  # every metric (per label too), machine-readable, nothing else on stdout
        print(json.dumps(metrics, indent=2))
        return
    without = f", without {drop_modality}" if drop_modality else ""
    console.print(_metrics_table(metrics, f"{run} [{split}{without}]"))
    if drop_modality:
        console.print(f"the {drop_modality!r} modality was removed from every sample (features zeroed, marked "
                      "missing) before predicting", highlight=False, soft_wrap=True)
    if save_threshold:
        console.print(_saved_threshold_note(run), highlight=False, soft_wrap=True)
    console.print("per-label scores and every other metric: add --json", highlight=False, style="dim")


def _saved_threshold_note(run: Path) -> str:
    """What --save-threshold stored, read back from the export (per label when it is per label)."""
    saved = api.saved_threshold(run)
    thr = saved["threshold"]
    shown = (", ".join(f"{lab} {t:.2f}" for lab, t in zip(saved["labels"], thr)) if isinstance(thr, list)
             else f"{thr:.2f}")
    return f"saved threshold {shown} to {saved['export']}; `mmer predict` and Predictor use it from now on"


@app.command()
def predict(export: Path = typer.Argument(..., help="export directory (RUN/export)"),
            inputs: Path | None = typer.Option(None, "--inputs", help="store with the inputs"),
            split: str = typer.Option("test", help="split of the store"),
            media: list[Path] | None = typer.Option(None, "--media", help="video/audio file (repeatable)"),
            transcript: list[str] | None = typer.Option(
                None, "--transcript", help="what is said in each --media file, in order (else ASR)"),
            manifest: Path | None = typer.Option(None, "--manifest", help="CSV of media (id, media, ...)"),
            out: Path | None = typer.Option(None, "--out", help=".csv or .jsonl (store input: preds.csv)"),
            window: float | None = typer.Option(None, "--window", help="timeline of ONE --media: window seconds"),
            hop: float | None = typer.Option(None, "--hop", help="timeline: seconds between windows (window/2)"),
            plot: Path | None = typer.Option(None, "--plot", help="timeline: draw it (.png/.pdf/.svg)")) -> None:
    """Predict label sets with an exported model, from a store split or from media files;
    with --window, emotions over time in one long recording (a row per window)."""
    if window is not None or hop is not None or plot is not None:
        _predict_timeline(export, media, window, hop, out, plot, bool(inputs or manifest or transcript))
        return
    from_media = bool(media) or manifest is not None
    if not from_media and out is None:
        out = Path("preds.csv")
    # what the seconds of loading are for (stdout: stderr holds only an error line on failure)
    preds = api.predict(export, inputs, split=split, out=out, media=media or None,
                        transcripts=transcript or None, manifest=manifest, progress=from_media,
                        on_loading=lambda what: console.print(f"{what} ...", highlight=False, style="dim"))
    for sid, why in preds.extra.get("not_predicted", {}).items():  # said per clip, instead of an answer
        say("warning", f"{sid} not predicted: {why}")
    if from_media and out is None:  # with --out the file holds the table; print a summary only
        console.print(_table(_media_rows(preds), "predictions"))
    if from_media:
        texts = preds.extra.get("transcripts", {})
        for sid in preds.extra.get("recognised", []):  # what the recogniser heard: a wrong transcript shows
            console.print(f"{sid}: speech recognised as {texts[sid]!r}" if texts.get(sid) else f"{sid}: no speech "
                          "recognised (text missing)", highlight=False)
    if out is not None:
        counts = {lab: int(c) for lab, c in zip(preds.labels, preds.predicted.sum(0))}
        console.print(f"wrote {len(preds.ids)} predictions to {out}; predicted "
                      + ", ".join(f"{lab} {c}" for lab, c in counts.items()), highlight=False)
    if "metrics" in preds.extra:  # the manifest had labels
        console.print(_metrics_table(preds.extra["metrics"], "against the manifest's labels"))


def _predict_timeline(export: Path, media: list[Path] | None, window: float | None, hop: float | None,
                      out: Path | None, plot: Path | None, other_sources: bool) -> None:
    if window is None:
        raise api.ConfigError("--hop and --plot belong to a timeline: give --window SECONDS too")
    if other_sources or not media or len(media) != 1:
        raise api.ConfigError("a timeline (--window) reads exactly one --media file, without --inputs, "
                              "--manifest or --transcript (its words come from speech recognition)")
    tl = api.predict_timeline(export, media[0], window=window, hop=hop, out=out, plot=plot, progress=True,
                              on_loading=lambda what: console.print(f"{what} ...", highlight=False, style="dim"))
    if out is None and plot is None:
        console.print(_table(_timeline_rows(tl), f"{media[0].name}: emotions over time"))
    counts = ", ".join(f"{lab} {int(c)}" for lab, c in zip(tl.labels, tl.predicted.sum(0)))
    missing = {m: sum(m in ms for ms in tl.missing) for m in sorted({m for ms in tl.missing for m in ms})}
    console.print(f"{len(tl.starts)} windows; predicted in: {counts}"
                  + ("; windows without " + ", ".join(f"{m} {c}" for m, c in missing.items()) if missing else ""),
                  highlight=False)
    for what, path in (("timeline", out), ("plot", plot)):
        if path is not None:
            console.print(f"wrote the {what} to {path}", highlight=False)


def _timeline_rows(tl) -> list[dict]:
    return [{"start": _clock(r["start"]), "end": _clock(r["end"]), "emotions": ", ".join(r["labels"]) or
             ("(no input)" if r["modality"] is None else "(none)"),
             "most relevant modality": r["modality"] or "-", "missing": ", ".join(r["missing"]) or "-",
             "said": r["transcript"]} for r in tl.rows(joined=False)]


def _clock(seconds: float) -> str:
    m, s = divmod(seconds, 60)
    return f"{int(m)}:{s:04.1f}"


def _media_rows(preds) -> list[dict]:
    """Per clip: the emotion set, each label's probability, the most relevant modality per emotion."""
    rows = []
    for row in preds.rows(joined=False):
        rows.append({"id": row["id"], "emotions": ", ".join(row["labels"]) or "(none)",
                     "probabilities": " ".join(f"{lab} {preds.probs[len(rows), j]:.2f}"
                                               for j, lab in enumerate(preds.labels)),
                     "most relevant modality": ", ".join(row.get("modalities", [])) or "-"})
    return rows


@app.command()
def extract(manifest: Path = typer.Argument(..., help="media manifest CSV (id, media, labels, ...)"),
            out: Path = typer.Option(..., "--out", help="store directory to create"),
            config: Path | None = typer.Option(None, "--config", help="YAML of ExtractConfig fields"),
            text: str | None = typer.Option(None, help="text extractor (minilm) or none"),
            audio: str | None = typer.Option(None, help="audio extractor (librosa, egemaps) or none"),
            visual: str | None = typer.Option(None, help="visual extractor (mediapipe) or none"),
            fps: float | None = typer.Option(None, help="video frames per second (5)"),
            sample_rate: int | None = typer.Option(None, "--sample-rate", help="audio rate in Hz (16000)"),
            align: str | None = typer.Option(None, help="none (unaligned store) | words"),
            asr: str | None = typer.Option(None, help="auto | on | off: speech recognition"),
            word_timings: Path | None = typer.Option(None, "--word-timings", help="CSV id,word,start,end"),
            level: str | None = typer.Option(None, help="auto | utterance | dialogue"),
            max_len: int | None = typer.Option(None, "--max-len", help="keep at most this many steps"),
            plugin: list[str] | None = typer.Option(None, "--plugin", help="module registering extractors"),
            label_names: str | None = typer.Option(None, "--label-names", help="label set and order: a,b,c"),
            split_seed: int = typer.Option(0, "--split-seed", help="seed of the 70/10/20 split"),
            empty_labels: str = typer.Option("reject", "--empty-labels", help="reject | allow rows without a label"),
            workers: int = typer.Option(1, "--workers", help="extraction processes"),
            shard: str | None = typer.Option(None, "--shard", help="K/N: only this shard, no store"),
            strict: bool = typer.Option(False, "--strict", help="stop at the first failing item"),
            merge: bool = typer.Option(False, "--merge", help="build the store from finished shards"),
            parts: list[Path] | None = typer.Option(None, "--parts", help="STORE.parts of other shards"),
            overwrite: bool = typer.Option(False, help="replace an existing store")) -> None:
    """Extract text, audio and visual features from media into a FeatureStore."""
    # the process ends after this command: skip the exit's garbage collection over everything the
    # extractors loaded (seconds; see mmerkit.extract.pipeline.skip_final_collection)
    atexit.register(gc.freeze)
    try:
        res = api.extract(manifest, out, config=config, text=text, audio=audio, visual=visual, fps=fps,
                          sample_rate=sample_rate, align=align, asr=asr, word_timings=word_timings, level=level,
                          max_len=max_len, plugins=plugin or None, label_names=label_names, split_seed=split_seed,
                          empty_labels=empty_labels, workers=workers, shard=shard, strict=strict,
                          merge=merge, parts=parts or (), overwrite=overwrite, progress=True)
    except KeyboardInterrupt:  # items finished so far are kept in OUT.parts and skipped by a rerun
        raise CommandInterrupted(f"extraction stopped; the items finished so far are kept in "
                                 f"{out.with_name(out.name + '.parts')}") from None
    info = api.extract_summary(res)
    counts = ", ".join(f"{k} {v}" for k, v in info["labels"].items())
    console.print(f"labels: {counts}", highlight=False)
    console.print(f"items: {info['extracted']} extracted, {info['skipped']} already done, "
                  f"{info['failed']} failed", highlight=False)
    if info["failed"]:
        console.print(f"[bold yellow]{info['failed']} item(s) failed[/]; reasons in {info['failures_csv']}",
                      highlight=False)
    console.print(f"wrote {res.store}" if res.store is not None else f"shard done: items in {res.parts}",
                  highlight=False)


@app.command()
def serve(export: Path = typer.Argument(..., help="export directory (RUN/export) or run directory"),
          host: str = typer.Option("127.0.0.1", help="address to bind (default: this machine only)"),
          port: int = typer.Option(8000, help="TCP port"),
          token: str | None = typer.Option(None, help="bearer token for every endpoint but /healthz "
                                           "(or set MMERKIT_SERVE_TOKEN)"),
          max_upload_mb: float | None = typer.Option(None, "--max-upload-mb", help="request size limit (50)"),
          max_media_seconds: float | None = typer.Option(None, "--max-media-seconds", help="clip length limit (120)"),
          max_timeline_seconds: float | None = typer.Option(
              None, "--max-timeline-seconds", help="recording length limit of /v1/timeline (3600)"),
          max_batch: int | None = typer.Option(None, "--max-batch", help="samples per model call (32)"),
          batch_window_ms: float | None = typer.Option(None, "--batch-window-ms", help="batching window (5)"),
          max_queue: int | None = typer.Option(None, "--max-queue", help="waiting requests before 503 (256)"),
          max_samples: int | None = typer.Option(None, "--max-samples", help="samples per request (64)"),
          max_steps: int | None = typer.Option(None, "--max-steps", help="steps per modality and sample (1000)"),
          no_batching: bool = typer.Option(False, "--no-batching", help="run every request alone"),
          workers: int | None = typer.Option(None, "--workers", help="media extraction processes (1)"),
          examples: Path | None = typer.Option(None, "--examples", help="store whose test samples the page offers"),
          device: str | None = typer.Option(None, help="cpu | cuda | cuda:1 ..."),
          threads: int | None = typer.Option(None, "--threads", help="torch threads (1)"),
          max_json_mb: float | None = typer.Option(None, "--max-json-mb", help="JSON body limit (16)"),
          max_uploads: int | None = typer.Option(None, "--max-uploads", help="file/.npz bodies held at once (8)"),
          max_connections: int | None = typer.Option(None, "--max-connections", help="open connections (100)"),
          header_timeout_s: float | None = typer.Option(None, "--header-timeout-s", help="request head deadline (10)"),
          body_timeout_s: float | None = typer.Option(None, "--body-timeout-s", help="wait for body pieces (30)"),
          allowed_host: list[str] | None = typer.Option(None, "--allowed-host", help="another Host name to answer "
                                                        "(repeatable; '*': any)"),
          allowed_origin: list[str] | None = typer.Option(None, "--allowed-origin", help="another web page's origin "
                                                          "allowed to call the API (repeatable; '*': any)")) -> None:
    """Serve an export over HTTP: POST /v1/predict, GET /v1/model, GET /healthz, a page at /."""
    api.serve(export, host=host, port=port, token=token, max_upload_mb=max_upload_mb,
              max_media_seconds=max_media_seconds, max_timeline_seconds=max_timeline_seconds, max_batch=max_batch, batch_window_ms=batch_window_ms,
              max_queue=max_queue, max_samples=max_samples, max_steps=max_steps,
              batching=False if no_batching else None, media_workers=workers,
              examples=str(examples) if examples else None, device=device, torch_threads=threads,
              max_json_mb=max_json_mb, max_uploads=max_uploads, max_connections=max_connections,
              header_timeout_s=header_timeout_s, body_timeout_s=body_timeout_s,
              allowed_hosts=allowed_host or None, allowed_origins=allowed_origin or None)


@app.command()
def report(paths: list[Path] = typer.Argument(..., help="run directories or experiment directories"),
           fmt: str = typer.Option("md", "--format", help="md | csv | latex"),
           out: Path | None = typer.Option(None, "--out", help="also write the table to this file"),
           metrics: str | None = typer.Option(
               None, "--metrics", help="comma-separated columns, e.g. micro_f1,accuracy,macro_f1,"
               "hamming_loss (default: every metric and per-label F1)"),
           digits: int = typer.Option(4, "--digits", help="decimals")) -> None:
    """Mean ± std over seeds of the test metrics, one row per model, dataset and configuration."""
    chosen = [m.strip() for m in metrics.split(",") if m.strip()] if metrics else None
    rows = api.report(paths, fmt=fmt, out=out, metrics=chosen, digits=digits)
    print(api.format_table(rows, fmt, digits, chosen), end="")
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
    with _report_interrupts():
        rows = api.ablate(model, data, out=out, seeds=seeds, config=config, overrides=set_ or [], epochs=epochs,
                          only=only, devices=devices, accelerator=accelerator, precision=precision,
                          threshold=threshold)
    if rows:
        print(api.format_ablation(rows, "md"), end="")
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
    out = out or api.default_plot_path(run, kind)
    if kind == "tsne":  # the embedding alone takes about a minute on 2 CPU cores: say so before it starts
        console.print(f"t-SNE of the latents of up to {max_samples or 300} {split} samples: a forward pass, then "
                      "the embedding (about a minute on CPU)...", highlight=False, soft_wrap=True)
    with console.status(f"drawing {kind} of {run}"):
        api.plot(kind, run, out=out, data=data, split=split, **options)
    console.print(f"wrote {out}", highlight=False)


@app.command()
def demo(out: Path = typer.Option(Path("runs/demo"), "--out")) -> None:
    """Train the flagship model on the embedded data and print the test metrics."""
    console.print(api.demo_time_estimate(), highlight=False)
    result = api.demo(out)
    console.print(_metrics_table(result.test_metrics, "demo: test metrics"))
    console.print(f"run: {result.run_dir}  (mmer eval / plot / predict take this folder)", highlight=False)


def expand_multi_value(argv: list[str], options=("--seeds", "--only", "--final-seeds")) -> list[str]:
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


_LABEL_STYLES = {"error": "bold red", "warning": "bold yellow", "interrupted": "bold yellow"}


def say(label: str, message: str) -> None:
    """One `label:` line on stderr (error, warning, interrupted). soft_wrap: one line however
    narrow the terminal; escape: paths may hold [ ]."""
    Console(stderr=True, soft_wrap=True).print(f"[{_LABEL_STYLES[label]}]{label}:[/] {escape(message)}",
                                               highlight=False)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings are one `warning:` line on stderr, not Python's file:line plus source line."""
    say("warning", str(message))


def _interrupt_note(e: CommandInterrupted, args: list[str]) -> str:
    if args and args[0] == "tune":  # the study is in its storage: the same command resumes it
        return f"{e}; run the same command again to resume the study (up to --trials in total)"
    if args and args[0] == "ablate":  # ablate reuses finished runs; the interrupted one starts again
        return f"{e}; run the same command again to go on (finished runs are reused)"
    if args and args[0] == "extract":  # a rerun skips the items already written
        return f"{e}; continue with the same command: {' '.join(['mmer', *args])} (finished items are skipped)"
    again = " ".join(["mmer", *args, *([] if "--resume" in args else ["--resume"])])
    return f"{e}; continue with: {again}"


@contextlib.contextmanager
def _report_interrupts():
    """Ctrl-C during training: the engine saved the run; turn that into a CommandInterrupted,
    which main() prints (typer would exit 130 without a word)."""
    try:
        yield
    except TrainingInterrupted as e:
        raise CommandInterrupted(str(e)) from None


_FILE_SYSTEM_ERRORS = (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT)


def main(argv: list[str] | None = None) -> None:
    import warnings

    shown = warnings.showwarning
    warnings.showwarning = _show_warning
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        app(expand_multi_value(args), prog_name="mmer")
    except CommandInterrupted as e:  # Ctrl-C in training: what was saved and how to go on; 130 as shells do
        say("interrupted", _interrupt_note(e, args))
        sys.exit(130)
    except MMERError as e:
        say("error", str(e))
        sys.exit(2)
    except OSError as e:
        if e.errno not in _FILE_SYSTEM_ERRORS:
            raise
        # the commands check their output folders first; this catches a disk that fills, or a
        # folder made read-only, during the work: one line naming the file, not a traceback
        where = f"{e.filename}: " if e.filename else ""
        say("error", f"{where}{e.strerror}; free space or choose a writable --out folder")
        sys.exit(2)
    finally:
        warnings.showwarning = shown


if __name__ == "__main__":
    main()
