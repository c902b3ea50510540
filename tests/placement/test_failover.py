"""Origin failover, placement side: publisher-scoped session requests (a signed publish
token), relays reporting a failing origin (``POST /v1/nodes/{id}/suspect``), the probe
that marks it dead at once, and the stream's session moving off it."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from placementutil import NODE_KEYS, Clock, free_port, make_node, node_headers
from prometheus_client import CollectorRegistry

import tokens
from nearcast.config import load
from placement.app import create_app
from placement.config import PlacementConfig
from placement.model import Load
from placement.registry import Registry
from placement.registry.memory import InProcessRegistry
from placement.suspects import Suspects
from settings import ConfigError, build
from tokens import TenantKeys

OP = {"Authorization": "Bearer op-secret"}
LYON = {"city": "lyon", "isp": "orange", "region": "west"}
SECRET = "school-publish-key-0123456789"
PUBLISH_KEYS = {"school": TenantKeys(keys={"p1": SECRET})}


def publish_token(
    tenant: str = "school",
    stream: str = "c1",
    *,
    action: str = "publish",
    expires: float | None = None,
    secret: str = SECRET,
    key_id: str = "p1",
) -> str:
    when = int(expires if expires is not None else time.time() + 3600)
    return tokens.sign(secret, key_id, action, tenant, stream, when)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


Handler = Callable[[httpx.Request], Any]


class Probed:
    """What the nodes' /healthz answer, by host (``e1.test`` ...), how often asked, and
    the probes' clock (``clock.advance`` ages their cached results)."""

    def __init__(self) -> None:
        self.answers: dict[str, Handler] = {}
        self.calls: dict[str, int] = {}
        self.clock = Clock(0.0)

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        host = request.url.host
        self.calls[host] = self.calls.get(host, 0) + 1
        assert request.url.path == "/healthz"
        answer = self.answers.get(host, lambda r: httpx.Response(200, json={"status": "ok"}))
        result = answer(request)
        if asyncio.iscoroutine(result):
            result = await result
        assert isinstance(result, httpx.Response)
        return result


