"""Soak: the shipped node under steady load for N minutes; does anything creep?

    python -m bench.soak --minutes 30                 # 500 LL-HLS and 20 WHEP viewers
    python -m bench.soak --minutes 2 --viewers 100 --whep 4

Load, all from loopback:

* 4 publishers (``nearcast publish`` of the sample, looped) to ``live/soak0..3``; the
  last one disconnects and reconnects every 30 s (within ``hls.grace_period``, so its
  playlists continue);
* ``--viewers`` simulated LL-HLS viewers (asyncio + httpx), spread over the streams;
* ``--whep`` WebRTC viewers (aiortc, as ``nearcast.whep_probe``), each reconnecting
  every minute;
* the attacks of :mod:`bench.attacks` (RTMP, slowloris, 20,000 headers, a 100 MB SDP
  offer, bad stream names), one each minute in turn, meeting the node's default
  limits;
* a reader per stream that checks for segment gaps (as ``tests/hostile`` does).

Each minute it prints the node's RSS and the RSS of its workers, the open descriptors
of the node and its workers (``/proc/<pid>/fd``), segment gaps, the p99 part delay and
errors; the last line is JSON with the goals.

**Part delay** is what an LL-HLS viewer waits for each part: the time from the moment
it learns a part's URI from the playlist's ``EXT-X-PRELOAD-HINT`` to the last byte of
that part (the node holds the request until the part exists, so on a node that keeps
up it is about one part duration, ``--part`` seconds). Each viewer then reloads the
playlist blocking on that part (``_HLS_msn``/``_HLS_part``) to learn the next hint.

**Errors**: a viewer request that fails or is answered anything but 200, a WHEP
viewer that receives no video, a publisher that fails.

Goals (exit status 1 when one is missed): memory (node + workers) and descriptors
(node + workers, less the established HTTP connections, which are the viewers' load
and not state: one the viewer closed and the node did not still counts), each the
median of a minute's samples, grow less than 5% from
the warm-up minute (the 5th, or the 1st for runs under 10 minutes) to the last, no
segment gap, no error.

The node runs with its default limits (the four publishers and the attacks' RTMP
connections stay within ``rtmp.max_connections_per_ip`` and the publish attempts per
address), LL-HLS (the default), ``hls.part_duration`` from ``--part``, a one-rung
ladder and WHEP from that rung.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench import attacks
from bench.attacks import (
    LADDER,
    RENDITION,
    RTMP_ATTACKS,
    SAMPLE,
    Reader,
    bad_names,
    big_sdp,
    counters,
    descendants,
    fds_besides,
    many_headers,
    moved,
    open_fds,
    rss_mb,
    slowloris,
    socket_inodes,
)
from nearcast.launch import NodeSubprocess
from nearcast.publish import publish

STREAMS = [f"live/soak{i}" for i in range(4)]
RECONNECT_EVERY = 30.0


@dataclass
class Tally:
    """What the load generators report, shared across threads."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    part_delays: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    whep_sessions: int = 0
    hint_misses: int = 0

    def miss(self) -> None:
        with self.lock:
            self.hint_misses += 1

    def delay(self, seconds: float) -> None:
        with self.lock:
            self.part_delays.append(seconds)

    def error(self, what: str) -> None:
        with self.lock:
            self.errors.append(what)

    def take(self) -> tuple[list[float], list[str]]:
        with self.lock:
            delays, self.part_delays = self.part_delays, []
            errors, self.errors = self.errors, []
        return delays, errors


def _hint(text: str) -> tuple[str, int, int] | None:
    """The preload-hinted part of an LL-HLS media playlist: (URI, msn, part index)."""
    seq = complete = trailing = 0
    uri = None
    for line in text.splitlines():
        if line.startswith("#EXT-X-MEDIA-SEQUENCE:"):
            seq = int(line.split(":", 1)[1])
        elif line.startswith("#EXT-X-PART:"):
            trailing += 1
        elif line.startswith("#EXTINF:"):
            complete += 1
            trailing = 0
        elif line.startswith("#EXT-X-PRELOAD-HINT:") and "TYPE=PART" in line:
            uri = line.split('URI="', 1)[1].split('"', 1)[0]
    if uri is None:
        return None
    return uri, seq + complete, trailing


