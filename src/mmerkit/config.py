"""Run configuration: pydantic models, YAML layering and `--set key=value` overrides.

Layers, later wins: class defaults < `configs/models/<model>.yaml` < `configs/datasets/<dataset>.yaml`
< user file or packaged preset (`--config`) < `--set section.key=value`.
Unknown keys are errors that name the key and suggest the nearest valid one.

Example:
    >>> cfg = load_config("early_fusion", overrides=["optim.lr=3e-4", "train.epochs=2"])
    >>> cfg.optim.lr, cfg.train.epochs
    (0.0003, 2)
"""

from __future__ import annotations

import copy
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mmerkit.errors import ConfigError
from mmerkit.registry import did_you_mean


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


class ModelConfig(StrictModel):
    """Base of every model's config; each model subclasses it with its own fields and defaults.

    Shared hyper-parameters have one name in every model: `hidden_size`, `num_heads`,
    `intermediate_size` (FFN width) and `layers` (depth of each modality's encoder).
    `renamed_fields` maps a field's former name to its current one, so configs and exported
    runs written before a rename still load; giving both names is an error.
    """

    renamed_fields: ClassVar[dict[str, str]] = {}

    name: str = ""

    @model_validator(mode="before")
    @classmethod
    def _accept_former_names(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not cls.renamed_fields:
            return data
        out = dict(data)
        for old, new in cls.renamed_fields.items():
            if old in out:
                if new in out:
                    raise ValueError(f"model.{old} is the former name of model.{new}; give only {new}")
                out[new] = out.pop(old)
        return out

    @model_validator(mode="after")
    def _heads_divide_hidden(self) -> Any:
        """Every attention model splits `hidden_size` across `num_heads`: one check for all."""
        hidden, heads = getattr(self, "hidden_size", None), getattr(self, "num_heads", None)
        if isinstance(hidden, int) and isinstance(heads, int) and heads > 0 and hidden % heads:
            raise ValueError(f"hidden_size {hidden} must be divisible by num_heads {heads}")
        return self


class DataConfig(StrictModel):
    path: str | None = None  # None = the embedded synthetic dataset
    synthetic: dict[str, Any] = Field(default_factory=dict)  # SynthConfig fields when path is None
    num_workers: int = Field(0, ge=0)
    modalities: list[str] | None = None  # None = all modalities of the store


class OptimConfig(StrictModel):
    optimizer: Literal["adamw", "bertadam"] = "adamw"
    lr: float = Field(1e-4, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    betas: tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]] = (0.9, 0.999)
    eps: float = Field(1e-6, gt=0)
    warmup_proportion: float = Field(0.1, ge=0, le=1)
    schedule: Literal["linear", "constant", "cosine", "warmup_cosine", "timm_epoch"] = "linear"
    warmup_init: float = Field(0.0, ge=0, le=1)  # timm_epoch: the warm-up's start, a fraction of lr
    decay_all: bool = False  # True: weight decay on every parameter (AMP's release), not BERT's rule
    grad_clip: float | None = Field(1.0, gt=0)
    accumulate: int = Field(1, ge=1)


class TrainConfig(StrictModel):
    epochs: int = Field(20, ge=1)
    # at least this many optimiser steps: on a small training split the epochs are lengthened to
    # ceil(min_steps / steps per epoch) (engine.step_budget); 0 = exactly `epochs`. A config layer
    # that sets epochs without min_steps (a user's YAML, --set train.epochs=N, --epochs N) turns
    # the budget of the layers below off: an epoch count the user chose is taken as it is.
    min_steps: int = Field(0, ge=0)
    batch_size: int = Field(64, ge=1)
    eval_batch_size: int = Field(256, ge=1)
    seed: int = 1
    deterministic: bool = False
    accelerator: str = "auto"
    devices: int | str = 1
    num_nodes: int = Field(1, ge=1)
    strategy: Literal["auto", "ddp"] = "auto"  # fsdp: Fabric needs GPUs for it; not tested yet
    precision: str = "32-true"
    threshold: float | Literal["search", "per-label", "default"] = "default"
    select_metric: str = "micro_f1"
    drop_last: bool = True
    logger: Literal["csv", "tensorboard"] = "csv"
    progress: bool = True
    checkpoint_every_n_steps: int = Field(0, ge=0)  # 0 = end of each epoch only
    memory_check: Literal["refuse", "warn", "off"] = "refuse"  # estimated step memory vs the device's

    @field_validator("threshold")
    @classmethod
    def _threshold_is_a_probability(cls, v):
        if isinstance(v, float) and not 0.0 <= v <= 1.0:
            raise ValueError("a threshold is a probability in [0, 1] (e.g. 0.5), or search, per-label, default")
        return v


