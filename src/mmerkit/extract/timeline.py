"""A long recording -> one feature sample per time window, each extractor run once over the file.

`timeline_windows` streams the file through PyAV once (`decode_stream`: pieces of a few seconds,
so a 1-hour file never holds more than one block of audio and one piece of frames), runs

- the face extractor over every frame once, keeping one tracker alive for the whole file when
  the extractor offers a `stream()` session (mediapipe: one landmarker in VIDEO mode);
- the audio extractor and speech recognition once per `BLOCK_SECONDS` of audio (Whisper reads
  30-second windows itself, so one block is one recogniser window), with word timestamps moved
  onto the file's timeline;

and cuts the windows `[k * hop, k * hop + window)` from those features: frames and audio steps
by their times, words by their midpoint. The text extractor then embeds each window's words
(cheap next to decoding, face tracking and recognition, which therefore do not grow with the
overlap). A window without a face, without words, or (for files without an audio track)
without audio has that modality missing (T = 0), which the model sees as missing: nothing is
filled with zeros. Features are dropped once no later window needs them, so memory stays flat
in the file's length.

Departures from per-clip extraction (`Featurizer.featurize`), where they matter: the audio
extractor sees 30-second blocks, so steps at a block edge lose a few milliseconds of context;
a word spoken across a block edge may be split or lost by the recogniser.

Example:
    >>> for w in timeline_windows(featurizer(meta), "talk.mp4", window=4, hop=2):  # doctest: +SKIP
    ...     print(w.start, w.end, {m: x.shape for m, x in w.features.items()}, w.transcript)
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mmerkit.errors import ConfigError
from mmerkit.extract.base import Clip, Features, MediaError, Word, require

BLOCK_SECONDS = 30.0  # audio features and speech recognition run on blocks this long
PIECE_SECONDS = 2.0  # decoded frames are handed to the face extractor in pieces this long
MAX_WINDOW = 600.0


@dataclass
class Window:
    """One window's features (modality -> (T, D); T = 0: missing) and the words said in it."""

    start: float
    end: float
    features: dict[str, np.ndarray]
    transcript: str
    missing: list[str]


def check_window(window: float, hop: float) -> None:
    """Window and hop are positive seconds, the hop no longer than the window (else gaps)."""
    for name, v in (("window", window), ("hop", hop)):
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
            raise ConfigError(f"--{name} must be a positive number of seconds, got {v!r}")
    if window > MAX_WINDOW:
        raise ConfigError(f"--window {window} is longer than {MAX_WINDOW:.0f} s; use windows of a few seconds")
    if hop > window:
        raise ConfigError(f"--hop {hop} is longer than --window {window}: parts of the recording would "
                          "belong to no window; use a hop <= the window")


# ----------------------------------------------------------------------------- decoding


def decode_stream(path: str | Path, *, fps: float, sample_rate: int, with_video: bool = True,
                  max_side: int | None = None, piece: float = PIECE_SECONDS) -> Iterator[Clip]:
    """Decode `path` once, in order, as consecutive Clips of `piece` seconds (the last shorter).

    Each Clip's `start` is its place in the file; audio is mono float32 at `sample_rate` (None
    without a track), frames are sampled at `fps` by holding the newest frame at each instant
    k / fps, as `decode` does. A leading gap before the first audio sample is filled with
    silence so that sample times are file times. Raises MediaError like `decode`.
    """
    from mmerkit.extract.decode import _container_offset, _duration, _open, _to_rgb

    av = require("av")
    path = Path(path)
    with _open(path) as container:
        astream = container.streams.audio[0] if container.streams.audio else None
        vstream = container.streams.video[0] if container.streams.video and with_video else None
        if astream is None and not container.streams.video:
            raise MediaError(f"media file {path} has neither an audio nor a video stream")
        if vstream is not None:
            vstream.thread_type = "AUTO"
        state = _StreamState(sample_rate, fps, _duration(container), piece,
                             has_audio=astream is not None, has_video=vstream is not None)
        origin = _container_offset(container)
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate) if astream else None
        try:
            for packet in container.demux(*[s for s in (astream, vstream) if s is not None]):
                for frame in packet.decode():
                    if packet.stream is astream:
                        state.add_audio(frame.time - origin if frame.time is not None else None,
                                        [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)])
                    else:
                        t = frame.time - origin if frame.time is not None else None
                        state.add_video(t, frame, lambda fr: _to_rgb(fr, max_side))
                yield from state.ready_pieces(path)
            if resampler is not None and state.audio_started:
                state.add_audio(None, [f.to_ndarray().reshape(-1) for f in resampler.resample(None)])
        except av.error.FFmpegError as e:
            raise MediaError(f"media file {path} cannot be decoded ({e}); is it complete?") from None
        if vstream is not None:
            rate = float(vstream.average_rate) if vstream.average_rate else fps
            state.finish_video(lambda fr: _to_rgb(fr, max_side), rate)
        state.done = True
        yield from state.ready_pieces(path)
        if state.emitted == 0:
            raise MediaError(f"media file {path} holds no audio or video (zero length)")


