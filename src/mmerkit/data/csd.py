"""CMU Multimodal SDK computational sequences (.csd) -> a word-aligned CMU-MOSEI store.

A computational sequence is an HDF5 file whose root group is named after the sequence (e.g.
``COVAREP``) and holds ``data/<video_id>/features`` (n, D) and ``data/<video_id>/intervals``
(n, 2) start/end seconds, plus ``metadata``. The raw CMU-MOSEI release has one such file per
modality and one for the labels (``CMU_MOSEI_Labels.csd``: per segment, sentiment then six
emotion intensities [happy, sad, anger, surprise, disgust, fear]).

What `convert_csd` does, per video and vectorised over its frames:

1. **Align** visual and acoustic frames to the word intervals of the text sequence: each word
   gets the average of the frames that overlap it, weighted by the overlap length (frames that
   only touch the word count with a negligible weight, so a word shorter than a frame still gets
   a value). Words with no overlapping frame get zeros.
2. **Cut segments**: a labelled segment's sequence is the words whose midpoint lies in it (at
   most ``max_len`` words, head or tail).
3. **Label**: emotion ``l`` is present when its intensity is > ``threshold`` (0): multi-hot over
   [happy, sad, anger, surprise, disgust, fear], the order of the aligned ``.pt`` files.
4. **Fold**: segments go to train / valid / test by video id (or ``"<video>[<segment>]"`` id)
   from ``folds`` — a mapping, a ``.json`` {split: [ids]}, a text file of ``<split> <id>`` lines,
   or s3prl's ``CMU_MOSEI_Labels.csv`` (see `folds_from_labels_csv`). Segments outside the folds
   are left out.

Non-finite raw values (COVAREP has ``-inf``) are rejected with the file and video named, or set
to 0 *before* averaging with ``nan_policy="zero"`` (what every MOSEI loader does to ``-inf``).
Segments with no emotion present are dropped by default (``empty_labels="drop"``).

h5py is an optional dependency: ``pip install 'mmerkit[csd]'``.

Example:
    >>> store = convert_csd("cmumosei/", "stores/mosei-csd", folds="folds.txt",
    ...                     nan_policy="zero")                                    # doctest: +SKIP
"""

from __future__ import annotations

import csv
import json
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np

from mmerkit.data.converters import register_converter
from mmerkit.data.padding import pad_ragged
from mmerkit.data.store import FeatureStore, NanPolicy, SplitArrays, write_store
from mmerkit.errors import DataError

EMOTIONS = ["happy", "sad", "anger", "surprise", "disgust", "fear"]
DEFAULT_FILES = {"text": "CMU_MOSEI_TimestampedWordVectors.csd", "visual": "CMU_MOSEI_VisualFacet42.csd",
                 "audio": "CMU_MOSEI_COVAREP.csd"}
LABELS_FILE = "CMU_MOSEI_Labels.csd"
SPLITS = ("train", "valid", "test")
_SPLIT_ALIASES = {"dev": "valid", "val": "valid", "validation": "valid", "0": "train", "1": "valid", "2": "test"}


def _h5py():
    try:
        import h5py
    except ImportError:
        raise DataError("reading .csd files needs h5py: pip install 'mmerkit[csd]'") from None
    return h5py


# ----------------------------------------------------------------------------- reading .csd