class RunConfig(StrictModel):
    model: dict[str, Any] = Field(default_factory=dict)  # validated by the model's own config class
    data: DataConfig = Field(default_factory=DataConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)

    @property
    def model_name(self) -> str:
        return str(self.model.get("name", ""))


SECTIONS = ("model", "data", "optim", "train")


def check_threshold(value: float, option: str = "--threshold") -> float:
    """A decision threshold on probabilities must lie in [0, 1]; anything else is a ConfigError."""
    if not 0.0 <= float(value) <= 1.0:
        raise ConfigError(f"{option} {value}: a threshold is a probability, so it must be in [0, 1] "
                          "(e.g. 0.5), or one of search, per-label, default")
    return float(value)


# ----------------------------------------------------------------------------- validation


def validate(cls: type[BaseModel], data: dict, where: str, origin: str | None = None) -> BaseModel:
    """`cls(**data)` with errors that name the key, the value, the nearest valid key and, when
    given, the file the value came from (`origin`)."""
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_explain(e, cls, where, origin)) from None


def _explain(e: ValidationError, cls: type[BaseModel], where: str, origin: str | None = None) -> str:
    lines = []
    src = f" (in {origin})" if origin else ""
    for err in e.errors():
        key = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            top = str(err["loc"][0])
            fields = _fields_at(cls, err["loc"][:-1])
            lines.append(f"unknown key {where}.{key}{src}.{did_you_mean(str(err['loc'][-1]), fields)}"
                         f" Valid keys: {', '.join(fields)}" if fields else f"unknown key {where}.{top}{src}")
        else:
            msg = err["msg"].removeprefix("Value error, ")  # our validators' messages stand alone
            lines.append(f"{where}.{key}{src}: {msg} (got {err.get('input')!r})")
    return "; ".join(lines)


def _fields_at(cls: type[BaseModel], loc: tuple) -> list[str]:
    for part in loc:
        ann = cls.model_fields.get(str(part))
        sub = getattr(ann, "annotation", None) if ann else None
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            cls = sub
        else:
            return []
    return list(cls.model_fields)


# ----------------------------------------------------------------------------- layering


def deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def packaged_yaml(kind: str, name: str) -> dict:
    """A YAML file shipped in `mmerkit/configs/<kind>/<name>.yaml`, or {} if there is none."""
    res = resources.files("mmerkit") / "configs" / kind / f"{name}.yaml"
    return _parse_yaml(res.read_text(), str(res)) if res.is_file() else {}


def packaged_names(kind: str) -> list[str]:
    """Names of the packaged configs of one kind; presets include the ablation table's rows."""
    root = resources.files("mmerkit") / "configs" / kind
    names = [p.name[:-5] for p in root.iterdir() if p.name.endswith(".yaml")] if root.is_dir() else []
    if kind == "presets":
        names += [n for table in _ablation_tables().values() for n in table]
    return sorted(names)


def _ablation_tables() -> dict[str, dict[str, dict]]:
    """configs/ablations.yaml: model -> ablation preset name -> model overrides."""
    res = resources.files("mmerkit") / "configs" / "ablations.yaml"
    data = yaml.safe_load(res.read_text()) if res.is_file() else None
    return data or {}


def ablation_table(model: str) -> dict[str, dict]:
    """The ablation presets of `model` (name -> model overrides); {} if it defines none."""
    return copy.deepcopy(_ablation_tables().get(model, {}))


def _ablation_preset(name: str) -> dict:
    """The preset `name` of the ablation table as a config layer, or {} if there is none."""
    for model, table in _ablation_tables().items():
        if name in table:
            return {"model": {"name": model, **copy.deepcopy(table[name])}}
    return {}


