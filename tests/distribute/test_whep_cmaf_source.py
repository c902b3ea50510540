"""The WebRTC tap as a CMAF rendition and back: TapPackager -> CmafDemuxer/CmafWhepSource.

Round trips use real tap packets (x264 without B-frames, libopus); the parser is
property-tested on generated fragments and fuzzed with damaged real ones; FFmpeg
(PyAV) reads the rendition as an independent check of its Opus-in-MP4.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import io
import struct
from dataclasses import dataclass, field
from fractions import Fraction

import av
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from taputil import encode_tap

from containers.cmaf import TapPackager, split_annexb
from containers.fmp4 import (
    AudioTrack,
    OpusTrack,
    Sample,
    TrackRun,
    VideoTrack,
    fragment,
    init_segment,
)
from distribute.whep.cmaf_source import (
    MAX_EARLY,
    CmafDemuxer,
    CmafWhepSource,
    Pacer,
)
from media import MediaPacket, StreamKey
from media.segments import InitFrame, PartFrame, SegmentFrame

KEY = StreamKey("live", "relay")
SPS = bytes.fromhex("6764001facd9405005bb011000000300100000030300f1831996")
PPS = bytes.fromhex("68ebe3cb22c0")


@dataclass
class Packaged:
    inits: list[InitFrame] = field(default_factory=list)
    parts: list[PartFrame] = field(default_factory=list)
    segments: list[SegmentFrame] = field(default_factory=list)


def package(
    packets: list[MediaPacket], *, part: float = 0.2, grid: bool = True, lead_parts: int = 0
) -> Packaged:
    out = Packaged()
    tap = TapPackager(
        "webrtc",
        width=160,
        height=96,
        fps=30,
        channels=2,
        segment_duration=1.0,
        part_duration=part,
        grid=grid,
        lead=lead_parts,
        on_init=out.inits.append,
        on_part=out.parts.append,
        on_segment=out.segments.append,
    )
    for p in packets:
        tap.packet(p)
    tap.flush()
    return out


@functools.cache
def _tap() -> list[MediaPacket]:
    return encode_tap(3.0)


@functools.cache
def _packaged() -> Packaged:
    return package(_tap())


@pytest.fixture
def tap() -> list[MediaPacket]:
    return _tap()


@pytest.fixture
def packaged() -> Packaged:
    return _packaged()


def demux(init: bytes, fragments: list[bytes]) -> list[MediaPacket]:
    d = CmafDemuxer("test")
    assert d.init(init)
    return [p for f in fragments for p in d.fragment(f)]


# -- round trip ------------------------------------------------------------------------


def test_round_trip_gives_back_the_tap_packets(tap: list[MediaPacket], packaged: Packaged) -> None:
    (init,) = packaged.inits
    out = demux(init.data, [p.data for p in packaged.parts])
    v_in = [p for p in tap if p.kind == "video"]
    v_out = [p for p in out if p.kind == "video"]
    assert [(p.pts, p.dts, p.keyframe) for p in v_out] == [(p.pts, p.dts, p.keyframe) for p in v_in]
    # The same NAL units (x264 writes some 3-byte start codes; the source writes 4-byte).
    assert [split_annexb(p.data) for p in v_out] == [split_annexb(p.data) for p in v_in]
    for p in v_out:
        nal_types = [n[0] & 0x1F for n in split_annexb(p.data)]
        assert (nal_types[:2] == [7, 8]) == p.keyframe  # SPS+PPS in-band on every IDR
    a_in = {p.pts: p for p in tap if p.kind == "audio"}
    a_out = [p for p in out if p.kind == "audio"]
    # Audio from the first picture on, up to the last part's pictures; every packet as is.
    assert a_out[0].pts <= v_in[0].pts + 20 and a_out[-1].pts >= v_in[-1].pts - 40
    assert all(p.data == a_in[p.pts].data and p.dts == p.pts and p.keyframe for p in a_out)
    assert [p.pts for p in a_out] == sorted(a_in)[
        sorted(a_in).index(a_out[0].pts) : sorted(a_in).index(a_out[-1].pts) + 1
    ]
    assert [p.dts for p in out] == sorted(p.dts for p in out)  # interleaved by time


def test_segments_start_at_idrs_and_concatenate_their_parts(packaged: Packaged) -> None:
    assert [s.index for s in packaged.segments] == [0, 1, 2]
    for seg in packaged.segments:
        parts = [p for p in packaged.parts if p.index == seg.index]
        assert b"".join(p.data for p in parts) == seg.data
        assert [p.part for p in parts] == list(range(len(parts)))
        assert [p.independent for p in parts] == [True] + [False] * (len(parts) - 1)
        assert all(p.duration <= 0.2 + 1e-9 for p in parts)
        first = demux(packaged.inits[0].data, [seg.data])
        assert next(p for p in first if p.kind == "video").keyframe
    by_parts = demux(packaged.inits[0].data, [p.data for p in packaged.parts])
    by_segments = demux(packaged.inits[0].data, [s.data for s in packaged.segments])
    assert by_parts == by_segments


def test_ffmpeg_reads_the_rendition_video_and_opus(packaged: Packaged, tap: list[MediaPacket]):
    data = packaged.inits[0].data + b"".join(s.data for s in packaged.segments)
    with av.open(io.BytesIO(data), format="mp4") as container:
        vs, aus = container.streams.video[0], container.streams.audio[0]
        assert (vs.codec_context.name, vs.codec_context.width) == ("h264", 160)
        assert (aus.codec_context.name, aus.codec_context.sample_rate) == ("opus", 48000)
        assert aus.codec_context.channels == 2
        frames = {"video": 0, "audio": 0}
        for packet in container.demux():
            frames[packet.stream.type] += len(packet.decode())
    assert frames["video"] == sum(p.kind == "video" for p in tap)
    assert frames["audio"] >= 140  # 3 s of 20 ms frames, less the edges


def test_grid_numbers_segments_by_time_and_a_source_rung_in_sequence(
    tap: list[MediaPacket],
) -> None:
    # A rung suspended for its second segment (overload): the grid leaves a gap.
    gap = [p for p in tap if p.kind == "audio" or not 1000 <= p.pts < 2000]
    assert [s.index for s in package(gap).segments] == [0, 2]
    # A passed-through source: keyframes where the publisher put them, numbered in turn.
    assert [s.index for s in package(gap, grid=False).segments] == [0, 1]


def test_without_low_latency_one_fragment_per_segment(tap: list[MediaPacket]) -> None:
    out = package(tap, part=0.0)
    assert not out.parts and len(out.segments) == 3
    again = demux(out.inits[0].data, [s.data for s in out.segments])
    assert [p.pts for p in again if p.kind == "video"] == [p.pts for p in tap if p.kind == "video"]


# -- the parser: properties and damaged input ----------------------------------------------

nal_st = st.binary(min_size=1, max_size=40).map(lambda b: bytes([b[0] & 0x7F | 0x01]) + b[1:])


def _sample_bytes(nals: list[bytes]) -> bytes:
    return b"".join(len(n).to_bytes(4, "big") + n for n in nals)


@given(
    vbase=st.integers(0, 2**40),
    abase=st.integers(0, 2**40),
    video=st.lists(
        st.tuples(
            st.lists(nal_st, min_size=1, max_size=4),
            st.integers(1, 10_000),
            st.integers(0, 20_000),
            st.booleans(),
        ),
        min_size=1,
        max_size=12,
    ),
    audio=st.lists(
        st.tuples(st.binary(min_size=1, max_size=60), st.integers(1, 5000)), max_size=12
    ),
)
@settings(max_examples=150, deadline=None)
def test_demuxer_reads_any_fragment_the_writer_makes(
    vbase: int,
    abase: int,
    video: list[tuple[list[bytes], int, int, bool]],
    audio: list[tuple[bytes, int]],
) -> None:
    init = init_segment([VideoTrack(1, 90000, 160, 96, (SPS,), (PPS,)), OpusTrack(2, 2)])
    data = fragment(
        7,
        [
            TrackRun(
                1, vbase, [Sample(_sample_bytes(n), d, sync, cts) for n, d, cts, sync in video]
            ),
            TrackRun(2, abase, [Sample(b, d) for b, d in audio], video=False),
        ],
    )
    out = demux(init, [data])
    got_v = [p for p in out if p.kind == "video"]
    decode, want = vbase, []
    for nals, dur, cts, sync in video:
        pts = (decode + cts) * 1000 // 90000 + ((decode + cts) * 1000 % 90000 >= 45000) - 1000
        body = b"".join(b"\x00\x00\x00\x01" + n for n in nals)
        if sync and not any(n[0] & 0x1F == 7 for n in nals):
            body = b"\x00\x00\x00\x01" + SPS + b"\x00\x00\x00\x01" + PPS + body
        want.append((pts, sync, body))
        decode += dur
    assert [(p.pts, p.keyframe, p.data) for p in got_v] == want
    assert all(p.dts <= p.pts for p in got_v)
    got_a = [p for p in out if p.kind == "audio"]
    assert [p.data for p in got_a] == [b for b, _ in audio]
    starts = [abase + sum(d for _, d in audio[:i]) for i in range(len(audio))]
    assert [p.pts for p in got_a] == [(t * 1000 + 24000) // 48000 - 1000 for t in starts]


@given(data=st.data())
@settings(max_examples=300, deadline=None)
def test_damaged_fragments_raise_value_error_and_harm_nothing(data: st.DataObject) -> None:
    packaged = _packaged()
    good = packaged.parts[1].data
    damaged = bytearray(good)
    for _ in range(data.draw(st.integers(1, 4))):
        how = data.draw(st.sampled_from(["flip", "truncate", "insert", "size"]))
        pos = data.draw(st.integers(0, max(0, len(damaged) - 1)))
        if not damaged:
            break
        if how == "flip":
            damaged[pos] ^= data.draw(st.integers(1, 255))
        elif how == "truncate":
            del damaged[pos:]
        elif how == "insert":
            damaged[pos:pos] = data.draw(st.binary(min_size=1, max_size=8))
        elif len(damaged) >= pos + 4:  # a box or sample size field, say
            damaged[pos : pos + 4] = struct.pack(">I", data.draw(st.integers(0, 2**32 - 1)))
    d = CmafDemuxer("fuzz")
    d.init(packaged.inits[0].data)
    try:
        d.fragment(bytes(damaged))
    except ValueError as exc:
        assert str(exc).startswith("fuzz: ")
    assert len(d.fragment(good)) > 0  # the next good part goes through


@given(data=st.data())
@settings(max_examples=200, deadline=None)
def test_damaged_init_raises_value_error_and_keeps_the_current(data: st.DataObject) -> None:
    packaged = _packaged()
    good = packaged.inits[0].data
    damaged = bytearray(good)
    pos = data.draw(st.integers(0, len(damaged) - 1))
    if data.draw(st.booleans()):
        damaged[pos] ^= data.draw(st.integers(1, 255))
    else:
        del damaged[pos:]
    d = CmafDemuxer("fuzz")
    d.init(good)
    try:
        d.init(bytes(damaged))
    except ValueError as exc:
        assert str(exc).startswith("fuzz: ") and d.init_data == good
    assert d.fragment(packaged.parts[0].data)


def test_bad_input_is_refused_with_a_precise_error(packaged: Packaged) -> None:
    d = CmafDemuxer("[whep-cmaf live/x]")
    with pytest.raises(ValueError, match="fragment before any init segment"):
        d.fragment(packaged.parts[0].data)
    aac = init_segment(
        [
            VideoTrack(1, 90000, 160, 96, (SPS,), (PPS,)),
            AudioTrack(2, 48000, 2, b"\x11\x90"),
        ]
    )
    with pytest.raises(ValueError, match="audio is 'mp4a'; WHEP sends Opus only"):
        d.init(aac)
    with pytest.raises(ValueError, match="no video track"):
        d.init(init_segment([OpusTrack(1, 2)]))
    d.init(packaged.inits[0].data)
    with pytest.raises(ValueError, match=r"^\[whep-cmaf live/x\]: bad fragment"):
        d.fragment(b"\x00\x00\x00\x10mdat" + bytes(8))
    bad_nal = fragment(1, [TrackRun(1, 0, [Sample(b"\x00\x00\x00\x09abc", 3000)])])
    with pytest.raises(ValueError, match="overruns its sample"):
        d.fragment(bad_nal)


# -- pacing --------------------------------------------------------------------------------


def _packets(*dts: int) -> list[MediaPacket]:
    return [MediaPacket("video", "h264", t, t, b"x") for t in dts]


def test_pacer_releases_each_packet_at_its_media_time() -> None:
    pacer = Pacer()
    pacer.push(_packets(1000, 1033, 1067, 1100))
    assert [p.dts for p in pacer.pop_due(50.0)] == [1000]  # anchored on the first
    assert pacer.next_at() == pytest.approx(50.033)
    assert pacer.pop_due(50.030) == []
    assert [p.dts for p in pacer.pop_due(50.070)] == [1033, 1067]
    assert [p.dts for p in pacer.pop_due(50.2)] == [1100]
    assert pacer.next_at() is None


def test_pacer_sends_late_packets_at_once_and_stays_anchored() -> None:
    pacer = Pacer()
    pacer.push(_packets(0))
    pacer.pop_due(10.0)
    pacer.push(_packets(200, 233, 267))  # a part that came 300 ms late
    assert [p.dts for p in pacer.pop_due(10.5)] == [200, 233, 267]
    pacer.push(_packets(300))
    assert pacer.next_at() == pytest.approx(10.3)
    assert pacer.reanchored == 0


def test_pacer_reanchors_when_the_timeline_jumps() -> None:
    pacer = Pacer()
    pacer.push(_packets(0))
    pacer.pop_due(10.0)
    jump = round(MAX_EARLY * 1000) + 5000
    pacer.push(_packets(jump, jump + 40))
    assert [p.dts for p in pacer.pop_due(10.1)] == [jump]
    assert pacer.next_at() == pytest.approx(10.14)
    pacer.push(_packets(0))  # and back
    assert [p.dts for p in pacer.pop_due(10.2)] == [jump + 40, 0]
    assert pacer.reanchored == 2


def test_pacer_never_holds_more_than_its_backlog() -> None:
    pacer = Pacer(max_backlog=1.0)
    pacer.push(_packets(*range(0, 5000, 100)))  # 5 s pulled at once
    released = pacer.pop_due(0.0)
    # The excess goes now; the last second stays paced from the packet now due.
    assert [p.dts for p in released] == list(range(0, 4000, 100))
    assert pacer.next_at() == pytest.approx(0.1)
    assert len(pacer) == 10


# -- CmafWhepSource ------------------------------------------------------------------------


class FakeWhep:
    """Records what a WhepServer would be asked to do."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self.packets: list[MediaPacket] = []

    def open(self, key: StreamKey) -> object:
        self.events.append(f"open {key}")
        return None

    def feed(self, key: StreamKey, packet: MediaPacket) -> None:
        self.packets.append(packet)

    def restart(self, key: StreamKey) -> None:
        self.events.append(f"restart {key}")

    def end(self, key: StreamKey) -> None:
        self.events.append(f"end {key}")