async def _viewer(c: httpx.AsyncClient, base: str, tally: Tally, stop: asyncio.Event) -> None:
    """One LL-HLS viewer: load the hinted part, reload blocking on it, repeat."""
    url = f"{base}/{RENDITION}/index.m3u8"
    params: dict[str, str] = {}
    while not stop.is_set():
        try:
            r = await c.get(url, params=params)
            if r.status_code != 200:
                raise ValueError(f"playlist answered {r.status_code}")
            hint = _hint(r.text)
            if hint is None:
                raise ValueError("playlist has no preload hint")
            uri, msn, part = hint
            t0 = time.monotonic()
            p = await c.get(f"{base}/{RENDITION}/{uri}")
            if p.status_code == 404:
                # The segment closed (on a keyframe) before the hinted part began: the next
                # part is the first of the next segment (RFC 8216bis §6.2.5.3: a hinted
                # resource may never exist).
                tally.miss()
                params = {"_HLS_msn": str(msn + 1), "_HLS_part": "0"}
                continue
            if p.status_code != 200:
                raise ValueError(f"part {base}/{RENDITION}/{uri} answered {p.status_code}")
            tally.delay(time.monotonic() - t0)
            params = {"_HLS_msn": str(msn), "_HLS_part": str(part)}
        except (httpx.HTTPError, ValueError) as exc:
            if stop.is_set():
                return
            tally.error(f"viewer: {exc!r}")
            params = {}
            await asyncio.sleep(1.0)


def _viewers(http: str, count: int, tally: Tally, stop: threading.Event) -> None:
    async def main() -> None:
        done = asyncio.Event()
        limits = httpx.Limits(max_connections=count + 8, max_keepalive_connections=count + 8)
        async with httpx.AsyncClient(timeout=15, limits=limits) as c:
            tasks = []
            for i in range(count):
                base = f"{http}/{STREAMS[i % len(STREAMS)]}"
                tasks.append(asyncio.create_task(_viewer(c, base, tally, done)))
                if i % 20 == 19:
                    await asyncio.sleep(0.1)  # ramp up rather than 500 at once
            await asyncio.to_thread(stop.wait)
            done.set()
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(main())


def _whep(http: str, count: int, tally: Tally, stop: threading.Event) -> None:
    from nearcast.whep_probe import probe_whep

    async def one(i: int) -> None:
        url = f"{http}/{STREAMS[i % len(STREAMS)]}/whep"
        while not stop.is_set():
            try:
                result = await probe_whep(url, 60.0)
                if not result.frames:
                    tally.error(f"whep {url}: no video")
                with tally.lock:
                    tally.whep_sessions += 1
            except Exception as exc:  # aiortc raises a variety; all count
                tally.error(f"whep {url}: {exc!r}")
                await asyncio.sleep(1.0)

    async def main() -> None:
        tasks = [asyncio.create_task(one(i)) for i in range(count)]
        await asyncio.to_thread(stop.wait)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(main())


def _publisher(url: str, tally: Tally, stop: threading.Event, reconnect: bool) -> None:
    while not stop.is_set():
        try:
            publish(
                SAMPLE,
                url,
                loop=True,
                duration=RECONNECT_EVERY if reconnect else None,
                stop=stop,
            )
        except Exception as exc:
            if not stop.is_set():
                tally.error(f"publisher {url}: {exc!r}")
                stop.wait(1.0)
        if not reconnect:
            return


