"""The page's "Emotions over time" in a real headless Chromium (issue 24, items 3-5): an uploaded
recording fills `#timeline` window by window, and live mode records the (fake) camera and
microphone, fed from files this test generates, one self-contained WebM per window. The server
has a token; the browser logs in through the address (Basic credentials), as a person would.
Skipped, with the reason, only where Chromium, its driver or selenium is missing.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install 'mmerkit[serve]'")
pytest.importorskip("av", reason="PyAV writes the test recordings: pip install 'mmerkit[media]'")

from helpers import extracted_export  # noqa: E402
from serve_helpers import chromium, running  # noqa: E402

from mmerkit.extract.demo import write_recording  # noqa: E402
from mmerkit.serve import ServeSettings, create_app  # noqa: E402

TOKEN = "live-token"
ARTIFACTS = Path(__file__).parent / "artifacts"


def write_y4m(path: Path, seconds: float, fps: int = 10) -> Path:
    """A raw YUV4MPEG2 video (what Chromium's fake camera plays): a colour that drifts."""
    import av

    with av.open(str(path), "w", format="yuv4mpegpipe") as out:
        stream = out.add_stream("rawvideo", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 160, 120, "yuv420p"
        for k in range(int(seconds * fps)):
            rgb = np.full((120, 160, 3), (200, (8 * k) % 256, 40), np.uint8)
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
            frame.pts = k
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def tone(seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * 16000)) / 16000
    return (0.3 * np.sin(2 * np.pi * 220 * t) * 32767).astype(np.int16)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("browser_timeline")
    export = extracted_export(root)
    app = create_app(export, ServeSettings(token=TOKEN, media_workers=0))
    camera = write_y4m(root / "camera.y4m", 3.0)
    microphone = write_recording(root / "microphone.wav", 3.0, picture=None, wave=tone(3.0))
    with running(app) as url:
        browser = chromium("--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                                 f"--use-file-for-fake-video-capture={camera}",
                                 f"--use-file-for-fake-audio-capture={microphone}")
        try:
            yield url, app, browser, root
        finally:
            browser.quit()


def _open(browser, url: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(url.replace("http://", f"http://someone:{TOKEN}@") + "/")  # the token, as a login
    WebDriverWait(browser, 20).until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1")


def _windows(browser) -> list[dict]:
    from selenium.webdriver.common.by import By

    return [{"start": float(w.get_attribute("data-start")), "end": float(w.get_attribute("data-end")),
             "labels": w.get_attribute("data-labels"), "missing": w.get_attribute("data-missing")}
            for w in browser.find_elements(By.CSS_SELECTOR, "#timeline > .win")]


def _error(browser) -> str:
    from selenium.webdriver.common.by import By

    box = browser.find_element(By.ID, "error")
    return box.text if box.is_displayed() else ""


def test_an_uploaded_recording_fills_the_timeline(site):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    url, _, browser, root = site
    light = np.full((32, 32, 3), (200, 80, 40), np.uint8)
    path = write_recording(root / "talk.mp4", 11.0, picture=lambda t: light * (t >= 5), wave=tone(11.0))
    _open(browser, url)
    browser.find_element(By.ID, "timeline-file").send_keys(str(path))
    browser.find_element(By.ID, "timeline-run").click()
    WebDriverWait(browser, 60).until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-timeline")
                                     == "done" or _error(d))
    assert not _error(browser), _error(browser)
    shown = _windows(browser)
    assert [(w["start"], w["end"]) for w in shown] == [(0, 4), (2, 6), (4, 8), (6, 10), (8, 11)]
    assert shown[0]["missing"] == "visual" and shown[1]["missing"] == ""
    assert "5 windows" in browser.find_element(By.ID, "timeline-status").text
    ARTIFACTS.mkdir(exist_ok=True)
    browser.execute_script("document.getElementById('over-time').scrollIntoView()")
    browser.save_screenshot(str(ARTIFACTS / "serve_timeline.png"))


def test_live_camera_and_microphone_yield_windows(site):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    url, app, browser, _ = site
    _open(browser, url)
    assert "deletes the clip" in browser.find_element(By.ID, "live-note").text
    window = browser.find_element(By.ID, "window")
    window.clear()
    window.send_keys("1.5")
    assert browser.execute_script("return recorderType()").startswith("video/webm;codecs=vp")  # VP8/VP9 + Opus
    browser.find_element(By.ID, "live-start").click()
    WebDriverWait(browser, 60).until(lambda d: len(_windows(d)) >= 2 or _error(d))
    browser.find_element(By.ID, "live-stop").click()
    assert not _error(browser), _error(browser)
    shown = _windows(browser)
    assert len(shown) >= 2 and shown[0]["start"] < shown[1]["start"]
    assert all(1.0 < w["end"] - w["start"] < 2.5 for w in shown[:2])  # one recording per window
    # the server decoded both tracks of each whole window's WebM segment (the fake camera shows no
    # black frame); the segment that Stop cuts short may hold no video frame yet
    whole = [w for w in shown if w["end"] - w["start"] > 1.0]
    assert len(whole) >= 2 and all("audio" not in w["missing"] and "visual" not in w["missing"]
                                   for w in whole), shown
    time.sleep(1.0)
    assert not list(app.state.serve.uploads.path.rglob("*"))  # every segment deleted after its prediction
    assert browser.find_element(By.ID, "live-stop").get_attribute("disabled")
