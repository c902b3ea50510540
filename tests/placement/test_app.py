"""The HTTP edge: status codes, auth, validation errors and the committed OpenAPI file."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from placementutil import NODE_KEYS, Clock, make_node, node_headers

from placement.app import create_app
from placement.config import PlacementConfig
from placement.openapi import openapi_json
from placement.policy import DEFAULT_POLICY
from placement.registry.memory import InProcessRegistry

OP = {"Authorization": "Bearer op-secret"}
ROOT = Path(__file__).resolve().parents[2]
LYON = {"city": "lyon", "isp": "orange", "region": "west"}


@pytest.fixture
async def app(clock: Clock) -> AsyncIterator[FastAPI]:
    cfg = PlacementConfig(operator_token="op-secret", node_keys=NODE_KEYS)
    app = create_app(cfg, InProcessRegistry(), clock=clock, background=False)
    await app.state.service.start(background=False)
    yield app
    await app.state.service.stop()


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app, client=("10.1.2.3", 5555))
    async with httpx.AsyncClient(transport=transport, base_url="http://placement") as c:
        yield c


def beat_body(node_id: str, **kw: Any) -> dict[str, Any]:
    d = make_node(node_id, **kw).descriptor()
    return {"load": {"cpu": kw.get("cpu", 0.1)}, "node": d}


async def register(client: httpx.AsyncClient, node_id: str, **kw: Any) -> None:
    r = await client.post(
        f"/v1/nodes/{node_id}/heartbeat",
        json=beat_body(node_id, **kw),
        headers=node_headers(node_id),
    )
    assert r.status_code == 200, r.text
    assert r.json()["known"] is True


async def test_session_lifecycle(app: FastAPI, client: httpx.AsyncClient) -> None:
    await register(client, "e1")
    await app.state.service.refresh()
    r = await client.post(
        "/v1/sessions", json={"tenant": "school", "stream": "c1", "location": LYON}, headers=OP
    )
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["node"] == "e1" and body["tier"] == "edge" and body["degraded"] is False
    assert body["ingest"] == {
        "rtmp": f"rtmp://e1.test/school/c1?session={body['id']}",
        "whip": f"http://e1.test/school/c1/whip?session={body['id']}",
    }
    assert body["playback"] == "http://e1.test/school/c1/index.m3u8"
    assert body["explanation"]["candidates"][0]["node"] == "e1"
    r = await client.get(f"/v1/sessions/{body['id']}")
    assert r.status_code == 200 and r.json()["node"] == "e1"
    r = await client.get("/v1/route", params={"tenant": "school", "stream": "c1", **LYON})
    assert r.status_code == 200 and r.json()["node"] == "e1"
    r = await client.get("/school/c1/index.m3u8")
    assert r.status_code == 302
    assert r.headers["location"] == "http://e1.test/school/c1/index.m3u8"
    r = await client.get("/v1/decisions", headers=OP)
    assert [e["kind"] for e in r.json()] == ["view", "view", "publish"]
    r = await client.delete(f"/v1/sessions/{body['id']}", headers=OP)
    assert r.status_code == 204
    assert (await client.get(f"/v1/sessions/{body['id']}")).status_code == 404


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/sessions"),
        ("GET", "/v1/nodes"),
        ("POST", "/v1/nodes/e1/drain"),
        ("POST", "/v1/nodes/e1/cordon"),
        ("POST", "/v1/nodes/e1/uncordon"),
        ("DELETE", "/v1/nodes/e1"),
        ("GET", "/v1/policy"),
        ("PUT", "/v1/policy"),
        ("POST", "/v1/policy/dry-run"),
        ("DELETE", "/v1/sessions/west~x"),
        ("GET", "/v1/decisions"),
    ],
)
@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}])
async def test_operator_endpoints_need_the_token(
    client: httpx.AsyncClient, method: str, path: str, headers: dict[str, str]
) -> None:
    r = await client.request(method, path, headers=headers, json={})
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == "Bearer"


async def test_heartbeat_needs_node_token(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/nodes/e1/heartbeat", json=beat_body("e1"))
    assert r.status_code == 401
    r = await client.post("/v1/nodes/e1/heartbeat", json={"load": {}}, headers=node_headers("e1"))
    assert r.status_code == 200 and r.json()["known"] is False


async def test_a_credential_names_one_node(client: httpx.AsyncClient) -> None:
    """No wildcard: e1's credential cannot beat (or register) as e2."""
    one = node_headers("e1")
    ok = await client.post("/v1/nodes/e1/heartbeat", json=beat_body("e1"), headers=one)
    other = await client.post("/v1/nodes/e2/heartbeat", json=beat_body("e2"), headers=one)
    assert (ok.status_code, other.status_code) == (200, 401)
    assert "credential is for node 'e1', not 'e2'" in other.json()["detail"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"tenant": "school", "stream": "c 1"}, "stream"),
        ({"tenant": "", "stream": "c"}, "tenant"),
        ({"tenant": "school", "stream": "c", "slots": -1}, "slots"),
        ({"tenant": "school", "stream": "c", "location": {"lat": 100}}, "lat"),
    ],
)
async def test_session_validation_names_the_field(
    client: httpx.AsyncClient, body: dict[str, Any], field: str
) -> None:
    r = await client.post("/v1/sessions", json=body, headers=OP)
    assert r.status_code == 422
    assert field in [str(x) for x in r.json()["detail"][0]["loc"]]


