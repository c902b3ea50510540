"""Glass-to-glass latency: HLS (2 s segments), LL-HLS and WHEP on one machine over loopback.

Run: ``python -m bench.latency [--duration S] [--source FILE] [--players shaka]``

For each delivery mode a ``nearcast node`` runs with the default ladder (the
shipped ``nearcast.yml``; LL-HLS additionally with ``hls.segment_format: fmp4``
and ``hls.low_latency: true``), ``nearcast publish --clock`` pushes the sample
lecture in real time with the wall clock stamped into every frame, and
``nearcast probe`` plays the stream as a viewer would and reads the stamps (see
:mod:`nearcast.probe` for the player models). Publisher, node and probe share
this machine's clock.

LL-HLS is also played by two real players, hls.js and Shaka Player in headless
Chromium, which read the stamps of the frames they present (:mod:`bench.players`):
once on the warmed node, beside the probe, and once as the first viewer of a
node just started, whose player starts with the publisher. Their targets: p50
glass to glass <= 1.5 s, startup <= 1.5 s, no stall.

A mode the node does not offer (no parts in the playlist, no WebRTC packets) is
reported as such, not measured as something else. The last line printed is one
JSON object with every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from bench import players
from nearcast.launch import NodeSubprocess
from nearcast.playout import ProbeError
from nearcast.probe import format_table, probe
from nearcast.publish import publish

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "samples" / "lecture-720p.mp4"
# MPEG-TS HLS: a conforming player starts three target durations back and the newest
# listed segment is already one old, so 3 x 2 s + 1.5 s (docs/performance.md).
TARGETS_MS = {"llhls": 1500, "hls": 3 * 2000 + 1500, "whep": 300}
# Real players on LL-HLS: glass to glass p50 and startup (ms), and no stall.
PLAYER_TARGETS = {"p50_ms": 1500, "startup_ms": 1500, "stalls": 0}
# Delivery set explicitly, whatever the shipped default is.
TS_ENV = {"NEARCAST_HLS_SEGMENT_FORMAT": "ts", "NEARCAST_HLS_LOW_LATENCY": "false"}
LL_ENV = {"NEARCAST_HLS_SEGMENT_FORMAT": "fmp4", "NEARCAST_HLS_LOW_LATENCY": "true"}
log = logging.getLogger("bench.latency")


class Node(NodeSubprocess):
    """A node for one delivery mode: the default ladder, admitted whatever a start-up
    calibration on a busy machine would say."""

    def __init__(self, logfile: Path, env: dict[str, str]) -> None:
        base = {"NEARCAST_NODE_LOG_LEVEL": "INFO", "NEARCAST_TRANSCODE_CAPACITY_UNITS": "8"}
        super().__init__(logfile, {**base, **env}, start_timeout=60)
        self.live = self.rtmp("live")


class Publisher(threading.Thread):
    def __init__(self, source: str, url: str) -> None:
        super().__init__(daemon=True)
        self.source, self.url = source, url
        self.stop_event = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            publish(self.source, self.url, loop=True, stop=self.stop_event, clock=True)
        except BaseException as exc:  # reported by the caller
            self.error = exc

    def stop(self) -> None:
        self.stop_event.set()
        self.join(15)


def wait_playlist(
    http: str, stream: str, timeout: float, *, every: bool = False, parts: int = 0
) -> None:
    """Until the stream's last variant (``every``: each variant) lists 3 segments and
    at least ``parts`` LL-HLS parts. Asking is what starts a relay's pull of a variant."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            r = httpx.get(f"{http}/live/{stream}/index.m3u8", timeout=5)
            if r.status_code == 200 and "#EXT-X-STREAM-INF" in r.text:
                uris = [x for x in r.text.splitlines() if x and not x.startswith("#")]
                media = [
                    httpx.get(f"{http}/live/{stream}/{uri}", timeout=5)
                    for uri in (uris if every else uris[-1:])
                ]
                if all(
                    m.status_code == 200
                    and m.text.count("#EXTINF") >= 3
                    and m.text.count("#EXT-X-PART:") >= parts
                    for m in media
                ):
                    return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise RuntimeError(
        f"no playlist with 3 segments and {parts} parts for live/{stream} within {timeout:.0f} s"
    )