def test_source_restarts_viewers_on_a_new_init_or_a_discontinuity(packaged: Packaged) -> None:
    whep = FakeWhep()
    source = CmafWhepSource(whep, KEY, pace=False)
    init = packaged.inits[0].data
    source.init(init)
    source.init(init)  # the same EXT-X-MAP again: nothing happens
    assert source.fragment(packaged.parts[0].data) > 0
    assert whep.events == ["open live/relay"]
    other = init_segment([VideoTrack(1, 90000, 320, 180, (SPS,), (PPS,)), OpusTrack(2, 2)])
    source.init(other)
    source.discontinuity()
    assert whep.events == ["open live/relay", "restart live/relay", "restart live/relay"]
    source.close()
    assert whep.events[-1] == "end live/relay"
    with pytest.raises(RuntimeError, match="closed"):
        source.fragment(packaged.parts[1].data)


def test_source_refuses_a_bad_fragment_and_goes_on(packaged: Packaged) -> None:
    whep = FakeWhep()
    source = CmafWhepSource(whep, KEY, pace=False)
    source.init(packaged.inits[0].data)
    with pytest.raises(ValueError, match=r"live/relay.*bad fragment"):
        source.fragment(packaged.parts[0].data[:-10] + b"\x00\x00\x00\x05")
    assert whep.packets == []
    n = source.fragment(packaged.parts[0].data)
    assert len(whep.packets) == n == source.published > 0


