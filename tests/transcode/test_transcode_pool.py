"""The node side of the pool: bounded queues, and a worker restarted after kill -9."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import Any

from nodeutil import SMALL

from ingest.file import file_packets
from media import StreamKey
from media.segments import SegmentFrame
from transcode.config import Rendition
from transcode.pool import Transcoder, WorkerState
from transcode.spec import Spec

LADDER = [Rendition("180p", 320, 180, 250_000)]


class Sink:
    def __init__(self) -> None:
        self.segments: list[SegmentFrame] = []
        self.restarts = 0
        self.renditions: list[dict[str, Any]] = []

    def on_renditions(self, info: dict[str, Any]) -> None:
        self.renditions.append(info)

    def on_segment(self, segment: SegmentFrame) -> None:
        self.segments.append(segment)

    def on_restart(self) -> None:
        self.restarts += 1

    def on_stats(self, stats: dict[str, Any]) -> None:
        pass


async def until(pred: Any, timeout: float, what: str) -> None:  # noqa: ASYNC109
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def test_queue_stays_bounded_when_the_worker_is_held() -> None:
    sink = Sink()
    t = Transcoder(StreamKey("live", "slow"), Spec("live/slow", LADDER), sink, queue_packets=32)
    t.start()
    await until(lambda: t.pid is not None, 10, "the worker")
    assert t.pid is not None
    os.kill(t.pid, signal.SIGSTOP)  # a consumer held slow on purpose
    try:
        packets = list(file_packets(SMALL))
        sent = 0

        async def push() -> None:
            nonlocal sent
            for _ in range(20):  # far more than the queue and the pipe hold
                for p in packets:
                    await t.send(p)
                    sent += 1

        pusher = asyncio.create_task(push())
        await until(lambda: t._queue.full(), 10, "the queue to fill")
        before = sent
        done, _ = await asyncio.wait({pusher}, timeout=0.5)
        assert not done, "send() must block, not buffer without bound"
        assert t._queue.qsize() == 32 and sent - before <= 1
        pusher.cancel()
    finally:
        os.kill(t.pid, signal.SIGCONT)
        await t.stop()


async def test_worker_killed_is_restarted_within_two_seconds() -> None:
    sink = Sink()
    t = Transcoder(
        StreamKey("live", "crash"), Spec("live/crash", LADDER), sink, restart_backoff=0.2
    )
    t.start()
    packets = list(file_packets(SMALL))
    feeder_done = asyncio.Event()

    async def feed() -> None:
        start = time.monotonic()
        for p in packets:  # paced like a live publisher
            delay = p.dts / 1000 - (time.monotonic() - start)
            if delay > 0:
                await asyncio.sleep(delay)
            await t.send(p)
        feeder_done.set()

    feeder = asyncio.create_task(feed())
    await until(lambda: len(sink.segments) >= 1, 20, "a first segment")
    old = t.pid
    assert old is not None
    os.kill(old, signal.SIGKILL)
    killed = time.monotonic()
    await until(lambda: t.pid != old and t.state is WorkerState.RUNNING, 5, "a new worker")
    assert time.monotonic() - killed < 2.0
    assert sink.restarts == 1
    count = len(sink.segments)
    delivered = max(s.start + s.duration for s in sink.segments)
    await until(lambda: len(sink.segments) > count, 10, "a segment from the new worker")
    # The new worker started from the replayed GOP, after what was already delivered:
    # no media is listed twice, and none is missing.
    first = sink.segments[count]
    assert abs(first.start - delivered) < 0.1, (first.start, delivered)
    # ...and it continues the stream's fMP4 timeline from the first run's origin.
    origins = [r["timeline_origin_ms"] for r in sink.renditions]
    assert len(origins) == 2 and origins[1] == origins[0] is not None, origins
    await feeder
    await t.finish(20)
    assert len(sink.segments) > count, "the restarted worker produced segments"
    assert t.state is WorkerState.STOPPED
