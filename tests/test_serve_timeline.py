"""POST /v1/timeline (issue 24, item 3): a recording in, NDJSON lines out, one per window, through
a real server with an extraction worker process and the fake extractors (tests/fake_extractors.py)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install 'mmerkit[serve]'")
httpx = pytest.importorskip("httpx", reason="the serve extra is not installed: pip install 'mmerkit[serve]'")
pytest.importorskip("av", reason="PyAV writes the test recordings: pip install 'mmerkit[media]'")

from helpers import extracted_export  # noqa: E402
from serve_helpers import running  # noqa: E402

from mmerkit.extract.demo import write_recording  # noqa: E402
from mmerkit.serve import ServeSettings, create_app  # noqa: E402

TOKEN = "timeline-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def tone(seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * 16000)) / 16000
    return (0.3 * np.sin(2 * np.pi * 220 * t) * 32767).astype(np.int16)


def dark_then_colour(switch: float):
    dark, lit = np.zeros((32, 32, 3), np.uint8), np.full((32, 32, 3), (200, 80, 40), np.uint8)
    return lambda t: dark if t < switch else lit


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    export = extracted_export(tmp_path_factory.mktemp("timeline_export"))
    app = create_app(export, ServeSettings(token=TOKEN, media_workers=1, max_timeline_seconds=40))
    with running(app) as url:
        yield url, app


@pytest.fixture(scope="module")
def recording(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("recordings")
    return write_recording(d / "talk.mp4", 11.0, picture=dark_then_colour(5.0), wave=tone(11.0))


def post(url: str, path: Path, **fields: str) -> httpx.Response:
    with open(path, "rb") as f:
        return httpx.post(url + "/v1/timeline", files={"file": (path.name, f)}, data=fields, headers=AUTH, timeout=120)


def lines(response: httpx.Response) -> list[dict]:
    return [json.loads(line) for line in response.text.splitlines()]


def leftovers(app) -> list[Path]:
    """Files and folders left in the server's upload area. A folder the server deletes while this
    walks it is read again, so the answer is one whole listing, never a half-deleted one."""
    while True:
        try:
            return [p for p in app.state.serve.uploads.path.rglob("*")]
        except FileNotFoundError:
            time.sleep(0.05)


def test_timeline_streams_one_line_per_window(server, recording):
    url, app = server
    with open(recording, "rb") as f, httpx.stream("POST", url + "/v1/timeline", files={"file": ("t.mp4", f)},
                                                  data={"window": "4", "hop": "2"}, headers=AUTH, timeout=120) as res:
        assert res.status_code == 200 and res.headers["content-type"].startswith("application/x-ndjson")
        assert "content-length" not in res.headers  # streamed, not buffered
        rows = [json.loads(line) for line in res.iter_lines() if line]
    *windows, done = rows
    assert done == {"done": True, "windows": 5, "media": {"kind": "mp4", "duration": 11.0}}
    assert [(w["start"], w["end"]) for w in windows] == [(0, 4), (2, 6), (4, 8), (6, 10), (8, 11)]
    assert windows[0]["missing"] == ["visual"] and all(w["missing"] == [] for w in windows[1:])
    assert set(windows[0]["probabilities"]) == {"anger", "joy", "sad"}
    assert all(w["modality"] in ("text", "audio", "visual") for w in windows) and windows[0]["modality"] != "visual"
    assert windows[1]["transcript"].split()[0] == "w4"
    # the same rows as `mmer predict --window` gives (same extractors, same model)
    from mmerkit.predict import Predictor

    tl = Predictor.from_pretrained(app.state.serve.model.export_dir).predict_timeline(recording, window=4, hop=2)
    np.testing.assert_allclose([[w["probabilities"][lab] for lab in tl.labels] for w in windows], tl.probs, atol=1e-4)
    deadline = time.monotonic() + 10  # the upload and its window files are deleted once the job ends
    while leftovers(app) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert leftovers(app) == []


def test_defaults_window_4_hop_half(server, recording):
    url, _ = server
    res = post(url, recording)
    assert res.status_code == 200
    assert [r["start"] for r in lines(res)[:-1]] == [0, 2, 4, 6, 8]


@pytest.mark.parametrize("fields, status, field", [
    ({"window": "4", "hop": "6"}, 422, "hop"),
    ({"window": "abc"}, 422, "window"),
    ({"window": "-1"}, 422, "window"),
    ({"transcript": "hello"}, 422, "transcript"),
])
def test_bad_window_fields_are_422(server, recording, fields, status, field):
    url, app = server
    res = post(url, recording, **fields)
    assert res.status_code == status and res.json()["error"]["field"] == field, res.text
    assert leftovers(app) == []


def test_too_long_recording_is_refused_before_any_window(server, tmp_path):
    url, app = server
    long = write_recording(tmp_path / "long.mp4", 45.0, picture=None, wave=tone(45.0))
    res = post(url, long)
    assert res.status_code == 422 and "at most 40 s" in res.json()["error"]["message"]
    time.sleep(0.3)
    assert leftovers(app) == []


def test_not_media_and_no_token(server, tmp_path, recording):
    url, _ = server
    (tmp_path / "x.mp4").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    assert post(url, tmp_path / "x.mp4").status_code == 415
    res = httpx.post(url + "/v1/timeline", json={"samples": []}, headers=AUTH)
    assert res.status_code == 415
    with open(recording, "rb") as f:
        assert httpx.post(url + "/v1/timeline", files={"file": ("t.mp4", f)}).status_code == 401


def test_client_leaving_mid_stream_stops_the_job_and_deletes_files(server, tmp_path):
    url, app = server
    long = write_recording(tmp_path / "long.mp4", 38.0, picture=dark_then_colour(0.0), wave=tone(38.0))
    with open(long, "rb") as f, httpx.stream("POST", url + "/v1/timeline", files={"file": ("t.mp4", f)},
                                             data={"window": "2", "hop": "1"}, headers=AUTH, timeout=120) as res:
        first = next(line for line in res.iter_lines() if line)
        assert "start" in json.loads(first)
    deadline = time.monotonic() + 20
    while leftovers(app) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert leftovers(app) == []
    assert post(url, long, window="4").status_code == 200  # the worker is free again


def test_a_features_model_refuses_media_on_both_endpoints(tmp_path, recording):
    """A model trained on given features has no extractors: a clip and a recording are each one
    422 naming the file field, with the endpoint's own suggestion (one shared check)."""
    from serve_helpers import train_export

    app = create_app(train_export(tmp_path), ServeSettings(token=TOKEN, media_workers=0))
    with running(app) as url:
        answers = {}
        for route in ("/v1/predict", "/v1/timeline"):
            with open(recording, "rb") as f:
                res = httpx.post(url + route, files={"file": ("talk.mp4", f)}, headers=AUTH, timeout=60)
            assert res.status_code == 422, (route, res.text)
            answers[route] = res.json()
    assert all("trained on given features" in json.dumps(a) for a in answers.values())
    assert "JSON or .npz" in json.dumps(answers["/v1/predict"])
    assert "POST /v1/predict with features" in json.dumps(answers["/v1/timeline"])
