"""fMP4/CMAF writer and packager: property round trips, FFmpeg (PyAV and the CLI) as readers."""

from __future__ import annotations

import io
import json
import struct
import subprocess
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from containers.cmaf import TIMELINE_OFFSET, AudioFormat, CmafPackager, split_annexb
from containers.fmp4 import (
    AudioTrack,
    OpusTrack,
    Sample,
    TrackRun,
    VideoTrack,
    audio_specific_config,
    avcc_record,
    fragment,
    init_segment,
    opus_specific,
)
from containers.mp4box import (
    decode_span,
    parse_boxes,
    parse_fragments,
    parse_init,
    shift_decode_times,
)
from media.segments import InitFrame, PartFrame, SegmentFrame

# A real x264 SPS/PPS (high profile, 4:2:0, 8 bit).
SPS = bytes.fromhex("6764001facd9405005bb011000000300100000030300f1831996")
PPS = bytes.fromhex("68ebe3cb22c0")

samples_st = st.lists(
    st.builds(
        Sample,
        data=st.binary(min_size=1, max_size=64),
        duration=st.integers(0, 2**32 - 1),
        sync=st.booleans(),
        cts=st.integers(-(2**31), 2**31 - 1),
    ),
    min_size=1,
    max_size=20,
)


@given(
    sequence=st.integers(1, 2**32 - 1),
    vbase=st.integers(0, 2**64 - 1),
    abase=st.integers(0, 2**64 - 1),
    video=samples_st,
    audio=samples_st,
)
@settings(max_examples=200, deadline=None)
def test_fragment_round_trips_through_the_parser(
    sequence: int, vbase: int, abase: int, video: list[Sample], audio: list[Sample]
) -> None:
    audio = [Sample(s.data, s.duration) for s in audio]
    data = fragment(sequence, [TrackRun(1, vbase, video), TrackRun(2, abase, audio, video=False)])
    (frag,) = parse_fragments(data)
    assert frag.sequence == sequence
    v, a = frag.runs
    assert (v.track_id, v.base_decode_time, a.track_id, a.base_decode_time) == (1, vbase, 2, abase)
    assert [(s.data, s.duration, s.cts, s.flags == 0x02000000) for s in v.samples] == [
        (s.data, s.duration, s.cts, s.sync) for s in video
    ]
    assert [(s.data, s.duration) for s in a.samples] == [(s.data, s.duration) for s in audio]


@given(
    width=st.integers(2, 8192),
    height=st.integers(2, 8192),
    timescale=st.integers(1, 2**32 - 1),
    rate=st.sampled_from([8000, 16000, 22050, 32000, 44100, 48000]),
    channels=st.integers(1, 2),
)
@settings(max_examples=100, deadline=None)
def test_init_segment_round_trips(
    width: int, height: int, timescale: int, rate: int, channels: int
) -> None:
    asc = audio_specific_config(rate, channels)
    data = init_segment(
        [
            VideoTrack(1, timescale, width, height, (SPS,), (PPS,)),
            AudioTrack(2, rate, channels, asc),
        ]
    )
    v, a = parse_init(data)
    assert (v.track_id, v.handler, v.timescale, v.codec, v.width, v.height) == (
        1,
        "vide",
        timescale,
        "avc1",
        width,
        height,
    )
    assert v.config == avcc_record((SPS,), (PPS,))
    assert (a.track_id, a.handler, a.timescale, a.codec, a.config, a.channels, a.sample_rate) == (
        2,
        "soun",
        rate,
        "mp4a",
        asc,
        channels,
        rate,
    )


