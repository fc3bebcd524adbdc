"""Media uploads: streamed into a private directory, typed from their bytes, featurized in workers.

Nothing a request names reaches the file system: the server picks every file name (mkstemp in
a 0700 directory of its own), the client's file name is never used, and each upload is removed
once its features are out. The media type is read from the file's first bytes (container magic
numbers) and then confirmed by PyAV's probe, never from the name or the declared content type.
Feature extraction runs in worker processes so a long decode never blocks the event loop, and a
worker that crashes is replaced instead of taking the server down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import re
import shutil
import signal
import tempfile
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mmerkit.serve.errors import RequestError

log = logging.getLogger("mmerkit.serve")

Featurizer = Callable[[str, "str | None", "dict[str, Any] | None"], "dict[str, np.ndarray]"]

FORM_FIELDS = ("file", "transcript", "id", "window", "hop")


# ----------------------------------------------------------------------------- content types


def sniff(head: bytes) -> str | None:
    """The container type from a file's first bytes: 'npz', a media kind, or None."""
    if head.startswith(b"PK\x03\x04"):
        return "npz"
    if head[4:8] == b"ftyp":
        return "mp4"  # ISO base media: mp4, mov, m4a, 3gp
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "matroska"  # mkv, webm
    if head.startswith(b"RIFF") and head[8:12] in (b"WAVE", b"AVI "):
        return "wav" if head[8:12] == b"WAVE" else "avi"
    if head.startswith(b"OggS"):
        return "ogg"
    if head.startswith(b"fLaC"):
        return "flac"
    if head.startswith(b"ID3") or (len(head) > 1 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0):
        return "mp3"  # also ADTS AAC, which shares the frame sync
    if head.startswith(b"\x00\x00\x01\xba") or head[:1] == b"\x47" and head[188:189] == b"\x47":
        return "mpeg"
    return None


def describe_unknown(head: bytes) -> str:
    """A human name for common non-media uploads, for the 415 message."""
    from mmerkit.extract.decode import describe_not_media  # one table for the CLI and the server

    return describe_not_media(head) or "not a recognised audio or video container"


def probe_media(path: Path) -> dict[str, Any]:
    """Duration and streams from PyAV (mmerkit.extract.decode.probe where it is installed)."""
    try:
        from mmerkit.extract.decode import probe
    except ImportError:  # the media extra is not installed: a minimal probe of our own
        probe = _probe_with_av
    return probe(path)


def _probe_with_av(path: Path) -> dict[str, Any]:
    import av

    with av.open(str(path)) as container:
        duration = container.duration / 1_000_000.0 if container.duration is not None else None
        return {"duration": duration, "has_audio": bool(container.streams.audio),
                "has_video": bool(container.streams.video)}


# ----------------------------------------------------------------------------- the private directory


