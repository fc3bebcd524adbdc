"""A user's own features -> FeatureStore: in-memory arrays, an ``.npz``, or a CSV/JSONL manifest.

Any number of modalities (one or many), any dims, variable lengths, any label set. Every
inconsistency raises a DataError that names the file, the row or sample id, and the fix.

**Arrays** (`from_arrays`): ``features`` maps a modality to an (N, T, D) array, an (N, D) array
(one utterance-level vector per sample), or a list of N arrays of shape (T_i, D) / (D,) / None
(None or T_i = 0: the modality is missing for that sample). ``labels`` is (N, L) 0/1 with
``label_names``, or a list of N lists of label names. ``split`` holds train / valid / test per
sample (dev, val and validation mean valid).

**.npz** (`from_npz`)::

    <modality>        float (N, T, D) or (N, D)       one array per modality, named by it
    <modality>_len    int (N,)                         optional valid lengths (0 = missing)
    labels            (N, L) 0/1
    label_names       (L,) str
    split             (N,) str: train / valid / test
    ids               (N,) str, optional

**Manifest** (`from_manifest`, ``.csv`` or ``.jsonl``): one row per sample with ``id``,
``split``, ``labels`` (names separated by ``;`` in CSV, a list in JSONL) and one column per
modality holding the path of a ``.npy`` of shape (T, D) or (D,), relative to the manifest. An
empty cell (or null) marks the modality missing for that sample. Label order: ``label_names``
if given (then any other name is an error), else the sorted names found.

Example:
    >>> import numpy as np, tempfile
    >>> x = np.random.default_rng(0).normal(size=(6, 4)).astype("float32")
    >>> y = [["joy"], ["anger"], ["joy", "anger"], ["joy"], ["anger"], ["joy"]]
    >>> split = ["train", "train", "valid", "valid", "test", "test"]
    >>> s = from_arrays({"audio": x}, y, split, tempfile.mkdtemp() + "/s")
    >>> s.labels, s.splits
    (['anger', 'joy'], {'train': 2, 'valid': 2, 'test': 2})
"""

from __future__ import annotations

import csv
import json
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mmerkit.data.converters import register_converter
from mmerkit.data.store import EmptyLabelPolicy, FeatureStore, NanPolicy, SplitArrays, write_store
from mmerkit.errors import DataError

SPLITS = ("train", "valid", "test")
SPLIT_ALIASES = {"train": "train", "valid": "valid", "dev": "valid", "val": "valid", "validation": "valid",
                 "test": "test"}
_NPZ_RESERVED = {"labels", "label_names", "split", "ids"}
_MANIFEST_RESERVED = ("id", "split", "labels")

RowName = Callable[[int], str]


def _default_row_name(ids: Sequence[str] | None) -> RowName:
    return lambda i: f"sample {i}" + (f" (id {ids[i]!r})" if ids is not None else "")


# ----------------------------------------------------------------------------- shared assembly


def _dense(m: str, x: Any, n: int, where: str, row: RowName) -> tuple[np.ndarray, np.ndarray | None]:
    """Modality input -> ((N, T, D) float32, lengths or None)."""
    if isinstance(x, np.ndarray) and x.dtype != object:
        if x.ndim not in (2, 3) or x.shape[0] != n:
            raise DataError(f"{where}: modality {m!r} has shape {tuple(x.shape)}, expected ({n}, T, D) or ({n}, D) "
                            f"for {n} samples")
        if not np.issubdtype(x.dtype, np.number):
            raise DataError(f"{where}: modality {m!r} has dtype {x.dtype}; features must be numbers")
        return (x[:, None, :] if x.ndim == 2 else x).astype(np.float32, copy=False), None
    seqs = list(x)
    if len(seqs) != n:
        raise DataError(f"{where}: modality {m!r} has {len(seqs)} entries for {n} samples")
    dim, mats = None, []
    for i, s in enumerate(seqs):
        if s is None:
            mats.append(None)
            continue
        a = np.asarray(s)
        if a.ndim == 1:
            a = a[None, :]
        if a.ndim != 2 or not np.issubdtype(a.dtype, np.number):
            raise DataError(f"{where}: {row(i)}, modality {m!r}: expected a (T, D) or (D,) numeric array, got "
                            f"shape {tuple(a.shape)} dtype {a.dtype}")
        if dim is None:
            dim = a.shape[1]
        elif a.shape[1] != dim:
            raise DataError(f"{where}: {row(i)}, modality {m!r} is {a.shape[1]}-d but earlier samples are "
                            f"{dim}-d; every sample of a modality needs the same dim (re-extract it)")
        mats.append(a)
    if dim is None:
        raise DataError(f"{where}: modality {m!r} is missing for every sample; drop it")
    lens = np.array([0 if a is None else len(a) for a in mats], np.int64)
    out = np.zeros((n, max(int(lens.max()), 1), dim), np.float32)
    for i, a in enumerate(mats):
        if a is not None and len(a):
            out[i, : len(a)] = a
    return out, lens


