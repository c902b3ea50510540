"""Glass-to-glass latency in real players: hls.js and Shaka Player in headless Chromium.

``nearcast probe`` models a player; this measures two independent ones. Each
page plays the stream with its player library (served by the node under
``/static/``) and, for every frame the browser presents
(``video.requestVideoFrameCallback``), draws the frame to a canvas, reads the
clock stamp that ``nearcast publish --clock`` burnt into it (the layout of
:mod:`media.clock`, ported to JavaScript) and takes the frame's display time on
the wall clock (``performance.timeOrigin + expectedDisplayTime``) minus the
stamp. Chromium runs on this machine, so its clock is the publisher's.

Besides latency a run records the startup (from the moment the player is given
the URL to the first presented frame; the page first waits for the master
playlist, so a viewer who arrives before the publisher is measured from the
stream's appearance) and the stalls after the first frame (a ``waiting`` event,
hls.js's ``bufferStalledError`` or Shaka's ``buffering`` event, counted once per
episode until the next presented frame). A ``waiting`` event while the element
seeks belongs to the seek (hls.js seeks to its start position once its first part
is buffered, and its gap controller may have started playback before that): the
seek is logged in ``jumps``, and counts as a stall only if no frame follows within
250 ms, as QoE measures count rebuffering apart from seeks.

The page is served on the node's own origin (Playwright answers one made-up
path there), so the player fetches without CORS and the canvas stays readable.

Run: ``python -m bench.players URL [--player hlsjs|shaka] [--seconds S]``
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from typing import Any
from urllib.parse import urlsplit

PLAYERS = ("hlsjs", "shaka")
# The flags every headless Chromium gets, here and in the browser tests.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--autoplay-policy=no-user-gesture-required",
]
# The library each page loads from the node (distribute/api.py serves them from npm).
LIBRARIES = {"hlsjs": "/static/hls.min.js", "shaka": "/static/shaka-player.compiled.js"}
# Player settings for low latency, the same as the node's own player pages. hls.js: its
# target is the playlist's PART-HOLD-BACK (lowLatencyMode), and it plays up to 1.5x to
# get back to it after a start on an independent part or a stall. Shaka: lowLatencyMode
# (the default in 5.x) takes PART-HOLD-BACK as its presentation delay, and it counts the
# preload-hinted part into its live edge, so its seek range ends PART-HOLD-BACK less one
# part behind the newest part. Shaka fixes its start there before it fetches from the
# last independent part before it, and then plays at 1x: the fetch and decode up to the
# start point (0-2 s of media, one GOP) would stay in its latency for the session.
# liveSync measures latency from the seek range's end; its default band (0.5 +- 0.5 s)
# holds that offset and never changes the rate. A target of one part with a 0.1 s band,
# at up to 1.5x like hls.js, catches up to PART-HOLD-BACK behind the newest part. Never
# slower than 1x: Shaka's live edge is the first playlist's end advanced by the wall
# clock, less any growth of the longest segment since, so on a stream seconds old (parts
# and a first segment shorter than the rest, as with hls.lead_parts) it falls back by up
# to a segment, and slowing down to follow it would add that to the latency. Its caption
# detection is off: with no CLOSED-CAPTIONS attribute in the master playlist Shaka probes
# segments for CEA-608 captions and, on a playlist as short as a new stream's, picks the
# segment still being built (parts only, no URI) and fails with "Cannot read properties
# of undefined (reading 'match')". The node carries no captions.
DEFAULT_CONFIG: dict[str, dict[str, Any]] = {
    "hlsjs": {"lowLatencyMode": True, "maxLiveSyncPlaybackRate": 1.5},
    "shaka": {
        "streaming": {
            "lowLatencyMode": True,
            "liveSync": {
                "enabled": True,
                "targetLatency": 0.25,
                "targetLatencyTolerance": 0.1,
                "maxPlaybackRate": 1.5,
                "minPlaybackRate": 1.0,
            },
        },
        "manifest": {"hls": {"disableClosedCaptionsDetection": True}},
    },
}
PAGE_PATH = "/__nearcast_player_probe/{player}.html"

PAGE = """<!doctype html><html><head><meta charset="utf-8"></head><body>
<video muted autoplay playsinline></video>
<script src="__LIBRARY__"></script>
<script src="/static/stamp.js"></script>
<script>
"use strict";
const PLAYER = "__PLAYER__", URL_ = __URL__, CONFIG = __CONFIG__, GAP_MS = 250;
const video = document.querySelector("video");
const wall = () => performance.timeOrigin + performance.now();
const S = window.probe = {
  frames: 0, stamped: 0, latencies: [], stalls: 0, stallMs: 0, stalledAt: null,
  loadedAt: performance.timeOrigin, streamAt: null, playerAt: null, firstFrameAt: null,
  lastFrameAt: null, maxGapMs: 0, gaps: [], stallLog: [], width: 0, height: 0, errors: [],
  fatal: null, jumps: [], seekWaitAt: null, edgeGaps: [], edgeAt: 0,
};

