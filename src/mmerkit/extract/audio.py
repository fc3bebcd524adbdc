"""Audio features at 100 steps per second: `librosa` (default, ISC licence) or eGeMAPS.

`librosa` (this file's own definition, version "1"), per 10 ms step k covering
[k * 10 ms, (k + 1) * 10 ms), for 16 kHz mono audio:

- a 25 ms Hann window (400 samples, zero-padded to a 512-point FFT) centred on the step;
- `n_mels` (40) mel bands, 0-8 kHz, Slaney-normalised filters, on the power spectrum;
- columns 0..n_mfcc-1: MFCC c0..c(n_mfcc-1) = orthonormal DCT-II of the bands in dB
  (10 log10(power), floor 1e-10, no per-clip clipping, so values do not depend on the clip);
- column n_mfcc: log-mel energy = ln(sum of the mel band powers + 1e-10);
- column n_mfcc+1: pitch = log2(F0 / 100 Hz) where the step is voiced, 0 where it is not. F0 is
  YIN (de Cheveigne & Kawahara 2002, `librosa.yin`) on a 64 ms frame, searched in
  [f0_min, f0_max] Hz;
- column n_mfcc+2: periodicity = the frame's autocorrelation at the YIN period divided by its
  energy (unbiased, clipped to [0, 1]); a step is voiced when periodicity >= 0.5.

dim = n_mfcc + 3 (23 by default). pYIN would give a voicing probability directly but runs at
only ~5x real time on one core, which alone would spend the whole speed budget.

`egemaps`: the 25 eGeMAPSv02 low-level descriptors (Eyben et al. 2016) from `opensmile`
(10 ms hop, its own frame lengths), dim 25. openSMILE's native library is under audEERING's
research-only, non-commercial licence: it is the optional extra `mmerkit[media-opensmile]`.

Example:
    >>> ex = create_extractor("librosa")
    >>> ex.dim, ex.rate
    (23, 100.0)
"""

from __future__ import annotations

import warnings
from functools import lru_cache

import numpy as np

from mmerkit.errors import ConfigError
from mmerkit.extract.base import (
    Clip,
    Extractor,
    Features,
    frame_times,
    register_extractor,
    require,
)

HOP_SECONDS = 0.010
WINDOW_SECONDS = 0.025
PITCH_FRAME_SECONDS = 0.064
VOICED_PERIODICITY = 0.5


@lru_cache(maxsize=8)
def _mel_filters(sample_rate: int, n_fft: int, n_mels: int) -> np.ndarray:
    librosa = require("librosa")
    return librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=0.0,
                               fmax=sample_rate / 2).astype(np.float32)


