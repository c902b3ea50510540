"""MPEG-TS segments: continuity counters that run on across segment boundaries."""

from __future__ import annotations

import io
from fractions import Fraction

import av
import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from containers.tsmux import TS_PACKET, TsSegmenter, continue_counters
from media.segments import SegmentFrame


def packet(pid: int, cc: int, payload: bool = True) -> bytes:
    afc = 0x10 if payload else 0x20
    head = bytes([0x47, (pid >> 8) & 0x1F, pid & 0xFF, afc | (cc & 0x0F)])
    return head + bytes(TS_PACKET - 4)


def counters(data: bytes) -> list[tuple[int, int, bool]]:
    """(PID, continuity counter, has payload) of every packet in ``data``."""
    out = []
    for i in range(0, len(data), TS_PACKET):
        b = data[i : i + TS_PACKET]
        out.append((((b[1] & 0x1F) << 8) | b[2], b[3] & 0x0F, bool(b[3] & 0x10)))
    return out


def broken_counters(data: bytes) -> list[str]:
    """Every place where a PID's counter does not follow ISO 13818-1 §2.4.3.3."""
    last: dict[int, int] = {}
    bad = []
    for n, (pid, cc, payload) in enumerate(counters(data)):
        if pid in last:
            want = (last[pid] + 1) & 0x0F if payload else last[pid]
            if cc != want:
                bad.append(f"packet {n}: PID {pid:#x} counter {cc}, expected {want}")
        last[pid] = cc
    return bad


# One segment as a muxer writes it: each PID's counters start anywhere and run on.
segment_st = st.lists(
    st.tuples(st.sampled_from([0, 0x11, 0x100, 0x101, 0x1000]), st.booleans()),
    min_size=1,
    max_size=60,
)


def mux(layout: list[tuple[int, bool]], starts: dict[int, int]) -> bytes:
    """Packets in ``layout`` order, each PID's first counter taken from ``starts`` (else 0)."""
    cc: dict[int, int] = {}
    out = []
    for pid, payload in layout:
        if pid not in cc:
            cc[pid] = starts.get(pid, 0)
        elif payload:
            cc[pid] = (cc[pid] + 1) & 0x0F
        out.append(packet(pid, cc[pid], payload))
    return b"".join(out)


@given(
    segments=st.lists(
        st.tuples(segment_st, st.dictionaries(st.sampled_from([0, 0x100]), st.integers(0, 15))),
        min_size=1,
        max_size=6,
    )
)
def test_counters_of_consecutive_segments_run_on_as_from_one_muxer(
    segments: list[tuple[list[tuple[int, bool]], dict[int, int]]],
) -> None:
    last: dict[int, int] = {}
    stream = b""
    for layout, starts in segments:
        data = mux(layout, starts)
        assert not broken_counters(data)  # each segment is consistent on its own
        buf = bytearray(data)
        continue_counters(buf, last)
        out = bytes(buf)
        assert len(out) == len(data)
        # Only the counters change: sync byte, PID, flags and payload are untouched.
        a = np.frombuffer(data, np.uint8).reshape(-1, TS_PACKET)
        b = np.frombuffer(out, np.uint8).reshape(-1, TS_PACKET)
        assert (a[:, :3] == b[:, :3]).all() and (a[:, 4:] == b[:, 4:]).all()
        assert ((a[:, 3] & 0xF0) == (b[:, 3] & 0xF0)).all()
        stream += out
    assert not broken_counters(stream)


@given(data=st.binary(max_size=3 * TS_PACKET + 5))
def test_bytes_that_are_not_whole_ts_packets_come_back_unchanged(data: bytes) -> None:
    last = {0: 7}
    buf = bytearray(data)
    continue_counters(buf, last)
    out = bytes(buf)
    if (
        data
        and len(data) % TS_PACKET == 0
        and all(data[i] == 0x47 for i in range(0, len(data), TS_PACKET))
    ):
        assert len(out) == len(data)
    else:
        assert out == data
        assert last == {0: 7}


def test_adaptation_only_packet_first_in_a_segment_repeats_the_last_counter() -> None:
    last = {0x100: 9}
    out = bytearray(packet(0x100, 3, payload=False) + packet(0x100, 4))
    continue_counters(out, last)
    assert counters(out) == [(0x100, 9, False), (0x100, 10, True)]
    assert last == {0x100: 10}


def test_segments_from_the_segmenter_decode_alone_and_have_no_counter_break_between() -> None:
    """Real x264 and AAC through the segmenter: three segments whose PAT, PMT, video and
    audio counters continue across both boundaries, each segment still decoding on its own."""
    segments: list[SegmentFrame] = []
    seg = TsSegmenter("t", width=64, height=64, audio_rate=48000, on_segment=segments.append)
    enc = av.CodecContext.create("libx264", "w")
    enc.width = enc.height = 64
    enc.pix_fmt = "yuv420p"
    enc.time_base = Fraction(1, 90000)
    enc.options = {"g": "10", "keyint_min": "10", "sc_threshold": "0", "bf": "0"}
    aenc = av.CodecContext.create("aac", "w")
    aenc.sample_rate = 48000
    aenc.layout = "stereo"
    aenc.format = "fltp"
    aenc.time_base = Fraction(1, 48000)
    pts = 0
    for i in range(30):
        frame = av.VideoFrame.from_ndarray(
            np.full((64, 64, 3), (i * 8) % 256, np.uint8), format="rgb24"
        ).reformat(format="yuv420p")
        frame.pts = i * 3000
        frame.time_base = Fraction(1, 90000)
        for p in enc.encode(frame):
            p.time_base = Fraction(1, 90000)
            seg.video(p)
        # 1/30 s of audio per frame, in 1024-sample AAC frames.
        while pts < (i + 1) * 1600:
            af = av.AudioFrame.from_ndarray(
                np.zeros((2, 1024), np.float32), format="fltp", layout="stereo"
            )
            af.sample_rate = 48000
            af.pts = pts
            af.time_base = Fraction(1, 48000)
            pts += 1024
            for ap in aenc.encode(af):
                ap.time_base = Fraction(1, 48000)
                seg.audio(ap)
    for p in enc.encode(None):
        p.time_base = Fraction(1, 90000)
        seg.video(p)
    seg.flush()
    assert len(segments) == 3
    stream = b"".join(s.data for s in segments)
    assert not broken_counters(stream)
    # Counters start where the last segment left them, not at 0 again.
    assert {cc for pid, cc, _ in counters(segments[1].data)[:2]} != {0}
    for s in segments:
        with av.open(io.BytesIO(s.data), format="mpegts") as c:
            assert sum(1 for _ in c.decode(video=0)) == 10
