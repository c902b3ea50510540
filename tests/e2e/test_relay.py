"""The pull relay end to end: an origin node publishing, an edge node relaying on demand.

Origin A (cloud, its own embedded placement service) transcodes a published file; edge
B (``relay.enabled``) registers with A's placement and serves A's streams to its own
viewers by pulling them once. Both are real ``nearcast node`` processes; viewers are
independent HTTP readers following LL-HLS blocking reloads, and FFmpeg (PyAV).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import av
import httpx
import pytest
from nodeutil import SMALL, SMALL_LADDER, NodeProcess, Publisher, wait_for
from placementutil import NODE_KEYS, node_credential

from nearcast.whep_probe import probe_whep
from tokens import sign

OP = "op-relay-test"
RELAY_KEYS = "{r1: relay-key-0123456789abcdef}"
# The guarded tenant's keys differ between the nodes: a viewer's token made for B is
# refused by A, so B can only be pulling with its own relay credential.
KEY_A = "vip-key-origin-0123456789"
KEY_B = "vip-key-edge-0123456789ab"
RENDITION = "180p"


def _common(node_id: str, tier: str, city: str) -> dict[str, str]:
    return {
        "NEARCAST_NODE_ID": node_id,
        "NEARCAST_NODE_TIER": tier,
        "NEARCAST_NODE_REGION": "east",
        "NEARCAST_NODE_CITY": city,
        "NEARCAST_RTMP_TENANTS": "[live, vip]",
        "NEARCAST_TRANSCODE_LADDER": SMALL_LADDER,
        # Half-second parts: 50 viewers in one test process keep up with them.
        "NEARCAST_HLS_SEGMENT_DURATION": "2",
        "NEARCAST_HLS_PART_DURATION": "0.5",
        # Room to look up every segment the relay pulled while the test counts bytes.
        "NEARCAST_HLS_WINDOW": "40",
        "NEARCAST_INGEST_OPERATOR_TOKEN": OP,
        "NEARCAST_RELAY_KEYS": RELAY_KEYS,
        "NEARCAST_PLACEMENT_LIVENESS_HEARTBEAT_INTERVAL": "0.25",
        "NEARCAST_PLACEMENT_LIVENESS_TTL": "2",
        "NEARCAST_PLACEMENT_LIVENESS_FULL_STATS_INTERVAL": "0.5",
    }


class Fleet:
    def __init__(self, tmp: Path) -> None:
        self.a = NodeProcess(
            tmp / "origin.log",
            **_common("origin-a", "cloud", "shanghai"),
            NEARCAST_PLACEMENT_NODE_KEYS=f"{{k1: {NODE_KEYS['k1']}}}",
            NEARCAST_PLACEMENT_OPERATOR_TOKEN=OP,
            NEARCAST_PLAYBACK_TENANTS=f"{{vip: {{keys: {{a1: {KEY_A}}}}}}}",
        )
        self.pubs = [Publisher(SMALL, self.a.rtmp(s)) for s in ("live/cam", "vip/cam")]
        self.b = NodeProcess(
            tmp / "edge.log",
            **_common("edge-b", "edge", "hangzhou"),
            NEARCAST_PLACEMENT_URL=self.a.http,
            NEARCAST_PLACEMENT_NODE_TOKEN=node_credential("edge-b"),
            NEARCAST_PLAYBACK_TENANTS=f"{{vip: {{keys: {{b1: {KEY_B}}}}}}}",
            NEARCAST_RELAY_ENABLED="true",
            NEARCAST_RELAY_IDLE_TIMEOUT="5",
            NEARCAST_NODE_LOG_LEVEL="DEBUG",
        )
        for s in ("live/cam", "vip/cam"):
            tok = sign(KEY_A, "a1", "play", "vip", "cam", int(time.time()) + 600)
            q = f"?token={tok}" if s.startswith("vip") else ""

            def listed(s: str = s, q: str = q) -> bool:
                errors = [p.error for p in self.pubs if p.error is not None]
                assert not errors, errors
                r = self.a.get(f"/{s}/{RENDITION}/index.m3u8{q}")
                return r.status_code == 200 and r.text.count("#EXTINF") >= 3

            wait_for(listed, 90, f"3 segments of {s} on the origin")

        # The nodes share this host's CPU with whatever else runs: placement's CPU filter
        # must not turn them away for it.
        policy = {"version": 2, "name": "tests", "filters": {"max_cpu": 1.5}}
        self.a.client.put(
            "/v1/policy", json=policy, headers={"Authorization": f"Bearer {OP}"}
        ).raise_for_status()
        wait_for(lambda: self.node("edge-b"), 30, "edge-b registered with the origin's placement")

    def node(self, node_id: str) -> dict[str, Any] | None:
        """``node_id`` as the origin's embedded placement service lists it."""
        r = self.a.client.get("/v1/nodes", headers={"Authorization": f"Bearer {OP}"})
        r.raise_for_status()
        return next((n for n in r.json()["nodes"] if n["id"] == node_id), None)

    def relays(self) -> list[dict[str, Any]]:
        r = self.b.client.get("/v1/relays", headers={"Authorization": f"Bearer {OP}"})
        r.raise_for_status()
        return list(r.json()["relays"])

    def relay(self, stream: str) -> dict[str, Any] | None:
        return next((r for r in self.relays() if f"{r['tenant']}/{r['stream']}" == stream), None)

    def stop(self) -> None:
        for p in self.pubs:
            p.stop()
        self.b.stop()
        self.a.stop()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    f = Fleet(tmp_path_factory.mktemp("relay"))
    try:
        yield f
    finally:
        f.stop()


