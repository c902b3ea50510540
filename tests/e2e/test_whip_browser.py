"""Headless Chromium with a fake camera and microphone publishes from the node's publish page."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from browserutil import CAMERA_ARGS
from nodeutil import NodeProcess, require_binary, wait_for
from playwright.sync_api import sync_playwright
from whiputil import LADDER, check_ladder, ended, ready


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    n = NodeProcess(
        tmp_path_factory.mktemp("node") / "node.log",
        NEARCAST_TRANSCODE_LADDER=LADDER,
        NEARCAST_HLS_SEGMENT_DURATION="1",
        NEARCAST_HLS_GRACE_PERIOD="1",
        NEARCAST_TRANSCODE_CAPACITY_UNITS="8",  # no start-up calibration encode
    )
    yield n
    n.stop()


@pytest.mark.parametrize("codec", ["H264", "VP8"])
def test_chromium_publish_page(node: NodeProcess, codec: str) -> None:
    chromium = require_binary("chromium")
    path = f"live/chromium-{codec.lower()}"
    # The page is loaded from another origin (localhost vs 127.0.0.1) and publishes to this
    # node's endpoint: the browser's CORS preflight must pass for the POST and the DELETE.
    page_url = f"http://localhost:{node.http_port}/{path}/publish?autostart=1&codec={codec}"
    endpoint = f"{node.http}/{path}/whip"
    frames = node.metric("ingest_frames_total", kind="video", protocol="whip")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, headless=True, args=CAMERA_ARGS)
        try:
            page = browser.new_page()
            page.goto(f"{page_url}&whip={endpoint}")
            page.wait_for_function(
                "['publishing', 'error'].includes(document.body.dataset.state)", timeout=30_000
            )
            state = page.evaluate(
                "[document.body.dataset.state, document.getElementById('detail').textContent]"
            )
            assert state[0] == "publishing", state
            wait_for(lambda: ready(node, path, 2), 40, f"segments of {path}")
            stream = node.get(f"/v1/streams/{path}").json()
            assert stream["source"]["codec"] == codec.lower()
            assert node.metric("ingest_sessions", protocol="whip", tenant="live") == 1
            page.click("#stop")
            page.wait_for_function("document.body.dataset.state === 'stopped'", timeout=10_000)
        finally:
            browser.close()
    check_ladder(node, path)
    assert node.metric("ingest_frames_total", kind="video", protocol="whip") > frames + 30
    wait_for(lambda: ended(node, path), 15, "EXT-X-ENDLIST after Stop")
    assert "ended: DELETE by the client" in node.log()
