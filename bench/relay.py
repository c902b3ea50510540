"""Glass-to-glass latency through one pull relay, against the origin's own, in one run.

Run: ``python -m bench.relay [--duration S] [--source FILE]``

Two shipped ``nearcast node`` processes on this machine: origin A (cloud tier, its
own embedded placement service) and edge B (``relay.enabled``, registered with
A's placement with a node credential). ``nearcast publish --clock`` pushes the
sample lecture to A in real time with the wall clock stamped into every frame.
Then ``nearcast probe`` plays LL-HLS from A and, at the same time, from B (whose
first request makes it pull the stream from A), and reads the stamps; then hls.js in
headless Chromium plays each in turn, and the stamps of the frames it presents are
read the same way (``bench.players``). The relay
adds what it takes to notice a part upstream, fetch it and list it: the target is
at most 0.5 s over the origin's p50.

The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.latency import LL_ENV, SAMPLE, Node, Publisher, play, wait_playlist
from nearcast.playout import ProbeError
from nearcast.probe import format_table, probe
from placement.credentials import mint

log = logging.getLogger("bench.relay")
TARGET_MS = 500.0
OP = "bench-operator"
NODE_KEYS = {"k1": "bench-node-key-0123456789abcdef"}
RELAY_KEYS = "{r1: bench-relay-key-0123456789abcdef}"


def _env(node_id: str, tier: str, city: str) -> dict[str, str]:
    return {
        **LL_ENV,
        "NEARCAST_NODE_ID": node_id,
        "NEARCAST_NODE_TIER": tier,
        "NEARCAST_NODE_REGION": "bench",
        "NEARCAST_NODE_CITY": city,
        "NEARCAST_RELAY_KEYS": RELAY_KEYS,
        "NEARCAST_PLACEMENT_LIVENESS_HEARTBEAT_INTERVAL": "0.5",
        "NEARCAST_PLACEMENT_LIVENESS_TTL": "3",
        "NEARCAST_PLACEMENT_LIVENESS_FULL_STATS_INTERVAL": "1",
    }


def _wait_registered(origin: str, node_id: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    headers = {"Authorization": f"Bearer {OP}"}
    while time.monotonic() < deadline:
        r = httpx.get(f"{origin}/v1/nodes", headers=headers, timeout=5)
        if r.status_code == 200 and any(n["id"] == node_id for n in r.json()["nodes"]):
            return
        time.sleep(0.25)
    raise RuntimeError(f"{node_id} did not register with the origin's placement in {timeout} s")


async def _both(origin: str, relay: str, duration: float) -> tuple[Any, ...]:
    return await asyncio.gather(
        probe(f"{origin}/live/bench/index.m3u8", duration, "llhls"),
        probe(f"{relay}/live/bench/index.m3u8", duration, "llhls"),
        return_exceptions=True,
    )


def run(source: str, duration: float, workdir: Path) -> dict[str, Any]:
    a = Node(
        workdir / "origin.log",
        {
            **_env("origin-a", "cloud", "origin-city"),
            "NEARCAST_PLACEMENT_OPERATOR_TOKEN": OP,
            "NEARCAST_PLACEMENT_NODE_KEYS": json.dumps(NODE_KEYS),
        },
    )
    b: Node | None = None
    pub = Publisher(source, f"{a.live}/bench")
    pub.start()
    try:
        token = mint(
            NODE_KEYS,
            "edge-b",
            tier="*",
            region="*",
            city="*",
            isp="*",
            hosts=["*"],
            expires=int(time.time()) + 3600,
        )
        b = Node(
            workdir / "edge.log",
            {
                **_env("edge-b", "edge", "edge-city"),
                "NEARCAST_PLACEMENT_URL": a.http,
                "NEARCAST_PLACEMENT_NODE_TOKEN": token,
                "NEARCAST_RELAY_ENABLED": "true",
            },
        )
        # The bench machine may be busy: placement's CPU filter must not refuse the nodes.
        policy = {"version": 2, "name": "bench", "filters": {"max_cpu": 1.5}}
        httpx.put(
            f"{a.http}/v1/policy", json=policy, headers={"Authorization": f"Bearer {OP}"}
        ).raise_for_status()
        wait_playlist(a.http, "bench", 90)
        _wait_registered(a.http, "edge-b", 30)
        # Both viewers join a running class: the relay is pulling every rendition and
        # lists parts as far back as the origin before the probes start. The segments a
        # relay copies as it starts come whole, without parts; a probe that joined then
        # would start at the newest part, at the live edge, without the PART-HOLD-BACK
        # the origin's viewer keeps: a lower figure that says nothing of the relay.
        # The origin lists parts of its last three segments: the relay, of its last two.
        wait_playlist(b.http, "bench", 60, every=True, parts=12)
        results = asyncio.run(_both(a.http, b.http, duration))
        # Then a real player, hls.js in headless Chromium, on each in turn: the frames
        # it presents (bench.players).
        hlsjs = {
            name: play("hlsjs", f"{http}/live/bench/index.m3u8", duration)
            for name, http in (("origin", a.http), ("relay", b.http))
        }
        if pub.error is not None:
            raise RuntimeError(f"publisher failed: {pub.error}")
    finally:
        pub.stop()
        if b is not None:
            b.stop()
        a.stop()
    rows: dict[str, Any] = {}
    for name, result in zip(("origin", "relay"), results, strict=True):
        if isinstance(result, (ProbeError, TimeoutError)):
            rows[name] = {"protocol": "llhls", "error": str(result)}
        elif isinstance(result, BaseException):
            raise result
        else:
            rows[name] = {**result.summary(), "protocol": f"llhls ({name})"}
        rows[name]["hlsjs"] = hlsjs[name]
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=20.0, help="seconds each probe plays")
    parser.add_argument("--source", default=str(SAMPLE), help="file published (looped)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    with tempfile.TemporaryDirectory(prefix="bench-relay-") as tmp:
        rows = run(args.source, args.duration, Path(tmp))
    print(format_table(list(rows.values())))
    origin = rows["origin"].get("latency_p50_ms")
    relay = rows["relay"].get("latency_p50_ms")
    added = None if origin is None or relay is None else round(relay - origin, 1)
    ok = added is not None and added <= TARGET_MS
    seen = [rows[name]["hlsjs"].get("p50_ms") for name in ("origin", "relay")]
    hlsjs_added = None if None in seen else round(seen[1] - seen[0], 1)
    print(
        f"hls.js presented frames: origin p50 {seen[0]} ms, relay p50 {seen[1]} ms, "
        f"relay adds {hlsjs_added} ms"
    )
    print(
        f"origin p50 {origin} ms, relay p50 {relay} ms, relay adds {added} ms "
        f"(target <= {TARGET_MS:.0f} ms): {'ok' if ok else 'MISSED'}"
    )
    print(
        json.dumps(
            {
                "origin": rows["origin"],
                "relay": rows["relay"],
                "added_p50_ms": added,
                "hlsjs_added_p50_ms": hlsjs_added,
                "target_ms": TARGET_MS,
                "ok": ok,
            }
        )
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