def _parse_yaml(text: str, origin: str) -> dict:
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{origin} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: expected a mapping with sections {SECTIONS}, got {type(data).__name__}")
    unknown = [k for k in data if k not in SECTIONS]
    if unknown:
        raise ConfigError(f"{origin}: unknown section {unknown[0]!r}.{did_you_mean(unknown[0], SECTIONS)} "
                          f"Sections: {', '.join(SECTIONS)}")
    return data


def read_user_config(ref: str | Path) -> dict:
    """A YAML file path, or the name of a packaged preset (e.g. `carat-authors`)."""
    path = Path(ref)
    if path.is_file():
        return _parse_yaml(path.read_text(), str(path))
    preset = packaged_yaml("presets", str(ref)) or _ablation_preset(str(ref))
    if preset:
        return preset
    raise ConfigError(f"config {str(ref)!r} is neither a file nor a packaged preset."
                      f"{did_you_mean(str(ref), packaged_names('presets'))} "
                      f"Presets: {', '.join(packaged_names('presets')) or '(none)'}")


def parse_override(item: str) -> dict:
    """`optim.lr=1e-4` -> {"optim": {"lr": 1e-4}}; values are parsed as YAML scalars/lists."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected key=value, e.g. --set optim.lr=1e-4")
    key, raw = item.split("=", 1)
    parts = key.strip().split(".")
    if parts[0] not in SECTIONS or len(parts) < 2:
        raise ConfigError(f"--set {item!r}: keys look like section.key with section one of "
                          f"{', '.join(SECTIONS)}.{did_you_mean(parts[0], SECTIONS)}")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        value = raw
    if isinstance(value, str) and _looks_numeric(value):
        value = float(value)  # YAML 1.1 reads "1e-4" as a string
    out: dict = value
    for p in reversed(parts):
        out = {p: out}
    return out


def _looks_numeric(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def load_config(
    model: str | None = None,
    dataset: str | None = None,
    config: str | Path | dict | RunConfig | None = None,
    overrides: list[str] | tuple[str, ...] = (),
) -> RunConfig:
    """Build the resolved RunConfig from the layers described in the module docstring.
    `config` is a YAML file, a packaged preset name, or the user layer itself (a dict of
    sections, or a RunConfig)."""
    if isinstance(config, RunConfig):
        config = config.model_dump(mode="json", exclude_unset=True)
    user = (dict(config) if isinstance(config, dict) else read_user_config(config)) if config else {}
    if isinstance(config, dict):
        config = "config (a dict)"
    cli = {}
    for item in overrides:
        cli = deep_merge(cli, parse_override(item))
    name = model or _model_name(cli) or _model_name(user) or "carat"
    layers = [(f"mmerkit/configs/models/{name}.yaml", packaged_yaml("models", name)),
              (f"mmerkit/configs/datasets/{dataset}.yaml", packaged_yaml("datasets", dataset) if dataset else {}),
              (str(config), user), ("", cli)]  # --set keys are named as typed: no origin
    merged: dict = {}
    for origin, layer in layers:
        # each file is checked as it is merged, so an error names the file that holds the bad value
        merged = deep_merge(merged, _epochs_are_exact(layer))
        if isinstance(merged.setdefault("model", {}), dict):
            merged["model"]["name"] = name
        if layer and origin:
            validate(RunConfig, merged, "config", origin)
    return validate(RunConfig, merged, "config")  # type: ignore[return-value]


def _epochs_are_exact(layer: dict) -> dict:
    """A layer that sets `train.epochs` without `train.min_steps` (a user's YAML, `--set
    train.epochs=N`, `--epochs N`) means exactly that many epochs: the step budget of a layer
    below it (a packaged recipe's) belonged to the recipe's own epoch count."""
    train = layer.get("train")
    if isinstance(train, dict) and "epochs" in train and "min_steps" not in train:
        return {**layer, "train": {**train, "min_steps": 0}}
    return layer


def _model_name(layer: dict) -> str | None:
    section = layer.get("model")
    return section.get("name") if isinstance(section, dict) else None  # else: validation names it


def to_yaml(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def from_yaml(text: str, origin: str = "config.yaml") -> RunConfig:
    return validate(RunConfig, _parse_yaml(text, origin), "config")  # type: ignore[return-value]
