"""Graceful overload: a worker that falls behind real time steps down, and back up."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

from ingest.file import file_packets
from transcode.config import Rendition
from transcode.output import Output
from transcode.pipeline import Pipeline
from transcode.protocol import FrameReader, FrameType, decode_segment
from transcode.spec import Spec

LECTURE = str(Path(__file__).resolve().parents[2] / "samples" / "lecture-720p.mp4")
LADDER = [
    Rendition("720p", 1280, 720, 2_800_000, preset="medium"),
    Rendition("360p", 640, 360, 700_000, preset="medium"),
]


def test_worker_behind_real_time_degrades_in_order_and_recovers() -> None:
    buf = io.BytesIO()
    spec = Spec(stream="t/overload", ladder=LADDER, degrade_lag=0.6, recover_after=0.5)
    pipeline = Pipeline(spec, Output(buf))
    packets = list(file_packets(LECTURE))
    start = time.time()
    # The first 10 s reach the worker 1.5 s late (a backlog: the node received them
    # 1.5 s before it could feed them), fed at 3x real time; however fast the machine,
    # that is 1.5 s behind real time for 3.3 s, long enough for two steps down (one
    # per 2 s). The rest is paced like a live publisher: the lag vanishes and the
    # worker steps back up.
    tail_start: float | None = None
    for p in packets:
        if p.dts < 10000:
            due = start + p.dts / 1000 / 3
            time.sleep(max(0.0, due - time.time()))  # pacing the source, not synchronising
            arrival = due - 1.5
        else:
            if tail_start is None:
                tail_start = time.time()
            due = tail_start + (p.dts - 10000) / 1000
            time.sleep(max(0.0, due - time.time()))  # pacing the source, not synchronising
            arrival = time.time()
        pipeline.feed(p, arrival)
    pipeline.finish()
    frames = FrameReader().feed(buf.getvalue())
    steps = [
        json.loads(payload)["degradation"]
        for t, payload in frames
        if t is FrameType.STATS and b"degradation" in payload
    ]
    downs = [s["step"] for s in steps if s["up"]]
    assert downs[:2] == ["faster_preset", "drop_top_rung"], steps
    assert any(not s["up"] for s in steps), f"never stepped back up: {steps}"
    segs = [decode_segment(p) for t, p in frames if t is FrameType.SEGMENT]
    top = sorted(s.index for s in segs if s.rendition == "720p")
    low = sorted(s.index for s in segs if s.rendition == "360p")
    # The low rung never stops; the top rung skips grid slots while dropped, but
    # the slots it does produce keep the common numbering.
    assert low == list(range(len(low)))
    assert set(top) < set(low)


def test_the_third_step_drops_frames() -> None:
    """Behind real time for long enough, the worker reaches the last step: every other
    picture of the rungs still encoding is dropped, and the drops are counted."""
    buf = io.BytesIO()
    spec = Spec(stream="t/overload3", ladder=LADDER, degrade_lag=0.6, recover_after=30)
    pipeline = Pipeline(spec, Output(buf))
    start = time.time()
    # The whole lecture (14 s), 2 s late, at 1.5x real time: 9 s of wall clock behind
    # real time, one step down every 2 s at most.
    for p in file_packets(LECTURE):
        due = start + p.dts / 1000 / 1.5
        time.sleep(max(0.0, due - time.time()))  # pacing the source, not synchronising
        pipeline.feed(p, due - 2.0)
    dropped = pipeline.frames_dropped
    pipeline.finish()
    frames = FrameReader().feed(buf.getvalue())
    steps = [
        json.loads(payload)["degradation"]
        for t, payload in frames
        if t is FrameType.STATS and b"degradation" in payload
    ]
    assert [s["step"] for s in steps if s["up"]] == [
        "faster_preset",
        "drop_top_rung",
        "drop_frames",
    ], steps
    assert dropped > 0
    # The low rung kept producing segments throughout, at half its frame rate at the end.
    low = [decode_segment(p) for t, p in frames if t is FrameType.SEGMENT]
    assert [s for s in low if s.rendition == "360p"]
