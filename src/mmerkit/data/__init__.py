"""Data layer: the canonical FeatureStore, batches, the embedded dataset and converters.

The names below load on first use: the store (numpy only) must not pull in torch, so that
`mmer extract` and other torch-free commands start in a fraction of a second and can start
their worker processes before anything heavy is imported.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {"Batch": "batch", "StoreDataset": "batch", "collate": "batch",
            "DataSpec": "store", "FeatureStore": "store", "SplitArrays": "store", "write_store": "store"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"mmerkit.data.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'mmerkit.data' has no attribute {name!r}")