def _truncate(x: np.ndarray, lens: np.ndarray, max_len: int | None, truncate: str):
    if max_len is None or x.shape[1] <= max_len:
        return x, lens
    if truncate == "head":
        return x[:, :max_len], np.minimum(lens, max_len)
    start = np.maximum(lens - max_len, 0)
    idx = start[:, None] + np.arange(max_len)[None, :]
    return np.take_along_axis(x, idx[:, :, None], axis=1), np.minimum(lens, max_len)


def _split_values(split: Any, n: int, where: str, row: RowName) -> np.ndarray:
    vals = np.asarray(split).reshape(-1)
    if len(vals) != n:
        raise DataError(f"{where}: 'split' has {len(vals)} values for {n} samples")
    out = np.empty(n, dtype=object)
    for i, v in enumerate(vals):
        text = str(v.decode() if isinstance(v, bytes) else v)
        key = text.strip().lower()
        if key not in SPLIT_ALIASES:
            raise DataError(f"{where}: {row(i)} has split {text!r}; use train, valid or test (dev/val are read "
                            "as valid)")
        out[i] = SPLIT_ALIASES[key]
    missing = [s for s in SPLITS if not (out == s).any()]
    if missing:
        raise DataError(f"{where}: no sample in split(s) {missing}; assign some rows to "
                        f"{' and '.join(missing)} (training needs train, valid and test)")
    return out


def _labels_matrix(labels: Any, label_names: Sequence[str] | None, n: int, where: str, row: RowName):
    """(N, L) 0/1 or N lists of names -> (uint8 (N, L), names)."""
    if isinstance(label_names, str):
        label_names = [s.strip() for s in label_names.split(",") if s.strip()]
    try:
        arr = np.asarray(labels)
    except ValueError:  # ragged lists of names
        arr = None
    if arr is not None and arr.ndim == 2 and arr.dtype.kind in "biuf":
        if label_names is None:
            raise DataError(f"{where}: labels are a 0/1 matrix; pass label_names (one per column)")
        names = [str(x) for x in label_names]
        if arr.shape != (n, len(names)):
            raise DataError(f"{where}: labels have shape {tuple(arr.shape)}, expected ({n}, {len(names)}) for "
                            f"label_names {names}")
        bad = np.argwhere(~np.isin(arr, (0, 1)))
        if bad.size:
            i = int(bad[0, 0])
            raise DataError(f"{where}: {row(i)} has labels {np.asarray(arr[i]).tolist()}; labels must be 0/1")
        return arr.astype(np.uint8), names
    sets = [[lab] if isinstance(lab, str) else list(lab) for lab in labels]
    if len(sets) != n:
        raise DataError(f"{where}: {len(sets)} label sets for {n} samples")
    names = ([str(x) for x in label_names] if label_names is not None
             else sorted({str(x) for s in sets for x in s}))
    if not names:
        raise DataError(f"{where}: no label names found; every sample has an empty label set")
    index = {nm: j for j, nm in enumerate(names)}
    y = np.zeros((n, len(names)), np.uint8)
    for i, s in enumerate(sets):
        for lab in s:
            j = index.get(str(lab))
            if j is None:
                raise DataError(f"{where}: {row(i)} has label {lab!r}, which is not in label_names {names}; fix "
                                "the label or add it to label_names")
            y[i, j] = 1
    if label_names is None:
        _warn_inferred_labels(names, y.sum(0), where)
    return y, names


def _warn_inferred_labels(names: list[str], counts: np.ndarray, where: str) -> None:
    """Without label_names every name found becomes a label, so a typo ('happyy') would silently
    be a new label: say which labels were found, how often, and which look like typos."""
    import difflib

    listed = ", ".join(f"{nm} {int(c)}" for nm, c in zip(names, counts))
    suspects = []
    for nm, c in zip(names, counts):
        close = [o for o, oc in zip(names, counts) if o != nm and oc > c
                 and difflib.SequenceMatcher(None, nm.lower(), o.lower()).ratio() >= 0.8]
        if close:
            suspects.append(f"{nm!r} ({int(c)} sample{'' if c == 1 else 's'}) looks like a typo of {close[0]!r}")
    note = f"; {'; '.join(suspects)}" if suspects else ""
    warnings.warn(f"{where}: no label_names given, so the labels are the {len(names)} names found (samples per "
                  f"label: {listed}){note}. Pass label_names (CLI: --label-names a,b,c) to fix the label set; "
                  "a name outside it is then an error", stacklevel=4)


