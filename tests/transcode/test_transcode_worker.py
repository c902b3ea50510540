"""The worker's pipeline, in-process: decode once, ladder, forced IDRs, segments."""

from __future__ import annotations

import dataclasses
import io
import json
import random
import subprocess
import sys
import threading
from fractions import Fraction
from pathlib import Path

import av
import pytest
from synth import interleave, video_packets

import transcode.rungs
from containers.cmaf import split_annexb
from containers.mp4box import parse_fragments
from ingest.file import file_packets
from media.segments import InitFrame, PartFrame, SegmentFrame
from transcode.config import Rendition
from transcode.output import Output
from transcode.pipeline import Pipeline
from transcode.pool import spec_to_json
from transcode.protocol import (
    FrameReader,
    FrameType,
    decode_init,
    decode_packet,
    decode_part,
    decode_segment,
    encode_json,
    encode_packet,
)
from transcode.spec import Spec

SMALL = str(Path(__file__).resolve().parents[2] / "samples" / "small-360p.mp4")
LADDER = [
    Rendition("360p", 640, 360, 700_000),
    Rendition("240p", 426, 240, 400_000),
    Rendition("720p", 1280, 720, 2_800_000),  # larger than the source: must be dropped
]

# The LL-HLS lead the cmaf fixture asks for (hls.lead_parts).
LEAD_PARTS = 3


@pytest.fixture(scope="module")
def segments() -> dict[str, list[SegmentFrame]]:
    buf = io.BytesIO()
    pipeline = Pipeline(Spec(stream="t/t", ladder=LADDER, x264_threads=1), Output(buf))
    for p in file_packets(SMALL):
        pipeline.feed(p)
    pipeline.finish()
    out: dict[str, list[SegmentFrame]] = {}
    for ftype, payload in FrameReader().feed(buf.getvalue()):
        if ftype is FrameType.SEGMENT:
            s = decode_segment(payload)
            out.setdefault(s.rendition, []).append(s)
    return out


def test_no_upscaled_rendition(segments: dict[str, list[SegmentFrame]]) -> None:
    assert sorted(segments) == ["240p", "360p"]


def test_segments_start_with_idr_and_have_expected_size(
    segments: dict[str, list[SegmentFrame]],
) -> None:
    sizes = {"360p": (640, 360), "240p": (426, 240)}
    for name, segs in segments.items():
        for s in segs:
            with av.open(io.BytesIO(s.data), format="mpegts") as c:
                assert c.streams.audio, "audio is muxed in every rendition"
                packets = [p for p in c.demux(c.streams.video[0]) if p.size]
                assert packets[0].is_keyframe, f"{name} segment {s.index} starts without an IDR"
                frames = [f for p in packets for f in p.decode()]
                assert frames and all((f.width, f.height) == sizes[name] for f in frames)


def test_boundaries_align_across_renditions(segments: dict[str, list[SegmentFrame]]) -> None:
    a, b = segments["360p"], segments["240p"]
    assert len(a) == len(b) >= 3
    for x, y in zip(a, b, strict=True):
        assert x.index == y.index
        assert abs(x.start - y.start) < 1 / 30
        assert abs(x.duration - y.duration) < 1 / 30


def test_durations_follow_the_grid(segments: dict[str, list[SegmentFrame]]) -> None:
    for segs in segments.values():
        for s in segs[:-1]:
            assert 1.9 <= s.duration <= 2.1
        assert round(segs[-1].duration) <= 2


def nvenc_opens() -> bool:
    """Whether this machine's FFmpeg can open an NVENC encoder: NVIDIA hardware with an
    NVENC engine and its driver. Data-centre GPUs without NVENC (H100, H200) fail here."""
    try:
        enc = av.CodecContext.create("h264_nvenc", "w")
        assert isinstance(enc, av.VideoCodecContext)
        enc.width, enc.height, enc.pix_fmt = 256, 144, "yuv420p"
        enc.time_base = Fraction(1, 30)
        enc.open()
    except Exception:
        return False
    return True


