"""CMU-MOSEI converters: the aligned TAILOR/CARAT `.pt` and the unaligned MulT `.pkl` -> FeatureStore.

Aligned (`train_valid_test.pt`, shared by TAILOR, AMP, CARAT and RAMer): a torch pickle holding
``{"train"|"valid"|"test": {"src-text": (N, T, 300), "src-visual": (N, T, 35),
"src-audio": (N, T, 74), "tgt": [[2, id, ..., 3], ...]}}`` plus keys such as ``"dict"`` and
``"settings"`` that are ignored.  Label tokens 4..9 are happy, sad, anger, surprise, disgust,
fear (store index 0..5); the first (<s> = 2) and last (</s> = 3) token of each list are dropped.

Unaligned (`mosei_senti_data_noalign.pkl` from MulT): a plain pickle with per split
``"text"`` (N, 50, 300), ``"vision"`` (N, 500, 35), ``"audio"`` (N, 500, 74); its own labels are
sentiment only, so the emotion labels come from the aligned `.pt` of the same split, by index,
exactly as the authors' loaders do.  Unlike them we check that the split sizes agree.

Both: audio ``-inf`` values become 0, as every reference loader does (COVAREP writes -inf for
log-energies of silent frames; ``audio[audio == -inf] = 0``).  Any other NaN/inf goes through
`nan_policy` ("reject" or "zero").  Every sample is stored with its full length, because the
authors' masks are all ones.  Store modalities are named text / visual / audio.

Loading a pickle can execute code stored in the file, so each converter warns: only convert
files from a source you trust.

Example:
    >>> store = convert_mosei_aligned("data/train_valid_test.pt", "stores/mosei")  # doctest: +SKIP
    >>> store.splits                                                             # doctest: +SKIP
    {'train': 16326, 'valid': 1871, 'test': 4659}
"""

from __future__ import annotations

import os
import pickle
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from mmerkit.data.converters import register_converter
from mmerkit.data.padding import pad_ragged
from mmerkit.data.store import EmptyLabelPolicy, FeatureStore, SplitArrays, write_store
from mmerkit.errors import DataError

LABELS = ("happy", "sad", "anger", "surprise", "disgust", "fear")
BOS, EOS = 2, 3
TOKEN_TO_INDEX = {4 + i: i for i in range(len(LABELS))}
DIMS = {"text": 300, "visual": 35, "audio": 74}
SPLITS = ("train", "valid", "test")
ALIGNED_KEYS = {"text": "src-text", "visual": "src-visual", "audio": "src-audio"}
UNALIGNED_KEYS = {"text": "text", "visual": "vision", "audio": "audio"}
UNALIGNED_SPLIT_KEYS = {"train": ("train",), "valid": ("valid", "dev"), "test": ("test",)}
# what a foreign or truncated pickle raises (not MemoryError: that is no fault of the file)
_UNREADABLE = (pickle.UnpicklingError, EOFError, RuntimeError, ValueError, OSError, AttributeError,
               ImportError, KeyError, IndexError, TypeError, UnicodeDecodeError)
_VOCAB = ", ".join(f"{t}={name}" for t, name in zip(TOKEN_TO_INDEX, LABELS))


# ----------------------------------------------------------------------------- loading


def _warn_pickle(path: Path) -> None:
    warnings.warn(f"loading {path.name} unpickles it, which can execute code stored in the file; "
                  "only convert files from a source you trust", UserWarning, stacklevel=4)


def _require_file(path: Path, what: str) -> None:
    if not path.is_file():
        raise DataError(f"{path} does not exist or is not a file; pass the path of {what}")


