"""Exceptions users see. Each message names the file, key or sample and suggests a fix."""


class MMERError(Exception):
    """Base class: the CLI prints these without a traceback."""


class DataError(MMERError, ValueError):
    """A store, converter input or batch is malformed."""


class ConfigError(MMERError, ValueError):
    """A configuration key or value is invalid."""


class CheckpointError(MMERError, ValueError):
    """A checkpoint or export is missing, truncated, or belongs to another model/label set."""


class UnknownNameError(ConfigError, KeyError):
    """A name missing from a registry (model, dataset): a ConfigError, and a KeyError for callers
    that look names up like a dict."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class TrainingDiverged(MMERError, FloatingPointError):
    """A loss became NaN/inf during training (too high a learning rate, extreme feature values)."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training, raised after the run was saved; the message says where it stopped
    (the CLI adds the command that continues it and exits with 130, the shell's code for Ctrl-C)."""


class CommandInterrupted(MMERError):
    """The CLI's form of TrainingInterrupted: printed as one `interrupted:` line, exit code 130
    (typer would otherwise turn Ctrl-C into a silent exit)."""


def check_writable_dir(folder, option: str = "--out") -> None:
    """Refuse, before any work, an output folder that cannot be written: one ConfigError naming
    the folder (a path under a file, a read-only folder or file system, no permission).

    Nothing is created: the nearest existing folder on the way is probed with a temporary file
    that is removed at once, so a refused command leaves nothing behind."""
    import errno
    import tempfile
    from pathlib import Path

    folder = Path(folder)
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        where = folder if probe == folder else f"{folder}: {probe}"
        raise ConfigError(f"{option} {where} is a file, not a folder; choose another path")
    try:
        with tempfile.TemporaryFile(dir=probe, prefix=".mmerkit-write-test-"):
            pass
    except OSError as e:
        why = {errno.EROFS: "is on a read-only file system", errno.EACCES: "is not writable (permission denied)",
               errno.EPERM: "is not writable (permission denied)", errno.ENOSPC: "has no space left",
               errno.EDQUOT: "is over its disk quota"}.get(e.errno, f"cannot be written ({e.strerror})")
        where = folder if probe == folder else f"{folder} (its folder {probe})"
        raise ConfigError(f"{option} {where} {why}; choose a writable {option} folder") from None