@given(
    vbase=st.integers(0, 2**40),
    abase=st.integers(0, 2**40),
    vshift=st.integers(-(2**40), 2**40),
    ashift=st.integers(-(2**40), 2**40),
    video=samples_st,
    audio=samples_st,
)
@settings(max_examples=200, deadline=None)
def test_shifting_decode_times_moves_only_the_base(
    vbase: int, abase: int, vshift: int, ashift: int, video: list[Sample], audio: list[Sample]
) -> None:
    audio = [Sample(s.data, s.duration) for s in audio]
    data = b"".join(
        fragment(n, [TrackRun(1, vbase, video), TrackRun(2, abase, audio, video=False)])
        for n in (1, 2)
    )
    span = decode_span(data)
    assert span[1] == (vbase, vbase + sum(s.duration for s in video))
    if vbase + vshift < 0 or abase + ashift < 0:
        with pytest.raises(ValueError, match="out of range"):
            shift_decode_times(data, {1: vshift, 2: ashift})
        return
    moved = shift_decode_times(data, {1: vshift, 2: ashift})
    assert len(moved) == len(data)
    for before, after in zip(parse_fragments(data), parse_fragments(moved), strict=True):
        for r0, r1 in zip(before.runs, after.runs, strict=True):
            shift = vshift if r0.track_id == 1 else ashift
            assert r1.base_decode_time == r0.base_decode_time + shift
            assert r1.samples == r0.samples


@given(st.binary(max_size=300))
@settings(max_examples=300, deadline=None)
def test_parser_rejects_garbage_with_value_error(data: bytes) -> None:
    for parse in (parse_boxes, parse_fragments, parse_init, decode_span):
        try:
            parse(data)
        except ValueError:
            pass
    try:
        shift_decode_times(data, {1: 5})
    except ValueError:
        pass


def test_avcc_high_profile_carries_chroma_and_depth() -> None:
    rec = avcc_record((SPS,), (PPS,))
    assert rec[:4] == bytes([1, 0x64, 0x00, 0x1F])
    assert rec[-4:] == bytes([0xFD, 0xF8, 0xF8, 0])  # 4:2:0, 8-bit luma and chroma


def test_bad_input_is_refused_with_a_precise_error() -> None:
    with pytest.raises(ValueError, match="no frequency index"):
        audio_specific_config(12345, 2)
    with pytest.raises(ValueError, match="at least one sample"):
        fragment(1, [TrackRun(1, 0, [])])
    with pytest.raises(ValueError, match="negative"):
        fragment(1, [TrackRun(1, -1, [Sample(b"x", 1)])])
    with pytest.raises(ValueError, match="distinct"):
        init_segment([VideoTrack(1, 90000, 2, 2, (SPS,), (PPS,))] * 2)


# -- the packager, checked by FFmpeg -------------------------------------------------

FPS = 30
W, H = 160, 96


def _encode(seconds: float, bframes: int = 3) -> tuple[list[av.Packet], list[av.Packet], bytes]:
    """x264 (Annex B, B-frames, IDR every second) and AAC packets of a moving test card."""
    enc = av.CodecContext.create("libx264", "w")
    enc.width, enc.height, enc.pix_fmt = W, H, "yuv420p"
    enc.time_base = Fraction(1, 90000)
    enc.framerate = Fraction(FPS)
    enc.options = {"preset": "ultrafast", "x264-params": f"bframes={bframes}:keyint=60:scenecut=0"}
    video: list[av.Packet] = []
    for n in range(int(seconds * FPS)):
        img = np.zeros((H, W, 3), np.uint8)
        img[:, (n * 3) % W] = 255
        f = av.VideoFrame.from_ndarray(img, format="rgb24").reformat(format="yuv420p")
        f.pts = 3000 * n
        f.pict_type = (
            av.video.frame.PictureType.I if n % FPS == 0 else av.video.frame.PictureType.NONE
        )
        video += enc.encode(f)
    video += enc.encode(None)
    aenc = av.CodecContext.create("aac", "w")
    aenc.sample_rate, aenc.layout, aenc.format = 48000, "stereo", "fltp"
    aenc.time_base = Fraction(1, 48000)
    aenc.open()
    audio: list[av.Packet] = []
    for k in range(int(seconds * 48000 / 1024)):
        t = (np.arange(1024) + k * 1024) / 48000
        pcm = np.stack([np.sin(2 * np.pi * 440 * t)] * 2).astype(np.float32) * 0.2
        af = av.AudioFrame.from_ndarray(pcm, format="fltp", layout="stereo")
        af.sample_rate, af.pts = 48000, k * 1024
        audio += aenc.encode(af)
    return video, audio, bytes(aenc.extradata or b"")