def _load_torch(path: Path) -> Mapping:
    """torch.load a trusted MOSEI `.pt` (numpy arrays inside need weights_only=False)."""
    import torch

    _require_file(path, "the aligned CMU-MOSEI train_valid_test.pt")
    _warn_pickle(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except _UNREADABLE as e:
        raise DataError(f"{path} could not be read as a torch pickle ({type(e).__name__}: {e}); "
                        "it is truncated or not the aligned MOSEI train_valid_test.pt: "
                        "download it again") from None
    return _as_mapping(obj, path)


def _load_pickle(path: Path, what: str = "MulT's unaligned CMU-MOSEI mosei_senti_data_noalign.pkl") -> Mapping:
    """Unpickle a corpus file after the warning; `what` names the file the user should pass."""
    _require_file(path, what)
    _warn_pickle(path)
    try:
        with open(path, "rb") as f:
            obj = pickle.load(f)
    except _UNREADABLE as e:
        raise DataError(f"{path} could not be read as a pickle ({type(e).__name__}: {e}); "
                        f"it is truncated or not {what}: download it again") from None
    return _as_mapping(obj, path)


def _as_mapping(obj: Any, path: Path) -> Mapping:
    if not isinstance(obj, Mapping):
        raise DataError(f"{path.name} holds a {type(obj).__name__}, expected a dict with keys "
                        f"{list(SPLITS)}; is it the right file?")
    return obj


def _get_split(data: Mapping, path: Path, split: str, aliases: tuple[str, ...]) -> Mapping:
    for key in aliases:
        if key in data:
            sd = data[key]
            if not isinstance(sd, Mapping):
                raise DataError(f"{path.name}: key {key!r} holds a {type(sd).__name__}, expected a "
                                "dict of arrays; is it the right file?")
            return sd
    names = " or ".join(repr(k) for k in aliases)
    raise DataError(f"{path.name} has no split key {names} (keys: {_keys(data)}); "
                    f"a MOSEI file needs the {split} split")


def _keys(d: Mapping) -> str:
    return ", ".join(repr(k) for k in list(d)[:12])


# ----------------------------------------------------------------------------- arrays


def _features(sd: Mapping, key: str, path: Path, split: str, dim: int):
    """(N, T, dim) array (the file's own if possible, no copy) and its lengths or None."""
    where = f"{path.name}, split {split!r}, key {key!r}"
    if key not in sd:
        raise DataError(f"{path.name}: split {split!r} has no key {key!r} (keys: {_keys(sd)}); "
                        "is it the right MOSEI file?")
    x, lengths = _stack(sd[key], where)
    if x.ndim != 3 or x.shape[2] != dim:
        raise DataError(f"{where}: expected (N, T, {dim}) features, got shape {tuple(x.shape)}; "
                        "the file is not in the CMU-MOSEI layout")
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise DataError(f"{where}: features have dtype {x.dtype}, expected numbers")
    return x, lengths


def _stack(value: Any, where: str):
    """A stacked array, a tensor, or a list of (T, D) arrays -> (N, T_max, D) plus lengths."""
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray) and value.dtype != object:
        return value, None
    try:
        items = [np.asarray(v.detach().cpu().numpy() if hasattr(v, "detach") else v)
                 for v in value]
    except TypeError:
        raise DataError(f"{where}: expected an array or a list of arrays, got "
                        f"{type(value).__name__}") from None
    if not items:
        raise DataError(f"{where} is empty")
    bad = [i for i, v in enumerate(items) if v.ndim != 2 or v.shape[1] != items[0].shape[1]]
    if bad:
        raise DataError(f"{where}, sample {bad[0]}: shape {items[bad[0]].shape}, expected (T, "
                        f"{items[0].shape[-1]}) like sample 0")
    out, lengths = pad_ragged(items, items[0].shape[1], min_steps=0)
    return out, (None if (lengths == lengths[0]).all() else lengths)


def _zero_neg_inf(x: np.ndarray, chunk: int = 512) -> np.ndarray:
    """audio[audio == -inf] = 0, like the reference loaders; in place, in chunks of samples."""
    if not np.issubdtype(x.dtype, np.floating):
        return x
    if not x.flags.writeable:
        x = x.copy()
    for i in range(0, len(x), chunk):
        part = x[i:i + chunk]
        part[np.isneginf(part)] = 0
    return x


