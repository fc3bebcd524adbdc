"""The dataset converters' registry: name -> function that writes a FeatureStore, on the same
`Registry` as models and extractors.

A converter is `fn(path, out, *, nan_policy, overwrite, **options)`; its keyword-only
parameters are its options (`mmer data convert --from NAME --option value`, checked by
mmerkit.data.options). A converter that cannot work without a second file says so in its
registration (`needs_labels_from=`), so callers ask the registry instead of special-casing it.
The built-in converters register when `mmerkit.data.catalogue` is imported.

Example:
    >>> from mmerkit.data.catalogue import CONVERTERS
    >>> CONVERTERS.entry("m3ed").info["description"].split(" (")[0]
    "M3ED dialogues from the authors' feature pickle"
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mmerkit.registry import Registry

CONVERTERS = Registry("dataset")


def register_converter(name: str, *, description: str,
                       needs_labels_from: str | None = None) -> Callable[[Any], Any]:
    """Function decorator: registers a converter under `name`. `needs_labels_from` is, for a
    converter whose input has no labels, what the label file is and why it is needed."""
    return CONVERTERS.register(name, description=description, needs_labels_from=needs_labels_from)