def _package(seconds: float, origin_ms: int | None = None) -> dict[str, list]:
    """``seconds`` of encoded media through a packager with 0.3 s parts, its media time
    starting at ``origin_ms`` (0 without one): init, parts, segments and the video."""
    video, audio, asc = _encode(seconds)
    out: dict[str, list] = {"init": [], "part": [], "segment": [], "video": video}
    shift = origin_ms or 0
    pk = CmafPackager(
        "t",
        width=W,
        height=H,
        frame_ticks=3000,
        audio=AudioFormat(48000, 2, asc or audio_specific_config(48000, 2)),
        part_ticks=9 * 3000,
        on_init=out["init"].append,
        on_part=out["part"].append,
        on_segment=out["segment"].append,
        origin=None if origin_ms is None else origin_ms * 90,
    )
    ai = 0
    for p in video:
        # Audio reaches the packager ahead of the (delayed) encoded video, as in the worker.
        while ai < len(audio) and audio[ai].pts * 90000 // 48000 <= p.dts + 15000:
            pk.audio(bytes(audio[ai]), audio[ai].pts + shift * 48)
            ai += 1
        idx = p.pts // 90000 if p.is_keyframe else None
        pk.video(split_annexb(bytes(p)), p.pts + shift * 90, p.dts + shift * 90, p.is_keyframe, idx)
    pk.flush()
    return out


@pytest.fixture(scope="module")
def packaged() -> dict[str, list]:
    return _package(4.0)


def test_parts_respect_the_target_and_tile_segments(packaged: dict[str, list]) -> None:
    inits: list[InitFrame] = packaged["init"]
    parts: list[PartFrame] = packaged["part"]
    segs: list[SegmentFrame] = packaged["segment"]
    assert len(inits) == 1 and inits[0].codecs.startswith("avc1.4D")
    assert [s.index for s in segs] == [0, 1, 2, 3]
    for s in segs:
        mine = [p for p in parts if p.index == s.index]
        assert [p.part for p in mine] == list(range(len(mine)))
        assert b"".join(p.data for p in mine) == s.data
        assert all(p.duration <= 0.3 + 1e-9 for p in mine)
        assert all(p.duration >= 0.3 - 1e-9 for p in mine[:-1])
        assert mine[0].independent and not any(p.independent for p in mine[1:])
        assert abs(sum(p.duration for p in mine) - s.duration) < 1e-6
        assert abs(s.duration - 1.0) < 1e-6 and abs(s.start - s.index) < 1e-6


def test_ffmpeg_decodes_every_frame_with_its_pts(packaged: dict[str, list]) -> None:
    data = packaged["init"][0].data + b"".join(s.data for s in packaged["segment"])
    want = sorted(p.pts for p in packaged["video"])
    with av.open(io.BytesIO(data), format="mp4") as c:
        vs, as_ = c.streams.video[0], c.streams.audio[0]
        got = []
        audio_frames = 0
        for pkt in c.demux(vs, as_):
            for f in pkt.decode():
                if pkt.stream is vs:
                    got.append(round(f.pts * f.time_base * 90000) - TIMELINE_OFFSET * 90000)
                else:
                    audio_frames += 1
        assert (vs.codec_context.width, vs.codec_context.height) == (W, H)
    assert sorted(got) == want
    assert audio_frames >= 4 * 48000 // 1024 - 3


