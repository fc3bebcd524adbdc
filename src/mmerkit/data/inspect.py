"""What is in a FeatureStore: sizes, lengths, label statistics, missing modalities, NaN/inf counts.

`inspect_store` returns a JSON-able dict (plain ints, floats, lists, dicts). Feature arrays are
scanned in chunks of the memory map, so a store larger than RAM can be inspected.

Per split::

    samples, labels_per_sample (mean), labels_per_sample_hist {k: count}, empty_label_sets,
    label_counts {label: n}, label_frequency {label: rate}, cooccurrence (L x L counts; the
    diagonal is label_counts), modalities {m: {len_min, len_mean, len_median, len_max,
    missing, missing_rate, nonfinite, nan, inf}}, extras {name: {dim, nonfinite}}

Example:
    >>> report = inspect_store("stores/m3ed")                      # doctest: +SKIP
    >>> report["splits"]["train"]["labels_per_sample"]              # doctest: +SKIP
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from mmerkit.data.store import FeatureStore, nonfinite_count


def _nonfinite(x: np.ndarray) -> tuple[int, int]:
    """(NaN count, inf count) of an array, read in chunks along the first axis."""
    nan, inf, _ = nonfinite_count(x)
    return nan, inf


def _lengths(lens: np.ndarray) -> dict[str, Any]:
    lens = np.asarray(lens, np.int64)
    missing = int((lens == 0).sum())
    return {"len_min": int(lens.min()), "len_mean": round(float(lens.mean()), 4),
            "len_median": float(np.median(lens)), "len_max": int(lens.max()),
            "missing": missing, "missing_rate": round(missing / len(lens), 6)}


def _labels(y: np.ndarray, names: list[str]) -> dict[str, Any]:
    y = np.asarray(y, np.int64)
    per = y.sum(1)
    counts = y.sum(0)
    hist = np.bincount(per, minlength=1)
    return {
        "labels_per_sample": round(float(per.mean()), 4),
        "labels_per_sample_hist": {str(k): int(v) for k, v in enumerate(hist) if v},
        "empty_label_sets": int((per == 0).sum()),
        "label_counts": dict(zip(names, counts.tolist())),
        "label_frequency": dict(zip(names, (counts / len(y)).round(4).tolist())),
        "cooccurrence": (y.T @ y).tolist(),
    }


def inspect_store(store: FeatureStore | str | os.PathLike) -> dict[str, Any]:
    """Statistics of every split of `store` as a JSON-able dict (see module doc)."""
    # opened without the NaN/inf check: counting them (and showing where) is what inspect is for
    store = store if isinstance(store, FeatureStore) else FeatureStore(store, check_values=False)
    names = store.labels
    report: dict[str, Any] = {
        "path": str(store.path), "name": store.name, "labels": names, "modalities": store.modalities,
        "extras": store.spec().extras, "aligned": store.aligned, "source": store.meta.get("source", ""),
        "created_by": store.meta.get("created_by", ""), "splits": {},
    }
    total = 0
    for split in store.splits:
        sp = store.split(split)
        total += len(sp)
        info: dict[str, Any] = {"samples": len(sp), **_labels(sp.labels, names), "modalities": {}, "extras": {}}
        all_missing = np.ones(len(sp), bool)
        for m in store.modalities:
            lens = np.asarray(sp.lengths[m])
            all_missing &= lens == 0
            nan, inf = _nonfinite(sp.features[m])
            info["modalities"][m] = {**_lengths(lens), "nonfinite": nan + inf, "nan": nan, "inf": inf,
                                     "padded_len": int(sp.features[m].shape[1])}
        info["all_modalities_missing"] = int(all_missing.sum())
        for e, v in sp.extras.items():
            nan, inf = _nonfinite(v)
            info["extras"][e] = {"dim": int(v.shape[1]), "nonfinite": nan + inf}
        report["splits"][split] = info
    report["samples"] = total
    return report
