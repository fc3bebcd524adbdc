"""`mmer serve` against valid-looking requests that exhaust it, against shutdown, and against other
web pages (issue 21). Real uvicorn on 127.0.0.1, real sockets, real worker processes; each test
bounded in time and in the number of connections it opens."""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install 'mmerkit[serve]'")
httpx = pytest.importorskip("httpx", reason="the serve extra is not installed: pip install 'mmerkit[serve]'")
pytest.importorskip("av", reason="the media extra is not installed: pip install 'mmerkit[media]'")

from serve_helpers import (  # noqa: E402
    fake_featurizer,
    log_records,
    media_export,
    running,
    train_export,
    write_clip,
    write_live_webm,
)

from mmerkit.serve import ServeSettings, create_app  # noqa: E402

TESTS = Path(__file__).parent
SRC = TESTS.parent / "src"


@pytest.fixture(scope="module")
def media_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("limits")
    return media_export(train_export(root), root / "media")


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return write_clip(tmp_path_factory.mktemp("clips") / "c.mp4", 1.0)


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def _error(r, status: int, field: str | None = None) -> dict:
    assert r.status_code == status, (r.status_code, r.text)
    err = r.json()["error"]
    if field is not None:
        assert err["field"] == field, err
    return err


# ----------------------------------------------------------------------------- 1. media length


def test_live_webm_without_duration_stops_at_the_limit(media_dir, tmp_path):
    """A WebM recorded live declares no duration: its length is measured from the packets in the
    worker, up to the limit, before any extraction (the fake featurizer would fail on it)."""
    import av

    webm = write_live_webm(tmp_path / "live.webm", 60)
    with av.open(str(webm)) as c:
        assert c.duration is None  # the premise: nothing declared
    app = create_app(media_dir, ServeSettings(media_workers=1, max_media_seconds=5), featurizer=fake_featurizer)
    with running(app) as url:
        start = time.monotonic()
        r = httpx.post(f"{url}/v1/predict", files={"file": ("live.webm", webm.read_bytes())}, timeout=60)
        err = _error(r, 422, "file")
        assert "more than 5 s" in err["message"], err
        assert time.monotonic() - start < 30


# ----------------------------------------------------------------------------- 2. connections


def test_half_open_connections_neither_starve_healthz_nor_fill_the_log(media_dir):
    """300 connections that never finish their headers: /healthz still answers at once, the
    server closes them after the head deadline, and no log line is written per connection."""
    import logging

    settings = ServeSettings(media_workers=0, header_timeout_s=2, max_connections=50)
    app = create_app(media_dir, settings, featurizer=fake_featurizer)
    socks: list[socket.socket] = []
    try:
        with running(app, "info") as url, log_records("uvicorn", "uvicorn.error", "mmerkit.serve",
                                                      "asyncio") as records:
            for _ in range(300):
                s = socket.create_connection(("127.0.0.1", _port(url)), timeout=5)
                s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
                socks.append(s)
            start = time.monotonic()
            assert httpx.get(f"{url}/healthz", timeout=5).status_code == 200
            assert time.monotonic() - start < 2
            time.sleep(settings.header_timeout_s + 1.5)
            closed = 0
            for s in socks:
                s.settimeout(0.5)
                try:
                    closed += s.recv(1) == b""
                except (ConnectionResetError, BrokenPipeError):
                    closed += 1
                except TimeoutError:
                    pass
            assert closed == len(socks)
            assert httpx.get(f"{url}/healthz", timeout=5).status_code == 200
    finally:
        for s in socks:
            s.close()
    assert len([r for r in records if r.levelno >= logging.WARNING]) < 5, [r.getMessage() for r in records][:5]


def test_stalled_body_gets_408(media_dir):
    app = create_app(media_dir, ServeSettings(media_workers=0, body_timeout_s=1), featurizer=fake_featurizer)
    with running(app) as url, socket.create_connection(("127.0.0.1", _port(url)), timeout=10) as s:
        s.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 1000\r\n\r\n{\"samples\": ")
        start = time.monotonic()
        reply = b""
        while b'"fix"' not in reply:  # the head and the JSON body may come in separate segments
            piece = s.recv(65536)
            if not piece:
                break
            reply += piece
        assert reply.startswith(b"HTTP/1.1 408"), reply[:80]
        assert b'"field":"body"' in reply and time.monotonic() - start < 5


