"""The media manifest: one CSV row per utterance, read and checked before any decoding.

Columns (only ``id`` and ``media`` are required; ``media`` may be empty in a text-only
extraction where the row has a transcript)::

    id          unique sample id
    media       path of a video or audio file, relative to the manifest's folder
    start, end  seconds: cut the utterance from a longer file (empty = whole file)
    transcript  what is said (else speech recognition, see ExtractConfig.asr)
    labels      label names separated by ';' ("joy;anger"); an empty cell = no emotion
    <label>     ...or instead one 0/1 column per label (then no `labels` column)
    split       train / valid / test (dev, val = valid); without it a seeded 70/10/20 split
    dialogue    dialogue id: samples become dialogues (one step per utterance, labels = union)
    speaker     who speaks (kept with each step of a dialogue)

Every error names the file, the line, the column and the fix. Problems of one item that only
decoding can see (a missing file, start after end) are not errors here: the pipeline records
them in failures.csv.

Example:
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "m.csv"
    >>> _ = p.write_text("id,media,labels\\na,a.mp4,joy\\nb,b.mp4,joy;anger\\nc,c.wav,\\n")
    >>> m = read_media_manifest(p, empty_labels="allow")
    >>> m.label_names, m.labels.tolist(), m.label_counts
    (['anger', 'joy'], [[0, 1], [1, 1], [0, 0]], {'anger': 1, 'joy': 2})
"""

from __future__ import annotations

import csv
import difflib
import hashlib
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mmerkit.data.custom import SPLIT_ALIASES, SPLITS
from mmerkit.errors import ConfigError, DataError
from mmerkit.registry import did_you_mean

KNOWN_COLUMNS = ("id", "media", "start", "end", "transcript", "labels", "split", "dialogue", "speaker")
DEFAULT_RATIOS = (0.7, 0.1, 0.2)


@dataclass(frozen=True)
class MediaItem:
    """One manifest row, with its media path made absolute."""

    id: str
    media: Path | None
    line: int
    start: float | None = None
    end: float | None = None
    transcript: str | None = None
    dialogue: str | None = None
    speaker: str | None = None
    cell: str = ""  # the media cell as written (relative paths stay relative)

    def row_key(self) -> str:
        """The row as written (id, media cell, cut, transcript): equal on every machine."""
        parts = [self.id, self.cell, repr(self.start), repr(self.end), self.transcript or ""]
        return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:16]

    def key(self) -> str:
        """The row plus its media file's size and modification time: a changed row or a replaced
        file is extracted again."""
        parts = [self.row_key()]
        if self.media is not None and self.media.is_file():
            st = self.media.stat()
            parts += [str(st.st_size), str(st.st_mtime_ns)]
        return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:16]


@dataclass
class Manifest:
    """A checked manifest: items, their label matrix and split, and how both were decided."""

    path: Path
    items: list[MediaItem]
    label_names: list[str]
    labels: np.ndarray  # (N, L) uint8
    splits: list[str]  # per item: train / valid / test
    split_record: dict[str, Any]
    label_counts: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    sha256: str = ""

    @property
    def has_dialogues(self) -> bool:
        return any(it.dialogue is not None for it in self.items)

    def __len__(self) -> int:
        return len(self.items)


# ----------------------------------------------------------------------------- reading


def read_media_manifest(path: str | Path, *, label_names: Sequence[str] | str | None = None,
                        split_seed: int = 0, split_ratios: Sequence[float] = DEFAULT_RATIOS,
                        empty_labels: str = "reject", require_labels: bool = True,
                        media_required: bool = True) -> Manifest:
    """Read and check a media manifest CSV (layout in the module doc).

    label_names: the label set and its order (a list or "a,b,c"); other names are errors.
    Without it the sorted names found are used, and rare names close to a frequent one are
    reported in `Manifest.warnings` as likely typos. `require_labels=False` reads a manifest
    for prediction (no labels, no split). `media_required=False` allows empty media cells
    (text-only extraction from transcripts).
    """
    if empty_labels not in ("reject", "allow"):
        raise ConfigError(f"--empty-labels {empty_labels!r}: expected 'reject' or 'allow'")
    path = Path(path)
    rows, columns, lines = _read_rows(path)
    ctx = _Ctx(path, lines)
    items = [_item(ctx, i, r, media_required) for i, r in enumerate(rows)]
    _check_unique_ids(ctx, items)
    names = _parse_label_names(label_names)
    if require_labels:
        y, names, warns = _labels(ctx, rows, columns, names, empty_labels == "allow")
    else:
        y, warns = np.zeros((len(items), 0 if names is None else len(names)), np.uint8), []
        names = names or []
    splits, record = _splits(ctx, rows, columns, items, split_seed, split_ratios, require_labels)
    counts = {nm: int(c) for nm, c in zip(names, y.sum(0).tolist())}
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return Manifest(path, items, names, y, splits, record, counts, warns, digest)


