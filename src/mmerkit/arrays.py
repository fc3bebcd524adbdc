"""The two array forms `Predictor` and `Client` take, checked the same way (numpy only).

One sample: ``{modality: (T, D) array, a (D,) vector (one step), or None (missing)}``
(`Predictor.predict_one`, `Client.predict_one`). Many samples: ``{modality: (N, T, D) array or
None, "<modality>_len": (N,) valid steps (optional)}`` with the batch axis first
(`Predictor.predict`, `Client.predict`). A 2-D array in the many-sample form is refused: (5, 384)
could be one sample of 5 steps or 5 one-step samples, and guessing wrong gives answers that look
right and are not.

Example:
    >>> n, xs, lens = batch_arrays({"text": np.zeros((2, 5, 8)), "audio": None})
    >>> n, xs["audio"], lens["text"].tolist()
    (2, None, [5, 5])
    >>> sample_arrays({"text": np.zeros((5, 8)), "audio": None})["text"].shape
    (1, 5, 8)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from mmerkit.errors import DataError


def _modality_keys(arrays: Mapping[str, Any]) -> list[str]:
    return [k for k in arrays if not k.endswith("_len") and k not in ("ids", "id")]


def batch_arrays(arrays: Mapping[str, Any]) -> tuple[int, dict[str, np.ndarray | None], dict[str, np.ndarray]]:
    """Check the many-sample form: (N, {modality: (N, T, D) float32 or None}, {modality: (N,) lengths})."""
    mods = _modality_keys(arrays)
    if not mods:
        raise DataError("no modality arrays given: pass {modality: (N, T, D) array}, e.g. {'text': x}")
    if all(arrays[m] is None for m in mods):
        raise DataError("every modality is None: give at least one modality's features")
    xs: dict[str, np.ndarray | None] = {}
    n = None
    for m in mods:
        if arrays[m] is None:
            xs[m] = None
            continue
        x = np.asarray(arrays[m], np.float32)
        if x.ndim == 2:
            raise DataError(f"input {m!r} has shape {x.shape}, which is ambiguous (one sample of {x.shape[0]} steps, "
                            f"or {x.shape[0]} one-step samples?): for one sample use predict_one({{{m!r}: x}}) or "
                            f"x[None] (shape (1, {x.shape[0]}, {x.shape[1]})); for {x.shape[0]} one-step samples "
                            f"use x[:, None]")
        if x.ndim != 3:
            raise DataError(f"input {m!r} has shape {x.shape}; expected (N, T, D): samples, steps, features")
        if n is not None and x.shape[0] != n:
            raise DataError(f"input {m!r} has {x.shape[0]} samples, other modalities have {n}")
        n = x.shape[0]
        xs[m] = x
    assert n is not None
    lens = {}
    for m, x in xs.items():
        if x is None:
            if f"{m}_len" in arrays and np.any(np.asarray(arrays[f"{m}_len"]) != 0):
                raise DataError(f"input {m!r} is None but {m}_len is not all 0")
            lens[m] = np.zeros(n, np.int64)
            continue
        given = arrays.get(f"{m}_len")
        lens[m] = np.asarray(given if given is not None else np.full(n, x.shape[1]), np.int64)
        if lens[m].shape != (n,) or ((lens[m] < 0) | (lens[m] > x.shape[1])).any():
            raise DataError(f"input {m}_len must hold {n} lengths in [0, {x.shape[1]}] (T of {m!r}); "
                            f"got {np.asarray(given).tolist()[:8]}")
    return n, xs, lens


def sample_arrays(sample: Mapping[str, Any]) -> dict[str, Any]:
    """One sample {modality: (T, D), (D,) or None} -> the many-sample form with N = 1."""
    out: dict[str, Any] = {}
    for m in _modality_keys(sample):
        v = sample[m]
        if v is None:
            out[m] = None
            continue
        x = np.asarray(v, np.float32)
        if x.ndim == 1:
            x = x[None]
        if x.ndim != 2:
            raise DataError(f"sample {m!r} has shape {x.shape}; one sample is (T, D) (steps, features), a (D,) "
                            "vector, or None when the modality is missing; for many samples use predict()")
        out[m] = x[None]
    return out
