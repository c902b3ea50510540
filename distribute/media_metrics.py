"""Metrics of the HTTP media path (STYLE rule 11: names are part of the interface).

Shared by the ASGI path (:class:`distribute.http.MediaApp`) and the httptools
fast path (:mod:`distribute.fastpath`), so both count the same requests. The
fast path's protocol also counts what the HTTP server refuses before any route
sees it (``http_rejected_total``), for every request on the port.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Gauge
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

# http_rejected_total{reason}: requests refused, or connections dropped, by the HTTP server's
# limits (the ``http:`` section): url (414), headers (431), header_timeout (408), body_timeout
# (408), body (413), concurrency (503), write_timeout (a client that stopped reading, dropped).
REJECT_REASONS = (
    "url",
    "headers",
    "header_timeout",
    "body_timeout",
    "body",
    "concurrency",
    "write_timeout",
)


class MediaMetrics:
    """Counters of the media path, kept as plain integers and exported at scrape time.

    A prometheus_client ``Counter.inc`` takes a lock and validates its state on
    every call; on a path that answers tens of thousands of requests a second
    that is a measurable share of the work, so the hot path only adds to ints.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.counts: dict[tuple[str, int], int] = {}
        self.sent = 0
        self.rejected: dict[str, int] = dict.fromkeys(REJECT_REASONS, 0)
        # hls_held_requests: LL-HLS blocking playlist and preload-hint part requests
        # waiting right now for their part.
        self.held = Gauge(
            "hls_held_requests", "LL-HLS requests held until their part exists", registry=registry
        )
        registry.register(_MediaCollector(self))

    def count(self, kind: str, status: int) -> None:
        key = (kind, status)
        self.counts[key] = self.counts.get(key, 0) + 1


class _MediaCollector(Collector):
    def __init__(self, metrics: MediaMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[CounterMetricFamily]:
        # hls_requests_total{kind,status}: master, playlist, part, segment, init or vod
        # requests answered by the media path; kind and status are small fixed sets.
        requests = CounterMetricFamily(
            "hls_requests", "HLS requests answered by the media path", labels=["kind", "status"]
        )
        for (kind, status), n in list(self.metrics.counts.items()):
            requests.add_metric([kind, str(status)], n)
        yield requests
        # hls_outbound_bytes_total: body bytes sent to viewers (segments, parts, playlists).
        sent = CounterMetricFamily("hls_outbound_bytes", "Body bytes sent to HLS viewers")
        sent.add_metric([], self.metrics.sent)
        yield sent
        rejected = CounterMetricFamily(
            "http_rejected", "Requests refused by the HTTP server's limits", labels=["reason"]
        )
        for reason, n in list(self.metrics.rejected.items()):
            rejected.add_metric([reason], n)
        yield rejected

    def describe(self) -> Iterator[CounterMetricFamily]:
        return iter(())