ATTACKER = "127.0.0.2"
# The attack suite's attacks that need no set-up of their own, one a minute in turn.
SOAK_ATTACKS = {
    **RTMP_ATTACKS,
    "300 slowloris HTTP connections": slowloris,
    "20,000 headers": many_headers,
    "100 MB SDP offer to WHIP": big_sdp,
    "publishes to <img src=x onerror=alert(1)>, .. and .": bad_names,
}


def _attacks(node: NodeSubprocess, tally: Tally, stop: threading.Event) -> None:
    # From another address than the publishers': the attacks meet the per-address limits
    # without using up the teacher's share of them.
    attacks.SOURCE_ADDRESS = ATTACKER
    names = list(SOAK_ATTACKS)
    i = 0
    while not stop.wait(60.0 if i else 30.0):
        try:
            SOAK_ATTACKS[names[i % len(names)]](node)
        except Exception as exc:
            tally.error(f"attack {names[i % len(names)]}: {exc!r}")
        i += 1


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def _p99(values: list[float]) -> float:
    if len(values) < 2:
        return values[0] if values else 0.0
    return statistics.quantiles(values, n=100, method="inclusive")[98]


def run(minutes: float, viewers: int, whep: int, part: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        node = NodeSubprocess(
            Path(tmp) / "node.log",
            {
                "NEARCAST_TRANSCODE_LADDER": LADDER,
                "NEARCAST_TRANSCODE_CAPACITY_UNITS": "8",
                "NEARCAST_NODE_LOG_LEVEL": "WARNING",
                "NEARCAST_HLS_TENANTS": "{live: llhls}",
                "NEARCAST_HLS_PART_DURATION": str(part),
                "NEARCAST_WEBRTC_RENDITION": RENDITION,
            },
        )
        tally = Tally()
        stop = threading.Event()
        threads = [
            threading.Thread(
                target=_publisher,
                args=(node.rtmp(s), tally, stop, i == len(STREAMS) - 1),
                daemon=True,
            )
            for i, s in enumerate(STREAMS)
        ]
        # The reconnecting publisher's playlists continue after a discontinuity.
        readers = [
            Reader(node.http, f"{s}/{RENDITION}", discontinuity_ok=s == STREAMS[-1])
            for s in STREAMS
        ]
        try:
            for t in threads:
                t.start()
            _wait_playing(node, tally)
            for r in readers:
                r.start()
            load = [
                threading.Thread(target=_viewers, args=(node.http, viewers, tally, stop)),
                threading.Thread(target=_attacks, args=(node, tally, stop)),
            ]
            if whep:
                load.append(threading.Thread(target=_whep, args=(node.http, whep, tally, stop)))
            for t in load:
                t.daemon = True
                t.start()
            rows = _minutes(node, readers, tally, minutes)
        finally:
            stop.set()
            for r in readers:
                r.stop()
            for t in threads:
                t.join(15)
            node.stop()
        verdict = _verdict(rows, minutes, tally)
        if not verdict["ok"]:
            print(f"node log (end):\n{node.log()}", file=sys.stderr)
    return verdict


def _wait_playing(node: NodeSubprocess, tally: Tally, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    with httpx.Client(base_url=node.http, timeout=5) as c:
        while time.monotonic() < deadline:
            ok = 0
            for s in STREAMS:
                with contextlib.suppress(httpx.HTTPError):
                    r = c.get(f"/{s}/{RENDITION}/index.m3u8")
                    ok += r.status_code == 200 and r.text.count("#EXTINF") >= 2
            if ok == len(STREAMS):
                return
            time.sleep(0.5)
    raise RuntimeError(f"the streams never played ({tally.errors}); log: {node.log()}")


def _minutes(
    node: NodeSubprocess, readers: list[Reader], tally: Tally, minutes: float
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    pid = node.proc.pid
    start = time.monotonic()
    print(
        f"{'min':>4} {'node MB':>8} {'workers MB':>10} {'fds':>6} {'steady':>6} {'gaps':>5} "
        f"{'p99 part ms':>11} {'parts':>7} {'errors':>6}",
        flush=True,
    )
    before = counters(node.http)
    for minute in range(1, int(minutes + 0.999) + 1):
        mem: list[float] = []
        fds: list[float] = []
        node_mem: list[float] = []
        steady: list[float] = []
        while time.monotonic() < start + 60 * min(minute, minutes):
            kids = descendants(pid)
            node_mem.append(rss_mb(pid))
            mem.append(node_mem[-1] + sum(rss_mb(k) for k in kids))
            fds.append(open_fds([pid, *kids]))
            # Without the viewers' HTTP connections, which are load, not state.
            steady.append(fds_besides(pid, socket_inodes(pid, node.http_port)) + open_fds(kids))
            time.sleep(5.0)
        delays, errors = tally.take()
        gaps = [p for r in readers for p in r.since().problems]
        for r in readers:
            r.mark()
        now = counters(node.http)
        refused = {
            k.split("reason=")[1].rstrip("}"): n
            for k, n in moved(before, now).items()
            if k.startswith("ingest_rejected_total")
        }
        before = now
        row: dict[str, Any] = {
            "minute": minute,
            "node_rss_mb": round(_median(node_mem), 1),
            "rss_mb": round(_median(mem), 1),
            "fds": _median(fds),
            "fds_steady": _median(steady),
            "gaps": len(gaps),
            "p99_part_delay_ms": round(_p99(delays) * 1000, 1),
            "parts": len(delays),
            "errors": len(errors),
            "refused": refused,
            "gap_examples": gaps[:3],
            "error_examples": errors[:3],
        }
        rows.append(row)
        print(
            f"{minute:>4} {row['node_rss_mb']:>8} {row['rss_mb'] - row['node_rss_mb']:>10.1f} "
            f"{row['fds']:>6.0f} {row['fds_steady']:>6.0f} {row['gaps']:>5} "
            f"{row['p99_part_delay_ms']:>11} "
            f"{row['parts']:>7} {row['errors']:>6}  {refused} {' '.join(gaps[:1] + errors[:1])}",
            flush=True,
        )
    return rows


def _verdict(rows: list[dict[str, Any]], minutes: float, tally: Tally) -> dict[str, Any]:
    warm = 5 if minutes >= 10 else 1
    base = rows[min(warm, len(rows)) - 1]
    last = rows[-1]

    def growth(key: str) -> float:
        return round(100.0 * (last[key] - base[key]) / base[key], 1) if base[key] else 0.0

    out: dict[str, Any] = {
        "minutes": minutes,
        "warmup_minutes": warm,
        "rss_growth_pct": growth("rss_mb"),
        "fd_growth_pct": growth("fds_steady"),
        "gaps": sum(r["gaps"] for r in rows),
        "errors": sum(r["errors"] for r in rows),
        "p99_part_delay_ms": max(r["p99_part_delay_ms"] for r in rows),
        "parts": sum(r["parts"] for r in rows),
        "hint_misses": tally.hint_misses,
        "whep_sessions": tally.whep_sessions,
        "rows": rows,
    }
    out["goals"] = {
        "memory_flat": out["rss_growth_pct"] < 5.0,
        "fds_flat": out["fd_growth_pct"] < 5.0,
        "no_gap": out["gaps"] == 0,
        "no_error": out["errors"] == 0,
    }
    out["ok"] = all(out["goals"].values())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--viewers", type=int, default=500, help="LL-HLS viewers (default 500)")
    parser.add_argument("--whep", type=int, default=20, help="WHEP viewers (default 20)")
    parser.add_argument(
        "--part", type=float, default=0.5, help="hls.part_duration in seconds (default 0.5)"
    )
    args = parser.parse_args()
    if args.minutes < 1:
        parser.error("--minutes must be at least 1")
    verdict = run(args.minutes, args.viewers, args.whep, args.part)
    print(json.dumps({"soak": verdict}), flush=True)
    sys.exit(0 if verdict["ok"] else 1)


if __name__ == "__main__":
    main()
