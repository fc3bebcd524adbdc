"""The page at `/` in a real headless Chromium (Debian's chromium + chromium-driver, via Selenium).

Uploads a test clip with a transcript, picks a sample, and provokes an error, each time
checking what the page shows against the API's own answer. A screenshot of the result is kept
in tests/artifacts/serve_page.png. Skipped, with the reason, only where Chromium or its driver
cannot be installed (`make test` installs them with apt-get where it runs as root).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install 'mmerkit[serve]'")
httpx = pytest.importorskip("httpx", reason="the serve extra is not installed: pip install 'mmerkit[serve]'")

from serve_helpers import chromium, fake_featurizer, media_export, running, train_export, write_clip  # noqa: E402

from mmerkit.serve import ServeSettings, create_app  # noqa: E402

TOKEN = "browser-token"
ARTIFACTS = Path(__file__).parent / "artifacts"


def _chromium():
    """A headless Chromium driven by Debian's chromedriver; skips (saying why) where absent."""
    return chromium()


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("browser")
    export = media_export(train_export(root), root / "media")
    settings = ServeSettings(token=TOKEN, media_workers=0, examples=str(root / "store"), max_examples=5)
    app = create_app(export, settings, featurizer=fake_featurizer)
    clip = write_clip(root / "interview.mp4", 1.5)
    with running(app) as url:
        browser = _chromium()
        try:
            # the token on every request the page makes, as a reverse proxy or extension would add it
            browser.execute_cdp_cmd("Network.enable", {})
            browser.execute_cdp_cmd("Network.setExtraHTTPHeaders",
                                    {"headers": {"Authorization": f"Bearer {TOKEN}"}})
            yield url, browser, clip, root
        finally:
            browser.quit()


def _api(url: str, **kw) -> dict:
    r = httpx.post(f"{url}/v1/predict", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60, **kw)
    assert r.status_code == 200, r.text
    return r.json()["predictions"][0]


def _wait_done(browser, timeout: float = 30) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def finished(d):
        return d.find_element(By.ID, "status").text.startswith("done") or d.find_element(By.ID, "error").is_displayed()

    WebDriverWait(browser, timeout).until(finished)