// The player's own distance from what it takes as the live edge, in ms: hls.js's
// `latency`, Shaka's seek range end less the playhead. Glass to glass less this is how
// far that edge is behind the publisher.
function edgeGap() {
  const p = window.player;
  if (!p) return null;
  if (PLAYER === "hlsjs") return p.latency > 0 ? p.latency * 1000 : null;
  const end = p.seekRange().end;
  return Number.isFinite(end) ? (end - video.currentTime) * 1000 : null;
}

// --- presented frames and stalls ---------------------------------------------------------
function onFrame(_now, meta) {
  const shown = performance.timeOrigin + meta.expectedDisplayTime;
  if (S.firstFrameAt === null) S.firstFrameAt = shown;
  if (S.lastFrameAt !== null) {
    S.maxGapMs = Math.max(S.maxGapMs, shown - S.lastFrameAt);
    // Freezes a viewer sees (over GAP_MS): [last frame before, first frame after], wall ms.
    if (shown - S.lastFrameAt > GAP_MS && S.gaps.length < 20) S.gaps.push([S.lastFrameAt, shown]);
  }
  S.lastFrameAt = shown;
  if (S.stalledAt !== null) {
    const ms = wall() - S.stalledAt;
    S.stallMs += ms; S.stallLog.push([Math.round(S.stalledAt - S.firstFrameAt), Math.round(ms)]);
    S.stalledAt = null;
  }
  if (S.seekWaitAt !== null) {
    if (shown - S.seekWaitAt > GAP_MS) {
      S.stalls++;
      S.stallMs += shown - S.seekWaitAt;
      const at = Math.round(S.seekWaitAt - S.firstFrameAt);
      S.stallLog.push([at, Math.round(shown - S.seekWaitAt)]);
      S.errors.push("stall: waiting after a seek");
    }
    S.seekWaitAt = null;
  }
  S.frames++;
  S.width = meta.width; S.height = meta.height;
  const stamp = STAMP.read(video, meta.width, meta.height);
  if (stamp !== null) { S.stamped++; S.latencies.push(shown - stamp); }
  if (shown - S.edgeAt >= 250) {
    const gap = edgeGap();
    if (gap !== null) { S.edgeAt = shown; S.edgeGaps.push(gap); }
  }
  video.requestVideoFrameCallback(onFrame);
}
video.requestVideoFrameCallback(onFrame);

function stall(why) {
  if (S.firstFrameAt === null || S.stalledAt !== null) return;  // startup, or the same stall
  S.stalls++;
  S.stalledAt = wall();
  S.errors.push("stall: " + why);
}
// A seek the player makes itself (hls.js to its start position once the first part is in,
// a nudge over a gap) fires 'waiting' while the element seeks: a jump, logged as one, and a
// stall only if no frame follows within GAP_MS, as rebuffering is counted apart from seeks.
video.addEventListener("waiting", () => {
  if (!video.seeking) stall("waiting");
  else if (S.firstFrameAt !== null && S.seekWaitAt === null) S.seekWaitAt = wall();
});
video.addEventListener("seeking", () => {
  if (S.firstFrameAt !== null && S.jumps.length < 20) {
    S.jumps.push([Math.round(wall() - S.firstFrameAt), +video.currentTime.toFixed(3)]);
  }
});

