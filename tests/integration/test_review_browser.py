"""The review page in a real browser: Debian's headless Chromium driven by Playwright.

Each test opens the page a user would open (from file://, or from `ledger review --serve`),
checks what a person would see or do, and saves a screenshot in its temp folder."""
from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Iterator

import pytest
import requests

from ledger.sim import POLICY_MESSAGE
from tests.helpers import segments, spawn
from tests.integration.takes import BOARD, STORY, generate, picks

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]
LOADED = "v => v !== null && v.readyState >= 1 && v.duration > 0"


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not os.path.exists(CHROMIUM):
        message = f"{CHROMIUM} is missing: apt-get install chromium (.ci/run does)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield launched
        launched.close()


@pytest.fixture
def page(browser, tmp_path):
    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    opened = context.new_page()
    errors = []
    opened.on("pageerror", lambda exc: errors.append(str(exc)))
    yield opened
    opened.screenshot(path=str(tmp_path / "screenshot.png"), full_page=True)
    context.close()
    assert errors == [], errors


def review_page(ws, *args: str) -> Path:
    result = ws.cli("review", *args)
    assert result.exit_code == 0, result.output
    return ws.root / result.output.strip().splitlines()[-1]


def test_every_done_take_plays_from_file_and_failures_show_the_api_message(ws, work_env, page):
    generate(ws, work_env)
    path = review_page(ws)
    assert path == ws.root / "output/review.html"
    page.goto(path.as_uri())
    players = page.locator("figure.take.done .player")
    assert players.count() == 4
    for n in range(4):
        players.nth(n).scroll_into_view_if_needed()
        page.wait_for_function(f"() => ({LOADED})(document.querySelectorAll('figure.take.done .player')[{n}]"
                               ".querySelector('video'))", timeout=10_000)
        video = players.nth(n).locator("video")
        assert video.evaluate("v => [v.controls, v.muted, v.preload]") == [True, True, "metadata"]
        assert video.evaluate("v => v.duration") == pytest.approx(2.0, abs=0.1)  # the simulator's real MP4
    assert page.locator("figure.take.failed .error").all_inner_texts() == [POLICY_MESSAGE, POLICY_MESSAGE]
    first = page.locator("article.segment").first
    assert first.locator(".prompt").inner_text() == "无人机俯瞰黄昏时的霓虹城市。"
    assert "开场镜头，建立世界观。" in first.locator(".intent").inner_text()
    assert "15 s · vertical · normal" in page.locator("article.segment").nth(1).inner_text()
    summary = page.locator("header.summary").inner_text()
    assert "4 done" in summary and "2 failed" in summary and "$1.80" in summary and "picked 0 of 3" in summary


def test_videos_are_fetched_only_when_scrolled_into_view(ws, work_env, page):
    generate(ws, work_env, {"storyboard_long.json": segments(*[f"shot {i}" for i in range(1, 13)])}, versions=1)
    page.set_viewport_size({"width": 1000, "height": 600})
    page.goto(review_page(ws).as_uri())
    page.wait_for_function("() => document.querySelector('.player video') !== null", timeout=10_000)
    page.wait_for_timeout(500)  # time enough for any other player to start, were it going to
    started = "() => Array.from(document.querySelectorAll('.player')).map(p => p.querySelector('video') !== null)"
    before = page.evaluate(started)
    assert len(before) == 12 and 0 < sum(before) < 6 and not before[-1]
    page.locator("article.segment").last.scroll_into_view_if_needed()
    page.wait_for_function(f"() => ({LOADED})(Array.from(document.querySelectorAll('.player')).pop()"
                           ".querySelector('video'))", timeout=10_000)
    assert sum(page.evaluate(started)) < 12  # the middle ones were never near the screen


