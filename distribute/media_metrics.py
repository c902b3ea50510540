"""Metrics of the HTTP media path (STYLE rule 11: names are part of the interface).

Shared by the ASGI path (:class:`distribute.http.MediaApp`) and the httptools
fast path (:mod:`distribute.fastpath`), so both count the same requests. The
fast path's protocol also counts what the HTTP server refuses before any route
sees it (``http_rejected_total``), for every request on the port.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Gauge
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from distribute.viewers import HlsViewers, ViewersCollector

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

# hls_part_delivery_seconds{mode}: upper bounds of its buckets. A held request is answered
# within milliseconds of its part (the store's notify); a plain one measures how far behind
# the live edge players ask.
PART_DELAY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class _Histogram:
    """Bucket counts and a sum, kept as plain numbers (see :class:`MediaMetrics`)."""

    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(PART_DELAY_BUCKETS) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        # bisect_left: a value equal to a bound belongs to that bucket (le).
        self.counts[bisect_left(PART_DELAY_BUCKETS, value)] += 1
        self.sum += value


class MediaMetrics:
    """Counters of the media path, kept as plain integers and exported at scrape time.

    A prometheus_client ``Counter.inc`` takes a lock and validates its state on
    every call; on a path that answers tens of thousands of requests a second
    that is a measurable share of the work, so the hot path only adds to ints.
    """

    def __init__(self, registry: CollectorRegistry, whep: Callable[[], int] | None = None) -> None:
        self.counts: dict[tuple[str, int], int] = {}
        self.sent = 0
        self.rejected: dict[str, int] = dict.fromkeys(REJECT_REASONS, 0)
        # hls_held_requests: LL-HLS blocking playlist and preload-hint part requests
        # waiting right now for their part.
        self.held = Gauge(
            "hls_held_requests", "LL-HLS requests held until their part exists", registry=registry
        )
        # Parts answered to held (blocking: the preload hint) and to plain requests.
        self.part_blocking = _Histogram()
        self.part_plain = _Histogram()
        # viewers{protocol}: ``whep()`` is the number of WHEP sessions open.
        self.viewers = HlsViewers()
        registry.register(_MediaCollector(self))
        registry.register(ViewersCollector(self.viewers, whep))

    def count(self, kind: str, status: int) -> None:
        key = (kind, status)
        self.counts[key] = self.counts.get(key, 0) + 1

    def part_sent(self, stored: float, held: bool) -> None:
        """A part that entered the store at ``stored`` (monotonic) is being answered now."""
        (self.part_blocking if held else self.part_plain).observe(time.monotonic() - stored)


class _MediaCollector(Collector):
    def __init__(self, metrics: MediaMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
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
        # hls_part_delivery_seconds{mode}: from a part entering the store to its response
        # being written. mode: blocking (a request held until the part existed: the
        # preload-hinted part), plain (the part existed when asked for).
        delay = HistogramMetricFamily(
            "hls_part_delivery_seconds",
            "Seconds from an LL-HLS part entering the store to its response",
            labels=["mode"],
        )
        for mode, hist in (
            ("blocking", self.metrics.part_blocking),
            ("plain", self.metrics.part_plain),
        ):
            cumulative = 0
            buckets: list[tuple[str, float]] = []
            for bound, n in zip((*PART_DELAY_BUCKETS, float("inf")), hist.counts, strict=True):
                cumulative += n
                buckets.append((_le(bound), cumulative))
            delay.add_metric([mode], buckets, hist.sum)
        yield delay

    def describe(self) -> Iterator[Metric]:
        return iter(())


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)