class CSD:
    """One computational sequence, read video by video (the file stays open until `close`)."""

    def __init__(self, path: str | os.PathLike, what: str = "sequence"):
        self.path = Path(path)
        if not self.path.is_file():
            raise DataError(f"{self.path} is missing ({what} .csd file)")
        h5py = _h5py()
        try:
            self._file = h5py.File(self.path, "r")
        except OSError as e:
            raise DataError(f"{self.path} is not a readable HDF5 .csd file ({e})") from None
        keys = list(self._file.keys())
        if len(keys) != 1:
            stem = [k for k in keys if k == self.path.stem]
            if not stem:
                self.close()
                raise DataError(f"{self.path}: expected one root group named after the sequence, found "
                                f"{keys or 'none'}")
            keys = stem
        self.name = keys[0]
        root = self._file[self.name]
        if "data" not in root:
            self.close()
            raise DataError(f"{self.path}: group {self.name!r} has no 'data' group; not a computational sequence")
        self._data = root["data"]
        self.videos = list(self._data.keys())
        self.dim = self._dim()

    def _dim(self) -> int:
        for v in self.videos:
            f = self._data[v].get("features")
            if f is not None and len(f.shape) == 2:
                return int(f.shape[1])
        raise DataError(f"{self.path}: no video has a 2-d 'features' array")

    def __contains__(self, video: str) -> bool:
        return video in self._data

    def get(self, video: str) -> tuple[np.ndarray, np.ndarray]:
        """(features (n, D) float32, intervals (n, 2) float64) of one video."""
        g = self._data[video]
        where = f"{self.path}, {self.name}/data/{video}"
        if "features" not in g or "intervals" not in g:
            raise DataError(f"{where}: needs both 'features' and 'intervals'")
        x = np.asarray(g["features"][()])
        iv = np.asarray(g["intervals"][()], np.float64)
        if x.dtype.kind not in "fiub":
            raise DataError(f"{where}/features has dtype {x.dtype}; numeric features expected (for the "
                            "words .csd use the word-vector sequence instead)")
        x = x.astype(np.float32).reshape(len(x), -1)
        if iv.shape != (len(x), 2):
            raise DataError(f"{where}: intervals have shape {iv.shape}, expected ({len(x)}, 2)")
        if x.shape[1] != self.dim:
            raise DataError(f"{where}: features are {x.shape[1]}-d, other videos {self.dim}-d")
        return x, iv

    def close(self) -> None:
        self._file.close()


# ----------------------------------------------------------------------------- alignment


def align_to_intervals(ref: np.ndarray, intervals: np.ndarray, features: np.ndarray,
                       touch_weight: float = 1e-9) -> tuple[np.ndarray, np.ndarray]:
    """Average `features` (F, D) over each reference interval of `ref` (W, 2), weighted by overlap.

    Returns (aligned (W, D) float32, covered (W,) bool). Vectorised: the (word, frame) pairs that
    overlap are enumerated from sorted frame starts and running maximum ends, never a W x F matrix.

    Example:
        >>> x, ok = align_to_intervals(np.array([[0., 2.]]), np.array([[0., 1.], [1., 4.]]),
        ...                            np.array([[1.], [4.]]))
        >>> x.round(3).tolist(), ok.tolist()
        ([[2.5]], [True])
    """
    ref = np.asarray(ref, np.float64)
    w_count, dim = len(ref), features.shape[1]
    out = np.zeros((w_count, dim), np.float32)
    if w_count == 0 or len(features) == 0:
        return out, np.zeros(w_count, bool)
    order = np.argsort(intervals[:, 0], kind="stable")
    s, e = intervals[order, 0], intervals[order, 1]
    x = features[order]
    a, b = ref[:, 0], ref[:, 1]
    hi = np.searchsorted(s, b, side="right")  # frames starting at or before the word's end
    lo = np.searchsorted(np.maximum.accumulate(e), a, side="left")  # earlier frames all end before it
    n = np.maximum(hi - lo, 0)
    word = np.repeat(np.arange(w_count), n)
    first = np.concatenate([[0], np.cumsum(n)[:-1]])
    frame = lo[word] + (np.arange(len(word)) - first[word])
    ov = np.minimum(b[word], e[frame]) - np.maximum(a[word], s[frame])
    w = np.where(ov >= 0, np.maximum(ov, 0.0) + touch_weight, 0.0)
    total = np.bincount(word, weights=w, minlength=w_count)
    covered = total > 0
    nonempty = np.flatnonzero(n > 0)
    if nonempty.size:
        sums = np.add.reduceat(w[:, None] * x[frame], first[nonempty], axis=0)
        out[nonempty] = (sums / np.maximum(total[nonempty], 1e-300)[:, None]).astype(np.float32)
    out[~covered] = 0.0
    return out, covered


# ----------------------------------------------------------------------------- folds


