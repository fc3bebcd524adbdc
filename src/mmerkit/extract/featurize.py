"""One media file (or an utterance cut from it) -> per-modality feature arrays.

`media_features` is the single path from media to features: `mmer extract` calls it for every
manifest row, and prediction from media (`mmer predict --media`, `Predictor.predict_media`, the
HTTP server's worker processes) calls it for new clips, so training and prediction features
are made the same way. Steps: decode (PyAV) -> transcript (given, a word-timing file, or speech
recognition per `ExtractConfig.asr`) -> one extractor per modality -> word alignment when
``align="words"``.

Extractors load their models once per process: `featurizer(config)` caches them.

Example:
    >>> cfg = ExtractConfig(visual=None)                                    # doctest: +SKIP
    >>> feats = media_features("clip.mp4", transcript="I am fine", config=cfg)  # doctest: +SKIP
    >>> {m: x.shape for m, x in feats.items()}                               # doctest: +SKIP
    {'text': (5, 384), 'audio': (300, 42)}
"""

from __future__ import annotations

import copy
import csv
import importlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mmerkit.errors import ConfigError, DataError
from mmerkit.extract.base import Clip, Features, MediaError, Word
from mmerkit.extract.config import ExtractConfig, make_config
from mmerkit.extract.identity import check_same_extractors, export_extract_config


@dataclass
class ItemFeatures:
    """What one item became: modality -> float32 (T, D) (T = 0: missing), and the text used."""

    features: dict[str, np.ndarray]
    transcript: str | None
    used_asr: bool
    duration: float


