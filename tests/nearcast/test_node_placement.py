"""A real ``nearcast node`` registering with a real placement service (over its own Redis).

Each test starts a private redis-server and ``nearcast placement`` on free ports, and a
node pointed at it with fast heartbeats and a short lease, then drives both over HTTP
the way an operator, a publisher and a viewer would.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from nodeutil import SMALL, SMALL_LADDER, NodeProcess, Publisher, segment_numbers, wait_for
from placementutil import (
    OPERATOR_HEADERS,
    Clock,
    PlacementProcess,
    make_node,
    node_credential,
)

from placement.agent import NodeAgent
from placement.config import PlacementConfig
from placement.model import Capacity, Load, Session, SessionState, Tier
from placement.registry.memory import InProcessRegistry

OP = OPERATOR_HEADERS
LEASE_TTL = 3.0


class Service(PlacementProcess):
    """A placement service on its own redis-server, with a short session lease."""

    def __init__(self, tmp: Path) -> None:
        super().__init__(tmp, config={"lease_ttl": LEASE_TTL})


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    svc = Service(tmp_path)
    try:
        yield svc
    finally:
        svc.stop()


def start_node(tmp_path: Path, service: Service, node_id: str) -> NodeProcess:
    return NodeProcess(
        tmp_path / "node.log",
        NEARCAST_NODE_ID=node_id,
        NEARCAST_NODE_REGION="east",
        NEARCAST_NODE_CITY="hangzhou",
        NEARCAST_NODE_LAT="30.27",
        NEARCAST_NODE_LON="120.15",
        NEARCAST_NODE_LABELS="{tenants: live}",
        NEARCAST_NODE_PUBLIC_RTMP="rtmp://edge-1.example.net:1935",
        NEARCAST_NODE_PUBLIC_HTTP="https://edge-1.example.net",
        NEARCAST_NODE_EGRESS_MBPS="2500",
        NEARCAST_NODE_MAX_VIEWERS="4000",
        NEARCAST_TRANSCODE_LADDER=SMALL_LADDER,
        NEARCAST_TRANSCODE_CAPACITY_UNITS="3",
        NEARCAST_HLS_SEGMENT_DURATION="1",
        NEARCAST_HLS_GRACE_PERIOD="1",
        NEARCAST_PLACEMENT_URL=service.base,
        # What the node registers below, and nothing else.
        NEARCAST_PLACEMENT_NODE_TOKEN=node_credential(
            node_id,
            tier="edge",
            region="east",
            city="hangzhou",
            isp="local",
            hosts=("edge-1.example.net",),
            tenants=("live",),
        ),
        NEARCAST_PLACEMENT_LIVENESS_HEARTBEAT_INTERVAL="0.25",
        NEARCAST_PLACEMENT_LIVENESS_TTL="2",
        NEARCAST_PLACEMENT_LIVENESS_FULL_STATS_INTERVAL="1",
    )


def fetch_latest_segment(node: NodeProcess, rendition: str) -> int:
    """A viewer's fetch: the newest segment of one rendition; returns its number."""
    playlist = node.get(f"/live/cam/{rendition}/index.m3u8")
    assert playlist.status_code == 200, playlist.text
    numbers = segment_numbers(playlist.text)
    assert numbers, "no segment listed yet"
    seg = node.get(f"/live/cam/{rendition}/{numbers[-1]}.ts")
    assert seg.status_code == 200 and seg.content
    return numbers[-1]


