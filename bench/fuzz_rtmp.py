"""Mutation fuzzer for the RTMP chunk parser, AMF0 decoder, FLV tag parser and the
server session.

Run longer by hand:  python -m bench.fuzz_rtmp --seconds 600
Regenerate seeds:    python -m bench.fuzz_rtmp --write-corpus

Seeds come from ``tests/corpus/rtmp/*.bin`` (``chunk-*`` are chunk streams after the
handshake, ``amf0-*`` AMF0 bodies, ``flv-*`` FLV tag bodies: a type byte, 8 for
audio or 9 for video, then the body). The session target accepts connect and
publish the way the node does (:mod:`ingest.rtmp.server`), so mutated publishes
go on into the FLV and Enhanced RTMP tag parser and out as media packets.

Any exception other than RtmpProtocolError, or a reader holding more bytes than
its limit, is a bug; the input is saved to ``crash-<n>.bin`` in ``--crash-dir``
(default: the current directory; ``crash-*.bin`` is git-ignored) and the run stops.
"""

from __future__ import annotations

import argparse
import pathlib
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from ingest.rtmp import amf0, flv
from ingest.rtmp.chunk import ChunkReader, ChunkWriter, Message
from ingest.rtmp.exceptions import RtmpProtocolError
from ingest.rtmp.handshake import HandshakePacket
from ingest.rtmp.session import (
    ConnectRequested,
    MediaReceived,
    PublishRequested,
    ServerSession,
)

CORPUS = pathlib.Path(__file__).resolve().parent.parent / "tests" / "corpus" / "rtmp"
MAX_MESSAGE = 64 * 1024
MAX_BUFFERED = 2 * MAX_MESSAGE + 64
HANDSHAKE = b"\x03" + bytes(HandshakePacket(0, 0, bytes(1528))) * 2
INTERESTING = [0, 1, 0x7F, 0x80, 0xFF, 0xFFFF, 0xFFFFFF, 0x7FFFFFFF, 0xFFFFFFFF]


def seed_streams() -> dict[str, bytes]:
    """Tricky but valid inputs, written to the corpus by --write-corpus."""
    seeds: dict[str, bytes] = {}
    meta = amf0.EcmaArray(width=320.0, height=240.0, encoder="Lavf", stereo=True)
    seeds["amf0-connect.bin"] = amf0.encode(
        "connect", 1.0, {"app": "live", "tcUrl": "rtmp://h/live", "fourCcList": ["hvc1", "av01"]}
    )
    seeds["amf0-metadata.bin"] = amf0.encode("@setDataFrame", "onMetaData", meta)
    seeds["amf0-types.bin"] = amf0.encode(
        None, True, 1.5, "x" * 300, [1.0, [2.0, {"a": amf0.Date(1.0)}]], amf0.XmlDocument("<a/>")
    ) + bytes.fromhex("06 0a00000001 03000009 070001")
    for compress in (False, True):
        writer = ChunkWriter(compress=compress)
        msgs = [
            Message(3, 0, 20, 0, seeds["amf0-connect.bin"]),
            Message(2, 0, 1, 0, (128).to_bytes(4, "big")),
        ]
        data = b"".join(writer.write(m) for m in msgs)
        writer.chunk_size = 128
        ts = 0xFFFFF0
        for i in range(12):
            ts += 7 if i % 3 else 0xFFFFFF
            data += writer.write(Message(4 + i % 2, ts, 8 + i % 2, 1, bytes([0xAF, 1]) * (i * 20)))
        data += writer.write(Message(320, 5, 18, 1, seeds["amf0-metadata.bin"]))
        data += writer.write(Message(64, 0, 4, 0, bytes.fromhex("0006 00000001")))
        seeds[f"chunk-stream-{'compressed' if compress else 'plain'}.bin"] = data
    # Regression: deleteStream of a NaN stream id raised a bare ValueError.
    writer = ChunkWriter()
    seeds["chunk-deletestream-nan.bin"] = b"".join(
        writer.write(Message(3, 0, 20, 0, amf0.encode(*command)))
        for command in (
            ("connect", 1.0, {"app": "live"}),
            ("createStream", 2.0, None),
            ("deleteStream", 3.0, None, float("nan")),
        )
    )
    for name, tags in PUBLISHES.items():
        seeds[f"chunk-publish-{name}.bin"] = publish_stream(tags)
        for i, (type_id, body) in enumerate(tags[:4]):
            seeds[f"flv-{name}-{i}.bin"] = bytes([type_id]) + body
    return seeds


