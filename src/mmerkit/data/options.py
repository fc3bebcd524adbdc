"""Checking a converter's options before it runs: names (with did-you-mean) and value types.

Converters are plain functions whose keyword-only parameters are their options, so the
signature is the single source of truth: `mmer data convert --from m3ed --max-len 60` becomes
`convert_m3ed(..., max_len=60)`. An unknown or misspelt option, or a value of the wrong type,
is a ConfigError naming the option as typed on the command line and the nearest valid one,
instead of Python's TypeError deep inside the converter.

Example:
    >>> from mmerkit.data.m3ed import convert_m3ed
    >>> check_converter_options("m3ed", convert_m3ed, {"max_len": 30})
    {'max_len': 30}
    >>> check_converter_options("m3ed", convert_m3ed, {"max_lenn": 30})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    mmerkit.errors.ConfigError: --from m3ed has no option --max-lenn. Did you mean --max-len? ...
"""

from __future__ import annotations

import collections.abc
import difflib
import inspect
import typing
from collections.abc import Callable
from typing import Any

from pydantic import TypeAdapter, ValidationError

from mmerkit.errors import ConfigError

# options of `mmer data convert` itself, passed to every converter by the caller
TOP_LEVEL = ("nan_policy", "overwrite", "labels_from")
# spellings users reach for, with the one mmerkit uses (one name per idea across converters)
ALIASES = {"allow_empty_labels": "--empty-labels allow", "allow_empty": "--empty-labels allow",
           "empty_label": "--empty-labels allow|reject", "nan": "--nan-policy zero|reject",
           "nan_policy_zero": "--nan-policy zero", "labels": "--label-names a,b,c", "label_set_name": "--label-set"}


def flag(name: str) -> str:
    """`max_len` -> `--max-len`: an option as typed on the command line."""
    return "--" + name.replace("_", "-")


def converter_option_names(fn: Callable) -> list[str]:
    """The options a converter accepts (its keyword-only parameters, less the top-level ones)."""
    params = inspect.signature(fn).parameters
    return [n for n, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY and n not in TOP_LEVEL]


def check_converter_options(source: str, fn: Callable, options: dict[str, Any]) -> dict[str, Any]:
    """Validate `options` for converter `fn` of `--from source`; returns them normalised
    (`no_personality=True` -> `personality=False`, values coerced to the annotated types)."""
    valid = converter_option_names(fn)
    hints = _type_hints(fn)
    out: dict[str, Any] = {}
    for key, value in options.items():
        key = key.replace("-", "_")
        if key.startswith("no_") and key[3:] in valid and value is True:
            key, value = key[3:], False
        if key in TOP_LEVEL:
            out[key] = value
            continue
        if key not in valid:
            raise ConfigError(_unknown(source, key, valid))
        out[key] = _coerce(source, key, value, hints.get(key))
    return out


def _unknown(source: str, key: str, valid: list[str]) -> str:
    if key in ALIASES:
        hint = f" Use {ALIASES[key]} (the same spelling for every converter)."
    else:
        close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
        hint = f" Did you mean {flag(close[0])}?" if close else ""
    listed = ", ".join(flag(v) for v in valid) or "none"
    return f"--from {source} has no option {flag(key)}.{hint} Options: {listed} (docs/datasets.md)"


def _type_hints(fn: Callable) -> dict[str, Any]:
    try:
        return typing.get_type_hints(fn)
    except Exception:  # an annotation that cannot be resolved: skip type checks, names still checked
        return {}


def _wants_sequence(hint: Any) -> bool:
    args = typing.get_args(hint) or (hint,)
    return any(typing.get_origin(a) in (list, tuple, collections.abc.Sequence) for a in args)


def _coerce(source: str, key: str, value: Any, hint: Any) -> Any:
    if hint is None or hint is Any:
        return value
    if isinstance(value, str) and _wants_sequence(hint):
        value = [value]  # `--modalities text`: one item of a list option
    try:
        value = TypeAdapter(hint).validate_python(value)
    except ValidationError as e:
        msg = e.errors()[0]["msg"]
        raise ConfigError(f"--from {source}: option {flag(key)} got {value!r}: {msg} "
                          f"(docs/datasets.md lists each converter's options)") from None
    if key == "max_len" and value is not None and value < 1:  # a length cap of 0 or less keeps nothing
        raise ConfigError(f"--from {source}: option --max-len got {value}: give the number of steps to keep, >= 1")
    return value
