"""The run directory: its name, the files it holds, and reading them back.

`mmer train` writes one directory per seed, named `<model>_<data>_seed<seed>` where `<data>`
is the store's own name (`meta.json` "name", which defaults to the store's folder name)::

    config.yaml          the resolved RunConfig
    env.json             versions, seed, devices, torch threads, and the store: absolute path + fingerprint
    metrics.csv          one row per epoch and split (train, valid)
    best.ckpt last.ckpt  resumable training state (last.ckpt.prev: the previous last.ckpt)
    valid_metrics.json   validation metrics at the chosen threshold
    test_metrics.json    the single test evaluation (its presence = the run is finished)
    export/              config.json + model.safetensors (what Predictor reads)
    tensorboard/         with train.logger=tensorboard
    plots/               the default place of `mmer plot` figures

Every other module asks this one for those names and for the contents, so the layout lives
in one place. Writes are atomic (mmerkit.checkpoint.atomic_write_text).

Example:
    >>> run = Run("runs/carat_synthetic_seed1")                  # doctest: +SKIP
    >>> run.finished, run.read_config().model_name              # doctest: +SKIP
    (True, 'carat')
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mmerkit.checkpoint import atomic_write_text
from mmerkit.config import RunConfig, from_yaml, to_yaml
from mmerkit.data.store import FeatureStore
from mmerkit.errors import ConfigError, DataError, MMERError

__all__ = ["AGGREGATE", "Run", "RunResult", "data_name", "find_runs", "new_run_dir", "read_history",
           "resumable_run_dir", "run_name", "store_fingerprint", "write_aggregate"]

CONFIG = "config.yaml"
ENV = "env.json"
METRICS_CSV = "metrics.csv"
BEST_CKPT = "best.ckpt"
LAST_CKPT = "last.ckpt"
VALID_METRICS = "valid_metrics.json"
TEST_METRICS = "test_metrics.json"
WARNINGS = "warnings.json"  # what looked wrong with the result (metrics.degenerate_notes)
EXPORT = "export"
TENSORBOARD = "tensorboard"
PLOTS = "plots"
AGGREGATE = "aggregate.json"  # in the --out directory of a multi-seed `mmer train`


@dataclass
class RunResult:
    """What training one seed returns: the run directory and its selection and test results."""

    run_dir: Path | None
    best_epoch: int
    best_score: float
    threshold: float | list[float]
    valid_metrics: dict[str, float]
    test_metrics: dict[str, float]
    history: list[dict[str, Any]]
    warnings: list[str] = field(default_factory=list)  # metrics.degenerate_notes, also in warnings.json

    @property
    def run(self) -> Run:
        """The run directory, to read its files back."""
        if self.run_dir is None:
            raise MMERError("this result was trained without a run directory")
        return Run(self.run_dir)


# ----------------------------------------------------------------------------- naming


def data_name(store: FeatureStore) -> str:
    """The `<data>` part of a run name: the store's own name, made safe for a folder name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", str(store.name)).strip("-") or "data"


def run_name(model: str, data: str, seed: int) -> str:
    return f"{model}_{data}_seed{seed}"


def store_fingerprint(store: FeatureStore) -> str:
    """A cheap identity of a store's contents: meta.json (less `created_by`) and the name and
    size of every array file (`.npy`, ids.json; caches beside them do not count). Equal after a
    copy or move; different after a re-conversion that changed labels, splits, shapes or lengths."""
    meta = {k: v for k, v in store.meta.items() if k != "created_by"}
    h = hashlib.sha256(json.dumps(meta, sort_keys=True).encode())
    for split in sorted(store.splits):
        for f in sorted((store.path / split).iterdir()):
            if f.is_file() and (f.suffix == ".npy" or f.name == "ids.json"):
                h.update(f"{split}/{f.name}:{f.stat().st_size};".encode())
    return h.hexdigest()[:16]


