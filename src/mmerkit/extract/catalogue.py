"""The built-in media extractors: importing this module registers each of them (each extractor
module registers its own on `mmerkit.extract.base.EXTRACTORS`; their heavy packages load lazily),
as importing `mmerkit.models` registers every model. `list_extractors` and `create_extractor`
live here, so base.py (the contract every extractor imports) imports none of them.
"""

from __future__ import annotations

import inspect
from typing import Any

from mmerkit.errors import ConfigError
from mmerkit.extract import asr, audio, text, visual  # noqa: F401  (registers the built-ins)
from mmerkit.extract.base import EXTRACTORS, Extractor
from mmerkit.registry import did_you_mean


def list_extractors(modality: str | None = None) -> list[str]:
    """Registered extractor names, optionally only those of one modality."""
    return [e.name for e in EXTRACTORS.entries() if modality in (None, e.info["modality"])]


def create_extractor(name: str, **params: Any) -> Extractor:
    """Build a registered extractor; unknown names or options fail with a did-you-mean hint.

    Example:
        >>> create_extractor("librosa", n_mfcc=13).dim
        16
    """
    if name not in EXTRACTORS:
        known = ", ".join(EXTRACTORS.names())
        raise ConfigError(
            f"unknown extractor {name!r}.{did_you_mean(name, EXTRACTORS.names())} Known: {known}."
        )
    cls = EXTRACTORS.get(name)
    allowed = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    for key in params:
        if key not in allowed:
            raise ConfigError(
                f"extractor {name!r} has no option {key!r}.{did_you_mean(key, allowed)} "
                f"Options: {', '.join(allowed) or '(none)'}."
            )
    return cls(**params)