def _avcc(*nalus: bytes) -> bytes:
    return b"".join(len(n).to_bytes(4, "big") + n for n in nalus)


# A real AVCDecoderConfigurationRecord (x264, 320x180 Constrained Baseline) and
# AudioSpecificConfig (AAC-LC 44.1 kHz stereo): what FFmpeg and OBS send first.
AVC_CONFIG = bytes.fromhex(
    "0142c00dffe10019 6742c00dd90141fb0110000003001000000300f0f142a48001 01 0004 68cb8cb2"
)
AAC_CONFIG = bytes.fromhex("1210")
HEVC_CONFIG = bytes.fromhex("01016000000090000000000078f000fcfdf8f800000f03")
AV1_CONFIG = bytes.fromhex("81000c000a0b00000024cfe7ff")
VIDEO, AUDIO = 9, 8

# Tag sequences of whole publishes: legacy AVC + AAC (FFmpeg, OBS), Enhanced RTMP
# HEVC (CodedFrames with a composition time) and AV1 (CodedFramesX, ModEx, Opus).
PUBLISHES: dict[str, list[tuple[int, bytes]]] = {
    "avc-aac": [
        (VIDEO, bytes([0x17, 0, 0, 0, 0]) + AVC_CONFIG),
        (AUDIO, bytes([0xAF, 0]) + AAC_CONFIG),
        (VIDEO, bytes([0x17, 1, 0, 0, 0x21]) + _avcc(b"\x65\x88\x84\x00" + bytes(40))),
        (AUDIO, bytes([0xAF, 1]) + b"\x21\x10\x04" + bytes(20)),
        (VIDEO, bytes([0x27, 1, 0xFF, 0xFF, 0xF0]) + _avcc(b"\x41\x9a\x02" + bytes(30))),
        (VIDEO, bytes([0x27, 2, 0, 0, 0])),
    ],
    "hevc": [
        (VIDEO, bytes([0x90]) + b"hvc1" + HEVC_CONFIG),
        (VIDEO, bytes([0x91]) + b"hvc1" + bytes([0, 0, 0x21]) + _avcc(b"\x26\x01" + bytes(30))),
        (VIDEO, bytes([0xA3]) + b"hvc1" + _avcc(b"\x02\x01" + bytes(20))),
        (AUDIO, bytes([0x90]) + b"mp4a" + AAC_CONFIG),
        (AUDIO, bytes([0x91]) + b"mp4a" + b"\x21\x10" + bytes(20)),
        (VIDEO, bytes([0x94]) + b"hvc1" + amf0.encode("colorInfo", {"colorConfig": {}})),
        (VIDEO, bytes([0x92]) + b"hvc1"),
    ],
    "av1-opus": [
        (VIDEO, bytes([0x90]) + b"av01" + AV1_CONFIG),
        (VIDEO, bytes([0x93]) + b"av01" + b"\x12\x00\x0a\x0b" + bytes(16)),
        (VIDEO, bytes([0xA7, 2, 0, 0, 0, 0x13]) + b"av01" + b"\x32\x10" + bytes(12)),
        (AUDIO, bytes([0x90]) + b"Opus" + b"OpusHead\x01\x02\x38\x01\x80\xbb\0\0\0\0\0"),
        (AUDIO, bytes([0x91]) + b"Opus" + b"\xfc" + bytes(30)),
        (VIDEO, bytes([0x95]) + b"av01" + b"\x80\x00\x00"),
    ],
}


