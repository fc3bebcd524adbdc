"""MEmoR converter: clips of *The Big Bang Theory* -> one multi-label sample per target person.

MEmoR (Shen et al., ACM MM 2020, "Multimodal Emotion Reasoning in Videos") annotates the emotion
of a target character at a target moment of a clip, speaker or not. RAMer (Yang et al., 2025)
reports multi-label results on it but does not release its multi-label protocol, so
**the protocol below is OURS** (documented in docs/datasets.md):

* one sample per (split, clip, character) that has at least one annotation;
* its label set is the union of that person's annotated emotions in that clip and split (the
  target moments are not used);
* its sequences are that person's per-segment vectors: audio and text exist only for segments
  the person speaks, visual only where our visual file has a vector for the person; a person who
  never speaks has audio and text marked missing (length 0);
* ``personality`` (118-d per character, L2-normalised across characters as the release does)
  becomes the extra input ``extras["personality"]``; ``extras["clip"]`` and
  ``extras["character"]`` (1-d, the clip's index in sorted clip order and the character index)
  tell RAMer which samples share a scene or a person;
* splits: ``train_id.txt`` / ``test_id.txt`` list annotation indices (into the chosen label
  set's list) as the release's loader reads them; a line that is not an integer is taken as a
  clip id (all its annotations). Validation = ``valid_fraction`` (20%) of the train samples,
  drawn with ``np.random.RandomState(seed=2020)`` as the release does (over our samples).

Expected layout under ``path`` (release names unless marked OURS; ``features/`` may also be
the root itself)::

    data.json        {clip: {"on_character": [c...], "speakers": [c per segment],
                             "seg_start": [...], "seg_end": [...], "seg_ori_ind": [...]}}
    anno.json        {"primary" | "fine_grained": [{"clip", "character", "moment", "emotion"}]}
    train_id.txt, test_id.txt
    features/audio_features.json   "<clip>+<seg_ori_ind>" -> vector (the speaker's utterance);
                                   a .npz with the same keys is accepted (OURS, faster)
    features/text_features.json    the same, for text
    features/visual_features.npz   OURS: "<clip>+<character index>+<segment index>" -> vector
                                   (e.g. face ‖ object ‖ environment means, 4,302-d); the release
                                   ships raw per-frame features instead, to be pooled by the user
    features/character_features.csv  one row of numbers per character, no header, in the order
                                   of ``characters``

Characters are integers (indices into ``characters``) in the release; names are accepted too.

Example:
    >>> store = convert_memor("MEmoR/data", "stores/memor", label_set="primary")  # doctest: +SKIP
"""

from __future__ import annotations

import csv
import json
import os
import warnings
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from mmerkit.data.converters import register_converter
from mmerkit.data.padding import pad_ragged
from mmerkit.data.store import EmptyLabelPolicy, FeatureStore, NanPolicy, SplitArrays, write_store
from mmerkit.errors import DataError

EMOTIONS = ["neutral", "joy", "anger", "disgust", "sadness", "surprise", "fear", "anticipation",
            "trust", "serenity", "interest", "annoyance", "boredom", "distraction"]
CHARACTERS = ["sheldon", "leonard", "howard", "rajesh", "penny", "bernadette", "amy", "others"]
LABEL_SETS = {"primary": 9, "fine_grained": 14}
MODALITIES = ("text", "visual", "audio")
SequenceMode = Literal["compact", "segments"]


def label_names(label_set: str) -> list[str]:
    """The 9 primary or 14 fine-grained emotion names, in the release's order."""
    return EMOTIONS[:LABEL_SETS[_label_set(label_set)]]


def _label_set(label_set: str) -> str:
    key = {"fine": "fine_grained", "fine-grained": "fine_grained"}.get(label_set, label_set)
    if key not in LABEL_SETS:
        raise DataError(f"label_set={label_set!r}: expected 'primary' (9 labels) or 'fine_grained' (14)")
    return key


# ----------------------------------------------------------------------------- reading files


def _read_json(path: Path, what: str) -> Any:
    if not path.is_file():
        raise DataError(f"{path} is missing ({what}); point the converter at the MEmoR data "
                        "directory that holds data.json, anno.json and features/")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path} is not valid JSON ({e}); download or unpack it again") from None


def _find(root: Path, name: str) -> Path | None:
    for base in (root / "features", root):
        if (base / name).is_file():
            return base / name
    return None