def refused(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("connection refused", request=request)


@pytest.fixture
def probed() -> Probed:
    return Probed()


async def started(
    registry: Registry, probed: Probed, **cfg: Any
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    config = PlacementConfig(
        operator_token="op-secret", node_keys=NODE_KEYS, publish_keys=PUBLISH_KEYS, **cfg
    )
    app = create_app(config, registry, metrics_registry=CollectorRegistry(), background=False)
    service = app.state.service
    service.suspects = Suspects(
        service.metrics, transport=httpx.MockTransport(probed), monotonic=probed.clock
    )
    await service.start(background=False)
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://placement") as c:
            yield app, c
    finally:
        await service.stop()


@pytest.fixture
async def env(
    probed: Probed, registry: Registry
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """The service on both registry backends (see conftest's ``registry``)."""
    async for pair in started(registry, probed):
        yield pair


@pytest.fixture
async def mem(probed: Probed) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    async for pair in started(InProcessRegistry(), probed):
        yield pair


async def beat(
    app: FastAPI, client: httpx.AsyncClient, node_id: str, full: bool = True, **kw: Any
) -> None:
    body: dict[str, Any] = {"load": {"cpu": 0.1}}
    if full:
        body["node"] = make_node(node_id, **kw).descriptor()
    r = await client.post(
        f"/v1/nodes/{node_id}/heartbeat", json=body, headers=node_headers(node_id)
    )
    assert r.status_code == 200 and r.json()["known"] is True, r.text
    await app.state.service.refresh()


def metric(app: FastAPI, name: str, **labels: str) -> float:
    value = app.state.metrics.registry.get_sample_value(name, labels)
    return float(value or 0.0)


# ----- publisher-scoped session requests


async def test_a_publish_token_places_a_session_of_its_own_stream(
    mem: tuple[FastAPI, httpx.AsyncClient],
) -> None:
    app, c = mem
    await beat(app, c, "e1")
    body = {"tenant": "school", "stream": "c1", "location": LYON}
    r = await c.post("/v1/sessions", json=body, headers=bearer(publish_token()))
    assert r.status_code == 201, r.text
    assert r.json()["node"] == "e1" and r.json()["ingest"]["rtmp"].startswith("rtmp://e1.test/")
    r = await c.post("/v1/sessions", json=body, headers=OP)
    assert r.status_code == 201, r.text


@pytest.mark.parametrize(
    ("token", "body", "status", "reason", "says"),
    [
        (lambda: publish_token(stream="c2"), {}, 403, "wrong_stream", "school/c2, not school/c1"),
        (lambda: publish_token(), {"tenant": "other"}, 403, "wrong_stream", "not other/c1"),
        (lambda: publish_token(action="play"), {}, 403, "wrong_action", "grants 'play'"),
        (lambda: publish_token(expires=1000), {}, 401, "expired", "expired"),
        (lambda: publish_token(secret="x" * 20), {}, 401, "forged", "does not match"),
        (lambda: publish_token(key_id="p9"), {}, 401, "unknown_key", "key 'p9'"),
        (lambda: publish_token(tenant="acme"), {}, 401, "unknown_tenant", "'acme' has no"),
        (lambda: "not-a-token", {}, 401, "malformed", "base64url"),
        (lambda: "", {}, 401, "missing", "no publish token"),
    ],
)
async def test_a_publish_token_is_refused_for_anything_but_its_own_stream(
    mem: tuple[FastAPI, httpx.AsyncClient],
    token: Callable[[], str],
    body: dict[str, str],
    status: int,
    reason: str,
    says: str,
) -> None:
    app, c = mem
    await beat(app, c, "e1")
    sent = {"tenant": "school", "stream": "c1", "location": LYON, **body}
    r = await c.post("/v1/sessions", json=sent, headers=bearer(token()))
    assert r.status_code == status, r.text
    assert says in r.json()["detail"]
    name = "placement_session_requests_rejected_total"
    assert metric(app, name, reason=reason) == 1
    # Only the operator token reaches the other operator routes.
    r = await c.get("/v1/nodes", headers=bearer(publish_token()))
    assert r.status_code == 401


async def test_without_publish_keys_only_the_operator_creates_sessions() -> None:
    cfg = PlacementConfig(operator_token="op-secret", node_keys=NODE_KEYS)
    app = create_app(cfg, InProcessRegistry(), background=False)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://placement"
    ) as c:
        body = {"tenant": "school", "stream": "c1"}
        r = await c.post("/v1/sessions", json=body, headers=bearer(publish_token()))
        assert r.status_code == 401 and "operator bearer token" in r.json()["detail"]


# ----- suspect reports, probes and dead nodes


async def test_a_failed_probe_marks_the_origin_dead_and_its_stream_moves_on(
    env: tuple[FastAPI, httpx.AsyncClient], probed: Probed
) -> None:
    app, c = env
    await beat(app, c, "e1")
    await beat(app, c, "e2")
    publisher = bearer(publish_token())
    body = {"tenant": "school", "stream": "c1", "location": LYON}
    r = await c.post("/v1/sessions", json=body, headers=publisher)
    assert r.status_code == 201, r.text
    first, origin = r.json()["id"], r.json()["node"]
    other = "e2" if origin == "e1" else "e1"

    # A relay (e3) reports the origin, which answers its probe: nothing changes.
    r = await c.post(f"/v1/nodes/{origin}/suspect", headers=node_headers("e3"))
    assert r.status_code == 200, r.text
    assert r.json() == {
        "node": origin,
        "dead": False,
        "probe": "healthy",
        "detail": f"http://{origin}.test/healthz answered 200",
    }
    probed.answers[f"{origin}.test"] = refused
    # Within a second the last result stands (no new probe) ...
    r = await c.post(f"/v1/nodes/{origin}/suspect", headers=node_headers("e3"))
    assert r.json()["dead"] is False and probed.calls[f"{origin}.test"] == 1
    # ... after it, the origin is probed again, found dead, and gets nothing at once.
    probed.clock.advance(1.0)
    r = await c.post(f"/v1/nodes/{origin}/suspect", headers=node_headers("e3"))
    assert r.status_code == 200, r.text
    assert r.json()["dead"] is True and r.json()["probe"] == "unreachable"
    assert probed.calls[f"{origin}.test"] == 2
    nodes = (await c.get("/v1/nodes", headers=OP)).json()["nodes"]
    assert {n["id"]: n["alive"] for n in nodes} == {origin: False, other: True}

    # The publisher asks again: a new session on the other node; the dead one's is released.
    r = await c.post("/v1/sessions", json=body, headers=publisher)
    assert r.status_code == 201 and r.json()["node"] == other, r.text
    assert (await c.get(f"/v1/sessions/{first}")).status_code == 404
    r = await c.get("/v1/route", params={"tenant": "school", "stream": "c1", **LYON})
    assert r.status_code == 200 and r.json()["node"] == other, r.text
    assert metric(app, "placement_suspect_reports_total", verdict="dead") == 1
    assert metric(app, "placement_suspect_reports_total", verdict="alive") == 2
    assert metric(app, "placement_suspect_probes_total", outcome="unreachable") == 1
    assert metric(app, "placement_suspect_probes_total", outcome="healthy") == 1

    # A healthy beat from the origin clears it: it is placed on again.
    await beat(app, c, origin, full=False)
    nodes = (await c.get("/v1/nodes", headers=OP)).json()["nodes"]
    assert all(n["alive"] for n in nodes)
    await c.post(f"/v1/nodes/{other}/cordon", headers=OP)
    r = await c.post("/v1/sessions", json={**body, "stream": "c9"}, headers=OP)
    assert r.status_code == 201 and r.json()["node"] == origin, r.text


async def test_fifty_relays_reporting_at_once_cause_one_probe(
    mem: tuple[FastAPI, httpx.AsyncClient], probed: Probed, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="placement.service")
    app, c = mem
    await beat(app, c, "e1")
    release = asyncio.Event()

    async def slow_refusal(request: httpx.Request) -> httpx.Response:
        await release.wait()
        raise httpx.ConnectError("connection refused", request=request)

    probed.answers["e1.test"] = slow_refusal
    reports = [
        asyncio.create_task(c.post("/v1/nodes/e1/suspect", headers=node_headers(f"relay-{i}")))
        for i in range(50)
    ]
    # Every report waits on the one probe (each is logged as it starts waiting).
    deadline = time.monotonic() + 10
    while caplog.text.count("[node e1] reported by relay-") < 50:
        assert time.monotonic() < deadline, "the reports did not all arrive"
        await asyncio.sleep(0.01)
    assert probed.calls == {"e1.test": 1}
    release.set()
    answers = await asyncio.gather(*reports)
    assert all(r.status_code == 200 and r.json()["dead"] is True for r in answers)
    assert probed.calls == {"e1.test": 1}
    assert metric(app, "placement_suspect_probes_total", outcome="unreachable") == 1
    assert metric(app, "placement_suspect_reports_total", verdict="dead") == 50


async def test_a_probe_that_gets_no_answer_within_its_timeout_finds_the_node_dead(
    mem: tuple[FastAPI, httpx.AsyncClient], probed: Probed
) -> None:
    app, c = mem
    await beat(app, c, "e1")
    service = app.state.service

    async def hang(request: httpx.Request) -> httpx.Response:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    probed.answers["e1.test"] = hang
    service.suspects = Suspects(service.metrics, timeout=0.2, transport=httpx.MockTransport(probed))
    t0 = time.monotonic()
    r = await c.post("/v1/nodes/e1/suspect", headers=node_headers("e3"))
    assert r.json()["dead"] is True and r.json()["probe"] == "timeout", r.text
    assert time.monotonic() - t0 < 2.0
    await service.suspects.close()


async def test_a_real_closed_port_is_found_unreachable(
    mem: tuple[FastAPI, httpx.AsyncClient],
) -> None:
    app, c = mem
    service = app.state.service
    service.suspects = Suspects(service.metrics)  # a real HTTP client
    host = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    node = make_node("e1").descriptor()
    node["urls"] = {"rtmp": "rtmp://127.0.0.1:1935", "http": host, "whip": host}
    r = await c.post(
        "/v1/nodes/e1/heartbeat",
        json={"load": {}, "node": node},
        headers=node_headers("e1"),
    )
    assert r.status_code == 200, r.text
    r = await c.post("/v1/nodes/e1/suspect", headers=node_headers("e2"))
    assert r.status_code == 200 and r.json()["dead"] is True, r.text
    assert r.json()["probe"] == "unreachable"


@pytest.mark.parametrize(
    ("headers", "status", "says"),
    [
        ({}, 401, "no node credential"),
        (OP, 401, "credential"),
        (bearer(publish_token()), 401, "credential"),
        (node_headers("e3", expires=1000), 401, "expired"),
    ],
)
async def test_a_suspect_report_needs_the_reporting_nodes_own_credential(
    mem: tuple[FastAPI, httpx.AsyncClient],
    probed: Probed,
    headers: dict[str, str],
    status: int,
    says: str,
) -> None:
    app, c = mem
    await beat(app, c, "e1")
    r = await c.post("/v1/nodes/e1/suspect", headers=headers)
    assert r.status_code == status and says in r.json()["detail"], r.text
    assert probed.calls == {}


async def test_a_report_of_an_unknown_node_is_404(
    mem: tuple[FastAPI, httpx.AsyncClient], probed: Probed
) -> None:
    app, c = mem
    r = await c.post("/v1/nodes/nowhere/suspect", headers=node_headers("e3"))
    assert r.status_code == 404 and probed.calls == {}
    assert metric(app, "placement_suspect_reports_total", verdict="unknown") == 1


async def test_mark_dead_stales_a_node_until_its_next_beat(registry: Registry) -> None:
    now = 1_000_000.0
    await registry.register(make_node("e1", hb=now), now)
    assert await registry.mark_dead("e1", now - 5, now + 1) is True
    assert await registry.mark_dead("nowhere", now - 5, now + 1) is False
    (node,) = await registry.nodes(now + 1)
    assert node.last_heartbeat == now - 5 and node.load.cpu == 0.1
    changes = await registry.changes(now + 1)
    assert [n.last_heartbeat for n in changes.nodes] == [now - 5]
    # Never later than its real last beat.
    assert await registry.mark_dead("e1", now, now + 1) is True
    (node,) = await registry.nodes(now + 1)
    assert node.last_heartbeat == now - 5
    assert await registry.heartbeat("e1", Load(cpu=0.2), now + 2) is True
    (node,) = await registry.nodes(now + 2)
    assert node.last_heartbeat == now + 2


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"live": {"keys": {"p1": "short"}}}, "'placement.publish_keys.live.keys.p1' secret"),
        ({"live": {"keys": {}}}, "'placement.publish_keys.live.keys' must hold at least one"),
        ({"live": {"key": {}}}, "'placement.publish_keys.live.key' is not a known key"),
    ],
)
def test_publish_keys_are_validated_naming_the_key(data: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        build(PlacementConfig, {"publish_keys": data}, prefix="placement")
    assert str(exc.value).startswith(message), str(exc.value)


def test_publish_keys_come_from_the_environment_too() -> None:
    env = {"NEARCAST_PLACEMENT_PUBLISH_KEYS": f"{{school: {{keys: {{p1: {SECRET}}}}}}}"}
    assert load(None, environ=env).placement.publish_keys == PUBLISH_KEYS
