"""The Python twin of every `mmer` command: typed arguments in, typed results out.

Each function wires config -> data -> model -> engine; the orchestration (devices, torchrun,
run naming, the prediction loop) lives below, in mmerkit.engine, mmerkit.run and
mmerkit.predict. Errors name the parameter (and its CLI flag in brackets). cli.py imports this
module only: what it prints with (tables, formats, errors) is re-exported here.

Example:
    >>> from mmerkit import api
    >>> store = api.data_synth("store", samples=600)                       # doctest: +SKIP
    >>> runs = api.train("early_fusion", "store", epochs=3, out="runs")   # doctest: +SKIP
    >>> api.evaluate(runs[0].run_dir, split="test")["micro_f1"]           # doctest: +SKIP
"""

from __future__ import annotations

import inspect
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from mmerkit.config import RunConfig, check_threshold, load_config
from mmerkit.data.store import FeatureStore
from mmerkit.errors import (
    CheckpointError,
    CommandInterrupted,
    ConfigError,
    DataError,
    MMERError,
    TrainingInterrupted,
    check_writable_dir,
)
from mmerkit.metrics import MAIN_METRICS
from mmerkit.registry import did_you_mean

if TYPE_CHECKING:
    from mmerkit.models.base import MMERModel
    from mmerkit.run import RunResult
    from mmerkit.tune import TuneResult

__all__ = ["MAIN_METRICS", "CheckpointError", "CommandInterrupted", "ConfigError", "DataError", "LoadedRun",
           "MMERError", "TrainingInterrupted", "extract_summary", "format_plan", "ablate",
           "build_config", "data_convert", "data_inspect", "data_synth", "datasets_table",
           "default_plot_path", "demo", "embedded_store", "evaluate", "extract", "format_ablation",
           "format_table", "is_main_process", "load_run", "model_ablations", "models_table", "plot",
           "predict", "report", "resolve_store", "serve", "train", "tune", "tune_show"]


def format_table(rows: list[dict[str, Any]], fmt: str = "md", digits: int = 4,
                 metrics: Sequence[str] | None = None) -> str:
    """The `report` table as markdown, CSV or LaTeX (see mmerkit.report.format_table)."""
    from mmerkit.report import format_table as _format

    return _format(rows, fmt, digits, metrics)


def format_ablation(rows: list[dict[str, Any]], fmt: str = "md", digits: int = 4) -> str:
    """The `ablate` table as markdown, CSV or LaTeX (see mmerkit.report.format_ablation)."""
    from mmerkit.report import format_ablation as _format

    return _format(rows, fmt, digits)


def format_plan(plan: dict[str, Any]) -> list[str]:
    """The lines `mmer train --dry-run` prints for the plan `train(..., dry_run=True)` returns."""
    from mmerkit.plan import format_plan as _format

    return _format(plan)


def extract_summary(result: Any) -> dict[str, Any]:
    """A JSON-able account of an `extract` result (what `mmer extract` prints)."""
    from mmerkit.extract.pipeline import summary

    return summary(result)


def is_main_process() -> bool:
    """False in the non-zero ranks of a multi-process run (they print nothing)."""
    from lightning_fabric.utilities.rank_zero import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0

# ----------------------------------------------------------------------------- tables


def models_table() -> list[dict[str, Any]]:
    """Every registered model with its paper and year."""
    from mmerkit.models.base import MODELS, list_models

    list_models()
    return [{"name": e.name, "paper": e.info["paper"], "year": e.info["year"] or "-"} for e in MODELS.entries()]


def datasets_table() -> list[dict[str, str]]:
    """The embedded data and every registered converter (mmerkit.data.catalogue), with a line each."""
    from mmerkit.data.catalogue import CONVERTERS

    return [{"name": "synthetic", "description": "embedded MOSEI-shaped synthetic data "
             "(`mmer data synth`; the default of `mmer train`)"},
            *({"name": e.name, "description": e.info["description"]} for e in CONVERTERS.entries())]


# ----------------------------------------------------------------------------- data


def data_synth(out: str | Path, samples: int | None = None, seed: int | None = None,
               overwrite: bool = False, profile: str | None = None, **params: Any) -> FeatureStore:
    """Write the embedded synthetic dataset as a FeatureStore at `out`; `profile` picks the
    generator ("embedded", the default, or "mosei-like": docs/datasets.md)."""
    from mmerkit.data.synthetic import SynthConfig, write_synthetic

    check_writable_dir(out, "--out")
    if samples is not None:
        params["samples"] = samples
    if seed is not None:
        params["seed"] = seed
    if profile is not None:
        params["profile"] = profile
    return write_synthetic(out, SynthConfig(**params), overwrite=overwrite)


