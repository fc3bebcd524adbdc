"""The export's card (`GET /v1/model`): what a client needs to know before sending a clip.

Everything comes from the files an export holds (`config.json`) and, where the export sits in
a run directory, the run's own records (`test_metrics.json`, `valid_metrics.json`, `env.json`),
read through `Run` (mmerkit.export.run_records).
Local file paths are reduced to their last component: the card tells what data trained the
model without revealing where the server's disk keeps it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from mmerkit.export import run_records
from mmerkit.serve.inputs import InputSpec


def media_config(meta: dict[str, Any]) -> dict[str, Any] | None:
    """What the extraction workers need to rebuild the export's extractors: its `extract` record
    (the ExtractConfig, level) and `extractors` (each extractor's identity). None: the model was
    trained on features `mmer extract` did not make, so it cannot take clips."""
    if not meta.get("extract") or not meta.get("extractors"):
        return None
    return {"extract": meta["extract"], "extractors": meta["extractors"]}


def model_card(meta: dict[str, Any], export_dir: Path, spec: InputSpec, thresholds: np.ndarray,
               limits: dict[str, Any]) -> dict[str, Any]:
    """The JSON card: model, labels, thresholds, modalities, extractors, provenance, metrics."""
    run = run_records(export_dir)
    env = run["env"]
    run_cfg = meta.get("run_config", {}) or {}
    data_cfg = run_cfg.get("data", {}) or {}
    labels = list(meta.get("labels", []))
    return {
        "model": {"name": meta.get("model_name"), "params": meta.get("model", {}),
                  "mmerkit_version": meta.get("mmerkit_version"), "export": Path(export_dir).name},
        "labels": labels,
        "thresholds": {lab: float(t) for lab, t in zip(labels, thresholds)},
        "modalities": {m: {"dim": d, "max_steps": spec.max_steps[m]} for m, d in spec.modalities.items()},
        "aligned": meta.get("spec", {}).get("aligned"),
        "extraction": _without_paths(meta.get("extract")),
        "extractors": _without_paths(meta.get("extractors")),
        "training_data": {"source": meta.get("data_source") or None,
                          "store": _basename(data_cfg.get("path")) or _basename(env.get("store")),
                          "store_name": env.get("store_name"),
                          "splits": env.get("splits"),
                          "seed": (run_cfg.get("train") or {}).get("seed")},
        "metrics": {"test": run["test"] or None, "valid": run["valid"] or None},
        "inputs": {"features": "application/json {\"samples\": [{\"<modality>\": [[...], ...]}]} or an .npz",
                   "media": "multipart/form-data: file (video or audio), optional transcript"
                   if media_config(meta) else None},
        "limits": limits,
    }


def _without_paths(value: Any) -> Any:
    """The record with every absolute path cut to its last component (e.g. the manifest's)."""
    if isinstance(value, dict):
        return {k: _without_paths(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_paths(v) for v in value]
    if isinstance(value, str) and (value.startswith(("/", "~")) or (len(value) > 2 and value[1:3] in (":\\", ":/"))):
        return Path(value).name
    return value


def _basename(path: Any) -> str | None:
    return Path(str(path)).name if path else None