def parse_targets(tgt: Any, where: str, empty_labels: str = "reject") -> np.ndarray:
    """Token lists [2, id, ..., 3] (ids 4..9) -> (N, 6) uint8 multi-hot in LABELS order.

    Example:
        >>> parse_targets([[2, 4, 6, 3], [2, 9, 3]], "x").tolist()
        [[1, 0, 1, 0, 0, 0], [0, 0, 0, 0, 0, 1]]
    """
    try:
        rows = [[int(t) for t in seq] for seq in tgt]
    except (TypeError, ValueError) as e:
        raise DataError(f"{where}: expected a list of integer token lists ({e})") from None
    y = np.zeros((len(rows), len(LABELS)), np.uint8)
    for i, toks in enumerate(rows):
        if len(toks) < 2 or toks[0] != BOS or toks[-1] != EOS:
            raise DataError(f"{where}, sample {i}: tgt {toks} is not [{BOS}, ids..., {EOS}]")
        for t in toks[1:-1]:
            if t not in TOKEN_TO_INDEX:
                raise DataError(f"{where}, sample {i}: unknown label token {t}; the MOSEI label "
                                f"vocabulary is {_VOCAB}")
            y[i, TOKEN_TO_INDEX[t]] = 1
        if empty_labels != "allow" and not y[i].any():
            raise DataError(f"{where}, sample {i} has an empty label set (tgt {toks}); pass "
                            "empty_labels='allow' (CLI: --empty-labels allow) if that is intended")
    return y


def _split_labels(sd: Mapping, path: Path, split: str, empty_labels: str) -> np.ndarray:
    if "tgt" not in sd:
        raise DataError(f"{path.name}: split {split!r} has no key 'tgt' (keys: {_keys(sd)}); "
                        "is it the aligned MOSEI train_valid_test.pt?")
    return parse_targets(sd["tgt"], f"{path.name}, split {split!r}, key 'tgt'", empty_labels)


def _check_sizes(sizes: dict[str, int], path: Path, split: str) -> None:
    if len(set(sizes.values())) > 1:
        listed = ", ".join(f"{k!r} {n}" for k, n in sizes.items())
        raise DataError(f"{path.name}, split {split!r}: keys disagree on the number of samples "
                        f"({listed}); the file is inconsistent, download or export it again")


# ----------------------------------------------------------------------------- converters


def _check_args(out: Path, overwrite: bool, nan_policy: str, empty_labels: str) -> None:
    if nan_policy not in ("reject", "zero"):
        raise DataError(f"nan_policy must be 'reject' or 'zero', got {nan_policy!r}")
    if empty_labels not in ("reject", "allow"):
        raise DataError(f"empty_labels must be 'reject' or 'allow', got {empty_labels!r} (CLI: --empty-labels allow)")
    if out.exists() and not overwrite:  # fail before loading gigabytes
        raise DataError(f"{out} already exists; pass overwrite=True (CLI: --overwrite) "
                        "or choose another --out")


def _write(out: Path, splits: dict[str, SplitArrays], file: Path, **kwargs) -> FeatureStore:
    try:
        return write_store(out, splits, list(LABELS), **kwargs)
    except DataError as e:
        raise DataError(f"{file.name}: {e}") from None


def _read_modalities(sd: Mapping, keys: Mapping[str, str], path: Path, split: str):
    """Features (audio -inf set to 0), optional lengths and per-key sample counts of one split."""
    feats, lengths, sizes = {}, {}, {}
    for m, key in keys.items():
        x, ln = _features(sd, key, path, split, DIMS[m])
        sizes[key] = len(x)
        feats[m] = _zero_neg_inf(x) if m == "audio" else x
        if ln is not None:
            lengths[m] = ln
    return feats, lengths, sizes


def _aligned_split(sd: Mapping, path: Path, split: str, empty_labels: str) -> SplitArrays:
    y = _split_labels(sd, path, split, empty_labels)
    feats, lengths, sizes = _read_modalities(sd, ALIGNED_KEYS, path, split)
    _check_sizes({"tgt": len(y), **sizes}, path, split)
    steps = {ALIGNED_KEYS[m]: x.shape[1] for m, x in feats.items()}
    if len(set(steps.values())) > 1:
        raise DataError(f"{path.name}, split {split!r}: an aligned file has the same number of "
                        f"steps in every modality, got {steps}; use the unaligned converter")
    ids = [f"{split}-{i}" for i in range(len(y))]
    return SplitArrays(features=feats, labels=y, lengths=lengths, ids=ids)


