"""The embedded default dataset: a deterministic, MOSEI-shaped multi-modal multi-label generator.

It mimics the aligned CMU-MOSEI file (text 300-d, visual 35-d, audio 74-d, 50 steps, six emotions,
about 1.6 labels per sample, happy most frequent) and is built so that the task is learnable by a
sequence model but not by pooling, as on the real corpus:

* **Label sets** come from a small latent valence/arousal model: each sample draws (v, a) and
  every label fires independently with probability sigmoid(b_l + w_l . (v, a)).  Shared latents
  give realistic co-occurrence (sad with anger and disgust, happy rarely with sad).  A sample that
  draws no label gets one, sampled in proportion to exp(logit).
* **Evidence is short and localised**: a positive label leaves a 2-4 step bump along its own
  direction at a random position, in its own modality mix (happy: text + visual, sad: text + audio,
  anger: audio + text, fear: visual + audio).
* **Two labels are conjunctions**: surprise is evidenced only by a visual and an audio bump at the
  *same* steps, disgust by a text and a visual bump at the same steps.  Negatives carry either part
  alone, or both parts at different times, as distractors.
* **Smeared distractors**: a negative may carry a label's direction spread thinly over 12-24
  steps, with the same total mass as a real bump; mean pooling cannot tell it from evidence.
* **Nuisance**: Gaussian noise, a per-sample ("speaker") offset, label-independent bumps, and
  variable valid lengths (zero padded); optionally a missing modality (length 0) per sample and
  label noise in the training split.

`difficulty` scales noise, offsets and nuisance against a fixed signal amplitude.  Labels and
patterns beyond the six defaults reuse the six profiles cyclically (with fresh directions);
modality mixes refer to modality *positions* 0/1/2 (text-, visual-, audio-like), taken modulo the
number of modalities.

Example:
    >>> cfg = SynthConfig(samples=60, seq_len=10)
    >>> splits = make_synthetic(cfg)
    >>> sorted(splits), splits["train"].features["visual"].shape
    (['test', 'train', 'valid'], (42, 10, 35))
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from mmerkit.data.store import FeatureStore, SplitArrays, write_store
from mmerkit.errors import ConfigError, DataError
from mmerkit.registry import did_you_mean

SPLITS = ("train", "valid", "test")
# Bumped whenever the same SynthConfig starts generating different arrays: key caches on it too.
GENERATOR_VERSION = 1


class SynthConfig(BaseModel, extra="forbid"):
    """Knobs of the synthetic dataset (the defaults are the embedded dataset)."""

    samples: int = Field(3000, ge=3)
    split: tuple[float, float, float] = (0.7, 0.1, 0.2)
    seq_len: int = Field(50, ge=2)
    dims: dict[str, int] = Field(default_factory=lambda: {"text": 300, "visual": 35, "audio": 74})
    labels: tuple[str, ...] = ("happy", "sad", "anger", "surprise", "disgust", "fear")
    seed: int = 0
    difficulty: float = Field(1.0, ge=0.0)  # scales noise / offsets / nuisance vs the signal
    missing_rate: float = Field(0.0, ge=0.0, le=1.0)  # P(a sample loses one random modality)
    label_noise: float = Field(0.0, ge=0.0, le=1.0)  # P(flip) per label bit, train split only
    distractor_rate: float = Field(0.5, ge=0.0, le=1.0)  # P(a negative carries a label's decoy)
    short_rate: float = Field(0.3, ge=0.0, le=1.0)  # P(a sample is shorter than seq_len)
    profile: str = "embedded"  # how samples are generated: a key of GENERATORS (docs/datasets.md)

    def __init__(self, **params):
        # a bad knob is the user's mistake: a ConfigError naming it (CLI flag and config key), no traceback
        try:
            super().__init__(**params)
        except ValidationError as e:
            raise ConfigError(_explain_synth(e)) from None

    @field_validator("split")
    @classmethod
    def _split_sums_to_one(cls, v):
        if min(v) < 0 or abs(sum(v) - 1.0) > 1e-6:
            raise ValueError(f"split fractions must be >= 0 and sum to 1, got {v}")
        return v

    @field_validator("profile")
    @classmethod
    def _known_profile(cls, v):
        if v not in PROFILE_NAMES:
            raise ValueError(f"unknown profile {v!r}.{did_you_mean(v, list(PROFILE_NAMES))} "
                             f"Profiles: {', '.join(PROFILE_NAMES)}")
        return v

    @field_validator("dims")
    @classmethod
    def _dims_positive(cls, v):
        if not v or min(v.values()) < 1:
            raise ValueError(f"dims needs at least one modality with dim >= 1, got {v}")
        return v

    @field_validator("labels")
    @classmethod
    def _labels_unique(cls, v):
        if not v or len(set(v)) != len(v):
            raise ValueError(f"labels must be non-empty and unique, got {v}")
        return v

    @model_validator(mode="after")
    def _every_split_has_samples(self):
        sizes = split_sizes(self.samples, self.split)
        if min(sizes.values()) < 1:
            raise ValueError(f"samples={self.samples} with split={self.split} leaves an empty split "
                             f"({sizes}); raise samples or the split fractions")
        return self


def _explain_synth(e: ValidationError) -> str:
    parts = []
    for err in e.errors():
        key = ".".join(str(p) for p in err["loc"])
        if not key:  # a check across knobs (model validator): its message names them
            parts.append(f"synthetic data: {err['msg'].removeprefix('Value error, ')}")
            continue
        flag = f"mmer data synth --{key.replace('_', '-')} or " if key in _CLI_FLAGS else ""
        msg = err["msg"].removeprefix("Value error, ")
        got = f" (got {err['input']!r})" if err["type"] != "value_error" else ""
        hint = (f".{did_you_mean(key, list(SynthConfig.model_fields))} Valid keys: "
                f"{', '.join(SynthConfig.model_fields)}" if err["type"] == "extra_forbidden" else "")
        parts.append(f"synthetic data option {key}: {msg}{got}{hint} (set with {flag}--set data.synthetic.{key}=...)")
    return "; ".join(parts)


_CLI_FLAGS = ("samples", "seed", "missing_rate", "label_noise", "profile")
# every generator, with what it exercises (docs/datasets.md says more); "embedded" is the default
PROFILE_NAMES = {
    "embedded": "short localised evidence, conjunctions, smeared decoys; Gaussian noise",
    "mosei-like": "speakers, heavy-tailed noise, a recurring distractor, MOSEI's skewed labels, "
                  "evidence of varying length and mix, blank and missing streams, label flips",
}


def split_sizes(samples: int, split: tuple[float, float, float]) -> dict[str, int]:
    """Train/valid/test sizes for `samples` split by fractions (test takes the rounding rest)."""
    n_train, n_valid = round(samples * split[0]), round(samples * split[1])
    return {"train": n_train, "valid": n_valid, "test": samples - n_train - n_valid}


# ----------------------------------------------------------------------------- label profiles


@dataclass(frozen=True)
class _Profile:
    """How one label is drawn (latent weights) and evidenced (modality positions)."""

    bias: float
    valence: float
    arousal: float
    mix: tuple[tuple[int, float], ...]  # (modality position, P(evidence shows there | positive))
    conjunctive: bool = False  # True: evidence = both mix modalities at the same steps


# Biases are tuned so that the defaults give about 1.6 labels per sample with MOSEI-like ordering
# (happy > sad > anger > disgust > surprise ~ fear).
_PROFILES = (
    _Profile(0.3, 3.0, 0.3, ((0, 0.9), (1, 0.8))),  # happy: text + visual
    _Profile(-2.1, -2.6, -1.2, ((0, 0.8), (2, 0.7))),  # sad: text + audio
    _Profile(-2.4, -2.0, 1.8, ((2, 0.9), (0, 0.6))),  # anger: audio + text
    _Profile(-3.1, 0.6, 2.4, ((1, 1.0), (2, 1.0)), conjunctive=True),  # surprise: visual AND audio
    _Profile(-2.6, -2.4, 0.5, ((0, 1.0), (1, 1.0)), conjunctive=True),  # disgust: text AND visual
    _Profile(-3.4, -1.3, 1.8, ((1, 0.8), (2, 0.8))),  # fear: visual + audio
)

_AMP = 8.0  # peak norm of an evidence bump; noise has unit std per dimension at difficulty 1
_OFFSET = 0.5  # std per dimension of the per-sample offset
_NUISANCE = 4  # label-independent bump directions per modality
_SMEAR = (12, 25)  # width range of a smeared distractor
_BUMP_MASS = 3 * 2 / np.pi  # sum over steps of a typical (3-step) half-sine envelope of peak 1


def _profiles(cfg: SynthConfig) -> list[_Profile]:
    return [_PROFILES[i % len(_PROFILES)] for i in range(len(cfg.labels))]


def _draw_labels(rng: np.random.Generator, n: int, profiles: list[_Profile]) -> np.ndarray:
    """(n, L) uint8 label sets from the latent valence/arousal model; none is empty."""
    latent = rng.standard_normal((n, 2))
    w = np.array([[p.valence, p.arousal] for p in profiles])
    logits = np.array([p.bias for p in profiles]) + latent @ w.T
    y = rng.random(logits.shape) < 1.0 / (1.0 + np.exp(-logits))
    gumbel = -np.log(-np.log(rng.random(logits.shape) + 1e-12) + 1e-12)
    fallback = np.argmax(logits + gumbel, axis=1)
    empty = ~y.any(1)
    y[empty, fallback[empty]] = True
    return y.astype(np.uint8)


# ----------------------------------------------------------------------------- features


def _unit(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    v = rng.standard_normal(shape)
    return (v / np.linalg.norm(v, axis=-1, keepdims=True)).astype(np.float32)


def _add_bumps(x: np.ndarray, rows: np.ndarray, start: np.ndarray, width: np.ndarray,
               direction: np.ndarray, amp: np.ndarray, flat: bool = False) -> None:
    """Add to x[rows[i], start[i]:start[i]+width[i]] a bump of peak `amp[i]` along `direction`.

    A bump has a half-sine envelope (flat if `flat`); one vectorised update per step offset.
    """
    if rows.size == 0:
        return
    for k in range(int(width.max())):
        on = k < width
        if flat:
            env = np.ones(on.sum(), np.float32)
        else:
            env = np.sin(np.pi * (k + 0.5) / width[on]).astype(np.float32)
        x[rows[on], start[on] + k] += (amp[on] * env)[:, None] * direction


def _random_start(rng: np.random.Generator, length: np.ndarray, width: np.ndarray) -> np.ndarray:
    return (rng.random(length.shape) * (length - width + 1)).astype(np.int64)


def _bump_widths(rng: np.random.Generator, length: np.ndarray) -> np.ndarray:
    return np.minimum(rng.integers(2, 5, size=length.shape), length)


def _separated_start(rng, length, width, other):
    """Starts whose bump does not overlap the bump at `other`; -1 where no such start was found."""
    start = np.full(length.shape, -1, np.int64)
    todo = np.arange(length.size)
    for _ in range(8):
        cand = _random_start(rng, length[todo], width[todo])
        ok = np.abs(cand - other[todo]) >= width[todo]
        start[todo[ok]] = cand[ok]
        todo = todo[~ok]
    return start


def _evidence(rng, feats, y, length, profiles, dirs, cfg) -> None:
    """Write every label's evidence (positives) and decoys (negatives) into `feats`."""
    names = list(feats)
    for j, prof in enumerate(profiles):
        mods = [names[pos % len(names)] for pos, _ in prof.mix]
        pos = np.flatnonzero(y[:, j] == 1)
        neg = np.flatnonzero(y[:, j] == 0)
        if prof.conjunctive:
            _conjunction(rng, feats, mods, dirs, j, pos, neg, length, cfg.distractor_rate)
            continue
        shows = rng.random((pos.size, len(mods))) < np.array([p for _, p in prof.mix])
        shows[~shows.any(1), 0] = True  # at least one modality carries the evidence
        for k, m in enumerate(mods):
            rows = pos[shows[:, k]]
            width = _bump_widths(rng, length[rows])
            amp = _AMP * rng.uniform(0.75, 1.25, rows.size)
            _add_bumps(feats[m], rows, _random_start(rng, length[rows], width), width, dirs[m][j], amp)
            # decoy: the same direction and mass, smeared thinly over many steps
            rows = neg[rng.random(neg.size) < cfg.distractor_rate]
            wide = np.minimum(rng.integers(*_SMEAR, size=rows.size), length[rows])
            amp = _AMP * _BUMP_MASS * rng.uniform(0.75, 1.25, rows.size) / np.maximum(wide, 1)
            _add_bumps(feats[m], rows, _random_start(rng, length[rows], wide), wide, dirs[m][j], amp,
                       flat=True)


