"""A real browser: headless Chromium (Debian) plays the default ladder through hls.js."""

from __future__ import annotations

from collections.abc import Iterator

import av
import m3u8
import pytest
from browserutil import CHROMIUM_ARGS
from nodeutil import LECTURE, NodeProcess, Publisher, require_binary, segment_numbers, wait_for
from playwright.sync_api import sync_playwright

DEFAULT_SIZES = {"720p": (1280, 720), "480p": (854, 480), "360p": (640, 360)}


@pytest.fixture(scope="module")
def lecture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    """A node with the shipped default ladder, fed the 720p sample lecture."""
    node = NodeProcess(tmp_path_factory.mktemp("node") / "node.log")
    pub = Publisher(LECTURE, node.rtmp("live/lecture"), loop=True)
    try:
        wait_for(
            lambda: all(
                len(segment_numbers(node.get(f"/live/lecture/{n}/index.m3u8").text)) >= 2
                for n in DEFAULT_SIZES
            ),
            90,
            "two segments of every default rung",
        )
        yield node
    finally:
        pub.stop()
        node.stop()


def test_default_ladder_from_720p_source(lecture: NodeProcess) -> None:
    master = m3u8.loads(lecture.get("/live/lecture/index.m3u8").text)
    got = {p.uri.split("/")[0]: p.stream_info.resolution for p in master.playlists}
    assert got == DEFAULT_SIZES
    with av.open(f"{lecture.http}/live/lecture/index.m3u8", timeout=(10, 10)) as c:
        sizes = sorted((s.codec_context.width, s.codec_context.height) for s in c.streams.video)
    assert sizes == sorted(DEFAULT_SIZES.values())


def test_hlsjs_in_chromium_plays(lecture: NodeProcess) -> None:
    chromium = require_binary("chromium")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(f"{lecture.http}/?stream=live/lecture")
            page.wait_for_function("window.Hls !== undefined && Hls.isSupported()", timeout=15000)
            page.wait_for_function(
                "window.nearcast.playing && document.querySelector('video').currentTime > 0",
                timeout=60000,
            )
            start = page.evaluate("document.querySelector('video').currentTime")
            page.wait_for_function(
                f"document.querySelector('video').currentTime >= {start + 3}", timeout=60000
            )
            state = page.evaluate(
                "({fatal: window.nearcast.fatal, levels: window.nearcast.hls.levels.length,"
                " options: document.querySelectorAll('#level option').length})"
            )
            assert state["fatal"] is None
            assert state["levels"] == 3 and state["options"] == 4  # auto + three rungs
        finally:
            browser.close()
