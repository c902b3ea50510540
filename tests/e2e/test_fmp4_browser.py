"""Chromium's MSE, through hls.js, plays the worker's fMP4/CMAF output (B-frames, AAC)."""

from __future__ import annotations

import functools
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from nodeutil import require_binary
from playwright.sync_api import sync_playwright

from nearcast.offline import transcode_file
from transcode.config import AudioProfile, Rendition
from transcode.spec import Spec

ROOT = Path(__file__).resolve().parents[2]
SMALL = str(ROOT / "samples" / "small-360p.mp4")
HLSJS = ROOT / "node_modules" / "hls.js" / "dist" / "hls.min.js"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--autoplay-policy=no-user-gesture-required"]
PAGE = """<!doctype html><video id=v muted autoplay playsinline></video>
<script src="hls.min.js"></script><script>
window.errors = [];
const v = document.getElementById('v');
const hls = new Hls({enableWorker: false});
hls.on(Hls.Events.ERROR, (e, d) => window.errors.push(d.details + (d.fatal ? ' (fatal)' : '')));
hls.loadSource('out/index.m3u8');
hls.attachMedia(v);
hls.on(Hls.Events.MANIFEST_PARSED, () => v.play());
</script>"""


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("site")
    spec = Spec(
        stream="t/browser",
        # veryfast keeps x264's B-frames: negative-free composition offsets are exercised.
        ladder=[Rendition("240p", 426, 240, 400_000, preset="veryfast")],
        audio=AudioProfile(),
        x264_threads=1,
        segment_format="fmp4",
    )
    transcode_file(SMALL, root / "out", spec)
    (root / "index.html").write_text(PAGE)
    (root / "hls.min.js").write_bytes(HLSJS.read_bytes())
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_hlsjs_plays_fmp4_video_and_audio(site: str) -> None:
    chromium = require_binary("chromium")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(f"{site}/index.html")
            # 3 s played: the decoder has had 90 frames (its counter can trail currentTime).
            page.wait_for_function(
                "document.getElementById('v').currentTime > 3"
                " && document.getElementById('v').webkitDecodedFrameCount >= 90",
                timeout=60000,
            )
            state = page.evaluate(
                "({errors: window.errors, w: v.videoWidth, h: v.videoHeight,"
                " audio: v.webkitAudioDecodedByteCount, frames: v.webkitDecodedFrameCount})"
            )
        finally:
            browser.close()
    # Audio and video start within one AAC frame of each other, so hls.js may nudge
    # over that hole at the start (bufferSeekOverHole); nothing else is allowed.
    assert not [e for e in state["errors"] if e != "bufferSeekOverHole"], state["errors"]
    assert (state["w"], state["h"]) == (426, 240)
    assert state["audio"] > 0, "the AAC track decodes"
    assert state["frames"] >= 90