// --- the players ---------------------------------------------------------------------------
function startHlsjs() {
  const hls = new Hls(CONFIG);
  hls.on(Hls.Events.ERROR, (_e, d) => {
    if (d.details === "bufferStalledError") stall("hls.js bufferStalledError");
    else S.errors.push(d.details);
    if (d.fatal) S.fatal = "hls.js: " + d.details;
  });
  hls.loadSource(URL_);
  hls.attachMedia(video);
  window.player = hls;
}

async function startShaka() {
  shaka.polyfill.installAll();
  const player = new shaka.Player();
  await player.attach(video);
  player.configure(CONFIG);
  player.addEventListener("error", e => {
    S.errors.push("shaka " + e.detail.code + " " + JSON.stringify(e.detail.data).slice(0, 120));
    const critical = e.detail.severity === shaka.util.Error.Severity.CRITICAL;
    if (critical) S.fatal = "shaka: " + e.detail.code;
  });
  player.addEventListener("buffering", e => { if (e.buffering) stall("shaka buffering"); });
  window.player = player;
  await player.load(URL_);
}

async function main() {
  // A viewer who arrives before the publisher: wait for the master playlist (the node
  // answers 404 until the stream exists, and players give up on a 404).
  for (;;) {
    try { if ((await fetch(URL_, { cache: "no-store" })).ok) break; } catch (e) {}
    await new Promise(r => setTimeout(r, 100));
  }
  S.streamAt = wall();
  S.playerAt = wall();
  if (PLAYER === "hlsjs") startHlsjs(); else await startShaka();
  video.play().catch(() => {});
}
main().catch(e => { S.fatal = String(e && e.stack || e); });
</script></body></html>
"""


class PlayerError(Exception):
    """A player could not play the stream; the message names the player, URL and reason."""


def page(player: str, url: str, config: dict[str, Any] | None = None) -> str:
    """The HTML page that plays ``url`` (same origin as the page) with ``player``."""
    if player not in PLAYERS:
        raise ValueError(f"unknown player {player!r}: one of {', '.join(PLAYERS)}")
    cfg = DEFAULT_CONFIG[player] if config is None else config
    return (
        PAGE.replace("__LIBRARY__", LIBRARIES[player])
        .replace("__PLAYER__", player)
        .replace("__URL__", json.dumps(url))
        .replace("__CONFIG__", json.dumps(cfg))
    )


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile of sorted ``values`` (as :mod:`nearcast.playout`)."""
    return values[min(len(values) - 1, int(p * len(values)))]