def test_node_registers_reports_load_and_renews_its_session_lease(
    tmp_path: Path, service: Service
) -> None:
    node = start_node(tmp_path, service, "edge-hz-1")
    publisher: Publisher | None = None
    try:
        desc = wait_for(lambda: service.node("edge-hz-1"), 15, "the node to register")
        wait_for(lambda: node.metric("placement_agent_registered") == 1, 5, "registered == 1")
        assert node.metric("placement_agent_heartbeats_total", result="ok") >= 1
        assert (desc["lat"], desc["lon"]) == (30.27, 120.15)
        assert desc["labels"] == {"tenants": "live"}
        assert desc["urls"] == {
            "rtmp": "rtmp://edge-1.example.net:1935",
            "http": "https://edge-1.example.net",
            "whip": "https://edge-1.example.net",
        }
        assert desc["capacity"] == {"slots": 3, "egress_mbps": 2500.0, "viewers": 4000}
        assert desc["alive"], desc

        r = service.client.post(
            "/v1/sessions",
            json={
                "tenant": "live",
                "stream": "cam",
                "location": {"city": "hangzhou", "isp": "local", "region": "east"},
            },
        )
        assert r.status_code == 201, r.text
        session = r.json()
        assert session["node"] == "edge-hz-1"
        ingest = session["ingest"]["rtmp"]
        assert ingest == f"rtmp://edge-1.example.net:1935/live/cam?session={session['id']}"
        first_expiry = session["lease_expires"]

        # The publisher names its session on the ingest URL; the node renews its lease.
        # (the URL placement handed out, on this test's own host and port)
        publisher = Publisher(SMALL, node.rtmp("live/" + ingest.rsplit("/", 1)[1]))
        wait_for(lambda: fetch_latest_segment(node, "360p"), 20, "the first 360p segment")

        def loaded() -> dict[str, Any] | None:
            fetch_latest_segment(node, "360p")  # a viewer keeps fetching
            n = service.node("edge-hz-1")
            load = n["load"] if n else {}
            ok = load.get("transcodes", 0) >= 1 and load.get("egress_mbps", 0) > 0
            return load if ok and load.get("cpu", 0) > 0 and load.get("viewers", 0) >= 1 else None

        load = wait_for(loaded, 15, "the node's load to show the stream and its viewer")
        assert load["cpu"] <= 1.0

        # Well past the lease TTL the session is still held, renewed and live.
        deadline = first_expiry + 2 * LEASE_TTL
        while time.time() < deadline:
            r = service.client.get(f"/v1/sessions/{session['id']}")
            assert r.status_code == 200, f"the lease lapsed while the stream was live: {r.text}"
            time.sleep(0.25)
        got = r.json()
        assert got["state"] == "live" and got["lease_expires"] > first_expiry + LEASE_TTL, got
        assert publisher.alive()

        # The stream ends: after the grace period the lease is no longer renewed and lapses.
        publisher.stop()
        publisher = None
        wait_for(
            lambda: service.client.get(f"/v1/sessions/{session['id']}").status_code == 404,
            1 + LEASE_TTL + 10,
            "the ended stream's session to expire",
        )
    finally:
        if publisher is not None:
            publisher.stop()
        node.stop()


def test_node_keeps_serving_hls_while_placement_is_unreachable(
    tmp_path: Path, service: Service
) -> None:
    node = start_node(tmp_path, service, "edge-hz-2")
    publisher = Publisher(SMALL, node.rtmp("live/cam"))
    try:
        wait_for(lambda: service.node("edge-hz-2"), 15, "the node to register")
        wait_for(lambda: fetch_latest_segment(node, "360p"), 20, "the first 360p segment")
        service.stop()  # the placement service and its Redis are gone
        wait_for(lambda: "heartbeat failed" in node.log(), 10, "the agent to notice")
        # What an operator's alert sees (deploy/alerts.yml).
        assert node.metric("placement_agent_heartbeats_total", result="failed") >= 1
        wait_for(lambda: node.metric("placement_agent_registered") == 0, 5, "registered == 0")
        last = fetch_latest_segment(node, "360p")
        wait_for(
            lambda: fetch_latest_segment(node, "360p") >= last + 3,
            15,
            "new segments while placement is down",
        )
        assert publisher.alive()
        assert node.get("/live/cam/index.m3u8").status_code == 200
    finally:
        publisher.stop()
        node.stop()


