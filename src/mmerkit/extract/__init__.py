"""Raw media -> FeatureStore: decoding, extractors, alignment, pipeline.

The public entry points (imported lazily, so `import mmerkit.extract` loads no media package):

* `ExtractConfig` / `make_config` (config.py): which extractors, rates, alignment, ASR;
* `read_media_manifest` (manifest.py): the manifest CSV, checked;
* `media_features` (featurize.py): one media file -> {modality: (T, D)}, shared by extraction
  and prediction;
* `run_extract` (pipeline.py): `mmer extract`, with workers, shards, resume and failures.csv;
* `create_extractor`, `list_extractors` (catalogue.py, which registers the built-in
  extractors), `register_extractor` (base.py);
* `export_extract_config`, `check_same_extractors` (identity.py): an export's extraction
  settings, and whether two feature sets were made the same way.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ExtractConfig": "config", "make_config": "config",
    "read_media_manifest": "manifest", "Manifest": "manifest", "MediaItem": "manifest",
    "media_features": "featurize", "featurizer": "featurize",
    "export_extract_config": "identity", "check_same_extractors": "identity", "media_inputs": "media_predict",
    "run_extract": "pipeline", "ExtractResult": "pipeline",
    "create_extractor": "catalogue", "list_extractors": "catalogue", "register_extractor": "base",
    "Extractor": "base", "Features": "base", "Clip": "base", "Word": "base", "MediaError": "base",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"mmerkit.extract.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'mmerkit.extract' has no attribute {name!r}")
