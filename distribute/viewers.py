"""How many people watch a node, by protocol: ``viewers{protocol}``.

A WHEP viewer is a session: counted exactly. HLS has no session, so it is
estimated: an HLS viewer is a distinct (client address, User-Agent, stream)
that asked for a media playlist in the last :data:`WINDOW` seconds. Every
player reloads its media playlist at least once a target duration (RFC 8216bis
§6.3.4; an LL-HLS player once a part, with blocking reloads), so a player that
is playing is seen every few seconds, and one that stopped drops out of the
count within the window. It is ``llhls`` when the stream is served as LL-HLS,
``hls`` otherwise.

What the estimate gets wrong, by construction: viewers behind one NAT with the
same browser count once (under-count); a player that switches renditions is
still one (same key); a viewer that changes address (mobile handover) counts
twice for up to a window. A CDN in front of the node makes each of its edge
caches one viewer: behind a CDN, count at the CDN. A node relaying the stream is one
viewer of it.

The table is bounded: at most ``limit`` keys (by default 50,000: about 17 MB with
browser User-Agents, about 6 ms to count at a scrape). When it is full and nothing in
it has expired, new keys are not added (the count saturates at ``limit``) and
``viewers_estimate_saturated_total`` counts the keys left out. Expired keys are
dropped at scrape time, and on insert when the table is full (at most once a second),
so the work per playlist request is one dictionary store.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

WINDOW = 30.0
LIMIT = 50_000
PROTOCOLS = ("hls", "llhls", "whep")

# (client address, User-Agent, tenant, stream)
Key = tuple[str, bytes, bytes, bytes]


class HlsViewers:
    """Distinct HLS players seen in the last ``window`` seconds (see the module doc)."""

    __slots__ = ("window", "limit", "clock", "seen", "saturated", "_pruned_at")

    def __init__(
        self,
        window: float = WINDOW,
        limit: int = LIMIT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if window <= 0:
            raise ValueError("the viewer window must be greater than zero")
        if limit < 1:
            raise ValueError("the viewer table limit must be at least 1")
        self.window = window
        self.limit = limit
        self.clock = clock
        # key -> (last seen, low latency)
        self.seen: dict[Key, tuple[float, bool]] = {}
        self.saturated = 0
        self._pruned_at = float("-inf")

    def saw(self, key: Key, low_latency: bool) -> None:
        """A media playlist request from ``key``, for a stream served as LL-HLS or not."""
        now = self.clock()
        seen = self.seen
        if len(seen) >= self.limit and key not in seen:  # full: rare, off the common path
            if now - self._pruned_at >= 1.0:
                self._pruned_at = now
                self.prune(now)
                seen = self.seen
            if len(seen) >= self.limit:
                self.saturated += 1
                return
        seen[key] = (now, low_latency)

    def prune(self, now: float) -> None:
        horizon = now - self.window
        self.seen = {k: v for k, v in self.seen.items() if v[0] > horizon}

    def counts(self) -> tuple[int, int]:
        """(hls, llhls) viewers now; drops the keys that expired."""
        self.prune(self.clock())
        ll = sum(1 for _t, low in self.seen.values() if low)
        return len(self.seen) - ll, ll


class ViewersCollector(Collector):
    """``viewers{protocol}`` at scrape time: the HLS estimate and ``whep()`` sessions."""

    def __init__(self, hls: HlsViewers, whep: Callable[[], int] | None = None) -> None:
        self.hls = hls
        self.whep = whep

    def collect(self) -> Iterator[Metric]:
        hls, llhls = self.hls.counts()
        # viewers{protocol}: hls and llhls are the estimate above (distinct client address,
        # User-Agent and stream with a media playlist request in the last 30 s), whep the
        # WHEP sessions open now.
        viewers = GaugeMetricFamily(
            "viewers", "Viewers now, by protocol (HLS: estimated)", labels=["protocol"]
        )
        viewers.add_metric(["hls"], hls)
        viewers.add_metric(["llhls"], llhls)
        viewers.add_metric(["whep"], self.whep() if self.whep is not None else 0)
        yield viewers
        # viewers_estimate_saturated_total: HLS players not counted because the table was full.
        saturated = CounterMetricFamily(
            "viewers_estimate_saturated",
            "HLS players left out of the viewer estimate: its table was full",
        )
        saturated.add_metric([], self.hls.saturated)
        yield saturated

    def describe(self) -> Iterator[Metric]:
        return iter(())
