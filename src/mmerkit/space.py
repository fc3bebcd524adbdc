"""Search spaces for `mmer tune`: each model's default, a user's YAML override, and checks.

A space maps `section.key` (a field of the model's config, `optim` or `train`) to a range:

    optim.lr:          {type: float, low: 1.0e-5, high: 3.0e-3, log: true}
    model.dropout:     {type: float, low: 0.0, high: 0.5}
    model.hidden_size: {type: int, low: 32, high: 128, step: 32}
    train.batch_size:  {type: categorical, choices: [32, 64, 128]}

Every gradient-trained model starts from GENERIC_SPACE (learning rate, weight decay, batch size,
and `model.dropout` when its config has that field); a model adds or replaces keys with its
class attribute `search_space` (next to its config class), where `None` drops a generic key.
Closed-form models (BR / CC / LP) have no epochs or optimiser: only their own keys count. A
user's file is merged over the default the same way (`key: null` drops a default key).

Unknown keys, unknown range fields, empty ranges and values the config's validators refuse are
ConfigErrors naming the key (and the nearest valid name), before any trial runs.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mmerkit.config import OptimConfig, RunConfig, TrainConfig, validate
from mmerkit.errors import ConfigError
from mmerkit.registry import did_you_mean

KINDS = ("float", "int", "categorical")
RANGE_FIELDS = ("type", "low", "high", "log", "step", "choices")
TUNABLE_SECTIONS = ("model", "optim", "train")

GENERIC_SPACE: dict[str, dict[str, Any]] = {
    "optim.lr": {"type": "float", "low": 1e-5, "high": 3e-3, "log": True},
    "optim.weight_decay": {"type": "float", "low": 0.0, "high": 0.1},
    "train.batch_size": {"type": "categorical", "choices": [32, 64, 128]},
}
GENERIC_DROPOUT = {"type": "float", "low": 0.0, "high": 0.5}


@dataclass(frozen=True)
class Param:
    """One searched field: `key` is `section.field`; the rest is its range."""

    key: str
    kind: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple = ()

    def distribution(self):
        """The Optuna distribution of this range."""
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        if self.kind == "categorical":
            return CategoricalDistribution(list(self.choices))
        if self.kind == "int":
            return IntDistribution(int(self.low), int(self.high), log=self.log, step=int(self.step or 1))
        return FloatDistribution(float(self.low), float(self.high), log=self.log, step=self.step)

    def suggest(self, trial) -> Any:
        """This range's value for an Optuna trial."""
        if self.kind == "categorical":
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high), log=self.log, step=int(self.step or 1))
        return trial.suggest_float(self.key, float(self.low), float(self.high), log=self.log, step=self.step)

    def describe(self) -> str:
        if self.kind == "categorical":
            return f"{self.key} in {list(self.choices)}"
        extra = " log" if self.log else (f" step {self.step}" if self.step else "")
        return f"{self.key} {self.kind} [{self.low}, {self.high}]{extra}"


# ----------------------------------------------------------------------------- default spaces


def default_space(model: str) -> dict[str, dict[str, Any]]:
    """The model's declared space: GENERIC_SPACE (gradient-trained models), `model.dropout`
    when the config has it, then the class's own `search_space` (None drops a key)."""
    from mmerkit.models.base import model_class

    cls = model_class(model)
    space: dict[str, Any] = {}
    if not cls.closed_form:
        space.update(copy.deepcopy(GENERIC_SPACE))
        if "dropout" in cls.config_class.model_fields:
            space["model.dropout"] = dict(GENERIC_DROPOUT)
    return merge_spaces(space, getattr(cls, "search_space", {}) or {})


def merge_spaces(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`over`'s keys replace `base`'s; a key set to None is dropped."""
    out = copy.deepcopy(base)
    for key, spec in over.items():
        if spec is None:
            out.pop(key, None)
        else:
            out[key] = copy.deepcopy(spec)
    return out


def read_space_file(path: str | Path) -> dict[str, Any]:
    """A user's space file (YAML mapping `section.key: range`)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--space {p}: no such file (a YAML mapping such as "
                          "`optim.lr: {type: float, low: 1.0e-5, high: 1.0e-3, log: true}`)")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"--space {p} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--space {p}: expected a mapping `section.key: range`, got {type(data).__name__}")
    return data


# ----------------------------------------------------------------------------- checks


def resolve_space(base: RunConfig, user: dict[str, Any] | None = None, origin: str = "--space") -> list[Param]:
    """The model's default space with `user` merged over it, each key checked against `base`
    (the resolved config a trial starts from). Errors name the key and the file."""
    model = base.model_name
    space = merge_spaces(default_space(model), user or {})
    if not space:
        raise ConfigError(f"model {model!r} has no search space of its own (it fits in closed form); "
                          f"give one with --space FILE, e.g. `model.C: {{type: float, low: 0.001, high: 10, log: true}}`")
    from_user = set(user or {})
    return [check_param(key, spec, base, origin if key in from_user else f"the default space of {model}")
            for key, spec in space.items()]


