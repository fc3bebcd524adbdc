"""Small builders shared by the tests (not fixtures, so any test can call them with its own sizes)."""

from __future__ import annotations

import numpy as np

from mmerkit.data.store import SplitArrays, write_store

LABELS = ["happy", "sad", "anger"]


def random_split(n: int, seed: int = 0, t: int = 6, dims=(("text", 8), ("audio", 4)),
                 missing: float = 0.0) -> SplitArrays:
    """A learnable toy split: label j raises text features [j] at step 2."""
    rng = np.random.default_rng(seed)
    y = (rng.random((n, len(LABELS))) < 0.4).astype(np.uint8)
    y[y.sum(1) == 0, 0] = 1
    feats, lens = {}, {}
    for m, d in dims:
        feats[m] = rng.normal(size=(n, t, d)).astype(np.float32)
        lens[m] = rng.integers(3, t + 1, n)
        if missing:
            lens[m][rng.random(n) < missing] = 0
    feats[dims[0][0]][:, 1, : len(LABELS)] += 2.0 * y
    lens[dims[0][0]][:] = t
    return SplitArrays(feats, y, lengths=lens, ids=[f"s{seed}-{i}" for i in range(n)])


def toy_store(path, n_train=64, n_valid=24, n_test=32, **kw):
    splits = {"train": random_split(n_train, 1, **kw), "valid": random_split(n_valid, 2, **kw),
              "test": random_split(n_test, 3, **kw)}
    return write_store(path, splits, LABELS, source="toy", overwrite=True)


TINY = ["model.hidden=16", "model.layers=1", "model.ffn=32", "model.heads=2"]