class _Vectors:
    """Keyed feature vectors from a .json (release) or .npz (ours); all of one dim."""

    def __init__(self, path: Path, modality: str):
        self.path, self.modality = path, modality
        if path.suffix == ".npz":
            try:
                z = np.load(path, allow_pickle=False)
            except (ValueError, OSError) as e:
                raise DataError(f"{path} is not a readable .npz ({e})") from None
            self.table: Any = z
            keys = list(z.files)
        else:
            self.table = _read_json(path, f"{modality} features")
            if not isinstance(self.table, dict):
                raise DataError(f"{path}: expected a JSON object key -> vector, got {type(self.table).__name__}")
            keys = list(self.table)
        if not keys:
            raise DataError(f"{path}: no {modality} vectors in the file")
        self.keys = set(keys)
        self.dim = int(np.asarray(self.table[keys[0]]).reshape(-1).shape[0])

    def get(self, key: str) -> np.ndarray | None:
        if key not in self.keys:
            return None
        v = np.asarray(self.table[key], dtype=np.float32).reshape(-1)
        if v.shape[0] != self.dim:
            raise DataError(f"{self.path}: {self.modality} vector {key!r} has {v.shape[0]} values, others "
                            f"{self.dim}; every vector of a modality needs the same dim")
        return v


def _feature_file(root: Path, modality: str, given: str | os.PathLike | None) -> Path:
    if given is not None:
        p = Path(given)
        p = p if p.is_absolute() else root / p
        if not p.is_file():
            raise DataError(f"{p} ({modality} features) does not exist")
        return p
    names = ([f"{modality}_features.npz", f"{modality}_features.json"] if modality != "visual"
             else ["visual_features.npz"])
    for nm in names:
        p = _find(root, nm)
        if p is not None:
            return p
    raise DataError(f"{root}: no {modality} features ({' or '.join(names)} under {root / 'features'}); "
                    f"see docs/datasets.md for the layout, or leave {modality!r} out of modalities=")


def read_personality(path: Path, n_characters: int) -> np.ndarray:
    """(n_characters, D) personality vectors, each column L2-normalised across characters."""
    rows = []
    with open(path, newline="", encoding="utf-8") as f:
        for line_no, row in enumerate(csv.reader(f), 1):
            if not row or not "".join(row).strip():
                continue
            try:
                rows.append([float(v) for v in row])
            except ValueError:
                if line_no == 1 and not rows:
                    continue  # a header row
                raise DataError(f"{path}, line {line_no}: expected comma-separated numbers, got "
                                f"{','.join(row)[:60]!r}") from None
    if len(rows) < n_characters:
        raise DataError(f"{path}: {len(rows)} personality rows for {n_characters} characters; expected one "
                        "row per character, in the order of `characters`")
    if len({len(r) for r in rows}) != 1:
        raise DataError(f"{path}: rows have different lengths {sorted({len(r) for r in rows})}")
    x = np.asarray(rows[:n_characters], np.float64)
    norm = np.linalg.norm(x, axis=0, keepdims=True)
    return (x / np.maximum(norm, 1e-12)).astype(np.float32)


def _read_ids(path: Path) -> list[str]:
    if not path.is_file():
        raise DataError(f"{path} is missing (split ids: one annotation index per line)")
    return [s.strip() for s in path.read_text(encoding="utf-8").splitlines() if s.strip()]


# ----------------------------------------------------------------------------- protocol


def _character_index(c: Any, characters: Sequence[str], where: str) -> int:
    if isinstance(c, (int, np.integer)) and not isinstance(c, bool) and 0 <= c < len(characters):
        return int(c)
    if isinstance(c, str):
        if c.strip().isdigit() and int(c) < len(characters):
            return int(c)
        low = [x.lower() for x in characters]
        if c.lower() in low:
            return low.index(c.lower())
    raise DataError(f"{where}: unknown character {c!r}; expected an index 0..{len(characters) - 1} or one of "
                    f"{list(characters)} (pass characters=[...] for another cast)")


def _assign_splits(annos: list, root: Path, train_ids: str, test_ids: str) -> list[str | None]:
    """Split of each annotation from the id files (annotation indices, or clip ids)."""
    split_of: list[str | None] = [None] * len(annos)
    by_clip: dict[str, list[int]] = defaultdict(list)
    for j, a in enumerate(annos):
        by_clip[str(a.get("clip"))].append(j)
    for split, fname in (("train", train_ids), ("test", test_ids)):
        path = root / fname if not Path(fname).is_absolute() else Path(fname)
        for line_no, tok in enumerate(_read_ids(path), 1):
            if tok.lstrip("-").isdigit():
                j = int(tok)
                if not 0 <= j < len(annos):
                    raise DataError(f"{path}, line {line_no}: annotation index {j} outside 0..{len(annos) - 1}; "
                                    "is the file for this label set?")
                targets = [j]
            elif tok in by_clip:
                targets = by_clip[tok]
            else:
                raise DataError(f"{path}, line {line_no}: {tok!r} is neither an annotation index nor a clip "
                                "of anno.json")
            for j in targets:
                if split_of[j] not in (None, split):
                    raise DataError(f"annotation {j} (clip {annos[j].get('clip')!r}) is in both {train_ids} "
                                    f"and {test_ids}; the splits must not overlap")
                split_of[j] = split
    return split_of