def test_concurrent_uploads_are_capped_before_reading(media_dir, clip):
    """Uploads in progress hold slots; beyond `max_uploads` the next is refused before its body."""
    app = create_app(media_dir, ServeSettings(media_workers=0, max_uploads=2), featurizer=fake_featurizer)
    held: list[socket.socket] = []
    with running(app) as url:
        try:
            for _ in range(2):  # two uploads that keep sending
                s = socket.create_connection(("127.0.0.1", _port(url)), timeout=10)
                s.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                          b"Content-Type: multipart/form-data; boundary=xyz\r\nContent-Length: 100000\r\n\r\n"
                          b"--xyz\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.mp4\"\r\n\r\n"
                          + b"\0" * 1000)
                held.append(s)
            deadline = time.monotonic() + 10
            while app.state.serve.uploads_held < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
            r = httpx.post(f"{url}/v1/predict", files={"file": ("c.mp4", clip.read_bytes())}, timeout=30)
            err = _error(r, 503, "body")
            assert "uploads" in err["message"] and r.headers["Retry-After"] == "2"
        finally:
            for s in held:
                s.close()
        deadline = time.monotonic() + 10
        while app.state.serve.uploads_held and time.monotonic() < deadline:
            time.sleep(0.05)
        r = httpx.post(f"{url}/v1/predict", files={"file": ("c.mp4", clip.read_bytes())}, timeout=30)
        assert r.status_code == 200, r.text


# ----------------------------------------------------------------------------- 3. shutdown, and Ctrl+C


def _children(pid: int) -> set[int]:
    out = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.add(int(entry.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads worker processes from /proc")
@pytest.mark.parametrize("how", ["SIGTERM", "Ctrl+C"])
def test_stopping_the_server_answers_in_flight_clips_and_stops_workers(media_dir, clip, tmp_path, how):
    port_file = tmp_path / "port"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), str(TESTS)]), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys, serve_helpers; serve_helpers.serve_in_this_process(sys.argv[1], sys.argv[2])",
         str(media_dir), str(port_file)], env=env, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        url = None
        while time.monotonic() < deadline and proc.poll() is None:
            if port_file.exists() and port_file.read_text():
                url = f"http://127.0.0.1:{port_file.read_text()}"
                try:
                    if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
            time.sleep(0.2)
        assert url is not None and proc.poll() is None, "the server did not start"
        result: dict = {}

        def upload():  # a clip whose extraction takes a minute
            result["r"] = httpx.post(f"{url}/v1/predict", files={"file": ("c.mp4", clip.read_bytes())},
                                     data={"transcript": "sleep long"}, timeout=60)

        thread = threading.Thread(target=upload)
        thread.start()
        deadline = time.monotonic() + 30
        while not _children(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.5)  # the clip is in the worker now
        workers = _children(proc.pid)
        assert workers
        if how == "SIGTERM":
            proc.send_signal(signal.SIGTERM)
        else:  # a terminal sends Ctrl+C to the whole foreground process group, workers included
            os.killpg(proc.pid, signal.SIGINT)
        thread.join(30)
        _, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    r = result["r"]
    err = _error(r, 503, "server")
    assert "shutting down" in err["message"]
    assert proc.returncode in ((0, -signal.SIGTERM) if how == "SIGTERM" else (0,)), stderr
    assert "Traceback" not in stderr, stderr
    time.sleep(0.5)
    assert not [p for p in workers if _alive(p)], "extraction workers outlived the server"


# ----------------------------------------------------------------------------- 4. bodies


def test_json_body_limit_and_parse_off_the_event_loop(media_dir):
    settings = ServeSettings(media_workers=0, max_json_mb=1)
    app = create_app(media_dir, settings, featurizer=fake_featurizer)
    big = json.dumps({"samples": [{"text": [[0.5] * 8] * 40}] * 16}).encode()
    with running(app) as url:
        err = _error(httpx.post(f"{url}/v1/predict", content=b"{" + b" " * 2_000_000 + b"}",
                                headers={"Content-Type": "application/json"}), 413, "body")
        assert "JSON body" in err["message"] and ".npz" in err["fix"]
        assert httpx.post(f"{url}/v1/predict", content=big, headers={"Content-Type": "application/json"},
                          timeout=30).status_code == 200

    # a large body (here 40 MB of numbers, which json.loads holds the GIL for) is parsed in another
    # process: /healthz keeps answering while it is parsed
    huge = b'{"samples": [{"text": [' + b",".join([b"[" + b",".join([b"0.123456789"] * 8) + b"]"] * 400_000) + b"]}]}"
    t0 = time.perf_counter()
    json.loads(huge)
    inline = time.perf_counter() - t0
    app = create_app(media_dir, ServeSettings(media_workers=0, max_upload_mb=64, max_json_mb=64),
                     featurizer=fake_featurizer)

    async def probe(url):
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            post = asyncio.create_task(client.post("/v1/predict", content=huge,
                                                   headers={"Content-Type": "application/json"}))
            worst = 0.0
            while not post.done():
                t = time.perf_counter()
                assert (await client.get("/healthz")).status_code == 200
                worst = max(worst, time.perf_counter() - t)
                await asyncio.sleep(0.02)
            return (await post), worst

    with running(app) as url:
        r, worst = asyncio.run(probe(url))
    assert r.status_code == 422  # too many steps for the model: but parsed, off the loop
    assert worst < max(0.25, inline / 2), (worst, inline)