def data_convert(source: str, path: str | Path, out: str | Path, labels_from: str | Path | None = None,
                 nan_policy: str = "reject", overwrite: bool = False, **options: Any) -> FeatureStore:
    """Convert a published corpus file (or your own features) into a FeatureStore.

    `source` is a name of `datasets_table()`; `options` go to that converter as keyword
    arguments (e.g. `folds=` for csd, `label_set=` for memor, `swap_visual_audio=` for m3ed).
    """
    from mmerkit.data.catalogue import CONVERTERS

    if source not in CONVERTERS:
        names = CONVERTERS.names()
        raise ConfigError(f"unknown source={source!r} (CLI: --from).{did_you_mean(source, names)} "
                          f"Known: {', '.join(names)}")
    entry = CONVERTERS.entry(source)
    fn = entry.obj
    _check_converter_options(source, fn, options)
    check_writable_dir(out, "--out")
    kwargs: dict[str, Any] = {"nan_policy": nan_policy, "overwrite": overwrite, **options}
    needs = entry.info.get("needs_labels_from")
    if needs and labels_from is None:
        raise ConfigError(f"source={source!r} (CLI: --from) needs labels_from (CLI: --labels-from) = {needs}")
    if labels_from is not None:
        if "labels_from" not in inspect.signature(fn).parameters:
            raise ConfigError(f"labels_from (CLI: --labels-from) is not an option of source={source!r} (CLI: --from)")
        kwargs["labels_from"] = labels_from
    return fn(path, out=out, **kwargs)


def _check_converter_options(source: str, fn: Any, options: dict[str, Any]) -> None:
    """Unknown or mistyped converter options are errors that name the closest valid one
    (mmerkit.data.options); `options` is normalised in place (`no_x=True` -> `x=False`)."""
    from mmerkit.data.options import check_converter_options

    checked = check_converter_options(source, fn, options)
    options.clear()
    options.update(checked)


def data_inspect(store: str | Path | FeatureStore) -> dict[str, Any]:
    """Sizes, sequence lengths, label frequencies and co-occurrence, missing rates, NaN/inf counts."""
    from mmerkit.data.inspect import inspect_store

    return inspect_store(store)


def embedded_store(params: dict[str, Any]) -> FeatureStore:
    """The synthetic store for these generator parameters, generated once into the cache."""
    from mmerkit.run import embedded_store as _embedded

    return _embedded(params)


def resolve_store(data: str | Path | None, cfg: RunConfig) -> FeatureStore:
    """The store a new run trains on: `data`, else the config's data.path, else the embedded data."""
    from mmerkit.run import training_store

    return training_store(data, cfg)


def _dataset_key(store: FeatureStore) -> str:
    """Which configs/datasets/<key>.yaml applies: the store's origin (not its name)."""
    source = str(store.meta.get("source", ""))
    return "synthetic" if source.startswith("mmerkit synthetic") else source.split(":", 1)[0]


# ----------------------------------------------------------------------------- training


ConfigLike = RunConfig | str | Path | dict | None


def _engine_overrides(**kw: Any) -> list[str]:
    return [f"train.{k}={v}" for k, v in kw.items() if v is not None]


def build_config(model: str | None, store: FeatureStore | None, config: ConfigLike,
                 overrides: Sequence[str], **train_kw: Any) -> RunConfig:
    """The resolved RunConfig: model and dataset defaults < `config` (a YAML file, a preset name,
    a dict of sections or a RunConfig) < `overrides` (`section.key=value`) < `train_kw`."""
    from mmerkit.models.base import build_model_config

    dataset = _dataset_key(store) if store is not None else None
    cfg = load_config(model, dataset, config, [*overrides, *_engine_overrides(**train_kw)])
    # the YAMLs hold only what departs from the config class: a run records every field it used
    params = {k: v for k, v in cfg.model.items() if k != "name"}
    return cfg.model_copy(update={"model": build_model_config(cfg.model_name, params).model_dump(mode="json")})


def train(model: str | None = None, data: str | Path | FeatureStore | None = None, *,
          config: ConfigLike = None, out: str | Path = "runs", epochs: int | None = None,
          seeds: Sequence[int] | None = None, overrides: Sequence[str] = (), resume: bool = False,
          dry_run: bool = False, **train_kw: Any) -> list[RunResult]:
    """Train `model` on a store (or the embedded data) once per seed; one RunResult per seed
    (`.run_dir`, `.test_metrics`, `.valid_metrics`, `.threshold`, `.history`, `.run`).
    With `dry_run=True` nothing is trained or written: data, config, devices and the memory
    estimate are checked and the plan is returned as a dict (mmerkit.plan).

    `config` is a YAML file, a packaged preset name, a dict of sections or a RunConfig;
    `overrides` are `section.key=value` strings; `train_kw` are TrainConfig fields (devices,
    accelerator, num_nodes, strategy, precision, deterministic, batch_size, threshold, ...).

    Example:
        >>> [run] = api.train("early_fusion", "store", config={"train": {"epochs": 2}})  # doctest: +SKIP
        >>> run.test_metrics["micro_f1"], run.run_dir                                   # doctest: +SKIP
    """
    from mmerkit.engine import prepare_training, train_seeds

    seeds = _distinct_seeds(seeds)

    def configure(store: FeatureStore | None) -> RunConfig:
        return build_config(model, store, config, overrides, epochs=epochs, **train_kw)

    if dry_run:  # the same set-up; devices are counted, no process is started, nothing written
        from mmerkit.plan import training_plan

        return training_plan(prepare_training(configure, data, out, launch=False), seeds, resume=resume)
    check_writable_dir(out, "--out")
    return train_seeds(prepare_training(configure, data, out), seeds, resume=resume)


