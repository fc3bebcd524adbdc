"""POST /v1/timeline: a recording in, one NDJSON line per window out, each as soon as it is ready.

The upload is streamed to the server's private directory (as a clip for /v1/predict is), then
one extraction worker runs `mmerkit.serve.media.timeline_job` on it: the file's length is
checked against `--max-timeline-seconds` from its packets, the file is decoded once and each
extractor runs once over it (`mmerkit.extract.timeline`), and every window's features land in
a private folder as they are cut. This side picks them up, sends them through the same
batching queue as /v1/predict, and writes one line per window:

    {"start": 0.0, "end": 4.0, "labels": ["joy"], "probabilities": {"joy": 0.8, ...},
     "modality": "audio", "missing": ["visual"], "transcript": "what a lovely day"}

then `{"done": true, "windows": N, "media": {"kind", "duration"}}`. A failure after the first
line is one `{"error": {...}}` line (the status is already sent). The upload and the window
files are deleted when the job ends, also when the client goes away mid-stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import Request
from fastapi.responses import StreamingResponse

from mmerkit.serve.errors import RequestError, error_body
from mmerkit.serve.inputs import Sample
from mmerkit.serve.media import Upload, describe_unknown, read_multipart, sniff, timeline_job
from mmerkit.serve.queueing import require_clip_extractors

POLL_S = 0.05  # how often the folder of finished windows is looked at
DEFAULT_WINDOW = 4.0


def window_and_hop(upload: Upload) -> tuple[float, float]:
    """The form's `window` and `hop` seconds (4 and window / 2 when not sent), checked."""
    from mmerkit.errors import ConfigError
    from mmerkit.extract.timeline import check_window

    values = {}
    for name in ("window", "hop"):
        text = upload.numbers.get(name)
        if not text:
            continue
        try:
            values[name] = float(text)
        except ValueError:
            raise RequestError(422, name, f"{text!r} is not a number of seconds", f"send e.g. {name}=4") from None
    window = values.get("window", DEFAULT_WINDOW)
    hop = values.get("hop", window / 2)
    try:
        check_window(window, hop)
    except ConfigError as e:
        field = "hop" if str(e).startswith("--hop") else "window"
        raise RequestError(422, field, str(e).replace("--", ""), "send 0 < hop <= window <= 600 seconds") from None
    return window, hop