def test_each_part_decodes_after_the_init(packaged: dict[str, list]) -> None:
    """A player joining at an independent part decodes from there on."""
    init = packaged["init"][0].data
    independent = [p for p in packaged["part"] if p.independent]
    tail = b"".join(p.data for p in packaged["part"] if p.index >= independent[2].index)
    with av.open(io.BytesIO(init + tail), format="mp4") as c:
        frames = [f for f in c.decode(video=0)]
    assert len(frames) == 2 * FPS
    first = float(frames[0].pts * frames[0].time_base) - TIMELINE_OFFSET
    assert abs(first - independent[2].start) < 1e-6


@pytest.mark.parametrize("origin_ms", [0, 67, 5_000])
def test_an_origin_starts_the_fmp4_timeline_at_zero(origin_ms: int) -> None:
    """A stream whose media time starts at ``origin_ms``: its first part has a tfdt of 0, as
    its playlist's timeline starts at 0 (shaka-player#10589), its first picture shows at 0
    (the init's edit list takes the composition offset off), and audio keeps its sync."""
    out = _package(1.0, origin_ms)
    video, parts, inits = out["video"], out["part"], out["init"]
    (frag,) = parse_fragments(parts[0].data)
    v, a = frag.runs
    allowance = 3 * 3000  # REORDER_FRAMES frames: the first picture's composition offset
    assert v.base_decode_time == 0 and v.samples[0].cts == allowance
    assert parse_init(inits[0].data)[0].edit_offset == allowance
    assert a.base_decode_time == 0  # with the first picture
    assert abs(parts[0].start - origin_ms / 1000) < 1e-9  # the worker's own media time
    data = inits[0].data + b"".join(p.data for p in parts)
    with av.open(io.BytesIO(data), format="mp4") as c:
        got = sorted(round(f.pts * f.time_base * 90000) for f in c.decode(video=0))
    assert got == sorted(p.pts for p in video)


def test_debian_ffprobe_reads_concatenated_file(packaged: dict[str, list], tmp_path: Path) -> None:
    path = tmp_path / "all.mp4"
    path.write_bytes(packaged["init"][0].data + b"".join(s.data for s in packaged["segment"]))
    res = subprocess.run(
        ["ffprobe", "-v", "error", "-count_frames", "-show_streams", "-of", "json", str(path)],
        capture_output=True,
        text=True,
        check=True,
    )
    streams = {s["codec_type"]: s for s in json.loads(res.stdout)["streams"]}
    assert int(streams["video"]["nb_read_frames"]) == 4 * FPS
    assert streams["audio"]["codec_name"] == "aac"
    dec = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(path), "-f", "null", "-"],
        capture_output=True,
        text=True,
    )
    assert dec.returncode == 0 and not dec.stderr.strip(), dec.stderr


@st.composite
def _streams(draw: st.DrawFn) -> list[tuple[str, int, int, bool]]:
    """Video (pts, dts, keyframe) and audio (pts) events, roughly as a worker sees them."""
    events: list[tuple[str, int, int, bool]] = []
    dts = draw(st.integers(0, 10**6))
    apts = dts * 48000 // 90000
    n = draw(st.integers(1, 120))
    gop = draw(st.integers(1, 40))
    for i in range(n):
        dts += draw(st.sampled_from([3000, 3000, 3000, 6000]))
        delay = 0 if i % gop == 0 else draw(st.sampled_from([0, 3000, 6000]))
        events.append(("v", dts + delay + 6000 * (i % gop != 0), dts, i % gop == 0))
        while apts * 90000 // 48000 < dts + draw(st.integers(-20000, 20000)):
            events.append(("a", apts, 0, True))
            apts += 1024
    return events