def _note(text: str) -> None:
    """A line for the user on stdout (rank 0 callers only), as the engine prints its progress."""
    from rich.console import Console

    Console(soft_wrap=True).print(f"[yellow]note:[/] {text}", highlight=False)


def _distinct_seeds(seeds: Sequence[int] | None) -> list[int] | None:
    """Each seed is one run: a repeated seed would train the same run twice and count it twice."""
    if seeds is None or len(seeds) == 0:
        return None
    seeds = [int(s) for s in seeds]
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        raise ConfigError(f"seeds={seeds} (CLI: --seeds) repeats seed {', '.join(map(str, repeated))}: each seed "
                          "is one run; pass distinct seeds, e.g. --seeds 1 2 3")
    return seeds


# ----------------------------------------------------------------------------- tuning


def tune(model: str | None = None, data: str | Path | FeatureStore | None = None, *, trials: int = 20,
         config: ConfigLike = None, space: str | Path | dict | None = None, epochs: int | None = None,
         metric: str = "micro_f1", out: str | Path = "study", storage: str | None = None,
         study_name: str | None = None, workers: int = 1, pruner: Any = "median",
         timeout: float | None = None, seed: int = 0, final_seeds: Sequence[int] = (),
         overrides: Sequence[str] = (), heartbeat: int = 10, quiet: bool = False) -> TuneResult:
    """Search hyper-parameters of `model` with Optuna (docs/tune.md); a trial is an ordinary
    training run in OUT/trials/, scored by its best-epoch VALIDATION `metric` (the test split
    is not read); trial 0 is the packaged recipe. `space` (a YAML file or a dict) is merged over
    the model's default space. `storage` (default: SQLite in OUT; `postgresql://...` to share a
    study between machines) and `study_name` name the study: the same call again resumes it up to
    `trials` trials in total. `workers` trial processes share this machine's cores. `pruner` is
    median, hyperband, none or an Optuna pruner object.
    `final_seeds` retrains the best configuration once per seed and evaluates the test split
    once each (TuneResult.final_summary: mean and std).

    Example:
        >>> res = api.tune("early_fusion", trials=10, epochs=4, out="study")   # doctest: +SKIP
        >>> res.best_params, res.best_value, res.best_config                     # doctest: +SKIP
    """
    import functools
    import time

    from mmerkit import tune as tuning
    from mmerkit.engine import step_budget
    from mmerkit.space import read_space_file, resolve_space, values_of, with_recipe_choices

    _check_tune_options(trials, workers, pruner, metric, timeout, heartbeat)
    seeds = _distinct_seeds(final_seeds) or []
    if isinstance(data, FeatureStore):
        data = data.path
    configure = functools.partial(_trial_config, model, config, tuple(overrides), epochs, metric)
    cfg0 = configure(None, {})
    store = resolve_store(data, cfg0)
    base = configure(store, {})
    user_space, origin = space, "space"
    if isinstance(space, (str, Path)):
        user_space, origin = read_space_file(space), str(space)
    params = resolve_space(base, user_space, origin)
    _check_not_fixed(params, overrides)
    recipe = values_of(params, base)
    params = with_recipe_choices(params, recipe)
    study_dir = Path(out)
    if study_dir.exists() and not study_dir.is_dir():
        raise ConfigError(f"out={str(study_dir)!r} (CLI: --out) is a file; it names the study directory")
    # the pruner's epoch count is the recipe's run as a trial's engine resolves it: train.min_steps
    # lengthens the epochs of a small training split (one process; a multi-device trial runs fewer)
    run_epochs = step_budget(base, len(store.split("train")), world=1).train.epochs
    settings = tuning.StudySettings(
        study_dir=study_dir, storage=tuning.storage_url(storage, study_dir), name=study_name or base.model_name,
        model=base.model_name, trials=trials, metric=metric, epochs=run_epochs, pruner=pruner,
        workers=workers, timeout=timeout, seed=seed, heartbeat=heartbeat)
    started = time.monotonic()
    data_arg = None if data is None else str(data)
    study = tuning.run_study(settings, params, recipe, configure, data_arg, quiet=quiet)
    result = tuning.write_results(study, settings, params, time.monotonic() - started)
    if seeds and result.best_trial is not None:
        result.final, result.final_summary = tuning.final_runs(study_dir, result.best_params, configure,
                                                               data_arg, seeds)
    return result