async def test_changed_descriptor_is_sent_at_once_and_sessions_renewed() -> None:
    """Capacity measured after start reaches the registry on the next beat, not at the
    next full-stats interval; the sessions reported renew their leases every beat."""
    clock = Clock()
    reg = InProcessRegistry()
    cfg = PlacementConfig(lease_ttl=5.0)
    node = make_node("e1", slots=1)
    held = ["west~s1"]
    agent = NodeAgent(
        node, lambda: Load(transcodes=1), cfg, registry=reg, sessions=lambda: held, clock=clock
    )
    await agent.beat()
    [n] = await reg.nodes(clock())
    assert n.capacity.slots == 1
    clock.advance(1.0)  # well within full_stats_interval
    agent.update(dataclasses.replace(node, capacity=Capacity(4, 900.0, 100)))
    await agent.beat()
    [n] = await reg.nodes(clock())
    assert n.capacity == Capacity(4, 900.0, 100)

    s = Session("west~s1", "live", "cam", "e1", Tier.EDGE, "west", 1, 5.0, clock(), clock() + 5)
    assert await reg.reserve(s, clock())
    for _ in range(3):  # 12 s of beats, past the 5 s lease: renewed each time
        clock.advance(4.0)
        await agent.beat()
    got = await reg.get_session("west~s1", clock())
    assert got is not None and got.state is SessionState.LIVE
    held.clear()  # the stream ended: no longer reported, the lease runs out
    clock.advance(4.0)
    await agent.beat()
    clock.advance(2.0)
    assert await reg.get_session("west~s1", clock()) is None


def test_a_single_node_is_its_own_placement_service(tmp_path: Path) -> None:
    """No placement.url: the node registers itself in its embedded registry and answers
    the placement API on its own port: sessions land on it, viewers are routed to it."""
    node = NodeProcess(
        tmp_path / "node.log",
        NEARCAST_TRANSCODE_LADDER=SMALL_LADDER,
        NEARCAST_NODE_ID="solo",
        NEARCAST_PLACEMENT_OPERATOR_TOKEN="op-test",
    )
    publisher: Publisher | None = None
    try:
        c = node.client

        def registered() -> dict[str, Any] | None:
            nodes = c.get("/v1/nodes", headers=OP).json()["nodes"]
            return next((n for n in nodes if n["id"] == "solo"), None)

        desc = wait_for(registered, 15, "the node in its own registry")
        assert desc["state"] == "ready" and desc["tier"] == "edge"
        assert c.get("/v1/nodes").status_code == 401  # operator endpoints need the token

        # The operator tunes the node's own policy: this host's CPU is busy with tests.
        policy = {"version": 2, "name": "solo", "filters": {"max_cpu": 1.5}}
        r = c.put("/v1/policy", json=policy, headers=OP)
        assert r.status_code == 200 and r.json()["active"] == "solo@2", r.text
        here = {"city": "local", "isp": "local", "region": "local"}  # the node's defaults
        body = {"tenant": "live", "stream": "cam", "location": here}
        r = c.post("/v1/sessions", json=body, headers=OP)
        assert r.status_code == 201, r.text
        session = r.json()
        assert session["node"] == "solo" and session["tier"] == "edge"
        ingest = session["ingest"]["rtmp"]
        assert ingest.endswith(f"/live/cam?session={session['id']}")
        publisher = Publisher(SMALL, node.rtmp("live/" + ingest.rsplit("/", 1)[1]))

        def routed() -> dict[str, Any] | None:
            params = {"tenant": "live", "stream": "cam", "city": "local", "isp": "local"}
            r = c.get("/v1/route", params=params)
            return r.json() if r.status_code == 200 else None

        route = wait_for(routed, 20, "a viewer route to the stream")
        assert route["node"] == "solo"
        assert route["playback"].endswith("/live/cam/index.m3u8")
        # The node's own API and media are untouched by the embedded service.
        assert c.get("/v1/streams").status_code == 200
        wait_for(lambda: c.get("/live/cam/index.m3u8").status_code == 200, 30, "the playlist")
    finally:
        if publisher is not None:
            publisher.stop()
        node.stop()