class _StreamState:
    """Buffers of decoded audio samples and sampled frames, handed out in whole pieces."""

    def __init__(self, sample_rate: int, fps: float, duration: float | None, piece: float,
                 has_audio: bool, has_video: bool):
        self.sr, self.fps, self.piece = sample_rate, fps, piece
        self.limit = None if duration is None else int(round(duration * sample_rate))
        self.has_audio, self.has_video = has_audio, has_video
        self.audio: list[np.ndarray] = []
        self.audio_total = 0  # samples appended so far (file time * sr)
        self.audio_started = False
        self.frames: list[np.ndarray] = []
        self.frame_total = 0  # frames sampled so far (next instant: frame_total / fps)
        self.held: list | None = None  # [av frame, RGB array once needed]
        self.last_t = 0.0
        self.emitted = 0  # pieces handed out
        self.done = False

    def add_audio(self, t: float | None, chunks: list[np.ndarray]) -> None:
        if not self.audio_started and t is not None and t > 0:
            gap = int(round(t * self.sr))  # the stream starts late: silence keeps file times
            self._append_audio(np.zeros(gap, np.float32))
        self.audio_started = True
        for c in chunks:
            self._append_audio(c.astype(np.float32, copy=False))

    def _append_audio(self, x: np.ndarray) -> None:
        if self.limit is not None:  # AAC pads its last packet past the container's duration
            x = x[: max(0, self.limit - self.audio_total)]
        if len(x):
            self.audio.append(x)
            self.audio_total += len(x)

    def add_video(self, t: float | None, frame: Any, to_rgb) -> None:
        t = self.last_t + 1.0 / self.fps if t is None else t
        self.last_t = t
        while self.frame_total / self.fps < t:  # instants before this frame show the held one
            self._emit_frame(self.held or [frame, None], to_rgb)
        self.held = [frame, None]

    def _emit_frame(self, entry: list, to_rgb) -> None:
        if entry[1] is None:
            entry[1] = to_rgb(entry[0])
        self.frames.append(entry[1])
        self.frame_total += 1

    def finish_video(self, to_rgb, frame_rate: float) -> None:
        if self.held is None:
            return
        stop = self.last_t + 1.0 / frame_rate  # the last frame shows until the stream ends
        if self.limit is not None:
            stop = min(stop, self.limit / self.sr + 1e-6)
        while self.frame_total / self.fps < stop - 1e-6:
            self._emit_frame(self.held, to_rgb)

    def ready_pieces(self, path: Path) -> Iterator[Clip]:
        while True:
            start = self.emitted * self.piece
            end = start + self.piece
            audio_ready = not self.has_audio or self.audio_total >= end * self.sr
            video_ready = not self.has_video or self.frame_total >= end * self.fps
            if not self.done and not (audio_ready and video_ready):
                return
            audio = self._take_audio(end)
            frames = self._take_frames(end)
            n_audio = 0 if audio is None else len(audio)
            n_frames = 0 if frames is None else len(frames)
            if n_audio == 0 and n_frames == 0:
                return
            self.emitted += 1
            yield Clip(id=f"{path.stem}@{start:g}", audio=audio, sample_rate=self.sr,
                       frames=frames if n_frames else None, fps=float(self.fps), source=str(path), start=start)

    def _take_audio(self, end: float) -> np.ndarray | None:
        if not self.has_audio:
            return None
        whole = np.concatenate(self.audio) if self.audio else np.zeros(0, np.float32)
        have_before = self.audio_total - len(whole)  # samples already handed out
        n = max(0, int(round(end * self.sr)) - have_before)
        self.audio = [whole[n:]] if len(whole) > n else []
        return np.ascontiguousarray(whole[:n])

    def _take_frames(self, end: float) -> np.ndarray | None:
        if not self.has_video:
            return None
        n = max(0, int(round(end * self.fps)) - (self.frame_total - len(self.frames)))
        taken, self.frames = self.frames[:n], self.frames[n:]
        return np.stack(taken) if taken else None


# ----------------------------------------------------------------------------- features


class _Track:
    """One modality's features so far on the file's timeline: values, [start, end) times, mask."""

    def __init__(self, dim: int):
        self.values = np.zeros((0, dim), np.float32)
        self.times = np.zeros((0, 2), np.float64)
        self.mask = np.zeros(0, bool)
        self.until = 0.0  # features are complete up to this time

    def add(self, feats: Features, offset: float, until: float) -> None:
        if len(feats):
            if feats.times is None:
                raise ConfigError("a timeline needs timed features; this extractor gives untimed steps")
            mask = np.ones(len(feats), bool) if feats.mask is None else feats.mask
            self.values = np.concatenate([self.values, feats.values])
            self.times = np.concatenate([self.times, feats.times.astype(np.float64) + offset])
            self.mask = np.concatenate([self.mask, mask])
        self.until = until

    def cut(self, start: float, end: float) -> Features:
        centre = self.times.mean(1)
        keep = (centre >= start) & (centre < end)
        return Features(self.values[keep], (self.times[keep] - start).astype(np.float32), self.mask[keep])

    def forget_before(self, t: float) -> None:
        keep = self.times[:, 1] > t
        self.values, self.times, self.mask = self.values[keep], self.times[keep], self.mask[keep]