@given(events=_streams(), part_frames=st.integers(0, 12))
@settings(max_examples=80, deadline=None)
def test_packager_invariants_hold_for_any_stream(
    events: list[tuple[str, int, int, bool]], part_frames: int
) -> None:
    inits: list[InitFrame] = []
    parts: list[PartFrame] = []
    segs: list[SegmentFrame] = []
    pk = CmafPackager(
        "p",
        width=W,
        height=H,
        frame_ticks=3000,
        audio=AudioFormat(48000, 2, audio_specific_config(48000, 2)),
        part_ticks=part_frames * 3000,
        on_init=inits.append,
        on_part=parts.append,
        on_segment=segs.append,
    )
    idr = [b"\x67" + SPS[1:], PPS, b"\x65\x88"]
    for kind, pts, dts, key in events:
        if kind == "a":
            pk.audio(b"\x21\x00", pts)
        else:
            pk.video(idr if key else [b"\x41\x9a"], pts, dts, key, None)
    pk.flush()
    assert len(inits) == 1 and parse_init(inits[0].data)
    last_end: dict[int, int] = {}
    for s in segs:
        mine = [p for p in parts if p.index == s.index]
        if part_frames:
            assert b"".join(p.data for p in mine) == s.data
            assert all(p.duration <= part_frames * 3000 / 90000 + 1e-9 for p in mine)
            assert mine[0].independent
        else:
            assert not mine
        for frag in parse_fragments(s.data):
            for run in frag.runs:
                # Decode times never go back and never overlap the previous fragment.
                assert run.base_decode_time >= last_end.get(run.track_id, 0)
                last_end[run.track_id] = run.base_decode_time + sum(x.duration for x in run.samples)
                if run.track_id == 1:
                    assert all(x.cts >= 0 for x in run.samples)
    assert sum(len(f.runs[0].samples) for s in segs for f in parse_fragments(s.data)) == sum(
        1 for e in events if e[0] == "v"
    )


@given(channels=st.integers(1, 2), pre_skip=st.integers(0, 65535), rate=st.integers(0, 2**32 - 1))
@settings(max_examples=50, deadline=None)
def test_opus_init_round_trips(channels: int, pre_skip: int, rate: int) -> None:
    data = init_segment(
        [
            VideoTrack(1, 90000, 160, 96, (SPS,), (PPS,)),
            OpusTrack(2, channels, pre_skip=pre_skip, input_sample_rate=rate),
        ]
    )
    _, a = parse_init(data)
    assert (a.track_id, a.handler, a.timescale, a.codec, a.channels, a.sample_rate) == (
        2,
        "soun",
        48000,
        "Opus",
        channels,
        48000,
    )
    # dOps (Opus-in-ISOBMFF §4.3.2): version 0, big-endian, mapping family 0.
    assert a.config == bytes([0, channels]) + pre_skip.to_bytes(2, "big") + rate.to_bytes(
        4, "big"
    ) + bytes(3)


def test_opus_refuses_what_family_0_cannot_say() -> None:
    with pytest.raises(ValueError, match="Opus channel count 6 needs a mapping table"):
        opus_specific(6)
    with pytest.raises(ValueError, match="pre-skip"):
        opus_specific(2, pre_skip=1 << 16)


def test_parser_bounds_nesting_and_sample_counts() -> None:
    nested = b""
    for _ in range(40):
        nested = struct.pack(">I", 8 + len(nested)) + b"moov" + nested
    with pytest.raises(ValueError, match="nest deeper than 16"):
        parse_boxes(nested)
    # A trun that counts 2^32-1 samples without per-sample fields: refused, not looped.
    trun = struct.pack(">I", 0) + struct.pack(">I", 0xFFFFFFFF)
    traf = (
        struct.pack(">I", 16)
        + b"tfhd"
        + struct.pack(">II", 0x020000, 1)
        + struct.pack(">I", 20)
        + b"tfdt"
        + struct.pack(">IQ", 1 << 24, 0)
        + struct.pack(">I", 8 + len(trun))
        + b"trun"
        + trun
    )
    mfhd = struct.pack(">I", 16) + b"mfhd" + struct.pack(">II", 0, 1)
    body = mfhd + struct.pack(">I", 8 + len(traf)) + b"traf" + traf
    moof = struct.pack(">I", 8 + len(body)) + b"moof" + body
    with pytest.raises(ValueError, match="exceeds 65536"):
        parse_fragments(moof + struct.pack(">I", 8) + b"mdat")
