"""The FastAPI app: routes, the bearer-token and body-size guard, and error bodies.

Request flow: guard (token, size) -> parse and validate (JSON, .npz or multipart media) ->
media only: probe and extract in a worker process -> batching queue -> one model call ->
`{"predictions": [...]}`. Every error leaves as `{"error": {status, field, message, fix}}`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import ipaddress
import logging
import socket
from concurrent.futures.process import BrokenProcessPool
from contextlib import asynccontextmanager, contextmanager
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from mmerkit.errors import ConfigError
from mmerkit.serve.batching import MicroBatcher
from mmerkit.serve.card import media_config, model_card
from mmerkit.serve.errors import RequestError, error_body
from mmerkit.serve.inputs import Sample, check_sample, parse_json_body, parse_npz
from mmerkit.serve.media import (
    Featurizer,
    MediaWorkers,
    Upload,
    UploadDir,
    Worker,
    default_featurizer,
    describe_unknown,
    read_multipart,
    sniff,
)
from mmerkit.serve.model import ServedModel
from mmerkit.serve.queueing import _submit, media_steps, require_clip_extractors
from mmerkit.serve.schemas import ERRORS, PredictResponse
from mmerkit.serve.settings import ServeSettings
from mmerkit.serve.timeline import timeline_response

log = logging.getLogger("mmerkit.serve")

PARSE_INLINE_BYTES = 256 * 1024  # bodies this small parse in well under a millisecond per kB
OPEN_PATHS = {"/healthz"}  # the only path without the token: load balancers probe it
BROWSER_PATHS = {"/", "/docs", "/openapi.json", "/docs/oauth2-redirect"}

PREDICT_BODY = {
    "required": True,
    "content": {
        "application/json": {"schema": {"type": "object", "properties": {"samples": {
            "type": "array", "items": {"type": "object", "additionalProperties": {
                "type": "array", "items": {"type": "array", "items": {"type": "number"}}},
                "description": "modality -> T x D steps (null or [] if missing); optional id"}}}},
            "example": {"samples": [{"id": "clip1", "text": [[0.1, 0.2]], "audio": None}]}},
        "multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {
            "file": {"type": "string", "format": "binary", "description": "video/audio clip, or an .npz of features"},
            "transcript": {"type": "string", "description": "what is said (else speech recognition)"},
            "id": {"type": "string"}}}},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary",
                                                "description": ".npz: <modality> (N,T,D), <modality>_len (N,), ids (N,)"}},
    },
}


TIMELINE_BODY = {
    "required": True,
    "content": {"multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {
        "file": {"type": "string", "format": "binary", "description": "a recording (video or audio)"},
        "window": {"type": "number", "description": "window length in seconds (4)"},
        "hop": {"type": "number", "description": "seconds between window starts (window / 2)"}}}}},
}


def create_app(export_dir: str | Path, settings: ServeSettings | None = None, *,
               featurizer: Featurizer | None = None, model: ServedModel | None = None) -> FastAPI:
    """The HTTP app serving one export. `featurizer(path, transcript, extractor_config)` turns a
    clip into `{modality: (T, D)}` (default: the export's own extractors, in worker processes).

    Example:
        >>> app = create_app("runs/carat_synthetic_seed1/export", ServeSettings(token="s3cret"))  # doctest: +SKIP
        >>> import uvicorn; uvicorn.run(app, host="127.0.0.1", port=8000)                         # doctest: +SKIP
    """
    settings = settings or ServeSettings()
    import torch

    torch.set_num_threads(settings.torch_threads)
    served = model or ServedModel.load(export_dir, settings.device, settings.max_steps, settings.max_samples)
    extractors = media_config(served.predictor.meta)
    state = _State(settings, served, extractors, featurizer or default_featurizer)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        state.media.warm_up()
        yield
        await state.close()

    offline_docs = _swagger_assets()
    app = FastAPI(title="mmerkit", version=str(served.predictor.meta.get("mmerkit_version", "")),
                  docs_url=None if offline_docs else "/docs", redoc_url=None,
                  description=f"Multi-label emotion recognition with the `{served.predictor.meta.get('model_name')}` "
                              "model. Send features (JSON or .npz) or a clip to POST /v1/predict.",
                  lifespan=lifespan)
    app.state.serve = state
    _add_error_handlers(app)
    _add_routes(app, state)
    if offline_docs:
        _add_offline_docs(app, offline_docs)
    app.add_middleware(GuardMiddleware, settings=settings, state=state)
    return app


class _State:
    """Everything the routes share: settings, model, batcher, upload directory, workers."""

    def __init__(self, settings: ServeSettings, served: ServedModel, extractors: dict | None, featurizer: Featurizer):
        self.settings, self.model, self.extractors = settings, served, extractors
        self.batcher = MicroBatcher(served.predict, max_batch=settings.max_batch if settings.batching else 1,
                                    window_s=settings.batch_window_ms / 1000.0, max_queue=settings.max_queue,
                                    enabled=settings.batching)
        self.media = MediaWorkers(featurizer, extractors, settings.media_workers, settings.max_media_queue,
                                  settings.max_media_seconds)
        self._uploads: UploadDir | None = None
        self.uploads_held = 0  # file and .npz bodies being received or waiting for extraction
        self.draining = False  # set on SIGTERM / Ctrl+C: new requests get 503
        self._parser: Worker | None = None
        self.examples = load_examples(settings.examples, served, settings.max_examples)
        self.card = model_card(served.predictor.meta, served.export_dir, served.input_spec, served.thresholds,
                               limits=self.limits())

    @property
    def uploads(self) -> UploadDir:
        if self._uploads is None:
            self._uploads = UploadDir()
        return self._uploads

    def limits(self) -> dict[str, Any]:
        s = self.settings
        return {"max_upload_mb": s.max_upload_mb, "max_media_seconds": s.max_media_seconds,
                "max_timeline_seconds": s.max_timeline_seconds,
                "max_samples_per_request": s.max_samples, "max_transcript_chars": s.max_transcript_chars,
                "batching": s.batching, "max_batch": s.max_batch, "batch_window_ms": s.batch_window_ms,
                "max_queue": s.max_queue, "batches_mix_lengths": self.model.padding_invariant}

    @contextmanager
    def upload_slot(self):
        """At most `max_uploads` bodies on disk or in memory at once; beyond: 503 before reading."""
        if self.uploads_held >= self.settings.max_uploads:
            raise RequestError(503, "body", f"{self.uploads_held} uploads are being received or processed already",
                               "retry in a few seconds", headers={"Retry-After": "2"})
        self.uploads_held += 1
        try:
            yield
        finally:
            self.uploads_held -= 1

    async def parse(self, parse, data: bytes, *args: Any) -> list[Sample]:
        """Parse a request body: large ones in a parser process, since JSON and zip parsing hold
        the GIL (a thread would stall the event loop, /healthz included)."""
        if len(data) < PARSE_INLINE_BYTES:
            return parse(data, *args)
        if self._parser is None:
            self._parser = Worker(in_thread=False, warm=None)
        try:
            return await asyncio.wrap_future(self._parser.submit(parse, data, *args))
        except BrokenProcessPool:
            self._parser.stop()
            self._parser = None
            raise RequestError(422, "body", "made the request parser fail", "check the body's format") from None

    async def close(self) -> None:
        await self.batcher.close()
        self.media.close()
        if self._parser is not None:
            self._parser.stop()
            self._parser = None
        if self._uploads is not None:
            self._uploads.cleanup()
            self._uploads = None


# ----------------------------------------------------------------------------- routes


def _add_routes(app: FastAPI, state: _State) -> None:
    @app.get("/healthz", tags=["service"])
    async def healthz() -> dict[str, str]:
        """Liveness: 200 while the server runs (no token needed)."""
        return {"status": "ok"}

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(page_html(), headers={"Cache-Control": "no-store"})

    @app.get("/v1/model", tags=["model"])
    async def model_info() -> dict[str, Any]:
        """The export's card: model, labels, thresholds, modalities, extractors, data, metrics."""
        return state.card

    @app.get("/v1/stats", tags=["service"])
    async def stats() -> dict[str, Any]:
        """Requests, model calls and batch sizes since start; clips in extraction."""
        return {**state.batcher.stats.as_dict(), "media_in_flight": state.media.in_flight}

    @app.get("/v1/examples", tags=["model"])
    async def examples() -> dict[str, Any]:
        """Samples the server offers to try (from `--examples STORE`), by index."""
        return {"examples": [{"index": i, "id": s.id} for i, s in enumerate(state.examples)]}

    @app.get("/v1/examples/{index}", tags=["model"])
    async def example(index: int) -> dict[str, Any]:
        """One example as a ready-made JSON feature request."""
        if not 0 <= index < len(state.examples):
            raise RequestError(404, "index", f"no example {index}; there are {len(state.examples)}",
                               "list them with GET /v1/examples")
        s = state.examples[index]
        return {"samples": [{"id": s.id, **{m: x.tolist() for m, x in s.features.items()}}]}

    @app.post("/v1/predict", tags=["model"], openapi_extra={"requestBody": PREDICT_BODY},
              responses={200: {"model": PredictResponse}, **ERRORS})
    async def predict(request: Request) -> JSONResponse:
        """Emotions for features (JSON body or .npz) or for one clip (multipart field `file`)."""
        samples = await _samples_from_request(request, state)
        results = await _submit(state, samples)
        return JSONResponse({"predictions": results, "model": state.card["model"]["name"]})

    @app.post("/v1/timeline", tags=["model"], openapi_extra={"requestBody": TIMELINE_BODY},
              responses={200: {"content": {"application/x-ndjson": {}}}, **ERRORS})
    async def timeline(request: Request) -> StreamingResponse:
        """Emotions over time in one recording (multipart `file`, `window`, `hop` seconds): NDJSON,
        one line per window as soon as it is predicted, then a `{"done": ...}` line."""
        return await timeline_response(request, state)


async def _samples_from_request(request: Request, state: _State) -> list[Sample]:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    spec = state.model.input_spec
    max_unpacked = int(4 * state.settings.max_upload_mb * 1024 * 1024)
    if ctype == "application/json":
        return await state.parse(parse_json_body, await request.body(), spec)
    if ctype in ("application/octet-stream", "application/x-npz", "application/zip"):
        with state.upload_slot():
            return await state.parse(parse_npz, await request.body(), spec, max_unpacked)
    if ctype == "multipart/form-data":
        if state.media.full():  # checked before the body is read: a refused clip costs no disk
            raise RequestError(503, "file", f"{state.media.in_flight} clips are being processed already",
                               "retry in a few seconds", headers={"Retry-After": "2"})
        with state.upload_slot():
            upload = await read_multipart(request.headers["content-type"], request.stream(), state.uploads,
                                          state.settings.max_transcript_chars)
            try:
                return await _samples_from_upload(upload, state, max_unpacked)
            finally:
                upload.remove()
    raise RequestError(415, "Content-Type", f"{ctype or 'none'} is not accepted",
                       "send application/json features, an .npz as application/octet-stream, "
                       "or multipart/form-data with a file field")


async def _samples_from_upload(upload: Upload, state: _State, max_unpacked: int) -> list[Sample]:
    assert upload.path is not None
    kind = sniff(upload.head)
    if kind == "npz":
        if upload.transcript:
            raise RequestError(422, "transcript", "goes with a clip, not with an .npz of features",
                               "leave the transcript out, or send the clip itself")
        return await state.parse(parse_npz, upload.path.read_bytes(), state.model.input_spec, max_unpacked)
    if kind is None:
        raise RequestError(415, "file", f"is {describe_unknown(upload.head)}",
                           "send a video or audio file (mp4, mov, mkv, webm, avi, wav, mp3, flac, ogg) or an .npz")
    require_clip_extractors(state, "clip", "send the features as JSON or .npz",
                            "use `mmer predict --manifest` with the dialogue's clips, or send dialogue features")
    feats, used_transcript, info = await state.media.extract(upload.path, upload.transcript, kind)
    return [_media_sample(feats, upload, info, state, used_transcript)]


def _media_sample(feats: dict[str, np.ndarray], upload: Upload, info: dict[str, Any], state: _State,
                  used_transcript: str | None) -> Sample:
    spec = state.model.input_spec
    out, truncated = media_steps(feats, state)
    sample = Sample(upload.sample_id or "upload", out, source="media",
                    info={"media": {**info, **({"truncated_steps": truncated} if truncated else {})},
                          "transcript": used_transcript if used_transcript is not None else upload.transcript})
    return check_sample(sample, "file", spec)


def load_examples(store_path: str | None, served: ServedModel, limit: int) -> list[Sample]:
    """The first `limit` samples of a store's test split (the operator's choice, never a request's)."""
    if not store_path or limit == 0:
        return []
    from mmerkit.data.store import FeatureStore

    store = FeatureStore(store_path)
    if dict(store.modalities) != served.modalities:
        raise ConfigError(f"--examples {store_path}: the store's modalities {dict(store.modalities)} differ from "
                          f"the model's {served.modalities}; give a store made like the training data")
    split = store.split("test" if "test" in store.splits else next(iter(store.splits)))
    n = min(limit, len(split))
    samples = []
    for i in range(n):
        feats = {m: np.asarray(split.features[m][i, : int(split.lengths[m][i])], np.float32)
                 for m in served.modalities}
        samples.append(Sample(str(split.sample_id(i)), feats))
    return samples


# ----------------------------------------------------------------------------- offline API docs


def _swagger_assets() -> dict[str, tuple[Path, str]]:
    """Swagger UI's files from the `swagger-ui-bundle` package, so /docs works offline (FastAPI's
    own /docs page loads them from a CDN). Empty where the package is not installed."""
    try:
        from swagger_ui_bundle import swagger_ui_path
    except ImportError:
        return {}
    root = Path(swagger_ui_path)
    files = {"swagger-ui-bundle.js": "text/javascript", "swagger-ui.css": "text/css", "favicon-32x32.png": "image/png"}
    if not all((root / name).is_file() for name in files):
        return {}
    return {name: (root / name, media) for name, media in files.items()}


def _add_offline_docs(app: FastAPI, assets: dict[str, tuple[Path, str]]) -> None:
    from fastapi.openapi.docs import get_swagger_ui_html
    from fastapi.responses import Response

    app.openapi_version = "3.0.3"  # the bundled Swagger UI (4.x) reads OpenAPI 3.0 documents

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title="mmerkit API",
                                   swagger_js_url="/docs-assets/swagger-ui-bundle.js",
                                   swagger_css_url="/docs-assets/swagger-ui.css",
                                   swagger_favicon_url="/docs-assets/favicon-32x32.png")

    @app.get("/docs-assets/{name}", include_in_schema=False)
    async def docs_asset(name: str) -> Response:
        if name not in assets:  # a fixed set of files: the request only picks one of their names
            raise RequestError(404, "name", f"no docs asset {name!r}", "see /docs")
        path, media = assets[name]
        return Response(path.read_bytes(), media_type=media, headers={"Cache-Control": "max-age=86400"})


