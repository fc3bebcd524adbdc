"""MMSA feature pickles (`aligned_50.pkl`, `unaligned_50.pkl`) + an emotion-label CSV -> FeatureStore.

MMSA (thuiar/MMSA) distributes CMU-MOSI / MOSEI / SIMS features as one plain pickle holding, per
split ``"train"``, ``"valid"``, ``"test"``: ``"text"`` (N, T, D) features, ``"text_bert"``
(N, 3, T: BERT token ids, attention mask, segment ids), ``"audio"`` (N, T_a, D_a; COVAREP writes
-inf for silent frames), ``"vision"`` (N, T_v, D_v), ``"id"`` (``video$_$clip``), ``"raw_text"``,
``"audio_lengths"`` / ``"vision_lengths"`` in the unaligned file, and sentiment labels only.

The emotion labels come from a CSV joined by segment id: either an ``id`` column in MMSA's
``video$_$clip`` form, or ``video_id`` and ``clip_id`` columns; one intensity column per emotion
(by default CMU-MOSEI's six, found by name in any letter case: happy, sad, anger, surprise,
disgust, fear; `emotions` names others). An emotion is present when its intensity is > 0, the
rule UniVA, CARAT and LDDU use. Samples whose id has no CSV row are left out; the converter
reports how many ids of each split matched (a warning line) and refuses a split where none did.

Arrays: audio ``-inf`` becomes 0 as in every MMSA loader; any other NaN/inf goes through
`nan_policy`. Text is read from ``text`` (or `text_key`, e.g. a features array you added);
``text_bert`` holds BERT inputs, not features, and is refused with that explanation. Text steps
are all valid (MMSA's masks for feature inputs are all ones); audio and vision use
``audio_lengths`` / ``vision_lengths`` when the file has them (the unaligned layout), and the
store is marked unaligned when it does or when the three sequence lengths differ.

Loading a pickle can execute code stored in the file: only convert files from a source you trust.

Example:
    >>> convert_mmsa("MOSEI/aligned_50.pkl", "stores/mosei-mmsa",
    ...              labels="final_multi_labels.csv")                          # doctest: +SKIP
"""

from __future__ import annotations

import csv
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from mmerkit.data.converters import register_converter
from mmerkit.data.mosei import (
    LABELS as MOSEI_LABELS,
)
from mmerkit.data.mosei import (
    _check_args,
    _get_split,
    _keys,
    _load_pickle,
    _require_file,
    _stack,
    _zero_neg_inf,
)
from mmerkit.data.store import EmptyLabelPolicy, FeatureStore, SplitArrays, write_store
from mmerkit.errors import DataError

SPLIT_KEYS = {"train": ("train",), "valid": ("valid", "dev"), "test": ("test",)}
MODALITY_KEYS = {"text": "text", "visual": "vision", "audio": "audio"}
LENGTH_KEYS = {"visual": "vision_lengths", "audio": "audio_lengths"}
ID_SEP = "$_$"


# ----------------------------------------------------------------------------- the label CSV


def _clip_key(raw: str) -> str:
    """`"7"`, `"7.0"` and `" 7 "` are the same clip; other ids are kept as written."""
    raw = raw.strip()
    try:
        value = float(raw)
    except ValueError:
        return raw
    return str(int(value)) if value.is_integer() else raw


def segment_id(video: str, clip: str) -> str:
    """MMSA's sample id: ``video$_$clip``."""
    return f"{video.strip()}{ID_SEP}{_clip_key(clip)}"


def _normalise_id(raw: str) -> str:
    if ID_SEP in raw:
        video, _, clip = raw.strip().partition(ID_SEP)
        return segment_id(video, clip)
    return raw.strip()