async def test_paced_source_publishes_everything_in_order_at_media_rate(
    packaged: Packaged,
) -> None:
    whep = FakeWhep()
    loop = asyncio.get_running_loop()
    times: list[float] = []
    parts = [p.data for p in packaged.parts[:5]]  # one second of media, all at once
    total = len(demux(packaged.inits[0].data, parts))
    done = asyncio.Event()

    def feed(key: StreamKey, packet: MediaPacket) -> None:
        times.append(loop.time())
        whep.packets.append(packet)
        if len(whep.packets) == total:
            done.set()

    whep.feed = feed  # type: ignore[method-assign]
    source = CmafWhepSource(whep, KEY)
    source.init(packaged.inits[0].data)
    for part in parts:
        source.fragment(part)
    await asyncio.wait_for(done.wait(), 10)
    source.close()
    assert [p.dts for p in whep.packets] == [p.dts for p in demux(packaged.inits[0].data, parts)]
    # Spread over the media's own second, not sent as one burst.
    media = (whep.packets[-1].dts - whep.packets[0].dts) / 1000
    assert times[-1] - times[0] >= 0.8 * media


def test_reads_what_ffmpeg_packages_as_cmaf(tap: list[MediaPacket]) -> None:
    """Another packager (FFmpeg's mp4 muxer: trun defaults and first-sample flags, its
    own avcC and dOps, an mfra at the end): keyframes, spacing and Opus come through."""
    buf = io.BytesIO()
    flags = "cmaf+frag_keyframe+empty_moov+default_base_moof+separate_moof"
    with av.open(buf, "w", format="mp4", options={"movflags": flags}) as out:
        vs = out.add_stream("h264", rate=30)
        vs.width, vs.height = 160, 96
        vs.time_base = Fraction(1, 1000)
        aus = out.add_stream("libopus", rate=48000)
        aus.time_base = Fraction(1, 48000)
        for p in tap:
            packet = av.Packet(p.data)
            scale = 1 if p.kind == "video" else 48
            packet.pts, packet.dts = p.pts * scale, p.dts * scale
            packet.time_base = Fraction(1, 1000 * scale)
            packet.is_keyframe = p.keyframe
            packet.stream = vs if p.kind == "video" else aus
            out.mux(packet)
    data = buf.getvalue()
    first_moof = data.index(b"moof") - 4
    out_packets = demux(data[:first_moof], [data[first_moof:]])
    for kind in ("video", "audio"):
        sent = [p for p in tap if p.kind == kind]
        got = [p for p in out_packets if p.kind == kind]
        assert [p.keyframe for p in got] == [p.keyframe for p in sent]
        assert [p.pts - got[0].pts for p in got] == [p.pts - sent[0].pts for p in sent]
        if kind == "audio":
            assert [p.data for p in got] == [p.data for p in sent]
        else:
            assert [split_annexb(p.data)[-1] for p in got] == [
                split_annexb(p.data)[-1] for p in sent
            ]


def test_an_idr_inside_a_segment_starts_a_part_not_a_segment(tap: list[MediaPacket]) -> None:
    # The worker forces an IDR where a run's LL-HLS lead ends (hls.lead_parts, 3 parts
    # into segment 0), here more than half a 1 s segment in: it must still not cut the
    # segment.
    lead_end = 600
    marked = [
        dataclasses.replace(p, keyframe=True) if p.kind == "video" and p.pts == lead_end else p
        for p in tap
    ]
    out = package(marked, lead_parts=3)
    assert [s.index for s in out.segments] == [0, 1, 2]
    first = [p for p in out.parts if p.index == 0]
    assert [p.independent for p in first] == [True, False, False, True, False]
    again = demux(out.inits[0].data, [p.data for p in out.parts])
    assert [p.pts for p in again if p.kind == "video" and p.keyframe] == [0, lead_end, 1000, 2000]