class UploadDir:
    """A 0700 temporary directory owned by the server; every upload gets a fresh mkstemp name."""

    def __init__(self) -> None:
        self.path = Path(tempfile.mkdtemp(prefix="mmerkit-serve-"))  # mkdtemp: mode 0700
        os.chmod(self.path, 0o700)

    def new_file(self) -> tuple[int, Path]:
        fd, name = tempfile.mkstemp(prefix="upload-", dir=self.path)  # O_EXCL, mode 0600
        return fd, Path(name)

    def cleanup(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


# ----------------------------------------------------------------------------- multipart, streamed


@dataclass
class Upload:
    """A multipart request's parts: the file (server-named path, its first bytes), text fields."""

    path: Path | None = None
    head: bytes = b""
    size: int = 0
    transcript: str | None = None
    sample_id: str | None = None
    numbers: dict[str, str] = field(default_factory=dict)  # window / hop (POST /v1/timeline), as sent

    def remove(self) -> None:
        if self.path is not None:
            self.path.unlink(missing_ok=True)


async def read_multipart(content_type: str, chunks: AsyncIterator[bytes], upload_dir: UploadDir,
                         max_text: int) -> Upload:
    """Stream a multipart/form-data body: the `file` part straight into the private directory,
    `transcript` and `id` into memory (at most `max_text` characters each)."""
    from python_multipart.multipart import MultipartParser, parse_options_header

    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary or len(boundary) > 70:  # RFC 2046: 1 to 70 characters
        raise RequestError(400, "Content-Type", "multipart/form-data without a valid boundary (1-70 characters)",
                           "let your HTTP client build the multipart body (e.g. curl -F file=@clip.mp4)")
    form = _FormState(upload_dir, max_text)
    parser = MultipartParser(boundary, form.callbacks())
    try:
        async for chunk in chunks:
            parser.write(chunk)
        parser.finalize()
    except RequestError:
        form.abort()
        raise
    except Exception as e:  # the multipart parser's own errors: a malformed body
        form.abort()
        raise RequestError(400, "body", f"is not valid multipart/form-data ({type(e).__name__})",
                           "send fields file=<media or .npz> and optionally transcript=<text>") from None
    return form.finish()


class _FormState:
    """The multipart parser's callbacks: which part we are in, where its bytes go."""

    def __init__(self, upload_dir: UploadDir, max_text: int):
        self.dir, self.max_text = upload_dir, max_text
        self.upload = Upload()
        self.fd: int | None = None
        self.name: str | None = None
        self.text = bytearray()
        self.header_field, self.header_value = bytearray(), bytearray()
        self.disposition = b""

    def callbacks(self) -> dict[str, Callable]:
        return {"on_part_begin": self.part_begin, "on_header_field": self.hfield, "on_header_value": self.hvalue,
                "on_header_end": self.header_end, "on_headers_finished": self.headers_done,
                "on_part_data": self.data, "on_part_end": self.part_end}

    def part_begin(self) -> None:
        self.disposition, self.name = b"", None
        self.text.clear()

    def hfield(self, data: bytes, start: int, end: int) -> None:
        self.header_field += data[start:end]

    def hvalue(self, data: bytes, start: int, end: int) -> None:
        self.header_value += data[start:end]

    def header_end(self) -> None:
        if bytes(self.header_field).lower() == b"content-disposition":
            self.disposition = bytes(self.header_value)
        self.header_field.clear()
        self.header_value.clear()

    def headers_done(self) -> None:
        from python_multipart.multipart import parse_options_header

        _, params = parse_options_header(self.disposition)
        name = params.get(b"name", b"").decode("utf-8", "replace")
        if name not in FORM_FIELDS:
            raise RequestError(422, name or "form field", "is not a known form field",
                               f"send only {list(FORM_FIELDS)} (file: the media or .npz; transcript: text)")
        if name == "file":
            if self.upload.path is not None:
                raise RequestError(422, "file", "was sent twice", "send one file per request")
            self.fd, self.upload.path = self.dir.new_file()
        self.name = name

    def data(self, data: bytes, start: int, end: int) -> None:
        piece = data[start:end]
        if self.name == "file" and self.fd is not None:
            if len(self.upload.head) < 512:
                self.upload.head += piece[: 512 - len(self.upload.head)]
            os.write(self.fd, piece)
            self.upload.size += len(piece)
            return
        self.text += piece
        if len(self.text) > 4 * self.max_text:  # utf-8 takes at most 4 bytes a character
            raise RequestError(413, self.name or "field", f"is longer than {self.max_text} characters",
                               "send a shorter transcript")

    def part_end(self) -> None:
        if self.name == "file":
            self._close()
            return
        try:
            text = bytes(self.text).decode("utf-8")
        except UnicodeDecodeError:
            raise RequestError(422, self.name or "field", "is not UTF-8 text", "send the transcript as UTF-8") from None
        if len(text) > self.max_text:
            raise RequestError(413, self.name or "field", f"is longer than {self.max_text} characters",
                               "send a shorter transcript")
        if self.name == "transcript":
            self.upload.transcript = text.strip() or None
        elif self.name == "id":
            self.upload.sample_id = text.strip()[:200] or None
        else:  # window, hop: read by the route that takes them
            self.upload.numbers[self.name or ""] = text.strip()[:40]

    def _close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def abort(self) -> None:
        self._close()
        self.upload.remove()

    def finish(self) -> Upload:
        self._close()
        if self.upload.path is None:
            raise RequestError(422, "file", "is missing",
                               "send the clip as the multipart field 'file' (curl -F file=@clip.mp4)")
        if self.upload.size == 0:
            self.upload.remove()
            raise RequestError(422, "file", "is empty", "send a complete media file")
        return self.upload


# ----------------------------------------------------------------------------- extraction workers


def default_featurizer(path: str, transcript: str | None, config: dict[str, Any] | None) -> dict[str, Any]:
    """The export's extractors on one clip: `{modality: (T, D)}` (T = 0: missing), plus the
    transcript used (given, or recognised) under "transcript".

    The one adapter between the server and `mmerkit.extract`. It runs in a worker process, which
    keeps the extractors (and their loaded models) between requests, and checks once that this
    machine's extractors make the same features as the ones the model was trained on."""
    assert config is not None
    result = _export_featurizer(config).featurize(path, transcript=transcript, clip_id="upload")
    return {**result.features, "transcript": result.transcript}


def _export_featurizer(config: dict[str, Any]):
    from mmerkit.extract.featurize import export_featurizer

    return export_featurizer(config, "the served model", "the server's extractors")


def _prepare_default(config: dict[str, Any]) -> None:
    """Build (and check) the export's extractors in a worker before the first clip arrives:
    loading their models takes seconds, which the first request should not wait for."""
    _export_featurizer(config)


def _featurize(featurizer: Featurizer, path: str, transcript: str | None, config: dict[str, Any] | None,
               kind: str, max_seconds: float) -> tuple:
    """In the worker: probe the clip, measure its length, then extract. Returns ("ok", features,
    transcript used, media info) or ("error", status, field, message, fix): a RequestError does
    not survive pickling, and nothing here may take the server process down."""
    try:
        info = _checked_media(Path(path), kind, max_seconds)
    except RequestError as e:
        return ("error", e.status, e.field, e.message, e.fix)
    out = featurizer(path, transcript, config)
    used = out.get("transcript") if isinstance(out.get("transcript"), str) else None
    feats = {str(k): np.asarray(v, np.float32) for k, v in out.items() if k != "transcript" and v is not None}
    return ("ok", feats, used, info)


def _checked_media(path: Path, kind: str, max_seconds: float) -> dict[str, Any]:
    """Streams and length of a clip, in the worker (a crashing demuxer takes only the worker down).
    The length is measured from the packets, up to the limit: a WebM recorded live declares no
    duration, and hours of silence compress into a few megabytes."""
    try:
        info = probe_media(path)
        seconds = packet_seconds(path, max_seconds)
    except Exception:
        raise RequestError(415, "file", f"looks like {kind} but cannot be opened as media",
                           "send a complete, playable file") from None
    if not (info.get("has_audio") or info.get("has_video")):
        raise RequestError(422, "file", "has neither an audio nor a video stream", "send a clip with sound or picture")
    declared = info.get("duration")
    if seconds > max_seconds or (declared is not None and declared > max_seconds):
        length = f"lasts {declared:.1f} s" if declared is not None and declared > max_seconds else \
            f"lasts more than {max_seconds:g} s"
        raise RequestError(422, "file", f"{length}; this server takes clips of at most {max_seconds:g} s",
                           "cut the clip into utterances and send them one by one")
    duration = declared if declared is not None else seconds
    return {"kind": kind, "duration": round(float(duration), 3)}


def packet_seconds(path: Path, limit: float) -> float:
    """How far the clip's packets reach in time, read without decoding and stopped as soon as
    they pass `limit` (so the cost is bounded by the limit, not by the file)."""
    import av

    reach = 0.0
    with av.open(str(path)) as container:
        streams = [s for s in container.streams if s.type in ("audio", "video")]
        running = {s.index: 0.0 for s in streams}  # for packets without timestamps
        for packet in container.demux(streams):
            tb = packet.time_base
            if tb is None:
                continue
            length = float(packet.duration * tb) if packet.duration else 0.0
            if packet.pts is not None:
                end = float(packet.pts * tb) + length
            else:
                end = running[packet.stream.index] + length
            running[packet.stream.index] = end
            reach = max(reach, end)
            if reach > limit:
                break
    return reach


def timeline_job(path: str, config: dict[str, Any], kind: str, max_seconds: float, window: float, hop: float,
                 out_dir: str) -> None:
    """In a worker: check the recording, then write each window's features to `out_dir` as it
    is cut (`NNNNNN.npz`, renamed into place when complete) for the event loop to pick up;
    `info.json` once the file is accepted, `error.json` instead on any failure, `done` at the
    end. A `cancel` file (the client went away) stops the job between windows."""
    import json

    from mmerkit.extract.featurize import featurizer
    from mmerkit.extract.timeline import timeline_windows

    out = Path(out_dir)

    def put(name: str, text: str) -> None:
        (out / f".{name}").write_text(text)
        os.replace(out / f".{name}", out / name)

    try:
        info = _checked_media(Path(path), kind, max_seconds)
        fz = featurizer(config)  # the export's meta: its extractors, checked against this machine's
        put("info.json", json.dumps(info))
        for k, w in enumerate(timeline_windows(fz, path, window=window, hop=hop)):
            if (out / "cancel").exists():
                return
            arrays = {f"x_{m}": x for m, x in w.features.items()}
            meta = json.dumps({"start": w.start, "end": w.end, "transcript": w.transcript, "missing": w.missing})
            with open(out / f".{k:06d}.npz", "wb") as f:
                np.savez(f, meta=np.array(meta), **arrays)
            os.replace(out / f".{k:06d}.npz", out / f"{k:06d}.npz")
    except RequestError as e:
        put("error.json", json.dumps([e.status, e.field, e.message, e.fix]))
        return
    except Exception as e:  # noqa: BLE001 - reported to the client as one line, logged in full
        err = _extraction_error(e, Path(path))
        put("error.json", json.dumps([err.status, err.field, err.message, err.fix]))
        return
    put("done", "")


def _ignore_interrupts() -> None:
    """Worker processes leave Ctrl+C to the server, which stops them (no traceback per worker)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@contextlib.contextmanager
def _born_ignoring_interrupts():
    """Spawn worker processes with Ctrl+C ignored from birth. A spawned child keeps an ignored
    SIGINT across exec (and Python then leaves it ignored), so a Ctrl+C sent to the whole process
    group while a worker is still starting, before its initializer runs, cannot kill it and fail
    its clip as a crash; the server handles Ctrl+C and stops the workers. signal.signal works in
    the main thread only; elsewhere the initializer alone covers it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


class Worker:
    """One extraction process, in a pool of its own: a crash breaks only this worker, so only the
    clip it was decoding fails. `workers == 0`: a thread instead (tests only)."""

    def __init__(self, in_thread: bool, warm: tuple | None):
        if in_thread:
            self.pool: Executor = ThreadPoolExecutor(1, thread_name_prefix="mmerkit-media")
        else:  # spawn: a fork of a process running torch threads can deadlock
            self.pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                                            initializer=_ignore_interrupts)
        if warm is not None:  # queued first: the worker takes clips only once its extractors are loaded
            self.submit(*warm).add_done_callback(_log_failure)

    def submit(self, *call: Any):
        with _born_ignoring_interrupts():  # the pool spawns its process on the first submit
            return self.pool.submit(*call)

    def stop(self) -> None:
        """Terminate the process and wait for it: no orphan outlives the server."""
        # the pool's own processes (concurrent.futures keeps them in `_processes`; Python 3.14's
        # terminate_workers() does the same): shutdown() alone waits for a clip or leaves it running
        procs = list((getattr(self.pool, "_processes", None) or {}).values())
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
        self.pool.shutdown(wait=False, cancel_futures=True)
        for proc in procs:
            proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join(1)