def folds_from_labels_csv(path: str | os.PathLike, level: Literal["video", "segment"] = "video") -> dict[str, list[str]]:
    """Standard folds from s3prl's ``CMU_MOSEI_Labels.csv`` (``split``: 0 train, 1 valid, 2 test,
    3 outside the folds). ``level="video"``: video ids; ``"segment"``: ``"<video>[<index>]"`` ids.

    Example:
        >>> f = folds_from_labels_csv("CMU_MOSEI_Labels.csv", level="segment")   # doctest: +SKIP
        >>> [len(f[s]) for s in ("train", "valid", "test")]                      # doctest: +SKIP
        [16327, 1871, 4662]
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} is missing (CMU_MOSEI_Labels.csv with a 'split' column)")
    folds: dict[str, list[str]] = {s: [] for s in SPLITS}
    video_split: dict[str, str] = {}
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        need = {"file", "index", "split"}
        if not need <= set(reader.fieldnames or []):
            raise DataError(f"{path}: needs the columns {sorted(need)}, has {reader.fieldnames}")
        for row_no, row in enumerate(reader, 2):
            code = row["split"].strip()
            if code == "3":
                continue
            split = _SPLIT_ALIASES.get(code)
            if split is None:
                raise DataError(f"{path}, line {row_no}: split {code!r}, expected 0, 1, 2 or 3")
            vid = row["file"]
            if level == "segment":
                folds[split].append(f"{vid}[{int(float(row['index']))}]")
            elif video_split.setdefault(vid, split) != split:
                raise DataError(f"{path}, line {row_no}: video {vid!r} has segments in {video_split[vid]!r} and "
                                f"{split!r}; use level='segment'")
            else:
                folds[split].append(vid)
    if level == "video":
        folds = {s: list(dict.fromkeys(v)) for s, v in folds.items()}
    return folds


def read_folds(folds: Any) -> dict[str, set[str]]:
    """Folds from a mapping {split: ids}, a .json file, s3prl's .csv, or a text file of
    ``<split> <id>`` lines ('#' starts a comment). Ids are video ids or ``<video>[<segment>]``."""
    if folds is None:
        raise DataError("the .csd converter needs folds (CLI: --folds FILE): a text file of '<split> "
                        "<video_id>' lines, a .json {train: [...], valid: [...], test: [...]}, or s3prl's "
                        "CMU_MOSEI_Labels.csv")
    if isinstance(folds, Mapping):
        raw = {str(k): list(v) for k, v in folds.items()}
        where = "folds"
    else:
        p = Path(folds)
        where = str(p)
        if not p.is_file():
            raise DataError(f"{p} (folds) does not exist")
        if p.suffix == ".csv":
            raw = folds_from_labels_csv(p)
        elif p.suffix == ".json":
            try:
                raw = json.loads(p.read_text(encoding="utf-8"))
            except json.JSONDecodeError as e:
                raise DataError(f"{p} is not valid JSON ({e})") from None
            if not isinstance(raw, dict):
                raise DataError(f"{p}: expected {{split: [video ids]}}")
        else:
            raw = {}
            for line_no, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
                line = line.split("#", 1)[0].strip()
                if not line:
                    continue
                parts = line.split()
                if len(parts) != 2:
                    raise DataError(f"{p}, line {line_no}: expected '<split> <video_id>', got {line!r}")
                raw.setdefault(parts[0], []).append(parts[1])
    out: dict[str, set[str]] = {}
    owner: dict[str, str] = {}
    for k, ids in raw.items():
        split = _SPLIT_ALIASES.get(str(k).lower(), str(k).lower())
        if split not in SPLITS:
            raise DataError(f"{where}: split {k!r} is not train/valid/test")
        for i in ids:
            i = str(i)
            if owner.setdefault(i, split) != split:
                raise DataError(f"{where}: {i!r} is in both {owner[i]!r} and {split!r}")
            out.setdefault(split, set()).add(i)
    missing = [s for s in SPLITS if not out.get(s)]
    if missing:
        raise DataError(f"{where}: no ids for split(s) {missing}; every split needs at least one video")
    return out


# ----------------------------------------------------------------------------- conversion


def _resolve(root: Path, given: str | os.PathLike | None, default: str) -> Path:
    p = Path(given) if given is not None else Path(default)
    return p if p.is_absolute() else root / p


def _clean(x: np.ndarray, csd: CSD, video: str, nan_policy: NanPolicy, counter: list[int]) -> np.ndarray:
    bad = ~np.isfinite(x)
    if bad.any():
        if nan_policy == "reject":
            raise DataError(f"{csd.path}, {csd.name}/data/{video}/features has {int(bad.sum())} NaN/inf values "
                            "(COVAREP has -inf); pass nan_policy='zero' (CLI: --nan-policy zero) to set them to "
                            "0 before alignment")
        x = np.where(bad, 0.0, x).astype(np.float32)
        counter[0] += int(bad.sum())
    return x


def _segment_words(words: np.ndarray, seg: np.ndarray, max_len: int | None, truncate: str) -> np.ndarray:
    mid = words.mean(1)
    idx = np.flatnonzero((mid >= seg[0]) & (mid <= seg[1]))
    idx = idx[np.argsort(words[idx, 0], kind="stable")]
    if max_len is not None and len(idx) > max_len:
        idx = idx[:max_len] if truncate == "head" else idx[-max_len:]
    return idx


def read_csd_splits(path: str | os.PathLike, *, folds: Any = None, labels_from: str | os.PathLike | None = None,
                    text: str | None = None, visual: str | None = None, audio: str | None = None,
                    max_len: int | None = 60, truncate: str = "head", threshold: float = 0.0,
                    nan_policy: NanPolicy = "reject") -> dict[str, SplitArrays]:
    """Read the .csd files under `path` into {train, valid, test: SplitArrays} (see module doc)."""
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"{root} is not a directory; pass the directory holding the .csd files")
    if truncate not in ("head", "tail"):
        raise DataError(f"truncate={truncate!r}: expected 'head' or 'tail'")
    fold_sets = read_folds(folds)
    files = {m: _resolve(root, g, DEFAULT_FILES[m]) for m, g in (("text", text), ("visual", visual),
                                                                   ("audio", audio))}
    lab_path = _resolve(root, labels_from, LABELS_FILE)
    seqs: dict[str, CSD] = {}
    try:
        for m, p in files.items():
            seqs[m] = CSD(p, f"{m} features")
        labels = CSD(lab_path, "labels")
        seqs["__labels__"] = labels
        if labels.dim < 1 + len(EMOTIONS):
            raise DataError(f"{lab_path}: labels are {labels.dim}-d; expected sentiment then the 6 emotion "
                            f"intensities {EMOTIONS}")
        return _collect(seqs, fold_sets, max_len, truncate, threshold, nan_policy)
    finally:
        for s in seqs.values():
            s.close()


def _collect(seqs: dict[str, CSD], fold_sets, max_len, truncate, threshold, nan_policy) -> dict[str, SplitArrays]:
    labels = seqs["__labels__"]
    text = seqs["text"]
    others = {m: s for m, s in seqs.items() if m not in ("text", "__labels__")}
    rows: dict[str, dict[str, list]] = {s: {"ids": [], "y": [], **{m: [] for m in ("text", *others)}}
                                        for s in SPLITS}
    stats = {"no_text": 0, "no_words": 0, "no_modality": 0}
    nonfinite = [0]
    for vid in labels.videos:
        lab, seg_iv = labels.get(vid)
        split_of_video = next((s for s in SPLITS if vid in fold_sets[s]), None)
        seg_splits = [split_of_video or next((s for s in SPLITS if f"{vid}[{k}]" in fold_sets[s]), None)
                      for k in range(len(lab))]
        if not any(seg_splits):
            continue
        if vid not in text:
            stats["no_text"] += sum(s is not None for s in seg_splits)
            continue
        tx, words = text.get(vid)
        tx = _clean(tx, text, vid, nan_policy, nonfinite)
        aligned = {}
        for m, csd in others.items():
            if vid in csd:
                x, iv = csd.get(vid)
                aligned[m] = align_to_intervals(words, iv, _clean(x, csd, vid, nan_policy, nonfinite))[0]
        for k, split in enumerate(seg_splits):
            if split is None:
                continue
            idx = _segment_words(words, seg_iv[k], max_len, truncate)
            if idx.size == 0:
                stats["no_words"] += 1
                continue
            r = rows[split]
            r["ids"].append(f"{vid}[{k}]")
            r["y"].append((lab[k, 1:1 + len(EMOTIONS)] > threshold).astype(np.uint8))
            r["text"].append(tx[idx])
            for m, csd in others.items():
                if m in aligned:
                    r[m].append(aligned[m][idx])
                else:
                    r[m].append(np.zeros((0, csd.dim), np.float32))
                    stats["no_modality"] += 1
    if nonfinite[0]:
        warnings.warn(f"set {nonfinite[0]} NaN/inf raw .csd values to 0 before alignment (nan_policy='zero')",
                      stacklevel=3)
    skipped = {k: v for k, v in stats.items() if v}
    if skipped:
        warnings.warn(f".csd conversion: segments without text sequence / without words / modality missing: "
                      f"{skipped}", stacklevel=3)
    dims = {"text": text.dim, **{m: s.dim for m, s in others.items()}}
    return {s: _to_split(s, r, dims) for s, r in rows.items()}


def _to_split(split: str, r: dict, dims: dict[str, int]) -> SplitArrays:
    if not r["ids"]:
        raise DataError(f"no labelled segment with text falls in the {split!r} fold; check that the folds "
                        "name the videos of these .csd files")
    feats, lens = {}, {}
    for m, dim in dims.items():
        feats[m], lens[m] = pad_ragged(r[m], dim)
    return SplitArrays(features=feats, labels=np.stack(r["y"]), lengths=lens, ids=r["ids"])


def _drop_empty(splits: dict[str, SplitArrays]) -> dict[str, SplitArrays]:
    out, dropped = {}, 0
    for name, sa in splits.items():
        keep = sa.labels.sum(1) > 0
        dropped += int((~keep).sum())
        if not keep.any():
            raise DataError(f"every segment of the {name!r} fold has no emotion above the threshold")
        out[name] = SplitArrays({m: x[keep] for m, x in sa.features.items()}, sa.labels[keep],
                                {m: v[keep] for m, v in sa.lengths.items()},
                                [i for i, k in zip(sa.ids or [], keep) if k])
    if dropped:
        warnings.warn(f"dropped {dropped} segments with no emotion present (empty_labels='drop')", stacklevel=3)
    return out


@register_converter('csd', description=("CMU-MOSEI from CMU Multimodal SDK .csd files (word-aligned by overlap averaging, "
                    "6 emotions > 0, standard folds); needs h5py"))
def convert_csd(path: str | os.PathLike, out: str | os.PathLike, *, nan_policy: NanPolicy = "reject",
                overwrite: bool = False, folds: Any = None, labels_from: str | os.PathLike | None = None,
                text: str | None = None, visual: str | None = None, audio: str | None = None,
                max_len: int | None = 60, truncate: str = "head", threshold: float = 0.0,
                empty_labels: Literal["drop", "allow", "reject"] = "drop", name: str | None = None) -> FeatureStore:
    """Convert CMU-MOSEI .csd files in directory `path` into a word-aligned store (see module doc)."""
    if empty_labels not in ("drop", "allow", "reject"):
        raise DataError(f"empty_labels={empty_labels!r}: expected 'drop', 'allow' or 'reject'")
    splits = read_csd_splits(path, folds=folds, labels_from=labels_from, text=text, visual=visual, audio=audio,
                             max_len=max_len, truncate=truncate, threshold=threshold, nan_policy=nan_policy)
    if empty_labels == "drop":
        splits = _drop_empty(splits)
    return write_store(out, splits, EMOTIONS, name=name,
                       source=f"mosei-aligned:CMU SDK .csd ({Path(path).name}, word-aligned)", aligned=True,
                       nan_policy=nan_policy, empty_labels="allow" if empty_labels == "allow" else "reject",
                       overwrite=overwrite)
