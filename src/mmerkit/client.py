"""A small HTTP client for `mmer serve`, the remote twin of `Predictor` (standard library only).

Example:
    >>> from mmerkit.client import Client
    >>> # one sample: predict_one({m: (T, D) or None}); many: predict({m: (N, T, D) or None})
    >>> c = Client("http://127.0.0.1:8000", token="s3cret")                 # doctest: +SKIP
    >>> c.model()["labels"]                                                  # doctest: +SKIP
    ['happy', 'sad', 'anger', 'surprise', 'disgust', 'fear']
    >>> c.predict_one({"text": x_text, "audio": None})["labels"]    # doctest: +SKIP
    ['happy']
    >>> len(c.predict({"text": xs_text, "audio": xs_audio}))       # doctest: +SKIP
    16
    >>> c.predict("clip.mp4", transcript="what a day")[0]["probabilities"]   # doctest: +SKIP
"""

from __future__ import annotations

import io
import json
import os
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib import error, request

import numpy as np

from mmerkit.errors import DataError, MMERError

__all__ = ["Client", "ServerError"]


class ServerError(MMERError):
    """The server refused or failed a request: HTTP `status`, the `field` at fault and the `fix`."""

    def __init__(self, status: int, message: str, field: str | None = None, fix: str = ""):
        where = f"{field}: " if field else ""
        super().__init__(f"server answered {status}: {where}{message}" + (f" ({fix})" if fix else ""))
        self.status, self.field, self.fix = status, field, fix


class Client:
    """Talks to one `mmer serve` server. `token` defaults to $MMERKIT_SERVE_TOKEN."""

    def __init__(self, url: str = "http://127.0.0.1:8000", token: str | None = None, timeout: float = 120.0):
        self.url = url.rstrip("/")
        self.token = token if token is not None else os.environ.get("MMERKIT_SERVE_TOKEN") or None
        self.timeout = timeout

    # -- endpoints
    def health(self) -> bool:
        """True when the server answers /healthz."""
        try:
            return self._call("GET", "/healthz").get("status") == "ok"
        except (ServerError, OSError):
            return False

    def model(self) -> dict[str, Any]:
        """The export's card: model, labels, thresholds, modalities, extractors, metrics, limits."""
        return self._call("GET", "/v1/model")

    def predict(self, inputs: Mapping[str, np.ndarray] | Sequence[Mapping[str, Any]] | str | Path,
                transcript: str | None = None) -> list[dict[str, Any]]:
        """Predictions, one dict per sample (labels, probabilities, modality_label_scores, ...).

        `inputs` is what `Predictor.predict` takes as arrays (`{modality: (N, T, D) or None,
        "<modality>_len": (N,)}`, the batch axis first; a 2-D array is refused as ambiguous), a
        list of samples (`{modality: (T, D) array or None}`, with an optional "id"), the path of
        an `.npz` of such arrays, or the path of a clip (video or audio, with an optional
        `transcript`). One sample: `predict_one`."""
        if isinstance(inputs, (str, Path)):
            return self._predict_file(Path(inputs), transcript)
        if transcript is not None:
            raise ValueError("a transcript goes with a clip: pass the clip's path as inputs")
        samples = arrays_to_samples(inputs) if isinstance(inputs, Mapping) else [_sample_json(s) for s in inputs]
        return self._call("POST", "/v1/predict", json.dumps({"samples": samples}).encode(),
                          "application/json")["predictions"]

    def predict_one(self, sample: Mapping[str, Any]) -> dict[str, Any]:
        """The prediction for ONE sample: {modality: (T, D) array, (D,) vector or None; "id": optional}."""
        from mmerkit.arrays import sample_arrays

        arrays = sample_arrays(sample)
        if "id" in sample:
            arrays["ids"] = [str(sample["id"])]
        return self.predict(arrays)[0]

    def predict_media(self, path: str | Path, transcript: str | None = None) -> dict[str, Any]:
        """The prediction for one clip."""
        return self._predict_file(Path(path), transcript)[0]

    # -- transport
    def _predict_file(self, path: Path, transcript: str | None) -> list[dict[str, Any]]:
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist or is not a file")
        fields = {"transcript": transcript} if transcript else {}
        body, ctype = _multipart(path, fields)
        return self._call("POST", "/v1/predict", body, ctype)["predictions"]

    def _call(self, method: str, path: str, body: bytes | None = None, ctype: str | None = None) -> dict[str, Any]:
        req = request.Request(self.url + path, data=body, method=method)
        if ctype:
            req.add_header("Content-Type", ctype)
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with request.urlopen(req, timeout=self.timeout) as res:
                return json.loads(res.read())
        except error.HTTPError as e:
            raise _server_error(e) from None


def _server_error(e: error.HTTPError) -> ServerError:
    try:
        err = json.loads(e.read()).get("error", {})
    except (ValueError, AttributeError, OSError):
        err = {}
    return ServerError(e.code, err.get("message") or str(e.reason), err.get("field"), err.get("fix") or "")


def arrays_to_samples(arrays: Mapping[str, Any]) -> list[dict[str, Any]]:
    """`{m: (N, T, D) or None, m_len: (N,), ids?: (N,)}` -> JSON samples (padding cut off;
    mmerkit.arrays.batch_arrays checks the shapes)."""
    from mmerkit.arrays import batch_arrays

    n, data, lens = batch_arrays(arrays)
    ids = [str(i) for i in arrays["ids"]] if "ids" in arrays else [str(i) for i in range(n)]
    if len(ids) != n:
        raise DataError(f"ids holds {len(ids)} names for {n} samples")
    samples = []
    for i in range(n):
        s: dict[str, Any] = {"id": ids[i]}
        for m, x in data.items():
            t = int(lens[m][i])
            s[m] = x[i, :t].tolist() if x is not None and t > 0 else None
        samples.append(s)
    return samples


def _sample_json(sample: Mapping[str, Any]) -> dict[str, Any]:
    return {k: (v if v is None or isinstance(v, (str, list)) else np.asarray(v, np.float32).tolist())
            for k, v in sample.items()}


def _multipart(path: Path, fields: Mapping[str, str]) -> tuple[bytes, str]:
    """A multipart/form-data body: the text fields, then the file as `file`."""
    boundary = uuid.uuid4().hex
    out = io.BytesIO()
    for name, value in fields.items():
        out.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode())
        out.write(value.encode("utf-8") + b"\r\n")
    safe_name = path.name.replace('"', "_").replace("\r", "_").replace("\n", "_")
    out.write(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{safe_name}"\r\n'
              "Content-Type: application/octet-stream\r\n\r\n".encode())
    out.write(path.read_bytes())
    out.write(f"\r\n--{boundary}--\r\n".encode())
    return out.getvalue(), f"multipart/form-data; boundary={boundary}"