@register_extractor("librosa")
class LibrosaAudio(Extractor):
    """MFCC + log-mel energy + pitch + periodicity per 10 ms step (see the module docstring)."""

    modality = "audio"
    version = "1"
    packages = ("librosa", "numpy", "scipy")
    rate = 1.0 / HOP_SECONDS

    def __init__(self, n_mfcc: int = 20, n_mels: int = 40, f0_min: float = 60.0,
                 f0_max: float = 500.0):
        if not 1 <= n_mfcc <= n_mels:
            raise ConfigError(
                f"librosa extractor: n_mfcc={n_mfcc} must be between 1 and n_mels={n_mels}"
            )
        if not 0 < f0_min < f0_max:
            raise ConfigError(
                f"librosa extractor: need 0 < f0_min < f0_max, got {f0_min} and {f0_max}"
            )
        super().__init__(n_mfcc=n_mfcc, n_mels=n_mels, f0_min=f0_min, f0_max=f0_max)
        self._librosa = require("librosa")
        _mel_filters(16000, 512, n_mels)  # pay librosa's lazy imports once, at construction

    @property
    def dim(self) -> int:
        return self.params["n_mfcc"] + 3

    @property
    def feature_names(self) -> list[str]:
        """Column names, in order."""
        mfcc = [f"mfcc{i}" for i in range(self.params["n_mfcc"])]
        return [*mfcc, "log_mel_energy", "log2_f0_over_100hz", "periodicity"]

    def extract(self, clip: Clip) -> Features:
        """(T, n_mfcc + 3) at 100 Hz; T = whole 10 ms steps in the audio (0 without audio)."""
        if clip.audio is None:
            return Features.empty(self.dim)
        sr = clip.sample_rate
        hop = int(round(sr * HOP_SECONDS))
        steps = len(clip.audio) // hop
        if steps == 0:
            return Features.empty(self.dim)
        # drop half a hop so that librosa's centred frame k sits in the middle of step k
        y = np.ascontiguousarray(clip.audio[hop // 2 :], dtype=np.float32)
        with warnings.catch_warnings():  # librosa warns on clips shorter than one FFT window
            warnings.simplefilter("ignore", UserWarning)
            mfcc, energy = self._spectral(y, sr, hop, steps)
        pitch, periodicity = self._pitch(y, sr, hop, steps)
        values = np.concatenate([mfcc, energy[:, None], pitch[:, None], periodicity[:, None]], 1)
        return Features(values, frame_times(steps, self.rate))

    def _spectral(self, y: np.ndarray, sr: int, hop: int, steps: int):
        librosa = self._librosa
        window = int(round(sr * WINDOW_SECONDS))
        n_fft = 1 << (window - 1).bit_length()
        spec = np.abs(librosa.stft(y, n_fft=n_fft, hop_length=hop, win_length=window,
                                   window="hann", center=True, pad_mode="constant")) ** 2
        mel = _mel_filters(sr, n_fft, self.params["n_mels"]) @ spec[:, :steps]
        db = 10.0 * np.log10(np.maximum(mel, 1e-10))
        mfcc = librosa.feature.mfcc(S=db, n_mfcc=self.params["n_mfcc"], dct_type=2, norm="ortho")
        energy = np.log(mel.sum(axis=0) + 1e-10)
        return mfcc.T, energy

    def _pitch(self, y: np.ndarray, sr: int, hop: int, steps: int):
        length = 1 << (int(round(sr * PITCH_FRAME_SECONDS)) - 1).bit_length()
        padded = np.pad(y, (length // 2, length // 2 + length))
        f0 = self._librosa.yin(padded, fmin=self.params["f0_min"], fmax=self.params["f0_max"],
                               sr=sr, frame_length=length, hop_length=hop, center=False)[:steps]
        frames = self._librosa.util.frame(padded, frame_length=length, hop_length=hop)[:, :steps]
        spectrum = np.fft.rfft(frames.T, n=2 * length, axis=1)
        autocorr = np.fft.irfft(np.abs(spectrum) ** 2, axis=1)[:, :length]
        lag = np.clip(np.round(sr / f0).astype(np.int64), 1, length - 1)
        at_lag = np.take_along_axis(autocorr, lag[:, None], axis=1)[:, 0]
        energy = autocorr[:, 0]
        # unbiased: the product at lag L sums only length - L terms
        periodicity = np.where(energy > 1e-8, at_lag / np.maximum(energy, 1e-8)
                               * length / (length - lag), 0.0)
        periodicity = np.clip(periodicity, 0.0, 1.0)
        pitch = np.where(periodicity >= VOICED_PERIODICITY, np.log2(f0 / 100.0), 0.0)
        return pitch.astype(np.float32), periodicity.astype(np.float32)


@register_extractor("egemaps")
class EgemapsAudio(Extractor):
    """eGeMAPSv02 low-level descriptors from openSMILE: (T, 25) at 100 Hz. Non-commercial."""

    modality = "audio"
    version = "1"
    packages = ("opensmile",)
    rate = 100.0

    def __init__(self):
        super().__init__()
        opensmile = require("opensmile", extra="media-opensmile")
        self._smile = opensmile.Smile(
            feature_set=opensmile.FeatureSet.eGeMAPSv02,
            feature_level=opensmile.FeatureLevel.LowLevelDescriptors,
        )
        self.feature_names = list(self._smile.feature_names)

    @property
    def dim(self) -> int:
        return 25

    def extract(self, clip: Clip) -> Features:
        """(T, 25): one row per 10 ms openSMILE frame; times are the frames' [start, end)."""
        if clip.audio is None or len(clip.audio) < clip.sample_rate * 0.06:
            return Features.empty(self.dim)  # shorter than openSMILE's longest (60 ms) frame
        table = self._smile.process_signal(clip.audio, clip.sample_rate)
        starts = table.index.get_level_values("start").total_seconds().to_numpy()
        ends = table.index.get_level_values("end").total_seconds().to_numpy()
        values = table[self.feature_names].to_numpy(dtype=np.float32)
        return Features(values, np.stack([starts, ends], 1))
