"""`mmer serve`: an exported model behind an HTTP API (FastAPI + uvicorn) and a page to try it.

Example:
    >>> from mmerkit.serve import ServeSettings, create_app, serve
    >>> app = create_app("runs/carat_synthetic_seed1/export")        # doctest: +SKIP
    >>> serve("runs/carat_synthetic_seed1/export", ServeSettings(port=8000, token="s3cret"))  # doctest: +SKIP
"""

from __future__ import annotations

import ipaddress
import socket
import sys
from pathlib import Path
from typing import Any

from mmerkit.errors import ConfigError
from mmerkit.serve.settings import TOKEN_ENV, ServeSettings

__all__ = ["ServeSettings", "TOKEN_ENV", "create_app", "serve"]


def _require_server_deps() -> None:
    try:
        import fastapi  # noqa: F401
        import python_multipart  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise ConfigError(f"serving needs the 'serve' extra ({e.name} is missing): "
                          "pip install 'mmerkit[serve]'") from None


def create_app(export_dir: str | Path, settings: ServeSettings | None = None, **kw: Any):
    """The FastAPI app for one export (see `mmerkit.serve.app.create_app`)."""
    _require_server_deps()
    from mmerkit.serve.app import create_app as _create

    return _create(export_dir, settings, **kw)


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def serve(export_dir: str | Path, settings: ServeSettings | None = None, *,
          sock: socket.socket | None = None, log_level: str = "info", **kw: Any) -> None:
    """Run the server until SIGTERM or Ctrl+C (uvicorn, one process; the model is batched inside
    it). The port is bound first, so a port in use fails before the model loads."""
    settings = settings or ServeSettings()
    _require_server_deps()
    from mmerkit.serve.runner import (
        DrainingServer,
        announce,
        bind_socket,
        check_serving_settings,
        uvicorn_config,
    )

    check_serving_settings(settings)
    if not is_loopback(settings.host) and not settings.resolved_token():
        print(f"warning: serving on {settings.host} without a token: anyone who can reach this address can "
              f"use the model (set --token or {TOKEN_ENV})", file=sys.stderr)
    sock = sock or bind_socket(settings.host, settings.port)
    try:
        app = create_app(export_dir, settings, **kw)
    except BaseException:
        sock.close()
        raise
    host, port = sock.getsockname()[:2]
    announce(host, port, app.state.serve.card["model"]["name"], bool(settings.resolved_token()))
    server = DrainingServer(uvicorn_config(app, settings, log_level), app.state.serve)
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn re-raises Ctrl+C once it has shut down cleanly
        print("mmerkit: stopped", file=sys.stderr)