def _conjunction(rng, feats, mods, dirs, j, pos, neg, length, rate) -> None:
    """Positives: bumps in both modalities at the same steps. Negatives: one part alone, or both
    parts at non-overlapping steps."""
    a, b = mods
    width = _bump_widths(rng, length[pos])
    start = _random_start(rng, length[pos], width)
    for m in (a, b):
        _add_bumps(feats[m], pos, start, width, dirs[m][j], _AMP * rng.uniform(0.75, 1.25, pos.size))
    rows = neg[rng.random(neg.size) < rate]
    kind = rng.choice(3, size=rows.size, p=[0.35, 0.35, 0.3])  # a alone, b alone, both apart
    width = _bump_widths(rng, length[rows])
    start_a = _random_start(rng, length[rows], width)
    start_b = _random_start(rng, length[rows], width)
    apart = _separated_start(rng, length[rows], width, start_a)
    start_b = np.where(kind == 2, apart, start_b)
    use_a = (kind == 0) | (kind == 2)
    use_b = (kind == 1) | ((kind == 2) & (start_b >= 0))  # too short to separate: a alone
    for m, use, st in ((a, use_a, start_a), (b, use_b, start_b)):
        amp = _AMP * rng.uniform(0.75, 1.25, int(use.sum()))
        _add_bumps(feats[m], rows[use], st[use], width[use], dirs[m][j], amp)