@register_converter('mosei-aligned', description="CMU-MOSEI word-aligned train_valid_test.pt of TAILOR/CARAT/RAMer/AMP (6 emotions)")
def convert_mosei_aligned(pt_path: str | os.PathLike, out: str | os.PathLike, *,
                          nan_policy: str = "reject", overwrite: bool = False,
                          empty_labels: EmptyLabelPolicy = "reject") -> FeatureStore:
    """Convert the aligned CMU-MOSEI `train_valid_test.pt` (TAILOR/CARAT) into a FeatureStore.

    Example:
        >>> convert_mosei_aligned("train_valid_test.pt", "stores/mosei").labels  # doctest: +SKIP
        ['happy', 'sad', 'anger', 'surprise', 'disgust', 'fear']
    """
    pt_path, out = Path(pt_path), Path(out)
    _check_args(out, overwrite, nan_policy, empty_labels)
    data = _load_torch(pt_path)
    splits = {s: _aligned_split(_get_split(data, pt_path, s, (s,)), pt_path, s, empty_labels)
              for s in SPLITS}
    return _write(out, splits, pt_path, name="mosei-aligned", source=f"mosei-aligned:{pt_path.name}",
                  aligned=True, nan_policy=nan_policy,
                  empty_labels=empty_labels, overwrite=overwrite)


def _unaligned_split(sd: Mapping, y: np.ndarray, pkl: Path, pt: Path, split: str) -> SplitArrays:
    feats, lengths, sizes = _read_modalities(sd, UNALIGNED_KEYS, pkl, split)
    _check_sizes(sizes, pkl, split)
    n = next(iter(sizes.values()))
    if n != len(y):
        raise DataError(f"split {split!r} has {n} samples in {pkl.name} but {len(y)} labels in "
                        f"{pt.name}; the two files must list the same samples in the same order")
    return SplitArrays(features=feats, labels=y, lengths=lengths,
                       ids=[f"{split}-{i}" for i in range(n)])


@register_converter('mosei-unaligned', description=("CMU-MOSEI unaligned MulT pickle mosei_senti_data_noalign.pkl; emotion labels from the "
                    "aligned .pt (--labels-from), matched by index"),
                    needs_labels_from="train_valid_test.pt: the MulT pickle has no emotion labels, they come from the aligned file")
def convert_mosei_unaligned(pkl_path: str | os.PathLike, labels_from: str | os.PathLike,
                            out: str | os.PathLike, *, nan_policy: str = "reject",
                            overwrite: bool = False, empty_labels: EmptyLabelPolicy = "reject") -> FeatureStore:
    """Convert MulT's unaligned `mosei_senti_data_noalign.pkl`, with emotion labels taken from
    the aligned `train_valid_test.pt` (`labels_from`), into a FeatureStore (aligned=False).

    The aligned file is released before the pickle is read, and samples are not copied beyond
    what writing one modality at a time needs, so peak memory is about the pickle's size.

    Example:
        >>> convert_mosei_unaligned("mosei_senti_data_noalign.pkl", "train_valid_test.pt",
        ...                         "stores/mosei-unaligned")                    # doctest: +SKIP
    """
    pkl_path, pt_path, out = Path(pkl_path), Path(labels_from), Path(out)
    _check_args(out, overwrite, nan_policy, empty_labels)
    _require_file(pkl_path, "the unaligned CMU-MOSEI mosei_senti_data_noalign.pkl")
    aligned = _load_torch(pt_path)
    labels = {s: _split_labels(_get_split(aligned, pt_path, s, (s,)), pt_path, s, empty_labels)
              for s in SPLITS}
    del aligned  # free the aligned features before the unaligned ones are read
    data = _load_pickle(pkl_path)
    splits = {s: _unaligned_split(_get_split(data, pkl_path, s, UNALIGNED_SPLIT_KEYS[s]),
                                  labels[s], pkl_path, pt_path, s) for s in SPLITS}
    return _write(out, splits, pkl_path, name="mosei-unaligned",
                  source=f"mosei-unaligned:{pkl_path.name}+{pt_path.name}", aligned=False,
                  nan_policy=nan_policy, empty_labels=empty_labels,
                  overwrite=overwrite)