# ----------------------------------------------------------------------------- the guard


class GuardMiddleware:
    """Pure ASGI, in this order: the Host name (DNS rebinding) and the Origin (other web pages),
    503 while the server shuts down, the bearer token on every path but /healthz, the body size
    limit (Content-Length first, then every received byte, so chunked bodies are capped too; JSON
    has a smaller one) and the longest wait for the next piece of a body."""

    def __init__(self, app, settings: ServeSettings, state: _State):
        self.app, self.state, self.token = app, state, settings.resolved_token()
        self.max_bytes = _bytes(settings.max_upload_mb)
        self.max_json = min(self.max_bytes, _bytes(settings.max_json_mb))
        self.body_timeout = settings.body_timeout_s
        self.any_host, self.hosts = "*" in settings.allowed_hosts, own_host_names(settings)
        self.any_origin = "*" in settings.allowed_origins
        self.origins = {o.rstrip("/").lower() for o in settings.allowed_origins}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        path = scope.get("path", "")
        refusal = self._refusal(headers, path)
        if refusal is not None:
            return await JSONResponse(refusal.body(), refusal.status, headers=refusal.headers)(scope, receive, send)
        json_body = headers.get("content-type", "").split(";")[0].strip().lower() == "application/json"
        limit = self.max_json if json_body else self.max_bytes
        declared = headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            error = _too_large(limit, json_body)
            return await JSONResponse(error.body(), 413, headers={"Connection": "close"})(scope, receive, send)
        started = False

        async def tracked(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, self._counting(receive, limit, json_body), tracked)
        except Exception as exc:  # caught here, not by an app handler: Starlette would re-raise it to
            # uvicorn, which logs the traceback a second time
            log.error("unexpected error on %s %s", scope.get("method"), path, exc_info=exc)
            if not started:
                body = error_body(500, "internal error", None, "the server log has the details")
                await JSONResponse(body, 500)(scope, receive, send)

    def _refusal(self, headers: dict[str, str], path: str) -> RequestError | None:
        host = headers.get("host")
        if host is not None and not self.any_host and not _own_host(host, self.hosts):
            return RequestError(403, "Host", f"{host!r} is not a name of this server",
                                "use the server's address, or start it with --allowed-host NAME")
        origin = headers.get("origin")
        if origin is not None and not self.any_origin and not self._same_origin(origin, host):
            return RequestError(403, "Origin", f"requests from other web pages ({origin}) are refused",
                                "use the page the server serves at /, or start it with --allowed-origin ORIGIN")
        if self.state.draining:
            return RequestError(503, "server", "is shutting down", "retry once the server is back",
                                headers={"Retry-After": "5", "Connection": "close"})
        if self.token and path not in OPEN_PATHS and not self._authorized(headers.get("authorization", "")):
            browser = path in BROWSER_PATHS or path.startswith("/docs-assets/")
            challenge = 'Basic realm="mmerkit"' if browser else 'Bearer realm="mmerkit"'
            return RequestError(401, "Authorization", "missing or wrong token",
                                "send the header 'Authorization: Bearer TOKEN'",
                                headers={"WWW-Authenticate": challenge})
        return None

    def _same_origin(self, origin: str, host: str | None) -> bool:
        origin = origin.rstrip("/").lower()
        if origin in self.origins:
            return True
        parts = urlsplit(origin)
        return host is not None and parts.scheme in ("http", "https") and parts.netloc == host.lower()

    def _authorized(self, header: str) -> bool:
        scheme, _, value = header.partition(" ")
        scheme, value = scheme.lower(), value.strip()
        if scheme == "basic":  # browsers: any user name, the token as password
            try:
                value = base64.b64decode(value, validate=True).decode("utf-8").partition(":")[2]
            except (binascii.Error, UnicodeDecodeError):
                return False
        elif scheme != "bearer":
            return False
        return hmac.compare_digest(value.encode(), self.token.encode())

    def _counting(self, receive, limit: int, json_body: bool):
        seen, complete = 0, False

        async def counted():
            nonlocal seen, complete
            if complete:
                return await receive()
            try:  # a client that stops sending mid-body must not hold its connection and memory
                message = await asyncio.wait_for(receive(), self.body_timeout)
            except TimeoutError:
                raise RequestError(408, "body", f"no part of the request body arrived for {self.body_timeout:g} s",
                                   "send the whole body without pauses (the server's --body-timeout-s)") from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                complete = not message.get("more_body", False)
                if seen > limit:
                    raise _too_large(limit, json_body)
            return message

        return counted


