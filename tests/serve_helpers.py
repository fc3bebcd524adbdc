"""Shared by the serve tests: a tiny trained export, a server on a free loopback port, test
clips written with PyAV, and a fake featurizer (importable by name, so spawned workers find it)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import stat
import threading
import time
from pathlib import Path

import numpy as np

PARENT_PID_ENV = "MMERKIT_TEST_SERVER_PID"
CARAT_TINY = ["model.hidden_size=16", "model.intermediate_size=32", "model.proj_size=16", "model.moco_queue=64",
              "train.progress=false"]
# what an export made from `mmer extract` data records (the shape of mmerkit.extract's records)
FAKE_MEDIA = {"extract": {"config": {"text": "fake-text", "audio": "fake-audio", "visual": None},
                          "level": "utterance"},
              "extractors": {"text": {"name": "fake-text", "dim": 8}, "audio": {"name": "fake-audio", "dim": 4}}}


def train_export(root: Path, model: str = "carat") -> Path:
    """A 1-epoch model on the toy store (text 8, audio 4; labels happy, sad, anger): its export dir."""
    from helpers import TINY, toy_store

    from mmerkit import api

    store = toy_store(root / "store")
    if model == "carat":
        [res] = api.train("carat", store.path, out=root / "runs", epochs=1, config="carat-small", overrides=CARAT_TINY)
    else:
        [res] = api.train(model, store.path, out=root / "runs", epochs=1, overrides=[*TINY, "train.progress=false"])
    return res.run_dir / "export"


def media_export(export: Path, dest: Path) -> Path:
    """A copy of `export` (with its run records) whose config records an extractor configuration,
    as an export trained on extracted media does: the server then accepts clips."""
    run = dest / "run"
    shutil.copytree(export.parent, run)
    cfg_path = run / "export" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.update(FAKE_MEDIA)
    cfg_path.write_text(json.dumps(cfg))
    return run / "export"


@contextlib.contextmanager
def running(app, log_level: str = "error"):
    """Serve `app` with uvicorn in a thread on a free 127.0.0.1 port; yields the base URL."""

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    from mmerkit.serve.runner import DrainingServer, uvicorn_config

    state = app.state.serve
    # the configuration `mmer serve` runs with: its connection limits, head deadline and drain
    config = uvicorn_config(app, state.settings.model_copy(update={"shutdown_grace_s": 2}), log_level=log_level)
    server = DrainingServer(config, state)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def write_clip(path: Path, seconds: float = 1.0, video: bool = True, audio: bool = True, tone: float = 440.0,
               image: np.ndarray | None = None) -> Path:
    """A small mp4 (or .wav for audio only) made with PyAV: moving gradient frames (or `image`,
    e.g. a face from `skimage.data.astronaut()`, in every frame) and a sine tone."""
    import av

    from mmerkit.extract.demo import mux_audio

    fmt = "wav" if not video else "mp4"
    with av.open(str(path), "w", format=fmt) as out:
        vs = out.add_stream("mpeg4", rate=10) if video else None
        if vs is not None:
            h, w = (48, 64) if image is None else (image.shape[0] // 2 * 2, image.shape[1] // 2 * 2)
            vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        aus = out.add_stream("aac" if video else "pcm_s16le", rate=16000) if audio else None
        if vs is not None:
            for i in range(int(seconds * 10)):
                if image is not None:
                    img = np.ascontiguousarray(image[:h, :w, :3], dtype=np.uint8)
                else:
                    img = np.zeros((48, 64, 3), np.uint8)
                    img[..., 0] = (np.arange(64)[None, :] * 4 + i * 10) % 256
                    img[..., 1] = 120
                frame = av.VideoFrame.from_ndarray(img, format="rgb24")
                for packet in vs.encode(frame):
                    out.mux(packet)
            for packet in vs.encode():
                out.mux(packet)
        if aus is not None:
            n = int(seconds * 16000)
            mux_audio(out, aus, (0.3 * np.sin(2 * np.pi * tone * np.arange(n) / 16000) * 32767).astype(np.int16), 16000)
    return path


def fake_featurizer(path: str, transcript: str | None, config: dict | None) -> dict[str, np.ndarray]:
    """Deterministic features from a clip's duration and its transcript (the toy model's dims).

    It also checks what the server promises: it runs in another process than the server's,
    gets a server-named file inside a 0700 directory, and receives the export's extractor
    configuration. `transcript` "sleep" waits 2 s ("sleep long" 60 s); "crash" kills the worker
    ("crash later" after 1.5 s)."""
    if transcript == "crash":
        os._exit(3)
    if transcript == "crash later":  # while other clips wait for this worker
        time.sleep(1.5)
        os._exit(3)
    if transcript == "sleep":
        time.sleep(2.0)
    if transcript == "sleep long":
        time.sleep(60.0)
    parent = os.environ.get(PARENT_PID_ENV)
    if parent is not None and int(parent) == os.getpid():
        raise RuntimeError("featurizer ran in the server process")
    folder = Path(path).parent
    if stat.S_IMODE(folder.stat().st_mode) != 0o700 or not Path(path).name.startswith("upload-"):
        raise RuntimeError(f"upload not in a private directory: {path}")
    if config != FAKE_MEDIA:
        raise RuntimeError(f"wrong extractor config {config}")
    return {**fake_features(media_seconds(path), transcript), "transcript": transcript}


def media_seconds(path: str) -> float:
    import av

    with av.open(path) as c:
        return c.duration / 1_000_000.0


def fake_features(seconds: float, transcript: str | None) -> dict[str, np.ndarray]:
    steps = max(1, round(seconds * 4))
    words = (transcript or "").split()
    text = np.zeros((len(words), 8), np.float32)
    for i, w in enumerate(words):  # label j's text feature at step 1 drives the toy model
        text[i, len(w) % 8] = 2.0
    audio = np.tile(np.linspace(-1, 1, 4, dtype=np.float32) * seconds, (steps, 1))
    return {"text": text, "audio": audio}


def write_live_webm(path: Path, seconds: float) -> Path:
    """Silence in a WebM written as a browser records live: no duration in the container."""
    import av

    with av.open(str(path), "w", format="webm", options={"live": "1"}) as out:
        stream = out.add_stream("libopus", rate=48000)
        stream.layout = "mono"
        silence = np.zeros((1, 960), np.float32)
        for i in range(int(seconds * 50)):
            frame = av.AudioFrame.from_ndarray(silence, format="flt", layout="mono")
            frame.sample_rate, frame.pts = 48000, i * 960
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def serve_in_this_process(export: str, port_file: str) -> None:
    """`mmerkit.serve.serve` with the fake featurizer, as `mmer serve` runs (signals, workers):
    for tests that stop a real server process. Writes the bound port to `port_file`."""
    from mmerkit.serve import ServeSettings, serve
    from mmerkit.serve.runner import bind_socket

    sock = bind_socket("127.0.0.1", 0)
    Path(port_file).write_text(str(sock.getsockname()[1]))
    serve(export, ServeSettings(media_workers=1, shutdown_grace_s=3), sock=sock, featurizer=fake_featurizer)


@contextlib.contextmanager
def log_records(*names: str):
    """Records the named loggers emit meanwhile. Enter it once the server runs: uvicorn's logging
    set-up (made with its Config) replaces the handlers of its loggers."""
    import logging

    records: list[logging.LogRecord] = []
    handler = logging.Handler()

    def keep(record: logging.LogRecord) -> None:  # once, though it propagates through several of `names`
        if not any(r is record for r in records):
            records.append(record)

    handler.emit = keep  # type: ignore[method-assign]
    loggers = [logging.getLogger(n) for n in names]
    for lg in loggers:
        lg.addHandler(handler)
    try:
        yield records
    finally:
        for lg in loggers:
            lg.removeHandler(handler)


def chromium(*extra_args: str):
    """A headless Chromium driven by Debian's chromedriver (Selenium), with `extra_args` on its
    command line (e.g. fake capture devices); skips the test, saying why, where either is absent."""
    import pytest

    try:
        from selenium import webdriver
    except ImportError:
        pytest.skip("selenium is not installed (pip install 'mmerkit[browser-tests]')")
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not binary or not driver:
        pytest.skip("Chromium or chromedriver is not installed: apt-get install chromium chromium-driver "
                    "(`make test` does it where it runs as root)")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,860", "--disable-extensions", "--no-first-run", *extra_args):
        options.add_argument(arg)
    return webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver))
