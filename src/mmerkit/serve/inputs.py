"""Feature requests -> validated samples: JSON bodies and `.npz` uploads.

A sample is `{modality: float32 (T, D)}` with T = 0 for a missing modality, plus an id. Every
check names the field (`samples[2].audio`, `npz:text_len`) and the fix, so nothing malformed
reaches the model, and every problem is a 4xx `RequestError`, never a crash.
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mmerkit.serve.errors import RequestError

# keys of the store's / custom .npz layout that prediction ignores (labels are not inputs)
NPZ_IGNORED = {"labels", "label_names", "split"}
MAX_ID_CHARS = 200  # sample ids, in JSON and .npz alike


@dataclass
class Sample:
    """One sample ready for batching: per-modality (T, D) float32 arrays (T = 0: missing)."""

    id: str
    features: dict[str, np.ndarray]
    source: str = "features"
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class InputSpec:
    """What the served model accepts: modality dims and the most steps it takes per modality."""

    modalities: dict[str, int]
    max_steps: dict[str, int]
    max_samples: int

    def describe(self) -> str:
        return ", ".join(f"{m}: (T<={self.max_steps[m]}, {d})" for m, d in self.modalities.items())


def parse_json_body(body: bytes, spec: InputSpec) -> list[Sample]:
    """`{"samples": [{"id"?: str, "<modality>": [[...], ...] | [...] | null}, ...]}` -> samples."""
    try:
        doc = json.loads(body)
    except RecursionError:
        raise RequestError(422, "body", "is nested too deeply", 'send {"samples": [{"<modality>": [[...], ...]}]}') from None
    except (ValueError, UnicodeDecodeError) as e:  # ValueError: also integers of over 4300 digits
        raise RequestError(422, "body", f"is not valid JSON ({e})",
                           'send {"samples": [{"<modality>": [[...], ...]}]} with Content-Type application/json') from None
    if not isinstance(doc, dict) or "samples" not in doc:
        raise RequestError(422, "samples", "is missing",
                           'the body must be an object {"samples": [...]}, one entry per sample')
    extra = sorted(k for k in doc if k != "samples")
    if extra:
        raise RequestError(422, extra[0], "is not a known field", 'the body holds only "samples"')
    samples = doc["samples"]
    if not isinstance(samples, list) or not samples:
        raise RequestError(422, "samples", "must be a non-empty list", "send at least one sample")
    if len(samples) > spec.max_samples:
        raise RequestError(413, "samples", f"has {len(samples)} entries; this server takes at most "
                           f"{spec.max_samples} per request", "split the samples over several requests")
    return [_json_sample(i, s, spec) for i, s in enumerate(samples)]


def _json_sample(i: int, raw: Any, spec: InputSpec) -> Sample:
    where = f"samples[{i}]"
    if not isinstance(raw, dict):
        raise RequestError(422, where, f"is a {type(raw).__name__}, not an object",
                           'each sample is {"<modality>": [[...], ...]}')
    sid = raw.get("id", str(i))
    if not isinstance(sid, (str, int)) or isinstance(sid, bool) or len(str(sid)) > MAX_ID_CHARS:
        raise RequestError(422, f"{where}.id", f"must be a string of at most {MAX_ID_CHARS} characters",
                           'give each sample a short text id, e.g. "clip-1"')
    unknown = sorted(k for k in raw if k != "id" and k not in spec.modalities)
    if unknown:
        raise RequestError(422, f"{where}.{unknown[0]}", "is not a modality of this model",
                           f"use the model's modalities {list(spec.modalities)} (and an optional id)")
    feats = {m: _to_steps(raw.get(m), f"{where}.{m}", m, spec) for m in spec.modalities}
    return check_sample(Sample(str(sid), feats), where, spec)


def _to_steps(value: Any, where: str, m: str, spec: InputSpec) -> np.ndarray:
    dim = spec.modalities[m]
    if value is None or (isinstance(value, list) and not value):
        return np.zeros((0, dim), np.float32)  # missing modality
    try:
        x = np.asarray(value, dtype=np.float32)
    except OverflowError:  # an integer literal beyond any float, e.g. 10**400
        raise RequestError(422, where, "holds a number too large for float32",
                           "send feature values as they came from the extractor") from None
    except (ValueError, TypeError):
        raise RequestError(422, where, "is not a rectangular array of numbers",
                           f"send a list of T steps, each a list of {dim} numbers") from None
    return as_steps(x, where, m, spec)


def as_steps(x: np.ndarray, where: str, m: str, spec: InputSpec) -> np.ndarray:
    """(T, D) or (D,) -> (T, D) float32, checked against the model's dim and step cap."""
    dim = spec.modalities[m]
    x = x[None, :] if x.ndim == 1 else x
    if x.ndim != 2 or x.shape[1] != dim:
        raise RequestError(422, where, f"has shape {tuple(x.shape)}; the model expects (T, {dim})",
                           f"send T steps of {dim} values each for {m!r} (null or [] if missing)")
    if x.shape[0] > spec.max_steps[m]:
        raise RequestError(422, where, f"has {x.shape[0]} steps; this model accepts at most {spec.max_steps[m]}",
                           "truncate or pool the sequence to fewer steps")
    if not np.isfinite(x).all():
        raise RequestError(422, where, "contains NaN or infinity", "replace them (e.g. by 0) before sending")
    return np.ascontiguousarray(x, dtype=np.float32)


def check_sample(sample: Sample, where: str, spec: InputSpec) -> Sample:
    if all(x.shape[0] == 0 for x in sample.features.values()):
        raise RequestError(422, where, "has no features in any modality",
                           f"give at least one of {list(spec.modalities)}")
    return sample