def _check_tune_options(trials: int, workers: int, pruner: Any, metric: str, timeout: float | None,
                        heartbeat: int) -> None:
    from mmerkit.metrics import HIGHER_IS_BETTER
    from mmerkit.tune import PRUNERS

    if trials < 1:
        raise ConfigError(f"trials={trials} (CLI: --trials) must be at least 1")
    if workers < 1:
        raise ConfigError(f"workers={workers} (CLI: --workers) must be at least 1")
    if not isinstance(pruner, str):
        import optuna

        if not isinstance(pruner, optuna.pruners.BasePruner):
            raise ConfigError(f"pruner={pruner!r}: pass one of {', '.join(PRUNERS)} or an optuna.pruners.BasePruner")
    elif pruner not in PRUNERS:
        raise ConfigError(f"pruner={pruner!r} (CLI: --pruner) is not one of {', '.join(PRUNERS)}."
                          f"{did_you_mean(pruner, PRUNERS)}")
    if metric not in HIGHER_IS_BETTER:
        raise ConfigError(f"metric={metric!r} (CLI: --metric) is not a validation metric."
                          f"{did_you_mean(metric, list(HIGHER_IS_BETTER))} Metrics: {', '.join(HIGHER_IS_BETTER)}")
    if timeout is not None and timeout <= 0:
        raise ConfigError(f"timeout={timeout} (CLI: --timeout) must be a positive number of seconds")
    if heartbeat < 1:
        raise ConfigError(f"heartbeat={heartbeat} (CLI: --heartbeat) must be at least 1 second")


def _check_not_fixed(params: Sequence[Any], overrides: Sequence[str]) -> None:
    """A key both searched and fixed by --set would be silently one or the other: refuse it."""
    fixed = {item.split("=", 1)[0].strip() for item in overrides}
    both = [p.key for p in params if p.key in fixed]
    if both:
        raise ConfigError(f"--set {both[0]}=... fixes a key the search space varies; drop the --set, or remove "
                          f"the key from the space with `{both[0]}: null` in --space")


def _trial_config(model: str | None, config: ConfigLike, overrides: tuple[str, ...], epochs: int | None,
                  metric: str, store: FeatureStore | None, params: dict[str, Any]) -> RunConfig:
    """One trial's RunConfig: model and dataset defaults < config < overrides < the trial's
    parameters; model selection by `metric` (module level: tune's worker processes pickle it)."""
    values = [f"{key}={json.dumps(value)}" for key, value in params.items()]
    return build_config(model, store, config, [*overrides, *values], epochs=epochs, select_metric=metric)


def tune_show(study_dir: str | Path) -> dict[str, Any]:
    """A tuned study directory read back: study.json ("study"), the rows of trials.csv
    ("trials") and final.json when --final-seeds ran ("final")."""
    import csv

    from mmerkit.tune import FINAL_JSON, TRIALS_CSV, read_study_dir

    study_dir = Path(study_dir)
    info = read_study_dir(study_dir)
    with open(study_dir / TRIALS_CSV, newline="") as f:
        rows = list(csv.DictReader(f))
    final = study_dir / FINAL_JSON
    return {"study": info, "trials": rows, "final": json.loads(final.read_text()) if final.exists() else None}


# ----------------------------------------------------------------------------- eval / predict


class LoadedRun(NamedTuple):
    """A finished run read back: its config, the exported model (best weights), the export's
    config.json and env.json. Unpacks as `cfg, model, meta, env = api.load_run(run)`."""

    config: RunConfig
    model: MMERModel
    meta: dict
    env: dict


def load_run(run_dir: str | Path) -> LoadedRun:
    """The config, the exported model, the export meta and env.json of a finished run directory."""
    from mmerkit.export import Export
    from mmerkit.run import Run

    run = Run(run_dir)
    cfg = run.read_config()
    export = Export(run.export_dir)
    return LoadedRun(cfg, export.model(cfg.model_name, cfg.model), export.meta, run.read_env())


def saved_threshold(run: str | Path) -> dict[str, Any]:
    """The threshold(s) an export holds (what `evaluate(save_threshold=True)` stored):
    {"export": config.json path, "labels": [...], "threshold": float or one per label}."""
    from mmerkit.export import Export

    export = Export(run)
    return {"export": export.config_path, "labels": export.labels, "threshold": export.threshold}