def new_run_dir(out: str | Path, model: str, store: FeatureStore, seed: int) -> tuple[Path, str | None]:
    """(directory for a new run, a note to print or None). A name already taken (the same
    command run again, or another store with the same name) gets `_2`, `_3`, ... and the note
    says so, so the printed path is never silently another run's."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; --out names a directory that holds run directories: "
                          "choose another path")
    base = run_name(model, data_name(store), seed)
    path, k = out / base, 2
    while path.exists():
        path, k = out / f"{base}_{k}", k + 1
    if path.name == base:
        return path, None
    return path, f"{out / base} already exists; this run is written to {path}"


def resumable_run_dir(out: str | Path, model: str, store: FeatureStore, seed: int) -> Path:
    """The newest unfinished run of this model, store and seed in `out` that has a last.ckpt."""
    out = Path(out)
    base = run_name(model, data_name(store), seed)
    pattern = re.compile(rf"{re.escape(base)}(?:_\d+)?")
    candidates = sorted((p for p in out.glob(f"{base}*") if p.is_dir() and pattern.fullmatch(p.name)),
                        key=lambda p: p.stat().st_mtime)
    unfinished = [p for p in candidates if Run(p).resumable]
    if unfinished:
        return unfinished[-1]
    raise ConfigError(f"resume=True (CLI: --resume): no unfinished run {base}[_N] with {LAST_CKPT} in {out}; "
                      "start it without --resume")


def finished_run_result(out: str | Path, model: str, store: FeatureStore, seed: int) -> RunResult | None:
    """The newest finished run of this model, store and seed in `out`, read back as a RunResult
    (what `--resume` of a finished run reports), or None."""
    out = Path(out)
    base = run_name(model, data_name(store), seed)
    pattern = re.compile(rf"{re.escape(base)}(?:_\d+)?")
    done = sorted((p for p in out.glob(f"{base}*") if p.is_dir() and pattern.fullmatch(p.name) and Run(p).finished),
                  key=lambda p: p.stat().st_mtime)
    if not done:
        return None
    run = Run(done[-1])
    test = run.read_test_metrics() or {}
    valid = json.loads(run.valid_metrics_path.read_text()) if run.valid_metrics_path.exists() else {}
    return RunResult(run.path, int(test.get("best_epoch") or 0), float(valid.get("micro_f1", float("nan"))),
                     test.get("threshold", 0.5), valid, test, run.read_history(), run.read_warnings())


# ----------------------------------------------------------------------------- one run directory


class Run:
    """A run directory: the paths of its files and readers / writers for them."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._tensorboard = None  # Fabric's TensorBoardLogger, opened by the first log_epoch

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"

    # -- paths
    config_path = property(lambda self: self.path / CONFIG)
    env_path = property(lambda self: self.path / ENV)
    metrics_csv = property(lambda self: self.path / METRICS_CSV)
    best_ckpt = property(lambda self: self.path / BEST_CKPT)
    last_ckpt = property(lambda self: self.path / LAST_CKPT)
    export_dir = property(lambda self: self.path / EXPORT)
    test_metrics_path = property(lambda self: self.path / TEST_METRICS)
    valid_metrics_path = property(lambda self: self.path / VALID_METRICS)
    tensorboard_dir = property(lambda self: self.path / TENSORBOARD)

    def plot_path(self, kind: str) -> Path:
        return self.path / PLOTS / f"{kind}.png"

    # -- state
    @property
    def is_run(self) -> bool:
        return self.config_path.exists()

    @property
    def finished(self) -> bool:
        return self.test_metrics_path.exists()

    @property
    def resumable(self) -> bool:
        return self.last_ckpt.exists() and not self.finished

    def require(self) -> Run:
        """self, or an error saying what a run directory is."""
        if not self.is_run:
            raise MMERError(f"{self.path} is not a run directory (no {CONFIG}); pass a directory made by "
                            "`mmer train`")
        return self

    # -- reading
    def read_config(self) -> RunConfig:
        self.require()
        return from_yaml(self.config_path.read_text(), str(self.config_path))

    def read_config_dict(self) -> dict:
        import yaml

        self.require()
        return yaml.safe_load(self.config_path.read_text()) or {}

    def read_env(self) -> dict[str, Any]:
        return json.loads(self.env_path.read_text()) if self.env_path.exists() else {}

    def read_test_metrics(self) -> dict[str, Any] | None:
        return json.loads(self.test_metrics_path.read_text()) if self.finished else None

    def read_valid_metrics(self) -> dict[str, Any] | None:
        return json.loads(self.valid_metrics_path.read_text()) if self.valid_metrics_path.exists() else None

    def read_warnings(self) -> list[str]:
        """What training found degenerate in this run's result (empty for runs before warnings.json)."""
        path = self.path / WARNINGS
        return list(json.loads(path.read_text())) if path.exists() else []

    def read_history(self) -> list[dict[str, Any]]:
        return read_history(self.metrics_csv)

    @property
    def dataset(self) -> str:
        """The store name the run was trained on (env.json; older runs: parsed from the name)."""
        env = self.read_env()
        if env.get("dataset"):
            return str(env["dataset"])
        model = str(self.read_config_dict().get("model", {}).get("name", ""))
        m = re.fullmatch(rf"{re.escape(model)}_(.+)_seed-?\d+(?:_\d+)?", self.path.name)
        if m:
            return m.group(1)
        return str(env.get("store_name", "?"))

    def open_store(self, data: str | Path | FeatureStore | None = None) -> FeatureStore:
        """The store to evaluate or plot on: `data` when given, else the one the run was trained
        on, found by its recorded absolute path and checked against its recorded fingerprint."""
        if data is not None:
            return open_store_arg(data)
        env = self.read_env()
        recorded = env.get("store")
        if recorded is None:
            raise DataError(f"{self.env_path} does not record the training store; pass the store with "
                            "-d STORE (api: data=STORE)")
        path = Path(recorded)
        if not path.exists():
            embedded = self._embedded_store(env)
            if embedded is not None:
                return embedded
            fp = f" (fingerprint {env['store_fingerprint']})" if env.get("store_fingerprint") else ""
            raise DataError(f"{self.path.name} was trained on the store {recorded}{fp}, which is not there any "
                            f"more; if it moved, pass its new location with -d STORE (api: data=STORE)")
        store = FeatureStore(path)
        want = env.get("store_fingerprint")
        if want and store_fingerprint(store) != want:
            raise DataError(f"the store {path} changed since {self.path.name} was trained on it (fingerprint "
                            f"{store_fingerprint(store)}, recorded {want}); pass the training store with -d "
                            "STORE, or pass this one with -d to evaluate on it anyway")
        return store

    def _embedded_store(self, env: dict) -> FeatureStore | None:
        """The embedded synthetic store is a cache: regenerate it when the cache was cleared."""
        cfg = self.read_config()
        if cfg.data.path is not None or env.get("dataset", env.get("store_name")) != "synthetic":
            return None
        store = embedded_store(cfg.data.synthetic)
        want = env.get("store_fingerprint")
        return store if not want or store_fingerprint(store) == want else None

    # -- writing (rank 0 only; every write is atomic)
    def write_start(self, cfg: RunConfig, env: dict[str, Any]) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.config_path, to_yaml(cfg))
        atomic_write_text(self.env_path, json.dumps(env, indent=2))

    def write_history(self, history: list[dict[str, Any]]) -> None:
        """metrics.csv from the whole history (rewritten each epoch, so a resumed run's file
        holds every epoch, also those before the interruption)."""
        keys: list[str] = []
        for row in history:
            keys += [k for k in row if k not in keys]
        buf = io.StringIO()
        csv.writer(buf).writerows([keys] + [[_csv_value(row.get(k, "")) for k in keys] for row in history])
        atomic_write_text(self.metrics_csv, buf.getvalue())

    def log_epoch(self, history: list[dict[str, Any]], step: int, *rows: dict[str, Any],
                  tensorboard: bool = False) -> None:
        """The one place training's metrics go: metrics.csv (the whole `history`, rewritten
        atomically) and, with `tensorboard` (`train.logger: tensorboard`), the new `rows` to
        Fabric's TensorBoardLogger under RUN/tensorboard at `step`."""
        self.write_history(history)
        if not tensorboard:
            return
        if self._tensorboard is None:
            from lightning_fabric.loggers import TensorBoardLogger

            try:
                self._tensorboard = TensorBoardLogger(root_dir=str(self.path), name=self.tensorboard_dir.name,
                                                      version="")
                self._tensorboard.experiment  # noqa: B018  (creates the writer: fails here without tensorboard)
            except ModuleNotFoundError:
                self._tensorboard = None
                raise ConfigError("train.logger=tensorboard needs the tensorboard package: "
                                  "pip install 'mmerkit[tensorboard]'") from None
        for row in rows:
            self._tensorboard.log_metrics({f"{row['split']}/{k}": v for k, v in row.items()
                                           if isinstance(v, (int, float)) and k != "epoch"}, step=step)
        self._tensorboard.experiment.flush()

    def close_log(self) -> None:
        """Finish the TensorBoard log, if one was opened."""
        if self._tensorboard is not None:
            self._tensorboard.finalize("success")
            self._tensorboard = None

    def write_results(self, valid: dict[str, Any], test: dict[str, Any], warnings: list[str] = ()) -> None:
        atomic_write_text(self.path / WARNINGS, json.dumps(list(warnings), indent=2))
        atomic_write_text(self.test_metrics_path, json.dumps(test, indent=2))
        self.write_valid_metrics(valid)

    def write_valid_metrics(self, valid: dict[str, Any]) -> None:
        atomic_write_text(self.valid_metrics_path, json.dumps(valid, indent=2))