def _bytes(mb: float) -> int:
    return int(mb * 1024 * 1024)


def _too_large(limit: int, json_body: bool) -> RequestError:
    if json_body:
        return RequestError(413, "body", f"the JSON body is larger than {limit / 2**20:g} MB",
                            "send the features as an .npz (application/octet-stream), or fewer samples "
                            "per request (the server's --max-json-mb)")
    return RequestError(413, "body", f"the request body is larger than {limit / 2**20:g} MB",
                        "send a shorter clip or fewer samples (the server's --max-upload-mb)")


def own_host_names(settings: ServeSettings) -> set[str]:
    """Host names a browser may use for this server: localhost, the machine's names, the bound
    name and the operator's --allowed-host. Any IP address is accepted too: DNS rebinding needs
    a name the attacker controls, which an address literal is not."""
    names = {"localhost", socket.gethostname(), socket.getfqdn(), settings.host, *settings.allowed_hosts}
    return {n.lower().rstrip(".") for n in names if n}


def _own_host(host: str, names: set[str]) -> bool:
    name = host.strip().lower()
    if name.startswith("["):  # [::1]:8000
        name = name[1:].partition("]")[0]
    elif name.count(":") == 1:
        name = name.partition(":")[0]
    name = name.rstrip(".")
    if name in names:
        return True
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False


# ----------------------------------------------------------------------------- errors


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestError)
    async def request_error(request: Request, exc: RequestError) -> JSONResponse:
        return JSONResponse(exc.body(), exc.status, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        fix = {404: "see /docs for the endpoints", 405: "see /docs for the methods of each endpoint"}
        return JSONResponse(error_body(exc.status_code, str(exc.detail), request.url.path,
                                       fix.get(exc.status_code, "")), exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        err = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(x) for x in err.get("loc", ()) if x not in ("body", "path", "query")) or "request"
        return JSONResponse(error_body(422, str(err.get("msg", "invalid request")), where,
                                       "see /docs for the expected request"), 422)


def page_html() -> str:
    return resources.files("mmerkit.serve").joinpath("page.html").read_text(encoding="utf-8")
