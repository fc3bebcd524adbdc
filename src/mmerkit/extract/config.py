"""`ExtractConfig`: everything that decides which features a media file becomes.

The same configuration drives `mmer extract` (a manifest -> a FeatureStore) and prediction from
media (`mmer predict --media`, `Predictor.predict_media`): it is written into the store's
meta.json under ``"extract"`` (with each extractor's `describe()` under ``"extractors"``), travels
into the export, and is read back there, so a model only ever sees features made the way its
training features were made.

Example:
    >>> cfg = ExtractConfig(visual=None, align="none")
    >>> cfg.modalities()
    ['text', 'audio']
    >>> ExtractConfig.model_validate(cfg.record()) == cfg
    True
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mmerkit.errors import ConfigError

DEFAULT_TEXT = "minilm"
DEFAULT_AUDIO = "librosa"
DEFAULT_VISUAL = "mediapipe"
MEDIA_MODALITIES = ("text", "audio", "visual")


class ExtractConfig(BaseModel):
    """How media become features (see docs/extract.md for every field).

    text / audio / visual: registered extractor name per modality (`mmer extract --list`), or
    None to leave the modality out. `*_params`: that extractor's options.
    fps / sample_rate: decoding rates. align: "none" (each modality at its own rate, an
    unaligned store) or "words" (frames averaged inside each word's time span).
    asr: "auto" (recognise speech only where a row has no transcript, or where --align words
    needs word times that no word-timing file gives), "on" (always; recognised text replaces
    the transcript column, so training text matches deployment without transcripts), "off".
    word_timings: CSV ``id,word,start,end`` (seconds in the media file's timeline).
    level: "auto" (dialogue-level when the manifest has a dialogue column), "utterance",
    "dialogue". max_len: keep at most this many steps per modality and sample (head).
    plugins: modules imported (also in worker processes) before extractors are built, so your
    own registered extractors can be named.
    """

    model_config = ConfigDict(extra="forbid")

    text: str | None = DEFAULT_TEXT
    audio: str | None = DEFAULT_AUDIO
    visual: str | None = DEFAULT_VISUAL
    text_params: dict[str, Any] = Field(default_factory=dict)
    audio_params: dict[str, Any] = Field(default_factory=dict)
    visual_params: dict[str, Any] = Field(default_factory=dict)
    asr_model: str | None = "whisper"
    asr_params: dict[str, Any] = Field(default_factory=dict)
    fps: float = Field(5.0, gt=0, le=60)
    sample_rate: int = Field(16000, ge=4000, le=96000)
    max_side: int | None = Field(640, ge=32)
    align: Literal["none", "words"] = "none"
    asr: Literal["auto", "on", "off"] = "auto"
    word_timings: str | None = None
    level: Literal["auto", "utterance", "dialogue"] = "auto"
    max_len: int | None = Field(None, ge=1)
    plugins: list[str] = Field(default_factory=list)

    @field_validator("text", "audio", "visual", "asr_model", mode="before")
    @classmethod
    def _none_words(cls, v: Any) -> Any:
        """`--audio none` on the command line means: leave the modality out."""
        return None if isinstance(v, str) and v.strip().lower() in ("none", "off", "") else v

    @model_validator(mode="after")
    def _consistent(self) -> ExtractConfig:
        if not self.modalities():
            raise ValueError("every modality is off (text, audio and visual are all none); "
                             "name at least one extractor")
        if self.align == "words" and self.asr == "off" and self.word_timings is None:
            raise ValueError("align='words' needs word times: give a word-timing file "
                             "(--word-timings) or allow speech recognition (--asr auto)")
        if self.asr == "on" and self.asr_model is None:
            raise ValueError("asr='on' needs a speech recogniser (asr_model)")
        return self

    def modalities(self) -> list[str]:
        """The modalities this configuration extracts, in store order."""
        return [m for m in MEDIA_MODALITIES if getattr(self, m) is not None]

    def extractor_spec(self, modality: str) -> tuple[str, dict[str, Any]]:
        """(name, params) of the extractor for `modality`."""
        name, params = getattr(self, modality), dict(getattr(self, f"{modality}_params"))
        if modality == "visual" and name == "mediapipe":
            # (H4a) the face extractor records its frame rate and checks clips arrive at it
            params.setdefault("fps", self.fps)
        return name, params

    def needs_video(self) -> bool:
        return self.visual is not None

    def record(self) -> dict[str, Any]:
        """JSON-able form for meta.json (the word-timing file is named, not embedded)."""
        return self.model_dump(mode="json")

    def fingerprint(self) -> str:
        """Short hash of everything that shapes the features (not plugins or max_len)."""
        keep = {k: v for k, v in self.record().items() if k not in ("plugins", "max_len")}
        return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:16]


def make_config(config: ExtractConfig | dict[str, Any] | str | Path | None = None,
                **overrides: Any) -> ExtractConfig:
    """An ExtractConfig from a config object, a dict, a YAML/JSON file, or None (defaults),
    with keyword overrides on top (None values are ignored: "not given")."""
    base: dict[str, Any]
    if config is None:
        base = {}
    elif isinstance(config, ExtractConfig):
        base = config.model_dump()
    elif isinstance(config, dict):
        base = dict(config)
    else:
        base = _read_config_file(Path(config))
    base.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return ExtractConfig.model_validate(base)
    except ValidationError as e:
        err = e.errors()[0]
        key = ".".join(str(x) for x in err["loc"]) or "config"
        raise ConfigError(f"extraction config, {key}: {err['msg']} (got {err.get('input')!r}); "
                          "see docs/extract.md for the options") from None


def _read_config_file(path: Path) -> dict[str, Any]:
    import yaml

    if not path.is_file():
        raise ConfigError(f"extraction config {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML/JSON ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of ExtractConfig fields, got {type(data).__name__}")
    return data
