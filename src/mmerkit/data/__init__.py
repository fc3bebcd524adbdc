"""Data layer: the canonical FeatureStore, batches, the embedded dataset and converters."""

from mmerkit.data.batch import Batch, StoreDataset, collate
from mmerkit.data.store import DataSpec, FeatureStore, SplitArrays, write_store

__all__ = ["Batch", "DataSpec", "FeatureStore", "SplitArrays", "StoreDataset", "collate", "write_store"]
