"""Where a relay pulls from (core.upstream, GET /v1/upstream) and viewers kept in their city."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from placementutil import NODE_KEYS, Clock, make_node, node_headers, wait_for

from placement.agent import NodeAgent
from placement.app import create_app
from placement.config import LivenessConfig, PlacementConfig
from placement.core import route, upstream
from placement.model import FleetSnapshot, Load, Location, Node, NodeState
from placement.policy import parse_policy
from placement.registry.memory import InProcessRegistry

NOW = 1_000_000.0
KEY = "school/class1"
RELAY = {"relay": "on"}
HELD = frozenset({KEY})
RELAYED = frozenset({KEY, f"relay:{KEY}"})


def snap(*nodes: Node) -> FleetSnapshot:
    return FleetSnapshot.build(nodes, "s1", NOW)


def ask(s: FleetSnapshot, asker: str, origin: str | None = None) -> Any:
    return upstream(
        s, "school", "class1", s.nodes[asker], parse_policy({}), NOW, ttl=6.0, origin_id=origin
    )


CLOUD = make_node("c-origin", "cloud", region="cloud-eu", city="cloud", streams=HELD)
EDGE = make_node("e-lyon", labels=RELAY)


@pytest.mark.parametrize(
    ("mec", "step", "node", "why"),
    [
        # A MEC of the edge's region already relaying the stream: it pulls it anyway.
        (make_node("m-west", "mec", streams=RELAYED, labels=RELAY), "mec", "m-west", "holds"),
        # One that can relay it: the edge's pull makes it the region's one copy.
        (make_node("m-west", "mec", labels=RELAY), "mec", "m-west", "can relay"),
        # One that does not relay: the origin.
        (make_node("m-west", "mec"), "origin", "c-origin", "origin"),
        # One in another region: the origin.
        (make_node("m-east", "mec", region="east", labels=RELAY), "origin", "c-origin", "origin"),
        # A relaying MEC that stopped beating: the origin.
        (
            make_node("m-west", "mec", streams=RELAYED, labels=RELAY, hb=NOW - 60),
            "origin",
            "c-origin",
            "origin",
        ),
    ],
)
def test_an_edge_pulls_from_its_regions_mec_else_the_origin(
    mec: Node, step: str, node: str, why: str
) -> None:
    d = ask(snap(CLOUD, EDGE, mec), "e-lyon")
    assert (d.step, d.node.id) == (step, node), d.reason
    assert why in d.reason
    assert d.extra["origin"] == "c-origin"
    assert d.explain()["fallback"][-1]["step"] == step


def test_a_mec_pulls_from_the_origin_never_from_an_edge_relay() -> None:
    edge_relay = make_node("e-lyon", streams=RELAYED, labels=RELAY)
    mec = make_node("m-west", "mec", labels=RELAY)
    d = ask(snap(CLOUD, edge_relay, mec), "m-west")
    assert (d.step, d.node.id) == ("origin", "c-origin")


def test_the_sessions_node_is_the_origin() -> None:
    other = make_node("c-other", "cloud", region="cloud-us", city="cloud2", streams=HELD)
    d = ask(snap(CLOUD, other, EDGE), "e-lyon", origin="c-other")
    assert d.node.id == "c-other" and d.extra["origin"] == "c-other"


@pytest.mark.parametrize(
    ("origin", "reason"),
    [
        (make_node("c-origin", "cloud", streams=HELD, hb=NOW - 60), "1 no heartbeat"),
        (make_node("c-origin", "cloud", streams=HELD, state=NodeState.CORDONED), "1 cordoned"),
    ],
)
def test_no_upstream_when_the_origin_is_down(origin: Node, reason: str) -> None:
    d = ask(snap(origin, EDGE), "e-lyon")
    assert d.node is None and reason in d.reason


def test_the_origin_has_no_upstream_even_where_a_mec_relays_its_stream() -> None:
    """The publisher moved to this edge (its session is here) while a MEC still relays
    the stream from the old origin: the edge must not pull it from that MEC, which will
    pull from the edge, or the two relay each other in a loop."""
    mec = make_node("m-west", "mec", streams=RELAYED, labels=RELAY)
    d = ask(snap(CLOUD, EDGE, mec), "e-lyon", origin="e-lyon")
    assert d.node is None and "e-lyon is the origin of school/class1" in d.reason, d.reason


def test_holders_that_relay_are_never_taken_for_the_origin() -> None:
    # Only relays hold the stream (its origin is gone): nobody to pull from.
    edge_relay = make_node("e-paris", city="paris", region="north", streams=RELAYED)
    d = ask(snap(edge_relay, EDGE), "e-lyon")
    assert d.node is None and "no origin" in d.reason


def test_an_asker_not_registered_yet_gets_the_origin() -> None:
    s = snap(CLOUD, make_node("m-west", "mec", streams=RELAYED, labels=RELAY))
    d = upstream(s, "school", "class1", "e-new", parse_policy({}), NOW, ttl=6.0)
    assert (d.step, d.node.id) == ("origin", "c-origin")


def test_the_origin_is_not_asked_to_be_near() -> None:
    far = make_node("c-far", "cloud", region="ap", city="tokyo", lat=35.7, lon=139.7, streams=HELD)
    d = ask(snap(far, EDGE), "e-lyon")
    assert d.node.id == "c-far"


# -- viewers stay in their city ----------------------------------------------------------


LYON = Location("lyon", "orange", "west", 45.76, 4.84)


def view(s: FleetSnapshot, loc: Location = LYON) -> Any:
    return route(s, "school", "class1", loc, parse_policy({}), NOW, ttl=6.0, origin_id="c-origin")


def test_a_viewer_without_a_holder_in_their_city_goes_to_a_relay_there() -> None:
    d = view(snap(CLOUD, make_node("e-free", isp="free", labels=RELAY), EDGE))
    # Same city, then the viewer's ISP.
    assert (d.step, d.node.id) == ("relay", "e-lyon"), d.reason
    assert "relays it on demand (same city, same ISP)" in d.reason
    assert [s["step"] for s in d.explain()["fallback"]] == ["viewer", "relay"]


def test_a_holder_in_the_city_is_preferred_to_a_new_relay() -> None:
    holder = make_node("e-holder", isp="free", streams=RELAYED, labels=RELAY)
    d = view(snap(CLOUD, holder, EDGE))
    assert (d.step, d.node.id) == ("viewer", "e-holder")


def test_a_busy_holder_in_the_city_is_preferred_to_an_idle_one_elsewhere() -> None:
    origin = make_node("e-origin", streams=HELD, slots=1, cpu=0.6)
    mec = make_node("m-west", "mec", city="west-metro", streams=RELAYED, labels=RELAY)
    d = view(snap(origin, mec))
    assert (d.step, d.node.id) == ("viewer", "e-origin")
    assert "in city lyon" in d.reason


@pytest.mark.parametrize(
    "local",
    [
        make_node("e-lyon"),  # does not relay
        make_node("e-lyon", labels=RELAY, viewers=0),  # full
        make_node("e-lyon", labels=RELAY, state=NodeState.DRAINING),
        make_node("e-lyon", labels=RELAY, hb=NOW - 60),
    ],
)
def test_without_a_relay_able_to_serve_in_the_city_the_viewer_goes_to_a_holder(
    local: Node,
) -> None:
    d = view(snap(CLOUD, local))
    assert (d.step, d.node.id) == ("viewer", "c-origin")


def test_a_viewer_of_unknown_city_goes_to_the_nearest_holder() -> None:
    d = view(snap(CLOUD, EDGE), Location())
    assert d.node.id == "c-origin"


# -- GET /v1/upstream ------------------------------------------------------------------


@pytest.fixture
async def app(clock: Clock) -> AsyncIterator[FastAPI]:
    cfg = PlacementConfig(operator_token="op-secret", node_keys=NODE_KEYS)
    app = create_app(cfg, InProcessRegistry(), clock=clock, background=False)
    await app.state.service.start(background=False)
    yield app
    await app.state.service.stop()


@pytest.fixture
def clock() -> Clock:
    return Clock(NOW)


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app, client=("10.1.2.3", 5555))
    async with httpx.AsyncClient(transport=transport, base_url="http://placement") as c:
        yield c


async def beat(client: httpx.AsyncClient, node: Node) -> None:
    d = node.descriptor()
    d["streams"] = sorted(node.streams)
    r = await client.post(
        f"/v1/nodes/{node.id}/heartbeat",
        json={"load": {"cpu": 0.1}, "node": d},
        headers=node_headers(node.id),
    )
    assert r.status_code == 200, r.text


async def test_upstream_route_names_the_node_and_explains(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    for n in (CLOUD, EDGE, make_node("m-west", "mec", streams=RELAYED, labels=RELAY)):
        await beat(client, n)
    await app.state.service.refresh()
    params = {"tenant": "school", "stream": "class1", "node": "e-lyon"}
    r = await client.get("/v1/upstream", params=params, headers=node_headers("e-lyon"))
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["node"], body["tier"], body["url"], body["origin"]) == (
        "m-west",
        "mec",
        "http://m-west.test",
        "c-origin",
    )
    assert body["explanation"]["step"] == "mec" and body["explanation"]["fallback"]
    # Another node's credential, or none: 401.
    r = await client.get("/v1/upstream", params=params, headers=node_headers("m-west"))
    assert r.status_code == 401
    assert (await client.get("/v1/upstream", params=params)).status_code == 401
    # An unknown stream: 404.
    r = await client.get(
        "/v1/upstream", params={**params, "stream": "nope"}, headers=node_headers("e-lyon")
    )
    assert r.status_code == 404


async def test_upstream_route_is_503_while_no_origin_is_alive(
    app: FastAPI, client: httpx.AsyncClient, clock: Clock
) -> None:
    await beat(client, EDGE)
    await beat(client, CLOUD)
    clock.advance(60)
    await beat(client, EDGE)
    await app.state.service.refresh()
    r = await client.get(
        "/v1/upstream",
        params={"tenant": "school", "stream": "class1", "node": "e-lyon"},
        headers=node_headers("e-lyon"),
    )
    assert r.status_code == 503, r.text
    assert "no heartbeat" in r.json()["explanation"]["reason"]


async def test_a_relay_reports_its_streams_on_the_next_beat_not_the_next_full_stats() -> None:
    reg = InProcessRegistry()
    held: list[str] = []
    slow = LivenessConfig(heartbeat_interval=0.05, ttl=0.2, full_stats_interval=60)
    agent = NodeAgent(
        make_node("e1"),
        lambda: Load(),
        PlacementConfig(liveness=slow),
        registry=reg,
        streams=lambda: list(held),
    )
    await agent.start()
    try:
        await wait_for(lambda: agent.beats >= 2, 3.0, "registration")
        held[:] = [KEY, f"relay:{KEY}"]
        agent.streams_changed()

        async def reported() -> bool:
            nodes = await reg.nodes(time.time())
            return bool(nodes) and nodes[0].streams == RELAYED

        await wait_for(reported, 3.0, "the relayed stream in the registry")
    finally:
        await agent.stop()