_PART = re.compile(r'#EXT-X-PART:.*URI="([^"]+)"')


async def _viewer(c: httpx.AsyncClient, seconds: float, got: list[int]) -> None:
    """An LL-HLS reader: blocking reloads for the next part, each new part fetched once.
    ``got``: [bytes of parts, parts fetched, parts gone by the time they were asked for
    (a reader that fell behind, on a busy test machine, starts again from the edge)]."""
    r = await c.get("index.m3u8")
    r.raise_for_status()
    seen: set[str] = set()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        text = r.text
        behind = False
        for uri in _PART.findall(text)[-4:]:
            if uri not in seen:
                seen.add(uri)
                pr = await c.get(uri)
                if pr.status_code == 404:
                    behind = True
                    got[2] += 1
                    break
                assert pr.status_code == 200, (uri, pr.status_code, pr.text)
                got[0] += len(pr.content)
                got[1] += 1
        if behind:
            r = await c.get("index.m3u8")
            r.raise_for_status()
            continue
        hint = re.search(r'PRELOAD-HINT:TYPE=PART,URI="(\d+)\.(\d+)\.m4s', text)
        assert hint is not None, text
        msn, part = hint.groups()
        r = await c.get(f"index.m3u8?_HLS_msn={msn}&_HLS_part={part}")
        r.raise_for_status()


def _run_viewers(base: str, n: int, seconds: float) -> list[list[int]]:
    async def main() -> list[list[int]]:
        counters = [[0, 0, 0] for _ in range(n)]
        # One client (one TLS context) with a connection per viewer.
        limits = httpx.Limits(max_connections=2 * n, max_keepalive_connections=2 * n)
        async with httpx.AsyncClient(base_url=base, timeout=10, limits=limits) as c:
            await asyncio.gather(*(_viewer(c, seconds, got) for got in counters))
        return counters

    return asyncio.run(main())


def test_relay_pulls_one_copy_for_50_viewers(fleet: Fleet) -> None:
    base = f"{fleet.b.http}/live/cam/{RENDITION}/"
    # The first request starts the relay and waits for it (no 404 while it starts).
    assert fleet.b.get("/live/cam/index.m3u8").status_code == 200
    got = _run_viewers(base, 50, 8.0)
    # Readers on a busy test machine may fall behind (and start again from the edge):
    # what matters is what the relay pulled for them.
    parts, gone = sum(g[1] for g in got), sum(g[2] for g in got)
    assert parts > 50 and sum(1 for g in got if g[1]) >= 40, got
    relay = fleet.relay("live/cam")
    assert relay is not None
    # Only the rendition the viewers asked for is pulled.
    assert set(relay["renditions"]) == {RENDITION}, relay
    r = relay["renditions"][RENDITION]
    pulled = relay["bytes"]["media"]
    # One copy on the origin over the same range: its init, whole segments, and the
    # parts of the segment being built that the relay has.
    a = fleet.a
    text = a.get(f"/live/cam/{RENDITION}/index.m3u8").text
    init = re.findall(r'#EXT-X-MAP:URI="([^"]+)"', text)[-1]
    expected = len(a.get(f"/live/cam/{RENDITION}/{init}").content)
    for msn in range(r["first"], r["next"]):
        seg = a.get(f"/live/cam/{RENDITION}/{msn}.m4s")
        assert seg.status_code == 200, msn
        expected += len(seg.content)
    for i in range(r["parts"]):
        expected += len(a.get(f"/live/cam/{RENDITION}/{r['next']}.{i}.m4s").content)
    playlists = fleet.b.metric("relay_inbound_bytes_total", kind="playlist")
    served = sum(g[0] for g in got)
    print(
        f"\n50 viewers on the relay: {pulled} media bytes pulled from the origin for one copy "
        f"of {expected} ({pulled / expected:.3f}), {playlists:.0f} playlist bytes; "
        f"{served} bytes served to the viewers"
    )
    assert abs(pulled - expected) <= 0.05 * expected, (pulled, expected, relay)
    # One copy pulled, whatever the number of viewers, while they got many between them
    # (how many depends on how far behind a busy machine leaves these readers).
    assert served > 2 * pulled, (served, pulled, gone)
    assert fleet.b.metric("relay_inbound_bytes_total", kind="media") >= pulled
    assert fleet.b.metric("relay_inbound_bytes_total", kind="playlist") > 0


