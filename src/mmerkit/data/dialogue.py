"""Dialogue-level multi-label samples from utterance-level single labels (CARAT's M3ED protocol).

Conversation corpora (M3ED, MELD, IEMOCAP dialogues) label every *utterance* with one emotion.
CARAT turns them into a multi-label task one level up: one sample per **dialogue**, whose
sequence is its utterances (T = number of utterances, one utterance-level vector per step and
modality) and whose label set is the **union** of its utterances' emotions.

Two entry points build a `SplitArrays` for `write_store`:

* `build_dialogues` takes a flat utterance table: dialogue id, label and one feature row per
  utterance (e.g. MELD's CSV rows). It is vectorised: one sort, one scatter per modality.
* `build_dialogues_from_dicts` takes dicts keyed by dialogue id (M3ED's pickle layout) and
  flattens them into the table above.

Options shared by both:

* ``max_len``: keep at most this many utterances; ``truncate="head"`` keeps the first ones
  (CARAT's M3ED reader), ``"tail"`` the last ones.
* ``union_over``: ``"all"`` (default, CARAT) takes the union over every utterance, even those cut
  by ``max_len``; ``"kept"`` only over the utterances that stay in the sequence.
* ``label_map``: raw label value -> label name (or None to ignore that utterance's label).
  Without it, integer labels index ``label_names`` and string labels must be label names.
* ``missing`` (for utterances without a feature row; one policy, or a dict modality -> policy):
  ``"reject"`` (default) raises a DataError naming the dialogue, utterance and modality;
  ``"zero"`` keeps the utterance as a zero vector (the modality becomes length 0 only where a
  dialogue misses it entirely); ``"empty"`` marks the modality missing (length 0) for any
  dialogue that misses one of its utterances; ``"drop"`` drops such dialogues.

Unlike CARAT's reader, padding steps are masked (`<modality>_len` holds the real count).

Example:
    >>> import numpy as np
    >>> sa = build_dialogues(["d1", "d1", "d2"], [0, 2, 1], {"text": np.eye(3, 4)},
    ...                      ["happy", "neutral", "sad"])
    >>> sa.ids, sa.labels.tolist(), sa.features["text"].shape, sa.lengths["text"].tolist()
    (['d1', 'd2'], [[1, 0, 1], [0, 1, 0]], (2, 2, 4), [2, 1])
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np

from mmerkit.data.store import SplitArrays
from mmerkit.errors import DataError

Truncate = Literal["head", "tail"]
Missing = Literal["reject", "zero", "empty", "drop"]
UnionOver = Literal["all", "kept"]

_TRUNCATE = ("head", "tail")
_MISSING = ("reject", "zero", "empty", "drop")
_UNION_OVER = ("all", "kept")


def _check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise DataError(f"{name}={value!r} is not one of {', '.join(map(repr, choices))}")


def build_dialogues(
    dialogue_ids: Sequence[Any] | np.ndarray,
    labels: Sequence[Any] | np.ndarray,
    features: Mapping[str, np.ndarray],
    label_names: Sequence[str],
    *,
    order: Sequence[Any] | np.ndarray | None = None,
    present: Mapping[str, np.ndarray] | None = None,
    max_len: int | None = None,
    truncate: Truncate = "head",
    union_over: UnionOver = "all",
    label_map: Mapping[Any, str | None] | None = None,
    missing: Missing | Mapping[str, Missing] = "reject",
    source: str = "utterances",
) -> SplitArrays:
    """One multi-label sample per dialogue from a flat table of U utterances.

    dialogue_ids: (U,) dialogue of each utterance; dialogues keep their order of first appearance.
    labels: (U,) one raw label per utterance. features: modality -> (U, D) utterance vectors.
    order: (U,) position of each utterance inside its dialogue (default: row order).
    present: modality -> (U,) bool, False = that utterance has no vector for the modality.
    `source` names the input in error messages (e.g. the file).
    """
    _check_choice("truncate", truncate, _TRUNCATE)
    _check_choice("union_over", union_over, _UNION_OVER)
    if max_len is not None and int(max_len) < 1:
        raise DataError(f"max_len must be >= 1, got {max_len}")
    dlg = np.asarray(dialogue_ids)
    raw = np.asarray(labels)
    n_utt = len(dlg)
    if n_utt == 0:
        raise DataError(f"{source}: no utterances")
    if dlg.ndim != 1 or raw.shape != (n_utt,):
        raise DataError(f"{source}: dialogue_ids and labels must both be (U,), got {dlg.shape} and {raw.shape}")
    if not features:
        raise DataError(f"{source}: no modality features given")
    feats = {m: _utterance_matrix(m, x, n_utt, source) for m, x in features.items()}
    policy = _policies(missing, feats)
    pres = {m: _present_mask(m, (present or {}).get(m), n_utt, source) for m in feats}

    # dialogue number in order of first appearance, then sort utterances by (dialogue, order)
    uniq, first, inv = np.unique(dlg, return_index=True, return_inverse=True)
    rank = np.argsort(first, kind="stable")
    dnum = np.empty_like(rank)
    dnum[rank] = np.arange(len(rank))
    g = dnum[inv.reshape(-1)]
    names = [str(u) for u in uniq[rank]]
    key = np.arange(n_utt) if order is None else np.asarray(order)
    if key.shape != (n_utt,):
        raise DataError(f"{source}: order must be (U,) = ({n_utt},), got {key.shape}")
    perm = np.lexsort((key, g))
    gs, ks = g[perm], key[perm]
    if order is not None:
        dup = np.flatnonzero((gs[1:] == gs[:-1]) & (ks[1:] == ks[:-1]))
        if dup.size:
            i = int(dup[0])
            raise DataError(f"{source}: dialogue {names[gs[i]]!r} has two utterances at position {ks[i]!r}; "
                            "utterance positions must be unique within a dialogue")

    n = len(names)
    counts = np.bincount(gs, minlength=n)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    pos = np.arange(n_utt) - starts[gs]
    cap = counts if max_len is None else np.minimum(counts, int(max_len))
    offset = np.zeros(n, np.int64) if truncate == "head" else counts - cap
    step = pos - offset[gs]
    keep = (step >= 0) & (step < cap[gs])
    t_max = int(cap.max())

    li = _label_indices(raw[perm], label_names, label_map, names, gs, pos, source)
    y = np.zeros((n, len(label_names)), np.uint8)
    use = li >= 0 if union_over == "all" else (li >= 0) & keep
    y[gs[use], li[use]] = 1

    out_x, out_len = {}, {}
    drop = np.zeros(n, bool)
    for m, x in feats.items():
        arr = np.zeros((n, t_max, x.shape[1]), np.float32)
        arr[gs[keep], step[keep]] = x[perm[keep]]
        lens = cap.astype(np.int64).copy()
        miss = keep & ~pres[m][perm]
        if miss.any():
            arr[gs[miss], step[miss]] = 0.0  # whatever the caller put in a missing row is not data
            lens, d = _apply_missing(m, miss, gs, pos, cap, lens, names, policy[m], source)
            drop |= d
        out_x[m], out_len[m] = arr, lens
    if drop.any():
        warnings.warn(f"{source}: dropped {int(drop.sum())} of {n} dialogues with missing utterance "
                      "features (missing='drop')", stacklevel=2)
        if drop.all():
            raise DataError(f"{source}: every dialogue misses some utterance features; nothing left "
                            "with missing='drop' (try missing='zero')")
        k = ~drop
        out_x = {m: v[k] for m, v in out_x.items()}
        out_len = {m: v[k] for m, v in out_len.items()}
        y, names = y[k], [nm for nm, kk in zip(names, k) if kk]
    return SplitArrays(features=out_x, labels=y, lengths=out_len, ids=names)


def _policies(missing: Any, modalities: Mapping[str, Any]) -> dict[str, str]:
    """One missing-utterance policy per modality (a dict may name only some; the rest reject)."""
    if isinstance(missing, Mapping):
        unknown = sorted(set(missing) - set(modalities))
        if unknown:
            raise DataError(f"missing= names modalities {unknown} that are not among {list(modalities)}")
        out = {m: missing.get(m, "reject") for m in modalities}
    else:
        out = {m: missing for m in modalities}
    for p in out.values():
        _check_choice("missing", p, _MISSING)
    return out


def _utterance_matrix(m: str, x: Any, n_utt: int, source: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[0] != n_utt:
        raise DataError(f"{source}, modality {m!r}: expected ({n_utt}, D) utterance vectors, got shape "
                        f"{tuple(x.shape)}")
    if not np.issubdtype(x.dtype, np.number):
        raise DataError(f"{source}, modality {m!r}: features must be numeric, got dtype {x.dtype}")
    return x


def _present_mask(m: str, p: Any, n_utt: int, source: str) -> np.ndarray:
    if p is None:
        return np.ones(n_utt, bool)
    p = np.asarray(p, bool)
    if p.shape != (n_utt,):
        raise DataError(f"{source}, present[{m!r}]: expected ({n_utt},) booleans, got {p.shape}")
    return p


def _label_indices(raw: np.ndarray, label_names: Sequence[str], label_map, names, gs, pos, source) -> np.ndarray:
    """Raw utterance labels -> index into label_names, -1 for labels mapped to None."""
    label_names = [str(x) for x in label_names]
    lookup = {nm: i for i, nm in enumerate(label_names)}
    if raw.dtype.kind in "iuU":  # the usual cases, vectorised
        values, inv = np.unique(raw, return_inverse=True)
        values = [_hashable(v) for v in values]
    else:
        values, inv = _unique_unsorted(raw)
    table = np.empty(len(values), np.int64)
    for j, v in enumerate(values):
        table[j] = _one_label(v, label_names, lookup, label_map)
        if table[j] == -2:
            i = int(np.flatnonzero(inv.reshape(-1) == j)[0])
            known = (f"label_map keys {sorted(map(str, label_map))[:12]}" if label_map is not None
                     else f"an integer 0..{len(label_names) - 1} or one of {label_names}")
            raise DataError(f"{source}: dialogue {names[gs[i]]!r}, utterance {int(pos[i])} has label {v!r}, "
                            f"expected {known}; fix the label or pass a label_map")
    return table[inv.reshape(-1)]


def _hashable(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


def _unique_unsorted(raw: np.ndarray):
    seen: dict[Any, int] = {}
    inv = np.array([seen.setdefault(_hashable(v), len(seen)) for v in raw], np.int64)
    return list(seen), inv


def _one_label(v: Any, label_names: list[str], lookup: dict[str, int], label_map) -> int:
    """Index of one raw label; -1 = ignored, -2 = unknown."""
    if label_map is not None:
        if v not in label_map:
            return -2
        target = label_map[v]
        return -1 if target is None else lookup.get(str(target), -2)
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        return int(v) if 0 <= v < len(label_names) else -2
    if isinstance(v, float) and v.is_integer():
        return int(v) if 0 <= v < len(label_names) else -2
    return lookup.get(v, -2) if isinstance(v, str) else -2


def _apply_missing(m, miss, gs, pos, cap, lens, names, missing, source):
    n = len(cap)
    if missing == "reject":
        i = int(np.flatnonzero(miss)[0])
        raise DataError(f"{source}: dialogue {names[gs[i]]!r}, utterance {int(pos[i])} has no {m!r} features "
                        f"({int(miss.sum())} such utterances); pass missing='zero', 'empty' or 'drop' to "
                        "keep going")
    n_miss = np.bincount(gs[miss], minlength=n)
    drop = np.zeros(n, bool)
    if missing == "zero":
        lens[n_miss >= cap] = 0  # a modality missing in the whole dialogue is simply missing
    elif missing == "empty":
        lens[n_miss > 0] = 0
    else:
        drop = n_miss > 0
    return lens, drop


# ----------------------------------------------------------------------------- dict input


def build_dialogues_from_dicts(
    utterance_labels: Mapping[Any, Sequence[Any]],
    features: Mapping[str, Mapping[Any, Any]],
    label_names: Sequence[str],
    *,
    dialog_ids: Sequence[Any] | None = None,
    max_len: int | None = None,
    truncate: Truncate = "head",
    union_over: UnionOver = "all",
    label_map: Mapping[Any, str | None] | None = None,
    missing: Missing | Mapping[str, Missing] = "reject",
    source: str = "dialogues",
) -> SplitArrays:
    """Like `build_dialogues`, from dicts: dialogue id -> utterance labels, and per modality
    dialogue id -> (n_utt, D) utterance vectors (M3ED's layout).

    A dialogue absent from a modality's dict, or whose array has another number of rows than it
    has labels, counts as missing that modality for every utterance (see `missing`).
    """
    policy = _policies(missing, features)
    ids = list(utterance_labels) if dialog_ids is None else list(dialog_ids)
    if not ids:
        raise DataError(f"{source}: no dialogues")
    dims = {m: _modality_dim(m, d, source) for m, d in features.items()}
    dlg, labs, present = [], [], {m: [] for m in features}
    rows: dict[str, list[np.ndarray]] = {m: [] for m in features}
    for d in ids:
        if d not in utterance_labels:
            raise DataError(f"{source}: dialogue {d!r} is listed but has no utterance labels")
        lab = list(utterance_labels[d])
        if not lab:
            raise DataError(f"{source}: dialogue {d!r} has no utterances")
        k = len(lab)
        dlg.extend([str(d)] * k)
        labs.extend(lab)
        for m, table in features.items():
            x = table.get(d)
            x = None if x is None else np.asarray(x)
            ok = x is not None and x.ndim == 2 and x.shape[0] == k
            if x is not None and x.ndim == 2 and x.shape[1] != dims[m]:
                raise DataError(f"{source}, modality {m!r}: dialogue {d!r} has {x.shape[1]}-d vectors, "
                                f"other dialogues {dims[m]}-d; every dialogue needs the same dim")
            if not ok and policy[m] == "reject":
                got = "no entry" if x is None else f"shape {tuple(x.shape)}"
                raise DataError(f"{source}, modality {m!r}: dialogue {d!r} has {got}, expected ({k}, "
                                f"{dims[m]}) for its {k} utterances; pass missing='zero', 'empty' or "
                                "'drop' to keep going")
            rows[m].append(x.astype(np.float32, copy=False) if ok else np.zeros((k, dims[m]), np.float32))
            present[m].append(np.full(k, ok))
    feats = {m: np.concatenate(r) for m, r in rows.items()}
    pres = {m: np.concatenate(p) for m, p in present.items()}
    lab_arr = np.array(labs)
    if lab_arr.dtype.kind not in "iu" or any(isinstance(v, str) for v in labs[:1]):
        lab_arr = np.array(labs, dtype=object)  # keeps str / float / mixed values as they are
    return build_dialogues(np.array(dlg), lab_arr, feats, label_names,
                           present=pres, max_len=max_len, truncate=truncate, union_over=union_over,
                           label_map=label_map, missing=missing, source=source)


def _modality_dim(m: str, table: Mapping[Any, Any], source: str) -> int:
    if not isinstance(table, Mapping):
        raise DataError(f"{source}, modality {m!r}: expected a dict dialogue id -> (n_utt, D) array, "
                        f"got {type(table).__name__}")
    for d, x in table.items():
        x = np.asarray(x)
        if x.ndim != 2:
            raise DataError(f"{source}, modality {m!r}: dialogue {d!r} has shape {tuple(x.shape)}, "
                            "expected (n_utt, D)")
        return int(x.shape[1])
    raise DataError(f"{source}, modality {m!r}: the dict is empty")