def parse_npz(data: bytes, spec: InputSpec, max_unpacked: int) -> list[Sample]:
    """An `.npz` in the store's split layout: `<modality>` (N, T, D) or (N, D), optional
    `<modality>_len` (N,) and `ids` (N,); `labels`, `label_names` and `split` are ignored."""
    arrays = _read_npz(data, max_unpacked)
    unknown = sorted(k for k in arrays if k not in spec.modalities and k not in NPZ_IGNORED and k != "ids"
                     and not (k.endswith("_len") and k[:-4] in spec.modalities))
    if unknown:
        raise RequestError(422, f"npz:{unknown[0]}", "is not a modality of this model",
                           f"name arrays after the model's modalities {list(spec.modalities)} "
                           "(with optional <modality>_len and ids)")
    present = [m for m in spec.modalities if m in arrays]
    if not present:
        raise RequestError(422, "npz", f"holds none of the model's modalities {list(spec.modalities)}",
                           "save one array per modality, named by it")
    n = _npz_rows(arrays, present)
    if n > spec.max_samples:
        raise RequestError(413, "npz", f"holds {n} samples; this server takes at most {spec.max_samples} per request",
                           "split the samples over several requests")
    ids = _npz_ids(arrays, n)
    feats = {m: _npz_modality(arrays, m, n, spec) for m in spec.modalities}
    samples = [Sample(ids[i], {m: feats[m][i] for m in spec.modalities}) for i in range(n)]
    return [check_sample(s, f"npz sample {i}", spec) for i, s in enumerate(samples)]


def _read_npz(data: bytes, max_unpacked: int) -> dict[str, np.ndarray]:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            members = zf.infolist()
            _check_members(members)  # from the directory alone, before anything is unpacked
            unpacked = sum(info.file_size for info in members)
        if unpacked > max_unpacked:  # a small compressed upload must not unpack into gigabytes
            raise RequestError(413, "npz", f"unpacks to {unpacked} bytes, more than {max_unpacked}",
                               "send fewer or shorter samples per request")
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except RequestError:
        raise
    except Exception as e:  # not a zip, truncated, object arrays (pickles are refused), ...
        raise RequestError(422, "npz", f"cannot be read as a NumPy .npz ({type(e).__name__}: {e})",
                           "write it with numpy.savez / savez_compressed, without object arrays") from None


MAX_NPZ_MEMBERS = 64  # modalities, their lengths, ids and the ignored keys fit many times over


def _check_members(members: list[zipfile.ZipInfo]) -> None:
    if len(members) > MAX_NPZ_MEMBERS:
        raise RequestError(422, "npz", f"holds {len(members)} arrays; a feature file holds a few",
                           "save one array per modality (plus <modality>_len and ids)")
    for info in members:
        if not info.filename.endswith(".npy"):
            raise RequestError(422, f"npz:{info.filename[:80]}", "is not a .npy array",
                               "write the file with numpy.savez / savez_compressed only")


def _npz_rows(arrays: dict[str, np.ndarray], present: list[str]) -> int:
    n = None
    for m in present:
        x = arrays[m]
        if x.ndim not in (2, 3):
            raise RequestError(422, f"npz:{m}", f"has shape {x.shape}; expected (N, T, D) or (N, D)",
                               "save one row per sample: (N, T, D) sequences or (N, D) vectors")
        if n is not None and x.shape[0] != n:
            raise RequestError(422, f"npz:{m}", f"has {x.shape[0]} samples, other modalities have {n}",
                               "save one row per sample in every modality")
        n = x.shape[0]
    if not n:
        raise RequestError(422, "npz", "holds no samples", "save at least one row")
    return n


def _npz_ids(arrays: dict[str, np.ndarray], n: int) -> list[str]:
    if "ids" not in arrays:
        return [str(i) for i in range(n)]
    ids = arrays["ids"]
    if ids.shape != (n,) or ids.dtype.kind not in "UiS":
        raise RequestError(422, "npz:ids", f"has shape {ids.shape} and dtype {ids.dtype}; expected ({n},) strings",
                           "save ids as numpy.array([...], dtype=str)")
    out = [x.decode("utf-8", "replace") if isinstance(x, bytes) else str(x) for x in ids.tolist()]
    if any(len(x) > MAX_ID_CHARS for x in out):
        raise RequestError(422, "npz:ids", f"holds an id longer than {MAX_ID_CHARS} characters",
                           "give each sample a short text id, e.g. 'clip-1'")
    return out


def _npz_modality(arrays: dict[str, np.ndarray], m: str, n: int, spec: InputSpec) -> list[np.ndarray]:
    dim = spec.modalities[m]
    if m not in arrays:
        return [np.zeros((0, dim), np.float32)] * n
    x = arrays[m]
    if x.dtype.kind not in "fiub":
        raise RequestError(422, f"npz:{m}", f"has dtype {x.dtype}; features must be numbers",
                           "save float arrays (numpy float32)")
    x = x[:, None, :] if x.ndim == 2 else x
    lens = arrays.get(f"{m}_len")
    if lens is None:
        lens = np.full(n, x.shape[1])
    elif lens.shape != (n,) or lens.dtype.kind not in "iu" or (lens < 0).any() or (lens > x.shape[1]).any():
        raise RequestError(422, f"npz:{m}_len", f"must be ({n},) integers in [0, {x.shape[1]}]",
                           "give each sample's valid step count (0 = missing)")
    return [as_steps(x[i, : int(lens[i])].astype(np.float32), f"npz:{m}[{i}]", m, spec) for i in range(n)]
