"""A small name -> object registry with did-you-mean errors: models
(`mmerkit.models.base.MODELS`), media extractors (`mmerkit.extract.base.EXTRACTORS`) and dataset
converters (`mmerkit.data.converters.CONVERTERS`) each have one.

Example:
    >>> MODELS = Registry("model")
    >>> @MODELS.register("mlp", paper="-", year=2024)
    ... class MLP: ...
    >>> MODELS.get("mlp") is MLP
    True
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mmerkit.errors import UnknownNameError


def did_you_mean(name: str, choices: list[str] | tuple[str, ...]) -> str:
    """A ' Did you mean X?' suffix when a close match exists, else ''."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return f" Did you mean {close[0]!r}?" if close else ""


@dataclass
class Entry:
    name: str
    obj: Any
    info: dict[str, Any] = field(default_factory=dict)


class Registry:
    """Name -> object map; `register` is a decorator, `get` fails with a suggestion."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, **info: Any) -> Callable[[Any], Any]:
        def deco(obj: Any) -> Any:
            if name in self._entries and self._entries[name].obj is not obj:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = Entry(name, obj, info)
            return obj

        return deco

    def get(self, name: str) -> Any:
        return self.entry(name).obj

    def entry(self, name: str) -> Entry:
        if name not in self._entries:
            known = ", ".join(sorted(self._entries)) or "(none)"
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}.{did_you_mean(name, list(self._entries))} "
                f"Known: {known}."
            )
        return self._entries[name]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def entries(self) -> list[Entry]:
        return [self._entries[n] for n in self.names()]

    def __contains__(self, name: str) -> bool:
        return name in self._entries