def _check_ids(ids: Sequence[Any] | None, n: int, where: str, row: RowName) -> list[str] | None:
    if ids is None:
        return None
    ids = [str(i.decode() if isinstance(i, bytes) else i) for i in np.asarray(ids).reshape(-1)]
    if len(ids) != n:
        raise DataError(f"{where}: {len(ids)} ids for {n} samples")
    first: dict[str, int] = {}
    for i, s in enumerate(ids):
        if s in first:
            raise DataError(f"{where}: id {s!r} appears twice ({row(first[s])} and {row(i)}); ids must be unique")
        first[s] = i
    return ids


def _assemble(features: Mapping[str, Any], labels: Any, split: Any, *, label_names, ids, lengths, where: str,
              row: RowName | None, max_len: int | None, truncate: str) -> tuple[dict[str, SplitArrays], list[str], bool]:
    if not features:
        raise DataError(f"{where}: no modality features; give at least one modality")
    if truncate not in ("head", "tail"):
        raise DataError(f"truncate={truncate!r}: expected 'head' or 'tail'")
    n = len(split) if not isinstance(split, np.ndarray) else int(split.reshape(-1).shape[0])
    if n == 0:
        raise DataError(f"{where}: no samples")
    ids = _check_ids(ids, n, where, row or _default_row_name(None))
    row = row or _default_row_name(ids)
    y, names = _labels_matrix(labels, label_names, n, where, row)
    sv = _split_values(split, n, where, row)
    dense, lens = {}, {}
    for m, x in features.items():
        arr, ln = _dense(m, x, n, where, row)
        given = (lengths or {}).get(m)
        if given is not None:
            ln = np.asarray(given).reshape(-1).astype(np.int64)
            if ln.shape != (n,):
                raise DataError(f"{where}: {m}_len has shape {ln.shape}, expected ({n},)")
            bad = np.flatnonzero((ln < 0) | (ln > arr.shape[1]))
            if bad.size:
                i = int(bad[0])
                raise DataError(f"{where}: {row(i)} has {m}_len {ln[i]}, outside [0, {arr.shape[1]}]")
        if ln is None:
            ln = np.full(n, arr.shape[1], np.int64)
        dense[m], lens[m] = _truncate(arr, ln, max_len, truncate)
    all_lens = list(lens.values())
    aligned = all(np.array_equal(all_lens[0], v) for v in all_lens[1:])
    splits = {}
    for s in SPLITS:
        k = sv == s
        splits[s] = SplitArrays(features={m: x[k] for m, x in dense.items()}, labels=y[k],
                                lengths={m: v[k] for m, v in lens.items()},
                                ids=None if ids is None else [i for i, kk in zip(ids, k) if kk])
    return splits, names, aligned


def _write(splits, names, aligned, out, *, source, name, nan_policy, empty_labels, overwrite) -> FeatureStore:
    return write_store(out, splits, names, name=name, source=source, aligned=aligned, nan_policy=nan_policy,
                       empty_labels=empty_labels, overwrite=overwrite)


# ----------------------------------------------------------------------------- public entry points


def from_arrays(features: Mapping[str, Any], labels: Any, split: Sequence[str] | np.ndarray,
                out: str | os.PathLike, *, label_names: Sequence[str] | None = None,
                ids: Sequence[Any] | None = None, lengths: Mapping[str, Any] | None = None,
                nan_policy: NanPolicy = "reject", empty_labels: EmptyLabelPolicy = "reject",
                overwrite: bool = False, max_len: int | None = None, truncate: str = "head",
                aligned: bool | None = None, name: str | None = None,
                source: str = "custom:arrays") -> FeatureStore:
    """In-memory features and labels -> store at `out` (see module doc for the accepted shapes)."""
    splits, names, same = _assemble(features, labels, split, label_names=label_names, ids=ids, lengths=lengths,
                                    where="from_arrays", row=None, max_len=max_len, truncate=truncate)
    return _write(splits, names, same if aligned is None else aligned, out, source=source, name=name,
                  nan_policy=nan_policy, empty_labels=empty_labels, overwrite=overwrite)


