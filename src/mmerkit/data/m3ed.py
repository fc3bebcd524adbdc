"""M3ED converter: the authors' utterance-feature pickle -> dialogue-level multi-label store.

M3ED (Zhao et al., ACL 2022) is a Chinese TV-drama dialogue corpus with ONE emotion per
utterance. CARAT (Peng et al., AAAI 2024; `utils/m3ed_reader.py`) makes it multi-label one level
up: one sample per dialogue, its sequence the dialogue's utterance-level vectors, its labels the
union of its utterances' emotions. This module reproduces that protocol with
`mmerkit.data.dialogue`.

Input: the feature pickle distributed by the M3ED authors (e.g.
``Asent_wav2vec_zh2chmed2e5last-Vsent_avg_affectdenseface-Lsent_cls_robert_wwm_base_chinese4chmed.pkl``),
a sequence whose items CARAT's reader uses as

=========  ===========================================================
``[2]``    dialog id -> list of utterance labels, ints 0..6
``[3]``    dialog id -> (n_utt, 768) text vectors (RoBERTa-wwm CLS)
``[4]``    dialog id -> (n_utt, 1024) vectors the reader calls "visual"
``[5]``    dialog id -> (n_utt, 342) vectors the reader calls "audio"
``[7..9]`` train / valid / test lists of dialog ids
=========  ===========================================================

Labels, in the authors' index order: happy, neutral, sad, disgust, anger, fear, surprise.
Sequences are truncated to ``max_len`` = 60 utterances (the head, as CARAT does).

**Probably swapped names.** M3ED's wav2vec audio feature is 1024-d and its Denseface visual
feature 342-d, so the reader's "visual" (1024) is most likely audio and its "audio" (342) visual.
The default (``swap_visual_audio=False``) keeps the reader's names, so dims match CARAT's M3ED
configs (visual 1024, audio 342); ``swap_visual_audio=True`` gives the physically right names
(audio 1024, visual 342). Models treat the modalities alike apart from their names.

Departures from CARAT's reader: padding utterances are masked (``<modality>_len``), not fed as
real steps; duplicated dialog ids across splits are rejected.

Example:
    >>> store = convert_m3ed("m3ed_features.pkl", "stores/m3ed")   # doctest: +SKIP
    >>> store.labels                                                 # doctest: +SKIP
    ['happy', 'neutral', 'sad', 'disgust', 'anger', 'fear', 'surprise']
"""

from __future__ import annotations

import os
import pickle
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mmerkit.data.converters import register_converter
from mmerkit.data.dialogue import Missing, Truncate, build_dialogues_from_dicts
from mmerkit.data.store import EmptyLabelPolicy, FeatureStore, NanPolicy, write_store
from mmerkit.errors import DataError

LABELS = ["happy", "neutral", "sad", "disgust", "anger", "fear", "surprise"]
_FEATURE_SLOTS = {"text": 3, "visual": 4, "audio": 5}
_SPLIT_SLOTS = {"train": 7, "valid": 8, "test": 9}
# what a foreign or truncated pickle raises (not MemoryError: that is no fault of the file)
_UNREADABLE = (pickle.UnpicklingError, EOFError, AttributeError, ImportError, IndexError, KeyError,
               TypeError, ValueError, RuntimeError, UnicodeDecodeError)


def load_pickle(path: str | os.PathLike, what: str) -> Any:
    """Unpickle a corpus file after a warning (worded as in `mosei.py`): unpickling can run code."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} does not exist or is not a file; pass the path of the {what}")
    warnings.warn(f"loading {path.name} unpickles it, which can execute code stored in the file; "
                  "only convert files from a source you trust", UserWarning, stacklevel=3)
    try:
        with open(path, "rb") as f:
            return pickle.load(f)
    except _UNREADABLE as e:
        raise DataError(f"{path} could not be unpickled ({type(e).__name__}: {e}); it is truncated or not "
                        f"the {what}: download it again") from None


def read_m3ed(data: Any, *, source: str = "M3ED pickle", swap_visual_audio: bool = False,
              max_len: int | None = 60, truncate: Truncate = "head", missing: Missing = "reject",
              union_over: str = "all") -> dict:
    """The unpickled M3ED sequence -> {split: SplitArrays} (no file access)."""
    if not isinstance(data, (list, tuple)) or len(data) < 10:
        got = f"a {type(data).__name__} of length {len(data)}" if isinstance(data, (list, tuple)) \
            else f"a {type(data).__name__}"
        raise DataError(f"{source}: expected the M3ED feature pickle, a sequence of >= 10 items "
                        f"(labels at [2], features at [3..5], splits at [7..9]), got {got}")
    labels = _dict_item(data, 2, "utterance labels", source)
    names = dict(_FEATURE_SLOTS)
    if swap_visual_audio:
        names["visual"], names["audio"] = names["audio"], names["visual"]
    feats = {m: _dict_item(data, slot, f"{m!r} features", source) for m, slot in names.items()}
    seen: dict[str, str] = {}
    splits = {}
    for split, slot in _SPLIT_SLOTS.items():
        ids = data[slot]
        if isinstance(ids, (str, bytes)) or not hasattr(ids, "__iter__"):
            raise DataError(f"{source}: item [{slot}] should list the {split} dialog ids, got "
                            f"{type(ids).__name__}")
        ids = list(ids)
        if not ids:
            raise DataError(f"{source}: item [{slot}] ({split} dialog ids) is empty")
        for d in ids:
            if d in seen:
                raise DataError(f"{source}: dialog {d!r} is listed in both {seen[d]!r} and {split!r} "
                                f"(items [{_SPLIT_SLOTS[seen[d]]}] and [{slot}]); splits must not overlap")
            seen[d] = split
        splits[split] = build_dialogues_from_dicts(
            labels, feats, LABELS, dialog_ids=ids, max_len=max_len, truncate=truncate,
            union_over=union_over, missing=missing, source=f"{source} [{split}]")  # type: ignore[arg-type]
    return splits


def _dict_item(data: Any, slot: int, what: str, source: str) -> Mapping:
    item = data[slot]
    if not isinstance(item, Mapping):
        raise DataError(f"{source}: item [{slot}] should be a dict dialog id -> {what}, got "
                        f"{type(item).__name__}")
    return item


@register_converter('m3ed', description=("M3ED dialogues from the authors' feature pickle (CARAT protocol: union of "
                    "utterance emotions, 7 labels, 60 utterances)"))
def convert_m3ed(path: str | os.PathLike, out: str | os.PathLike, *, nan_policy: NanPolicy = "reject",
                 overwrite: bool = False, swap_visual_audio: bool = False, max_len: int = 60,
                 truncate: Truncate = "head", missing: Missing = "reject", union_over: str = "all",
                 empty_labels: EmptyLabelPolicy = "reject", name: str | None = None) -> FeatureStore:
    """Convert the M3ED authors' feature pickle at `path` into a store at `out` (see module doc)."""
    path = Path(path)
    data = load_pickle(path, "M3ED feature pickle")
    splits = read_m3ed(data, source=str(path), swap_visual_audio=swap_visual_audio, max_len=max_len,
                       truncate=truncate, missing=missing, union_over=union_over)
    note = ", visual/audio swapped" if swap_visual_audio else ""
    return write_store(out, splits, LABELS, name=name, source=f"m3ed:{path.name}{note}",
                       aligned=True, nan_policy=nan_policy, empty_labels=empty_labels, overwrite=overwrite)