class _Ctx:
    """Error messages that name the file, the line and the column."""

    def __init__(self, path: Path, lines: list[int]):
        self.path, self.lines = path, lines

    def where(self, i: int, column: str | None = None) -> str:
        col = f", column {column!r}" if column else ""
        return f"{self.path}, line {self.lines[i]}{col}"


def _read_rows(path: Path) -> tuple[list[dict[str, str]], list[str], list[int]]:
    if path.is_dir():
        csvs = sorted(p.name for p in path.glob("*.csv"))[:3]
        hint = f" (it holds {', '.join(csvs)})" if csvs else ""
        raise DataError(f"manifest {path} is a folder, not a CSV file{hint}; give the manifest's own path, "
                        f"e.g. {path / (csvs[0] if csvs else 'manifest.csv')}")
    if not path.is_file():
        raise DataError(f"manifest {path} does not exist")
    if path.suffix.lower() != ".csv":
        raise DataError(f"manifest {path}: expected a .csv file (columns id, media, ...; see docs/extract.md)")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            columns = [c.strip() for c in reader.fieldnames or []]
            rows, lines = [], []
            for rec in reader:
                if None in rec:
                    raise DataError(f"{path}, line {reader.line_num}: more cells than header columns; "
                                    "quote cells that contain commas")
                rows.append({k.strip(): (v or "").strip() for k, v in rec.items()})
                lines.append(reader.line_num)
    except UnicodeDecodeError as e:
        raise DataError(f"manifest {path} is not UTF-8 text ({e}); save it as UTF-8 CSV") from None
    except csv.Error as e:
        raise DataError(f"manifest {path} is not a valid CSV ({e})") from None
    for need in ("id", "media"):
        if need not in columns:
            hint = did_you_mean(need, columns)
            raise DataError(f"manifest {path}: the header has no {need!r} column.{hint} "
                            f"A media manifest needs id and media (header: {columns})")
    if len(set(columns)) != len(columns):
        dup = [c for c, n in Counter(columns).items() if n > 1]
        raise DataError(f"manifest {path}: column(s) {dup} appear twice in the header")
    if not rows:
        raise DataError(f"manifest {path} has a header but no rows")
    return rows, columns, lines


def _seconds(ctx: _Ctx, i: int, row: dict[str, str], column: str) -> float | None:
    raw = row.get(column, "")
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise DataError(f"{ctx.where(i, column)}: {raw!r} is not a number of seconds; write e.g. 12.5 "
                        "or leave it empty for the whole file") from None
    if not math.isfinite(value) or value < 0:
        raise DataError(f"{ctx.where(i, column)}: {raw!r} must be a finite number of seconds >= 0")
    return value


def _item(ctx: _Ctx, i: int, row: dict[str, str], media_required: bool) -> MediaItem:
    sid = row.get("id", "")
    if not sid:
        raise DataError(f"{ctx.where(i, 'id')}: empty id; give every row a unique id")
    media_cell = row.get("media", "")
    transcript = row.get("transcript") or None
    if not media_cell and (media_required or transcript is None):
        need = "a media path" if media_required else "a media path or a transcript"
        raise DataError(f"{ctx.where(i, 'media')}: empty cell; row {sid!r} needs {need}")
    media = None
    if media_cell:
        media = Path(media_cell).expanduser()
        media = media if media.is_absolute() else (ctx.path.parent / media)
    return MediaItem(id=sid, media=media, line=ctx.lines[i], start=_seconds(ctx, i, row, "start"),
                     end=_seconds(ctx, i, row, "end"), transcript=transcript,
                     dialogue=row.get("dialogue") or None, speaker=row.get("speaker") or None,
                     cell=media_cell)


