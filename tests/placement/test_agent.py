from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from placementutil import NODE_KEYS, free_port, make_node, node_credential, wait_for

from placement.agent import NodeAgent
from placement.app import create_app
from placement.config import LivenessConfig, PlacementConfig
from placement.model import Load
from placement.registry.memory import InProcessRegistry

FAST = LivenessConfig(
    heartbeat_interval=0.05, ttl=0.2, full_stats_interval=0.2, autonomy_window=0.5
)


async def test_embedded_agent_registers_and_beats() -> None:
    reg = InProcessRegistry()
    agent = NodeAgent(
        make_node("e1"),
        lambda: Load(cpu=0.42),
        PlacementConfig(liveness=FAST),
        registry=reg,
        streams=lambda: ["school/a"],
    )
    await agent.start()
    try:

        async def beating() -> bool:
            nodes = await reg.nodes(time.time())
            return bool(nodes) and nodes[0].load.cpu == 0.42 and agent.beats >= 3

        await wait_for(beating, 3.0, "heartbeats")
        [n] = await reg.nodes(time.time())
        assert n.streams == frozenset({"school/a"})
        reg._nodes.clear()  # the registry forgot the node (e.g. Redis restarted)
        await wait_for(lambda: bool(reg._nodes), 3.0, "re-registration")
    finally:
        await agent.stop()


async def test_http_agent_registers_with_its_token() -> None:
    cfg = PlacementConfig(
        url="http://placement",
        node_token=node_credential("e1"),
        node_keys=NODE_KEYS,
        liveness=FAST,
    )
    app = create_app(cfg, InProcessRegistry(), background=False)
    agent = NodeAgent(
        make_node("e1"), lambda: Load(cpu=0.3), cfg, transport=httpx.ASGITransport(app=app)
    )
    await agent.start()
    try:
        await wait_for(lambda: agent.registered and agent.beats >= 2, 3.0, "http heartbeats")
        [n] = await app.state.service.registry.nodes(time.time())
        assert n.id == "e1" and n.load.cpu == 0.3
        assert agent.failures == 0
    finally:
        await agent.stop()


async def test_agent_tolerates_a_dead_service_and_stops_promptly() -> None:
    cfg = PlacementConfig(url=f"http://127.0.0.1:{free_port()}", liveness=FAST)
    agent = NodeAgent(make_node("e1"), lambda: Load(), cfg)
    await agent.start()
    await wait_for(lambda: agent.failures >= 2, 5.0, "failed heartbeats")
    t0 = time.monotonic()
    await agent.stop()
    assert time.monotonic() - t0 < 2.5
    assert not agent.registered


async def test_agent_survives_a_raising_load_callback() -> None:
    def broken() -> Load:
        raise RuntimeError("sensor gone")

    agent = NodeAgent(
        make_node("e1"), broken, PlacementConfig(liveness=FAST), registry=InProcessRegistry()
    )
    await agent.start()
    await wait_for(lambda: agent.failures >= 1, 3.0, "a failed beat")
    await asyncio.wait_for(agent.stop(), 3.0)


def test_agent_needs_a_target() -> None:
    with pytest.raises(ValueError):
        NodeAgent(make_node("e1"), lambda: Load(), PlacementConfig())
