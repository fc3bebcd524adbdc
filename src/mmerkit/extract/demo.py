"""Small generated media for trying `mmer extract` (and for the tests): no downloads, no files.

`write_clip` writes an mp4 (MPEG-4 video + AAC audio) or a wav with PyAV: a flat colour or a
given image (`skimage.data.astronaut()` is a photograph with a face) and a tone. `make_demo`
writes a folder of such clips and a manifest whose labels follow what is in them (a face and
a high tone and cheerful words for joy, a loud tone for anger, a low tone and sad words for
sadness; clips that are only sad show a dark frame, no face), so a model trained on it has something to learn.

    python -m mmerkit.extract.demo clips          # clips/*.mp4 + clips/manifest.csv

Example:
    >>> write_clip("tone.wav", 1.0, video=False)   # doctest: +SKIP
"""

from __future__ import annotations

import csv
import sys
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import numpy as np

from mmerkit.extract.base import require

PHRASES = {"joy": ["what a lovely day", "I am so happy for you", "this is wonderful news"],
           "anger": ["stop doing that right now", "I am furious with you", "this is unacceptable"],
           "sad": ["I miss her so much", "nothing is going right", "I feel so alone"]}

COMBOS = [["joy"], ["anger"], ["sad"], ["joy", "anger"], ["anger", "sad"], ["joy", "sad"], ["joy"], ["anger"]]


def write_clip(path: str | Path, seconds: float = 2.0, *, video: bool = True, audio: bool = True,
               colour: tuple[int, int, int] = (200, 120, 60), image: np.ndarray | None = None,
               freq: float = 220.0, loud: float = 0.3, fps: int = 10, size: int = 64,
               sample_rate: int = 16000) -> Path:
    """Write a short clip (mp4, or wav without video) and return its path."""
    av = require("av")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as out:
        vs = _video_stream(out, fps, size, image) if video else None
        aus = _audio_stream(out, sample_rate, path.suffix) if audio else None
        if vs is not None:
            frame = _picture(image, colour, vs.width, vs.height)
            for k in range(int(round(seconds * fps))):
                vf = av.VideoFrame.from_ndarray(frame, format="rgb24")
                vf.pts = k
                for packet in vs.encode(vf):
                    out.mux(packet)
            for packet in vs.encode():
                out.mux(packet)
        if aus is not None:
            _write_tone(out, aus, seconds, freq, loud, sample_rate)
    return path


def write_recording(path: str | Path, seconds: float, *, picture: Callable[[float], np.ndarray] | None,
                    wave: np.ndarray | None, fps: int = 10, sample_rate: int = 16000) -> Path:
    """Write a long mp4 with its audio and video interleaved as a camera writes them:
    `picture(t)` is the RGB frame shown at t seconds (None: no video), `wave` mono int16 samples
    (None: no audio track; shorter than `seconds`: silence after it)."""
    av = require("av")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as out:
        first = picture(0.0) if picture is not None else None
        vs = _video_stream(out, fps, 0, first) if first is not None else None
        aus = _audio_stream(out, sample_rate, path.suffix) if wave is not None else None
        if aus is not None:
            total = int(seconds * sample_rate)
            wave = np.pad(np.asarray(wave, np.int16)[:total], (0, max(0, total - len(wave))))
        written = 0
        for k in range(int(round(seconds * fps))):
            if vs is not None:
                image = _picture(picture(k / fps), None, vs.width, vs.height)
                frame = av.VideoFrame.from_ndarray(image, format="rgb24")
                frame.pts = k
                for packet in vs.encode(frame):
                    out.mux(packet)
            if aus is not None:
                upto = min(len(wave), int((k + 1) / fps * sample_rate))
                written = _mux_samples(out, aus, wave, written, upto, sample_rate)
        if vs is not None:
            for packet in vs.encode():
                out.mux(packet)
        if aus is not None:
            _mux_samples(out, aus, wave, written, len(wave), sample_rate)
            for packet in aus.encode():
                out.mux(packet)
    return path


