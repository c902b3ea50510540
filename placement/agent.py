"""Node side: register this node and keep it alive in the placement registry.

Two speeds: a small liveness beat every ``heartbeat_interval`` and the full
descriptor (capacity, URLs, streams held) every ``full_stats_interval``. It
talks HTTP to a remote placement service when ``placement.url`` is set, or
to an embedded in-process registry otherwise. Media never waits on it: every
failure is logged and retried with jitter, and nothing raises into the caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace

import httpx
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from placement.config import PlacementConfig
from placement.errors import PlacementError
from placement.model import Load, Node
from placement.registry import Registry

log = logging.getLogger(__name__)

LoadFn = Callable[[], Load]
SessionsFn = Callable[[], Sequence[str]]
StreamsFn = Callable[[], Sequence[str]]


class NodeAgent:
    def __init__(
        self,
        node: Node,
        load: LoadFn,
        config: PlacementConfig,
        *,
        registry: Registry | None = None,
        sessions: SessionsFn | None = None,
        streams: StreamsFn | None = None,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if not config.url and registry is None:
            raise ValueError("NodeAgent needs 'placement.url' or an embedded registry")
        self.node = node
        self._load = load
        self._sessions = sessions or (lambda: ())
        self._streams = streams or (lambda: ())
        self.config = config
        self.registry = registry if not config.url else None
        self._clock = clock
        self._rng = rng or random.Random()
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self._task: asyncio.Task[None] | None = None
        self._registered = False
        self._last_full = 0.0
        self._changed = False
        self.beats = 0
        self.failures = 0
        self._prefix = f"[agent {node.id}]"

    @property
    def registered(self) -> bool:
        return self._registered

    def update(self, node: Node) -> None:
        """Replace the descriptor (e.g. capacity measured after start); the next beat
        sends it in full rather than waiting for ``full_stats_interval``."""
        if node.id != self.node.id:
            raise ValueError("a node agent keeps its node id")
        if node != self.node:
            self.node = node
            self._changed = True

    def streams_changed(self) -> None:
        """The streams held changed (a relay started or stopped): the next beat sends
        the full descriptor, streams included, rather than waiting for full stats."""
        self._changed = True

    async def start(self) -> None:
        if self._task is not None:
            return
        if self.config.url:
            headers = {}
            if self.config.node_token:
                headers["Authorization"] = f"Bearer {self.config.node_token}"
            timeout = httpx.Timeout(max(0.2, self.config.liveness.heartbeat_interval))
            self._client = httpx.AsyncClient(
                base_url=self.config.url.rstrip("/"),
                headers=headers,
                timeout=timeout,
                transport=self._transport,
            )
        self._task = asyncio.create_task(self._run(), name=f"placement-agent-{self.node.id}")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(task, timeout=2.0)
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.aclose(), timeout=2.0)

    def _jitter(self, base: float) -> float:
        return base * (0.5 + self._rng.random() * 0.5)

    async def _run(self) -> None:
        interval = self.config.liveness.heartbeat_interval
        backoff = interval
        while True:
            try:
                await self.beat()
                self.beats += 1
                backoff = interval
                delay = interval
            except asyncio.CancelledError:
                raise
            except (PlacementError, httpx.HTTPError, OSError) as exc:
                self.failures += 1
                self._registered = False
                log.warning("%s heartbeat failed: %s", self._prefix, exc)
                backoff = min(backoff * 2, self.config.liveness.ttl)
                delay = self._jitter(backoff)
            except Exception:
                self.failures += 1
                self._registered = False
                log.exception("%s heartbeat failed", self._prefix)
                delay = self._jitter(self.config.liveness.ttl)
            await asyncio.sleep(delay)

    def _descriptor(self, load: Load) -> Node:
        return replace(self.node, load=load, streams=frozenset(self._streams()))

    async def beat(self) -> None:
        """One heartbeat; full stats when due or when the registry forgot us."""
        now = self._clock()
        load = self._load()
        sent = self.node
        full = (
            self._changed
            or not self._registered
            or now - self._last_full >= self.config.liveness.full_stats_interval
        )
        sessions = list(self._sessions())
        known = await self._send(load, self._descriptor(load) if full else None, sessions)
        if full and known:
            self._last_full = now
            if self.node is sent:  # not replaced again while this beat was in flight
                self._changed = False
        if not known:
            # The registry lost us (e.g. Redis restarted): re-register after a
            # jitter so a whole fleet does not stampede it in the same instant.
            self._registered = False
            await asyncio.sleep(self._jitter(self.config.liveness.heartbeat_interval / 2))
            sent = self.node
            await self._send(load, self._descriptor(load), sessions)
            self._last_full = self._clock()
            if self.node is sent:
                self._changed = False
            log.info("%s re-registered", self._prefix)
        elif not self._registered:
            log.info("%s registered", self._prefix)
        self._registered = True

    async def _send(self, load: Load, node: Node | None, sessions: list[str]) -> bool:
        if self._client is not None:
            body: dict[str, object] = {
                "load": {
                    "cpu": load.cpu,
                    "transcodes": load.transcodes,
                    "egress_mbps": load.egress_mbps,
                    "viewers": load.viewers,
                },
                "sessions": sessions,
            }
            if node is not None:
                d = node.descriptor()
                d["streams"] = sorted(node.streams)
                body["node"] = d
            r = await self._client.post(f"/v1/nodes/{self.node.id}/heartbeat", json=body)
            r.raise_for_status()
            return bool(r.json().get("known", False))
        assert self.registry is not None
        now = self._clock()
        if node is not None:
            await self.registry.register(node, now)
            known = True
        else:
            known = await self.registry.heartbeat(self.node.id, load, now)
        if known and sessions:
            await self.registry.renew(self.node.id, sessions, now, self.config.lease_ttl)
        return known


class AgentCollector(Collector):
    """The node's view of its placement agent, read at scrape time.

    ``agent()`` is the running agent, or None (not started, or failed to start).
    """

    def __init__(self, agent: Callable[[], NodeAgent | None]) -> None:
        self.agent = agent

    def collect(self) -> Iterator[Metric]:
        agent = self.agent()
        # placement_agent_heartbeats_total{result}: heartbeats to placement, ok or failed.
        beats = CounterMetricFamily(
            "placement_agent_heartbeats",
            "Heartbeats this node sent to the placement service, by result",
            labels=["result"],
        )
        beats.add_metric(["ok"], agent.beats if agent else 0)
        beats.add_metric(["failed"], agent.failures if agent else 0)
        yield beats
        # placement_agent_registered: 1 while placement knows this node (last beat went through).
        yield GaugeMetricFamily(
            "placement_agent_registered",
            "Whether the placement service knows this node (its last heartbeat went through)",
            value=1 if agent is not None and agent.registered else 0,
        )

    def describe(self) -> Iterator[Metric]:
        return iter(())
