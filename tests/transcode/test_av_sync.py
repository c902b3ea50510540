"""Issue 3: audio and video stay in sync within one frame over a 10-minute run.

A synthetic 10-minute source (64x36, 30 fps) flashes white on the same
instants that a 1 kHz beep starts. It runs through the worker's pipeline; the
test decodes the output with FFmpeg (PyAV) and measures, for every event, the
offset between the flash's first frame and the beep's first sample.
"""

from __future__ import annotations

import io
import logging

import av
import numpy as np
from synth import audio_packets, interleave, video_packets

from media import MediaPacket
from transcode.config import AudioProfile, Rendition
from transcode.output import Output
from transcode.pipeline import Pipeline
from transcode.protocol import FrameReader, FrameType, decode_init, decode_segment
from transcode.spec import Spec

log = logging.getLogger(__name__)
FPS = 30
SECONDS = 600
PERIOD = 221  # frames between events (7.37 s: the events drift across AAC frames)
RATE = 16000


def frame_ms(n: int) -> int:
    return round(n * 1000 / FPS)


def transcode(stream: str, segment_format: str, packets: list[MediaPacket]) -> bytes:
    """``packets`` through the worker's pipeline (one 36p rung, mono AAC, not LL-HLS):
    the rendition's init segment, if any, and its segments, joined."""
    buf = io.BytesIO()
    spec = Spec(
        stream=stream,
        ladder=[Rendition("36p", 64, 36, 100_000, preset="ultrafast")],
        audio=AudioProfile(bitrate=64_000, sample_rate=48_000, channels=1),
        x264_threads=1,
        live=False,
        segment_format=segment_format,
    )
    assert spec.part_duration == 0  # not LL-HLS
    pipeline = Pipeline(spec, Output(buf))
    for p in packets:
        pipeline.feed(p)
    pipeline.finish()
    frames = FrameReader().feed(buf.getvalue())
    init = b"".join(decode_init(p).data for t, p in frames if t is FrameType.INIT)
    return init + b"".join(decode_segment(p).data for t, p in frames if t is FrameType.SEGMENT)


def test_audio_and_video_stay_within_one_frame_over_ten_minutes() -> None:
    n_frames = SECONDS * FPS
    events = list(range(15, n_frames - FPS, PERIOD))
    flash = set()
    for e in events:
        flash.update((e, e + 1, e + 2))
    vcfg, video = video_packets(((frame_ms(n), n in flash) for n in range(n_frames)), FPS)
    acfg, audio = audio_packets(
        SECONDS, [frame_ms(e) * RATE // 1000 for e in events], RATE // 10, RATE
    )
    data = transcode("t/avsync", "fmp4", interleave(vcfg, video, acfg, audio))

    vts: list[float] = []
    luma: list[float] = []
    chunks: list[np.ndarray] = []
    starts: list[float] = []
    with av.open(io.BytesIO(data), format="mp4") as c:
        vs, as_ = c.streams.video[0], c.streams.audio[0]
        for pkt in c.demux(vs, as_):
            for f in pkt.decode():
                if pkt.stream is vs:
                    vts.append(float(f.pts * f.time_base))
                    luma.append(float(f.to_ndarray(format="gray").mean()))
                else:
                    starts.append(float(f.pts * f.time_base))
                    chunks.append(f.to_ndarray()[0])
    # Constant frame rate: every output frame exactly one frame after the last.
    steps = np.diff(np.array(sorted(vts)))
    assert len(vts) >= n_frames - FPS and np.allclose(steps, 1 / FPS, atol=1e-6)

    flashes = [
        t
        for i, (t, y) in enumerate(zip(vts, luma, strict=True))
        if y > 128 and (i == 0 or luma[i - 1] <= 128)
    ]
    assert len(flashes) == len(events)
    rate = as_.codec_context.sample_rate
    pcm = np.concatenate(chunks)
    t0 = starts[0]
    loud = np.flatnonzero(np.abs(pcm) > 0.2)
    offsets = []
    for ft in flashes:
        lo = int((ft - 0.5 - t0) * rate)
        first = loud[np.searchsorted(loud, max(lo, 0))]
        offsets.append(first / rate + t0 - ft)
    worst = max(abs(o) for o in offsets)
    log.info(
        "A/V offset over %d events: mean %.4f s, worst %.4f s",
        len(offsets),
        float(np.mean(offsets)),
        worst,
    )
    assert worst < 1 / FPS, (
        f"A/V drift: worst offset {worst * 1000:.1f} ms over {len(offsets)} events"
    )
    # And no drift: the last events are no further apart than the first.
    assert abs(np.mean(offsets[-10:]) - np.mean(offsets[:10])) < 0.005


def test_audio_starts_with_the_first_picture_outside_ll_hls() -> None:
    """The ladder opens on the first decoded picture, and audio before that is dropped.
    The decoder holds back no picture (no frame threads), so a stream's first audio is
    kept: its first AAC packet starts no later than its first picture (AAC's priming
    puts it one frame before)."""
    vcfg, video = video_packets(((frame_ms(n), False) for n in range(2 * FPS)), FPS)
    acfg, audio = audio_packets(2, [], 0, RATE)
    data = transcode("t/start", "ts", interleave(vcfg, video, acfg, audio))
    first: dict[str, float] = {}
    with av.open(io.BytesIO(data), format="mpegts") as c:
        for pkt in c.demux():
            kind = pkt.stream.type
            if pkt.pts is not None and kind not in first:
                first[kind] = float(pkt.pts * pkt.time_base)
    assert set(first) == {"video", "audio"}, first
    assert first["audio"] <= first["video"], first