def publish_stream(tags: list[tuple[int, bytes]], name: str = "class") -> bytes:
    """The chunk stream an encoder sends after the handshake: connect, createStream,
    publish, metadata, then ``tags`` as media on message stream 1."""
    writer = ChunkWriter()
    commands = [
        amf0.encode("connect", 1.0, {"app": "live", "tcUrl": "rtmp://h/live"}),
        amf0.encode("releaseStream", 2.0, None, name),
        amf0.encode("FCPublish", 3.0, None, name),
        amf0.encode("createStream", 4.0, None),
    ]
    data = b"".join(writer.write(Message(3, 0, 20, 0, c)) for c in commands)
    data += writer.write(Message(2, 0, 1, 0, (4096).to_bytes(4, "big")))
    writer.chunk_size = 4096
    data += writer.write(Message(4, 0, 20, 1, amf0.encode("publish", 5.0, None, name, "live")))
    meta = amf0.EcmaArray(width=320.0, height=180.0, videocodecid=7.0, audiocodecid=10.0)
    data += writer.write(Message(4, 0, 18, 1, amf0.encode("@setDataFrame", "onMetaData", meta)))
    for i, (type_id, body) in enumerate(tags):
        data += writer.write(Message(6 if type_id == VIDEO else 7, 40 * i, type_id, 1, body))
    data += writer.write(Message(3, 0, 20, 0, amf0.encode("FCUnpublish", 6.0, None, name)))
    data += writer.write(Message(3, 0, 20, 0, amf0.encode("deleteStream", 7.0, None, 1.0)))
    return data


def write_corpus() -> None:
    CORPUS.mkdir(parents=True, exist_ok=True)
    for name, data in seed_streams().items():
        (CORPUS / name).write_bytes(data)


def load_corpus() -> tuple[list[bytes], list[bytes], list[bytes]]:
    """The committed seeds: (chunk streams, AMF0 bodies, FLV tags)."""
    found = [sorted(CORPUS.glob(f"{kind}-*.bin")) for kind in ("chunk", "amf0", "flv")]
    if all(found):
        chunk, amf, tags = ([p.read_bytes() for p in paths] for paths in found)
        return chunk, amf, tags
    seeds = seed_streams()
    chunk, amf, tags = (
        [v for k, v in seeds.items() if k.startswith(kind)] for kind in ("chunk", "amf0", "flv")
    )
    return chunk, amf, tags


def mutate(rng: random.Random, data: bytes, pool: list[bytes]) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        choice = rng.randrange(8)
        pos = rng.randrange(len(buf) + 1)
        if choice == 0 and buf:  # bit flip
            i = min(pos, len(buf) - 1)
            buf[i] ^= 1 << rng.randrange(8)
        elif choice == 1 and buf:  # random byte
            buf[min(pos, len(buf) - 1)] = rng.randrange(256)
        elif choice == 2:  # truncate
            del buf[pos:]
        elif choice == 3:  # splice with another seed
            other = rng.choice(pool)
            cut = rng.randrange(len(other) + 1)
            buf[pos:] = other[cut:]
        elif choice == 4:  # insert random bytes
            buf[pos:pos] = rng.randbytes(rng.randint(1, 16))
        elif choice == 5 and buf:  # duplicate a region
            end = min(len(buf), pos + rng.randint(1, 64))
            buf[pos:pos] = buf[pos:end]
        elif choice == 6:  # interesting big-endian integer (lengths, sizes, timestamps)
            width = rng.choice((1, 2, 3, 4))
            value = rng.choice(INTERESTING) & ((1 << (8 * width)) - 1)
            buf[pos : pos + width] = value.to_bytes(width, "big")
        else:  # delete a region
            del buf[pos : pos + rng.randint(1, 32)]
    return bytes(buf)


def run_chunk(data: bytes, rng: random.Random) -> None:
    reader = ChunkReader(max_message_size=MAX_MESSAGE)
    pos = 0
    while pos < len(data):
        step = rng.choice((1, 7, 64, 4096))
        reader.feed(data[pos : pos + step])
        pos += step
        if reader.buffered_bytes > MAX_BUFFERED:
            raise AssertionError(f"reader holds {reader.buffered_bytes} bytes")


def run_amf0(data: bytes, rng: random.Random) -> None:
    amf0.decode(data)


def run_flv(data: bytes, rng: random.Random) -> None:
    if not data:
        return
    parse = flv.parse_video if data[0] & 1 else flv.parse_audio
    parse(rng.choice(INTERESTING), data[1:])


@dataclass
class Reach:
    """How deep session inputs got: publishes accepted, media packets produced, and
    inputs that reached the FLV tag parser (a packet, or an error raised in it)."""

    published: int = 0
    media: int = 0
    flv: int = 0


REACH = Reach()