def test_ffmpeg_plays_the_stream_from_the_relay(fleet: Fleet) -> None:
    decoded = 0
    with av.open(f"{fleet.b.http}/live/cam/index.m3u8", timeout=(10, 10)) as c:
        video = c.streams.video[0]
        for packet in c.demux(video):
            for _frame in packet.decode():
                decoded += 1
            if decoded >= 30:
                break
    assert decoded >= 30


def test_a_whep_viewer_of_the_relay_gets_the_origins_webrtc_tap_without_a_transcode(
    fleet: Fleet,
) -> None:
    """WHEP on the relay: B pulls the origin's WebRTC tap (H.264 without B-frames, and
    Opus) as its hidden CMAF rendition and sends it re-packetized; an aiortc viewer of B
    decodes pictures and sound. B transcodes nothing."""
    result = asyncio.run(probe_whep(f"{fleet.b.http}/live/cam/whep", duration=4.0))
    s = result.summary()
    assert s["frames"] >= 30 and s["stalls"] == 0, s
    assert s["audio_frames"] >= 50 and s["audio_rate"] == 48000, s
    assert fleet.b.metric("transcode_segments_total") == 0
    assert fleet.b.metric("relay_inbound_bytes_total", kind="media") > 0


def test_guarded_tenant_needs_a_token_at_the_relay_and_is_pulled_with_its_credential(
    fleet: Fleet,
) -> None:
    # No token: refused at the relay (which starts no pull for it).
    refused = fleet.b.get(f"/vip/cam/{RENDITION}/index.m3u8")
    assert refused.status_code == 403
    assert fleet.relay("vip/cam") is None
    # B's viewer token: A would refuse it (other keys), so the relay pulls with its own
    # relay credential, and the viewer's playlist carries the viewer's token.
    token = sign(KEY_B, "b1", "play", "vip", "cam", int(time.time()) + 600)
    master = fleet.b.get(f"/vip/cam/index.m3u8?token={token}")
    assert master.status_code == 200 and f"token={token}" in master.text
    r = fleet.b.get(f"/vip/cam/{RENDITION}/index.m3u8?token={token}")
    assert r.status_code == 200 and "#EXTINF" in r.text
    segment = re.findall(r"^(\d+\.m4s\?token=.*)$", r.text, re.M)[-1]
    assert fleet.b.get(f"/vip/cam/{RENDITION}/{segment}").status_code == 200
    # The origin refused nothing: it never saw the viewer's token.
    assert fleet.a.metric("playback_rejected_total") == 0


def test_idle_relay_stops_and_frees_the_stream(fleet: Fleet) -> None:
    assert fleet.b.get(f"/live/cam/{RENDITION}/index.m3u8").status_code == 200
    wait_for(lambda: fleet.relay("live/cam") is None, 20, "the idle relay to stop")
    assert fleet.b.get("/v1/streams/live/cam").status_code == 404
    assert fleet.b.metric("relay_stopped_total", reason="idle") >= 1
    assert fleet.b.metric("relay_streams_active") == 0


def test_placement_sends_a_viewer_to_a_relay_in_their_city(fleet: Fleet) -> None:
    # After the idle test: edge-b holds nothing, the origin alone holds the stream.
    wait_for(
        lambda: "live/cam" not in (fleet.node("edge-b") or {"streams": ["live/cam"]})["streams"],
        10,
        "edge-b to report it no longer holds live/cam",
    )
    r = fleet.a.get("/v1/route?tenant=live&stream=cam&city=hangzhou")
    assert r.status_code == 200
    d = r.json()
    assert d["node"] == "edge-b", (d["explanation"], fleet.node("edge-b"))
    assert "relays it on demand" in d["explanation"]["reason"]
    # Far from any relay, the viewer goes to the origin.
    assert fleet.a.get("/v1/route?tenant=live&stream=cam&city=beijing").json()["node"] in (
        "origin-a",
        "edge-b",
    )