def test_static_picks_stay_in_the_browser_and_come_back_through_picks_json(ws, work_env, page, tmp_path):
    generate(ws, work_env)
    ws.cli("pick", "storyboard_a#1v1")
    page.goto(review_page(ws).as_uri())
    segment1, segment2 = page.locator("article.segment").nth(0), page.locator("article.segment").nth(1)
    segment1.locator("figure.take").nth(1).locator("button.choose").click()
    assert segment1.get_attribute("data-picked") == segment1.locator("figure.take").nth(1).get_attribute("data-job")
    page.keyboard.press("j")  # from segment 1 to segment 2 …
    page.keyboard.press("2")  # … and choose its second take
    assert "picked" in (segment2.locator("figure.take").nth(1).get_attribute("class") or "")
    assert "2 choice(s) kept in this browser only" in page.locator("#unsaved").inner_text()
    page.reload()  # kept in the browser
    assert page.locator("#picked-count").inner_text() == "2"
    with page.expect_download() as download:
        page.locator("#download-picks").click()
    target = tmp_path / "picks.json"
    download.value.save_as(str(target))
    document = json.loads(target.read_text(encoding="utf-8"))
    assert [(p["segment_index"], p["version"]) for p in document["picks"]] == [(1, 2), (2, 2)]
    result = ws.cli("pick", "--from-file", str(target))
    assert result.exit_code == 0, result.output
    assert picks(ws) == [(BOARD, 1, 2), (BOARD, 2, 2)]


def test_serve_writes_a_choice_into_the_ledger_at_once(ws, work_env, page):
    generate(ws, work_env)
    server = spawn(ws.root, work_env, "review", "--serve")
    try:
        line = server.stdout.readline()
        assert line.startswith("Review server: http://127.0.0.1:"), line + server.stderr.read()
        url = line.split(": ", 1)[1].strip()
        origin, token = url.split("/#token=")
        page.goto(url)
        assert "#token" not in page.url  # taken out of the address bar once read
        take2 = page.locator("article.segment").first.locator("figure.take").nth(1)
        take2.locator("button.choose").click()
        page.wait_for_function("() => document.getElementById('status').textContent.includes('saved in the ledger')")
        assert picks(ws) == [(BOARD, 1, 2)]
        page.keyboard.press("j")
        page.keyboard.press("1")
        page.wait_for_function("() => document.getElementById('picked-count').textContent === '2'")
        assert picks(ws) == [(BOARD, 1, 2), (BOARD, 2, 1)]
        page.locator("figure.take.done .player").first.scroll_into_view_if_needed()
        page.wait_for_function(f"() => ({LOADED})(document.querySelector('figure.take.done video'))", timeout=10_000)
        # writes need the token, and only this server's own page may ask
        assert requests.post(f"{origin}/api/pick", json={"job": 1}, timeout=5).status_code == 403
        assert requests.post(f"{origin}/api/pick", json={"job": 1}, timeout=5,
                             headers={"X-Ledger-Token": token, "Host": "evil.example:80"}).status_code == 403
        assert requests.post(f"{origin}/api/pick", json={"job": 1}, timeout=5,
                             headers={"X-Ledger-Token": token, "Origin": "http://evil.example"}).status_code == 403
        failed = requests.post(f"{origin}/api/pick", json={"job": 5}, timeout=5, headers={"X-Ledger-Token": token})
        assert failed.status_code == 409 and "only a done take" in failed.json()["error"]
        assert requests.get(f"{origin}/media/5", timeout=5).status_code == 404  # failed take: no video
        ranged = requests.get(f"{origin}/media/1", headers={"Range": "bytes=0-99"}, timeout=5)
        assert ranged.status_code == 206 and len(ranged.content) == 100
        assert picks(ws) == [(BOARD, 1, 2), (BOARD, 2, 1)]
        started = time.monotonic()
        server.send_signal(signal.SIGINT)
        out, err = server.communicate(timeout=15)
        assert server.returncode == 0, err
        assert time.monotonic() - started < 10
        assert "Review server stopped; 2 choice(s) written to the ledger." in out
    finally:
        if server.poll() is None:
            server.kill()
            server.communicate()


def test_a_page_copied_elsewhere_with_its_videos_still_plays(ws, work_env, page, tmp_path):
    generate(ws, work_env, {"第一集 #1/storyboard_a.json": STORY})  # a space, a '#' and Chinese in the path
    review_page(ws)
    copy = tmp_path / "elsewhere" / "output"
    shutil.copytree(ws.root / "output", copy)
    shutil.rmtree(ws.root / "output")
    page.goto((copy / "review.html").as_uri())
    page.locator("figure.take.done .player").first.scroll_into_view_if_needed()
    page.wait_for_function(f"() => ({LOADED})(document.querySelector('figure.take.done video'))", timeout=10_000)
    source = page.locator("figure.take.done video").first.evaluate("v => decodeURIComponent(v.currentSrc)")
    assert source.startswith(f"file://{copy}/第一集 #1/storyboard_a/Segment_1/1_v")