def evaluate(run_dir: str | Path, data: str | Path | None = None, split: str = "test",
             threshold: float | str | None = None, drop_modality: str | None = None,
             save_threshold: bool = False) -> dict[str, float]:
    """Evaluate a run's exported model on a split; thresholds are searched on VALIDATION only.

    `save_threshold` writes the threshold used into `RUN/export/config.json`, so `Predictor`
    and `mmer predict` use it from then on.
    """
    from mmerkit.checkpoint import check_compatible
    from mmerkit.engine import Engine
    from mmerkit.metrics import choose_threshold, metrics_at
    from mmerkit.run import Run

    cfg, model, meta, env = load_run(run_dir)
    store = Run(run_dir).open_store(data)
    check_compatible(meta, None, store.labels, Path(run_dir) / "export")
    if drop_modality is not None and drop_modality not in store.modalities:
        raise ConfigError(f"drop_modality={drop_modality!r} (CLI: --drop-modality): the store has modalities "
                          f"{list(store.modalities)}.{did_you_mean(drop_modality, list(store.modalities))}")
    cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"devices": 1, "num_nodes": 1,
                                                                       "strategy": "auto", "progress": False})})
    engine = Engine(cfg)
    if threshold is None:
        thr = meta["threshold"]
    elif threshold in ("search", "per-label", "default"):
        valid = engine.predict_split(model, store, "valid", drop_modality=drop_modality)
        thr = choose_threshold(threshold, model.threshold, valid.labels, valid.probs)
    else:
        thr = check_threshold(threshold)
    res = engine.predict_split(model, store, split, drop_modality=drop_modality)
    metrics = metrics_at(res.labels, res.probs, thr, store.labels)
    if save_threshold:
        from mmerkit.export import Export

        Export(Path(run_dir) / "export").save_threshold(thr)
    return metrics


def predict(export_dir: str | Path, inputs: str | Path | None = None, split: str = "test",
            out: str | Path | None = None, *, media: Sequence[str | Path] | str | Path | None = None,
            transcripts: Sequence[str | None] | str | None = None, manifest: str | Path | None = None,
            progress: bool = False, on_loading: Any = None):
    """Predict a store split (`inputs`), or media files (`media`, with optional `transcripts`, or
    a `manifest` CSV of them; see `Predictor.predict_media`), with an exported model; writes
    CSV/JSONL when `out` is given. `progress`: a progress bar over the clips; `on_loading(what)`
    is called before the model (and its extractors) load, so a caller can say what the wait is.

    Example:
        >>> api.predict("runs/carat_clips_seed1/export", media=["new.mp4"])     # doctest: +SKIP
    """
    from mmerkit.predict import Predictor, check_output_suffix

    from_media = bool(media) or manifest is not None
    if (inputs is not None) == from_media:
        raise ConfigError("predict needs exactly one source: a store (--inputs) or media (--media / --manifest)")
    if out is not None:
        check_output_suffix(out)  # before the work, not after it
        check_writable_dir(Path(out).parent, "--out")
    if from_media:  # missing files and manifest mistakes before seconds of model loading
        from mmerkit.extract.media_predict import media_request

        media_request(media, transcripts, manifest)
    if on_loading is not None:
        on_loading(f"loading the model from {export_dir}" + (" and its feature extractors" if from_media else ""))
    predictor = Predictor.from_pretrained(export_dir)
    if from_media:
        track = None
        if progress:  # on stderr: stdout holds the results
            from functools import partial

            from rich.console import Console
            from rich.progress import track as rich_track

            track = partial(rich_track, console=Console(stderr=True), transient=True)
        preds = predictor.predict_media(media, transcripts, manifest=manifest, progress=track)
    else:
        preds = predictor.predict(inputs, split=split)
    if out is not None:
        preds.save(out)
    return preds


def predict_timeline(export_dir: str | Path, media: str | Path, *, window: float = 4.0, hop: float | None = None,
                     out: str | Path | None = None, plot: str | Path | None = None, progress: bool = False,
                     on_loading: Any = None):
    """Emotions over time in one recording (`mmer predict EXPORT --media long.mp4 --window 4 --hop 2`):
    a `Timeline` with one row per window (`Predictor.predict_timeline`); `out` writes it as
    CSV/JSONL, `plot` draws it (labels by time, probability as colour, the predicted set
    marked; `viz.plot_timeline`). `hop` defaults to half the window.

    Example:
        >>> tl = api.predict_timeline("runs/carat_clips_seed1/export", "talk.mp4", window=4, hop=2,
        ...                           out="timeline.csv", plot="timeline.png")           # doctest: +SKIP
    """
    from mmerkit.extract.media_predict import _check_media_exist
    from mmerkit.extract.timeline import check_window
    from mmerkit.predict import Predictor, check_output_suffix

    hop = window / 2 if hop is None else hop
    check_window(window, hop)
    _check_media_exist([media], "", "")
    if out is not None:
        check_output_suffix(out)
        check_writable_dir(Path(out).parent, "--out")
    if plot is not None:
        if Path(plot).suffix.lower() not in (".png", ".pdf", ".svg"):
            raise ConfigError(f"--plot {plot}: give a .png, .pdf or .svg file name")
        check_writable_dir(Path(plot).parent, "--plot")
    if on_loading is not None:
        on_loading(f"loading the model from {export_dir} and its feature extractors")
    predictor = Predictor.from_pretrained(export_dir)
    if progress:  # on stderr: stdout holds the results
        from mmerkit.extract.decode import probe

        timeline = _timeline_with_progress(predictor, media, window, hop, probe(media)["duration"])
    else:
        timeline = predictor.predict_timeline(media, window=window, hop=hop)
    if out is not None:
        timeline.save(out)
    if plot is not None:
        from mmerkit.viz import plot_timeline

        plot_timeline(timeline, plot, title=Path(media).name)
    return timeline


