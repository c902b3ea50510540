from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.rtmp.chunk import ChunkReader, ChunkWriter, Message, basic_header
from ingest.rtmp.exceptions import RtmpProtocolError


def h(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


@pytest.mark.parametrize(
    ("fmt", "csid", "data"),
    [
        (0, 2, h("02")),
        (3, 63, h("ff")),
        (0, 64, h("00 00")),
        (1, 319, h("40 ff")),
        (0, 320, h("01 00 01")),
        (2, 65599, h("81 ff ff")),
    ],
)
def test_basic_header_forms(fmt: int, csid: int, data: bytes) -> None:
    assert basic_header(fmt, csid) == data
    reader = ChunkReader()
    # fmt-0 chunk with an empty audio message parses back to the same csid.
    (msg,) = reader.feed(basic_header(0, csid) + h("000000 000000 08 01000000"))
    assert msg.csid == csid


# Exact byte streams for tricky header sequences: (stream, expected messages).
TABLE: list[tuple[str, bytes, list[Message]]] = [
    (
        "type 1/2/3 deltas, type-3 new message reuses the delta",
        h("04 000064 000001 08 01000000 aa")
        + h("44 00000a 000002 09 bbbb")
        + h("84 000005 cccc")
        + h("c4 dddd"),
        [
            Message(4, 100, 8, 1, b"\xaa"),
            Message(4, 110, 9, 1, b"\xbb\xbb"),
            Message(4, 115, 9, 1, b"\xcc\xcc"),
            Message(4, 120, 9, 1, b"\xdd\xdd"),
        ],
    ),
    (
        "type-3 after type 0 adds the type-0 field again (FFmpeg semantics)",
        h("04 000028 000001 08 01000000 aa") + h("c4 bb"),
        [Message(4, 40, 8, 1, b"\xaa"), Message(4, 80, 8, 1, b"\xbb")],
    ),
    (
        "extended timestamp repeated on type-3 continuation chunk",
        h("05 ffffff 000082 09 01000000 01000000") + b"\x11" * 128 + h("c5 01000000") + b"\x22" * 2,
        [Message(5, 0x1000000, 9, 1, b"\x11" * 128 + b"\x22" * 2)],
    ),
    (
        "extended delta on type 3 starting a new message",
        h("05 ffffff 000001 09 01000000 01000000 aa") + h("c5 00000010 bb"),
        [Message(5, 0x1000000, 9, 1, b"\xaa"), Message(5, 0x1000010, 9, 1, b"\xbb")],
    ),
    (
        "interleaved chunk streams",
        h("04 000000 000082 08 01000000")
        + b"\xa0" * 128
        + h("06 000000 000003 09 01000000 b0b1b2")
        + h("c4 a1a2"),
        [Message(6, 0, 9, 1, h("b0b1b2")), Message(4, 0, 8, 1, b"\xa0" * 128 + h("a1a2"))],
    ),
    (
        "set chunk size applies to the very next chunk",
        h("02 000000 000004 01 00000000 00000100")
        + h("04 000000 0000c8 08 01000000")
        + b"\x01" * 200,
        [Message(2, 0, 1, 0, h("00000100")), Message(4, 0, 8, 1, b"\x01" * 200)],
    ),
    (
        "abort drops the partial message",
        h("04 000000 000100 08 01000000")
        + b"\x01" * 128
        + h("02 000000 000004 02 00000000 00000004")
        + h("04 000000 000001 08 01000000 ff"),
        [Message(2, 0, 2, 0, h("00000004")), Message(4, 0, 8, 1, b"\xff")],
    ),
    (
        "32-bit wrap unwraps to a monotonic timeline",
        h("04 ffffff 000001 08 01000000 fffffff0 aa") + h("84 000020 bb"),
        [Message(4, 0xFFFFFFF0, 8, 1, b"\xaa"), Message(4, 0x100000010, 8, 1, b"\xbb")],
    ),
    (
        "csid 64..319 and 320+",
        h("00 00 000001 000001 08 01000000 aa") + h("01 00 01 000002 000001 09 01000000 bb"),
        [Message(64, 1, 8, 1, b"\xaa"), Message(320, 2, 9, 1, b"\xbb")],
    ),
]


@pytest.mark.parametrize(("stream", "expected"), [t[1:] for t in TABLE], ids=[t[0] for t in TABLE])
def test_reader_table(stream: bytes, expected: list[Message]) -> None:
    assert ChunkReader().feed(stream) == expected
    # Byte-at-a-time gives the same messages.
    reader = ChunkReader()
    got = [m for i in range(len(stream)) for m in reader.feed(stream[i : i + 1])]
    assert got == expected
    assert reader.buffered_bytes == 0


@pytest.mark.parametrize(
    ("stream", "message"),
    [
        (h("44 000000 000001 08 aa"), "starts with a type-1 header"),
        (
            h("04 000000 000100 08 01000000") + b"\x00" * 128 + h("04 000000 000001 08 01000000"),
            "while a 256-byte message",
        ),
        (h("04 000000 ffffff 08 01000000"), "announces a 16777215-byte message of type 8, over"),
        (h("02 000000 000004 01 00000000 0000007f"), "Set Chunk Size of 127 is outside 128"),
        (h("02 000000 000004 01 00000000 00000000"), "Set Chunk Size of 0"),
        (h("02 000000 000004 01 00000000 80000000"), "Set Chunk Size of 2147483648"),
        (h("02 000000 000002 01 00000000 0001"), "Set Chunk Size message is 2 bytes"),
        (h("02 000000 000000 02 00000000"), "Abort message is 0 bytes"),
    ],
)
def test_reader_errors(stream: bytes, message: str) -> None:
    with pytest.raises(RtmpProtocolError, match=message):
        ChunkReader(max_message_size=1 << 20).feed(stream)


def test_chunk_stream_limit() -> None:
    reader = ChunkReader(max_chunk_streams=3)
    reader.feed(b"".join(basic_header(0, c) + h("000000 000000 08 00000000") for c in (3, 4, 5)))
    with pytest.raises(RtmpProtocolError, match="limit of 3 chunk streams"):
        reader.feed(basic_header(0, 6) + h("000000 000000 08 00000000"))


def test_buffered_limit() -> None:
    reader = ChunkReader(max_message_size=1000, max_buffered_bytes=1500)
    with pytest.raises(RtmpProtocolError, match="incomplete chunks buffered"):
        for csid in range(3, 20):
            reader.feed(basic_header(0, csid) + h("000000 0003e8 08 00000000") + bytes(128))


@pytest.mark.parametrize(
    ("message", "chunk_size", "data"),
    [
        (Message(3, 0, 20, 0, b"ab"), 128, h("03 000000 000002 14 00000000 6162")),
        (
            Message(3, 0x1000000, 9, 1, b"xyz"),
            2,
            h("03 ffffff 000003 09 01000000 01000000 7879 c3 01000000 7a"),
        ),
        (Message(70, 5, 8, 1, b""), 128, h("00 06 000005 000000 08 01000000")),
    ],
)
def test_writer_exact_bytes(message: Message, chunk_size: int, data: bytes) -> None:
    assert ChunkWriter(chunk_size).write(message) == data
    reader = ChunkReader()
    reader.chunk_size = chunk_size
    assert reader.feed(data) == [message]


def _messages(seed: int, count: int) -> list[Message]:
    rng = random.Random(seed)
    clock = {4: 0, 6: 0, 3: 0, 400: 0}
    out = []
    for _ in range(count):
        csid = rng.choice(list(clock))
        clock[csid] += rng.choice([0, 23, 40, 0xFFFFFF, 1 << 24])
        size = rng.choice([0, 1, 127, 128, 129, 300])
        out.append(Message(csid, clock[csid], rng.choice([8, 9, 18]), 1, rng.randbytes(size)))
    return out


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("chunk_size", [1, 128, 4096])
def test_writer_reader_round_trip(compress: bool, chunk_size: int) -> None:
    messages = _messages(chunk_size, 200)
    writer = ChunkWriter(chunk_size, compress=compress)
    data = b"".join(writer.write(m) for m in messages)
    reader = ChunkReader()
    reader.chunk_size = chunk_size
    got = reader.feed(data)
    assert got == messages
    # Re-serialising what was parsed reproduces the bytes exactly.
    again = ChunkWriter(chunk_size, compress=compress)
    assert b"".join(again.write(m) for m in got) == data


def _valid_stream() -> bytes:
    writer = ChunkWriter(compress=True)
    return b"".join(writer.write(m) for m in _messages(7, 40))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=20000), max_size=12))
def test_property_split_points(cuts: list[int]) -> None:
    data = _valid_stream()
    whole = ChunkReader().feed(data)
    reader = ChunkReader()
    got: list[Message] = []
    prev = 0
    for cut in sorted(c % (len(data) + 1) for c in cuts) + [len(data)]:
        got += reader.feed(data[prev:cut])
        prev = cut
    assert got == whole


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400), st.booleans())
def test_property_garbage(data: bytes, prefixed: bool) -> None:
    reader = ChunkReader(max_message_size=4096)
    try:
        reader.feed((_valid_stream()[:300] if prefixed else b"") + data)
    except RtmpProtocolError:
        pass
