"""Exceptions users see. Each message names the file, key or sample and suggests a fix."""


class MMERError(Exception):
    """Base class: the CLI prints these without a traceback."""


class DataError(MMERError, ValueError):
    """A store, converter input or batch is malformed."""


class ConfigError(MMERError, ValueError):
    """A configuration key or value is invalid."""


class CheckpointError(MMERError, ValueError):
    """A checkpoint or export is missing, truncated, or belongs to another model/label set."""