def _npz(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _npy(x: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, x)
    return buf.getvalue()


def test_npz_members_checked_before_unpacking(media_dir):
    app = create_app(media_dir, ServeSettings(media_workers=0, max_upload_mb=20), featurizer=fake_featurizer)
    octet = {"Content-Type": "application/octet-stream"}
    text = _npy(np.zeros((1, 2, 8), np.float32))
    with running(app) as url:
        many = _npz({f"m{i}.npy": b"" for i in range(100_000)})
        start = time.monotonic()
        err = _error(httpx.post(f"{url}/v1/predict", content=many, headers=octet, timeout=60), 422, "npz")
        assert "arrays" in err["message"] and time.monotonic() - start < 10
        err = _error(httpx.post(f"{url}/v1/predict", content=_npz({"text.npy": text, "notes.txt": b"hi"}),
                                headers=octet), 422, "npz:notes.txt")
        assert ".npy" in err["message"]
        buf = io.BytesIO()
        np.savez(buf, text=np.zeros((1, 2, 8), np.float32), ids=np.array(["x" * 300]))
        _error(httpx.post(f"{url}/v1/predict", content=buf.getvalue(), headers=octet), 422, "npz:ids")


# ----------------------------------------------------------------------------- 5. 4xx, never 500


def test_numbers_and_boundaries_that_used_to_crash_are_4xx(media_dir):
    app = create_app(media_dir, ServeSettings(media_workers=0), featurizer=fake_featurizer)
    json_ct = {"Content-Type": "application/json"}
    with running(app) as url:
        post = lambda body, **kw: httpx.post(f"{url}/v1/predict", content=body, headers=kw.get("h", json_ct))  # noqa: E731
        _error(post(b'{"samples": [{"text": [[' + b"1" + b"0" * 400 + b', 0, 0, 0, 0, 0, 0, 0]]}]}'), 422,
               "samples[0].text")
        _error(post(b'{"samples": [{"text": [[' + b"9" * 5000 + b', 0, 0, 0, 0, 0, 0, 0]]}]}'), 422, "body")
        huge = json.dumps({"samples": [{"id": "big", "text": [[3e38, -3e38] * 4] * 3, "audio": [[3e38] * 4] * 3}]})
        good = json.dumps({"samples": [{"id": "fine", "text": [[0.1] * 8] * 3}]})

        async def both():  # batched together: only the request at fault fails
            async with httpx.AsyncClient(base_url=url, timeout=30) as client:
                return await asyncio.gather(*(client.post("/v1/predict", content=b, headers=json_ct)
                                              for b in (huge, good)))

        bad, ok = asyncio.run(both())
        assert "not a number" in _error(bad, 422, "sample 'big'")["message"]
        assert ok.status_code == 200, ok.text
        boundary = "b" * 300
        body = f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\nxx\r\n--{boundary}--\r\n"
        _error(post(body.encode(), h={"Content-Type": f"multipart/form-data; boundary={boundary}"}), 400,
               "Content-Type")
        assert httpx.get(f"{url}/healthz").status_code == 200


# ----------------------------------------------------------------------------- 6. a worker crash


def test_worker_crash_fails_only_its_clip(media_dir, clip):
    """With one worker, a clip that kills it while two more wait: the crashing clip gets the 422,
    the waiting ones are answered by the replacement worker."""
    app = create_app(media_dir, ServeSettings(media_workers=1), featurizer=fake_featurizer)
    data = clip.read_bytes()

    async def fire(url):
        async with httpx.AsyncClient(base_url=url, timeout=120) as client:
            async def send(transcript, delay):
                await asyncio.sleep(delay)
                return await client.post("/v1/predict", files={"file": ("c.mp4", data)}, data={"transcript": transcript})
            warm = await send("hello", 0)  # the worker process is up
            assert warm.status_code == 200, warm.text
            return await asyncio.gather(send("crash later", 0), send("I am happy", 0.3), send("so sad", 0.4))

    with running(app) as url:
        crashed, first, second = asyncio.run(fire(url))
        assert "crash" in _error(crashed, 422, "file")["message"]
        assert first.status_code == 200 and second.status_code == 200, (first.text, second.text)


# ----------------------------------------------------------------------------- 8. probing in the worker


def test_media_is_probed_in_the_worker(media_dir, clip, monkeypatch):
    """The server process never opens a clip with PyAV: a probe there would fail this request."""
    pytest.importorskip("mmerkit.extract.decode")
    import mmerkit.extract.decode as decode

    def not_here(path):
        raise RuntimeError("probed in the server process")

    monkeypatch.setattr(decode, "probe", not_here)  # the spawned worker imports the real one
    app = create_app(media_dir, ServeSettings(media_workers=1), featurizer=fake_featurizer)
    with running(app) as url:
        r = httpx.post(f"{url}/v1/predict", files={"file": ("c.mp4", clip.read_bytes())}, timeout=120)
        assert r.status_code == 200, r.text


# ----------------------------------------------------------------------------- 7. Host and Origin


def test_other_pages_and_rebound_names_are_refused(media_dir):
    app = create_app(media_dir, ServeSettings(media_workers=0), featurizer=fake_featurizer)
    body = {"samples": [{"text": [[0.1] * 8]}]}
    with running(app) as url:
        port = _port(url)
        ok = lambda r: r.status_code == 200  # noqa: E731
        assert ok(httpx.post(f"{url}/v1/predict", json=body))  # no Origin: curl, scripts
        assert ok(httpx.post(f"{url}/v1/predict", json=body, headers={"Origin": url}))  # the page itself
        assert ok(httpx.get(f"{url}/healthz", headers={"Host": f"localhost:{port}"}))
        assert ok(httpx.get(f"{url}/healthz", headers={"Host": f"[::1]:{port}"}))
        err = _error(httpx.post(f"{url}/v1/predict", json=body, headers={"Origin": "http://evil.example"}),
                     403, "Origin")
        assert "other web pages" in err["message"]
        _error(httpx.post(f"{url}/v1/predict", json=body, headers={"Origin": "null"}), 403, "Origin")
        # DNS rebinding: a page of evil.example whose name now points at 127.0.0.1
        _error(httpx.post(f"{url}/v1/predict", json=body,
                          headers={"Host": f"evil.example:{port}", "Origin": f"http://evil.example:{port}"}),
               403, "Host")
        _error(httpx.get(f"{url}/", headers={"Host": "evil.example"}), 403, "Host")
    app = create_app(media_dir, ServeSettings(media_workers=0, allowed_hosts=["lab.example"],
                                              allowed_origins=["http://tools.example:3000"]),
                     featurizer=fake_featurizer)
    with running(app) as url:
        assert httpx.get(f"{url}/healthz", headers={"Host": "lab.example:8000"}).status_code == 200
        assert httpx.post(f"{url}/v1/predict", json=body,
                          headers={"Origin": "http://tools.example:3000"}).status_code == 200


# ----------------------------------------------------------------------------- mmer serve's own checks


def test_serve_refuses_a_port_in_use_before_loading(media_dir, capsys):
    from mmerkit.cli import main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        start = time.monotonic()
        with pytest.raises(SystemExit) as e:
            main(["serve", str(media_dir), "--port", str(port)])
        elapsed = time.monotonic() - start
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"--port {port}" in err and "in use" in err and "serving" not in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert elapsed < 5


@pytest.mark.parametrize("args, env, needle", [
    (["--token", ""], {}, "--token is empty"),
    ([], {"MMERKIT_SERVE_TOKEN": ""}, "MMERKIT_SERVE_TOKEN is set but empty"),
    (["--workers", "0"], {}, "--workers 0"),
])
def test_serve_refuses_empty_token_and_no_workers(media_dir, args, env, needle):
    """Refused before anything is bound or loaded (a subprocess, so a regression that serves
    instead fails by its time limit rather than hanging the suite)."""
    full_env = {**os.environ, "PYTHONPATH": str(SRC), **env}
    proc = subprocess.run([sys.executable, "-m", "mmerkit", "serve", str(media_dir), "--port", "0", *args],
                          env=full_env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert needle in proc.stderr and "Traceback" not in proc.stderr and "serving" not in proc.stderr, proc.stderr
