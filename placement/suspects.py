"""Probes of nodes that relays report as failing (``POST /v1/nodes/{id}/suspect``).

A relay whose pulls from its origin fail asks placement to look. Many relays of one
origin see the same failure at once, so each node has at most one probe in flight and
its result is reused for ``cache_s``: fifty reports in the same second cost one probe.
The probe is a ``GET {http}/healthz`` with a short timeout; what to do with a failed
one (marking the node dead in the registry) is the ``on_result`` callback's, run once
per probe, not once per report.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import httpx

from placement.metrics import PlacementMetrics

log = logging.getLogger(__name__)

PROBE_TIMEOUT = 1.0  # seconds: a node that cannot answer its /healthz in 1 s serves no one
PROBE_CACHE = 1.0  # seconds a probe's result answers further reports of the same node


@dataclass(frozen=True, slots=True)
class ProbeResult:
    node: str
    healthy: bool
    # healthy | unhealthy | timeout | unreachable (placement_suspect_probes_total labels)
    outcome: str
    detail: str
    at: float  # monotonic time the probe ended

    @property
    def dead(self) -> bool:
        return not self.healthy


class Suspects:
    def __init__(
        self,
        metrics: PlacementMetrics,
        *,
        timeout: float = PROBE_TIMEOUT,
        cache_s: float = PROBE_CACHE,
        transport: httpx.AsyncBaseTransport | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.metrics = metrics
        self.timeout = timeout
        self.cache_s = cache_s
        self._transport = transport
        self._monotonic = monotonic
        self._client: httpx.AsyncClient | None = None
        self._inflight: dict[str, asyncio.Task[ProbeResult]] = {}
        self._last: dict[str, ProbeResult] = {}

    async def check(
        self,
        node_id: str,
        http_url: str,
        on_result: Callable[[ProbeResult], Awaitable[None]],
    ) -> ProbeResult:
        """The result of a probe of ``node_id``: the one in flight, the last one if it
        is younger than ``cache_s``, else a new one (then ``on_result`` runs once)."""
        last = self._last.get(node_id)
        if last is not None and self._monotonic() - last.at < self.cache_s:
            return last
        task = self._inflight.get(node_id)
        if task is None:
            # A task of its own: a reporter that hangs up does not cancel the probe
            # the others wait for.
            task = asyncio.create_task(self._run(node_id, http_url, on_result))
            self._inflight[node_id] = task
        return await asyncio.shield(task)

    async def _run(
        self,
        node_id: str,
        http_url: str,
        on_result: Callable[[ProbeResult], Awaitable[None]],
    ) -> ProbeResult:
        try:
            result = await self._probe(node_id, http_url)
            await on_result(result)
            self._last[node_id] = result
            return result
        finally:
            del self._inflight[node_id]
            self._forget_old()

    def _forget_old(self) -> None:
        # Bounded by the nodes reported in the last cache period, not by the fleet.
        now = self._monotonic()
        for node_id in [n for n, r in self._last.items() if now - r.at >= self.cache_s]:
            del self._last[node_id]

    async def _probe(self, node_id: str, http_url: str) -> ProbeResult:
        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=httpx.Timeout(self.timeout), transport=self._transport
            )
        url = f"{http_url.rstrip('/')}/healthz"
        try:
            # The whole probe, connect to last byte, within the timeout.
            r = await asyncio.wait_for(self._client.get(url), self.timeout)
        except (TimeoutError, httpx.TimeoutException):
            outcome, detail = "timeout", f"no answer from {url} within {self.timeout:g} s"
        except httpx.HTTPError as exc:
            outcome, detail = "unreachable", f"{url}: {type(exc).__name__}: {exc}"
        else:
            if r.is_success:
                outcome, detail = "healthy", f"{url} answered {r.status_code}"
            else:
                outcome, detail = "unhealthy", f"{url} answered {r.status_code}"
        self.metrics.suspect_probes.labels(outcome).inc()
        healthy = outcome == "healthy"
        (log.info if healthy else log.warning)("[node %s] suspect probe: %s", node_id, detail)
        return ProbeResult(node_id, healthy, outcome, detail, self._monotonic())

    async def close(self) -> None:
        tasks = list(self._inflight.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()