def read_label_csv(path: Path, emotions: list[str] | None = None) -> tuple[list[str], dict[str, np.ndarray]]:
    """(emotion names as in the header, {segment id: (C,) uint8 presence}) from a label CSV."""
    _require_file(path, "the emotion-label CSV (an id or video_id + clip_id column, one intensity "
                  "column per emotion)")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f))
            header = list(rows[0].keys()) if rows else []
    except (UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{path} could not be read as a CSV ({e}); pass the emotion-label CSV") from None
    if not rows:
        raise DataError(f"{path} has no data rows; pass the emotion-label CSV")
    lower = {h.strip().lower(): h for h in header if h is not None}
    if "id" in lower:
        ids = [_normalise_id(r[lower["id"]] or "") for r in rows]
    elif "video_id" in lower and "clip_id" in lower:
        ids = [segment_id(r[lower["video_id"]] or "", r[lower["clip_id"]] or "") for r in rows]
    else:
        raise DataError(f"{path}: no 'id' column and no 'video_id' + 'clip_id' columns (columns: "
                        f"{', '.join(header)}); the CSV joins labels to MMSA samples by segment id")
    wanted = list(emotions) if emotions else list(MOSEI_LABELS)
    missing = [e for e in wanted if e.lower() not in lower]
    if missing:
        raise DataError(f"{path} has no column for emotion(s) {', '.join(missing)} (columns: "
                        f"{', '.join(header)}); name the intensity columns with --emotions a,b,c")
    columns = [lower[e.lower()] for e in wanted]
    table: dict[str, np.ndarray] = {}
    for line, (sid, row) in enumerate(zip(ids, rows, strict=True), start=2):
        try:
            present = np.array([float(row[c]) > 0 for c in columns], np.uint8)
        except (TypeError, ValueError):
            bad = next(c for c in columns if not _is_number(row[c]))
            raise DataError(f"{path}, line {line}: {bad} is {row[bad]!r}, expected an intensity "
                            "(a number; > 0 means present)") from None
        if sid in table and not np.array_equal(table[sid], present):
            raise DataError(f"{path}, line {line}: segment {sid!r} appears twice with different labels; "
                            "keep one row per segment")
        table[sid] = present
    return [c.strip() for c in columns], table


def _is_number(value: Any) -> bool:
    try:
        float(value)
        return True
    except (TypeError, ValueError):
        return False


# ----------------------------------------------------------------------------- the pickle


def _modality(sd: Mapping, key: str, path: Path, split: str) -> np.ndarray:
    where = f"{path.name}, split {split!r}, key {key!r}"
    if key not in sd:
        raise DataError(f"{path.name}: split {split!r} has no key {key!r} (keys: {_keys(sd)}); "
                        "is it an MMSA aligned_50.pkl / unaligned_50.pkl?")
    x, _ = _stack(sd[key], where)
    if x.ndim != 3:
        raise DataError(f"{where}: expected (N, T, D) features, got shape {tuple(x.shape)}")
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise DataError(f"{where}: features have dtype {x.dtype}, expected numbers")
    return x


def _check_text(x: np.ndarray, key: str, path: Path) -> None:
    """MMSA's `text_bert` is (N, 3, T) BERT inputs (token ids, mask, segment ids), not features."""
    if x.shape[1] == 3 and x.shape[2] != 3 and np.array_equal(x[: min(len(x), 64)],
                                                           np.round(x[: min(len(x), 64)])):
        raise DataError(f"{path.name}, key {key!r}: shape {tuple(x.shape)} holds BERT inputs (token ids, "
                        "attention mask, segment ids), not features; convert with --text-key text (MMSA's "
                        "text features), or add a key with (N, T, D) features and pass it as --text-key")


def _lengths(sd: Mapping, m: str, n: int, t: int, path: Path, split: str) -> np.ndarray | None:
    key = LENGTH_KEYS.get(m)
    if key is None or key not in sd:
        return None
    lens = np.asarray(sd[key]).reshape(-1)
    if lens.shape != (n,) or not np.issubdtype(lens.dtype, np.number):
        raise DataError(f"{path.name}, split {split!r}, key {key!r}: expected {n} lengths, got shape "
                        f"{lens.shape}; the file is inconsistent")
    return np.clip(lens.astype(np.int64), 0, t)


def _split(sd: Mapping, path: Path, split: str, text_key: str, table: dict[str, np.ndarray],
           csv_path: Path) -> tuple[SplitArrays, int, int]:
    if "id" not in sd:
        raise DataError(f"{path.name}: split {split!r} has no key 'id' (keys: {_keys(sd)}); the labels "
                        "are joined by MMSA's segment ids")
    ids = [_normalise_id(str(i)) for i in np.asarray(sd["id"]).reshape(-1)]
    keep = np.array([i in table for i in ids], bool)
    if not keep.any():
        example = next(iter(table))
        raise DataError(f"none of the {len(ids)} ids of split {split!r} in {path.name} (e.g. {ids[0]!r}) "
                        f"has a row in {csv_path.name} (e.g. {example!r}); ids are video_id$_$clip_id")
    feats, lengths = {}, {}
    for m, key in {**MODALITY_KEYS, "text": text_key}.items():
        x = _modality(sd, key, path, split)
        if len(x) != len(ids):
            raise DataError(f"{path.name}, split {split!r}: {key!r} has {len(x)} samples but 'id' has "
                            f"{len(ids)}; the file is inconsistent, download it again")
        if m == "text":
            _check_text(x, key, path)
        lens = _lengths(sd, m, len(ids), x.shape[1], path, split)
        x = x[keep]
        feats[m] = _zero_neg_inf(x) if m == "audio" else x
        if lens is not None:
            lengths[m] = lens[keep]
    kept = [i for i, k in zip(ids, keep, strict=True) if k]
    y = np.stack([table[i] for i in kept])
    return SplitArrays(features=feats, labels=y, lengths=lengths, ids=kept), int(keep.sum()), len(ids)


# ----------------------------------------------------------------------------- the converter


@register_converter('mmsa', description=("MMSA aligned_50.pkl / unaligned_50.pkl (MOSI, MOSEI, SIMS features) with emotion "
                    "labels joined by segment id from a CSV (--labels; presence = intensity > 0)"))
def convert_mmsa(path: str | os.PathLike, out: str | os.PathLike, *, labels: str | None = None,
                 labels_from: str | os.PathLike | None = None, text_key: str = "text",
                 emotions: list[str] | None = None, nan_policy: str = "reject", overwrite: bool = False,
                 empty_labels: EmptyLabelPolicy = "reject") -> FeatureStore:
    """Convert an MMSA `aligned_50.pkl` / `unaligned_50.pkl` with emotion labels from a CSV
    (`labels`, CLI `--labels`; `--labels-from` is the same) into a FeatureStore.

    Example:
        >>> convert_mmsa("unaligned_50.pkl", "stores/mosei-mmsa", labels="labels.csv")  # doctest: +SKIP
    """
    path, out = Path(path), Path(out)
    csv_path = _labels_path(labels, labels_from)
    _check_args(out, overwrite, nan_policy, empty_labels)
    names, table = read_label_csv(csv_path, emotions)
    data = _load_pickle(path, "an MMSA aligned_50.pkl / unaligned_50.pkl")
    splits, counts = {}, {}
    for split, aliases in SPLIT_KEYS.items():
        splits[split], matched, total = _split(_get_split(data, path, split, aliases), path, split, text_key,
                                               table, csv_path)
        counts[split] = (matched, total)
    del data
    warnings.warn(f"{path.name}: labels from {csv_path.name} for " + ", ".join(
        f"{s} {k} of {n} ids" for s, (k, n) in counts.items())
        + ("; samples without a CSV row are left out" if any(k < n for k, n in counts.values()) else ""),
        UserWarning, stacklevel=2)
    aligned = not any(sp.lengths for sp in splits.values()) and len(
        {x.shape[1] for x in splits["train"].features.values()}) == 1
    try:
        return write_store(out, splits, names, name=out.name, source=f"mmsa:{path.name}+{csv_path.name}",
                           aligned=aligned, nan_policy=nan_policy, empty_labels=empty_labels,
                           overwrite=overwrite)
    except DataError as e:
        raise DataError(f"{path.name}: {e}") from None


def _labels_path(labels: str | None, labels_from: str | os.PathLike | None) -> Path:
    if labels is not None and labels_from is not None and Path(labels) != Path(labels_from):
        raise DataError("give the label CSV once: --labels or --labels-from, not both")
    given = labels if labels is not None else labels_from
    if given is None:
        raise DataError("--from mmsa needs the emotion-label CSV: --labels CSV (MMSA pickles hold "
                        "sentiment labels only)")
    return Path(given)