def _group_samples(annos: list, split_of: list, names: list[str], characters, data: dict, anno_path: Path):
    """{split: {(clip, character index): set of label indices}} in first-seen order."""
    groups: dict[str, dict[tuple[str, int], set[int]]] = {"train": {}, "test": {}}
    for j, a in enumerate(annos):
        if split_of[j] is None:
            continue
        where = f"{anno_path}, annotation {j}"
        if not isinstance(a, dict) or not {"clip", "character", "emotion"} <= set(a):
            raise DataError(f"{where}: expected {{clip, character, moment, emotion}}, got {a!r:.80}")
        clip = str(a["clip"])
        if clip not in data:
            raise DataError(f"{where}: clip {clip!r} is not in data.json")
        emo = str(a["emotion"]).lower()
        if emo not in names:
            raise DataError(f"{where}: emotion {a['emotion']!r} is not one of the {len(names)} labels {names}; "
                            "use label_set='fine_grained' for the 14 fine-grained labels")
        key = (clip, _character_index(a["character"], characters, where))
        groups[split_of[j]].setdefault(key, set()).add(names.index(emo))
    return groups


def _person_sequences(clip: str, char: int, info: dict, vecs: dict[str, _Vectors], mode: SequenceMode):
    """Per modality: (steps, D) array of that person's vectors in this clip."""
    speakers = list(info.get("speakers", []))
    n_seg = len(info.get("seg_start", speakers))
    seg_ori = list(info.get("seg_ori_ind", range(n_seg)))
    out = {}
    for m, table in vecs.items():
        rows: list[np.ndarray | None] = []
        for ii in range(n_seg):
            if m == "visual":
                v = table.get(f"{clip}+{char}+{ii}")
            else:
                speaks = ii < len(speakers) and _same_character(speakers[ii], char)
                v = table.get(f"{clip}+{seg_ori[ii]}") if speaks and ii < len(seg_ori) else None
            rows.append(v)
        found = [r for r in rows if r is not None]
        if mode == "compact" or not found:
            out[m] = np.stack(found) if found else np.zeros((0, table.dim), np.float32)
        else:
            z = np.zeros(table.dim, np.float32)
            out[m] = np.stack([z if r is None else r for r in rows])
    return out


def _same_character(s: Any, char: int) -> bool:
    if isinstance(s, (int, np.integer)):
        return int(s) == char
    return str(s).strip().isdigit() and int(s) == char


def _split_arrays(keys, groups, data, vecs, mode, n_labels, personality, characters) -> SplitArrays:
    seqs: dict[str, list[np.ndarray]] = {m: [] for m in vecs}
    y = np.zeros((len(keys), n_labels), np.uint8)
    for i, (clip, char) in enumerate(keys):
        for m, s in _person_sequences(clip, char, data[clip], vecs, mode).items():
            seqs[m].append(s)
        y[i, sorted(groups[(clip, char)])] = 1
    feats, lens = {}, {}
    for m, ss in seqs.items():
        feats[m], lens[m] = pad_ragged(ss, vecs[m].dim)
    # who and where: RAMer's inter-person (same clip) and intra-person (same character) attention
    clip_index = {clip: i for i, clip in enumerate(sorted(data))}
    extras = {"clip": np.array([[clip_index[clip]] for clip, _ in keys], np.float32),
              "character": np.array([[c] for _, c in keys], np.float32)}
    if personality is not None:
        extras["personality"] = personality[[c for _, c in keys]]
    ids = [f"{clip}+{characters[c]}" for clip, c in keys]
    return SplitArrays(features=feats, labels=y, lengths=lens, ids=ids, extras=extras)


