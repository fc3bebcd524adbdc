"""Inference from an export directory, with no training code and no pickle.

Example:
    >>> p = Predictor.from_pretrained("runs/carat_synthetic_seed1/export")   # doctest: +SKIP
    >>> res = p.predict("store", split="test")                               # doctest: +SKIP
    >>> res.label_sets[0], res.probs.shape                                   # doctest: +SKIP
    (['happy'], (600, 6))
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from mmerkit.checkpoint import load_state_into, read_export
from mmerkit.data.batch import Batch, StoreDataset, collate
from mmerkit.data.store import DataSpec, FeatureStore
from mmerkit.errors import DataError
from mmerkit.metrics import binarize
from mmerkit.models.base import MMERModel, create_model


@dataclass
class Predictions:
    ids: list[str]
    labels: list[str]
    probs: np.ndarray  # (N, L)
    predicted: np.ndarray  # (N, L) uint8
    top_modality: np.ndarray | None = None  # (N, L) index of the modality with the strongest evidence
    modalities: tuple[str, ...] = ()
    extra: dict = field(default_factory=dict)

    @property
    def label_sets(self) -> list[list[str]]:
        return [[self.labels[j] for j in np.flatnonzero(row)] for row in self.predicted]

    @staticmethod
    def _column(label: str) -> str:
        """A label's probability column is its name, unless that clashes with a fixed column."""
        return f"p_{label}" if label in ("id", "labels", "modalities") else label

    def rows(self) -> list[dict]:
        out = []
        for i, sid in enumerate(self.ids):
            row = {"id": sid, **{self._column(name): float(self.probs[i, j]) for j, name in enumerate(self.labels)},
                   "labels": ";".join(self.label_sets[i])}
            if self.top_modality is not None:
                row["modalities"] = ";".join(f"{self.labels[j]}:{self.modalities[self.top_modality[i, j]]}"
                                             for j in np.flatnonzero(self.predicted[i]))
            out.append(row)
        return out

    def save(self, path: str | Path) -> Path:
        """CSV (one row per sample: id, one probability column per label, the label set) or JSONL."""
        path = Path(path)
        rows = self.rows()
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".jsonl":
            path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        else:
            with path.open("w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["id"])
                w.writeheader()
                w.writerows(rows)
        return path


class Predictor:
    """A trained model plus its labels and validation-chosen threshold(s)."""

    def __init__(self, model: MMERModel, meta: dict, device: str | torch.device = "cpu"):
        self.model = model.to(device).eval()
        self.meta = meta
        self.device = torch.device(device)
        self.spec = DataSpec.from_dict(meta["spec"])
        self.labels = list(meta["labels"])
        self.threshold = meta["threshold"]

    @classmethod
    def from_pretrained(cls, export_dir: str | Path, device: str = "cpu") -> Predictor:
        export_dir = Path(export_dir)
        meta, state = read_export(export_dir)
        params = {k: v for k, v in meta["model"].items() if k != "name"}
        model = create_model(meta["model_name"], DataSpec.from_dict(meta["spec"]), params)
        load_state_into(model, state, export_dir / "model.safetensors")
        return cls(model, meta, device)

    # -- inputs
    def _check_store(self, store: FeatureStore) -> None:
        want, got = self.spec.modalities, store.modalities
        if want != got:
            missing = [m for m in want if m not in got]
            extra = [m for m in got if m not in want]
            dims = [f"{m}: model {want[m]}, data {got[m]}" for m in want if m in got and want[m] != got[m]]
            detail = "; ".join(filter(None, [f"missing modalities {missing}" if missing else "",
                                             f"unknown modalities {extra}" if extra else "",
                                             f"dims differ ({', '.join(dims)})" if dims else ""]))
            raise DataError(f"{store.path} does not match the model's inputs ({detail}); the model expects "
                            f"{want}. Convert the data with the same features as the training store.")

    @torch.no_grad()
    def _run(self, batches) -> tuple[np.ndarray, np.ndarray | None]:
        probs, scores = [], []
        for batch in batches:
            out = self.model(batch.to(self.device))
            probs.append(out.probs.float().cpu())
            if out.modality_label_scores is not None:
                scores.append(out.modality_label_scores.float().cpu())
        p = torch.cat(probs).numpy()
        s = torch.cat(scores).numpy() if len(scores) == len(probs) and scores else None
        return p, s

    def predict(self, inputs: str | Path | FeatureStore | Mapping[str, np.ndarray] | Batch,
                split: str = "test", batch_size: int = 256) -> Predictions:
        """Predict a store split, a Batch, or arrays {modality: (N, T, D) or (N, D)} (+ `<m>_len`)."""
        if isinstance(inputs, Batch):
            ids = [str(i) for i in inputs.index.tolist()]
            p, s = self._run([inputs])
        elif isinstance(inputs, Mapping):
            batch = self._arrays_to_batch(inputs)
            ids = [str(i) for i in range(batch.size)]
            p, s = self._run([batch])
        else:
            store = inputs if isinstance(inputs, FeatureStore) else FeatureStore(inputs)
            self._check_store(store)
            ds = StoreDataset(store, split, tuple(self.spec.modalities))
            idx = list(range(len(ds)))
            p, s = self._run(collate(ds.__getitems__(idx[i:i + batch_size])) for i in range(0, len(ds), batch_size))
            ids = [ds.split.sample_id(i) for i in idx]
        pred = binarize(p, np.asarray(self.threshold))
        top = s.argmax(1) if s is not None else None
        return Predictions(ids, self.labels, p, pred, top, tuple(self.spec.modalities))

    def _arrays_to_batch(self, arrays: Mapping[str, np.ndarray]) -> Batch:
        items: dict = {"modalities": tuple(self.spec.modalities)}
        n = None
        for m, dim in self.spec.modalities.items():
            if m not in arrays:
                raise DataError(f"input has no {m!r} features; the model expects {dict(self.spec.modalities)}")
            x = np.asarray(arrays[m], np.float32)
            x = x[:, None, :] if x.ndim == 2 else x
            if x.ndim != 3 or x.shape[-1] != dim:
                raise DataError(f"input {m!r} has shape {np.shape(arrays[m])}; expected (N, T, {dim}) or (N, {dim})")
            if not np.isfinite(x).all():
                raise DataError(f"input {m!r} contains NaN/inf; clean it first")
            n = x.shape[0] if n is None else n
            if x.shape[0] != n:
                raise DataError(f"input {m!r} has {x.shape[0]} samples, other modalities have {n}")
            items[f"x:{m}"] = x
            items[f"len:{m}"] = np.asarray(arrays.get(f"{m}_len", np.full(n, x.shape[1])), np.int64)
        unknown = [k for k in arrays if k not in self.spec.modalities and not k.endswith("_len")]
        if unknown:
            raise DataError(f"input has unknown modalities {unknown}; the model expects {list(self.spec.modalities)}")
        items["labels"] = np.zeros((n, len(self.labels)), np.float32)
        items["index"] = np.arange(n)
        return collate(items)