def run_session(data: bytes, rng: random.Random) -> None:
    """Feed ``data`` after a handshake, accepting connect and publish as the node's
    adapter does: each event handled in order, then what the core held back."""
    session = ServerSession(max_message_size=MAX_MESSAGE, handshake_random=bytes(1528))
    session.receive_data(HANDSHAKE)
    pos = 0
    media_before = REACH.media
    try:
        while pos < len(data) and not session.closed:
            step = rng.choice((64, 4096, len(data)))
            events = session.receive_data(data[pos : pos + step])
            pos += step
            while events:
                event, events = events[0], events[1:]
                if isinstance(event, ConnectRequested):
                    session.accept_connect()
                    events = [*session.receive_data(b""), *events]
                elif isinstance(event, PublishRequested):
                    session.accept_publish(event.stream_id)
                    REACH.published += 1
                    events = [*session.receive_data(b""), *events]
                elif isinstance(event, MediaReceived):
                    REACH.media += 1
        session.receive_data(b"")
    except RtmpProtocolError as exc:
        if _raised_in(exc, flv.__file__):
            REACH.flv += 1
        raise
    if REACH.media > media_before:
        REACH.flv += 1


def _raised_in(exc: BaseException, filename: str) -> bool:
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == filename:
            return True
        tb = tb.tb_next
    return False


TARGETS = ("chunk", "amf0", "flv", "session")


def fuzz(
    *,
    count: int | None = None,
    seconds: float | None = None,
    seed: int = 0,
    crash_dir: pathlib.Path | None = None,
) -> dict[str, int]:
    """Run mutated inputs; return how many each target saw, and how deep the session
    inputs got (``published``, ``media``, ``flv``: see :class:`Reach`). Raises on a
    real bug, after saving the input to ``crash_dir`` (default: the current directory).
    """
    rng = random.Random(seed)
    chunk_seeds, amf_seeds, flv_seeds = load_corpus()
    pool = chunk_seeds + amf_seeds + flv_seeds
    targets: list[tuple[str, Callable[[bytes, random.Random], None], list[bytes]]] = [
        ("chunk", run_chunk, chunk_seeds),
        ("amf0", run_amf0, amf_seeds + chunk_seeds),
        ("flv", run_flv, flv_seeds),
        ("session", run_session, chunk_seeds),
    ]
    reach_before = Reach(REACH.published, REACH.media, REACH.flv)
    counts = {name: 0 for name, _, _ in targets}
    deadline = time.perf_counter() + seconds if seconds is not None else None
    done = 0
    while (count is None or done < count) and (
        deadline is None or done % 256 or time.perf_counter() < deadline
    ):
        # The session is slower; weight it down so the parsers get most inputs.
        name, target, seeds = targets[(0, 0, 0, 0, 1, 1, 2, 3)[done % 8]]
        data = mutate(rng, rng.choice(seeds), pool)
        try:
            target(data, rng)
        except RtmpProtocolError:
            pass
        except Exception:
            path = (crash_dir or pathlib.Path()) / f"crash-{done}.bin"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            print(f"{name}: crash on input saved to {path}", file=sys.stderr)
            raise
        counts[name] += 1
        done += 1
    counts["published"] = REACH.published - reach_before.published
    counts["media"] = REACH.media - reach_before.media
    counts["flv_reached"] = REACH.flv - reach_before.flv
    return counts


def replay(data: bytes, seeds: range = range(16)) -> None:
    """Run ``data`` through every target with several chunkings; raises on a real bug
    (for checking a saved crash input, or a regression seed)."""
    targets = (run_chunk, run_amf0, run_flv, run_session)
    for seed in seeds:
        for target in targets:
            try:
                target(data, random.Random(seed))
            except RtmpProtocolError:
                pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=int(time.time()))
    parser.add_argument("--write-corpus", action="store_true")
    parser.add_argument("--crash-dir", type=pathlib.Path, default=pathlib.Path())
    parser.add_argument("--replay", type=pathlib.Path, nargs="*", help="run saved inputs only")
    args = parser.parse_args()
    if args.write_corpus:
        write_corpus()
        return
    if args.replay:
        for path in args.replay:
            replay(path.read_bytes())
            print(f"{path}: no crash in {', '.join(TARGETS)}")
        return
    counts = fuzz(seconds=args.seconds, seed=args.seed, crash_dir=args.crash_dir)
    inputs = sum(counts[t] for t in TARGETS)
    print(f"seed {args.seed}: {inputs} inputs, {counts}, no crashes")


if __name__ == "__main__":
    main()