def _open(browser, url: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(url + "/")
    WebDriverWait(browser, 20).until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1")
    assert d_text(browser, "model-meta").startswith("model "), d_text(browser, "model-meta")


def d_text(browser, element_id: str) -> str:
    from selenium.webdriver.common.by import By

    return browser.find_element(By.ID, element_id).text


def _shown(browser) -> dict:
    """What the page shows: predicted chips, bar probabilities, heatmap cells."""
    from selenium.webdriver.common.by import By

    chips = [c.text for c in browser.find_elements(By.CSS_SELECTOR, "#labels .chip:not(.none)")]
    bars = {b.get_attribute("data-label"): float(b.get_attribute("data-prob"))
            for b in browser.find_elements(By.CSS_SELECTOR, "#bars .fill")}
    pct = {p.get_attribute("data-label"): p.text for p in browser.find_elements(By.CSS_SELECTOR, "#bars .pct")}
    cells = {(c.get_attribute("data-modality"), c.get_attribute("data-label")): c.text
             for c in browser.find_elements(By.CSS_SELECTOR, "#heat-table td")}
    return {"chips": chips, "bars": bars, "pct": pct, "cells": cells}


def _check_against(shown: dict, pred: dict) -> None:
    assert shown["chips"] == pred["labels"]
    assert set(shown["bars"]) == set(pred["probabilities"])
    for label, p in pred["probabilities"].items():
        assert shown["bars"][label] == pytest.approx(p, abs=1e-6)
        assert shown["pct"][label] == f"{100 * p:.1f}%"
    scores = pred["modality_label_scores"]
    assert len(shown["cells"]) == len(scores) * len(pred["probabilities"])
    for (m, label), text in shown["cells"].items():
        # an absent modality is shown as absent, never as a (possibly darkest) relevance cell
        assert text == (f"{scores[m][label]:.2f}" if m in pred["modalities_present"] else "absent")


def test_a_clip_without_text_shows_text_as_absent(site):
    """Issue 20 item 2: no transcript -> text is absent; it is neither the top modality nor shaded."""
    from selenium.webdriver.common.by import By

    url, browser, clip, _ = site
    _open(browser, url)
    browser.find_element(By.ID, "file").send_keys(str(clip))
    browser.find_element(By.ID, "predict").click()
    _wait_done(browser)
    pred = _api(url, files={"file": ("c.mp4", clip.read_bytes())})
    assert "text" not in pred["modalities_present"]
    assert set(pred["top_modality"].values()) <= set(pred["modalities_present"])
    shown = _shown(browser)
    _check_against(shown, pred)
    assert {text for (m, _), text in shown["cells"].items() if m == "text"} == {"absent"}


def test_upload_a_clip_and_see_the_emotions(site):
    from selenium.webdriver.common.by import By

    url, browser, clip, _ = site
    _open(browser, url)
    assert "carat" in browser.find_element(By.ID, "model-meta").text
    browser.find_element(By.ID, "file").send_keys(str(clip))
    browser.find_element(By.ID, "transcript").send_keys("I am so happy today")
    browser.find_element(By.ID, "predict").click()
    _wait_done(browser)
    assert not browser.find_element(By.ID, "error").is_displayed(), browser.find_element(By.ID, "error").text
    pred = _api(url, files={"file": ("c.mp4", clip.read_bytes())}, data={"transcript": "I am so happy today"})
    _check_against(_shown(browser), pred)
    assert browser.find_element(By.ID, "result").get_attribute("data-sample") == "upload"
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "serve_page.png"
    browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000


def test_pick_a_sample(site):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    url, browser, _, _ = site
    _open(browser, url)
    select = Select(browser.find_element(By.ID, "example"))
    assert len(select.options) == 6  # the prompt + 5 samples of the store's test split
    select.select_by_value("2")
    browser.find_element(By.ID, "predict").click()
    _wait_done(browser)
    sample = httpx.get(f"{url}/v1/examples/2", headers={"Authorization": f"Bearer {TOKEN}"}).json()
    pred = _api(url, json=sample)
    _check_against(_shown(browser), pred)
    assert browser.find_element(By.ID, "result").get_attribute("data-sample") == sample["samples"][0]["id"]


def test_errors_are_shown_not_swallowed(site):
    from selenium.webdriver.common.by import By

    url, browser, _, root = site
    fake = root / "holiday.mp4"
    fake.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
    _open(browser, url)
    browser.find_element(By.ID, "file").send_keys(str(fake))
    browser.find_element(By.ID, "predict").click()
    _wait_done(browser)
    error = browser.find_element(By.ID, "error")
    assert error.is_displayed() and "file: is a PNG image" in error.text and "send a video or audio file" in error.text
    _open(browser, url)
    browser.find_element(By.ID, "predict").click()  # nothing chosen
    assert "choose a clip or pick a sample" in browser.find_element(By.ID, "error").text


def test_page_is_self_contained(site):
    url, browser, _, _ = site
    html = httpx.get(f"{url}/", headers={"Authorization": f"Bearer {TOKEN}"}).text
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)  # no CDN, no external file
    assert "<script>" in html and "<style>" in html
    _open(browser, url)
    loaded = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert all(u.startswith(url) for u in loaded), loaded


def test_api_docs_render_offline(site):
    """/docs shows every endpoint with Swagger UI served by the server itself (no CDN)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    url, browser, _, _ = site
    browser.get(url + "/docs")
    WebDriverWait(browser, 20).until(lambda d: d.find_elements(By.CSS_SELECTOR, ".opblock-summary-path"))
    paths = {e.text for e in browser.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")}
    assert {"/v1/predict", "/v1/model", "/healthz"} <= paths
    loaded = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert loaded and all(u.startswith(url) for u in loaded), loaded


def test_login_in_the_address_works(site):
    """A browser user opens http://user:TOKEN@127.0.0.1:PORT/ (Basic credentials in the URL, no
    extra headers): the page's requests must not carry the credentials in their URLs (fetch()
    refuses those), so the card loads and a prediction goes through with the browser's login."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    url, _, _, _ = site
    browser = _chromium()  # a fresh one: no Authorization header added by the test
    try:
        browser.set_page_load_timeout(30)
        browser.get(url.replace("http://", f"http://someone:{TOKEN}@") + "/")
        WebDriverWait(browser, 20).until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1")
        assert d_text(browser, "model-meta").startswith("model "), d_text(browser, "model-meta")
        assert not browser.find_element(By.ID, "error").is_displayed(), d_text(browser, "error")
        Select(browser.find_element(By.ID, "example")).select_by_value("1")
        browser.find_element(By.ID, "predict").click()
        _wait_done(browser)
        assert not browser.find_element(By.ID, "error").is_displayed(), d_text(browser, "error")
        sample = httpx.get(f"{url}/v1/examples/1", headers={"Authorization": f"Bearer {TOKEN}"}).json()
        _check_against(_shown(browser), _api(url, json=sample))
    finally:
        browser.quit()