class Featurizer:
    """The extractors of one ExtractConfig, built once (models load here)."""

    def __init__(self, config: ExtractConfig):
        from mmerkit.extract.catalogue import create_extractor

        self.config = config
        import_plugins(config.plugins)
        self.extractors = {m: create_extractor(name, **params)
                           for m in config.modalities() for name, params in [config.extractor_spec(m)]}
        for m, ex in self.extractors.items():
            if ex.modality != m:
                raise ConfigError(f"extractor {ex.name!r} makes {ex.modality!r} features, not {m!r}; "
                                  f"name it as --{ex.modality}")
        self._asr = None
        self._described: dict[str, dict[str, Any]] | None = None
        self.checked: set[str] = set()  # export extractor records already compared with ours

    def describe(self) -> dict[str, dict[str, Any]]:
        """modality -> the extractor's `describe()` (names, versions, model sha256, dims, rates)."""
        if self._described is None:  # package versions are looked up once, not for every item
            self._described = {m: ex.describe() for m, ex in self.extractors.items()}
        return copy.deepcopy(self._described)

    def asr_describe(self) -> dict[str, Any] | None:
        return None if self._asr is None else self._asr.describe()

    @property
    def dims(self) -> dict[str, int]:
        return {m: int(ex.dim) for m, ex in self.extractors.items()}

    # -- one item
    def featurize(self, media: str | Path | None, *, transcript: str | None = None,
                  start: float | None = None, end: float | None = None,
                  words: list[Word] | None = None, clip_id: str | None = None,
                  audio_optional: bool = False) -> ItemFeatures:
        """Features of one utterance; raises MediaError for anything wrong with the media.
        `audio_optional` (prediction): a file without an audio track gives a missing audio
        modality (T = 0), as a clip without a face gives a missing visual one; extraction of a
        training store (False) refuses it instead, naming --audio none."""
        cfg = self.config
        clip = self._clip(media, start, end, clip_id, audio_optional)
        used_asr = False
        if self._wants_asr(transcript, words):
            if clip.audio is None or not len(clip.audio):
                raise MediaError(f"{media}: speech recognition needs an audio track, and there is none; "
                                 "give a transcript (and word timings for --align words) or --asr off")
            text, asr_words = self.recognise(clip)
            used_asr = True
            if cfg.asr == "on" or transcript is None:
                transcript = text
            words = words if words is not None else asr_words
        if cfg.align == "words" and words is not None:
            transcript = " ".join(w.text for w in words)  # the words are the steps: text follows them
        clip.transcript, clip.words = transcript, words
        raw = {m: self._run(m, ex, clip) if m != "audio" or clip.audio is not None
               else Features(np.zeros((0, ex.dim), np.float32), np.zeros((0, 2), np.float32))
               for m, ex in self.extractors.items()}
        if cfg.align == "words":
            out = self._aligned(raw, words or [], media)
        else:
            out = {m: _valid_values(f) for m, f in raw.items()}
        return ItemFeatures(out, transcript, used_asr, clip.duration)

    def _clip(self, media, start, end, clip_id, audio_optional: bool = False) -> Clip:
        cfg = self.config
        if start is not None and end is not None and start >= end:
            raise MediaError(f"{media}: start={start} is not before end={end}; fix the row (seconds)")
        if media is None:
            if cfg.audio is not None or cfg.visual is not None:
                raise MediaError("no media file given, but audio/visual extractors are configured")
            return Clip(id=clip_id or "text", audio=None, sample_rate=cfg.sample_rate, frames=None,
                        fps=cfg.fps)
        from mmerkit.extract.decode import decode

        clip = decode(media, start=start, end=end, fps=cfg.fps, sample_rate=cfg.sample_rate,
                      with_video=cfg.needs_video(), max_side=cfg.max_side, clip_id=clip_id)
        if cfg.audio is not None and clip.audio is None and not audio_optional:
            raise MediaError(f"{media} has no audio track, but the audio extractor {cfg.audio!r} needs one; "
                             "pass --audio none to extract video-only files")
        if clip.duration <= 0:
            raise MediaError(f"{media}: the cut [{start}, {end}) holds no media (zero length)")
        return clip

    def _wants_asr(self, transcript: str | None, words: list[Word] | None) -> bool:
        cfg = self.config
        if cfg.asr == "off" or cfg.asr_model is None:
            return False
        if cfg.asr == "on":
            return True
        return (cfg.text is not None and transcript is None) or (cfg.align == "words" and words is None)

    def recognise(self, clip: Clip) -> tuple[str, list[Word]]:
        """(text, words) of the clip's speech, with the configured recogniser (built on first use)."""
        if self._asr is None:
            from mmerkit.extract.catalogue import create_extractor

            self._asr = create_extractor(self.config.asr_model, **self.config.asr_params)
        return self._asr.transcribe(clip)

    @staticmethod
    def _run(modality: str, ex, clip: Clip) -> Features:
        feats = ex.extract(clip)
        if feats.values.shape[1:] != (ex.dim,):
            raise DataError(f"extractor {ex.name!r} returned {modality} features of shape "
                            f"{feats.values.shape}, but declares dim {ex.dim}: a bug in the extractor")
        return feats

    def _aligned(self, raw: dict[str, Features], words: list[Word], media) -> dict[str, np.ndarray]:
        if not words:
            raise MediaError(f"{media}: no words to align to (empty transcript or silence); "
                             "--align words needs speech with word times")
        from mmerkit.extract.align import align_to_words

        out = align_to_words(raw, words)
        return {m: np.asarray(out[m], np.float32).reshape(-1, self.extractors[m].dim) for m in raw}


def _valid_values(f: Features) -> np.ndarray:
    """(T, D) values; a modality whose steps are all invalid (no face at all) is missing (T = 0)."""
    if f.mask is not None and len(f.mask) and not f.mask.any():
        return np.zeros((0, f.values.shape[1]), np.float32)
    return np.ascontiguousarray(f.values, dtype=np.float32)


def import_plugins(modules: list[str]) -> None:
    """Import modules that register extra extractors (also done in each worker process)."""
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise ConfigError(f"plugin module {name!r} cannot be imported ({e}); check --plugin and "
                              "PYTHONPATH") from None


_FEATURIZERS: dict[str, Featurizer] = {}


def featurizer(config: ExtractConfig | Mapping[str, Any] | None = None) -> Featurizer:
    """The (cached, per process) Featurizer of a configuration: an ExtractConfig, its record, or
    an export's meta (its config.json, `Predictor.meta`; see `export_featurizer`)."""
    if isinstance(config, Mapping) and "extractors" in config and "extract" in config:
        return export_featurizer(config)
    cfg = make_config(config)
    key = json.dumps(cfg.record(), sort_keys=True)
    if key not in _FEATURIZERS:
        _FEATURIZERS[key] = Featurizer(cfg)
    return _FEATURIZERS[key]