def _timeline_with_progress(predictor, media, window: float, hop: float, duration: float | None):
    from rich.console import Console
    from rich.progress import Progress

    with Progress(console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("media seconds", total=duration)
        return predictor.predict_timeline(media, window=window, hop=hop,
                                          progress=lambda t: bar.update(task, completed=t))


# ----------------------------------------------------------------------------- media


def extract(manifest: str | Path, out: str | Path, *, config: Any = None, text: str | None = None,
            audio: str | None = None, visual: str | None = None, fps: float | None = None,
            sample_rate: int | None = None, align: str | None = None, asr: str | None = None,
            word_timings: str | Path | None = None, level: str | None = None, max_len: int | None = None,
            plugins: Sequence[str] | None = None, label_names: Sequence[str] | str | None = None,
            split_seed: int = 0, empty_labels: str = "reject", workers: int = 1,
            shard: str | None = None, strict: bool = False, merge: bool = False,
            parts: Sequence[str | Path] = (), overwrite: bool = False, progress: bool = False):
    """Media manifest -> FeatureStore (`mmer extract`); returns an `ExtractResult` (`.store`,
    `.failed`, `.failures_csv`, `.skipped`, ...). See mmerkit.extract.pipeline and docs/extract.md.

    `config` is an ExtractConfig, a dict or a YAML file; the keyword options override it
    (`text`/`audio`/`visual` = an extractor name or "none"). `shard="K/N"` extracts one shard
    and writes no store; `merge=True` builds the store from finished shards (`parts`: their
    STORE.parts directories from other machines).

    Example:
        >>> res = api.extract("clips/manifest.csv", "stores/clips", visual="none", workers=2)  # doctest: +SKIP
        >>> res.store.modalities, res.failed                                                  # doctest: +SKIP
    """
    from mmerkit.extract.config import make_config
    from mmerkit.extract.pipeline import run_extract

    check_writable_dir(out, "--out")
    cfg = make_config(config, text=text, audio=audio, visual=visual, fps=fps, sample_rate=sample_rate,
                      align=align, asr=asr, word_timings=None if word_timings is None else str(word_timings),
                      level=level, max_len=max_len, plugins=None if plugins is None else list(plugins))
    return run_extract(manifest, out, config=cfg, label_names=label_names, split_seed=split_seed,
                       empty_labels=empty_labels, workers=workers, shard=shard, strict=strict,
                       merge=merge, parts=parts, overwrite=overwrite, progress=progress)


# ----------------------------------------------------------------------------- report / ablate


def report(paths: Sequence[str | Path] | str | Path, fmt: str | None = None,
           out: str | Path | None = None, metrics: Sequence[str] | None = None,
           digits: int = 4) -> list[dict[str, Any]]:
    """Mean ± std over seeds of the test metrics of runs / experiment directories, one row per
    model, dataset and configuration; writes the table to `out` (format from `fmt` or the suffix).

    Example:
        >>> rows = api.report(["runs/exp"], out="results.md")            # doctest: +SKIP
    """
    from mmerkit.checkpoint import atomic_write_text
    from mmerkit.report import format_table
    from mmerkit.report import report as _report

    if out is not None:
        check_writable_dir(Path(out).parent, "--out")
    rows = _report(paths)
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out, format_table(rows, fmt or _format_of(out), digits, metrics))
    return rows


def _format_of(path: Path) -> str:
    return {".csv": "csv", ".tex": "latex"}.get(path.suffix.lower(), "md")


def model_ablations(model: str) -> dict[str, dict[str, Any]]:
    """The ablation switches a model family defines (`ABLATIONS` in its module): name -> overrides."""
    import sys

    from mmerkit.models.base import model_class

    table = getattr(sys.modules[model_class(model).__module__], "ABLATIONS", None)
    if not table:
        raise ConfigError(f"model {model!r} defines no ablations (an ABLATIONS dict in its module)")
    return dict(table)