def _check_unique_ids(ctx: _Ctx, items: list[MediaItem]) -> None:
    first: dict[str, int] = {}
    for i, it in enumerate(items):
        if it.id in first:
            raise DataError(f"{ctx.where(i, 'id')}: id {it.id!r} already used on line "
                            f"{items[first[it.id]].line}; ids must be unique")
        first[it.id] = i


# ----------------------------------------------------------------------------- labels


def _parse_label_names(label_names: Sequence[str] | str | None) -> list[str] | None:
    if label_names is None:
        return None
    if isinstance(label_names, str):
        label_names = label_names.split(",")
    names = [str(x).strip() for x in label_names if str(x).strip()]
    if len(set(names)) != len(names):
        raise DataError(f"--label-names {names} lists a name twice")
    return names or None


def _labels(ctx: _Ctx, rows, columns, names, allow_empty) -> tuple[np.ndarray, list[str], list[str]]:
    extra = [c for c in columns if c not in KNOWN_COLUMNS]
    if "labels" in columns:
        if extra:
            _unknown_columns(ctx, extra, "a `labels` column is present, so no 0/1 label columns are read")
        y, names, warns = _labels_from_names(ctx, rows, names)
    elif extra:
        y, names, warns = _labels_from_columns(ctx, rows, extra, names)
    else:
        raise DataError(f"manifest {ctx.path} has no labels: add a `labels` column (names separated by ';') "
                        "or one 0/1 column per label")
    empty = np.flatnonzero(y.sum(1) == 0)
    if empty.size and not allow_empty:
        raise DataError(f"{ctx.where(int(empty[0]), 'labels')}: row {rows[empty[0]]['id']!r} has no label "
                        f"({empty.size} such rows); give it one, or pass --empty-labels allow if "
                        "'no emotion' is a valid answer")
    return y, names, warns


def _unknown_columns(ctx: _Ctx, extra: list[str], why: str) -> None:
    hints = "".join(did_you_mean(c, list(KNOWN_COLUMNS)) for c in extra)
    raise DataError(f"manifest {ctx.path}: unknown column(s) {extra} ({why}).{hints} "
                    f"Known columns: {', '.join(KNOWN_COLUMNS)}; rename or remove them")


def _labels_from_names(ctx: _Ctx, rows, names) -> tuple[np.ndarray, list[str], list[str]]:
    sets = [[s.strip() for s in r.get("labels", "").split(";") if s.strip()] for r in rows]
    found = Counter(x for s in sets for x in s)
    warns: list[str] = []
    if names is None:
        names = sorted(found)
        warns = _typo_warnings(found)
        if not names:
            raise DataError(f"manifest {ctx.path}: every `labels` cell is empty; no label names found")
    index = {nm: j for j, nm in enumerate(names)}
    y = np.zeros((len(rows), len(names)), np.uint8)
    for i, s in enumerate(sets):
        for lab in s:
            j = index.get(lab)
            if j is None:
                raise DataError(f"{ctx.where(i, 'labels')}: label {lab!r} is not in --label-names {names}."
                                f"{did_you_mean(lab, names)} Fix the row or add the name to --label-names")
            y[i, j] = 1
    return y, names, warns


def _labels_from_columns(ctx: _Ctx, rows, extra, names) -> tuple[np.ndarray, list[str], list[str]]:
    if names is not None:
        missing = [nm for nm in names if nm not in extra]
        if missing:
            raise DataError(f"manifest {ctx.path}: --label-names {missing} have no 0/1 column "
                            f"(label columns found: {extra})")
        unknown = [c for c in extra if c not in names]
        if unknown:
            _unknown_columns(ctx, unknown, "not in --label-names")
    cols = names if names is not None else extra
    y = np.zeros((len(rows), len(cols)), np.uint8)
    for j, c in enumerate(cols):
        for i, r in enumerate(rows):
            v = r.get(c, "")
            if v not in ("0", "1", "0.0", "1.0"):
                known = did_you_mean(c, list(KNOWN_COLUMNS))
                raise DataError(f"{ctx.where(i, c)}: {v!r} is not 0 or 1. Without a `labels` column every "
                                f"column other than {', '.join(KNOWN_COLUMNS)} is a 0/1 label column.{known}")
            y[i, j] = v.startswith("1")
    return y, list(cols), []