def export_featurizer(meta: Mapping[str, Any], origin: str = "the export",
                      installed: str = "this machine's extractors") -> Featurizer:
    """The Featurizer that makes an export's features from media: its extraction settings
    (`export_extract_config`), built once per process, its extractors checked once against the
    ones built here (a DataError naming `origin` if they would make other features). The one
    export -> featurizer -> check path: prediction from media, the server and `media_features`."""
    fz = featurizer(export_extract_config(meta, origin))
    key = json.dumps(meta["extractors"], sort_keys=True)
    if key not in fz.checked:
        check_same_extractors(meta["extractors"], fz.describe(), origin, installed)
        fz.checked.add(key)
    return fz


def pooled_utterance(f: Mapping[str, np.ndarray], dims: Mapping[str, int]) -> tuple[dict[str, np.ndarray],
                                                                                   dict[str, bool]]:
    """One vector per utterance and modality: the mean over its steps (absent when T = 0); what
    a dialogue-level store holds per utterance, in extraction and in prediction from media."""
    vec = {m: (f[m].mean(0) if len(f[m]) else np.zeros(d, np.float32)) for m, d in dims.items()}
    return vec, {m: bool(len(f[m])) for m in dims}


def media_features(path: str | Path | None, *, transcript: str | None = None,
                   start: float | None = None, end: float | None = None,
                   config: ExtractConfig | Mapping[str, Any] | None = None,
                   words: list[Word] | None = None) -> dict[str, np.ndarray]:
    """Features of one media file (or its [start, end) seconds): modality -> float32 (T, D).

    T = 0 marks a missing modality (no face anywhere, no transcript with --asr off). `config`
    is an ExtractConfig, its record, or an export's meta (`Predictor.meta`, its config.json:
    then the export's extraction settings are used and its extractors checked against the
    installed ones); `words` are word times relative to `start`. Raises MediaError (a DataError) for a missing, unreadable or empty
    media file; the extractors of a configuration are built once per process.

    Example:
        >>> feats = media_features("clip.mp4", transcript="hello there")   # doctest: +SKIP
        >>> feats["visual"].shape                                            # doctest: +SKIP
        (15, 52)
    """
    return featurizer(config).featurize(path, transcript=transcript, start=start, end=end,
                                        words=words).features


# ----------------------------------------------------------------------------- word timings


def read_word_timings(path: str | Path) -> dict[str, list[tuple[str, float, float]]]:
    """A word-timing CSV (``id,word,start,end``; seconds in the media file's timeline) -> id ->
    [(word, start, end)] in file order."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"word-timing file {path} does not exist")
    out: dict[str, list[tuple[str, float, float]]] = {}
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        cols = [c.strip() for c in reader.fieldnames or []]
        need = [c for c in ("id", "word", "start", "end") if c not in cols]
        if need:
            raise DataError(f"word-timing file {path}: the header lacks {need}; expected id,word,start,end")
        for rec in reader:
            rec = {k.strip(): (v or "").strip() for k, v in rec.items() if k}
            try:
                s, e = float(rec["start"]), float(rec["end"])
            except ValueError:
                raise DataError(f"{path}, line {reader.line_num}: start/end must be seconds, got "
                                f"{rec['start']!r}, {rec['end']!r}") from None
            if not (math.isfinite(s) and math.isfinite(e)) or e < s or s < 0:
                raise DataError(f"{path}, line {reader.line_num}: word {rec['word']!r} has start {s} and end "
                                f"{e}; need 0 <= start <= end")
            out.setdefault(rec["id"], []).append((rec["word"], s, e))
    return out


def words_for(timings: Mapping[str, list[tuple[str, float, float]]] | None, item_id: str,
              start: float | None) -> list[Word] | None:
    """The item's words with times made relative to its cut (None when the file lacks the id)."""
    if timings is None or item_id not in timings:
        return None
    offset = start or 0.0
    return [Word(w, max(s - offset, 0.0), max(e - offset, 0.0)) for w, s, e in timings[item_id]]