def _mux_samples(out, stream, wave: np.ndarray, start: int, stop: int, sample_rate: int) -> int:
    av = require("av")
    for k in range(start, stop, 1024):
        frame = av.AudioFrame.from_ndarray(wave[None, k:min(k + 1024, stop)], format="s16", layout="mono")
        frame.sample_rate = sample_rate
        frame.pts = k
        for packet in stream.encode(frame):
            out.mux(packet)
    return stop


def spoken(text: str, sample_rate: int = 16000) -> np.ndarray | None:
    """`text` read by espeak-ng as mono int16 at `sample_rate` (None when espeak-ng is missing)."""
    import shutil
    import subprocess
    import tempfile

    if shutil.which("espeak-ng") is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "speech.wav"
        subprocess.run(["espeak-ng", "-w", str(wav), text], check=True, capture_output=True)
        av = require("av")
        with av.open(str(wav)) as container:
            resampler = av.AudioResampler(format="s16", layout="mono", rate=sample_rate)
            chunks = [f.to_ndarray().reshape(-1) for frame in container.decode(audio=0)
                      for f in resampler.resample(frame)]
            chunks += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
    return np.concatenate(chunks).astype(np.int16)


def _video_stream(out, fps: int, size: int, image):
    vs = out.add_stream("mpeg4", rate=fps)
    h, w = (size, size) if image is None else image.shape[:2]
    vs.width, vs.height = w - w % 2, h - h % 2
    vs.pix_fmt = "yuv420p"
    vs.time_base = Fraction(1, fps)
    return vs


def _audio_stream(out, sample_rate: int, suffix: str):
    aus = out.add_stream("pcm_s16le" if suffix == ".wav" else "aac", rate=sample_rate)
    aus.layout = "mono"
    return aus


def _picture(image, colour, width: int, height: int) -> np.ndarray:
    if image is not None:
        return np.ascontiguousarray(image[:height, :width, :3].astype(np.uint8))
    return np.tile(np.array(colour, np.uint8), (height, width, 1))


def _write_tone(out, stream, seconds: float, freq: float, loud: float, sample_rate: int) -> None:
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    mux_audio(out, stream, (loud * np.sin(2 * np.pi * freq * t) * 32767).astype(np.int16), sample_rate)


def mux_audio(out, stream, wave: np.ndarray, sample_rate: int) -> None:
    """Encode mono int16 samples into an open PyAV output's audio stream, then flush it."""
    av = require("av")
    for k in range(0, len(wave), 1024):
        frame = av.AudioFrame.from_ndarray(wave[None, k:k + 1024], format="s16", layout="mono")
        frame.sample_rate = sample_rate
        frame.pts = k
        for packet in stream.encode(frame):
            out.mux(packet)
    for packet in stream.encode():
        out.mux(packet)


def _face() -> np.ndarray | None:
    try:
        from skimage.data import astronaut
    except ImportError:  # scikit-image comes with the media extra; without it: no faces
        return None
    return astronaut()[:256, 128:384]


def make_demo(out: str | Path, clips: int = 24, seed: int = 0) -> Path:
    """Write `clips` labelled clips and OUT/manifest.csv (no split column: a seeded split)."""
    out = Path(out)
    rng = np.random.default_rng(seed)
    face = _face()
    rows = []
    for k in range(clips):
        labels = COMBOS[k % len(COMBOS)]
        joy, anger, sad = ("joy" in labels), ("anger" in labels), ("sad" in labels)
        write_clip(out / f"clip{k:02d}.mp4", 2.0, image=None if labels == ["sad"] else face,
                   colour=(40, 40, 60) if sad else (180, 150, 120), freq=330.0 if joy else 140.0 if sad else 220.0,
                   loud=0.8 if anger else 0.2, size=96)
        words = " and ".join(PHRASES[lab][int(rng.integers(3))] for lab in labels)
        rows.append({"id": f"clip{k:02d}", "media": f"clip{k:02d}.mp4", "transcript": words,
                     "labels": ";".join(labels)})
    with open(out / "manifest.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    write_clip(out / "new.mp4", 2.0, image=face, freq=330.0, loud=0.2, size=96)
    return out / "manifest.csv"


if __name__ == "__main__":
    print(f"wrote {make_demo(sys.argv[1] if len(sys.argv) > 1 else 'clips')}")