def read_memor(path: str | os.PathLike, *, label_set: str = "primary", modalities: Sequence[str] = MODALITIES,
               personality: bool = True, sequence: SequenceMode = "compact", valid_fraction: float = 0.2,
               seed: int = 2020, characters: Sequence[str] = CHARACTERS, train_ids: str = "train_id.txt",
               test_ids: str = "test_id.txt", audio_file: str | None = None, text_file: str | None = None,
               visual_file: str | None = None, personality_file: str | None = None) -> dict[str, SplitArrays]:
    """Read a MEmoR directory into {train, valid, test: SplitArrays} (see module doc)."""
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"{root} is not a directory; pass the MEmoR data directory (data.json, anno.json, ...)")
    key = _label_set(label_set)
    if sequence not in ("compact", "segments"):
        raise DataError(f"sequence={sequence!r}: expected 'compact' or 'segments'")
    if not 0.0 <= valid_fraction < 1.0:
        raise DataError(f"valid_fraction={valid_fraction} must be in [0, 1)")
    bad = [m for m in modalities if m not in MODALITIES]
    if bad or not modalities:
        raise DataError(f"modalities={list(modalities)}: choose one or more of {list(MODALITIES)}")
    names = label_names(key)
    data = _read_json(root / "data.json", "clip structure")
    anno_path = root / "anno.json"
    annos = _read_json(anno_path, "annotations")
    if not isinstance(annos, dict) or key not in annos or not isinstance(annos[key], list):
        raise DataError(f"{anno_path}: expected an object with a list under {key!r}")
    annos = annos[key]
    given = {"audio": audio_file, "text": text_file, "visual": visual_file}
    vecs = {m: _Vectors(_feature_file(root, m, given[m]), m) for m in modalities}
    pers = None
    if personality:
        p = (Path(personality_file) if personality_file and Path(personality_file).is_absolute()
             else root / personality_file if personality_file else _find(root, "character_features.csv"))
        if p is None or not p.is_file():
            raise DataError(f"{root}: no features/character_features.csv (personality); pass "
                            "personality=False (CLI: --no-personality) to convert without it")
        pers = read_personality(p, len(characters))

    split_of = _assign_splits(annos, root, train_ids, test_ids)
    if None in split_of:
        warnings.warn(f"{anno_path}: {split_of.count(None)} of {len(annos)} {key} annotations are in neither "
                      f"{train_ids} nor {test_ids} and are left out", stacklevel=2)
    groups = _group_samples(annos, split_of, names, characters, data, anno_path)
    train_keys = list(groups["train"])
    idx = np.arange(len(train_keys))
    np.random.RandomState(seed).shuffle(idx)
    n_valid = int(len(train_keys) * valid_fraction)
    chosen = {"valid": np.sort(idx[:n_valid]), "train": np.sort(idx[n_valid:])}
    keys = {"train": [train_keys[i] for i in chosen["train"]],
            "valid": [train_keys[i] for i in chosen["valid"]],
            "test": list(groups["test"])}
    splits = {}
    for split, ks in keys.items():
        if not ks:
            if split == "valid" and valid_fraction == 0:
                continue
            raise DataError(f"MEmoR {split} split has no samples (check {train_ids} / {test_ids})")
        src = groups["test"] if split == "test" else groups["train"]
        splits[split] = _split_arrays(ks, src, data, vecs, sequence, len(names), pers, characters)
    return splits


@register_converter('memor', description=("MEmoR clips (licence-gated): one sample per target person, union of their "
                    "annotated emotions (our protocol), personality as an extra input"))
def convert_memor(path: str | os.PathLike, out: str | os.PathLike, *, nan_policy: NanPolicy = "reject",
                  overwrite: bool = False, label_set: str = "primary", modalities: Sequence[str] = MODALITIES,
                  personality: bool = True, sequence: SequenceMode = "compact", valid_fraction: float = 0.2,
                  seed: int = 2020, characters: Sequence[str] = CHARACTERS, train_ids: str = "train_id.txt",
                  test_ids: str = "test_id.txt", audio_file: str | None = None, text_file: str | None = None,
                  visual_file: str | None = None, personality_file: str | None = None,
                  empty_labels: EmptyLabelPolicy = "reject", name: str | None = None) -> FeatureStore:
    """Convert a MEmoR data directory into a store (our multi-label protocol, see module doc)."""
    key = _label_set(label_set)
    splits = read_memor(path, label_set=key, modalities=modalities, personality=personality,
                        sequence=sequence, valid_fraction=valid_fraction, seed=seed, characters=characters,
                        train_ids=train_ids, test_ids=test_ids, audio_file=audio_file, text_file=text_file,
                        visual_file=visual_file, personality_file=personality_file)
    return write_store(out, splits, label_names(key), name=name,
                       source=f"memor:{Path(path).name} ({key}, per-person union, {sequence})",
                       aligned=sequence == "segments", nan_policy=nan_policy, empty_labels=empty_labels,
                       overwrite=overwrite)