class MediaWorkers:
    """Extraction workers (`workers` processes, or one thread when 0) and a bounded wait for them.

    Clips wait here, not inside a process pool, so a worker that crashes fails only the clip it
    was decoding; the others go to its replacement, which loads its extractors first."""

    def __init__(self, featurizer: Featurizer, config: dict[str, Any] | None, workers: int, max_waiting: int,
                 max_seconds: float = 120.0):
        self.featurizer, self.config = featurizer, config
        self.workers, self.max_waiting, self.max_seconds = workers, max_waiting, max_seconds
        self.in_flight = 0
        self.closing = False
        self._idle: asyncio.Queue[Worker] | None = None
        self._all: list[Worker] = []

    def full(self) -> bool:
        return self.in_flight >= self.workers + self.max_waiting

    def _warm_call(self) -> tuple | None:
        if self.config is None or self.featurizer is not default_featurizer:
            return None
        return (_prepare_default, self.config)

    def _new_worker(self) -> Worker:
        worker = Worker(self.workers == 0, self._warm_call())
        self._all.append(worker)
        return worker

    def _ensure_started(self) -> asyncio.Queue[Worker]:
        if self._idle is None:
            self._idle = asyncio.Queue()
            for _ in range(max(self.workers, 1)):
                self._idle.put_nowait(self._new_worker())
        return self._idle

    def warm_up(self) -> None:
        """Start the workers now; each loads the export's extractors before its first clip."""
        if self.config is not None:
            self._ensure_started()

    async def extract(self, path: Path, transcript: str | None,
                      kind: str = "media") -> tuple[dict[str, np.ndarray], str | None, dict[str, Any]]:
        result = await self.run_job((_featurize, self.featurizer, str(path), transcript, self.config, kind,
                                     self.max_seconds), path, "clips")
        if result[0] == "error":
            _, status, field, message, fix = result
            raise RequestError(status, field, message, fix)
        _, feats, used, info = result
        return feats, used, info

    async def run_job(self, call: tuple, path: Path, what: str = "recordings") -> Any:
        """Run `call` (a picklable function and its arguments, about the upload at `path`) on a
        worker, after a bounded wait for one; a crashed worker is replaced and only its job fails."""
        if self.closing:
            raise _shutting_down()
        if self.full():
            raise RequestError(503, "file", f"{self.in_flight} {what} are being processed already",
                               "retry in a few seconds", headers={"Retry-After": "2"})
        self.in_flight += 1
        try:
            idle = self._ensure_started()
            worker = await idle.get()
            try:
                return await asyncio.wrap_future(worker.submit(*call))
            except BrokenProcessPool:
                if self.closing:
                    raise _shutting_down() from None
                worker = self._replace(worker)
                raise RequestError(422, "file", "made the feature extractor crash", "check that the file plays "
                                   "in a media player; re-encode it (e.g. to mp4/h264)") from None
            except RequestError:
                raise
            except Exception as e:
                if self.closing:
                    raise _shutting_down() from None
                raise _extraction_error(e, path) from None
            finally:
                if not self.closing:
                    idle.put_nowait(worker)
        finally:
            self.in_flight -= 1

    def _replace(self, broken: Worker) -> Worker:
        broken.stop()
        self._all.remove(broken)
        log.warning("a media worker crashed; its clip was refused and a new worker replaces it")
        return self._new_worker()

    def close(self) -> None:
        """Stop every worker (terminate and join); clips still in extraction are answered 503."""
        self.closing = True
        workers, self._all = self._all, []
        for worker in workers:
            worker.stop()


def _shutting_down() -> RequestError:
    return RequestError(503, "server", "is shutting down", "retry once the server is back",
                        headers={"Retry-After": "5", "Connection": "close"})


def _log_failure(fut) -> None:
    if not fut.cancelled() and fut.exception() is not None:
        log.error("the export's extractors cannot be prepared: %s", fut.exception())


def _extraction_error(e: Exception, path: Path) -> RequestError:
    from mmerkit.errors import MMERError

    if isinstance(e, MMERError):  # a media problem the extractors explain: pass it on, without our path
        message = re.sub(re.escape(str(path.parent)) + r"/\S+", "the upload", str(e))
        return RequestError(422, "file", message, "send another clip, or its features as JSON")
    log.error("feature extraction failed", exc_info=e)
    return RequestError(500, "file", "feature extraction failed on the server", "the server log has the details")