async def timeline_response(request: Request, state: Any) -> StreamingResponse:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "multipart/form-data":
        raise RequestError(415, "Content-Type", f"{ctype or 'none'} is not accepted",
                           "send multipart/form-data with a file field (curl -F file=@talk.mp4 -F window=4)")
    require_clip_extractors(state, "recording", "use POST /v1/predict with features",
                            "use `mmer predict --manifest` with the dialogue's clips")
    if state.media.full():
        raise RequestError(503, "file", f"{state.media.in_flight} recordings are being processed already",
                           "retry in a few seconds", headers={"Retry-After": "2"})
    slot = contextlib.ExitStack()
    slot.enter_context(state.upload_slot())
    upload = folder = None
    try:
        upload = await read_multipart(request.headers["content-type"], request.stream(), state.uploads,
                                      state.settings.max_transcript_chars)
        if upload.transcript:
            raise RequestError(422, "transcript", "is not taken by /v1/timeline: its words come from speech "
                               "recognition, with their times", "leave the transcript out")
        window, hop = window_and_hop(upload)
        kind = sniff(upload.head)
        if kind is None or kind == "npz":
            raise RequestError(415, "file", "is an .npz of features" if kind else f"is {describe_unknown(upload.head)}",
                               "send a video or audio recording (mp4, mov, mkv, webm, wav, mp3, flac, ogg)")
        folder = Path(tempfile.mkdtemp(prefix="timeline-", dir=state.uploads.path))
        job = asyncio.ensure_future(state.media.run_job(
            (timeline_job, str(upload.path), state.extractors, kind, state.settings.max_timeline_seconds,
             window, hop, str(folder)), upload.path))
        info = await _accepted(job, folder)
    except BaseException:
        _remove(upload, folder)
        slot.close()
        raise
    stream = _lines(state, job, folder, info)
    cleanup = _Cleanup(job, upload, folder, slot)
    return StreamingResponse(_closing(stream, cleanup), media_type="application/x-ndjson",
                             headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"})


async def _accepted(job: asyncio.Future, folder: Path) -> dict[str, Any]:
    """Wait until the worker accepted the recording (info.json) or refused it (a RequestError)."""
    while True:
        if (folder / "info.json").exists():
            return json.loads((folder / "info.json").read_text())
        if (folder / "error.json").exists():
            raise RequestError(*json.loads((folder / "error.json").read_text()))
        if job.done():
            job.result()  # a crashed worker: its RequestError
            raise RequestError(500, "file", "the timeline job ended without an answer", "the server log has the details")
        await asyncio.sleep(POLL_S)


async def _lines(state: Any, job: asyncio.Future, folder: Path, info: dict[str, Any]) -> AsyncIterator[bytes]:
    k = 0
    while True:
        ready = []
        while (folder / f"{k + len(ready):06d}.npz").exists() and len(ready) < state.settings.max_batch:
            ready.append(folder / f"{k + len(ready):06d}.npz")
        if ready:
            for row in await _window_rows(state, ready):
                yield (json.dumps(row) + "\n").encode()
            k += len(ready)
            continue
        if (folder / "error.json").exists():
            status, field, message, fix = json.loads((folder / "error.json").read_text())
            yield (json.dumps(error_body(status, message, field, fix)) + "\n").encode()
            return
        if (folder / "done").exists():
            yield (json.dumps({"done": True, "windows": k, "media": info}) + "\n").encode()
            return
        if job.done():
            try:
                job.result()
                body = error_body(500, "the timeline job ended early", "file", "the server log has the details")
            except RequestError as e:
                body = e.body()
            yield (json.dumps(body) + "\n").encode()
            return
        await asyncio.sleep(POLL_S)


async def _window_rows(state: Any, files: list[Path]) -> list[dict[str, Any]]:
    """Read finished windows (deleting each file), predict those with any modality in one submit."""
    from mmerkit.serve.queueing import _submit, media_steps

    rows, samples, which = [], [], []
    for path in files:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            feats = {name[2:]: z[name] for name in z.files if name.startswith("x_")}
        path.unlink()
        steps, _ = media_steps(feats, state)
        rows.append({"start": round(meta["start"], 3), "end": round(meta["end"], 3), "labels": [],
                     "probabilities": None, "modality": None, "missing": meta["missing"],
                     "transcript": meta["transcript"]})
        if any(x.shape[0] for x in steps.values()):
            which.append(len(rows) - 1)
            samples.append(Sample(f"{meta['start']:g}-{meta['end']:g}", steps, source="media"))
    if samples:
        for i, result in zip(which, await _submit(state, samples)):
            probs = result["probabilities"]
            chosen = result["labels"] or [max(probs, key=probs.get)]
            lead = max(chosen, key=probs.get)
            top = result.get("top_modality")
            rows[i].update(labels=result["labels"], probabilities=probs, modality=top[lead] if top else None)
    return rows


class _Cleanup:
    """Deletes the upload and the window files once the job has stopped, and frees the slot."""

    def __init__(self, job: asyncio.Future, upload: Upload, folder: Path, slot: contextlib.ExitStack):
        self.job, self.upload, self.folder, self.slot = job, upload, folder, slot

    def __call__(self) -> None:
        (self.folder / "cancel").touch()  # a job still cutting windows stops at the next one
        self.job.add_done_callback(lambda _: self._remove())

    def _remove(self) -> None:
        if not self.job.cancelled():
            self.job.exception()  # retrieved: an error already went to the client
        _remove(self.upload, self.folder)
        self.slot.close()


async def _closing(stream: AsyncIterator[bytes], cleanup: _Cleanup) -> AsyncIterator[bytes]:
    try:
        async for chunk in stream:
            yield chunk
    finally:
        cleanup()


def _remove(upload: Upload | None, folder: Path | None) -> None:
    if upload is not None:
        upload.remove()
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)

