"""The served model: a Predictor, what inputs it accepts, and one batched prediction call.

`ServedModel.predict(samples)` pads a list of samples (from any number of requests) into the
arrays mapping `Predictor.predict` takes, runs the model once and returns one JSON-ready dict
per sample. The model's own limit on sequence length (its positional tables) is found once at
start-up by a warm-up call, so a too-long request gets a clear 422 instead of a failed forward.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmerkit.errors import ConfigError
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
        caps = {m: min(max_steps, _declared_cap(predictor.meta, m)) for m in self.modalities}
        self.input_spec = InputSpec(self.modalities, self._checked_caps(caps), max_samples)
        self.padding_invariant = self._ignores_padding()

    @classmethod
    def load(cls, export_dir: str | Path, device: str = "cpu", max_steps: int = 1000,
             max_samples: int = 64) -> ServedModel:
        export_dir = Path(export_dir)
        if not (export_dir / "config.json").exists() and (export_dir / "export" / "config.json").exists():
            export_dir = export_dir / "export"  # a run directory works too
        return cls(Predictor.from_pretrained(export_dir, device), export_dir, max_steps, max_samples)

    def _checked_caps(self, caps: dict[str, int]) -> dict[str, int]:
        """The longest inputs the model really takes, found by warm-up calls: the declared caps if
        they pass, else a binary search between the training lengths and those caps (a model
        whose positional table the config does not name, e.g. TAILOR's)."""
        if self._accepts(caps):
            return caps
        trained = {m: max(1, int(self.predictor.spec.max_len.get(m, 1))) for m in self.modalities}
        lo, hi = max(trained.values()), max(caps.values())
        if not self._accepts(trained):
            raise ConfigError(f"{self.export_dir}: the model fails on inputs of its training lengths {trained}")
        while hi - lo > 1:  # invariant: a common length lo passes, hi fails
            mid = (lo + hi) // 2
            if self._accepts({m: max(trained[m], min(caps[m], mid)) for m in self.modalities}):
                lo = mid
            else:
                hi = mid
        found = {m: max(trained[m], min(caps[m], lo)) for m in self.modalities}
        log.info("the model takes at most %s steps per modality", found)
        return found

    def _accepts(self, steps: dict[str, int]) -> bool:
        try:
            self._forward({m: np.zeros((1, steps[m], d), np.float32) for m, d in self.modalities.items()})
            return True
        except Exception:
            return False

    def _ignores_padding(self) -> bool:
        """Does a sample get the same answer alone and padded with extra steps, as in a batch
        with longer samples? Models whose positions depend on the padded length (TAILOR's
        granularity descent) do not: their batches then hold samples of equal lengths only."""
        steps = {m: max(1, min(3, cap - 2)) for m, cap in self.input_spec.max_steps.items()}
        if any(cap < steps[m] + 2 for m, cap in self.input_spec.max_steps.items()):
            return False  # no room to test: be safe
        rng = np.random.default_rng(0)
        sample = Sample("probe", {m: rng.normal(size=(steps[m], d)).astype(np.float32)
                                  for m, d in self.modalities.items()})
        longer = Sample("longer", {m: np.zeros((steps[m] + 2, d), np.float32) for m, d in self.modalities.items()})
        alone = self._forward(pad_samples([sample], self.modalities)).probs[0]
        padded = self._forward(pad_samples([sample, longer], self.modalities)).probs[0]
        same = bool(np.abs(alone - padded).max() <= 1e-5)
        if not same:
            log.warning("the model's answers change with padding; batches group samples of equal lengths")
        return same

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
            scores = modality_label_scores(preds)
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
        lens = np.array([s.features[m].shape[0] for s in samples], np.int64)
        x = np.zeros((len(samples), max(int(lens.max()), 1), dim), np.float32)
        for i, s in enumerate(samples):  # a copy per sample; the model call dominates
            x[i, : lens[i]] = s.features[m]
        arrays[m], arrays[f"{m}_len"] = x, lens
    return arrays


def modality_label_scores(preds: Predictions) -> np.ndarray | None:
    """The (N, M, L) modality-to-label scores, wherever this version of Predictions keeps them."""
    for name in ("modality_label_scores", "scores"):
        value = getattr(preds, name, None)
        if value is not None:
            return np.asarray(value)
    value = preds.extra.get("modality_label_scores") if isinstance(preds.extra, dict) else None
    return None if value is None else np.asarray(value)


def _declared_cap(meta: dict, modality: str) -> int:
    """The longest sequence a model's config says it takes (positional tables), else a large number."""
    params = meta.get("model", {})
    trained = int(meta.get("spec", {}).get("max_len", {}).get(modality, 0))
    positions = params.get("max_positions")
    if isinstance(positions, dict) or "default_max_positions" in params:
        declared = (positions or {}).get(modality, params.get("default_max_positions", 0))
        return max(int(declared), trained)
    if isinstance(params.get("max_len"), int):
        return max(int(params["max_len"]), trained)
    return 10**6
