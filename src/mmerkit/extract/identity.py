"""Extractor identity: is a feature set made the same way as a model's training features?

An export made from a store that `mmer extract` wrote carries that store's ``extract`` record
(the ExtractConfig, the level, the split) and ``extractors`` (each extractor's `describe()`).
`export_extract_config` reads the configuration back; `check_same_extractors` compares two
``{modality: describe()}`` records. Both are used by extraction (merging shards), prediction
from media and the server; this module imports nothing above `extract.config`/`extract.base`.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from typing import Any

from mmerkit.errors import DataError
from mmerkit.extract.base import feature_identity
from mmerkit.extract.config import ExtractConfig, make_config

# what makes two extractors' features differ; package versions only warn (numerics may move)
IDENTITY_KEYS = ("name", "version", "modality", "dim", "rate", "params", "model_files")


def export_extract_config(meta: Mapping[str, Any], origin: str = "the export") -> ExtractConfig:
    """The ExtractConfig an export's training store was made with (refuses exports without one)."""
    rec = meta.get("extract")
    if not rec or "extractors" not in meta:
        raise DataError(f"{origin} was trained on features that `mmer extract` did not make (data source "
                        f"{meta.get('data_source', '?')!r}), so it cannot predict from media: it does not "
                        "know which extractors made its features. Train on a store from `mmer extract`, "
                        "or predict from a store of such features with --inputs")
    cfg = make_config(rec["config"])
    # a word-timing file names the training clips only; new clips get ASR word times instead
    update: dict[str, Any] = {"word_timings": None}
    if cfg.align == "words" and cfg.asr == "off":
        update["asr"] = "auto"
    return cfg.model_copy(update=update)


def _identity(d: Mapping[str, Any]) -> dict[str, Any]:
    ident = feature_identity(dict(d))
    return {k: ident.get(k) for k in (*IDENTITY_KEYS, *sorted(set(ident) - set(IDENTITY_KEYS)))}


def check_same_extractors(trained: Mapping[str, Any] | None, given: Mapping[str, Any] | None,
                          trained_what: str, given_what: str) -> None:
    """Refuse features made by other extractors than the model's training features.

    Both are ``{modality: describe()}`` records (None: features of unknown origin). Name,
    version, options, dim, rate or a model file's sha256 differing is an error that names the
    modality and the field; differing package versions only warn.
    """
    if trained is None and given is None:
        return
    if trained is None or given is None:
        missing, has = (trained_what, given_what) if trained is None else (given_what, trained_what)
        raise DataError(f"{has} was made by `mmer extract` but {missing} was not: their features come from "
                        "different pipelines and cannot be mixed; use features made the same way")
    for m in sorted(set(trained) | set(given)):
        if m not in trained or m not in given:
            where = trained_what if m not in trained else given_what
            raise DataError(f"{where} has no {m!r} extractor but the other has; extract with the same "
                            "modalities as the training store")
        a, b = _identity(trained[m]), _identity(given[m])
        if a != b:
            diff = [k for k in a if a[k] != b.get(k)] or [k for k in b if k not in a]
            k = diff[0]
            raise DataError(f"{m} features differ: {trained_what} used {m} extractor {a['name']!r} with {k} = "
                            f"{json.dumps(a.get(k))}, but {given_what} has {k} = {json.dumps(b.get(k))}. The model "
                            "only understands features made the same way: install the same extractor "
                            "versions and model files (docs/extract.md), or re-extract and retrain")
        pa, pb = trained[m].get("packages", {}), given[m].get("packages", {})
        if pa != pb:
            changed = {p: (pa.get(p), pb.get(p)) for p in set(pa) | set(pb) if pa.get(p) != pb.get(p)}
            warnings.warn(f"{m} extractor packages differ from training ({changed}); the features may "
                          "shift slightly", stacklevel=3)