def _select_ablations(model: str, table: dict[str, dict], only: Sequence[str] | None) -> dict[str, dict]:
    if not only:
        return table
    chosen = {}
    for name in only:
        if name == "full":
            continue
        key = name if name in table else f"{model}-{name}"
        if key not in table:
            raise ConfigError(f"only={name!r} (CLI: --only) is not an ablation of {model}.{did_you_mean(key, list(table))} "
                              f"Ablations: {', '.join(table)}")
        chosen[key] = table[key]
    return chosen


def _finished_seed_runs(variant_dir: Path, cfg: RunConfig, seeds: Sequence[int]) -> dict[int, Path]:
    """Finished runs in `variant_dir` with this configuration, by seed (so a re-run resumes)."""
    from mmerkit.report import config_fingerprint, find_runs, read_run

    want = config_fingerprint(cfg.model_dump(mode="json"))
    found: dict[int, Path] = {}
    if not variant_dir.exists():
        return found
    try:
        dirs = find_runs([variant_dir])
    except MMERError:
        return found
    for d in dirs:
        info = read_run(d)
        if info is None or info["seed"] not in seeds or info["seed"] in found:
            continue
        if config_fingerprint(info["config"]) == want:
            found[int(info["seed"])] = d
    return found


def ablate(model: str = "carat", data: str | Path | None = None, *, out: str | Path = "ablation",
           seeds: Sequence[int] | None = None, config: str | Path | None = None,
           overrides: Sequence[str] = (), epochs: int | None = None, only: Sequence[str] | None = None,
           **train_kw: Any) -> list[dict[str, Any]]:
    """Train the full model and each ablation (paper Table 3) into OUT/<variant>/, then write
    OUT/ablation.md and OUT/ablation.csv: mean ± std over seeds and the difference from the
    full model. Ablation switches are `model.KEY=VALUE` overrides on top of `config` and
    `overrides`, so `config="carat-small"` still applies. Finished runs with the same
    configuration and seed are reused, so an interrupted ablation continues where it stopped.

    Example:
        >>> rows = api.ablate("carat", seeds=[1, 2, 3], config="carat-small",
        ...                   only=["no-cl", "no-agg"], out="abl")        # doctest: +SKIP
    """
    from mmerkit.checkpoint import atomic_write_text
    from mmerkit.report import ablation_rows, format_ablation
    from mmerkit.report import report as _report

    variants = {"full": {}, **_select_ablations(model, model_ablations(model), only)}
    out = Path(out)
    check_writable_dir(out, "--out")
    cfg0 = build_config(model, None, config, overrides, epochs=epochs, **train_kw)
    store = resolve_store(data, cfg0)
    results: dict[str, dict] = {}
    for name, switches in variants.items():
        ov = [*overrides, *(f"model.{k}={json.dumps(v)}" for k, v in switches.items())]
        cfg = build_config(model, store, config, ov, epochs=epochs, **train_kw)
        wanted = list(_distinct_seeds(seeds) or [cfg.train.seed])
        done = _finished_seed_runs(out / name, cfg, wanted)
        todo = [s for s in wanted if s not in done]
        if done and is_main_process():  # a re-run must not pass old results off as new ones silently
            _note(f"{name}: reusing finished run(s) with the same config: "
                  f"{', '.join(f'seed {k} {v}' for k, v in sorted(done.items()))}")
        runs = train(model, store.path, out=out / name, epochs=epochs, seeds=todo, config=config,
                     overrides=ov, **train_kw) if todo else []
        dirs = {**done, **{r.test_metrics["seed"]: r.run_dir for r in runs}}
        if is_main_process():
            results[name] = _report([dirs[s] for s in wanted])[0]
    if not is_main_process():
        return []
    rows = ablation_rows(results, "full")
    atomic_write_text(out / "ablation.md", format_ablation(rows, "md"))
    atomic_write_text(out / "ablation.csv", format_ablation(rows, "csv"))
    return rows


# ----------------------------------------------------------------------------- plots


