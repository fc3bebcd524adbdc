"""The served model: a Predictor, what inputs it accepts, and one batched prediction call.

`ServedModel.predict(samples)` pads a list of samples (from any number of requests) into the
arrays mapping `Predictor.predict` takes, runs the model once and returns one JSON-ready dict
per sample. The model's own limit on sequence length (`max_steps()` of the model contract) caps
what a request may send, so a too-long request gets a clear 422 instead of a failed forward;
the contract's `padding_invariant` says whether samples of different lengths share a call.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmerkit.data.padding import pad_ragged
from mmerkit.errors import ConfigError
from mmerkit.export import export_dir_of
from mmerkit.predict import Predictions, Predictor
from mmerkit.serve.errors import RequestError
from mmerkit.serve.inputs import InputSpec, Sample

log = logging.getLogger("mmerkit.serve")


class ServedModel:
    """A Predictor with its input contract; `predict` is called from one thread at a time."""

    def __init__(self, predictor: Predictor, export_dir: Path, max_steps: int, max_samples: int):
        self.predictor = predictor
        self.export_dir = Path(export_dir)
        spec = predictor.spec
        if spec.extras:
            raise ConfigError(f"{export_dir}: the model takes side inputs {sorted(spec.extras)}, which the "
                              "server cannot receive yet; serve a model trained without them")
        self.labels: list[str] = list(predictor.labels)
        self.modalities: dict[str, int] = dict(spec.modalities)
        self.thresholds = np.broadcast_to(np.asarray(predictor.threshold, np.float64), (len(self.labels),))
        self._lock = threading.Lock()
        # the model contract says how long each input may be and whether padding moves answers
        declared = predictor.model.max_steps()
        caps = {m: max_steps if declared.get(m) is None else min(max_steps, int(declared[m]))
                for m in self.modalities}
        self.input_spec = InputSpec(self.modalities, caps, max_samples)
        self.padding_invariant = bool(predictor.model.padding_invariant)
        if not self.padding_invariant:
            log.info("the model's answers change with padding; batches group samples of equal lengths")

    @classmethod
    def load(cls, export_dir: str | Path, device: str = "cpu", max_steps: int = 1000,
             max_samples: int = 64) -> ServedModel:
        export_dir = export_dir_of(export_dir)  # a run directory works too
        return cls(Predictor.from_pretrained(export_dir, device), export_dir, max_steps, max_samples)

    def _forward(self, arrays: dict[str, np.ndarray]) -> Predictions:
        with self._lock, torch.inference_mode():
            return self.predictor.predict(arrays)

    def predict(self, samples: list[Sample]) -> list[dict[str, Any]]:
        """One model call for every sample (one per group of equal lengths for a model whose
        answers depend on padding), so each answer equals the sample's answer alone; one
        response dict per sample, in order."""
        out: list[dict[str, Any]] = [{} for _ in samples]
        for group in self._groups(samples):
            members = [samples[i] for i in group]
            try:
                preds = self._forward(pad_samples(members, self.modalities))
            except ValueError as e:  # Predictor.predict refuses the NaN probabilities of an overflow
                if not str(e).startswith("probs contains"):
                    raise
                raise _overflow(members[0] if len(members) == 1 else None) from None
            _check_finite(preds, members)
            scores = preds.scores
            for k, i in enumerate(group):
                out[i] = self._format(k, members[k], preds, scores)
        return out

    def _groups(self, samples: list[Sample]) -> list[list[int]]:
        if self.padding_invariant:
            return [list(range(len(samples)))]
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, s in enumerate(samples):
            groups.setdefault(tuple(s.features[m].shape[0] for m in self.modalities), []).append(i)
        return list(groups.values())

    def _format(self, i: int, sample: Sample, preds: Predictions, scores: np.ndarray | None) -> dict[str, Any]:
        mods = list(self.modalities)
        out: dict[str, Any] = {
            "id": sample.id,
            "labels": [self.labels[j] for j in np.flatnonzero(preds.predicted[i])],
            "probabilities": {lab: round(float(preds.probs[i, j]), 6) for j, lab in enumerate(self.labels)},
            "modalities_present": [m for m in mods if sample.features[m].shape[0] > 0],
            "modality_label_scores": None,
            "top_modality": None,
        }
        if scores is not None:
            out["modality_label_scores"] = {m: {lab: round(float(scores[i, k, j]), 6)
                                                for j, lab in enumerate(self.labels)} for k, m in enumerate(mods)}
        if preds.top_modality is not None:
            out["top_modality"] = {lab: mods[int(preds.top_modality[i, j])] for j, lab in enumerate(self.labels)}
        if sample.source != "features":
            out["source"] = sample.source
            out.update(sample.info)
        return out


def _check_finite(preds: Predictions, samples: list[Sample]) -> None:
    """Finite inputs can still overflow inside the model (float32 values near 3e38): a NaN is not
    an answer. The batcher then runs each request alone, so only the one at fault gets the 422."""
    bad = ~np.isfinite(np.asarray(preds.probs)).all(axis=1)
    if bad.any():
        raise _overflow(samples[int(np.flatnonzero(bad)[0])])


def _overflow(sample: Sample | None) -> RequestError:
    """(None: somewhere in a batch; the batcher then runs each request alone to find it.)"""
    return RequestError(422, f"sample {sample.id!r}" if sample is not None else "samples",
                        "has values so large that the model's answer is not a number",
                        "send features on the scale the model was trained on")


def pad_samples(samples: list[Sample], modalities: dict[str, int]) -> dict[str, np.ndarray]:
    """Samples -> `{m: (N, T_max, D), m_len: (N,)}`, zero padded (T_max >= 1)."""
    arrays: dict[str, np.ndarray] = {}
    for m, dim in modalities.items():
        arrays[m], arrays[f"{m}_len"] = pad_ragged([s.features[m] for s in samples], dim)
    return arrays
