"""Server settings: every limit that keeps `mmer serve` safe by default, in one pydantic model."""

from __future__ import annotations

import os
from typing import Any

from pydantic import BaseModel, Field

TOKEN_ENV = "MMERKIT_SERVE_TOKEN"


class ServeSettings(BaseModel):
    """Limits and knobs of the HTTP server (`mmer serve --help` shows each as an option).

    Example:
        >>> ServeSettings(max_batch=16).host
        '127.0.0.1'
    """

    host: str = "127.0.0.1"  # loopback unless the operator says otherwise
    port: int = Field(8000, ge=0, le=65535)
    token: str | None = None  # bearer token; None: read MMERKIT_SERVE_TOKEN, else no auth
    max_upload_mb: float = Field(50.0, gt=0)  # request body limit -> 413
    max_media_seconds: float = Field(120.0, gt=0)  # longer clips -> 422
    max_timeline_seconds: float = Field(3600.0, gt=0)  # longer recordings on /v1/timeline -> 422
    max_samples: int = Field(64, ge=1)  # samples in one feature request
    max_steps: int = Field(1000, ge=1)  # time steps per modality and sample (also the model's own cap)
    max_transcript_chars: int = Field(20_000, ge=1)
    batching: bool = True  # False: every request runs alone (for comparison)
    max_batch: int = Field(32, ge=1)  # samples in one model call
    batch_window_ms: float = Field(5.0, ge=0)  # wait this long for more requests to join a batch
    max_queue: int = Field(256, ge=1)  # requests waiting for the model; beyond -> 503
    media_workers: int = Field(1, ge=0)  # extraction processes (0: a thread, for tests only)
    max_media_queue: int = Field(16, ge=1)  # media requests waiting for a worker; beyond -> 503
    torch_threads: int = Field(1, ge=1)
    device: str = "cpu"
    examples: str | None = None  # a FeatureStore whose test split the page offers as samples
    max_examples: int = Field(20, ge=0)
    # connections and request bodies (docs/serve.md, "Limits")
    max_connections: int = Field(100, ge=2)  # open connections; a new one pushes out the oldest not in a request
    header_timeout_s: float = Field(10.0, gt=0)  # a request's head must arrive within this, else the connection closes
    body_timeout_s: float = Field(30.0, gt=0)  # longest wait for the next piece of a request body -> 408
    keep_alive_s: int = Field(5, ge=1)  # idle kept-alive connections close after this (uvicorn timeout_keep_alive)
    max_header_kb: int = Field(16, ge=1)  # a request head beyond this -> 400 (uvicorn h11_max_incomplete_event_size)
    max_uploads: int = Field(8, ge=1)  # file/.npz bodies read at once; beyond -> 503 before reading
    max_json_mb: float = Field(16.0, gt=0)  # JSON feature bodies (parsed whole) -> 413 beyond
    shutdown_grace_s: int = Field(5, ge=1)  # SIGTERM: requests in flight get this long, then 503
    # browsers: Host names and other pages' origins the server answers (docs/serve.md, "Browsers")
    allowed_hosts: list[str] = Field(default_factory=list)  # beyond this machine's names and IP addresses; "*": any
    allowed_origins: list[str] = Field(default_factory=list)  # e.g. "http://lab.example:3000"; "*": any

    def resolved_token(self) -> str | None:
        """The token from the settings, else from the environment; empty means no token."""
        token = self.token if self.token is not None else os.environ.get(TOKEN_ENV)
        return token or None


def make_settings(**values: Any) -> ServeSettings:
    """ServeSettings from keyword values (None: the default); a bad value is a ConfigError
    naming the option and what it accepts."""
    from pydantic import ValidationError

    from mmerkit.errors import ConfigError

    unknown = sorted(k for k in values if k not in ServeSettings.model_fields)
    if unknown:
        from mmerkit.registry import did_you_mean

        raise ConfigError(f"serve option {unknown[0]!r} does not exist"
                          f"{did_you_mean(unknown[0], list(ServeSettings.model_fields))}")
    try:
        return ServeSettings(**{k: v for k, v in values.items() if v is not None})
    except ValidationError as e:
        err = e.errors()[0]
        key = str(err["loc"][0]).replace("_", "-") if err["loc"] else "option"
        raise ConfigError(f"--{key} {err.get('input')!r}: {err['msg']}") from None