def _typo_warnings(found: Counter) -> list[str]:
    """Rare label names that are one small edit away from a frequent one (likely typos)."""
    total = sum(found.values())
    warns = []
    for name, n in found.items():
        if n > max(2, 0.01 * total):
            continue
        frequent = [f for f, m in found.items() if m >= 5 * n and f != name]
        close = [f for f in frequent if _edit_distance(name.lower(), f.lower()) <= (1 if len(f) <= 4 else 2)]
        close = close or difflib.get_close_matches(name, frequent, n=1, cutoff=0.8)
        if close:
            warns.append(f"label {name!r} appears only {n} time(s) and looks like {close[0]!r} "
                         f"({found[close[0]]}); fix the rows or pass --label-names to make it an error")
    return warns


def _edit_distance(a: str, b: str) -> int:
    """Edits (insert, delete, substitute, swap two neighbours) that turn `a` into `b`."""
    d = [[i + j if i * j == 0 else 0 for j in range(len(b) + 1)] for i in range(len(a) + 1)]
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] != b[j - 1]))
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                d[i][j] = min(d[i][j], d[i - 2][j - 2] + 1)
    return d[len(a)][len(b)]


# ----------------------------------------------------------------------------- splits


def _splits(ctx: _Ctx, rows, columns, items, seed, ratios, need_all) -> tuple[list[str], dict[str, Any]]:
    has_dialogues = any(it.dialogue is not None for it in items)
    if "split" in columns:
        splits = []
        for i, r in enumerate(rows):
            key = r.get("split", "").lower()
            if key not in SPLIT_ALIASES:
                raise DataError(f"{ctx.where(i, 'split')}: {r.get('split', '')!r} is not a split; use train, "
                                "valid or test (dev/val mean valid), or drop the column for a seeded split")
            splits.append(SPLIT_ALIASES[key])
        if has_dialogues:
            _check_dialogue_splits(ctx, items, splits)
        record: dict[str, Any] = {"source": "column"}
    else:
        splits = seeded_split(items, seed, ratios)
        record = {"source": "seeded", "seed": int(seed), "ratios": [float(r) for r in ratios],
                  "unit": "dialogue" if has_dialogues else "item"}
    if need_all:
        missing = [s for s in SPLITS if s not in splits]
        if missing:
            raise DataError(f"manifest {ctx.path}: no row in split(s) {missing}; training needs train, valid and "
                            "test rows (give more rows, or fix the split column)")
    record["sizes"] = {s: splits.count(s) for s in SPLITS}
    return splits, record


def _check_dialogue_splits(ctx: _Ctx, items: list[MediaItem], splits: list[str]) -> None:
    seen: dict[str, tuple[str, int]] = {}
    for i, (it, s) in enumerate(zip(items, splits)):
        if it.dialogue is None:
            raise DataError(f"{ctx.where(i, 'dialogue')}: empty dialogue id; with a dialogue column every row "
                            "needs one")
        first = seen.setdefault(it.dialogue, (s, it.line))
        if first[0] != s:
            raise DataError(f"{ctx.where(i, 'split')}: dialogue {it.dialogue!r} is in split {s!r} here but in "
                            f"{first[0]!r} on line {first[1]}; a dialogue must stay in one split")


def seeded_split(items: Sequence[MediaItem], seed: int = 0,
                 ratios: Sequence[float] = DEFAULT_RATIOS) -> list[str]:
    """train/valid/test per item from a seeded shuffle of the items (or of their dialogues, so
    a dialogue never straddles splits). Each split gets at least one unit when there are >= 3."""
    if len(ratios) != 3 or any(r < 0 for r in ratios) or not math.isclose(sum(ratios), 1.0, abs_tol=1e-6):
        raise DataError(f"split ratios {list(ratios)} must be three numbers >= 0 that sum to 1")
    units = list(dict.fromkeys(it.dialogue if it.dialogue is not None else f"\0{it.id}" for it in items))
    order = np.random.default_rng(seed).permutation(len(units))
    n = len(units)
    n_valid = int(round(ratios[1] * n))
    n_test = int(round(ratios[2] * n))
    if n >= 3:
        n_valid, n_test = max(n_valid, 1), max(n_test, 1)
    n_train = max(n - n_valid - n_test, 0)
    names = np.array(["train"] * n_train + ["valid"] * n_valid + ["test"] * n_test, dtype=object)[:n]
    assigned = dict(zip((units[k] for k in order), names))
    return [str(assigned[it.dialogue if it.dialogue is not None else f"\0{it.id}"]) for it in items]
