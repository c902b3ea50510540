"""hls.js (low-latency mode) in headless Chromium plays LL-HLS from parts, starting
before the first full segment exists; fed real CMAF parts in real time."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
from browserutil import CHROMIUM_ARGS
from nodeutil import require_binary, wait_for
from playwright.sync_api import sync_playwright
from servehelp import LL_HLS, PAGES, MediaServer

from bench.cmaf import cmaf
from media.segments import InitFrame, PartFrame, SegmentFrame

PAGE = b"""<!doctype html><html><body><video muted autoplay playsinline></video>
<script src="/static/hls.min.js"></script><script>
window.state = {playingAt: null, fatal: null, errors: []};
const video = document.querySelector('video');
video.addEventListener('playing', () => { if (!state.playingAt) state.playingAt = Date.now(); });
const hls = new Hls({lowLatencyMode: true, backBufferLength: 10});
hls.on(Hls.Events.ERROR, (_, d) => {
  state.errors.push(d.details);
  if (d.fatal) state.fatal = d.details;
});
hls.loadSource('/live/s/360p/index.m3u8');
hls.attachMedia(video);
window.hls = hls;
</script></body></html>"""


@pytest.fixture
def server() -> Iterator[MediaServer]:
    srv = MediaServer(LL_HLS)
    try:
        yield srv
    finally:
        srv.stop()


def test_hlsjs_low_latency_starts_from_parts(server: MediaServer) -> None:
    chromium = require_binary("chromium")
    media = cmaf()
    PAGES["/ll.html"] = PAGE
    s = server.open()
    completed: dict[int, float] = {}
    name = "360p"

    def part(i: int, p: int) -> None:
        f = media.segments[i][p]
        server.call(
            lambda: s.add_part(PartFrame(name, i, p, f.start, f.duration, f.independent, f.data))
        )

    server.call(lambda: s.add_init(InitFrame(name, media.codecs, media.init)))
    part(0, 0)  # the playlist exists, with one part and no complete segment
    stop = threading.Event()

    def feed() -> None:
        t0 = time.monotonic()
        n = 0
        for i, frags in enumerate(media.segments):
            for p in range(len(frags)):
                if i == 0 and p == 0:
                    continue
                n += 1
                if stop.wait(max(0.0, t0 + n * frags[p].duration - time.monotonic())):
                    return
                part(i, p)
            data = b"".join(f.data for f in frags)
            server.call(
                lambda i=i, d=data, t=frags[0].start: s.add_segment(
                    SegmentFrame(name, i, t, 2.0, media.codecs, d)
                )
            )
            completed[i] = time.time() * 1000

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        feeder = threading.Thread(target=feed, daemon=True)
        try:
            page = browser.new_page()
            page.goto(f"{server.url}/ll.html")
            # The clock starts when hls.js waits for the playlist (held until the run's
            # lead segment exists), not while Chromium is still loading the page.
            wait_for(lambda: server.held() >= 1, 20, "hls.js asking for the playlist")
            feeder.start()
            page.wait_for_function(
                "window.state.playingAt !== null || window.state.fatal", timeout=20000
            )
            state = page.evaluate("window.state")
            assert state["fatal"] is None, state
            # Playback began from parts, before segment 0 was complete.
            assert 0 not in completed or state["playingAt"] < completed[0], (state, completed)
            page.wait_for_function(
                "document.querySelector('video').currentTime >= 2.5", timeout=20000
            )
            info = page.evaluate(
                "({fatal: state.fatal, ll: hls.lowLatencyMode, parts: hls.latestLevelDetails"
                " && hls.latestLevelDetails.partList ? hls.latestLevelDetails.partList.length : 0})"
            )
            assert info["fatal"] is None and info["ll"] and info["parts"] > 0, info
        finally:
            stop.set()
            feeder.join(10)
            browser.close()
