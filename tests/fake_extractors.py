"""Tiny deterministic extractors for the pipeline tests (a plugin module: `plugins=["fake_extractors"]`).

They need no model files, run in microseconds, and append one line per call (name, clip id, process id) to
the file named by $MMERKIT_FAKE_LOG, so tests can count extractor calls across processes. The features
depend on the media (audio energy, mean colour), so different clips give different features.
$MMERKIT_FAKE_SLEEP (seconds) slows each call down, for the kill-and-resume test.
"""

from __future__ import annotations

import os
import time

import numpy as np

from mmerkit.extract.base import Extractor, Features, Word, frame_times, register_extractor


def _log(name: str, clip) -> None:
    path = os.environ.get("MMERKIT_FAKE_LOG")
    if path:
        with open(path, "a") as f:
            f.write(f"{name}\t{clip.id}\t{os.getpid()}\n")
    delay = float(os.environ.get("MMERKIT_FAKE_SLEEP", "0") or 0)
    if delay:
        time.sleep(delay)


@register_extractor("fake_text")
class FakeText(Extractor):
    modality = "text"
    version = "1"

    def __init__(self, dim: int = 6):
        super().__init__(dim=dim)
        self._dim = dim

    @property
    def dim(self) -> int:
        return self._dim

    def extract(self, clip) -> Features:
        _log(self.name, clip)
        words = (clip.transcript or "").split()
        rows = [np.full(self._dim, (sum(map(ord, w)) % 97) / 97.0, np.float32) for w in words]
        values = np.stack(rows) if rows else np.zeros((0, self._dim), np.float32)
        timed = clip.words is not None and len(clip.words) == len(words)
        return Features(values, None, word_index=np.arange(len(words)) if timed else None)


@register_extractor("fake_audio")
class FakeAudio(Extractor):
    modality = "audio"
    version = "1"
    rate = 10.0

    @property
    def dim(self) -> int:
        return 3

    def extract(self, clip) -> Features:
        _log(self.name, clip)
        hop = clip.sample_rate // 10
        n = len(clip.audio) // hop
        frames = clip.audio[: n * hop].reshape(n, hop)
        values = np.stack([np.abs(frames).mean(1), frames.std(1), np.full(n, clip.duration)], 1)
        return Features(values, frame_times(n, self.rate))


@register_extractor("fake_visual")
class FakeVisual(Extractor):
    """Mean RGB per frame; a frame whose mean is below 10 (black) counts as 'no face'."""

    modality = "visual"
    version = "1"

    @property
    def dim(self) -> int:
        return 3

    def extract(self, clip) -> Features:
        _log(self.name, clip)
        if clip.frames is None:
            return Features.empty(3)
        values = clip.frames.reshape(len(clip.frames), -1, 3).mean(1) / 255.0
        mask = values.mean(1) > 10 / 255.0
        values[~mask] = 0.0
        return Features(values, frame_times(len(values), clip.fps), mask)


@register_extractor("fake_asr")
class FakeASR(Extractor):
    """'Recognises' one word per half second of audio."""

    modality = "asr"
    version = "1"

    @property
    def dim(self) -> int:
        return 0

    def extract(self, clip) -> Features:
        raise NotImplementedError

    def transcribe(self, clip) -> tuple[str, list[Word]]:
        _log(self.name, clip)
        n = max(int(clip.duration / 0.5), 1)
        words = [Word(f"w{k}", 0.5 * k, 0.5 * k + 0.4) for k in range(n)]
        return " ".join(w.text for w in words), words