def check_param(key: str, spec: Any, base: RunConfig, origin: str) -> Param:
    where = f"{origin}: {key}"
    section, field = _check_key(key, base, origin)
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: expected a range such as {{type: float, low: 0.0, high: 0.5}}, got {spec!r}")
    for name in spec:
        if name not in RANGE_FIELDS:
            raise ConfigError(f"{where}: unknown range field {name!r}.{did_you_mean(str(name), RANGE_FIELDS)} "
                              f"Fields: {', '.join(RANGE_FIELDS)}")
    kind = spec.get("type")
    if kind not in KINDS:
        raise ConfigError(f"{where}: type {kind!r} is not one of {', '.join(KINDS)}."
                          f"{did_you_mean(str(kind), KINDS)}")
    if kind == "categorical":
        param = _categorical(where, key, spec)
        values = list(param.choices)
    else:
        param = _numeric(where, key, kind, spec)
        values = [param.low, param.high]
    for value in values:
        _check_value(where, section, field, value, base)
    return param


def _check_key(key: str, base: RunConfig, origin: str) -> tuple[str, str]:
    parts = str(key).split(".")
    if len(parts) != 2 or parts[0] not in TUNABLE_SECTIONS:
        raise ConfigError(f"{origin}: key {key!r} is not section.field with section one of "
                          f"{', '.join(TUNABLE_SECTIONS)}.{did_you_mean(parts[0], TUNABLE_SECTIONS)}")
    section, field = parts
    fields = [f for f in section_fields(section, base) if f != "name"]
    if field not in fields:
        raise ConfigError(f"{origin}: unknown key {key!r}.{did_you_mean(field, fields)} "
                          f"Fields of {section}: {', '.join(fields)}")
    return section, field


def section_fields(section: str, base: RunConfig) -> list[str]:
    if section == "model":
        from mmerkit.models.base import model_class

        return list(model_class(base.model_name).config_class.model_fields)
    return list((OptimConfig if section == "optim" else TrainConfig).model_fields)


def _categorical(where: str, key: str, spec: dict) -> Param:
    extra = [k for k in ("low", "high", "log", "step") if k in spec]
    if extra:
        raise ConfigError(f"{where}: a categorical range takes `choices` only, not {extra[0]!r}")
    choices = spec.get("choices")
    if not isinstance(choices, list) or not choices:
        raise ConfigError(f"{where}: categorical needs a non-empty list `choices`, got {choices!r}")
    if len(set(map(repr, choices))) != len(choices):
        raise ConfigError(f"{where}: choices {choices} repeat a value")
    return Param(key=key, kind="categorical", choices=tuple(choices))


def _numeric(where: str, key: str, kind: str, spec: dict) -> Param:
    if "choices" in spec:
        raise ConfigError(f"{where}: `choices` belongs to type categorical; a {kind} range has low and high")
    missing = [k for k in ("low", "high") if k not in spec]
    if missing:
        raise ConfigError(f"{where}: a {kind} range needs {' and '.join(missing)}")
    low, high, step, log = spec["low"], spec["high"], spec.get("step"), bool(spec.get("log", False))
    for name, v in (("low", low), ("high", high), ("step", step)):
        if v is None and name == "step":
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ConfigError(f"{where}: {name}={v!r} is not a finite number")
        if kind == "int" and float(v) != int(v):
            raise ConfigError(f"{where}: {name}={v!r} is not a whole number (type int)")
    if low >= high:
        raise ConfigError(f"{where}: empty range low={low} >= high={high}; low must be below high "
                          "(to fix a value, use --set instead)")
    if log and low <= 0:
        raise ConfigError(f"{where}: log: true needs low > 0 (got low={low})")
    if step is not None:
        if log:
            raise ConfigError(f"{where}: give either log: true or step, not both (Optuna samples one or the other)")
        if step <= 0 or step > high - low:
            raise ConfigError(f"{where}: step={step} must be > 0 and at most high - low = {high - low}")
    cast = int if kind == "int" else float
    return Param(key=key, kind=kind, low=cast(low), high=cast(high), log=log,
                 step=cast(step) if step is not None else None)


def _check_value(where: str, section: str, field: str, value: Any, base: RunConfig) -> None:
    """`value` must pass the field's validator in the config a trial starts from."""
    try:
        if section == "model":
            from mmerkit.models.base import build_model_config

            params = {k: v for k, v in base.model.items() if k != "name"}
            build_model_config(base.model_name, {**params, field: value})
        else:
            current = getattr(base, section).model_dump(mode="json")
            validate(OptimConfig if section == "optim" else TrainConfig, {**current, field: value}, section)
    except ConfigError as e:
        raise ConfigError(f"{where}: the value {value!r} is refused by the config: {e}") from None


# ----------------------------------------------------------------------------- values


def values_of(space: list[Param], cfg: RunConfig) -> dict[str, Any]:
    """The values `cfg` gives the space's keys (the packaged recipe's point, trial 0)."""
    dumped = cfg.model_dump(mode="json")
    return {p.key: dumped[p.key.split(".")[0]].get(p.key.split(".")[1]) for p in space}


def with_recipe_choices(space: list[Param], recipe: dict[str, Any]) -> list[Param]:
    """A categorical range that lacks the recipe's value gains it: trial 0 is the recipe, and
    Optuna refuses a fixed categorical value outside its choices."""
    out = []
    for p in space:
        if p.kind == "categorical" and recipe.get(p.key) not in p.choices:
            p = Param(key=p.key, kind=p.kind, choices=(*p.choices, recipe.get(p.key)))
        out.append(p)
    return out

