"""Mutation fuzzer for the RTMP chunk parser, AMF0 decoder and server session.

Run longer by hand:  python -m bench.fuzz_rtmp --seconds 600
Regenerate seeds:    python -m bench.fuzz_rtmp --write-corpus

Seeds come from ``tests/corpus/rtmp/*.bin`` (``chunk-*`` are chunk streams after the
handshake, ``amf0-*`` AMF0 bodies). Any exception other than RtmpProtocolError, or
a reader holding more bytes than its limit, is a bug; the input is saved to
``crash-<n>.bin`` in the current directory and the run stops.
"""

from __future__ import annotations

import argparse
import pathlib
import random
import sys
import time
from collections.abc import Callable

from ingest.rtmp import amf0
from ingest.rtmp.chunk import ChunkReader, ChunkWriter, Message
from ingest.rtmp.exceptions import RtmpProtocolError
from ingest.rtmp.handshake import HandshakePacket
from ingest.rtmp.session import ServerSession

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
    return seeds


def write_corpus() -> None:
    CORPUS.mkdir(parents=True, exist_ok=True)
    for name, data in seed_streams().items():
        (CORPUS / name).write_bytes(data)


def load_corpus() -> tuple[list[bytes], list[bytes]]:
    chunk = [p.read_bytes() for p in sorted(CORPUS.glob("chunk-*.bin"))]
    amf = [p.read_bytes() for p in sorted(CORPUS.glob("amf0-*.bin"))]
    if not chunk or not amf:
        seeds = seed_streams()
        chunk = [v for k, v in seeds.items() if k.startswith("chunk")]
        amf = [v for k, v in seeds.items() if k.startswith("amf0")]
    return chunk, amf


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


def run_session(data: bytes, rng: random.Random) -> None:
    session = ServerSession(max_message_size=MAX_MESSAGE, handshake_random=bytes(1528))
    session.receive_data(HANDSHAKE)
    for event in session.receive_data(data):
        if type(event).__name__ == "ConnectRequested":
            session.accept_connect()
    session.receive_data(b"")


def fuzz(
    *, count: int | None = None, seconds: float | None = None, seed: int = 0
) -> dict[str, int]:
    """Run mutated inputs; return how many each target saw. Raises on a real bug."""
    rng = random.Random(seed)
    chunk_seeds, amf_seeds = load_corpus()
    pool = chunk_seeds + amf_seeds
    targets: list[tuple[str, Callable[[bytes, random.Random], None], list[bytes]]] = [
        ("chunk", run_chunk, chunk_seeds),
        ("amf0", run_amf0, amf_seeds + chunk_seeds),
        ("session", run_session, chunk_seeds),
    ]
    counts = {name: 0 for name, _, _ in targets}
    deadline = time.perf_counter() + seconds if seconds is not None else None
    done = 0
    while (count is None or done < count) and (
        deadline is None or done % 256 or time.perf_counter() < deadline
    ):
        # The session is slower; weight it down so the parsers get most inputs.
        name, target, seeds = targets[0 if done % 8 < 5 else 1 if done % 8 < 7 else 2]
        data = mutate(rng, rng.choice(seeds), pool)
        try:
            target(data, rng)
        except RtmpProtocolError:
            pass
        except Exception:
            path = pathlib.Path(f"crash-{done}.bin")
            path.write_bytes(data)
            print(f"{name}: crash on input saved to {path}", file=sys.stderr)
            raise
        counts[name] += 1
        done += 1
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=int(time.time()))
    parser.add_argument("--write-corpus", action="store_true")
    args = parser.parse_args()
    if args.write_corpus:
        write_corpus()
        return
    counts = fuzz(seconds=args.seconds, seed=args.seed)
    print(f"seed {args.seed}: {sum(counts.values())} inputs, {counts}, no crashes")


if __name__ == "__main__":
    main()
