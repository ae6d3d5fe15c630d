"""The playground page at ``/`` in a real headless Chromium (Debian's /usr/bin/chromium driven by
Playwright), against a real ``farm api`` subprocess and the ``worker`` fixture."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import ROOT, SLOT, Key, Process, unique
from tests.support import api_port, failing_scene, start_api

API_PORT = api_port(SLOT)

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

sync_api = pytest.importorskip("playwright.sync_api")


@pytest.fixture(scope="module")
def api_url(farm_env: dict[str, str], artifacts: Path) -> Iterator[str]:
    proc: Process = start_api(farm_env, artifacts / "api-playground.log")
    yield f"http://127.0.0.1:{API_PORT}"
    proc.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is not installed (make system)")
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture()
def page(browser: Any, api_url: str, api_key: Key) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1000, "height": 1400})
    p = context.new_page()
    errors: list[str] = []
    p.on("pageerror", lambda exc: errors.append(str(exc)))
    p.goto(api_url + "/")
    # The key is pasted once and kept in localStorage
    p.get_by_label("Key", exact=True).fill(api_key.key)
    p.get_by_role("button", name="Save key").click()
    sync_api.expect(p.locator("#key-status")).to_contain_text("credits")
    yield p
    context.close()
    assert errors == [], errors


def test_static_assets_are_served(api_url: str) -> None:
    index = requests.get(api_url + "/", timeout=10)
    assert index.status_code == 200 and "text/html" in index.headers["Content-Type"]
    texts = [index.text]
    for asset in ("/static/app.js", "/static/style.css"):
        response = requests.get(api_url + asset, timeout=10)
        assert response.status_code == 200
        texts.append(response.text)
    # No third-party origins (no CDN): everything the page loads comes from this server
    assert all("://" not in text for text in texts)


def test_render_and_play_in_the_page(
    page: Any, worker: Process, artifacts: Path, api_key: Key
) -> None:
    # Given the prefilled example, made unique so the cache does not answer
    code = page.locator("#code")
    code.fill(code.input_value() + f"# {unique()}\n")
    assert page.get_by_label("Scene class").input_value() == "Hello"
    page.get_by_label("Quality").select_option("low")
    page.get_by_label("Aspect ratio").select_option("16:9")
    # When it is submitted
    page.get_by_role("button", name="Render").click()
    # Then the status line follows the job and the video loads in the page
    status = page.locator("#status")
    sync_api.expect(status).to_contain_text("job_", timeout=15_000)
    assert status.get_attribute("aria-live") == "polite"
    sync_api.expect(status).to_contain_text("completed", timeout=180_000)
    page.wait_for_function("() => document.getElementById('video').readyState >= 2", timeout=30_000)
    # The captions were attached as a track (fetched, then a blob: URL)
    page.wait_for_function("() => document.querySelector('#video track') !== null", timeout=15_000)
    cues = page.evaluate("""async () => {
        const track = document.querySelector('#video track').track;
        track.mode = 'showing';
        for (let i = 0; i < 50 && !(track.cues && track.cues.length); i++)
            await new Promise(r => setTimeout(r, 100));
        return track.cues ? Array.from(track.cues).map(c => c.text) : [];
    }""")
    assert cues == ["A blue square appears"]
    # Show a frame with the caption for the screenshot
    page.evaluate("""() => new Promise(r => { const v = document.getElementById('video');
        v.addEventListener('seeked', r, {once: true}); v.currentTime = 0.6; })""")
    # The recent-jobs table lists it
    sync_api.expect(page.locator("#jobs tbody")).to_contain_text("completed")
    shot = artifacts / "playground.png"
    page.screenshot(path=str(shot), full_page=True)
    docs_shot = ROOT / "docs" / "playground.png"
    if not docs_shot.exists():  # saved once for the docs; delete it to refresh
        shutil.copyfile(shot, docs_shot)
    # And the key survived a reload (localStorage)
    page.reload()
    assert page.get_by_label("Key", exact=True).input_value() == api_key.key


def test_failure_shows_the_scene_error_and_log(page: Any, worker: Process, artifacts: Path) -> None:
    message = f"the playground scene broke {unique()}"
    page.locator("#code").fill(failing_scene(message))
    # The class field follows the code
    assert page.get_by_label("Scene class").input_value() == "Broken"
    page.get_by_role("button", name="Render").click()
    sync_api.expect(page.locator("#status")).to_contain_text("failed", timeout=120_000)
    sync_api.expect(page.locator("#error")).to_contain_text(message)
    sync_api.expect(page.locator("#failure")).to_be_visible()
    assert not page.locator("#result").is_visible()
    page.screenshot(path=str(artifacts / "playground-failure.png"), full_page=True)


def test_validation_error_is_shown(page: Any) -> None:
    page.locator("#code").fill("   ")
    page.get_by_label("Scene class").fill("A")
    page.get_by_role("button", name="Render").click()
    sync_api.expect(page.locator("#status")).to_contain_text("validation_error")
    sync_api.expect(page.locator("#error")).to_contain_text("code")