def transcode_lag(http: str) -> float | None:
    try:
        text = httpx.get(f"{http}/metrics", timeout=5).text
    except httpx.HTTPError:
        return None
    for line in text.splitlines():
        if line.startswith("transcode_lag_seconds{"):
            return round(float(line.rsplit(" ", 1)[1]), 3)
    return None


def measure(
    mode: str,
    env: dict[str, str],
    protocols: list[str],
    source: str,
    duration: float,
    workdir: Path,
) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    node = Node(workdir / f"node-{mode}.log", env)
    pub = Publisher(source, f"{node.live}/bench")
    pub.start()
    try:
        wait_playlist(node.http, "bench", 90)
        for proto in protocols:
            url = f"{node.http}/live/bench/" + ("whep" if proto == "whep" else "index.m3u8")
            if proto in players.PLAYERS:
                out[proto] = play(proto, url, duration)
                continue
            kind = {"hls": "hls-segments", "llhls": "llhls", "whep": "whep"}[proto]
            try:
                result = asyncio.run(probe(url, duration, kind))
                summary = result.summary()
                summary["protocol"] = proto
            except (ProbeError, TimeoutError) as exc:
                summary = {"protocol": proto, "error": str(exc)}
            # How far the transcode trailed real time at the end: latency the node's
            # CPU added, whatever the delivery protocol.
            summary["transcode_lag_s"] = transcode_lag(node.http)
            out[proto] = summary
            log.info("%s: %s", proto, summary)
        if pub.error is not None:
            raise RuntimeError(f"publisher failed: {pub.error}")
    finally:
        pub.stop()
        node.stop()
    return out


def play(
    player: str, url: str, duration: float, config: dict[str, Any] | None = None
) -> dict[str, Any]:
    try:
        r = players.measure(player, url, duration, config=config)
    except players.PlayerError as exc:
        r = {"player": player, "error": str(exc)}
    log.info("%s: %s", player, r)
    return r