def environment(cfg: RunConfig, store: FeatureStore, world_size: int, device: str) -> dict[str, Any]:
    """The content of env.json: versions, seed, devices (and torch threads: timings depend on them) and the store's identity."""
    import os
    import platform
    import sys
    import time

    import lightning_fabric
    import torch

    from mmerkit import __version__

    return {"mmerkit": __version__, "python": sys.version.split()[0], "torch": torch.__version__,
            "lightning_fabric": lightning_fabric.__version__, "numpy": np.__version__,
            "platform": platform.platform(), "seed": cfg.train.seed, "world_size": world_size,
            "device": device, "precision": cfg.train.precision, "torch_threads": torch.get_num_threads(),
            "cuda": torch.version.cuda if torch.cuda.is_available() else None,
            "store": str(store.path.resolve()), "store_fingerprint": store_fingerprint(store),
            "store_name": store.name, "dataset": data_name(store), "splits": store.splits,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "host": platform.node(), "pid": os.getpid()}


def _cache_dir() -> Path:
    import os

    return Path(os.environ.get("MMERKIT_CACHE", Path.home() / ".cache" / "mmerkit"))


def embedded_store(params: dict[str, Any]) -> FeatureStore:
    """The synthetic store for these generator parameters, generated once into the cache
    (`$MMERKIT_CACHE`, default ~/.cache/mmerkit)."""
    from mmerkit.data.synthetic import GENERATOR_VERSION, SynthConfig, write_synthetic

    cfg = SynthConfig(**params)
    # the generator version is in the key so a changed generator never reuses a stale cache
    key = hashlib.sha1(f"v{GENERATOR_VERSION}{cfg.model_dump_json()}".encode()).hexdigest()[:10]
    path = _cache_dir() / f"synthetic-{key}"
    if not (path / "meta.json").exists():
        write_synthetic(path, cfg, overwrite=True)
    return FeatureStore(path)


