"""Transcode metrics (STYLE rule 11)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

from transcode.overload import DEGRADE_STEPS


class TranscodeMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        # transcode_workers{state}: worker processes by state (starting, running, ...).
        self.workers = Gauge(
            "transcode_workers", "Transcode workers by state", ["state"], registry=registry
        )
        # transcode_restarts_total: workers restarted after dying unexpectedly.
        self.restarts = Counter(
            "transcode_restarts_total", "Transcode workers restarted", registry=registry
        )
        # transcode_fps{stream,rendition}: output frame rate over the last stats period.
        # Bounded by the live streams: series are removed when a stream ends.
        self.fps = Gauge(
            "transcode_fps",
            "Encoded frames per second",
            ["stream", "rendition"],
            registry=registry,
        )
        # transcode_lag_seconds{stream}: how far the encoder output trails real time
        # (the age, at encode, of the slowest rung's latest frame since it reached the node).
        self.lag = Gauge(
            "transcode_lag_seconds",
            "Transcode lag behind real time",
            ["stream"],
            registry=registry,
        )
        # transcode_degradations_total{step}: overload steps taken (faster_preset,
        # drop_top_rung, drop_frames), counted when a worker steps down.
        self.degradations = Counter(
            "transcode_degradations_total",
            "Overload degradation steps taken",
            ["step"],
            registry=registry,
        )
        # The worker's steps exist from the start (at 0): a dashboard shows none taken, not
        # no data.
        for step in DEGRADE_STEPS:
            self.degradations.labels(step)
        # transcode_capacity_units / transcode_used_units: the node's transcode capacity in
        # ladder units (1 = one default 720p30 ladder in real time) and what live streams use.
        self.capacity = Gauge(
            "transcode_capacity_units", "Transcode capacity in ladder units", registry=registry
        )
        self.used = Gauge(
            "transcode_used_units", "Ladder units used by live streams", registry=registry
        )
        # transcode_segments_total{rendition_kind}: segments produced.
        self.segments = Counter(
            "transcode_segments_total", "Media segments produced", registry=registry
        )

    def forget_stream(self, stream: str) -> None:
        """Remove the series labelled with ``stream`` (its publish ended), so the label
        sets stay bounded by the live streams."""
        for gauge in (self.fps, self.lag):
            labelsets = {
                tuple(s.labels.values())  # in label-name order
                for metric in gauge.collect()
                for s in metric.samples
                if s.labels.get("stream") == stream
            }
            for labels in labelsets:
                gauge.remove(*labels)
