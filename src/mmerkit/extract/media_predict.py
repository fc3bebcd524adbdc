"""Prediction from media: an export's extraction record -> the same extractors -> model inputs.

An export made from a store that `mmer extract` wrote carries that store's ``extract`` (the
ExtractConfig, the level, the split) and ``extractors`` (each extractor's `describe()`: name,
version, model sha256, dim, rate, options) records. `media_inputs` rebuilds the extractors
from them, checks that they would make the same features (mmerkit.extract.identity), runs
`media_features` on each clip, and assembles the arrays `Predictor.predict` takes: one sample
per clip, or per dialogue when the model was trained on dialogues.

Example:
    >>> ids, arrays, notes = media_inputs(meta, ["a.mp4", "b.mp4"])   # doctest: +SKIP
    >>> arrays["audio"].shape, arrays["audio_len"]                     # doctest: +SKIP
    ((2, 30, 42), array([30, 22]))
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mmerkit.data.padding import pad_ragged
from mmerkit.errors import DataError
from mmerkit.extract.featurize import pooled_utterance
from mmerkit.extract.identity import check_same_extractors, export_extract_config  # noqa: F401  (public here too)


def media_inputs(meta: Mapping[str, Any], media: Sequence[str | Path | None], *,
                 transcripts: Sequence[str | None] | None = None,
                 starts: Sequence[float | None] | None = None, ends: Sequence[float | None] | None = None,
                 ids: Sequence[str] | None = None, dialogues: Sequence[str | None] | None = None,
                 origin: str = "the export", progress: Any = None) -> tuple[list[str], dict[str, np.ndarray], dict[str, Any]]:
    """(sample ids, arrays {modality: (N, T, D), modality_len: (N,)}, notes) for `Predictor.predict`.

    One sample per clip, or, for a model trained on dialogues, one per dialogue id (clips without
    one are one-utterance dialogues). Clips longer than the longest training sample are cut to
    that length (noted in `notes["truncated"]`). `progress`: a `rich.progress.track`-like
    wrapper of the clip loop (the CLI's progress bar), or None.
    """
    from mmerkit.extract.featurize import export_featurizer

    n = len(media)
    transcripts = list(transcripts) if transcripts is not None else [None] * n
    starts = list(starts) if starts is not None else [None] * n
    ends = list(ends) if ends is not None else [None] * n
    ids = [str(i) for i in ids] if ids is not None else [Path(str(p)).stem if p else f"text{k}"
                                                          for k, p in enumerate(media)]
    if not (len(transcripts) == len(starts) == len(ends) == len(ids) == n):
        raise DataError(f"{n} media files but {len(transcripts)} transcripts / {len(ids)} ids; give one per file")
    fz = export_featurizer(meta, origin)
    feats, used_text, recognised = [], [], []
    for k in (progress or (lambda it, **_: it))(range(n), description="extracting features"):
        # a clip without an audio track is predicted with audio missing, as one without a face
        res = fz.featurize(media[k], transcript=transcripts[k], start=starts[k], end=ends[k], clip_id=ids[k],
                           audio_optional=True)
        feats.append(res.features)
        used_text.append(res.transcript)
        if res.used_asr:
            recognised.append(ids[k])
    # "recognised": the clips whose text came from speech recognition (not given, not from the manifest)
    notes: dict[str, Any] = {"transcripts": dict(zip(ids, used_text)), "recognised": recognised, "truncated": []}
    return (*samples_arrays(meta, ids, feats, fz.dims, dialogues, notes), notes)


def samples_arrays(meta: Mapping[str, Any], ids: list[str], feats: list[dict[str, np.ndarray]],
                   dims: Mapping[str, int], dialogues: Sequence[str | None] | None,
                   notes: dict[str, Any]) -> tuple[list[str], dict[str, np.ndarray]]:
    """(sample ids, arrays) of per-item features: one sample per item, or per dialogue for a
    dialogue-level export (items without a dialogue id are one-utterance dialogues); sequences
    longer than the training maximum are cut (noted in notes["truncated"])."""
    spec_max = {m: int(v) for m, v in meta.get("spec", {}).get("max_len", {}).items()}
    if meta["extract"].get("level") == "dialogue":
        return _dialogue_arrays(ids, feats, dims, dialogues, spec_max, notes)
    return ids, _utterance_arrays(ids, feats, dims, spec_max, notes)


def _cut(x: np.ndarray, limit: int | None, sid: str, m: str, notes) -> np.ndarray:
    if limit and len(x) > limit:
        notes["truncated"].append(f"{sid}:{m}:{len(x)}->{limit}")
        return x[:limit]
    return x


def _utterance_arrays(ids, feats, dims, spec_max, notes) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for m, d in dims.items():
        seqs = [_cut(f[m], spec_max.get(m), sid, m, notes) for sid, f in zip(ids, feats)]
        out[m], out[f"{m}_len"] = pad_ragged(seqs, d)
    return out


def _dialogue_arrays(ids, feats, dims, dialogues, spec_max, notes):
    keys = [d if d else f"\0{sid}" for sid, d in zip(ids, dialogues or [None] * len(ids))]
    order = list(dict.fromkeys(keys))
    groups = {k: [i for i, kk in enumerate(keys) if kk == k] for k in order}
    pooled = [pooled_utterance(f, dims) for f in feats]
    out: dict[str, np.ndarray] = {}
    for m, d in dims.items():
        seqs = []
        for k in order:
            steps = np.stack([pooled[i][0][m] for i in groups[k]])
            seqs.append(steps if any(pooled[i][1][m] for i in groups[k]) else steps[:0])
        out[m], out[f"{m}_len"] = pad_ragged([_cut(s, spec_max.get(m), k, m, notes) for s, k in zip(seqs, order)], d)
    names = [k[1:] if k.startswith("\0") else k for k in order]
    return names, out


def media_request(media: str | Path | Sequence[str | Path | None] | None,
                  transcripts: str | Sequence[str | None] | None = None,
                  manifest: str | Path | None = None) -> dict[str, list]:
    """Normalise what `predict_media` was given (files + transcripts, or a manifest) into
    per-clip lists: media, transcripts, starts, ends, ids, dialogues."""
    if manifest is not None:
        if media:
            raise DataError("give media files or a manifest, not both (CLI: --media or --manifest)")
        if transcripts:
            raise DataError("with a manifest, transcripts come from its transcript column; drop --transcript")
        from mmerkit.extract.manifest import read_media_manifest

        man = read_media_manifest(manifest, require_labels=False, media_required=False)
        items = man.items
        _check_media_exist([it.media for it in items], f"manifest {manifest}: ",
                           " (relative paths are read from the manifest's folder)")
        return {"media": [it.media for it in items], "transcripts": [it.transcript for it in items],
                "starts": [it.start for it in items], "ends": [it.end for it in items],
                "ids": [it.id for it in items], "dialogues": [it.dialogue for it in items]}
    if media is None or (not isinstance(media, (str, Path)) and len(media) == 0):
        raise DataError("nothing to predict: give at least one media file (CLI: --media clip.mp4) or --manifest")
    files = [media] if isinstance(media, (str, Path)) else list(media)
    texts = [transcripts] if isinstance(transcripts, str) else list(transcripts or [])
    if texts and len(texts) != len(files):
        raise DataError(f"{len(files)} media files but {len(texts)} transcripts: give one --transcript per "
                        "--media, in the same order (or none, for speech recognition)")
    _check_media_exist(files, "", "")
    texts = [t if t else None for t in texts] or [None] * len(files)
    stems = [Path(str(f)).stem if f else f"text{k}" for k, f in enumerate(files)]
    ids = stems if len(set(stems)) == len(stems) else [str(f) for f in files]
    return {"media": [Path(f) if f else None for f in files], "transcripts": texts,
            "starts": [None] * len(files), "ends": [None] * len(files), "ids": ids,
            "dialogues": [None] * len(files)}


def _check_media_exist(files: Sequence[str | Path | None], where: str, hint: str) -> None:
    """Every named media file exists and is a file, checked before any model or extractor loads."""
    bad = [Path(str(f)) for f in files if f and not Path(str(f)).is_file()]
    if bad:
        what = "is a folder, not a media file" if bad[0].is_dir() else "does not exist"
        more = f" ({len(bad) - 1} more missing)" if len(bad) > 1 else ""
        raise DataError(f"{where}media file {bad[0]} {what}{more}; check the path{hint}")


def manifest_labels(manifest: str | Path, label_names: Sequence[str]) -> np.ndarray | None:
    """(N, L) labels of a prediction manifest in the model's label order, when it has a label
    column (`labels`, or one 0/1 column per label); None when it has none."""
    import csv

    from mmerkit.extract.manifest import read_media_manifest

    with open(manifest, newline="", encoding="utf-8-sig") as f:
        header = {c.strip() for c in next(csv.reader(f), [])}
    if "labels" not in header and not header & set(label_names):
        return None
    man = read_media_manifest(manifest, label_names=list(label_names), empty_labels="allow",
                              media_required=False)
    return man.labels
