"""A Redis outage and an empty Redis coming back: placement keeps answering from what it
knows, and the registry holds every node and session again within two heartbeat
intervals. The redis-server is this test's own, on a free port."""

from __future__ import annotations

import time
import uuid
from dataclasses import replace

import httpx
from placementutil import NODE_KEYS, RedisServer, free_port, make_node, node_credential, wait_for

from placement.agent import NodeAgent
from placement.app import create_app
from placement.config import LivenessConfig, PlacementConfig
from placement.errors import RegistryUnavailable
from placement.model import Load
from placement.registry.redis import RedisRegistry
from placement.service import PlacementService

OP = {"Authorization": "Bearer op"}
HB = 0.5  # heartbeat interval: long beside a loaded machine's scheduling


async def test_after_a_redis_restart_every_node_and_session_is_back_within_two_beats() -> None:
    server = RedisServer(free_port())
    server.start()
    cfg = PlacementConfig(
        url="http://placement",
        operator_token="op",
        node_keys=NODE_KEYS,
        snapshot_interval=0.25,
        lease_ttl=30.0,
        liveness=LivenessConfig(
            heartbeat_interval=HB, ttl=3 * HB, full_stats_interval=4 * HB, autonomy_window=5.0
        ),
    )
    registry = RedisRegistry.from_url(server.url, f"t{uuid.uuid4().hex[:8]}", timeout=0.3)
    app = create_app(cfg, registry)
    svc: PlacementService = app.state.service
    await svc.start(background=True)
    transport = httpx.ASGITransport(app=app)
    # Sessions each node reports (publishers connected); the others are reserved only,
    # their publishers not there yet, so no node reports them: placement alone knows them.
    served: dict[str, list[str]] = {f"e{i}": [] for i in range(3)}
    agents = [
        NodeAgent(
            replace(make_node(nid, slots=8)),
            lambda: Load(cpu=0.1),
            replace(cfg, node_token=node_credential(nid)),
            transport=transport,
            sessions=lambda nid=nid: served[nid],
        )
        for nid in served
    ]
    try:
        for a in agents:
            await a.start()

        async def fleet_alive() -> bool:
            nodes, _ = await svc.list_nodes()
            return sum(n["alive"] for n in nodes) == 3

        await wait_for(fleet_alive, 10.0, "three nodes registered")
        sessions: dict[str, str] = {}
        async with httpx.AsyncClient(transport=transport, base_url="http://placement") as c:
            for i in range(6):
                body = {"tenant": "school", "stream": f"s{i}", "location": {"city": "lyon"}}
                r = await c.post("/v1/sessions", json=body, headers=OP)
                assert r.status_code == 201, r.text
                sessions[r.json()["id"]] = f"s{i}"
                if i % 2 == 0:
                    served[r.json()["node"]].append(r.json()["id"])

            server.stop()
            beats = [a.beats for a in agents]
            # Running things keep working: routes and sessions from local knowledge.
            for sid, stream in sessions.items():
                params = {"tenant": "school", "stream": stream, "city": "lyon"}
                r = await c.get("/v1/route", params=params)
                assert r.status_code == 200 and r.json()["degraded"] is True, r.text
                r = await c.get(f"/v1/sessions/{sid}")
                assert r.status_code == 200 and r.json()["degraded"] is True, r.text
            # Beats still answered (degraded), kept here until the registry returns.
            await wait_for(
                lambda: all(a.beats > b for a, b in zip(agents, beats, strict=True)),
                5.0,
                "a beat of every node during the outage",
            )

            server.start()  # the same port, empty: no persistence
            back = time.monotonic()

            async def reconciled() -> bool:
                try:
                    now = time.time()
                    nodes = await registry.nodes(now)
                    held = {s.id for s in await registry.sessions(now)}
                except RegistryUnavailable:
                    return False
                return len(nodes) == 3 and held == set(sessions)

            await wait_for(reconciled, 10.0, "every node and session back in the registry")
            took = time.monotonic() - back
            print(f"registry reconciled {took:.3f} s after Redis came back")
            # Two heartbeat intervals, plus the margin of the 20 ms poll and the
            # client's reconnect on a loaded machine.
            assert took <= 2 * HB + 0.25, took
            for sid, stream in sessions.items():
                r = await c.get(f"/v1/sessions/{sid}")
                assert r.status_code == 200 and r.json()["degraded"] is False, r.text
                params = {"tenant": "school", "stream": stream, "city": "lyon"}
                r = await c.get("/v1/route", params=params)
                assert r.status_code == 200 and r.json()["degraded"] is False, r.text
    finally:
        for a in agents:
            await a.stop()
        await svc.stop()
        await registry.close()
        server.stop()
