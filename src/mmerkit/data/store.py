"""FeatureStore: mmerkit's canonical on-disk format, readable with numpy alone.

Layout (see DESIGN.md)::

    meta.json                  {"format": "mmerkit-store/1", "name", "labels", "modalities",
                                "aligned", "splits", "extras", "source", "created_by"}
    <split>/<modality>.npy     float32 (N, T_max, D), zero padded
    <split>/<modality>_len.npy int32 (N,), valid steps; 0 = modality missing for that sample
    <split>/labels.npy         uint8 (N, L) multi-hot
    <split>/ids.json           optional sample ids
    <split>/extra_<name>.npy   optional float32 (N, D) per-sample side inputs (e.g. personality)

Arrays are opened memory-mapped, so a corpus larger than RAM streams from disk.
Stores are written into a temporary sibling directory and renamed into place, so a crash
never leaves a half-written store behind.

Example:
    >>> import numpy as np, tempfile
    >>> x = np.ones((4, 5, 3), np.float32); y = np.eye(4, 2, dtype=np.uint8); y[2:, 0] = 1
    >>> split = SplitArrays(features={"text": x}, labels=y)
    >>> d = tempfile.mkdtemp() + "/s"
    >>> store = write_store(d, {"train": split, "valid": split, "test": split}, ["a", "b"])
    >>> store.split("train").features["text"].shape
    (4, 5, 3)
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from mmerkit.errors import DataError
from mmerkit.files import atomic_write_text

FORMAT = "mmerkit-store/1"
NanPolicy = Literal["reject", "zero"]
EmptyLabelPolicy = Literal["reject", "allow"]


@dataclass(frozen=True)
class DataSpec:
    """What a model needs to know about its data (no file formats, no sizes of splits)."""

    labels: tuple[str, ...]
    modalities: dict[str, int]  # ordered name -> feature dim
    aligned: bool = True
    max_len: dict[str, int] = field(default_factory=dict)
    extras: dict[str, int] = field(default_factory=dict)

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    @property
    def modality_names(self) -> tuple[str, ...]:
        return tuple(self.modalities)

    def to_dict(self) -> dict:
        return {"labels": list(self.labels), "modalities": dict(self.modalities),
                "aligned": self.aligned, "max_len": dict(self.max_len), "extras": dict(self.extras)}

    @classmethod
    def from_dict(cls, d: Mapping) -> DataSpec:
        return cls(tuple(d["labels"]), dict(d["modalities"]), bool(d.get("aligned", True)),
                   dict(d.get("max_len", {})), dict(d.get("extras", {})))


@dataclass
class SplitArrays:
    """One split in memory, as converters hand it to `write_store`.

    features: modality -> (N, T, D) float array (or (N, D), taken as T = 1).
    lengths: modality -> (N,) valid steps; omitted means every step is valid.
    labels: (N, L) 0/1. ids: optional N sample ids. extras: name -> (N, D) side inputs.
    """

    features: dict[str, np.ndarray]
    labels: np.ndarray
    lengths: dict[str, np.ndarray] = field(default_factory=dict)
    ids: list[str] | None = None
    extras: dict[str, np.ndarray] = field(default_factory=dict)


# ----------------------------------------------------------------------------- writing


def write_store(
    path: str | os.PathLike,
    splits: Mapping[str, SplitArrays],
    labels: list[str] | tuple[str, ...],
    *,
    name: str | None = None,
    source: str = "",
    aligned: bool = True,
    nan_policy: NanPolicy = "reject",
    empty_labels: EmptyLabelPolicy = "reject",
    overwrite: bool = False,
) -> FeatureStore:
    """Validate `splits` and write them as a FeatureStore at `path`, atomically."""
    path = Path(path)
    if nan_policy not in ("reject", "zero"):
        raise DataError(f"nan_policy={nan_policy!r}: expected 'reject' or 'zero' (CLI: --nan-policy)")
    if empty_labels not in ("reject", "allow"):
        raise DataError(f"empty_labels={empty_labels!r}: expected 'reject' or 'allow' (CLI: --empty-labels allow)")
    if path.exists() and not overwrite:
        raise DataError(f"{path} already exists; pass overwrite=True (CLI: --overwrite) "
                        "or choose another --out")
    if path.exists():
        _check_replaceable(path)
    labels = [str(x) for x in labels]
    if len(set(labels)) != len(labels):
        raise DataError(f"duplicate label names in {labels}")
    if not splits:
        raise DataError("no splits given: a store needs at least one split (train/valid/test)")
    dims, extra_dims = _check_splits(splits, labels)
    new_parents = [p for p in path.parents if not p.exists()]  # deepest first; removed on failure
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it 0700; a store follows the umask like any directory
    try:
        split_sizes, max_len = {}, {}
        for split_name, arrays in splits.items():
            n, lens = _write_split(tmp / split_name, split_name, arrays, dims, nan_policy, empty_labels)
            split_sizes[split_name] = n
            for m, t in lens.items():
                max_len[m] = max(max_len.get(m, 0), t)
        meta = {
            "format": FORMAT,
            "name": name or path.name,
            "labels": labels,
            "modalities": {m: {"dim": d, "max_len": max_len[m]} for m, d in dims.items()},
            "extras": {e: {"dim": d} for e, d in extra_dims.items()},
            "aligned": bool(aligned),
            "splits": split_sizes,
            "source": source,
            "created_by": _created_by(),
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        for p in new_parents:  # leave nothing behind, not even the directories made for `path`
            try:
                p.rmdir()
            except OSError:
                break
        raise
    store = FeatureStore(path, check_values=False)
    store.mark_finite()  # every value went through _clean_nonfinite above
    return store


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _check_replaceable(path: Path) -> None:
    """`overwrite` replaces a FeatureStore (or an empty directory), never someone else's files."""
    if path.is_dir() and not any(path.iterdir()):
        return
    try:
        ours = path.is_dir() and json.loads((path / "meta.json").read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        ours = False
    if not ours:
        raise DataError(f"{path} exists and is not a FeatureStore (no meta.json with format {FORMAT!r}); "
                        "overwrite only replaces a store: choose another --out, or remove it yourself")


def _created_by() -> str:
    from mmerkit import __version__

    return f"mmerkit {__version__}"


def _as_3d(x: np.ndarray) -> np.ndarray:
    return x[:, None, :] if x.ndim == 2 else x


def _check_splits(splits: Mapping[str, SplitArrays], labels: list[str]):
    """Check that every split has the same modalities, dims and label count."""
    dims: dict[str, int] | None = None
    extra_dims: dict[str, int] | None = None
    for split_name, arrays in splits.items():
        if not arrays.features:
            raise DataError(f"split {split_name!r} has no modality features")
        here = {}
        for m, x in arrays.features.items():
            x = np.asarray(x) if not isinstance(x, np.ndarray) else x
            if x.ndim not in (2, 3):
                raise DataError(f"split {split_name!r}, modality {m!r}: expected (N, T, D) or (N, D), "
                                f"got shape {tuple(x.shape)}")
            here[m] = int(x.shape[-1])
            if here[m] == 0 or (x.ndim == 3 and x.shape[1] == 0):
                raise DataError(f"split {split_name!r}, modality {m!r} has shape {tuple(x.shape)}: no "
                                f"{'feature dims (D = 0)' if here[m] == 0 else 'time steps (T = 0)'}; drop "
                                "the modality or supply its features")
        if dims is None:
            dims = here
        elif here != dims:
            raise DataError(f"split {split_name!r} has modality dims {here}, but an earlier split has "
                            f"{dims}; every split must carry the same modalities with the same dims")
        ex = {e: int(np.asarray(v).shape[-1]) for e, v in arrays.extras.items()}
        if extra_dims is None:
            extra_dims = ex
        elif ex != extra_dims:
            raise DataError(f"split {split_name!r} has extras {ex}, an earlier split has {extra_dims}")
        lab = np.asarray(arrays.labels)
        if lab.ndim != 2 or lab.shape[1] != len(labels):
            raise DataError(f"split {split_name!r}: labels must be (N, {len(labels)}) for label names "
                            f"{labels}, got shape {tuple(lab.shape)}")
    return dims, extra_dims


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _sample_name(ids, i: int) -> str:
    return f"sample {i}" + (f" (id {ids[i]!r})" if ids is not None else "")


def _write_split(d: Path, split: str, arrays: SplitArrays, dims, nan_policy, empty_labels):
    d.mkdir(parents=True)
    labels = np.asarray(arrays.labels)
    n = labels.shape[0]
    if n == 0:
        raise DataError(f"split {split!r} has zero samples; drop the split or supply samples")
    ids = arrays.ids
    if ids is not None and len(ids) != n:
        raise DataError(f"split {split!r}: {len(ids)} ids for {n} samples")
    if not np.isin(labels, (0, 1)).all():
        i = int(np.argwhere(~np.isin(labels, (0, 1)))[0, 0])
        raise DataError(f"split {split!r}, {_sample_name(ids, i)}: labels must be 0/1, got "
                        f"{labels[i].tolist()}; give a multi-hot matrix, one 0/1 column per label name")
    if empty_labels == "reject" and (labels.sum(1) == 0).any():
        i = int(np.flatnonzero(labels.sum(1) == 0)[0])
        raise DataError(f"split {split!r}, {_sample_name(ids, i)} has an empty label set "
                        f"({_count(int((labels.sum(1) == 0).sum()), 'such sample')}); pass "
                        "empty_labels='allow' (CLI: --empty-labels allow) if that is intended")
    np.save(d / "labels.npy", labels.astype(np.uint8))
    lens_out = {}
    for m in dims:
        x = _as_3d(np.asarray(arrays.features[m]))
        if x.shape[0] != n:
            raise DataError(f"split {split!r}, modality {m!r}: {x.shape[0]} samples but labels has {n}; "
                            "every modality needs one row per sample, in the order of the labels")
        t = x.shape[1]
        lengths = arrays.lengths.get(m)
        lengths = np.full(n, t, np.int64) if lengths is None else np.asarray(lengths).astype(np.int64)
        if lengths.shape != (n,):
            raise DataError(f"split {split!r}, {m}_len: expected shape ({n},), got {lengths.shape}; "
                            "give one length per sample (0 = modality missing)")
        bad = np.flatnonzero((lengths < 0) | (lengths > t))
        if bad.size:
            i = int(bad[0])
            raise DataError(f"split {split!r}, {m}_len of {_sample_name(ids, i)} is {lengths[i]}, "
                            f"outside [0, {t}]: a length counts the valid steps of the sample's {m!r} "
                            f"features (0 = missing) and cannot exceed their T = {t}; fix the lengths")
        if n and not lengths.any():
            raise DataError(f"split {split!r}, modality {m!r}: every sample has {m}_len 0 (missing), so the "
                            "modality carries nothing; drop it or supply its lengths (0 = missing)")
        x = _clean_nonfinite(x.astype(np.float32, copy=True), split, m, ids, nan_policy)
        x[np.arange(t)[None, :] >= lengths[:, None]] = 0.0  # padding is zero by contract
        np.save(d / f"{m}.npy", x)
        np.save(d / f"{m}_len.npy", lengths.astype(np.int32))
        lens_out[m] = t
    for e, v in arrays.extras.items():
        v = np.asarray(v, np.float32)
        if v.shape[0] != n or v.ndim != 2:
            raise DataError(f"split {split!r}, extra {e!r}: expected ({n}, D), got {v.shape}")
        np.save(d / f"extra_{e}.npy", _clean_nonfinite(v, split, f"extra {e}", ids, nan_policy))
    if ids is not None:
        (d / "ids.json").write_text(json.dumps([str(i) for i in ids]))
    return n, lens_out


def _clean_nonfinite(x: np.ndarray, split: str, what: str, ids, policy: NanPolicy) -> np.ndarray:
    bad = ~np.isfinite(x)
    if not bad.any():
        return x
    samples = np.flatnonzero(bad.reshape(len(x), -1).any(1))
    where = f"split {split!r}, modality {what!r}, {_sample_name(ids, int(samples[0]))}"
    if policy == "reject":
        raise DataError(f"{where} contains NaN/inf ({_count(int(bad.sum()), 'value')} in "
                        f"{_count(samples.size, 'sample')}); pass nan_policy='zero' (CLI: --nan-policy zero) to replace them "
                        "with 0")
    warnings.warn(f"{where}: replaced {int(bad.sum())} NaN/inf values in {samples.size} samples by 0",
                  stacklevel=3)
    x[bad] = 0.0
    return x


# ----------------------------------------------------------------------------- value checks

CHUNK_BYTES = 64 * 2**20  # rows of a memory map scanned at a time: bounded memory for any store size


def nonfinite_count(x: np.ndarray) -> tuple[int, int, int | None]:
    """(NaN count, inf count, first sample holding one or None) of an array, read in chunks of
    rows so a memory-mapped array larger than RAM is scanned with bounded memory."""
    per_row = max(int(np.prod(x.shape[1:])) * x.dtype.itemsize, 1)
    step = max(CHUNK_BYTES // per_row, 1)
    nan = inf = 0
    first = None
    for i in range(0, x.shape[0], step):
        block = np.asarray(x[i:i + step])
        is_nan, is_inf = np.isnan(block), np.isinf(block)
        nan += int(is_nan.sum())
        inf += int(is_inf.sum())
        if first is None and (nan or inf):
            rows = (is_nan | is_inf).reshape(len(block), -1).any(1)
            first = i + int(np.flatnonzero(rows)[0])
    return nan, inf, first


def cache_dir() -> Path:
    """Where mmerkit keeps derived files: $MMERKIT_CACHE, else ~/.cache/mmerkit."""
    return Path(os.environ.get("MMERKIT_CACHE", Path.home() / ".cache" / "mmerkit"))


def _value_check_file(path: Path) -> Path | None:
    """The cache file of the NaN/inf scan of the store at `path`: keyed by meta.json and the
    size and modification time of every array, so a rewritten array is scanned again."""
    h = hashlib.sha1((path / "meta.json").read_bytes())
    try:
        for f in sorted(path.glob("*/*.npy")):
            st = f.stat()
            h.update(f"{f.relative_to(path)}:{st.st_size}:{st.st_mtime_ns}".encode())
    except OSError:
        return None
    return cache_dir() / "store-checks" / f"{h.hexdigest()[:20]}.json"


def _write_check_cache(file: Path | None, result: dict) -> None:
    if file is None:
        return
    try:  # best effort: a read-only home or cache only costs a re-scan next time
        atomic_write_text(file, json.dumps(result))
    except OSError:
        pass


# ----------------------------------------------------------------------------- reading


@dataclass
class StoreSplit:
    """Memory-mapped arrays of one split."""

    name: str
    features: dict[str, np.ndarray]
    lengths: dict[str, np.ndarray]
    labels: np.ndarray
    ids: list[str] | None
    extras: dict[str, np.ndarray]

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def sample_id(self, i: int) -> str:
        return self.ids[i] if self.ids is not None else f"{self.name}-{i}"


class FeatureStore:
    """A FeatureStore directory, validated on open; arrays are memory-mapped.

    Example:
        >>> store = FeatureStore("path/to/store")          # doctest: +SKIP
        >>> store.labels, store.modalities, store.splits   # doctest: +SKIP
        >>> store.split("train").features["text"][0]       # doctest: +SKIP
    """

    def __init__(self, path: str | os.PathLike, check_values: bool = True):
        self.path = Path(path)
        self.meta = self._read_meta()
        self._cache: dict[str, StoreSplit] = {}
        for split in self.meta["splits"]:
            self.split(split)  # validates shapes against meta.json
        if check_values:
            self.check_finite()

    # -- values
    def nonfinite(self) -> dict[str, dict[str, list]]:
        """{split: {array: [nan, inf, first bad sample]}} for every features and extras array
        holding NaN/inf (a streamed pass over the memory maps; empty when all are finite)."""
        found: dict[str, dict[str, list]] = {}
        for name in self.splits:
            sp = self.split(name)
            arrays = {**{f"{m}.npy": x for m, x in sp.features.items()},
                      **{f"extra_{e}.npy": v for e, v in sp.extras.items()}}
            for file, x in arrays.items():
                nan, inf, first = nonfinite_count(x)
                if nan or inf:
                    found.setdefault(name, {})[file] = [nan, inf, first]
        return found

    def check_finite(self) -> None:
        """Raise DataError if any feature holds NaN/inf. The scan result is cached (see
        `_value_check_file`), so only the first open of a store reads all of its features."""
        cache = _value_check_file(self.path)
        found = None
        if cache is not None and cache.is_file():
            try:
                found = json.loads(cache.read_text())["nonfinite"]
            except (OSError, ValueError, KeyError, TypeError):
                found = None
        if found is None:
            found = self.nonfinite()
            _write_check_cache(cache, {"store": str(self.path.resolve()), "nonfinite": found})
        if found:
            split, arrays = next(iter(found.items()))
            file, (nan, inf, first) = next(iter(arrays.items()))
            total = sum(a + b for per in found.values() for a, b, _ in per.values())
            raise DataError(f"{self.path / split / file} holds {nan} NaN and {inf} inf values (first in "
                            f"{self.split(split).sample_id(first) if first is not None else 'a sample'}; "
                            f"{total} in the whole store, `mmer data inspect {self.path}` counts them); "
                            "convert the data again with --nan-policy zero to replace them by 0")

    def mark_finite(self) -> None:
        """Record that every value is finite (write_store has just checked them while writing)."""
        _write_check_cache(_value_check_file(self.path), {"store": str(self.path.resolve()), "nonfinite": {}})

    # -- meta
    def _read_meta(self) -> dict:
        meta_path = self.path / "meta.json"
        if not self.path.is_dir():
            raise DataError(f"{self.path} is not a directory; a FeatureStore is a directory made by "
                            "`mmer data synth` or `mmer data convert`")
        if not meta_path.exists():
            raise DataError(f"{meta_path} is missing: {self.path} is not a FeatureStore (made by "
                            "`mmer data synth` or `mmer data convert`)")
        try:
            meta = json.loads(meta_path.read_text())
        except json.JSONDecodeError as e:
            raise DataError(f"{meta_path} is not valid JSON ({e}); the store is damaged, "
                            "convert it again") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            got = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
            raise DataError(f"{meta_path}: format is {got!r}, expected {FORMAT!r}: {self.path} was not "
                            "written by mmerkit (or by an incompatible version); make a store with "
                            "`mmer data convert` or `mmer data synth`")
        for key in ("labels", "modalities", "splits"):
            if key not in meta:
                raise DataError(f"{meta_path} lacks the key {key!r}; convert the store again")
        return meta

    @property
    def name(self) -> str:
        return self.meta.get("name", self.path.name)

    @property
    def labels(self) -> list[str]:
        return list(self.meta["labels"])

    @property
    def modalities(self) -> dict[str, int]:
        return {m: int(v["dim"]) for m, v in self.meta["modalities"].items()}

    @property
    def splits(self) -> dict[str, int]:
        return dict(self.meta["splits"])

    @property
    def aligned(self) -> bool:
        return bool(self.meta.get("aligned", True))

    def spec(self) -> DataSpec:
        return DataSpec(
            labels=tuple(self.labels),
            modalities=self.modalities,
            aligned=self.aligned,
            max_len={m: int(v.get("max_len", 0)) for m, v in self.meta["modalities"].items()},
            extras={e: int(v["dim"]) for e, v in self.meta.get("extras", {}).items()},
        )

    # -- splits
    def split(self, name: str) -> StoreSplit:
        if name not in self._cache:
            if name not in self.meta["splits"]:
                from mmerkit.registry import did_you_mean

                raise DataError(f"store {self.path} has no split {name!r}."
                                f"{did_you_mean(name, list(self.meta['splits']))} "
                                f"Splits: {', '.join(self.meta['splits'])}")
            self._cache[name] = self._open_split(name)
        return self._cache[name]

    def _load(self, file: Path, shape_hint: str, kinds: str = "f") -> np.ndarray:
        """Memory-map `file`; `kinds` are the numpy dtype kinds it may have (f float, i/u int, b bool)."""
        if not file.exists():
            raise DataError(f"{file} is missing from the store ({shape_hint}); convert the store again")
        try:
            arr = np.load(file, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise DataError(f"{file} is truncated or not a .npy file ({e}); convert the store again") from None
        if arr.dtype.kind not in kinds:
            raise DataError(f"{file} has dtype {arr.dtype}, expected {shape_hint}: it was not written by "
                            "mmerkit; convert the store again")
        return arr

    def _open_split(self, name: str) -> StoreSplit:
        d = self.path / name
        n = int(self.meta["splits"][name])
        L = len(self.labels)
        labels = self._load(d / "labels.npy", f"uint8 ({n}, {L})", "iub")
        self._expect(labels, (n, L), d / "labels.npy")
        self._check_labels(labels, d / "labels.npy")
        feats, lens = {}, {}
        for m, dim in self.modalities.items():
            x = self._load(d / f"{m}.npy", f"float32 ({n}, T, {dim})")
            if x.ndim != 3 or x.shape[0] != n or x.shape[2] != dim:
                raise DataError(f"{d / f'{m}.npy'} has shape {x.shape}, but meta.json says ({n}, T, {dim}); "
                                "the store is inconsistent, convert it again")
            if x.shape[1] == 0 or dim == 0:
                raise DataError(f"{d / f'{m}.npy'} has shape {x.shape}: a modality needs T >= 1 and D >= 1; "
                                "convert the store again without that modality")
            ln = self._load(d / f"{m}_len.npy", f"int32 ({n},)", "iu")
            self._expect(ln, (n,), d / f"{m}_len.npy")
            if ln.size and not np.asarray(ln).any():
                raise DataError(f"{d / f'{m}_len.npy'}: every sample has length 0 ({m!r} missing for the whole "
                                f"{name!r} split); convert the store again without {m!r}, or with its features")
            if ln.size and (ln.min() < 0 or ln.max() > x.shape[1]):
                i = int(np.flatnonzero((ln < 0) | (ln > x.shape[1]))[0])
                raise DataError(f"{d / f'{m}_len.npy'}: sample {i} has length {ln[i]}, outside "
                                f"[0, {x.shape[1]}] (T of {m}.npy); the store is inconsistent, convert it again")
            feats[m], lens[m] = x, ln
        extras = {}
        for e, info in self.meta.get("extras", {}).items():
            v = self._load(d / f"extra_{e}.npy", f"float32 ({n}, {info['dim']})")
            self._expect(v, (n, int(info["dim"])), d / f"extra_{e}.npy")
            extras[e] = v
        ids = None
        if (d / "ids.json").exists():
            ids = json.loads((d / "ids.json").read_text())
            if len(ids) != n:
                raise DataError(f"{d / 'ids.json'} lists {len(ids)} ids, meta.json says {n} samples")
        return StoreSplit(name, feats, lens, labels, ids, extras)

    @staticmethod
    def _expect(arr: np.ndarray, shape: tuple, file: Path) -> None:
        if tuple(arr.shape) != shape:
            raise DataError(f"{file} has shape {tuple(arr.shape)}, but meta.json implies {shape}; "
                            "the store is inconsistent, convert it again")

    @staticmethod
    def _check_labels(labels: np.ndarray, file: Path) -> None:
        # O(N * L) bytes: cheap even for big corpora, unlike a scan of the features
        bad = ~np.isin(labels, (0, 1))
        if bad.any():
            i = int(np.argwhere(bad)[0, 0])
            raise DataError(f"{file}: sample {i} has labels {np.asarray(labels[i]).tolist()}, "
                            "expected 0/1 multi-hot; convert the store again")

    def __repr__(self) -> str:
        return (f"FeatureStore({str(self.path)!r}, labels={self.labels}, modalities={self.modalities}, "
                f"splits={self.splits})")