def test_a_hardware_encoder_is_used_where_it_opens_and_x264_elsewhere(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A profile naming NVENC gets NVENC where the encoder opens, and still plays (with
    libx264) where it does not. Decided by probing, not by an environment flag."""
    expected = "h264_nvenc" if nvenc_opens() else "libx264"
    buf = io.BytesIO()
    ladder = [Rendition("240p", 426, 240, 400_000, codec="h264_nvenc")]
    pipeline = Pipeline(Spec(stream="t/hw", ladder=ladder, x264_threads=1), Output(buf))
    for n, p in enumerate(file_packets(SMALL)):
        pipeline.feed(p)
        if n > 120:
            break
    pipeline.finish()
    frames = FrameReader().feed(buf.getvalue())
    info = next(json.loads(p) for t, p in frames if t is FrameType.RENDITIONS)
    assert info["renditions"][0]["encoder"] == expected
    assert any(t is FrameType.SEGMENT for t, _ in frames)
    assert ("falling back to libx264" in caplog.text) is (expected == "libx264")


# -- fMP4 / LL-HLS parts and the WebRTC tap -----------------------------------------------


@pytest.fixture(scope="module")
def cmaf() -> list[tuple[FrameType, bytes]]:
    buf = io.BytesIO()
    spec = Spec(
        stream="t/ll",
        ladder=LADDER[:2],
        x264_threads=1,
        segment_format="fmp4",
        part_duration=0.333,
        lead_parts=LEAD_PARTS,
        tap="240p",
    )
    pipeline = Pipeline(spec, Output(buf))
    for p in file_packets(SMALL):
        pipeline.feed(p)
    pipeline.finish()
    return FrameReader().feed(buf.getvalue())


def test_fmp4_init_comes_first_and_parts_tile_segments(cmaf: list[tuple[FrameType, bytes]]) -> None:
    for name in ("360p", "240p"):
        mine = []
        for t, payload in cmaf:
            if t is FrameType.INIT:
                f = decode_init(payload)
            elif t is FrameType.PART:
                f = decode_part(payload)
            elif t is FrameType.SEGMENT:
                f = decode_segment(payload)
            else:
                continue
            if f.rendition == name:
                mine.append(f)
        assert isinstance(mine[0], InitFrame) and mine[0].codecs.startswith("avc1.")
        assert sum(isinstance(f, InitFrame) for f in mine) == 1
        segs = [f for f in mine if isinstance(f, SegmentFrame)]
        parts = [f for f in mine if isinstance(f, PartFrame)]
        assert [s.index for s in segs] == list(range(len(segs))) and len(segs) >= 3
        for s in segs:
            sp = [p for p in parts if p.index == s.index]
            assert [p.part for p in sp] == list(range(len(sp)))
            assert b"".join(p.data for p in sp) == s.data
            # RFC 8216bis §4.4.4.9: no part longer than the part target.
            assert all(p.duration <= 0.333 for p in sp)
            # Keyframes start every segment and, in a run's first segment, the part
            # after the lead the store lists on its own (Spec.lead_parts).
            starts = {0, LEAD_PARTS} if s.index == 0 else {0}
            assert {p.part for p in sp if p.independent} == starts, s.index
            assert abs(sp[0].start - s.start) < 1e-9
            assert s.codecs == mine[0].codecs
        # Each part is announced before the segment that contains it.
        order = [type(f).__name__ + str(f.index) for f in mine[1:]]
        for s in segs:
            assert order.index(f"PartFrame{s.index}") < order.index(f"SegmentFrame{s.index}")


def test_fmp4_output_decodes_at_a_constant_frame_rate(cmaf: list[tuple[FrameType, bytes]]) -> None:
    for name, size in (("360p", (640, 360)), ("240p", (426, 240))):
        init = next(
            decode_init(p)
            for t, p in cmaf
            if t is FrameType.INIT and decode_init(p).rendition == name
        )
        segs = [decode_segment(p) for t, p in cmaf if t is FrameType.SEGMENT]
        parts = [decode_part(p) for t, p in cmaf if t is FrameType.PART]
        whole = init.data + b"".join(s.data for s in segs if s.rendition == name)
        from_parts = init.data + b"".join(p.data for p in parts if p.rendition == name)
        assert whole == from_parts
        with av.open(io.BytesIO(whole), format="mp4") as c:
            assert c.streams.audio, "audio is in every rendition's fragments"
            frames = list(c.decode(video=0))
        total = sum(s.duration for s in segs if s.rendition == name)
        assert abs(len(frames) - total * 30) <= 1
        assert all((f.width, f.height) == size for f in frames)
        pts = [f.pts * f.time_base for f in frames]
        assert all(b - a == Fraction(1, 30) for a, b in zip(pts, pts[1:], strict=False))


def test_fmp4_timeline_starts_at_the_streams_first_picture(
    cmaf: list[tuple[FrameType, bytes]],
) -> None:
    """Every rendition's first part has a tfdt of 0, as the playlist's timeline starts at
    0 (shaka-player#10589); RENDITIONS names the origin for a restarted worker."""
    (info,) = [json.loads(p) for t, p in cmaf if t is FrameType.RENDITIONS]
    for name in ("360p", "240p"):
        first = next(
            f for t, p in cmaf if t is FrameType.PART and (f := decode_part(p)).rendition == name
        )
        assert parse_fragments(first.data)[0].runs[0].base_decode_time == 0
        assert info["timeline_origin_ms"] == round(first.start * 1000)


def _run(spec: Spec, packets: int) -> list[tuple[FrameType, bytes]]:
    """The frames a pipeline writes for the first ``packets`` + 1 packets of the small clip."""
    buf = io.BytesIO()
    pipeline = Pipeline(spec, Output(buf))
    for n, p in enumerate(file_packets(SMALL)):
        pipeline.feed(p)
        if n >= packets:
            break
    pipeline.finish()
    return FrameReader().feed(buf.getvalue())


def _first_part(origin_ms: int | None) -> tuple[int, dict[str, object], PartFrame]:
    """A short LL-HLS run with ``timeline_origin_ms``: its first part's video tfdt, its
    RENDITIONS frame, and the part."""
    spec = Spec(
        stream="t/origin",
        ladder=LADDER[1:2],
        x264_threads=1,
        segment_format="fmp4",
        part_duration=0.333,
        timeline_origin_ms=origin_ms,
    )
    frames = _run(spec, 61)
    (info,) = [json.loads(p) for t, p in frames if t is FrameType.RENDITIONS]
    part = next(decode_part(p) for t, p in frames if t is FrameType.PART)
    return parse_fragments(part.data)[0].runs[0].base_decode_time, info, part


def test_a_later_run_continues_the_streams_fmp4_timeline() -> None:
    """A restarted worker (or the publisher back) keeps the stream's origin; a clock that
    starts before it starts the timeline again."""
    tfdt, info, part = _first_part(None)
    first = info["timeline_origin_ms"]
    assert tfdt == 0 and isinstance(first, int)
    tfdt, info, _ = _first_part(first - 500)
    assert (tfdt, info["timeline_origin_ms"]) == (500 * 90, first - 500)
    tfdt, info, _ = _first_part(first + 500)
    assert (tfdt, info["timeline_origin_ms"]) == (0, first)


def test_tap_sends_low_delay_annexb_h264_and_opus(cmaf: list[tuple[FrameType, bytes]]) -> None:
    taps = [decode_packet(p)[0] for t, p in cmaf if t is FrameType.TAP]
    video = [m for m in taps if m.kind == "video"]
    audio = [m for m in taps if m.kind == "audio"]
    assert {m.codec for m in video} == {"h264"} and {m.codec for m in audio} == {"opus"}
    frames240 = sum(
        1 for t, p in cmaf if t is FrameType.SEGMENT and decode_segment(p).rendition == "240p"
    )
    assert frames240 and len(video) >= 170
    assert video[0].keyframe
    for m in video:
        assert m.pts == m.dts, "the tap rendition has no B-frames"
        assert m.data.startswith(b"\x00\x00\x00\x01") or m.data.startswith(b"\x00\x00\x01")
        if m.keyframe:
            types = {n[0] & 0x1F for n in split_annexb(m.data)}
            assert {5, 7, 8} <= types, "SPS and PPS ride on every IDR"
    assert all(b.dts > a.dts for a, b in zip(video, video[1:], strict=False))
    dec = av.CodecContext.create("h264", "r")
    pictures = [f for m in video for f in dec.decode(av.Packet(m.data))] + list(dec.decode(None))
    assert len(pictures) == len(video) and (pictures[0].width, pictures[0].height) == (426, 240)
    steps = {b.pts - a.pts for a, b in zip(audio, audio[1:], strict=False)}
    assert steps <= {20}, "20 ms Opus frames"
    odec = av.CodecContext.create("opus", "r")
    odec.sample_rate = 48000  # type: ignore[attr-defined]
    pcm = [f for m in audio for f in odec.decode(av.Packet(m.data))]
    assert (
        pcm
        and pcm[0].sample_rate == 48000
        and sum(f.samples for f in pcm) >= 960 * (len(audio) - 1)
    )


def test_plain_fmp4_sends_init_and_whole_segments_only() -> None:
    spec = Spec(stream="t/f", ladder=LADDER[1:2], x264_threads=1, segment_format="fmp4")
    frames = _run(spec, 201)
    kinds = [
        t
        for t, _ in frames
        if t in (FrameType.INIT, FrameType.PART, FrameType.SEGMENT, FrameType.TAP)
    ]
    assert kinds[0] is FrameType.INIT and FrameType.PART not in kinds and FrameType.TAP not in kinds
    segs = [decode_segment(p) for t, p in frames if t is FrameType.SEGMENT]
    for s in segs:
        assert len(parse_fragments(s.data)) == 1, "one moof per segment without parts"


def test_ts_with_recording_also_packages_cmaf_of_the_same_pictures() -> None:
    """MPEG-TS for viewers, and a CMAF copy of the very same encode for the recorder."""
    buf = io.BytesIO()
    spec = Spec(stream="t/r", ladder=LADDER[1:2], x264_threads=1, record_fmp4=True)
    pipeline = Pipeline(spec, Output(buf))
    for p in file_packets(SMALL):
        pipeline.feed(p)
    pipeline.finish()
    frames = FrameReader().feed(buf.getvalue())
    kinds = [t for t, _ in frames if t not in (FrameType.STATS, FrameType.RENDITIONS)]
    assert FrameType.INIT not in kinds and FrameType.PART not in kinds
    assert kinds.index(FrameType.RECORD_INIT) < kinds.index(FrameType.RECORD_SEGMENT)
    ts = [decode_segment(p) for t, p in frames if t is FrameType.SEGMENT]
    rec = [decode_segment(p) for t, p in frames if t is FrameType.RECORD_SEGMENT]
    init = [decode_init(p) for t, p in frames if t is FrameType.RECORD_INIT]
    assert len(init) == 1 and ts[0].data[:1] == b"\x47"  # MPEG-TS sync byte
    # Segment for segment: same boundaries, same durations (MPEG-TS does not count the
    # stream's very last frame in the last segment's duration; CMAF does).
    assert [s.index for s in rec] == [s.index for s in ts]
    assert [s.start for s in rec] == pytest.approx([s.start for s in ts])
    assert [s.duration for s in rec] == pytest.approx([s.duration for s in ts], abs=1 / 29.9)
    decoded = []
    for blob in (b"".join(s.data for s in ts), init[0].data + b"".join(s.data for s in rec)):
        with av.open(io.BytesIO(blob)) as c:
            decoded.append(sum(1 for _ in c.decode(video=0)))
    assert decoded[0] == decoded[1] > 0


@pytest.mark.parametrize("fmt", ["ts", "fmp4"])
def test_constant_frame_rate_across_jitter_gap_and_clock_reset(fmt: str) -> None:
    """Jittered input, a 1 s hole, then a publisher clock restarting at 0: 30 fps out, monotonic."""
    rnd = random.Random(7)
    frames = [(round(n * 1000 / 30) + rnd.randint(-8, 8), False) for n in range(180)]
    vcfg, video = video_packets([(n * 40, False) for n in range(180)], 30.0, gop=30)
    # Re-stamp the encoded pictures: jitter, drop frames 60..89 (a gap), restart the clock at 120.
    stamped = []
    for n, (p, (t, _)) in enumerate(zip(video, frames, strict=True)):
        if 60 <= n < 90:
            continue
        if n >= 120:
            t -= frames[120][0]
        stamped.append(dataclasses.replace(p, pts=t, dts=t))
    buf = io.BytesIO()
    spec = Spec(
        stream="t/cfr",
        ladder=[Rendition("36p", 64, 36, 100_000, preset="ultrafast")],
        x264_threads=1,
        fps_hint=30.0,
        live=False,
        segment_format=fmt,
    )
    pipeline = Pipeline(spec, Output(buf))
    for p in interleave(vcfg, [], None, []) + stamped:  # in arrival order, not sorted by time
        pipeline.feed(p)
    pipeline.finish()
    out = FrameReader().feed(buf.getvalue())
    data = b"".join(
        [decode_init(p).data for t, p in out if t is FrameType.INIT]
        + [decode_segment(p).data for t, p in out if t is FrameType.SEGMENT]
    )
    with av.open(io.BytesIO(data), format="mpegts" if fmt == "ts" else "mp4") as c:
        pts = [f.pts * f.time_base for f in c.decode(video=0)]
    assert all(b - a == Fraction(1, 30) for a, b in zip(pts, pts[1:], strict=False)), (
        "constant 30 fps"
    )
    # 60 frames, 30 repeated across the hole, 30 more, then the 60 after the reset.
    assert abs(len(pts) - 180) <= 1


def test_worker_process_opens_every_rendition_with_its_init() -> None:
    """A (re)started worker process sends each rendition's INIT before any of its media."""
    spec = Spec(
        stream="t/proc", ladder=LADDER[:2], x264_threads=1, segment_format="fmp4", part_duration=0.5
    )
    stdin = encode_json(FrameType.START, spec_to_json(spec))
    for n, p in enumerate(file_packets(SMALL)):
        stdin += encode_packet(p)
        if n > 150:
            break
    stdin += encode_json(FrameType.END, {})
    res = subprocess.run(
        [sys.executable, "-m", "transcode.worker"], input=stdin, capture_output=True, timeout=120
    )
    assert res.returncode == 0, res.stderr.decode()
    first: dict[str, FrameType] = {}
    for t, payload in FrameReader().feed(res.stdout):
        if t in (FrameType.INIT, FrameType.PART, FrameType.SEGMENT):
            name = json.loads(payload[4 : 4 + int.from_bytes(payload[:4], "big")])["rendition"]
            first.setdefault(name, t)
    assert first == {"360p": FrameType.INIT, "240p": FrameType.INIT}


def _switch_to_ultrafast(rendition: Rendition) -> tuple[int, list[bytes]]:
    """Overload step 1 on ``rendition`` after 2.5 s of the small sample: the number of
    init segments sent, and the segments, each checked to decode whole under the
    init segment sent before it."""
    buf = io.BytesIO()
    spec = Spec(stream="t/reinit", ladder=[rendition], x264_threads=1, segment_format="fmp4")
    pipeline = Pipeline(spec, Output(buf))
    for p in file_packets(SMALL):
        if p.dts > 2500 and pipeline._encoders:
            pipeline._encoders[0].preset_override = "ultrafast"
        pipeline.feed(p)
    pipeline.finish()
    init = b""
    inits = 0
    segments = []
    for t, payload in FrameReader().feed(buf.getvalue()):
        if t is FrameType.INIT:
            init = decode_init(payload).data
            inits += 1
        elif t is FrameType.SEGMENT:
            seg = decode_segment(payload)
            with av.open(io.BytesIO(init + seg.data), format="mp4") as c:
                frames = list(c.decode(video=0))
            assert abs(len(frames) - seg.duration * 30) <= 1, seg.index
            segments.append(seg.data)
    return inits, segments


@pytest.mark.parametrize("tune", ["", "zerolatency"])
def test_faster_preset_mid_stream_keeps_the_parameter_sets_and_the_init(tune: str) -> None:
    """Overload step 1 reopens x264 at ultrafast speed with the rung's own SPS and PPS:
    no new init segment, the playlist's CODECS stays true, players reconfigure nothing."""
    inits, segments = _switch_to_ultrafast(dataclasses.replace(LADDER[1], tune=tune))
    assert inits == 1
    # x264 writes its options into the first picture after each open.
    options = [
        s[s.index(b"x264 - core") :].split(b"\x00")[0] for s in segments if b"x264 - core" in s
    ]
    assert len(options) == 2, options
    assert b"subme=7" in options[0] or b"subme=2" in options[0]
    assert b"subme=0" in options[1] and b"cabac=1" in options[1] and b"8x8dct=1" in options[1]


def test_faster_preset_that_cannot_keep_the_parameter_sets_sends_a_new_init(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Where no faster x264 keeps the rung's headers, the switch comes with new
    parameter sets in a new init segment (a new EXT-X-MAP), at a segment boundary."""
    monkeypatch.setattr(transcode.rungs, "faster_x264", lambda *a, **k: ("ultrafast", "", False))
    inits, _ = _switch_to_ultrafast(LADDER[1])
    assert inits == 2


class _PipeThatBreaks(io.BytesIO):
    """stdout towards a node that dies: every write fails once ``broken`` is set."""

    broken = False

    def write(self, data: bytes) -> int:  # type: ignore[override]
        if self.broken:
            raise BrokenPipeError(32, "Broken pipe")
        return super().write(data)


def test_finish_returns_when_the_final_flush_hits_a_broken_pipe() -> None:
    """The rung takes STOP, its final flush fails, and it must not then wait for a
    second STOP: a worker whose node was killed hung in Pipeline.finish for good."""
    fh = _PipeThatBreaks()
    pipeline = Pipeline(Spec(stream="t/t", ladder=LADDER[:1], x264_threads=1), Output(fh))
    for p in file_packets(SMALL):
        if p.dts > 1000:  # under one segment: the only segment is written by the flush
            break
        pipeline.feed(p)
    fh.broken = True
    done = threading.Thread(target=pipeline.finish, daemon=True)
    done.start()
    done.join(30)
    assert not done.is_alive(), "Pipeline.finish hung after a failed final flush"
    assert any(isinstance(r.error, BrokenPipeError) for r in pipeline._rungs)