def first_viewer(
    player: str,
    env: dict[str, str],
    source: str,
    duration: float,
    workdir: Path,
    config: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """``player`` opened the moment a fresh node is up and the publisher starts: its
    startup includes the node's first segment (the page waits for the master playlist).
    ``config`` replaces the player's configuration (:func:`bench.players.measure`)."""
    node = Node(workdir / f"node-first-{player}.log", env)
    pub = Publisher(source, f"{node.live}/bench")
    pub.start()
    try:
        r = play(player, f"{node.http}/live/bench/index.m3u8", duration, config)
        if pub.error is not None:
            raise RuntimeError(f"publisher failed: {pub.error}")
    finally:
        pub.stop()
        node.stop()
    return r


def player_rows(results: dict[str, dict[str, Any]]) -> tuple[list[str], dict[str, Any]]:
    """The players' table and figures, each judged against PLAYER_TARGETS."""
    lines = [
        f"{'player':<14}{'p50 ms':>8}{'p95 ms':>8}{'startup ms':>12}{'stalls':>8}"
        f"{'frames':>8}  {'size':<10}{'met':<5}edge gap ms"
    ]
    figures: dict[str, Any] = {}
    for name, r in results.items():
        if "error" in r:
            lines.append(f"{name:<14}not measured: {r['error']}")
            figures[name] = {**r, "target_met": False}
            continue
        met = (
            r["p50_ms"] is not None
            and r["p50_ms"] <= PLAYER_TARGETS["p50_ms"]
            and r["startup_ms"] is not None
            and r["startup_ms"] <= PLAYER_TARGETS["startup_ms"]
            and r["stalls"] <= PLAYER_TARGETS["stalls"]
        )
        lines.append(
            f"{name:<14}{r['p50_ms']!s:>8}{r['p95_ms']!s:>8}{r['startup_ms']!s:>12}"
            f"{r['stalls']:>8}{r['stamped']:>8}  {r['resolution']:<10}{'yes' if met else 'no':<5}"
            f"{r.get('edge_gap_p50_ms')!s}"
        )
        figures[name] = {**r, "target_met": met}
    return lines, figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.latency", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--duration", type=float, default=20.0, help="seconds each probe watches")
    parser.add_argument("--source", default=str(SAMPLE), help="file to publish (looped)")
    parser.add_argument("--workdir", default="build/bench-latency", help="node logs go here")
    parser.add_argument(
        "--modes",
        default="ts,llhls,first",
        help="comma-separated: ts (HLS and WHEP), llhls (probe and players on a warmed"
        " node), first (each player as the first viewer of a fresh node)",
    )
    parser.add_argument(
        "--players",
        default=",".join(players.PLAYERS),
        help="comma-separated real players for llhls and first (default: all of "
        f"{', '.join(players.PLAYERS)})",
    )
    args = parser.parse_args(argv)
    chosen = [p for p in args.players.split(",") if p]
    unknown = [p for p in chosen if p not in players.PLAYERS]
    if unknown:
        parser.error(f"unknown player {unknown[0]!r}: one of {', '.join(players.PLAYERS)}")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    log.setLevel(logging.INFO)
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    modes = set(args.modes.split(","))
    results: dict[str, dict[str, Any]] = {}
    played: dict[str, dict[str, Any]] = {}
    if "ts" in modes:  # MPEG-TS, 2 s segments; WebRTC on.
        results.update(measure("ts", TS_ENV, ["hls", "whep"], args.source, args.duration, workdir))
    if "llhls" in modes:  # LL-HLS needs CMAF.
        try:
            ll = measure("llhls", LL_ENV, ["llhls", *chosen], args.source, args.duration, workdir)
            results["llhls"] = ll.pop("llhls")
            played.update(ll)
        except RuntimeError as exc:
            results["llhls"] = {"protocol": "llhls", "error": str(exc)}
    if "first" in modes:
        for p in chosen:
            try:
                played[f"{p}_first"] = first_viewer(p, LL_ENV, args.source, args.duration, workdir)
            except RuntimeError as exc:
                played[f"{p}_first"] = {"player": p, "error": str(exc)}

    rows = [r for r in results.values() if "error" not in r]
    print()
    print(format_table(rows))
    for name, r in results.items():
        if "error" in r:
            print(f"{name:<13}not measured: {r['error']}")
    print()
    print(f"{'protocol':<10}{'p50 target ms':>15}{'p50 ms':>10}{'met':>6}{'transcode lag s':>17}")
    figures: dict[str, Any] = {"targets_p50_ms": TARGETS_MS, "duration_s": args.duration}
    for name, target in TARGETS_MS.items():
        if name not in results:
            continue
        r = results[name]
        p50 = r.get("latency_p50_ms")
        met = p50 is not None and p50 <= target
        print(
            f"{name:<10}{target:>15}{'-' if p50 is None else f'{p50:.0f}':>10}"
            f"{'yes' if met else 'no':>6}{r.get('transcode_lag_s') or '-':>17}"
        )
        figures[name] = {k: v for k, v in r.items() if k != "url"}
        figures[name]["target_met"] = met
    if played:
        # Beside the probe's llhls row: the same stream in real players.
        lines, figures["players"] = player_rows(played)
        print()
        print("LL-HLS in real players (targets: p50 <= 1500 ms, startup <= 1500 ms, no stall)")
        print("\n".join(lines))
        figures["player_targets"] = PLAYER_TARGETS
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