def plot(kind: str, run: str | Path, out: str | Path | None = None, data: str | Path | None = None,
         split: str = "test", **options: Any):
    """A figure of a run: "tsne", "heatmap", "curves" or "labels" (see mmerkit.viz); saved to
    `out` (.png/.pdf/.svg) when given. Returns the matplotlib Figure.

    `options` go to the viz function: max_samples, feature, label, seed (tsne); max_samples, sample
    (heatmap).

    Example:
        >>> fig = api.plot("heatmap", "runs/carat_synthetic_seed1", out="heatmap.png")  # doctest: +SKIP
    """
    from mmerkit import viz

    if kind not in viz.PLOT_KINDS:
        raise ConfigError(f"unknown plot {kind!r}.{did_you_mean(kind, list(viz.PLOT_KINDS))} "
                          f"Plots: {', '.join(viz.PLOT_KINDS)}")
    _check_plot_options(kind, options)
    if out is not None:
        check_writable_dir(Path(out).parent, "--out")
    run = Path(run)
    if kind == "curves":
        fig = viz.plot_curves(run)
    elif kind == "labels":
        fig = _plot_labels(run, data, split)
    else:
        from mmerkit.checkpoint import check_compatible
        from mmerkit.run import Run

        cfg, model, meta, env = load_run(run)
        store = Run(run).open_store(data)
        check_compatible(meta, None, store.labels, run / "export")
        if kind == "tsne":
            fig = viz.plot_tsne(model, store, split, modalities=cfg.data.modalities, **options)
        else:  # the run's threshold decides the per-sample view's "predicted" labels
            fig = viz.plot_heatmap(model, store, split, modalities=cfg.data.modalities,
                                   threshold=meta.get("threshold"), **options)
    if out is not None:
        viz.save_figure(fig, out)
    return fig


def _check_plot_options(kind: str, options: dict[str, Any]) -> None:
    """A misspelt keyword (`smaple=`) is an error naming the valid ones, never silently ignored."""
    from mmerkit import viz

    fn = {"tsne": viz.plot_tsne, "heatmap": viz.plot_heatmap}.get(kind)
    valid = [n for n, p in inspect.signature(fn).parameters.items()
             if p.kind is inspect.Parameter.KEYWORD_ONLY and n not in ("modalities", "title", "threshold")] if fn else []
    for key in options:
        if key not in valid:
            raise ConfigError(f"plot {kind!r} has no option {key!r}.{did_you_mean(key, valid)} "
                              f"Options: {', '.join(valid) or 'none'}")


def default_plot_path(run: str | Path, kind: str) -> Path:
    """Where `mmer plot KIND RUN` writes without --out: RUN/plots/KIND.png."""
    from mmerkit.run import Run

    return Run(run).plot_path(kind)


def _plot_labels(run_dir: Path, data: str | Path | None, split: str):
    from mmerkit import viz
    from mmerkit.run import Run

    run = Run(run_dir).require()
    store = run.open_store(data)
    saved = run.read_test_metrics()
    if split == "test" and data is None and saved is not None:
        metrics = saved
    else:
        metrics = evaluate(run.path, data, split=split)
    return viz.plot_labels(metrics, store, split,
                           title=f"per-label F1 and frequency: {run.path.name} ({split})")


# ----------------------------------------------------------------------------- demo


DEMO_IDLE_MINUTES = (2, 3)  # the demo preset on 2 idle CPU cores (README: "make demo")


def demo_time_estimate(load: float | None = None, cores: int | None = None) -> str:
    """What the demo will take here: its idle time scaled by the machine's share for one more
    process (CPU load average over the usable cores), so a busy machine gets an honest number."""
    if load is None:
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    if cores is None:
        from mmerkit.tune import usable_cores

        cores = usable_cores()
    factor = max(1.0, (load + 1.0) / max(cores, 1)) * 2 / min(max(cores, 1), 2)
    lo, hi = (round(m * factor) for m in DEMO_IDLE_MINUTES)
    busy = f"; this machine has a load of {load:.1f} on {cores} CPU core(s)" if factor > 1.05 else ""
    return f"the demo takes about {lo}-{hi} minutes here ({DEMO_IDLE_MINUTES[0]}-{DEMO_IDLE_MINUTES[1]} on 2 idle cores{busy})"


def demo(out: str | Path = "runs/demo", model: str | None = None) -> RunResult:
    """Train the flagship model on the embedded data with the quick demo preset: the run's
    RunResult (`.test_metrics`, `.run_dir`: where the run went)."""
    from mmerkit.models.base import list_models

    name = model or ("carat" if "carat" in list_models() else "early_fusion")
    preset = f"{name}-demo"
    from mmerkit.config import packaged_names

    config = preset if preset in packaged_names("presets") else None
    results = train(name, None, out=out, config=config)
    return results[0]


# ----------------------------------------------------------------------------- serve


def serve(export_dir: str | Path, **settings: Any) -> None:
    """Serve an export over HTTP until interrupted (`mmer serve`): POST /v1/predict, GET /v1/model,
    GET /healthz, the page at /. Keyword arguments are `mmerkit.serve.ServeSettings` fields
    (host, port, token, max_upload_mb, max_batch, batch_window_ms, ...).

    Example:
        >>> api.serve("runs/carat_synthetic_seed1/export", port=8000, token="s3cret")  # doctest: +SKIP
    """
    from mmerkit.serve import serve as run_server
    from mmerkit.serve.settings import make_settings

    run_server(export_dir, make_settings(**settings))
