"""The console's API: named operators and the audit log, decommission, replay against
today's fleet, policy validation, dry run, history and rollback, the simulator, kicks
and the console's pages."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from fastapi import FastAPI
from placementutil import NODE_KEYS, REDIS_URL, Clock, make_node, node_headers, redis_available

from nearcast.config import load
from placement.app import create_app
from placement.config import PlacementConfig
from placement.console.api import city_viewers, node_status
from placement.registry import Registry
from placement.registry.memory import InProcessRegistry
from placement.registry.redis import RedisRegistry
from placement.suspects import Suspects
from settings import ConfigError

ALICE = {"Authorization": "Bearer alice-token"}
BOB = {"Authorization": "Bearer bob-token"}
OP = {"Authorization": "Bearer op-secret"}
LYON = {"city": "lyon", "isp": "orange", "region": "west"}


@pytest.fixture
async def app(clock: Clock) -> AsyncIterator[FastAPI]:
    cfg = PlacementConfig(
        operator_token="op-secret",
        operators={"alice": "alice-token", "bob": "bob-token"},
        node_keys=NODE_KEYS,
    )
    app = create_app(cfg, InProcessRegistry(), clock=clock, background=False)
    await app.state.service.start(background=False)
    yield app
    await app.state.service.stop()


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app, client=("10.1.2.3", 5555))
    async with httpx.AsyncClient(transport=transport, base_url="http://placement") as c:
        yield c


async def register(client: httpx.AsyncClient, node_id: str, **kw: Any) -> None:
    body = {"load": {"cpu": 0.1}, "node": make_node(node_id, **kw).descriptor()}
    r = await client.post(
        f"/v1/nodes/{node_id}/heartbeat", json=body, headers=node_headers(node_id)
    )
    assert r.status_code == 200, r.text


async def place(client: httpx.AsyncClient, stream: str) -> dict[str, Any]:
    r = await client.post(
        "/v1/sessions", json={"tenant": "school", "stream": stream, "location": LYON}, headers=BOB
    )
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


@pytest.mark.parametrize(
    ("operators", "token", "message"),
    [
        ({"Alice": "t1"}, "", "name must be"),
        ({"a b": "t1"}, "", "name must be"),
        ({"alice": ""}, "", "token must not be empty"),
        ({"alice": "same", "bob": "same"}, "", "token of 'operators.alice'"),
        ({"alice": "op"}, "op", "token of 'operator_token'"),
    ],
)
def test_operators_are_validated(operators: dict[str, str], token: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        PlacementConfig(operators=operators, operator_token=token)


async def test_named_operators_actions_are_audited_with_their_name(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    await register(client, "e1")
    assert (
        await client.get("/v1/nodes", headers={"Authorization": "Bearer nope"})
    ).status_code == 401
    assert (await client.post("/v1/nodes/e1/cordon", headers=ALICE)).status_code == 200
    assert (await client.post("/v1/nodes/e1/uncordon", headers=OP)).status_code == 200
    assert (await client.post("/v1/nodes/nope/drain", headers=BOB)).status_code == 404
    assert (await client.get("/v1/nodes", headers=ALICE)).status_code == 200  # reads: not audited
    r = await client.post("/v1/policy/validate", content="name: x\n", headers=ALICE)
    assert r.status_code == 200  # a check, as the operator types: not audited either
    r = await client.get("/v1/audit", headers=BOB)
    assert r.status_code == 200
    got = [(e["operator"], e["action"], e["target"], e["status"]) for e in r.json()]
    assert got == [
        ("bob", "drain", {"node_id": "nope"}, 404),
        ("operator", "uncordon", {"node_id": "e1"}, 200),
        ("alice", "cordon", {"node_id": "e1"}, 200),
    ]
    assert (await client.get("/v1/audit")).status_code == 401


async def test_decommission_removes_a_drained_node_and_is_audited(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    await register(client, "e1")
    await register(client, "e2")
    assert (await client.delete("/v1/nodes/e1", headers=ALICE)).status_code == 409
    assert (await client.post("/v1/nodes/e1/drain", headers=ALICE)).status_code == 200
    r = await client.delete("/v1/nodes/e1", headers=ALICE)
    assert r.status_code == 200 and r.json() == {"id": "e1", "removed": True}
    fleet = (await client.get("/v1/console/fleet", headers=ALICE)).json()
    assert [n["id"] for n in fleet["nodes"]] == ["e2"]
    audit = (await client.get("/v1/audit", headers=ALICE)).json()
    assert [(e["action"], e["status"]) for e in audit] == [
        ("remove_node", 200),
        ("drain", 200),
        ("remove_node", 409),
    ]


async def test_console_fleet_shows_each_nodes_status_and_heartbeat_age(
    app: FastAPI, client: httpx.AsyncClient, clock: Clock
) -> None:
    for nid in ("e1", "e2", "e3"):
        await register(client, nid)
    await client.post("/v1/nodes/e2/drain", headers=ALICE)
    await client.post("/v1/nodes/e3/cordon", headers=ALICE)
    clock.advance(2.0)
    await register(client, "e4")
    body = (await client.get("/v1/console/fleet", headers=ALICE)).json()
    got = {n["id"]: (n["status"], n["heartbeat_age"]) for n in body["nodes"]}
    assert got == {
        "e1": ("live", 2.0),
        "e2": ("draining", 2.0),
        "e3": ("cordoned", 2.0),
        "e4": ("live", 0.0),
    }
    clock.advance(app.state.service.ttl)
    await app.state.service.refresh()
    body = (await client.get("/v1/console/fleet", headers=ALICE)).json()
    assert {n["id"]: n["status"] for n in body["nodes"]}["e1"] == "stale"


def _refused(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("connection refused", request=request)


async def test_a_node_a_relay_reports_and_the_probe_finds_dead_shows_dead(
    app: FastAPI, client: httpx.AsyncClient, clock: Clock
) -> None:
    service = app.state.service
    service.suspects = Suspects(service.metrics, transport=httpx.MockTransport(_refused))
    await register(client, "e1")
    await register(client, "e2")
    r = await client.post("/v1/nodes/e1/suspect", headers=node_headers("e2"))
    assert r.status_code == 200 and r.json()["dead"] is True, r.text
    status = {
        n["id"]: n["status"]
        for n in (await client.get("/v1/console/fleet", headers=ALICE)).json()["nodes"]
    }
    assert status == {"e1": "dead", "e2": "live"}
    clock.advance(1.0)
    await register(client, "e1")  # it beats again
    await service.refresh()
    status = {
        n["id"]: n["status"]
        for n in (await client.get("/v1/console/fleet", headers=ALICE)).json()["nodes"]
    }
    assert status == {"e1": "live", "e2": "live"}


def test_a_node_found_dead_shows_dead_until_it_beats_again() -> None:
    dead = replace(make_node("e1"), last_heartbeat=90.0)
    assert node_status(dead, 100.0, 6.0, alive=False, dead_since=96.0) == "dead"
    assert node_status(dead, 100.0, 6.0, alive=False, dead_since=None) == "stale"
    beat = replace(dead, last_heartbeat=99.0)
    assert node_status(beat, 100.0, 6.0, alive=True, dead_since=96.0) == "live"


async def test_replay_against_todays_fleet_shows_where_the_request_goes_now(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    await register(client, "e1")
    await app.state.service.refresh()
    s = await place(client, "c1")
    assert s["node"] == "e1"
    entry = (await client.get("/v1/decisions", headers=ALICE)).json()[0]
    await register(client, "e2")
    await client.post("/v1/nodes/e1/cordon", headers=ALICE)
    r = await client.post("/v1/decisions/replay", json=entry, headers=ALICE)
    assert r.status_code == 200 and r.json()["same"] is True and r.json()["node"] == "e1"
    r = await client.post(
        "/v1/decisions/replay", params={"against": "fleet"}, json=entry, headers=ALICE
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["same"] is False and body["node"] == "e2"
    assert body["explanation"]["snapshot"] != entry["snapshot"]
    r = await client.post(
        "/v1/decisions/replay", params={"against": "yesterday"}, json=entry, headers=ALICE
    )
    assert r.status_code == 422


async def test_policy_validate_reports_the_field_at_fault(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    cases = [
        ("name: x\nversion: 2\nfallback: [edge, moon]\n", False, "fallback[1]"),
        ("name: x\nversion: [\n", False, "policy"),
        ("- a list\n", False, "policy"),
    ]
    for text, valid, field in cases:
        r = await client.post("/v1/policy/validate", content=text, headers=ALICE)
        assert r.status_code == 200, r.text
        assert r.json()["valid"] is valid and r.json()["field"] == field, r.json()
    r = await client.post("/v1/policy/validate", content="name: x\nversion: 2\n", headers=ALICE)
    assert r.json()["valid"] is True and r.json()["applicable"] is True
    r = await client.post("/v1/policy/validate", content="name: x\nversion: 1\n", headers=ALICE)
    body = r.json()
    assert body["valid"] is True and body["applicable"] is False and "version 1" in body["note"]


async def test_policy_apply_and_rollback_are_in_the_history_with_the_operator(
    app: FastAPI, client: httpx.AsyncClient, clock: Clock
) -> None:
    r = await client.put("/v1/policy", content="name: edge-first\nversion: 2\n", headers=ALICE)
    assert r.status_code == 200 and r.json()["active"] == "edge-first@2"
    clock.advance(60)
    r = await client.post("/v1/policy/rollback/1", headers=BOB)
    assert r.status_code == 200 and r.json()["active"] == "default@1"
    assert (await client.post("/v1/policy/rollback/7", headers=BOB)).status_code == 422
    h = (await client.get("/v1/policy/history", headers=ALICE)).json()
    assert h["active"] == 1
    assert [v["label"] for v in h["versions"]] == ["default@1", "edge-first@2"]
    assert "name: edge-first" in h["versions"][1]["yaml"]
    got = [(e["label"], e["operator"], e["at"], e["rollback"]) for e in h["history"]]
    assert got == [
        ("edge-first@2", "alice", clock.t - 60, False),
        ("default@1", "bob", clock.t, True),
    ]
    audit = (await client.get("/v1/audit", headers=ALICE)).json()
    assert [(e["operator"], e["action"], e.get("detail")) for e in audit[:3]] == [
        ("bob", "rollback", None),
        ("bob", "rollback", {"version": 1}),
        ("alice", "put_policy", {"version": 2}),
    ]


async def test_dry_run_counts_moves_by_tier_and_the_local_serve_ratio(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    await register(client, "e1")
    await register(client, "c1", tier="cloud", region="central", city="paris")
    await app.state.service.refresh()
    for i in range(3):
        await place(client, f"k{i}")
    draft = "name: cloud\nversion: 2\nfallback: [cloud]\nfilters: {max_rtt_ms: 500}\n"
    r = await client.post("/v1/policy/dry-run", params={"limit": 2}, content=draft, headers=ALICE)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["evaluated"] == 2 and body["changed"] == 2
    assert body["shifts"] == {"edge->cloud": 2}
    assert body["tiers_before"] == {"edge": 2} and body["tiers_after"] == {"cloud": 2}
    assert body["local_ratio_before"] == 1.0 and body["local_ratio_after"] == 0.0
    assert body["applied"] is False and app.state.service.policy.version == 1


async def test_simulate_runs_the_draft_beside_the_active_policy(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    draft = "name: cloud-only\nversion: 2\nfallback: [cloud]\nfilters: {max_rtt_ms: 500}\n"
    body = {"fleet": "synthetic", "nodes": 30, "classes": 40, "seed": 3, "policy": draft}
    r = await client.post("/v1/simulate", json=body, headers=ALICE)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["nodes"] == 30 and out["classes"] == 40
    assert [res["policy"] for res in out["results"]] == ["default@1", "cloud-only@2"]
    default, cloud = out["results"]
    assert cloud["tiers"]["edge"] == 0 and cloud["figures"]["local_serve_ratio"] == 0.0
    assert default["figures"]["local_serve_ratio"] > 0
    assert len(default["hourly_local"]) == 24 and default["timeline"]
    assert set(default["timeline"][0]) == {"t", "local", "mec", "cloud", "remote", "unserved"}
    audit = (await client.get("/v1/audit", headers=ALICE)).json()
    assert audit[0]["action"] == "simulate_route" and audit[0]["operator"] == "alice"


async def test_simulate_on_the_recorded_fleet_and_its_bounds(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    await register(client, "e1")
    await register(client, "c1", tier="cloud", region="central", city="paris")
    await app.state.service.refresh()
    r = await client.post("/v1/simulate", json={"classes": 10}, headers=ALICE)
    assert r.status_code == 200, r.text
    assert r.json()["nodes"] == 2 and len(r.json()["results"]) == 1
    for bad in ({"nodes": 100000, "fleet": "synthetic"}, {"classes": 0}, {"fleet": "moon"}):
        assert (await client.post("/v1/simulate", json=bad, headers=ALICE)).status_code == 422
    r = await client.post("/v1/simulate", json={"policy": "fallback: [moon]"}, headers=ALICE)
    assert r.status_code == 422 and r.json()["field"] == "fallback[0]"


async def test_console_sessions_lists_origin_and_relays(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    await register(client, "e1")
    await app.state.service.refresh()
    s = await place(client, "c1")
    relay = make_node("e2").descriptor() | {"streams": ["school/c1"]}
    r = await client.post(
        "/v1/nodes/e2/heartbeat",
        json={"load": {"viewers": 7}, "node": relay},
        headers=node_headers("e2"),
    )
    assert r.status_code == 200, r.text
    await app.state.service.refresh()
    body = (await client.get("/v1/console/sessions", headers=ALICE)).json()
    (got,) = body["sessions"]
    assert got["id"] == s["id"] and got["node_id"] == "e1"
    assert got["playback"] == "http://e1.test/school/c1/index.m3u8"
    assert [(h["id"], h["role"], h["viewers"]) for h in got["holders"]] == [
        ("e1", "origin", 0),
        ("e2", "relay", 7),
    ]
    assert got["whep"] == "http://e1.test/school/c1/whep"
    assert got["cities"] == [{"city": "lyon", "viewers": 7, "nodes": 2}]
    # Its node is not reachable here: no bitrate, no edge age, the list still answers.
    assert got["bitrate"] is None and got["edge_age"] is None


@pytest.mark.parametrize(
    ("holders", "cities"),
    [
        ([], []),
        (
            [("ber-1", "berlin", 3), ("ams-1", "amsterdam", 5), ("ber-2", "berlin", 4)],
            [("amsterdam", 5, 1), ("berlin", 7, 2)],
        ),
        # A holder placement has no heartbeat of: counted as a node, not as viewers.
        ([("ber-1", "berlin", 2), ("gone", "", None)], [("", 0, 1), ("berlin", 2, 1)]),
    ],
)
def test_city_viewers_sums_the_holders_of_each_city(
    holders: list[tuple[str, str, int | None]], cities: list[tuple[str, int, int]]
) -> None:
    got = city_viewers([{"id": i, "city": c, "viewers": v} for i, c, v in holders])
    assert [(c["city"], c["viewers"], c["nodes"]) for c in got] == cities


async def test_kick_needs_the_nodes_token_and_a_reachable_node(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    await register(client, "e1")
    await app.state.service.refresh()
    s = await place(client, "c1")
    r = await client.post(f"/v1/sessions/{s['id']}/kick", headers=ALICE)
    assert r.status_code == 503 and "node_operator_token" in r.json()["detail"]
    assert (await client.post("/v1/sessions/west~none/kick", headers=ALICE)).status_code == 404
    audit = (await client.get("/v1/audit", headers=ALICE)).json()
    assert [(e["action"], e["status"]) for e in audit[:2]] == [("kick", 404), ("kick", 503)]


async def test_console_pages_are_served_without_a_token(client: httpx.AsyncClient) -> None:
    r = await client.get("/console")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert 'type="module"' in r.text
    assert r.headers["x-frame-options"] == "DENY"  # no clickjacking of operator actions
    r = await client.get("/console/console.js")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/javascript")
    r = await client.get("/console/style.css")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/css")
    for bad in ("api.py", "..%2Fapp.py", "nope.js", "index.html"):
        assert (await client.get(f"/console/{bad}")).status_code == 404


def test_operators_come_from_the_environment_too(tmp_path: Path) -> None:
    path = tmp_path / "nearcast.yml"
    path.write_text("placement:\n  operators: {alice: from-file}\n")
    env = {"NEARCAST_PLACEMENT_OPERATORS": "{alice: a-secret, bob: b-secret}"}
    cfg = load(str(path), env).placement
    assert cfg.operators == {"alice": "a-secret", "bob": "b-secret"}
    assert cfg.operator_named("b-secret") == "bob" and cfg.operator_named("nope") is None
    with pytest.raises(ConfigError, match="'placement.operators.Bob' name must be"):
        load(str(path), {"NEARCAST_PLACEMENT_OPERATORS": "{Bob: x}"})


async def _history_and_audit(registry: Registry, clock: Clock, act: bool) -> dict[str, Any]:
    """Start an instance on ``registry``; with ``act``, alice applies a policy and bob
    rolls it back; answer its policy history and audit log, and stop it."""
    cfg = PlacementConfig(operators={"alice": "alice-token", "bob": "bob-token"})
    app = create_app(cfg, registry, clock=clock, background=False)
    await app.state.service.start(background=False)
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://placement") as c:
            if act:
                r = await c.put(
                    "/v1/policy", content="name: edge-first\nversion: 2\n", headers=ALICE
                )
                assert r.status_code == 200, r.text
                clock.advance(30)
                assert (await c.post("/v1/policy/rollback/1", headers=BOB)).status_code == 200
            history = (await c.get("/v1/policy/history", headers=ALICE)).json()
            audit = (await c.get("/v1/audit", headers=ALICE)).json()
        return {"history": history["history"], "audit": audit}
    finally:
        await app.state.service.stop()


@pytest.mark.redis
async def test_audit_log_and_policy_history_survive_a_restart_on_redis(clock: Clock) -> None:
    assert redis_available(REDIS_URL), f"this test needs Redis at {REDIS_URL}"
    prefix = f"t{uuid.uuid4().hex[:10]}"  # keys of this test only
    try:
        before = await _history_and_audit(RedisRegistry.from_url(REDIS_URL, prefix), clock, True)
        assert [(e["label"], e["operator"], e["rollback"]) for e in before["history"]] == [
            ("edge-first@2", "alice", False),
            ("default@1", "bob", True),
        ]
        assert [(e["operator"], e["action"]) for e in before["audit"]] == [
            ("bob", "rollback"),
            ("alice", "put_policy"),
        ]
        clock.advance(60)
        after = await _history_and_audit(RedisRegistry.from_url(REDIS_URL, prefix), clock, False)
        assert after == before
    finally:
        r = aioredis.Redis.from_url(REDIS_URL)
        try:
            for key in [k async for k in r.scan_iter(match=f"{{{prefix}:*", count=1000)]:
                await r.delete(key)
        finally:
            await r.aclose()


async def test_embedded_placement_keeps_them_in_memory(clock: Clock) -> None:
    registry = InProcessRegistry()
    before = await _history_and_audit(registry, clock, True)
    assert len(before["history"]) == 2 and len(before["audit"]) == 2
    # The same process (a stopped and started service on the same registry) keeps them;
    # a new process starts a new registry, empty.
    assert await _history_and_audit(registry, clock, False) == before
    assert await _history_and_audit(InProcessRegistry(), clock, False) == {
        "history": [],
        "audit": [],
    }
