"""An export: the one class that opens an exported model (`RUN/export/`, or any copy of it).

`Export(path)` takes the export directory or the run directory that holds it (the one place a
run directory becomes its export). It gives the export's meta (`config.json`), the model built
from it with the saved weights (built once), the labels, the input spec, the threshold(s)
(read, and saved back atomically by `save_threshold`), the run it sits in (for the card's
provenance and metrics, read through `Run`), and the checked featurizer that makes its inputs
from media (built once per process, the extractors compared once).

Example:
    >>> exp = Export("runs/carat_synthetic_seed1")             # doctest: +SKIP
    >>> exp.model().name, exp.labels, exp.threshold             # doctest: +SKIP
    ('carat', ['happy', ...], 0.25)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mmerkit.checkpoint import atomic_write_text, check_compatible, load_state_into, read_export
from mmerkit.data.store import DataSpec
from mmerkit.run import Run

if TYPE_CHECKING:
    from mmerkit.extract.featurize import Featurizer
    from mmerkit.models.base import MMERModel


def export_dir_of(path: str | Path) -> Path:
    """`path` itself if it holds an export's config.json, else its `export/` when that does (a
    run directory); otherwise `path` (reading it then says what an export is)."""
    path = Path(path)
    if not (path / "config.json").exists() and (path / "export" / "config.json").exists():
        return path / "export"
    return path


class Export:
    """An exported model: meta, model, labels, spec, thresholds, its run, its featurizer."""

    def __init__(self, path: str | Path):
        self.path = export_dir_of(path)
        self.meta, self._state = read_export(self.path)
        self._model: MMERModel | None = None

    def __repr__(self) -> str:
        return f"Export({str(self.path)!r})"

    @property
    def config_path(self) -> Path:
        return self.path / "config.json"

    @property
    def model_name(self) -> str:
        return str(self.meta["model_name"])

    @property
    def labels(self) -> list[str]:
        return list(self.meta["labels"])

    @property
    def spec(self) -> DataSpec:
        return DataSpec.from_dict(self.meta["spec"])

    @property
    def threshold(self) -> float | list[float]:
        """The validation-chosen threshold: one number, or one per label."""
        return self.meta["threshold"]

    @property
    def run(self) -> Run | None:
        """The run directory this export sits in, if it does (a copied export has none)."""
        return run_of_export(self.path)

    def model(self, model_name: str | None = None, params: dict[str, Any] | None = None) -> MMERModel:
        """The model with the exported weights, built once (CPU, train mode as built). A
        `model_name` that differs from the export's is a CheckpointError naming both; `params`
        (a run's config.yaml model section) build the model that config describes instead of
        the export's own, so a run whose config and export disagree fails naming the file."""
        from mmerkit.models.base import create_model

        check_compatible(self.meta, model_name, None, self.path)
        if params is not None:
            model = create_model(self.model_name, self.spec, params)
            load_state_into(model, self._weights(), self.path / "model.safetensors")
            return model
        if self._model is None:
            own = {k: v for k, v in self.meta["model"].items() if k != "name"}
            model = create_model(self.model_name, self.spec, own)
            load_state_into(model, self._weights(), self.path / "model.safetensors")
            self._model = model
        return self._model

    def _weights(self) -> dict[str, Any]:
        return self._state

    def save_threshold(self, threshold: float | list[float] | np.ndarray) -> None:
        """Write the threshold(s) into config.json (atomically), so `Predictor`, `mmer predict`
        and the server use them from then on."""
        meta = json.loads(self.config_path.read_text())
        value = [float(t) for t in threshold] if isinstance(threshold, (list, tuple, np.ndarray)) \
            else float(threshold)
        meta["threshold"] = value
        atomic_write_text(self.config_path, json.dumps(meta, indent=2))
        self.meta["threshold"] = value

    def featurizer(self, origin: str = "the export", installed: str = "this machine's extractors") -> Featurizer:
        """The extractors that make this export's inputs from media, checked once against the
        ones it was trained with (mmerkit.extract.featurize.export_featurizer)."""
        from mmerkit.extract.featurize import export_featurizer

        return export_featurizer(self.meta, origin, installed)

    def run_records(self) -> dict[str, Any]:
        """env.json and the metrics of the run this export sits in (see `run_records`)."""
        return run_records(self.path)


def run_of_export(path: str | Path) -> Run | None:
    """The run directory an export directory sits in, if it does (a copied export has none)."""
    path = export_dir_of(path)
    run = Run(path.parent)
    return run if path.name == "export" and run.is_run else None


def run_records(path: str | Path) -> dict[str, Any]:
    """env.json and the metric files of the run an export sits in, read through `Run`
    ({"env": {}, "test": None, "valid": None} for an export outside a run)."""
    run = run_of_export(path)
    if run is None:
        return {"env": {}, "test": None, "valid": None}
    return {"env": _safe(run.read_env) or {}, "test": _safe(run.read_test_metrics),
            "valid": _safe(run.read_valid_metrics)}


def _safe(read) -> Any:
    """A run file that cannot be read (damaged, half-copied) is absent for the card, not a crash."""
    try:
        return read()
    except (OSError, ValueError):
        return None
