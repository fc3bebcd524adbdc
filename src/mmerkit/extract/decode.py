"""Decode a media file (or one utterance cut from it) into a Clip with PyAV.

PyAV's wheels bundle FFmpeg, so no system ffmpeg is needed. Audio is resampled to mono float32
at `sample_rate`; video is sampled at a fixed `fps` by holding the latest decoded frame at each
sampling instant (k / fps after `start`), so a 30 fps and a 25 fps file give the same number of
frames for the same span. Times are relative to the file's first timestamp, i.e. what a media
player shows.

Example:
    >>> clip = decode("interview.mp4", start=12.0, end=15.5, fps=5)  # doctest: +SKIP
    >>> clip.audio.shape, clip.frames.shape  # doctest: +SKIP
    ((56000,), (18, 720, 1280, 3))
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from mmerkit.extract.base import Clip, MediaError, require

# first bytes of files that FFmpeg opens (images become one-frame "videos") but are not clips
_NOT_MEDIA = {b"\x89PNG": "a PNG image", b"\xff\xd8\xff": "a JPEG image", b"GIF8": "a GIF image",
              b"%PDF": "a PDF document", b"\x7fELF": "an executable", b"{": "JSON text"}


def describe_not_media(head: bytes) -> str | None:
    """What a file whose first bytes are `head` is, when it is a common non-media kind, else None."""
    for magic, name in _NOT_MEDIA.items():
        if head.startswith(magic):
            return name
    return None


def _open(path: Path) -> Any:
    av = require("av")
    if not path.exists():
        raise MediaError(f"media file {path} does not exist; check the path (relative paths are "
                         "resolved against the manifest's folder)")
    if not path.is_file():
        raise MediaError(f"media path {path} is not a file")
    with open(path, "rb") as f:
        kind = describe_not_media(f.read(16))
    if kind:  # the name says nothing: a PNG renamed .mp4 is still a PNG
        raise MediaError(f"media file {path} is {kind}, not audio or video; give a video or audio file")
    try:
        return av.open(str(path))
    except (av.error.FFmpegError, OSError, UnicodeDecodeError) as e:
        raise MediaError(f"media file {path} cannot be read as audio/video ({e}); "
                         "is it a media file, and is it complete?") from None


def _container_offset(container: Any) -> float:
    start = container.start_time
    return 0.0 if start is None else start / 1_000_000.0


def _duration(container: Any) -> float | None:
    if container.duration is not None:
        return container.duration / 1_000_000.0
    spans = [float(s.duration * s.time_base) for s in container.streams
             if s.duration is not None and s.time_base is not None]
    return max(spans) if spans else None


def probe(path: str | Path) -> dict[str, Any]:
    """Cheap look at a media file without decoding: duration (s or None), has_audio, has_video.

    Example:
        >>> probe("clip.mp4")  # doctest: +SKIP
        {'duration': 3.0, 'has_audio': True, 'has_video': True}
    """
    with _open(Path(path)) as container:
        return {
            "duration": _duration(container),
            "has_audio": bool(container.streams.audio),
            "has_video": bool(container.streams.video),
        }


def _check_cut(path: Path, start: float | None, end: float | None, duration: float | None) -> None:
    if start is not None and (not math.isfinite(start) or start < 0):
        raise MediaError(f"{path}: start={start} must be a number >= 0 (seconds)")
    if end is not None and not math.isfinite(end):
        raise MediaError(f"{path}: end={end} must be a finite number of seconds")
    if start is not None and end is not None and start >= end:
        raise MediaError(f"{path}: start={start} is not before end={end}; swap them or fix the row")
    if start is not None and duration is not None and start >= duration:
        raise MediaError(f"{path}: start={start} is beyond the end of the media "
                         f"({duration:.3f} s long)")


def _seek(container: Any, stream: Any, start: float, origin: float) -> None:
    if start > 0 and stream.time_base is not None:
        container.seek(int((start + origin) / stream.time_base), stream=stream, backward=True)


def _decode_audio(container: Any, start: float, end: float | None, sample_rate: int,
                  origin: float) -> np.ndarray:
    av = require("av")
    stream = container.streams.audio[0]
    _seek(container, stream, start, origin)
    resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
    chunks: list[np.ndarray] = []
    first_time: float | None = None
    cursor = None  # running time for streams without timestamps
    for frame in container.decode(stream):
        t = frame.time - origin if frame.time is not None else (cursor or 0.0)
        cursor = t + frame.samples / frame.sample_rate
        if cursor <= start:
            continue
        if end is not None and t >= end:
            break
        if first_time is None:
            first_time = t
        chunks.extend(f.to_ndarray().reshape(-1) for f in resampler.resample(frame))
    if first_time is None:
        return np.zeros(0, np.float32)
    chunks.extend(f.to_ndarray().reshape(-1) for f in resampler.resample(None))
    audio = np.concatenate(chunks).astype(np.float32, copy=False)
    head = max(0, round((start - first_time) * sample_rate))
    audio = audio[head:]
    if end is not None:
        audio = audio[: max(0, round((end - start) * sample_rate))]
    return np.ascontiguousarray(audio)


def _decode_video(container: Any, start: float, end: float | None, fps: float,
                  origin: float, max_side: int | None, seek: bool = True) -> np.ndarray:
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    if seek:
        _seek(container, stream, start, origin)
    out: list[np.ndarray] = []
    held: list | None = None  # [av frame, its RGB array once needed]
    last_t = start
    step = 1.0 / fps

    def next_target() -> float:
        return start + len(out) * step

    def emit(entry: list) -> None:
        if entry[1] is None:
            entry[1] = _to_rgb(entry[0], max_side)
        out.append(entry[1])

    for frame in container.decode(stream):
        t = frame.time - origin if frame.time is not None else last_t + step
        last_t = t
        # every sampling instant before this frame shows the newest earlier frame (or this one
        # when the stream starts after the instant)
        while next_target() < t and (end is None or next_target() < end):
            held = held or [frame, None]
            emit(held)
        if end is not None and t >= end:
            break
        held = [frame, None]
    if held is not None:
        frame_rate = float(stream.average_rate) if stream.average_rate else fps
        stop = last_t + 1.0 / frame_rate  # the last frame shows until the stream ends
        if end is not None:
            stop = min(stop, end)
        while next_target() < stop - 1e-6:
            emit(held)
    if not out:
        return np.zeros((0, 0, 0, 3), np.uint8)
    return np.stack(out)


def _video_after_audio(path: Path, container: Any, start: float, end: float | None, fps: float,
                       origin: float, max_side: int | None, rewind: bool) -> np.ndarray:
    av = require("av")
    try:
        if rewind:
            stream = container.streams.video[0]
            container.seek(int((start + origin) / stream.time_base), stream=stream, backward=True)
        return _decode_video(container, start, end, fps, origin, max_side, seek=not rewind)
    except av.error.FFmpegError as e:
        raise MediaError(f"media file {path}: its video cannot be decoded ({e})") from None


def _to_rgb(frame: Any, max_side: int | None) -> np.ndarray:
    if max_side and max(frame.width, frame.height) > max_side:
        scale = max_side / max(frame.width, frame.height)
        width = max(2, int(round(frame.width * scale / 2)) * 2)
        height = max(2, int(round(frame.height * scale / 2)) * 2)
        return frame.to_ndarray(format="rgb24", width=width, height=height)
    return frame.to_ndarray(format="rgb24")


def decode(
    path: str | Path,
    *,
    start: float | None = None,
    end: float | None = None,
    fps: float = 5.0,
    sample_rate: int = 16000,
    with_video: bool = True,
    max_side: int | None = None,
    clip_id: str | None = None,
) -> Clip:
    """Decode `path` (optionally only [start, end) seconds) into a Clip.

    Audio: float32 mono at `sample_rate`, None without an audio track. Frames: uint8 RGB
    (F, H, W, 3) at `fps`, None without a video stream or when `with_video` is False;
    `max_side` downsizes frames so their longer side is at most that many pixels.
    Raises MediaError for a missing or unreadable file, no audio and no video stream,
    start >= end, start beyond the end, or a cut that holds no media at all.

    Example:
        >>> decode("call.wav").audio.dtype  # doctest: +SKIP
        dtype('float32')
    """
    path = Path(path)
    if fps <= 0:
        raise MediaError(f"{path}: fps={fps} must be > 0")
    with _open(path) as container:
        has_audio = bool(container.streams.audio)
        has_video = bool(container.streams.video)
        if not has_audio and not has_video:
            raise MediaError(f"media file {path} has neither an audio nor a video stream")
        duration = _duration(container)
        _check_cut(path, start, end, duration)
        origin = _container_offset(container)
        begin = start or 0.0
        try:
            # without an end, stop at the container's duration: AAC pads its last packet
            audio_end = end if end is not None else duration
            audio = (_decode_audio(container, begin, audio_end, sample_rate, origin)
                     if has_audio else None)
        except require("av").error.FFmpegError as e:
            raise MediaError(f"media file {path}: its audio cannot be decoded ({e})") from None
        frames = None
        if has_video and with_video:
            # one open per clip (probing a container costs ~30 ms): rewind after the audio pass
            frames = _video_after_audio(path, container, begin, end, fps, origin, max_side,
                                        rewind=has_audio)
    audio_len = 0 if audio is None else len(audio)
    frame_len = 0 if frames is None else len(frames)
    if audio_len == 0 and frame_len == 0:
        where = ("" if start is None and end is None else
                 f" from {start or 0.0} s" + ("" if end is None else f" to {end} s"))
        raise MediaError(f"media file {path} holds no audio or video{where} (zero length)")
    if frames is not None and frame_len == 0:
        frames = None  # audio but the video stream ended before the cut: no visual modality
    return Clip(id=clip_id or path.stem, audio=audio, sample_rate=sample_rate, frames=frames,
                fps=float(fps), source=str(path), start=begin)