async def test_heartbeat_descriptor_validation(client: httpx.AsyncClient) -> None:
    body = beat_body("e1")
    body["node"]["tier"] = "fog"
    r = await client.post("/v1/nodes/e1/heartbeat", json=body, headers=node_headers("e1"))
    assert r.status_code == 422 and r.json()["field"] == "node.tier"


async def test_errors(app: FastAPI, client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/nodes/ghost/drain", headers=OP)
    assert r.status_code == 404 and "ghost" in r.json()["detail"]
    assert (await client.get("/v1/sessions/west~nope")).status_code == 404
    assert (await client.get("/v1/sessions/garbage")).status_code == 404
    r = await client.get("/v1/route", params={"tenant": "school", "stream": "none"})
    assert r.status_code == 404 and "school/none" in r.json()["detail"]
    await register(client, "e1", cpu=0.9)
    await app.state.service.refresh()
    r = await client.post(
        "/v1/sessions", json={"tenant": "school", "stream": "c", "location": LYON}, headers=OP
    )
    assert r.status_code == 503
    assert "0/1 nodes available: 1 cpu>0.7" in r.json()["detail"]
    assert r.json()["explanation"]["fallback"][0]["step"] == "edge"
    r = await client.put("/v1/policy", content="version: 2\ntenants: [school]\n", headers=OP)
    assert r.status_code == 200
    r = await client.post("/v1/sessions", json={"tenant": "bank", "stream": "c"}, headers=OP)
    assert r.status_code == 404 and "bank" in r.json()["detail"]


async def test_node_admin(app: FastAPI, client: httpx.AsyncClient) -> None:
    await register(client, "e1")
    for action, state in [("drain", "draining"), ("cordon", "cordoned"), ("uncordon", "ready")]:
        r = await client.post(f"/v1/nodes/e1/{action}", headers=OP)
        assert r.status_code == 200 and r.json() == {"id": "e1", "state": state}
    r = await client.get("/v1/nodes", headers=OP)
    [node] = r.json()["nodes"]
    assert node["id"] == "e1" and node["alive"] is True and node["state"] == "ready"


async def test_remove_node(app: FastAPI, client: httpx.AsyncClient) -> None:
    await register(client, "e1")
    r = await client.delete("/v1/nodes/e1", headers=OP)
    assert r.status_code == 409 and "drain or cordon it first" in r.json()["detail"], r.text
    assert (await client.post("/v1/nodes/e1/cordon", headers=OP)).status_code == 200
    r = await client.delete("/v1/nodes/e1", headers=OP)
    assert r.status_code == 200 and r.json() == {"id": "e1", "removed": True}, r.text
    assert (await client.get("/v1/nodes", headers=OP)).json()["nodes"] == []
    r = await client.delete("/v1/nodes/e1", headers=OP)
    assert r.status_code == 404 and "unknown node 'e1'" in r.json()["detail"]


async def test_policy_endpoints(app: FastAPI, client: httpx.AsyncClient) -> None:
    r = await client.get("/v1/policy", headers=OP)
    assert r.json()["active"] == "default@1"
    r = await client.put("/v1/policy", json={"version": 2, "weights": {"load": -1}}, headers=OP)
    assert r.status_code == 422 and r.json()["field"] == "weights.load"
    r = await client.put("/v1/policy", content="a: [", headers=OP)
    assert r.status_code == 422 and r.json()["field"] == "policy"
    r = await client.put("/v1/policy", json={"version": 2, "selector": "least_loaded"}, headers=OP)
    assert r.status_code == 200 and r.json()["active"] == "default@2"
    r = await client.put("/v1/policy", json={"version": 2}, headers=OP)
    assert r.status_code == 409
    r = await client.put("/v1/policy", json={"version": 1}, headers=OP)  # rollback
    assert r.status_code == 200 and r.json()["active"] == "default@1"
    assert r.json()["versions"] == [1, 2]
    r = await client.post("/v1/policy/dry-run", json={"version": 7}, headers=OP)
    assert r.status_code == 200 and r.json()["applied"] is False
    assert (await client.get("/v1/policy", headers=OP)).json()["active"] == "default@1"


async def test_client_ip_is_located(tmp_path: Path, clock: Clock) -> None:
    csv = tmp_path / "geo.csv"
    csv.write_text("cidr,city,isp,region,lat,lon\n10.1.0.0/16,lyon,orange,west,45.76,4.84\n")
    from placement.config import GeoConfig

    cfg = PlacementConfig(operator_token="t", node_keys=NODE_KEYS, geo=GeoConfig(cidr_csv=str(csv)))
    app = create_app(cfg, InProcessRegistry(), clock=clock, background=False)
    svc = app.state.service
    await svc.start(background=False)
    await svc.registry.register(
        make_node("e-paris", city="paris", region="north", lat=48.85, lon=2.35), clock()
    )
    await svc.registry.register(make_node("e-lyon"), clock())
    await svc.refresh()
    transport = httpx.ASGITransport(app=app, client=("10.1.9.9", 1234))
    async with httpx.AsyncClient(transport=transport, base_url="http://p") as c:
        r = await c.post(
            "/v1/sessions",
            json={"tenant": "s", "stream": "c"},
            headers={"Authorization": "Bearer t"},
        )
        assert r.json()["node"] == "e-lyon"
        r = await c.post(
            "/v1/sessions",
            json={"tenant": "s", "stream": "d", "location": {"city": "paris"}},
            headers={"Authorization": "Bearer t"},
        )
        assert r.json()["node"] == "e-paris"  # the explicit hint wins over the client IP


async def test_metrics_endpoint(app: FastAPI, client: httpx.AsyncClient) -> None:
    await register(client, "e1")
    await app.state.service.refresh()
    await client.post(
        "/v1/sessions", json={"tenant": "s", "stream": "c", "location": LYON}, headers=OP
    )
    text = (await client.get("/metrics")).text
    for name in (
        "placement_decisions_total",
        "placement_decision_seconds",
        "placement_nodes",
        "placement_fallbacks_total",
        "placement_degraded",
    ):
        assert name in text
    assert 'placement_decisions_total{outcome="placed",tier="edge"} 1.0' in text


def test_committed_openapi_matches_the_app() -> None:
    committed = (ROOT / "docs" / "openapi-placement.json").read_text()
    assert json.loads(committed) == json.loads(openapi_json()), (
        "regenerate: python -m placement.openapi > docs/openapi-placement.json"
    )


async def test_simulate_replays_the_saved_decisions_output(
    app: FastAPI, client: httpx.AsyncClient, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`GET /v1/decisions` saved as is (a JSON array) feeds `nearcast simulate --replay`."""
    from nearcast.cli import main
    from placement.simulate import load_log, run

    await register(client, "e1")
    await app.state.service.refresh()
    r = await client.post(
        "/v1/sessions", json={"tenant": "school", "stream": "c1", "location": LYON}, headers=OP
    )
    assert r.status_code == 201, r.text
    for _ in range(2):
        r = await client.get("/v1/route", params={"tenant": "school", "stream": "c1", **LYON})
        assert r.status_code == 200
    r = await client.get("/v1/decisions", headers=OP)
    assert r.status_code == 200 and isinstance(r.json(), list)
    saved = tmp_path / "decisions.json"
    saved.write_text(r.text)
    [res] = run(
        nodes=100,
        classes=0,
        policies=[DEFAULT_POLICY],
        out_dir=str(tmp_path / "a"),
        replay=load_log(str(saved)),
    ).results
    assert res.sessions == 1 and res.viewers == 2
    # The same entries as JSON lines are read the same way.
    lines = tmp_path / "decisions.jsonl"
    lines.write_text("\n".join(json.dumps(e) for e in r.json()) + "\n")
    assert load_log(str(lines)) == load_log(str(saved))
    # And through the CLI, as the docs describe it.
    rc = main(["simulate", "--nodes", "100", "--replay", str(saved), "--out", str(tmp_path)])
    assert rc == 0
    assert "| sessions | 1 |" in capsys.readouterr().out


def test_replay_rejects_a_file_that_is_not_a_decision_log(tmp_path: Path) -> None:
    from placement.errors import InvalidField
    from placement.simulate import load_log

    bad = tmp_path / "bad.json"
    for text in ('{"kind": "publish"', "[1, 2]"):
        bad.write_text(text)
        with pytest.raises(InvalidField):
            load_log(str(bad))


async def test_operators_replay_logged_decisions(app: FastAPI, client: httpx.AsyncClient) -> None:
    await register(client, "e1")
    await register(client, "e2", city="paris", region="west")
    await app.state.service.refresh()
    for stream in ("a", "b", "c"):
        body = {"tenant": "school", "stream": stream, "location": LYON}
        r = await client.post("/v1/sessions", json=body, headers=OP)
        assert r.status_code == 201, r.text
    log = (await client.get("/v1/decisions", headers=OP)).json()
    assert len(log) == 3
    for entry in log:
        r = await client.post("/v1/decisions/replay", json=entry, headers=OP)
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["same"] is True and out["node"] == entry["node"]
        assert out["explanation"]["candidates"], out
    # Operators only; a snapshot no longer kept is named, as is a field missing.
    entry = log[0]
    assert (await client.post("/v1/decisions/replay", json=entry)).status_code == 401
    r = await client.post("/v1/decisions/replay", json={**entry, "snapshot": "gone"}, headers=OP)
    assert r.status_code == 422 and r.json()["field"] == "snapshot"
    r = await client.post(
        "/v1/decisions/replay", json={k: v for k, v in entry.items() if k != "at"}, headers=OP
    )
    assert r.status_code == 422 and r.json()["field"] == "at"