def summarize(state: dict[str, Any], player: str) -> dict[str, Any]:
    """The figures of one run from the page's ``window.probe``."""
    lat = sorted(float(x) for x in state["latencies"])
    half = sorted(float(x) for x in state["latencies"][len(state["latencies"]) // 2 :])
    edge = state.get("edgeGaps") or []
    gaps = sorted(float(x) for x in edge[len(edge) // 2 :])
    first, at = state["firstFrameAt"], state["playerAt"]
    return {
        "player": player,
        "frames": int(state["frames"]),
        "stamped": int(state["stamped"]),
        "p50_ms": round(percentile(lat, 0.5), 1) if lat else None,
        "p95_ms": round(percentile(lat, 0.95), 1) if lat else None,
        # After the player has caught up (the second half of the run).
        "settled_p50_ms": round(percentile(half, 0.5), 1) if half else None,
        # The player's own distance from its live edge (hls.js's latency, Shaka's seek
        # range end less the playhead), p50 over the second half of the run; glass to
        # glass less it is how far behind the publisher the player takes the edge to be.
        "edge_gap_p50_ms": round(percentile(gaps, 0.5), 1) if gaps else None,
        "startup_ms": round(first - at, 1) if first is not None and at is not None else None,
        "stream_wait_ms": round(state["streamAt"] - state["loadedAt"], 1)
        if state["streamAt"] is not None
        else None,
        "stalls": int(state["stalls"]),
        "stall_ms": round(float(state["stallMs"]), 1),
        # [ms after the first frame, ms long] of each stall that ended.
        "stall_log": state["stallLog"][:10],
        # Seeks after the first frame: [ms after the first frame, to media time s].
        "jumps": state["jumps"][:10],
        "max_frame_gap_ms": round(float(state["maxGapMs"]), 1),
        # Freezes over 250 ms: (last frame before, first frame after), wall-clock seconds.
        "freezes": [(a / 1000, b / 1000) for a, b in state["gaps"]],
        "resolution": f"{state['width']}x{state['height']}",
        "errors": sorted(set(state["errors"]))[:10],
    }


def chromium_path() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        raise PlayerError("chromium is not installed (Debian package chromium)")
    return path


def measure(
    player: str,
    url: str,
    seconds: float,
    *,
    config: dict[str, Any] | None = None,
    start_timeout: float = 60.0,
) -> dict[str, Any]:
    """Play the master playlist ``url`` with ``player`` (hlsjs or shaka) in headless
    Chromium for ``seconds`` after its first presented frame.

    Returns ``p50_ms``, ``p95_ms`` (glass to glass, every stamped frame presented),
    ``startup_ms``, ``stalls`` and ``frames`` (stamped frames read), and more (see
    :func:`summarize`). ``config`` replaces the player's configuration (hls.js
    ``new Hls(config)``, Shaka ``player.configure(config)``). Raises
    :class:`PlayerError` when the player fails or shows nothing within ``start_timeout``.
    """
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import sync_playwright

    html = page(player, url, config)
    parts = urlsplit(url)
    page_url = f"{parts.scheme}://{parts.netloc}{PAGE_PATH.format(player=player)}"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=chromium_path(), headless=True, args=CHROMIUM_ARGS
        )
        try:
            tab = browser.new_page()
            tab.route(page_url, lambda route: route.fulfill(body=html, content_type="text/html"))
            tab.goto(page_url)
            try:
                tab.wait_for_function(
                    "window.probe.firstFrameAt !== null || window.probe.fatal !== null",
                    timeout=start_timeout * 1000,
                )
            except PlaywrightError:
                seen = tab.evaluate(
                    "({errors: window.probe.errors.slice(0, 5), stream: window.probe.streamAt,"
                    " readyState: document.querySelector('video').readyState,"
                    " currentTime: document.querySelector('video').currentTime})"
                )
                raise PlayerError(
                    f"{player}: no frame of {url} within {start_timeout:.0f} s ({seen})"
                ) from None
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                # Measuring for a while is the point here; a fatal error ends it early.
                tab.wait_for_timeout(min(500.0, max(1.0, (deadline - time.monotonic()) * 1000)))
                if tab.evaluate("window.probe.fatal") is not None:
                    break
            state = tab.evaluate("window.probe")
        finally:
            browser.close()
    if state["fatal"] is not None:
        raise PlayerError(f"{player}: {url}: {state['fatal']} (errors: {state['errors'][:5]})")
    return summarize(state, player)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.players", description=__doc__.split("\n")[0]
    )
    parser.add_argument("url", help="a master playlist, e.g. http://HOST:8080/live/NAME/index.m3u8")
    parser.add_argument("--player", choices=PLAYERS, action="append", help="default: both")
    parser.add_argument("--seconds", type=float, default=20.0, help="seconds after the first frame")
    parser.add_argument("--config", help="player configuration (JSON) instead of the default")
    args = parser.parse_args(argv)
    config = json.loads(args.config) if args.config else None
    out = {p: measure(p, args.url, args.seconds, config=config) for p in args.player or PLAYERS}
    for p, r in out.items():
        print(
            f"{p:<7}{r['p50_ms']!s:>9} p50 ms{r['p95_ms']!s:>9} p95 ms{r['startup_ms']!s:>9}"
            f" startup ms{r['stalls']:>4} stalls{r['stamped']:>6} frames"
        )
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
