"""Training checkpoints (resume) and export directories (config.json + model.safetensors).

Every file is written to a temporary sibling, flushed to disk and renamed into place, so an
interrupted write never leaves a truncated checkpoint under the real name. Training state goes
through Fabric.save / Fabric.load (`save_checkpoint`; the engine's `_restore`), wrapped for that
rename and for the fallback of a damaged `last.ckpt` to the previous one (`last.ckpt.prev`).

Export layout (what `Predictor.from_pretrained` reads)::

    export/config.json          model name + params, data spec (labels, modalities), threshold(s),
                                run config, mmerkit version
    export/model.safetensors    weights and buffers (no pickle)
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from mmerkit.errors import CheckpointError
from mmerkit.files import atomic_write_bytes, atomic_write_text, file_mode  # noqa: F401  (public here too)

EXPORT_FORMAT = "mmerkit-export/1"
CKPT_FORMAT = "mmerkit-ckpt/1"


def _keep_as_previous(path: Path) -> None:
    """Copy the current checkpoint to `<name>.prev` without ever removing `path`: a kill at any
    instant leaves a complete last.ckpt (old or new) and the previous one. A copy, not a hard
    link, so that damage to one file in place cannot reach the other."""
    prev = path.with_name(path.name + ".prev")
    tmp = path.with_name(f".{prev.name}.tmp")
    shutil.copyfile(path, tmp)
    os.replace(tmp, prev)


def _read_ckpt(path: Path) -> dict:
    try:
        # our own files: they hold RNG states and optimiser state, which need full unpickling
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # truncated zip, foreign pickle, ...
        raise CheckpointError(f"{path} is truncated or not an mmerkit checkpoint ({type(e).__name__}: "
                              f"{e})") from None
    if not isinstance(state, dict) or state.get("format") != CKPT_FORMAT:
        raise CheckpointError(f"{path} is not an mmerkit checkpoint (format "
                              f"{state.get('format') if isinstance(state, dict) else type(state).__name__!r})")
    return state


def load_training_state(path: Path, model_name: str | None = None, labels: list[str] | None = None) -> dict:
    """Read a checkpoint; if it is damaged, warn and fall back to `<name>.prev`."""
    return intact_checkpoint(path, model_name, labels)[1]


def intact_checkpoint(path: Path, model_name: str | None = None,
                      labels: list[str] | None = None) -> tuple[Path, dict]:
    """(the file read, its state): `path`, or `<name>.prev` with a warning when `path` is
    damaged; checked against `model_name` and `labels`."""
    path = Path(path)
    candidates = [p for p in (path, path.with_name(path.name + ".prev")) if p.exists()]
    if not candidates:
        raise CheckpointError(f"no checkpoint at {path}; nothing to resume (start the run without --resume)")
    errors = []
    for p in candidates:
        try:
            state = _read_ckpt(p)
        except CheckpointError as e:
            errors.append(str(e))
            continue
        if errors:
            warnings.warn(f"{errors[0]}; resuming from the previous checkpoint {p}", stacklevel=3)
        check_compatible(state, model_name, labels, p)
        return p, state
    raise CheckpointError("; ".join(errors))


def save_checkpoint(fabric, path: Path, state: dict[str, Any], keep_previous: bool = True) -> None:
    """Fabric.save (modules and optimisers become state dicts; call it on every rank) made
    atomic: Fabric writes a temporary sibling (its own write is a temp file + move, but without
    fsync), which rank 0 fsyncs and renames into place; the former file is kept as
    `<name>.prev` first. A kill at any instant leaves a complete `path` (old or new)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.fabric.tmp")
    if fabric.is_global_zero:
        path.parent.mkdir(parents=True, exist_ok=True)
        if keep_previous and path.exists():
            _keep_as_previous(path)
    fabric.save(tmp, {"format": CKPT_FORMAT, **state})  # ends with a barrier
    if fabric.is_global_zero:
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, file_mode())  # fsspec's temporary file is 0600; run files follow the umask
        os.replace(tmp, path)
    fabric.barrier()


def check_compatible(meta: dict, model_name: str | None, labels: list[str] | None, origin: Path) -> None:
    got_model, got_labels = meta.get("model_name"), meta.get("labels")
    if model_name is not None and got_model != model_name:
        raise CheckpointError(f"{origin} belongs to model {got_model!r}, not {model_name!r}; "
                              f"use -m {got_model} or point to a run of {model_name}")
    if labels is not None and got_labels is not None and list(got_labels) != list(labels):
        raise CheckpointError(f"{origin} was trained on labels {got_labels}, but the data has {labels}; "
                              "use a store with the same label set")


# ----------------------------------------------------------------------------- exports


def save_export(directory: Path, model: torch.nn.Module, meta: dict[str, Any]) -> None:
    """Write config.json + model.safetensors into `directory` (each file atomically)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    fd, tmp = tempfile.mkstemp(prefix=".model.", suffix=".safetensors.tmp", dir=directory)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={"format": EXPORT_FORMAT, "model_name": str(meta["model_name"])})
        os.chmod(tmp, file_mode())  # mkstemp made it 0600; exports follow the umask like any file
        os.replace(tmp, directory / "model.safetensors")
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    atomic_write_text(directory / "config.json", json.dumps({"format": EXPORT_FORMAT, **meta}, indent=2))


def read_export(directory: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    directory = Path(directory)
    cfg_path, weights = directory / "config.json", directory / "model.safetensors"
    for p in (cfg_path, weights):
        if not p.exists():
            raise CheckpointError(f"{p} is missing: {directory} is not an mmerkit export "
                                  "(a run's export/ directory, written at the end of `mmer train`)")
    try:
        meta = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{cfg_path} is not valid JSON ({e})") from None
    if meta.get("format") != EXPORT_FORMAT:
        raise CheckpointError(f"{cfg_path}: format {meta.get('format')!r}, expected {EXPORT_FORMAT!r}")
    try:
        state = load_file(weights)
    except Exception as e:
        raise CheckpointError(f"{weights} is truncated or not a safetensors file ({e})") from None
    return meta, state


def load_state_into(model: torch.nn.Module, state: dict[str, torch.Tensor], origin: Path) -> None:
    """`load_state_dict(strict=True)` with an error that names the file and the first mismatches."""
    adapt = getattr(model, "adapt_to_state", None)
    if adapt is not None:  # buffers sized by the fitted data (classic models) take the saved size
        adapt(state)
    check_state_fits(model, state, origin)
    model.load_state_dict(state, strict=True)


def check_state_fits(model: torch.nn.Module, state: dict[str, torch.Tensor], origin: Path) -> None:
    """A CheckpointError naming the file and the first mismatching keys / shapes, if `state`
    does not fit `model`."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shape = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or shape:
        parts = []
        if missing:
            parts.append(f"missing {missing[:3]}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:3]}")
        if shape:
            k = shape[0]
            parts.append(f"shape of {k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}")
        raise CheckpointError(f"{origin} does not fit this model ({'; '.join(parts)}); it was saved by "
                              "another model, config or label set: use the model and config of the run "
                              "that wrote it (its config.yaml), or start a new run")
