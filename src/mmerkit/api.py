"""The Python twin of every `mmer` command. Each function wires config -> data -> model -> engine.

Example:
    >>> from mmerkit import api
    >>> store = api.data_synth("store", samples=600)                       # doctest: +SKIP
    >>> runs = api.train("early_fusion", "store", epochs=3, out="runs")   # doctest: +SKIP
    >>> api.evaluate(runs[0].run_dir, split="test")["micro_f1"]           # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mmerkit.config import RunConfig, from_yaml, load_config
from mmerkit.data.store import FeatureStore
from mmerkit.errors import ConfigError, DataError, MMERError
from mmerkit.registry import did_you_mean

# ----------------------------------------------------------------------------- tables


def models_table() -> list[dict[str, Any]]:
    """Every registered model with its paper and year."""
    from mmerkit.models.base import MODELS, list_models

    list_models()
    return [{"name": e.name, "paper": e.info["paper"], "year": e.info["year"]} for e in MODELS.entries()]


def _converters() -> dict[str, dict[str, Any]]:
    """Dataset name -> {convert: fn, description}, collected from each reader module."""
    from mmerkit.data import csd, custom, m3ed, memor, mosei

    table: dict[str, dict[str, Any]] = {
        "synthetic": {"convert": None, "description": "embedded MOSEI-shaped synthetic data "
                      "(`mmer data synth`; the default of `mmer train`)"},
    }
    for module in (mosei, m3ed, memor, csd, custom):
        for name, fn in module.CONVERTERS.items():
            table[name] = {"convert": fn, "description": getattr(module, "DESCRIPTION", {}).get(name, "")
                           or (fn.__doc__ or "").strip().splitlines()[0]}
    return table


def datasets_table() -> list[dict[str, str]]:
    return [{"name": k, "description": v["description"]} for k, v in _converters().items()]


# ----------------------------------------------------------------------------- data


def data_synth(out: str | Path, samples: int | None = None, seed: int | None = None,
               overwrite: bool = False, **params: Any) -> FeatureStore:
    """Write the embedded synthetic dataset as a FeatureStore at `out`."""
    from mmerkit.data.synthetic import SynthConfig, write_synthetic

    if samples is not None:
        params["samples"] = samples
    if seed is not None:
        params["seed"] = seed
    return write_synthetic(out, SynthConfig(**params), overwrite=overwrite)


def data_convert(source: str, path: str | Path, out: str | Path, labels_from: str | Path | None = None,
                 nan_policy: str = "reject", overwrite: bool = False, **options: Any) -> FeatureStore:
    """Convert a published corpus file (or your own features) into a FeatureStore.

    `source` is a name of `datasets_table()`; `options` go to that converter as keyword
    arguments (e.g. `folds=` for csd, `label_set=` for memor, `swap_visual_audio=` for m3ed).
    """
    table = _converters()
    if source not in table or table[source]["convert"] is None:
        names = [k for k, v in table.items() if v["convert"] is not None]
        raise ConfigError(f"unknown --from {source!r}.{did_you_mean(source, names)} Known: {', '.join(names)}")
    fn = table[source]["convert"]
    _check_converter_options(source, fn, options)
    kwargs: dict[str, Any] = {"nan_policy": nan_policy, "overwrite": overwrite, **options}
    if source == "mosei-unaligned":
        if labels_from is None:
            raise ConfigError("--from mosei-unaligned needs --labels-from train_valid_test.pt: the MulT "
                              "pickle has no emotion labels, they come from the aligned file")
        return fn(path, labels_from, out, **kwargs)
    if labels_from is not None:
        if "labels_from" not in inspect.signature(fn).parameters:
            raise ConfigError(f"--labels-from is not an option of --from {source}")
        kwargs["labels_from"] = labels_from
    return fn(path, out, **kwargs)


def _check_converter_options(source: str, fn: Any, options: dict[str, Any]) -> None:
    """Unknown converter options are errors that list the valid ones (no silent typos)."""
    params = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return  # the converter checks its own options (custom)
    valid = [n for n, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY
             and n not in ("nan_policy", "overwrite")]
    for key in list(options):  # `--no-personality` -> personality=False
        if key.startswith("no_") and key[3:] in valid and options[key] is True:
            options[key[3:]] = False
            del options[key]
    for key in options:
        if key not in valid:
            raise ConfigError(f"--from {source} has no option {key!r}.{did_you_mean(key, valid)} "
                              f"Options: {', '.join(valid) or 'none'}")


def data_inspect(store: str | Path | FeatureStore) -> dict[str, Any]:
    """Sizes, sequence lengths, label frequencies and co-occurrence, missing rates, NaN/inf counts."""
    from mmerkit.data.inspect import inspect_store

    return inspect_store(store)


def _cache_dir() -> Path:
    return Path(os.environ.get("MMERKIT_CACHE", Path.home() / ".cache" / "mmerkit"))


def embedded_store(params: dict[str, Any]) -> FeatureStore:
    """The synthetic store for these generator parameters, generated once into the cache."""
    from mmerkit.data.synthetic import GENERATOR_VERSION, SynthConfig, write_synthetic

    cfg = SynthConfig(**params)
    # the generator version is in the key so a changed generator never reuses a stale cache
    key = hashlib.sha1(f"v{GENERATOR_VERSION}{cfg.model_dump_json()}".encode()).hexdigest()[:10]
    path = _cache_dir() / f"synthetic-{key}"
    if not (path / "meta.json").exists():
        write_synthetic(path, cfg, overwrite=True)
    return FeatureStore(path)


def resolve_store(data: str | Path | None, cfg: RunConfig) -> FeatureStore:
    if data is None and cfg.data.path is None:
        return embedded_store(cfg.data.synthetic)
    path = Path(data if data is not None else cfg.data.path)
    if not path.exists():
        raise DataError(f"data {path} does not exist; make a store with `mmer data synth --out {path}` "
                        "or `mmer data convert ... --out`, or omit -d to use the embedded dataset")
    return FeatureStore(path)


def _dataset_key(store: FeatureStore) -> str:
    source = str(store.meta.get("source", ""))
    return "synthetic" if source.startswith("mmerkit synthetic") else source.split(":", 1)[0]


# ----------------------------------------------------------------------------- training


def _engine_overrides(**kw: Any) -> list[str]:
    return [f"train.{k}={v}" for k, v in kw.items() if v is not None]


def build_config(model: str | None, store: FeatureStore | None, config: str | Path | None,
                 overrides: Sequence[str], **train_kw: Any) -> RunConfig:
    dataset = _dataset_key(store) if store is not None else None
    return load_config(model, dataset, config, [*overrides, *_engine_overrides(**train_kw)])


def _run_dir(out: Path, model: str, data_name: str, seed: int, resume: bool) -> Path:
    base = f"{model}_{data_name}_seed{seed}"
    candidates = sorted((p for p in out.glob(f"{base}*") if p.is_dir()), key=lambda p: p.stat().st_mtime)
    if resume:
        unfinished = [p for p in candidates if (p / "last.ckpt").exists() and not (p / "test_metrics.json").exists()]
        if unfinished:
            return unfinished[-1]
        raise ConfigError(f"--resume: no unfinished run {base}* with last.ckpt in {out}")
    path, k = out / base, 2
    while path.exists():
        path, k = out / f"{base}_{k}", k + 1
    return path


def train(model: str | None = None, data: str | Path | None = None, *, out: str | Path = "runs",
          epochs: int | None = None, seeds: Sequence[int] | None = None, config: str | Path | None = None,
          overrides: Sequence[str] = (), resume: bool = False, **train_kw: Any) -> list:
    """Train `model` on a store (or the embedded data) once per seed; returns one FitResult per seed.

    `train_kw` are TrainConfig fields (devices, accelerator, num_nodes, strategy, precision,
    deterministic, batch_size, threshold, ...); `overrides` are `section.key=value` strings.
    """
    from lightning_fabric.utilities.seed import seed_everything

    from mmerkit.engine import Engine
    from mmerkit.models.base import create_model

    cfg0 = build_config(model, None, config, overrides, epochs=epochs, **train_kw)
    fabric = _make_fabric(cfg0)
    store = _rank0_first(fabric, lambda: resolve_store(data, cfg0))
    cfg0 = build_config(model, store, config, overrides, epochs=epochs, **train_kw)
    out = Path(out)
    results = []
    for seed in seeds or [cfg0.train.seed]:
        cfg = cfg0.model_copy(update={"train": cfg0.train.model_copy(update={"seed": seed})})
        run_dir = _run_dir(out, cfg.model_name, _dataset_key(store) or store.name, seed, resume)
        run_dir = Path(fabric.broadcast(str(run_dir), src=0))
        engine = Engine(cfg, fabric)
        seed_everything(seed, verbose=False)  # model initialisation depends on the seed too
        net = create_model(cfg.model_name, store.spec(), cfg.model)
        results.append(engine.fit(net, store, run_dir, resume=resume))
    if len(results) > 1 and fabric.global_rank == 0:
        _write_aggregate(out, results)
    return results


def _make_fabric(cfg: RunConfig):
    from lightning_fabric import Fabric

    t = cfg.train
    devices, num_nodes = t.devices, t.num_nodes
    local_world = os.environ.get("LOCAL_WORLD_SIZE")
    if local_world and "devices" not in t.model_fields_set:
        # launched by torchrun without --devices: one device per process torchrun started
        devices = int(local_world)
        if "num_nodes" not in t.model_fields_set:
            num_nodes = max(int(os.environ.get("WORLD_SIZE", local_world)) // devices, 1)
    else:  # devices asked for (not the processes torchrun already started): check before launching
        _check_device_count(t.accelerator, devices)
    from lightning_fabric.utilities.exceptions import MisconfigurationException

    try:
        fabric = Fabric(accelerator=t.accelerator, devices=devices, num_nodes=num_nodes,
                        strategy=t.strategy, precision=t.precision)
    except (ValueError, RuntimeError, TypeError, MisconfigurationException) as e:
        raise ConfigError(f"cannot set up devices (accelerator={t.accelerator}, devices={devices}, "
                          f"num_nodes={num_nodes}, strategy={t.strategy}, precision={t.precision}): {e}") from None
    if fabric.world_size > 1 or num_nodes > 1:
        fabric.launch()
    return fabric


def _check_device_count(accelerator: str, devices: int | str) -> None:
    """More devices than this machine has is a ConfigError, raised before any process is started
    or any file written. "Available" is torch.cuda.device_count() for cuda/gpu and os.cpu_count()
    for cpu, where each device is one training process (more would only oversubscribe the cores)."""
    import torch

    try:
        n = int(devices)
    except (TypeError, ValueError):
        return  # "auto", a list of GPU ids, ...: Fabric checks those
    acc = str(accelerator).lower()
    if acc in ("auto", "gpu"):
        mps = getattr(torch.backends, "mps", None)
        if not torch.cuda.is_available() and mps is not None and mps.is_available():
            return  # Apple MPS: one device, Fabric says so
        acc = "cuda" if acc == "gpu" or torch.cuda.is_available() else "cpu"
    if acc == "cpu":
        have = os.cpu_count() or 1
        what = f"{have} CPU cores (os.cpu_count()), and CPU training runs one process per device"
    elif acc == "cuda":
        have = torch.cuda.device_count()
        what = f"{have} CUDA devices (torch.cuda.device_count())"
    else:
        return
    if n > have:
        fix = f"pass --devices {have} or fewer" if have else "pass --accelerator cpu"
        raise ConfigError(f"--devices {n} (train.devices) with accelerator {acc}: this machine has {what}; {fix}")


def _rank0_first(fabric, fn):
    """Run `fn` on rank 0 first (e.g. generating the embedded store), then on the others."""
    if fabric.global_rank == 0:
        result = fn()
        fabric.barrier()
        return result
    fabric.barrier()
    return fn()


def _write_aggregate(out: Path, results: list) -> None:
    from mmerkit.checkpoint import atomic_write_text

    keys = [k for k, v in results[0].test_metrics.items() if isinstance(v, (int, float))]
    agg = {}
    for k in keys:
        vals = np.array([r.test_metrics[k] for r in results], dtype=float)
        agg[k] = {"mean": float(vals.mean()), "std": float(vals.std(ddof=1)) if len(vals) > 1 else 0.0}
    agg["runs"] = [str(r.run_dir) for r in results]
    atomic_write_text(out / "aggregate.json", json.dumps(agg, indent=2))


# ----------------------------------------------------------------------------- eval / predict


def load_run(run_dir: str | Path):
    """(config, model with best weights, store path from env.json) of a finished run directory."""
    from mmerkit.checkpoint import check_compatible, load_state_into, read_export

    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").exists():
        raise MMERError(f"{run_dir} is not a run directory (no config.yaml); pass a directory made by `mmer train`")
    cfg = from_yaml((run_dir / "config.yaml").read_text(), str(run_dir / "config.yaml"))
    meta, state = read_export(run_dir / "export")
    check_compatible(meta, cfg.model_name, None, run_dir / "export")
    from mmerkit.data.store import DataSpec
    from mmerkit.models.base import create_model

    model = create_model(cfg.model_name, DataSpec.from_dict(meta["spec"]), cfg.model)
    load_state_into(model, state, run_dir / "export" / "model.safetensors")
    env = json.loads((run_dir / "env.json").read_text()) if (run_dir / "env.json").exists() else {}
    return cfg, model, meta, env


def evaluate(run_dir: str | Path, data: str | Path | None = None, split: str = "test",
             threshold: float | str | None = None, drop_modality: str | None = None,
             save_threshold: bool = False) -> dict[str, float]:
    """Evaluate a run's exported model on a split; thresholds are searched on VALIDATION only.

    `save_threshold` writes the threshold used into `RUN/export/config.json`, so `Predictor`
    and `mmer predict` use it from then on.
    """
    from mmerkit.checkpoint import check_compatible
    from mmerkit.engine import Engine, choose_threshold
    from mmerkit.metrics import binarize, compute_metrics

    cfg, model, meta, env = load_run(run_dir)
    store = resolve_store(data if data is not None else env.get("store"), cfg)
    check_compatible(meta, None, store.labels, Path(run_dir) / "export")
    if drop_modality is not None and drop_modality not in store.modalities:
        raise ConfigError(f"--drop-modality {drop_modality!r}: the store has modalities {list(store.modalities)}"
                          f".{did_you_mean(drop_modality, list(store.modalities))}")
    cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"devices": 1, "num_nodes": 1,
                                                                       "strategy": "auto", "progress": False})})
    engine = Engine(cfg)
    if threshold is None:
        thr = meta["threshold"]
    elif threshold in ("search", "per-label", "default"):
        valid = engine.predict_split(model, store, "valid", drop_modality=drop_modality)
        thr = choose_threshold(threshold, model.threshold, valid.labels, valid.probs)
    else:
        thr = float(threshold)
    res = engine.predict_split(model, store, split, drop_modality=drop_modality)
    metrics = compute_metrics(res.labels, binarize(res.probs, np.asarray(thr)), store.labels)
    metrics["threshold"] = thr if isinstance(thr, float) else float(np.mean(thr))
    if save_threshold:
        _save_export_threshold(Path(run_dir) / "export", thr)
    return metrics


def _save_export_threshold(export_dir: Path, threshold: float | list[float]) -> None:
    from mmerkit.checkpoint import atomic_write_text

    path = export_dir / "config.json"
    meta = json.loads(path.read_text())
    meta["threshold"] = [float(t) for t in threshold] if isinstance(threshold, (list, np.ndarray)) \
        else float(threshold)
    atomic_write_text(path, json.dumps(meta, indent=2))


def predict(export_dir: str | Path, inputs: str | Path, split: str = "test", out: str | Path | None = None):
    """Predict a store split with an exported model; writes CSV/JSONL when `out` is given."""
    from mmerkit.predict import Predictor

    export_dir = Path(export_dir)
    if not (export_dir / "config.json").exists() and (export_dir / "export" / "config.json").exists():
        export_dir = export_dir / "export"  # accept the run directory too
    preds = Predictor.from_pretrained(export_dir).predict(inputs, split=split)
    if out is not None:
        preds.save(out)
    return preds


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
            raise ConfigError(f"--only {name!r} is not an ablation of {model}.{did_you_mean(key, list(table))} "
                              f"Ablations: {', '.join(table)}")
        chosen[key] = table[key]
    return chosen


def _finished_seed_runs(variant_dir: Path, cfg: RunConfig, seeds: Sequence[int]) -> dict[int, Path]:
    """Finished runs in `variant_dir` with this configuration, by seed (so a re-run resumes)."""
    import yaml

    from mmerkit.report import _fingerprint, find_runs, read_run

    want = _fingerprint(cfg.model_dump(mode="json"))
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
        if _fingerprint(yaml.safe_load((d / "config.yaml").read_text())) == want:
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
    from lightning_fabric.utilities.rank_zero import rank_zero_only

    from mmerkit.checkpoint import atomic_write_text
    from mmerkit.report import ablation_rows, format_ablation
    from mmerkit.report import report as _report

    variants = {"full": {}, **_select_ablations(model, model_ablations(model), only)}
    out = Path(out)
    cfg0 = build_config(model, None, config, overrides, epochs=epochs, **train_kw)
    store = resolve_store(data, cfg0)
    results: dict[str, dict] = {}
    for name, switches in variants.items():
        ov = [*overrides, *(f"model.{k}={json.dumps(v)}" for k, v in switches.items())]
        cfg = build_config(model, store, config, ov, epochs=epochs, **train_kw)
        wanted = list(seeds or [cfg.train.seed])
        done = _finished_seed_runs(out / name, cfg, wanted)
        todo = [s for s in wanted if s not in done]
        runs = train(model, store.path, out=out / name, epochs=epochs, seeds=todo, config=config,
                     overrides=ov, **train_kw) if todo else []
        dirs = {**done, **{r.test_metrics["seed"]: r.run_dir for r in runs}}
        if getattr(rank_zero_only, "rank", 0) == 0:
            results[name] = _report([dirs[s] for s in wanted])[0]
    if getattr(rank_zero_only, "rank", 0) != 0:
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
    run = Path(run)
    if kind == "curves":
        fig = viz.plot_curves(run)
    elif kind == "labels":
        fig = _plot_labels(run, data, split)
    else:
        from mmerkit.checkpoint import check_compatible

        cfg, model, meta, env = load_run(run)
        store = resolve_store(data if data is not None else env.get("store"), cfg)
        check_compatible(meta, None, store.labels, run / "export")
        fn = viz.plot_tsne if kind == "tsne" else viz.plot_heatmap
        fig = fn(model, store, split, modalities=cfg.data.modalities, **options)
    if out is not None:
        viz.save_figure(fig, out)
    return fig


def _plot_labels(run: Path, data: str | Path | None, split: str):
    from mmerkit import viz

    if not (run / "config.yaml").exists():
        raise MMERError(f"{run} is not a run directory (no config.yaml); pass a directory made by `mmer train`")
    cfg = from_yaml((run / "config.yaml").read_text(), str(run / "config.yaml"))
    env = json.loads((run / "env.json").read_text()) if (run / "env.json").exists() else {}
    store = resolve_store(data if data is not None else env.get("store"), cfg)
    saved = run / "test_metrics.json"
    if split == "test" and data is None and saved.exists():
        metrics = json.loads(saved.read_text())
    else:
        metrics = evaluate(run, data, split=split)
    return viz.plot_labels(metrics, store, split, title=f"per-label F1 and frequency: {run.name} ({split})")


# ----------------------------------------------------------------------------- demo


def demo(out: str | Path = "runs/demo", model: str | None = None) -> dict[str, float]:
    """Train the flagship model on the embedded data with the quick demo preset; print test metrics."""
    from mmerkit.models.base import list_models

    name = model or ("carat" if "carat" in list_models() else "early_fusion")
    preset = f"{name}-demo"
    from mmerkit.config import packaged_names

    config = preset if preset in packaged_names("presets") else None
    results = train(name, None, out=out, config=config)
    return results[0].test_metrics