def _check_zip_magic(path: Path) -> None:
    """An .npz is a zip archive; anything else (a text file, a bare .npy) gets its own message
    instead of numpy's guess that it holds pickled data."""
    with open(path, "rb") as f:
        head = f.read(6)
    if head.startswith(b"PK"):
        return
    what = "a single .npy array" if head.startswith(b"\x93NUMPY") else f"a file starting with {head!r}"
    raise DataError(f"{path} is not an .npz archive (it is {what}); write it with np.savez(path, text=..., "
                    "labels=..., label_names=..., split=...) (see docs/datasets.md)")


def read_npz(path: str | os.PathLike) -> dict[str, Any]:
    """The arrays of a custom .npz, checked for the keys `from_npz` needs."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} does not exist")
    _check_zip_magic(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except ValueError as e:
        raise DataError(f"{path}: cannot read it without pickle ({e}); save strings as numpy str arrays "
                        "(np.array([...], dtype=str)), not objects") from None
    except (OSError, EOFError) as e:
        raise DataError(f"{path} is not a readable .npz ({e})") from None
    for key in ("labels", "label_names", "split"):
        if key not in arrays:
            raise DataError(f"{path} has no {key!r} array; a custom .npz needs labels (N, L), label_names (L,), "
                            f"split (N,) and one array per modality (found {sorted(arrays)})")
    return arrays


def from_npz(path: str | os.PathLike, out: str | os.PathLike, *, nan_policy: NanPolicy = "reject",
             empty_labels: EmptyLabelPolicy = "reject", overwrite: bool = False, max_len: int | None = None,
             truncate: str = "head", aligned: bool | None = None, name: str | None = None) -> FeatureStore:
    """A custom .npz (layout in the module doc) -> store at `out`."""
    path = Path(path)
    arrays = read_npz(path)
    mods = [k for k in arrays if k not in _NPZ_RESERVED and not k.endswith("_len")]
    orphans = [k for k in arrays if k.endswith("_len") and k[:-4] not in mods and k not in _NPZ_RESERVED]
    if orphans:
        raise DataError(f"{path}: {orphans} have no matching modality array {[k[:-4] for k in orphans]}")
    if not mods:
        raise DataError(f"{path}: no modality arrays (every key other than labels, label_names, split, ids and "
                        "*_len is a modality)")
    lengths = {m: arrays[f"{m}_len"] for m in mods if f"{m}_len" in arrays}
    where = str(path)
    splits, names, same = _assemble({m: arrays[m] for m in mods}, arrays["labels"], arrays["split"],
                                    label_names=[str(x) for x in np.asarray(arrays["label_names"]).reshape(-1)],
                                    ids=arrays.get("ids"), lengths=lengths, where=where, row=None,
                                    max_len=max_len, truncate=truncate)
    return _write(splits, names, same if aligned is None else aligned, out, source=f"custom:{path.name}",
                  name=name, nan_policy=nan_policy, empty_labels=empty_labels, overwrite=overwrite)


def read_manifest(path: str | os.PathLike) -> tuple[list[dict[str, Any]], list[str], Callable[[int], int]]:
    """Rows of a CSV or JSONL manifest, its modality columns, and the file line of each row."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} (manifest) does not exist")
    suffix = path.suffix.lower()
    rows: list[dict[str, Any]] = []
    lines: list[int] = []
    if suffix == ".csv":
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            cols = list(reader.fieldnames or [])
            for rec in reader:
                rows.append(rec)
                lines.append(reader.line_num)
        missing = [c for c in _MANIFEST_RESERVED if c not in cols]
        if missing:
            raise DataError(f"{path}: the header lacks column(s) {missing}; a manifest needs id, split, labels "
                            f"and one column per modality (header: {cols})")
        mods = [c for c in cols if c not in _MANIFEST_RESERVED]
    elif suffix in (".jsonl", ".ndjson"):
        mods = []
        for line_no, text in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not text.strip():
                continue
            try:
                rec = json.loads(text)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}, line {line_no}: not valid JSON ({e})") from None
            if not isinstance(rec, dict):
                raise DataError(f"{path}, line {line_no}: expected an object per line")
            for c in _MANIFEST_RESERVED:
                if c not in rec:
                    raise DataError(f"{path}, line {line_no}: missing key {c!r} (every line needs id, split, labels)")
            mods.extend(k for k in rec if k not in _MANIFEST_RESERVED and k not in mods)
            rows.append(rec)
            lines.append(line_no)
    else:
        raise DataError(f"{path}: a manifest must be .csv or .jsonl, got {suffix or 'no suffix'!r}")
    if not rows:
        raise DataError(f"{path}: the manifest has no rows")
    if not mods:
        raise DataError(f"{path}: no modality columns (every column besides id, split, labels names a modality "
                        "and holds .npy paths)")
    return rows, mods, lambda i: lines[i]


