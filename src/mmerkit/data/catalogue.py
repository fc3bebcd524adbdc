"""The built-in dataset converters: importing this module registers each of them (each reader
module registers its own converters on `mmerkit.data.converters.CONVERTERS`), as importing
`mmerkit.models` registers every model."""

from mmerkit.data import csd, custom, m3ed, memor, mmsa, mosei  # noqa: F401
from mmerkit.data.converters import CONVERTERS

__all__ = ["CONVERTERS"]