def _stream_session(extractor) -> contextlib.AbstractContextManager:
    """The extractor's tracking session across pieces (`stream()`), else per-piece `extract`."""
    if hasattr(extractor, "stream"):
        return extractor.stream()
    return contextlib.nullcontext(extractor.extract)


def timeline_windows(fz, path: str | Path, *, window: float, hop: float) -> Iterator[Window]:
    """Windows of `path` in time order (see the module docstring); `fz` is a Featurizer."""
    check_window(window, hop)
    cfg = fz.config
    wants_asr = fz._wants_asr(None, None)
    tracks = {m: _Track(ex.dim) for m, ex in fz.extractors.items() if m != "text"}
    words: list[Word] = []
    audio_block: list[np.ndarray] = []
    block_start = 0.0
    has_audio = has_video = False
    next_k = 0  # the next window to hand out: [next_k * hop, next_k * hop + window)
    end_time = 0.0
    visual = fz.extractors.get("visual")
    session = _stream_session(visual) if visual is not None else contextlib.nullcontext(None)
    with session as track_faces:
        for piece in decode_stream(path, fps=cfg.fps, sample_rate=cfg.sample_rate, with_video=cfg.needs_video(),
                                   max_side=cfg.max_side):
            piece_end = piece.start + piece.duration
            end_time = max(end_time, piece_end)
            if piece.frames is not None:
                has_video = True
                if track_faces is not None:
                    tracks["visual"].add(track_faces(piece), piece.start, piece_end)
            if piece.audio is not None:
                has_audio = True
                audio_block.append(piece.audio)
                if sum(map(len, audio_block)) >= BLOCK_SECONDS * cfg.sample_rate:
                    block_start = _audio_block(fz, tracks, words, audio_block, block_start, wants_asr)
                    audio_block = []
            ready = [t.until for m, t in tracks.items() if _tracked(m, has_audio, has_video)]
            if wants_asr and has_audio:  # words are known up to the last recognised block
                ready.append(block_start)
            ready = min(ready or [piece_end])
            while next_k * hop + window <= ready + 1e-9:
                yield _window(fz, tracks, words, next_k * hop, next_k * hop + window, has_audio)
                next_k += 1
                _forget(tracks, words, next_k * hop)
        if audio_block:
            _audio_block(fz, tracks, words, audio_block, block_start, wants_asr)
    # the tail: windows that end with the file (one window for a file shorter than `window`)
    while next_k == 0 or (next_k - 1) * hop + window < end_time - 1e-6:
        start = next_k * hop
        if next_k and start >= end_time:
            break
        yield _window(fz, tracks, words, start, min(start + window, end_time), has_audio)
        next_k += 1


def _tracked(modality: str, has_audio: bool, has_video: bool) -> bool:
    return (modality == "audio" and has_audio) or (modality == "visual" and has_video)


def _audio_block(fz, tracks, words, chunks, start: float, wants_asr: bool) -> float:
    """Audio features and recognised words of one block; returns where the next block starts."""
    audio = np.concatenate(chunks)
    clip = Clip(id=f"block@{start:g}", audio=audio, sample_rate=fz.config.sample_rate, frames=None,
                fps=fz.config.fps, start=start)
    end = start + len(audio) / fz.config.sample_rate
    if "audio" in tracks:
        tracks["audio"].add(fz._run("audio", fz.extractors["audio"], clip), start, end)
    if wants_asr:
        _, block_words = fz.recognise(clip)
        words.extend(Word(w.text, w.start + start, w.end + start) for w in block_words)
    return end


def _forget(tracks, words: list[Word], t: float) -> None:
    for track in tracks.values():
        track.forget_before(t)
    words[:] = [w for w in words if w.end > t]


def _window(fz, tracks, words: list[Word], start: float, end: float, has_audio: bool) -> Window:
    said = [Word(w.text, w.start - start, w.end - start) for w in words
            if start <= (w.start + w.end) / 2 < end]
    raw = {m: t.cut(start, end) for m, t in tracks.items()}
    if "audio" in fz.extractors and not has_audio:
        raw["audio"] = Features.empty(fz.extractors["audio"].dim)
    if "text" in fz.extractors:
        text_clip = Clip(id=f"window@{start:g}", audio=None, sample_rate=fz.config.sample_rate, frames=None,
                         fps=fz.config.fps, transcript=" ".join(w.text for w in said), words=said or None)
        raw["text"] = fz._run("text", fz.extractors["text"], text_clip) if said else Features.empty(
            fz.extractors["text"].dim)
    if fz.config.align == "words":
        from mmerkit.extract.align import align_to_words

        feats = {m: np.asarray(x, np.float32).reshape(-1, fz.extractors[m].dim)
                 for m, x in align_to_words(raw, said).items()}
    else:
        from mmerkit.extract.featurize import _valid_values

        feats = {m: _valid_values(f) for m, f in raw.items()}
    feats = {m: feats[m] for m in fz.extractors}  # store order
    return Window(start, end, feats, " ".join(w.text for w in said), [m for m, x in feats.items() if len(x) == 0])
