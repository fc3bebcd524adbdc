"""How much memory a training step will take, checked before training starts.

A store with long sequences can need far more memory than the machine has (attention grows with
T²), and the run would then die minutes in, or swap for hours. So before any run directory is
written, one forward pass of the model on the store's longest training samples is *probed*: the
tensors autograd saves for the backward pass are summed (`torch.autograd.graph.saved_tensors_hooks`,
so this works for every model without knowing its internals), scaled to the batch size, and added
to the weights, gradients and AdamW's two moments:

    peak ≈ 16 B × parameters + TRANSIENT × saved-activation bytes per sample × batch size

TRANSIENT covers the gradients of the activations alive during backward and allocator slack; it
was measured on CPU against the peak RSS of two real steps (`benchmarks/memory_estimate.py`:
early_fusion, carat-small, ramer-small and mult at T 50-600 were within -7% to +38% of it).
The estimate is for the worst batch (every sample as long as the longest) at 32-bit precision.

Policy (`train.memory_check`): "refuse" (default) stops with the numbers and the fix when the
estimate exceeds the memory available to one device; "warn" only prints; "off" skips the probe.
A warning is printed from half of the available memory on. A position table that must grow
because the store is longer than the model's configured positions is reported too.

Example:
    >>> est = estimate_training_memory(model, store, cfg)       # doctest: +SKIP
    >>> est.describe()                                           # doctest: +SKIP
    'about 2.1 GB per device (batch 64; longest text 50, visual 50, audio 50 steps)'
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from mmerkit.config import RunConfig
from mmerkit.data.batch import StoreDataset, collate
from mmerkit.data.store import FeatureStore
from mmerkit.errors import ConfigError, MMERError

TRANSIENT = 1.6  # peak / saved activations during backward, measured (module doc)
BYTES_PER_PARAM = 16  # fp32 weight + gradient + AdamW's exp_avg and exp_avg_sq
WARN_FRACTION = 0.5


@dataclass
class MemoryEstimate:
    """A training step's estimated peak memory on one device, with its parts."""

    total: int  # bytes
    params: int  # bytes of weights, gradients and optimizer state
    per_sample: int  # activation bytes per sample (TRANSIENT included)
    batch_size: int
    longest: dict[str, int]  # modality -> steps of the longest training sample
    available: int | None = None  # bytes one device has (None: unknown)
    where: str = ""  # what `available` measures

    def describe(self) -> str:
        steps = ", ".join(f"{m} {t}" for m, t in self.longest.items())
        return f"about {gb(self.total)} per device (batch {self.batch_size}; longest {steps} steps)"

    def batch_that_fits(self, budget: int) -> int:
        """The largest batch size whose estimate stays under `budget` bytes (0 if none does)."""
        return max(int((budget - self.params) // max(self.per_sample, 1)), 0)


def gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.0f} MB"


def _probe_indices(store: FeatureStore, modalities: tuple[str, ...], n: int = 2) -> list[int]:
    """The training samples that make the longest batch: the longest of each modality first."""
    sp = store.split("train")
    lens = np.stack([np.asarray(sp.lengths[m]) for m in modalities])  # (M, N)
    idx = list(dict.fromkeys(int(i) for i in lens.argmax(1)))
    for i in np.argsort(-lens.sum(0), kind="stable")[: n + len(idx)]:
        if len(idx) >= n:
            break
        if int(i) not in idx:
            idx.append(int(i))
    return idx


def _saved_activation_bytes(model: torch.nn.Module, batch) -> int:
    """Bytes of the distinct tensors autograd keeps for backward in one forward + loss."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in params and ptr not in seen:
            seen[ptr] = storage.nbytes()
        return t

    was_training = model.training
    model.train()
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = model(batch)
            model.loss(out, batch)["total"]
    finally:
        model.train(was_training)
    return sum(seen.values())


def estimate_training_memory(model, store: FeatureStore, cfg: RunConfig) -> MemoryEstimate | None:
    """Probe `model` (on CPU) with the store's longest training samples; None for models without
    gradient training (BR / CC / LP)."""
    if getattr(model, "closed_form", False) or not any(p.requires_grad for p in model.parameters()):
        return None
    modalities = tuple(cfg.data.modalities) if cfg.data.modalities else tuple(store.modalities)
    dataset = StoreDataset(store, "train", modalities)  # checks data.modalities against the store
    batch = collate(dataset.__getitems__(_probe_indices(store, modalities)))
    saved = _saved_activation_bytes(model, batch)
    params = BYTES_PER_PARAM * sum(p.numel() for p in model.parameters() if p.requires_grad)
    per_sample = int(TRANSIENT * saved / batch.size)
    batch_size = min(cfg.train.batch_size, len(store.split("train")))
    longest = {m: int(batch.inputs[m].shape[1]) for m in modalities}
    return MemoryEstimate(params + per_sample * batch_size, params, per_sample, batch_size, longest)


def available_memory(accelerator: str) -> tuple[int | None, str]:
    """(bytes one device can use, what that is): the GPU's total memory, or the RAM available now."""
    acc = str(accelerator).lower()
    if acc in ("gpu", "cuda") or (acc == "auto" and torch.cuda.is_available()):
        if torch.cuda.is_available():
            return int(torch.cuda.get_device_properties(0).total_memory), "GPU memory"
        return None, "GPU memory"
    try:
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        return int(info["MemAvailable"].split()[0]) * 1024, "available RAM"
    except (OSError, KeyError, ValueError):
        try:
            return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "RAM"
        except (ValueError, OSError, AttributeError):
            return None, "RAM"


def position_table_notes(cfg: RunConfig, store: FeatureStore) -> list[str]:
    """One line per modality whose position table grows past the model config because the store's
    sequences are longer (positions beyond the configured range start untrained)."""
    from mmerkit.models.base import build_model_config

    m = build_model_config(cfg.model_name, cfg.model).model_dump()  # with the class defaults
    notes = []
    for mod, t in store.spec().max_len.items():
        if isinstance(m.get("max_positions"), dict) or "default_max_positions" in m:
            limit = (m.get("max_positions") or {}).get(mod, m.get("default_max_positions"))
            key = f"model.max_positions.{mod}" if mod in (m.get("max_positions") or {}) else \
                "model.default_max_positions"
        elif "max_len" in m:
            limit, key = m["max_len"], "model.max_len"
        else:
            continue
        if limit is not None and t > int(limit):
            notes.append(f"the {mod} position table grows from {key}={limit} to {t} steps (the store's longest "
                         f"{mod}); cut sequences at conversion (--max-len) if they are longer than you meant")
    return notes


def check_training_memory(model, store: FeatureStore, cfg: RunConfig, *, quiet: bool = False) -> MemoryEstimate | None:
    """Estimate, compare with the device's memory, and refuse or warn per `train.memory_check`
    (before anything is written). Returns the estimate (None when skipped)."""
    policy = getattr(cfg.train, "memory_check", "refuse")
    for note in position_table_notes(cfg, store):
        if not quiet:
            warnings.warn(note, stacklevel=2)
    if policy == "off":
        return None
    try:
        est = estimate_training_memory(model, store, cfg)
    except torch.OutOfMemoryError:
        raise ConfigError(f"{store.path}: even one forward pass on its two longest training samples runs out of "
                          "memory; cut the sequences at conversion (mmer data convert ... --max-len N)") from None
    except MMERError:
        raise
    except Exception as e:  # an estimator that fails must never stop a run that would train
        if not quiet:
            warnings.warn(f"could not estimate the training memory ({type(e).__name__}: {e}); training anyway",
                          stacklevel=2)
        return None
    if est is None:
        return None
    est.available, est.where = available_memory(cfg.train.accelerator)
    if est.available is None:
        return est
    if est.total > est.available:
        fits = est.batch_that_fits(int(0.8 * est.available))
        smaller = (f"--set train.batch_size={fits} (about {gb(est.params + fits * est.per_sample)})" if fits >= 1
                   else "a smaller model config")
        msg = (f"training {cfg.model_name} on {store.path} needs {est.describe()}, more than the "
               f"{gb(est.available)} of {est.where}; use {smaller}, or cut sequences at conversion "
               f"(mmer data convert ... --max-len N), or --set train.memory_check=warn to try anyway")
        if policy == "refuse":
            raise ConfigError(msg)
        if not quiet:
            warnings.warn(msg, stacklevel=2)
    elif est.total > WARN_FRACTION * est.available and not quiet:
        warnings.warn(f"training {cfg.model_name} needs {est.describe()}, over half of the {gb(est.available)} of "
                      f"{est.where}; a smaller --set train.batch_size or --max-len at conversion lowers it",
                      stacklevel=2)
    return est