def _load_npy(base: Path, cell: Any, where: str) -> np.ndarray | None:
    if cell is None or (isinstance(cell, str) and not cell.strip()):
        return None
    p = Path(str(cell).strip())
    p = p if p.is_absolute() else base / p
    if not p.is_file():
        raise DataError(f"{where}: file {p} does not exist; fix the path (relative to the manifest's folder) or "
                        "leave the cell empty to mark the modality missing")
    try:
        a = np.load(p, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise DataError(f"{where}: {p} is not a readable .npy ({e})") from None
    if a.ndim not in (1, 2) or not np.issubdtype(a.dtype, np.number):
        raise DataError(f"{where}: {p} has shape {tuple(a.shape)} dtype {a.dtype}; expected a numeric (T, D) or "
                        "(D,) array")
    return a


def from_manifest(path: str | os.PathLike, out: str | os.PathLike, *, label_names: Sequence[str] | None = None,
                  nan_policy: NanPolicy = "reject", empty_labels: EmptyLabelPolicy = "reject",
                  overwrite: bool = False, max_len: int | None = None, truncate: str = "head",
                  aligned: bool | None = None, name: str | None = None) -> FeatureStore:
    """A CSV/JSONL manifest of .npy paths (layout in the module doc) -> store at `out`."""
    path = Path(path)
    rows, mods, line_of = read_manifest(path)
    ids = [str(r.get("id", "")).strip() for r in rows]
    for i, s in enumerate(ids):
        if not s:
            raise DataError(f"{path}, line {line_of(i)}: empty id; every row needs a unique id")

    def row(i: int) -> str:
        return f"line {line_of(i)} (id {ids[i]!r})"

    base = path.parent
    feats = {m: [_load_npy(base, r.get(m), f"{path}, {row(i)}, column {m!r}") for i, r in enumerate(rows)]
             for m in mods}
    labels = []
    for i, r in enumerate(rows):
        v = r.get("labels")
        if isinstance(v, str):
            labels.append([s.strip() for s in v.split(";") if s.strip()])
        elif isinstance(v, list):
            labels.append([str(s) for s in v])
        elif v is None:
            labels.append([])
        else:
            raise DataError(f"{path}, {row(i)}: labels must be a list of names (JSONL) or names separated by ';' "
                            f"(CSV), got {v!r}")
    splits, names, same = _assemble(feats, labels, [r.get("split", "") for r in rows], label_names=label_names,
                                    ids=ids, lengths=None, where=str(path), row=row, max_len=max_len,
                                    truncate=truncate)
    return _write(splits, names, same if aligned is None else aligned, out, source=f"custom:{path.name}",
                  name=name, nan_policy=nan_policy, empty_labels=empty_labels, overwrite=overwrite)


@register_converter('custom', description=("your own features: an .npz (one array per modality + labels, label_names, split) "
                    "or a CSV/JSONL manifest of .npy paths"))
def convert_custom(path: str | os.PathLike, out: str | os.PathLike, *, nan_policy: NanPolicy = "reject",
                   overwrite: bool = False, label_names: Sequence[str] | None = None,
                   empty_labels: EmptyLabelPolicy = "reject", max_len: int | None = None, truncate: str = "head",
                   aligned: bool | None = None, name: str | None = None) -> FeatureStore:
    """Dispatch on the suffix: ``.npz`` -> `from_npz`, ``.csv`` / ``.jsonl`` -> `from_manifest`."""
    suffix = Path(path).suffix.lower()
    common = dict(nan_policy=nan_policy, overwrite=overwrite, empty_labels=empty_labels, max_len=max_len,
                  truncate=truncate, aligned=aligned, name=name)
    if suffix == ".npz":
        if label_names is not None:
            raise DataError(f"{path}: an .npz carries its own label_names; drop the label_names option")
        return from_npz(path, out, **common)
    if suffix in (".csv", ".jsonl", ".ndjson"):
        return from_manifest(path, out, label_names=label_names, **common)
    raise DataError(f"{path}: custom data must be an .npz or a .csv/.jsonl manifest (see docs/datasets.md)")