def _nuisance(rng, feats, length, nuis_dirs, difficulty) -> None:
    """Label-independent bumps: each sample carries each nuisance direction with p = 0.5."""
    n = length.size
    for m, x in feats.items():
        for d in nuis_dirs[m]:
            rows = np.flatnonzero(rng.random(n) < 0.5)
            width = np.minimum(rng.integers(2, 9, size=rows.size), length[rows])
            amp = difficulty * _AMP * rng.uniform(0.5, 1.5, rows.size)
            _add_bumps(x, rows, _random_start(rng, length[rows], width), width, d, amp)


def _draw_lengths(rng: np.random.Generator, n: int, cfg: SynthConfig) -> np.ndarray:
    short = rng.random(n) < cfg.short_rate
    lo = max(1, cfg.seq_len // 2)
    return np.where(short, rng.integers(lo, cfg.seq_len, size=n), cfg.seq_len).astype(np.int64)


def _patterns(cfg: SynthConfig):
    """Directions depend on the seed only (not on `samples`), so a bigger set has the same task."""
    rng = np.random.default_rng([cfg.seed, 1])
    dirs = {m: _unit(rng, (len(cfg.labels), d)) for m, d in cfg.dims.items()}
    nuis = {m: _unit(rng, (_NUISANCE, d)) for m, d in cfg.dims.items()}
    return dirs, nuis


# ----------------------------------------------------------------------------- public API


def make_synthetic(cfg: SynthConfig | None = None) -> dict[str, SplitArrays]:
    """Generate the synthetic dataset in memory: {"train", "valid", "test"} -> SplitArrays.

    Same config (seed included) -> identical arrays.

    Example:
        >>> s = make_synthetic(SynthConfig(samples=30, seq_len=6, seed=3))
        >>> s["test"].labels.shape, s["train"].ids[0]
        ((6, 6), 'synth-train-00000')
    """
    cfg = cfg or SynthConfig()
    if cfg.profile == "mosei-like":
        return _make_mosei_like(cfg)
    n, profiles = cfg.samples, _profiles(cfg)
    dirs, nuis_dirs = _patterns(cfg)
    rng = np.random.default_rng([cfg.seed, 2])
    y = _draw_labels(rng, n, profiles)
    length = _draw_lengths(rng, n, cfg)
    feats = {}
    for m, d in cfg.dims.items():
        x = rng.standard_normal((n, cfg.seq_len, d), dtype=np.float32)
        x *= np.float32(cfg.difficulty)
        x += (cfg.difficulty * _OFFSET * rng.standard_normal((n, 1, d))).astype(np.float32)
        feats[m] = x
    _evidence(rng, feats, y, length, profiles, dirs, cfg)
    _nuisance(rng, feats, length, nuis_dirs, cfg.difficulty)
    lengths = _drop_modalities(rng, feats, length, cfg.missing_rate)
    for m, x in feats.items():
        x[np.arange(cfg.seq_len)[None, :] >= lengths[m][:, None]] = 0.0
    return _split(rng, feats, lengths, y, cfg)


def _drop_modalities(rng, feats, length, rate) -> dict[str, np.ndarray]:
    """Per-modality lengths; with probability `rate` a sample loses one random modality."""
    names = list(feats)
    drop = rng.random(length.size) < rate if len(names) > 1 else np.zeros(length.size, bool)
    which = rng.integers(0, len(names), size=length.size)
    return {m: np.where(drop & (which == k), 0, length).astype(np.int32) for k, m in enumerate(names)}


def _split(rng, feats, lengths, y, cfg) -> dict[str, SplitArrays]:
    sizes = split_sizes(cfg.samples, cfg.split)
    out, lo = {}, 0
    for name in SPLITS:
        hi = lo + sizes[name]
        labels = y[lo:hi].copy()
        if name == "train" and cfg.label_noise > 0:
            labels = _flip(rng, labels, cfg.label_noise)
        out[name] = SplitArrays(
            features={m: x[lo:hi] for m, x in feats.items()},
            labels=labels,
            lengths={m: ln[lo:hi] for m, ln in lengths.items()},
            ids=[f"synth-{name}-{i:05d}" for i in range(hi - lo)],
        )
        lo = hi
    return out


def _flip(rng: np.random.Generator, labels: np.ndarray, p: float) -> np.ndarray:
    """Flip each bit with probability p; a row that would become empty keeps its labels."""
    flipped = labels ^ (rng.random(labels.shape) < p).astype(np.uint8)
    empty = flipped.sum(1) == 0
    flipped[empty] = labels[empty]
    return flipped


def write_synthetic(path: str | os.PathLike, cfg: SynthConfig | None = None,
                    overwrite: bool = False) -> FeatureStore:
    """Generate the synthetic dataset and write it as a FeatureStore at `path`.

    Example:
        >>> store = write_synthetic("/tmp/synth", SynthConfig(samples=100))  # doctest: +SKIP
        >>> store.splits                                                      # doctest: +SKIP
        {'train': 70, 'valid': 10, 'test': 20}
    """
    cfg = cfg or SynthConfig()
    if Path(path).exists() and not overwrite:
        raise DataError(f"{path} already exists; pass overwrite=True (CLI: --overwrite) "
                        "or choose another --out")
    # the default profile keeps its name and source, so its stores and run names stay as they were
    name = "synthetic" if cfg.profile == "embedded" else f"synthetic-{cfg.profile}"
    source = "mmerkit synthetic" if cfg.profile == "embedded" else f"mmerkit synthetic ({cfg.profile})"
    return write_store(path, make_synthetic(cfg), list(cfg.labels), name=name,
                       source=source, aligned=True, overwrite=overwrite)


# ----------------------------------------------------------------------------- mosei-like profile

# Label model of the "mosei-like" profile: CMU-MOSEI's frequencies (happy in about half the
# samples, sad ~ a quarter, anger and disgust ~ a fifth, surprise and fear under a tenth) and its
# co-occurrence (sad, anger and disgust together: one shared negative latent), and a modality
# mix per label that differs from the embedded one (any label may show in any modality).
_MOSEI_LIKE = (
    _Profile(-0.3, 2.6, 0.2, ((0, 0.7), (1, 0.5), (2, 0.4))),  # happy
    _Profile(-2.0, -2.2, -0.8, ((0, 0.6), (2, 0.6), (1, 0.3))),  # sad
    _Profile(-2.4, -2.2, 1.2, ((2, 0.7), (0, 0.5), (1, 0.3))),  # anger
    _Profile(-3.0, 0.4, 1.2, ((1, 0.6), (2, 0.5), (0, 0.3))),  # surprise
    _Profile(-2.6, -2.4, 0.3, ((0, 0.7), (1, 0.4), (2, 0.3))),  # disgust
    _Profile(-3.4, -0.9, 1.0, ((2, 0.6), (1, 0.5), (0, 0.3))),  # fear
)
_SPEAKER_SIZE = 10  # samples per speaker (speakers are contiguous: splits share few speakers)
_SPEAKER_OFFSET = 1.0  # std per dimension of a speaker's offset (the embedded per-sample one: 0.5)
_T_DOF = 3.0  # Student-t noise: heavy tails (rescaled to unit variance)
_DISTRACTOR_RATE = 0.5  # P(a sample carries the recurring distractor), whatever its labels
_BLANK_RATE = 0.2  # P(a sample's visual-like stream is all zeros at full length: no face found)
_DROP_RATE = 0.1  # P(a sample loses one random modality: length 0)
_FLIP_RATE = 0.02  # P(a label bit is flipped) in every split: annotators disagree on test too


def _make_mosei_like(cfg: SynthConfig) -> dict[str, SplitArrays]:
    """The "mosei-like" profile (docs/datasets.md): nuisance that real corpora have and the
    embedded profile lacks. Same config -> identical arrays."""
    n, names = cfg.samples, list(cfg.dims)
    profiles = [_MOSEI_LIKE[i % len(_MOSEI_LIKE)] for i in range(len(cfg.labels))]
    dirs, nuis_dirs = _patterns(cfg)
    rng = np.random.default_rng([cfg.seed, 3])
    distractor = {m: _unit(rng, (d,)) for m, d in cfg.dims.items()}
    y = _draw_labels(rng, n, profiles)
    length = _draw_lengths(rng, n, cfg)
    speaker = np.arange(n) // _SPEAKER_SIZE
    feats = {}
    for m, d in cfg.dims.items():
        x = (rng.standard_t(_T_DOF, size=(n, cfg.seq_len, d)) / np.sqrt(_T_DOF / (_T_DOF - 2))).astype(np.float32)
        x *= np.float32(cfg.difficulty)
        offsets = rng.standard_normal((speaker[-1] + 1, 1, d)) * (cfg.difficulty * _SPEAKER_OFFSET)
        scales = rng.uniform(0.7, 1.4, size=(speaker[-1] + 1, 1, 1))  # a speaker's loudness / expressiveness
        feats[m] = (x * scales[speaker] + offsets[speaker]).astype(np.float32)
    _varied_evidence(rng, feats, y, length, profiles, dirs)
    _nuisance(rng, feats, length, nuis_dirs, cfg.difficulty)
    # the recurring distractor: one fixed direction per modality, strong and long, label-free
    for m in names:
        rows = np.flatnonzero(rng.random(n) < _DISTRACTOR_RATE)
        width = np.minimum(np.full(rows.size, 6), length[rows])
        amp = 1.5 * _AMP * rng.uniform(0.8, 1.2, rows.size)
        _add_bumps(feats[m], rows, _random_start(rng, length[rows], width), width, distractor[m], amp)
    if len(names) > 1:
        feats[names[1]][rng.random(n) < _BLANK_RATE] = 0.0
    lengths = _drop_modalities(rng, feats, length, min(1.0, cfg.missing_rate + _DROP_RATE))
    for m, x in feats.items():
        x[np.arange(cfg.seq_len)[None, :] >= lengths[m][:, None]] = 0.0
    y = _flip(rng, y, _FLIP_RATE)
    return _split(rng, feats, lengths, y, cfg)


def _varied_evidence(rng, feats, y, length, profiles, dirs) -> None:
    """Each positive label leaves a bump of 1-12 steps (peak 0.5-1.2 x the embedded one) in a
    random subset of its modalities (at least one), at a random position."""
    names = list(feats)
    for j, prof in enumerate(profiles):
        mods = [names[pos % len(names)] for pos, _ in prof.mix]
        pos = np.flatnonzero(y[:, j] == 1)
        shows = rng.random((pos.size, len(mods))) < np.array([p for _, p in prof.mix])
        shows[~shows.any(1), 0] = True
        for k, m in enumerate(mods):
            rows = pos[shows[:, k]]
            width = np.minimum(rng.integers(1, 13, size=rows.size), length[rows])
            amp = _AMP * rng.uniform(0.5, 1.2, rows.size)
            _add_bumps(feats[m], rows, _random_start(rng, length[rows], width), width, dirs[m][j], amp)


# ----------------------------------------------------------------------------- baseline


def _pool(features: Mapping[str, np.ndarray], lengths: Mapping[str, np.ndarray]) -> np.ndarray:
    """Mean and max over valid steps per modality, concatenated; a missing modality pools to 0."""
    cols = []
    for m, x in features.items():
        x = np.asarray(x, np.float32)
        if x.ndim == 2:
            x = x[:, None, :]
        ln = np.asarray(lengths[m]) if m in lengths else np.full(len(x), x.shape[1])
        valid = np.arange(x.shape[1])[None, :, None] < ln[:, None, None]
        mean = np.where(valid, x, 0).sum(1) / np.maximum(ln, 1)[:, None]
        mx = np.where(valid, x, -np.inf).max(1)
        cols += [mean, np.where(ln[:, None] > 0, mx, 0.0)]
    return np.concatenate(cols, axis=1)


def jaccard_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Example-based accuracy: mean |Y & P| / |Y | P|, an empty/empty pair counting as 1."""
    y_true, y_pred = np.asarray(y_true).astype(bool), np.asarray(y_pred).astype(bool)
    inter = (y_true & y_pred).sum(1)
    union = (y_true | y_pred).sum(1)
    return float(np.where(union == 0, 1.0, inter / np.maximum(union, 1)).mean())


def pooled_logreg_baseline(data: str | os.PathLike | FeatureStore | Mapping[str, SplitArrays],
                           C: float = 1.0) -> dict:
    """One-vs-rest logistic regression on standardised mean+max pooled features.

    Fits on "train", predicts "test" at threshold 0.5 (nothing is tuned), and returns
    {"micro_f1", "macro_f1", "accuracy", "n_train", "n_test"}; accuracy is the Jaccard one.

    Example:
        >>> pooled_logreg_baseline(make_synthetic(SynthConfig(samples=200)))["micro_f1"]  # doctest: +SKIP
        0.47...
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.preprocessing import StandardScaler

    if isinstance(data, Mapping):
        splits = {k: (v.features, v.lengths, np.asarray(v.labels)) for k, v in data.items()}
    else:
        store = data if isinstance(data, FeatureStore) else FeatureStore(data)
        splits = {k: (store.split(k).features, store.split(k).lengths,
                      np.asarray(store.split(k).labels)) for k in ("train", "test")}
    for k in ("train", "test"):
        if k not in splits:
            raise DataError(f"pooled_logreg_baseline needs a {k!r} split, got {sorted(splits)}")
    (ftr, ltr, ytr), (fte, lte, yte) = splits["train"], splits["test"]
    scaler = StandardScaler().fit(_pool(ftr, ltr))
    clf = OneVsRestClassifier(LogisticRegression(C=C, max_iter=2000))
    clf.fit(scaler.transform(_pool(ftr, ltr)), ytr)
    pred = (clf.predict_proba(scaler.transform(_pool(fte, lte))) >= 0.5).astype(np.uint8)
    return {
        "micro_f1": float(f1_score(yte, pred, average="micro", zero_division=0)),
        "macro_f1": float(f1_score(yte, pred, average="macro", zero_division=0)),
        "accuracy": jaccard_accuracy(yte, pred),
        "n_train": len(ytr),
        "n_test": len(yte),
    }
