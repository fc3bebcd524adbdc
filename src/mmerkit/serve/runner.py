"""Running the server: the port bound before anything loads, uvicorn with the connection limits,
and a shutdown that drains requests and stops the extraction workers.

uvicorn's own settings do what they can: `timeout_keep_alive` closes idle kept-alive connections,
`h11_max_incomplete_event_size` caps a request's head, `timeout_graceful_shutdown` bounds the
drain. What uvicorn lacks is added here in a subclass of its h11 protocol: a deadline for a
request's head (a connection that never finishes its headers is closed, quietly) and a cap on
open connections where a new connection pushes out the oldest one not in a request (still
sending its head, or idle between requests), so half-open connections cannot crowd out real
clients (or /healthz).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import sys
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from mmerkit.errors import ConfigError
from mmerkit.serve.settings import ServeSettings

log = logging.getLogger("mmerkit.serve")


def bind_socket(host: str, port: int) -> socket.socket:
    """The listening socket, bound before the model loads: a port in use is one clear error."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: restarts reuse TIME_WAIT ports
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise ConfigError(f"--port {port}: the port is in use on {host} (another server?); "
                              "stop it or choose another --port") from None
        raise ConfigError(f"--host {host} --port {port}: cannot listen there ({e.strerror}); "
                          "give an address of this machine (127.0.0.1 for this machine only)") from None
    sock.set_inheritable(True)
    return sock


def guarded_protocol(settings: ServeSettings) -> type[H11Protocol]:
    """uvicorn's h11 protocol with a deadline for the request head and a connection cap."""
    head_timeout, max_connections = settings.header_timeout_s, settings.max_connections

    class GuardedH11Protocol(H11Protocol):
        _head_timer: asyncio.TimerHandle | None = None
        _idle_since = 0.0

        def connection_made(self, transport) -> None:  # type: ignore[override]
            if len(self.connections) >= max_connections and not _evict_oldest_idle(self.connections):
                transport.abort()  # every connection is busy with a request: no room
                return
            super().connection_made(transport)
            self._idle_since = self.loop.time()
            self._start_head_timer()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self._start_head_timer()  # bytes of a request head: it must be complete in time
            else:
                self._stop_head_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            self._stop_head_timer()
            super().connection_lost(exc)

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._stop_head_timer()  # idle between requests: uvicorn's keep-alive timeout applies
            self._idle_since = self.loop.time()

        def evictable(self) -> bool:
            """Not in a request: still sending a head, or idle between requests."""
            return self.conn.their_state is h11.IDLE and not self.transport.is_closing()

        def _start_head_timer(self) -> None:
            if self._head_timer is None:
                self._head_timer = self.loop.call_later(head_timeout, self._head_too_slow)

        def _stop_head_timer(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_too_slow(self) -> None:
            self._head_timer = None
            self.transport.abort()  # no log line: a flood of these must not flood the log

    return GuardedH11Protocol


def _evict_oldest_idle(connections: set) -> bool:
    idle = [c for c in connections if getattr(c, "evictable", lambda: False)()]
    if not idle:
        return False
    oldest = min(idle, key=lambda c: c._idle_since)
    oldest._stop_head_timer()
    oldest.transport.abort()
    oldest.connections.discard(oldest)
    return True


class DrainingServer(uvicorn.Server):
    """On SIGTERM or Ctrl+C: stop listening, let requests in flight finish within the grace
    period, then stop the extraction workers so clips still in them are answered (503, JSON)
    before uvicorn would cancel them with a plain-text 500; the lifespan then joins the workers."""

    def __init__(self, config: uvicorn.Config, state: Any):
        super().__init__(config)
        self.state = state

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.state.draining = True
        for server in self.servers:  # stop listening (uvicorn's shutdown does it again, harmlessly)
            server.close()
        grace = max(0.0, float(self.config.timeout_graceful_shutdown or 0) - 1.0)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while self.server_state.tasks and loop.time() < deadline and not self.force_exit:
            await asyncio.sleep(0.05)
        if self.server_state.tasks:
            self.state.media.close()  # their clips fail now: answered 503 "shutting down"
        await super().shutdown(sockets)


def uvicorn_config(app: Any, settings: ServeSettings, log_level: str = "info") -> uvicorn.Config:
    return uvicorn.Config(app, log_level=log_level, access_log=False, server_header=False,
                          http=guarded_protocol(settings), timeout_keep_alive=settings.keep_alive_s,
                          h11_max_incomplete_event_size=settings.max_header_kb * 1024,
                          timeout_graceful_shutdown=settings.shutdown_grace_s)


def check_serving_settings(settings: ServeSettings) -> None:
    """What `mmer serve` refuses that the app itself (and its tests) may use."""
    import os

    from mmerkit.serve.settings import TOKEN_ENV

    if settings.token is not None and not settings.token.strip():
        raise ConfigError("--token is empty (an unset shell variable?); give the token, or leave --token out "
                          "to serve without one")
    if settings.token is None and TOKEN_ENV in os.environ and not os.environ[TOKEN_ENV].strip():
        raise ConfigError(f"{TOKEN_ENV} is set but empty (an unset shell variable?); give the token, or unset "
                          f"{TOKEN_ENV} to serve without one")
    if settings.media_workers < 1:
        raise ConfigError(f"--workers {settings.media_workers}: the server needs at least 1 extraction process")


def announce(host: str, port: int, model: str, token_on: bool) -> None:
    url = f"http://{'[' + host + ']' if ':' in host else host}:{port}"
    print(f"mmerkit: serving {model} on {url} (page {url}/, API docs {url}/docs, token "
          f"{'on' if token_on else 'off'}; Ctrl+C stops)", file=sys.stderr, flush=True)