def training_store(data: str | Path | None, cfg: RunConfig) -> FeatureStore:
    """The store a new run trains on: `data`, else `data.path` of the config, else the
    embedded synthetic dataset."""
    if data is None and cfg.data.path is None:
        return embedded_store(cfg.data.synthetic)
    return open_store_arg(data if data is not None else cfg.data.path)


def open_store_arg(data: str | Path | FeatureStore) -> FeatureStore:
    """A store the user named (`data=` / `-d`), with a message when it does not exist."""
    if isinstance(data, FeatureStore):
        return data
    path = Path(data)
    if not path.exists():
        raise DataError(f"data={str(path)!r} (CLI: -d): {path} does not exist; make a store with `mmer data synth "
                        f"--out {path}` or `mmer data convert ... --out {path}`, or leave data out to use the "
                        "embedded dataset (train) / the run's own store (eval, plot)")
    return FeatureStore(path)


# ----------------------------------------------------------------------------- many runs


def find_runs(paths: Iterable[str | Path]) -> list[Path]:
    """Run directories given directly or found below experiment directories, sorted, unique."""
    paths = list(paths)
    found: list[Path] = []
    for p in map(Path, paths):
        if not p.exists():
            raise MMERError(f"{p} does not exist; pass run directories or experiment directories "
                            "made by `mmer train --out`")
        if Run(p).is_run:
            found.append(p)
            continue
        below = sorted(c.parent for c in p.rglob(CONFIG))
        # a run directory never contains another run (export/ has config.json, not yaml)
        found += [d for d in below if not any(a in below for a in d.parents)]
    unique = list(dict.fromkeys(d.resolve() for d in found))
    if not unique:
        raise MMERError(f"no run directories (with {CONFIG}) under {', '.join(map(str, paths))}")
    return sorted(unique)


def read_history(path: str | Path) -> list[dict[str, Any]]:
    """metrics.csv rows with numbers parsed ("" -> None)."""
    path = Path(path)
    if not path.exists():
        return []
    with path.open(newline="") as f:
        return [{k: _number(v) for k, v in row.items()} for row in csv.DictReader(f)]


def write_aggregate(out: str | Path, results: Sequence[RunResult]) -> Path:
    """OUT/aggregate.json: mean and sample std (ddof=1) over seeds of every numeric test metric."""
    keys = [k for k, v in results[0].test_metrics.items() if isinstance(v, (int, float))]
    agg: dict[str, Any] = {}
    for k in keys:
        vals = np.array([r.test_metrics[k] for r in results], dtype=float)
        agg[k] = {"mean": float(vals.mean()), "std": float(vals.std(ddof=1)) if len(vals) > 1 else 0.0}
    agg["runs"] = [str(r.run_dir) for r in results]
    path = Path(out) / AGGREGATE
    atomic_write_text(path, json.dumps(agg, indent=2))
    return path


def _number(v: str | None) -> Any:
    if v is None or v == "":
        return None
    try:
        return float(v)
    except ValueError:
        return v


def _csv_value(v):
    return f"{v:.6g}" if isinstance(v, float) else v
