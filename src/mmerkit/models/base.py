"""The model contract every mmerkit model implements, and the model registry.

A model is an `nn.Module` built from its own pydantic config and a `DataSpec`:

    forward(batch)  -> ModelOutput             # probs (B, L) are what predictions threshold
    loss(out, batch) -> {"name": term, ..., "total": weighted sum}
    on_train_batch_end(out, batch, gather)     # state updates (queues, prototypes) after a step
    fit_closed_form(data) -> {name: number}    # only models with closed_form = True (BR/CC/LP)
    max_steps() -> {modality: int or None}     # the longest sequence each modality takes
    padding_invariant (class flag)             # a sample's answer does not depend on batch padding

`gather` is the engine's all-gather (concatenates a tensor from every rank along dim 0, in rank
order; the identity on one process), so stateful models stay identical on every GPU.

How a model is trained is part of the contract, so the engine knows no model's internals:
`closed_form = False` (every neural model): the engine runs epochs of `loss` and backward;
`closed_form = True`: the engine calls `fit_closed_form(SplitData)` once; the model reads the
whole splits it needs through `SplitData.read` (the engine's loader, gathered over processes).

Register a model with `@register_model("name", paper=..., year=..., config=...)`; the tests loop
over `list_models()`, so a new model gets forward/backward/overfit/export tests for free.

Example:
    >>> from mmerkit.data.store import DataSpec
    >>> spec = DataSpec(("happy", "sad"), {"text": 8, "audio": 4})
    >>> model = create_model("early_fusion", spec, model_class("early_fusion").test_params)
    >>> type(model).__name__
    'EarlyFusionTransformer'
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from mmerkit.config import ModelConfig, validate
from mmerkit.data.batch import Batch
from mmerkit.data.store import DataSpec
from mmerkit.errors import ConfigError
from mmerkit.registry import Registry

Gather = Callable[[Tensor], Tensor]


@dataclass
class ModelOutput:
    logits: Tensor  # (B, L); a model whose prediction is not sigmoid(logits) sets probs itself
    probs: Tensor  # (B, L) in [0, 1]: what thresholds and metrics use
    features: dict[str, Tensor] = field(default_factory=dict)  # name -> (B, ..., F) latents for t-SNE
    modality_label_scores: Tensor | None = None  # (B, M, L) per-modality evidence for each label
    aux: dict[str, Any] = field(default_factory=dict)  # anything loss() needs from forward()


@dataclass
class SplitData:
    """Whole splits for a model fitted in one call (`MMERModel.fit_closed_form`).

    `read(split, fn)` applies `fn` (Batch -> (B, ...) tensor) to every batch of the split, read
    by the engine's loader, and returns the (N, ...) rows in split order on every process.
    """

    read: Callable[[str, Callable[[Batch], Tensor]], np.ndarray]
    seed: int = 0
    select_metric: str = "micro_f1"  # what validation-based choices maximise (train.select_metric)

    def labels(self, split: str) -> np.ndarray:
        """(N, L) uint8 multi-hot labels of a split."""
        return (self.read(split, lambda b: b.labels) > 0.5).astype(np.uint8)


class MMERModel(nn.Module):
    """Base class: subclasses set `config_class`, build layers in `__init__`, implement forward/loss."""

    name: ClassVar[str] = ""
    config_class: ClassVar[type[ModelConfig]] = ModelConfig
    default_threshold: ClassVar[float] = 0.5
    paper: ClassVar[str] = ""
    year: ClassVar[int] = 0
    # a tiny config for the registry-wide tests (fast on CPU); every model sets its own
    test_params: ClassVar[dict[str, Any]] = {}
    # False: trained by gradient steps (the engine's epochs of `loss`); True: fitted once by
    # `fit_closed_form` (the classic BR / CC / LP)
    closed_form: ClassVar[bool] = False
    # True: a sample's answer does not depend on how far its batch pads it (every attention and
    # pooling masked, positions counted per sample). The server batches requests of any lengths
    # together only when this holds; tests/test_models.py checks the claim for every model.
    padding_invariant: ClassVar[bool] = True
    # `mmer tune`'s default space: keys added to (or, set to None, dropped from) the generic one
    # (lr, weight decay, batch size, dropout; mmerkit.space), in the form a user's --space file has
    search_space: ClassVar[dict[str, Any]] = {}

    def __init__(self, config: ModelConfig, spec: DataSpec):
        super().__init__()
        self.config = config
        self.spec = spec

    @property
    def threshold(self) -> float:
        return float(getattr(self.config, "threshold", self.default_threshold))

    def forward(self, batch: Batch) -> ModelOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def loss(self, out: ModelOutput, batch: Batch) -> dict[str, Tensor]:
        """Default: BCE on the logits. Models with several terms override this."""
        bce = nn.functional.binary_cross_entropy_with_logits(out.logits, batch.labels)
        return {"bce": bce, "total": bce}

    def on_train_batch_end(self, out: ModelOutput, batch: Batch, gather: Gather) -> None:
        """Hook for state that changes after each optimiser step (queues, prototypes)."""

    def fit_closed_form(self, data: SplitData) -> dict[str, float]:
        """Models with `closed_form = True` fit themselves here, once, on whole splits (`data`);
        validation may choose hyper-parameters. Returns numbers to log with the fit (e.g. the
        chosen C). Gradient-trained models never get this call."""
        raise NotImplementedError(f"{type(self).__name__} is trained by gradient steps (closed_form = False)")

    def max_steps(self) -> dict[str, int | None]:
        """The longest sequence each modality takes (its positional table's rows); None where
        any length works. Callers (the server's input limits) ask this, never config fields;
        tests/test_models.py checks that these lengths pass and one step more fails."""
        return {m: None for m in self.spec.modality_names}

    def adapt_to_state(self, state: dict[str, Tensor]) -> None:
        """Called before a saved state is loaded: resize buffers whose size the fitted data
        decides (LP's label sets). Neural models have none."""

    def param_groups(self, weight_decay: float) -> list[dict]:
        """AdamW groups: no decay on biases and normalisation gains (BERT convention), except the
        input LayerNorms' gains where the config's `decay_input_norms` is true."""
        decay, no_decay = [], []
        # the releases whose name rule decays their input LayerNorms' gains (TAILOR, LDDU) say so
        # with `decay_input_norms`; those LayerNorms are the model's `norms` ModuleDict
        norms = getattr(self, "norms", None) if getattr(self.config, "decay_input_norms", False) else None
        gains = {id(n.weight) for n in norms.values()} if isinstance(norms, nn.ModuleDict) else set()
        for n, p in self.named_parameters():
            if not p.requires_grad:
                continue
            no = (p.ndim < 2 or "norm" in n.lower()) and id(p) not in gains
            (no_decay if no else decay).append(p)
        return [{"params": decay, "weight_decay": weight_decay},
                {"params": no_decay, "weight_decay": 0.0}]


MODELS = Registry("model")


def register_model(name: str, *, paper: str, year: int | None, config: type[ModelConfig]):
    """Class decorator: registers an MMERModel subclass under `name` with its config class.
    `year` is the paper's; None for a generic baseline that has no single paper."""

    def deco(cls: type[MMERModel]) -> type[MMERModel]:
        cls.name, cls.paper, cls.year, cls.config_class = name, paper, year, config
        return MODELS.register(name, paper=paper, year=year)(cls)

    return deco


def _ensure_models_imported() -> None:
    import mmerkit.models  # noqa: F401  (importing the package registers every model)


def list_models() -> list[str]:
    _ensure_models_imported()
    return MODELS.names()


def model_class(name: str) -> type[MMERModel]:
    _ensure_models_imported()
    return MODELS.get(name)


def recipe_params(name: str, preset: str | None = None) -> dict[str, Any]:
    """The model section every entry point starts from for `name`: mmerkit's recipe
    (`configs/models/<name>.yaml`), with a preset's model section over it when one is named
    (e.g. "carat-authors", the authors' values)."""
    from mmerkit.config import packaged_yaml, read_user_config

    layers = [packaged_yaml("models", name).get("model") or {}]
    if preset is not None:
        section = read_user_config(preset).get("model") or {}
        if section.get("name", name) != name:
            raise ConfigError(f"preset {preset!r} is for model {section['name']!r}, not {name!r}")
        layers.append(section)
    merged: dict[str, Any] = {}
    for layer in layers:
        merged.update({k: v for k, v in layer.items() if k != "name"})
    return merged


def build_model_config(name: str, params: dict | None = None, *, preset: str | None = None) -> ModelConfig:
    """The model config of `name` as `mmer train -m NAME` builds it: the config class's fields
    (the authors' values) < mmerkit's recipe (configs/models/<name>.yaml) < `preset` < `params`."""
    cls = model_class(name)
    data = {**recipe_params(name, preset), **dict(params or {})}
    data["name"] = name
    return validate(cls.config_class, data, "model")  # type: ignore[return-value]


def create_model(name: str, spec: DataSpec, params: dict | None = None, *,
                 preset: str | None = None) -> MMERModel:
    """Build a registered model: the same model `mmer train -m NAME` and `api.train` build
    (mmerkit's recipe; `preset="carat-authors"` gives the authors' values), with `params` over it.
    Unknown config keys fail with a did-you-mean message."""
    cfg = build_model_config(name, params, preset=preset)
    return model_class(name)(cfg, spec)


@torch.no_grad()
def all_finite(t: dict[str, Tensor]) -> bool:
    return all(bool(torch.isfinite(v).all()) for v in t.values())
