"""RTMP chunk stream layer (Adobe RTMP specification 1.0, §5.3).

:class:`ChunkReader` turns an arbitrarily split byte stream into complete messages;
:class:`ChunkWriter` splits messages into chunks. Both are pure state machines.

Memory and work are bounded: an audio, video or aggregate message may not exceed
``max_message_size``, any other message (commands, data, control) not
``max_command_size``; at most ``max_chunk_streams`` chunk streams are tracked; the
bytes held for incomplete messages plus the unparsed tail never exceed
``max_buffered_bytes``; and a peer may not shrink chunks below ``MIN_CHUNK_SIZE``,
where parsing would cost more per byte than the media is worth.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .exceptions import RtmpProtocolError

# Message type ids (§5.4 protocol control, §7.1 RTMP messages).
SET_CHUNK_SIZE = 1
ABORT = 2
ACKNOWLEDGEMENT = 3
USER_CONTROL = 4
WINDOW_ACK_SIZE = 5
SET_PEER_BANDWIDTH = 6
AUDIO = 8
VIDEO = 9
DATA_AMF3 = 15
SHARED_OBJECT_AMF3 = 16
COMMAND_AMF3 = 17
DATA_AMF0 = 18
SHARED_OBJECT_AMF0 = 19
COMMAND_AMF0 = 20
AGGREGATE = 22

#: Chunk size both ends assume until Set Chunk Size arrives (§5.4.1).
DEFAULT_CHUNK_SIZE = 128
#: §5.4.1: the chunk size field is 31 bits; bit 31 must be zero.
MAX_CHUNK_SIZE = 0x7FFFFFFF
#: Smallest chunk size a peer may set. The specification allows 1, but no encoder
#: sends less than the default, and 1-byte chunks cost a header parse per byte.
#: SRS refuses sizes below 128 too (SRS_CONSTS_RTMP_MIN_CHUNK_SIZE).
MIN_CHUNK_SIZE = DEFAULT_CHUNK_SIZE
#: Largest command, data or control message: AMF is decoded on the event loop, and
#: every real command fits in a few hundred bytes.
DEFAULT_MAX_COMMAND_SIZE = 64 * 1024
#: Message types that carry media, limited by ``max_message_size`` instead.
MEDIA_TYPES = frozenset((AUDIO, VIDEO, AGGREGATE))
#: §5.3.1.1: the 3-byte basic header addresses chunk stream ids up to 65599.
MAX_CSID = 65599
#: §5.3.1.3: a timestamp field of 0xFFFFFF means a 32-bit extended timestamp follows.
EXTENDED = 0xFFFFFF

_HEADER_SIZE = (11, 7, 3, 0)
_U32 = struct.Struct(">I")


@dataclass(slots=True)
class Message:
    """One reassembled RTMP message.

    ``timestamp`` is absolute and unwrapped: RTMP's 32-bit millisecond clock wraps
    after ~49.7 days, and the reader extends it to an unbounded integer timeline.
    """

    csid: int
    timestamp: int
    type_id: int
    stream_id: int
    payload: bytes


class _InStream:
    """Receive state of one chunk stream: the header fields later chunks inherit."""

    __slots__ = ("ts_field", "raw", "ext", "length", "type_id", "stream_id", "partial")

    def __init__(self) -> None:
        self.ts_field = 0
        self.raw = 0
        self.ext: int | None = None
        self.length = 0
        self.type_id = 0
        self.stream_id = 0
        self.partial: bytearray | None = None


def _signed32(value: int) -> int:
    value &= 0xFFFFFFFF
    return value - 0x100000000 if value >= 0x80000000 else value


def parse_set_chunk_size(payload: bytes) -> int:
    """Validate a Set Chunk Size body (§5.4.1) and return the new size."""
    if len(payload) < 4:
        raise RtmpProtocolError(f"Set Chunk Size message is {len(payload)} bytes, needs 4")
    size = int.from_bytes(payload[:4], "big")
    if size < MIN_CHUNK_SIZE or size > MAX_CHUNK_SIZE:
        raise RtmpProtocolError(
            f"Set Chunk Size of {size} is outside {MIN_CHUNK_SIZE}..{MAX_CHUNK_SIZE}"
        )
    return size


class ChunkReader:
    """Reassemble RTMP messages from chunks (§5.3.1, §5.3.2).

    Set Chunk Size and Abort messages are applied *inside* :meth:`feed`, at the
    exact point in the byte stream where they complete, because the very next
    chunk may already use the new size. They are still returned to the caller.
    """

    def __init__(
        self,
        *,
        max_message_size: int = 16 * 1024 * 1024,
        max_command_size: int = DEFAULT_MAX_COMMAND_SIZE,
        max_chunk_streams: int = 64,
        max_buffered_bytes: int | None = None,
    ) -> None:
        self.chunk_size = DEFAULT_CHUNK_SIZE
        #: Largest media message; the owner may raise it once a publish is accepted.
        self.max_message_size = max_message_size
        self._max_command_size = max_command_size
        self._max_chunk_streams = max_chunk_streams
        self._fixed_buffered = max_buffered_bytes
        self._buf = bytearray()
        self._streams: dict[int, _InStream] = {}
        self._partial_bytes = 0
        self._last_raw = 0
        self._last_ext: int | None = None

    @property
    def _max_buffered(self) -> int:
        # One media message in flight, interleaved with a few small ones (audio,
        # commands): a peer never needs two large messages half sent at once.
        if self._fixed_buffered is not None:
            return self._fixed_buffered
        return self.max_message_size + 2 * self._max_command_size + 64

    @property
    def buffered_bytes(self) -> int:
        """Bytes held for incomplete chunks and messages."""
        return len(self._buf) + self._partial_bytes

    def abort(self, csid: int) -> None:
        """Drop the partial message on ``csid`` (Abort Message, §5.4.2)."""
        stream = self._streams.get(csid)
        if stream is not None and stream.partial is not None:
            self._partial_bytes -= len(stream.partial)
            stream.partial = None

    def _unwrap(self, stream: _InStream, raw: int) -> int:
        # A stream's first message is placed relative to the latest message on any
        # chunk stream, so audio and video stay on one timeline across a wrap.
        if stream.ext is not None:
            ext = stream.ext + _signed32(raw - stream.raw)
        elif self._last_ext is not None:
            ext = self._last_ext + _signed32(raw - self._last_raw)
        else:
            ext = raw
        stream.raw = raw
        stream.ext = ext
        self._last_raw = raw
        self._last_ext = ext
        return ext

    def feed(self, data: bytes) -> list[Message]:
        """Consume bytes; return the messages they complete, in stream order."""
        buf = self._buf
        buf += data
        messages: list[Message] = []
        pos = 0
        try:
            pos = self._parse(buf, messages)
        finally:
            del buf[:pos]
        if self.buffered_bytes > self._max_buffered:
            raise RtmpProtocolError(
                f"RTMP peer has {self.buffered_bytes} bytes of incomplete chunks buffered, "
                f"over the limit of {self._max_buffered}"
            )
        return messages

    def _parse(self, buf: bytearray, messages: list[Message]) -> int:
        end = len(buf)
        pos = 0
        streams = self._streams
        while pos < end:
            start = pos
            b0 = buf[pos]
            fmt = b0 >> 6
            csid = b0 & 0x3F
            pos += 1
            # §5.3.1.1: csid 0 and 1 select the 2- and 3-byte basic header forms.
            if csid == 0:
                if pos >= end:
                    return start
                csid = 64 + buf[pos]
                pos += 1
            elif csid == 1:
                if pos + 2 > end:
                    return start
                csid = 64 + buf[pos] + (buf[pos + 1] << 8)
                pos += 2
            hsize = _HEADER_SIZE[fmt]
            if pos + hsize > end:
                return start
            stream = streams.get(csid)
            if stream is None and fmt != 0:
                raise RtmpProtocolError(
                    f"chunk stream {csid} starts with a type-{fmt} header; "
                    "its first chunk must be type 0 (§5.3.1.2)"
                )
            if fmt == 0:
                ts_field = (buf[pos] << 16) | (buf[pos + 1] << 8) | buf[pos + 2]
                length = (buf[pos + 3] << 16) | (buf[pos + 4] << 8) | buf[pos + 5]
                type_id = buf[pos + 6]
                stream_id = int.from_bytes(buf[pos + 7 : pos + 11], "little")
            else:
                assert stream is not None
                stream_id = stream.stream_id
                if fmt == 3:
                    ts_field = stream.ts_field
                    length = stream.length
                    type_id = stream.type_id
                else:
                    ts_field = (buf[pos] << 16) | (buf[pos + 1] << 8) | buf[pos + 2]
                    if fmt == 1:
                        length = (buf[pos + 3] << 16) | (buf[pos + 4] << 8) | buf[pos + 5]
                        type_id = buf[pos + 6]
                    else:
                        length = stream.length
                        type_id = stream.type_id
            pos += hsize
            # §5.3.1.3. For type 3 the field is inherited, so a chunk following a
            # header with an extended timestamp repeats the 4 extended bytes; this is
            # what FFmpeg (rtmppkt.c, ff_rtmp_packet_read_internal/write) and librtmp
            # read and write, continuation chunks included.
            extended = -1
            if ts_field == EXTENDED:
                if pos + 4 > end:
                    return start
                extended = _U32.unpack_from(buf, pos)[0]
                pos += 4
            partial = stream.partial if stream is not None else None
            if partial is not None:
                if fmt != 3:
                    raise RtmpProtocolError(
                        f"chunk stream {csid} got a type-{fmt} header while a "
                        f"{stream.length if stream else 0}-byte message was incomplete"
                    )
                assert stream is not None
                remaining = stream.length - len(partial)
            else:
                limit = self.max_message_size if type_id in MEDIA_TYPES else self._max_command_size
                if length > limit:
                    raise RtmpProtocolError(
                        f"chunk stream {csid} announces a {length}-byte message of type "
                        f"{type_id}, over the limit of {limit}"
                    )
                remaining = length
            size = remaining if remaining < self.chunk_size else self.chunk_size
            if pos + size > end:
                return start
            payload = buf[pos : pos + size]
            pos += size

            # The whole chunk is here: commit the header state.
            if partial is not None:
                assert stream is not None
                partial += payload
                self._partial_bytes += size
                if len(partial) < stream.length:
                    continue
                self._partial_bytes -= len(partial)
                stream.partial = None
                body = bytes(partial)
                timestamp = stream.ext if stream.ext is not None else 0
            else:
                if stream is None:
                    if len(streams) >= self._max_chunk_streams:
                        raise RtmpProtocolError(
                            f"chunk stream {csid} would exceed the limit of "
                            f"{self._max_chunk_streams} chunk streams per connection"
                        )
                    stream = streams[csid] = _InStream()
                value = extended if extended >= 0 else ts_field
                # Type 0 carries an absolute timestamp, types 1-3 a delta (§5.3.1.2).
                # A type-3 chunk that starts a message reuses the previous *field*,
                # which after a type-0 header is that header's absolute value: FFmpeg
                # reads and writes it that way, so we must too.
                raw = value if fmt == 0 else (stream.raw + value) & 0xFFFFFFFF
                stream.ts_field = ts_field
                stream.length = length
                stream.type_id = type_id
                stream.stream_id = stream_id
                timestamp = self._unwrap(stream, raw)
                if size < length:
                    stream.partial = bytearray(payload)
                    self._partial_bytes += size
                    continue
                body = bytes(payload)
            message = Message(csid, timestamp, stream.type_id, stream.stream_id, body)
            messages.append(message)
            if message.type_id == SET_CHUNK_SIZE:
                self.chunk_size = parse_set_chunk_size(body)
            elif message.type_id == ABORT:
                if len(body) < 4:
                    raise RtmpProtocolError(f"Abort message is {len(body)} bytes, needs 4")
                self.abort(_U32.unpack_from(body)[0])
        return pos


class _OutStream:
    __slots__ = ("timestamp", "ts_field", "length", "type_id", "stream_id")

    def __init__(self, timestamp: int, ts_field: int, length: int, type_id: int, sid: int) -> None:
        self.timestamp = timestamp
        self.ts_field = ts_field
        self.length = length
        self.type_id = type_id
        self.stream_id = sid


def basic_header(fmt: int, csid: int) -> bytes:
    """Encode a chunk basic header in its shortest form (§5.3.1.1)."""
    if csid < 2 or csid > MAX_CSID:
        raise ValueError(f"chunk stream id {csid} is outside 2..{MAX_CSID}")
    if csid < 64:
        return bytes([(fmt << 6) | csid])
    if csid < 320:
        return bytes([fmt << 6, csid - 64])
    rest = csid - 64
    return bytes([(fmt << 6) | 1, rest & 0xFF, rest >> 8])


class ChunkWriter:
    """Split messages into chunks of ``chunk_size`` bytes.

    With ``compress=False`` every message starts with a type-0 header and continues
    with type-3 chunks. With ``compress=True`` headers are chosen as FFmpeg's
    ``ff_rtmp_packet_write`` chooses them (types 1, 2 and 3 for repeated fields),
    which the tests use to emulate FFmpeg publishers byte for byte.
    """

    def __init__(self, chunk_size: int = DEFAULT_CHUNK_SIZE, *, compress: bool = False) -> None:
        self.chunk_size = chunk_size
        self._compress = compress
        self._streams: dict[int, _OutStream] = {}

    @property
    def chunk_size(self) -> int:
        return self._chunk_size

    @chunk_size.setter
    def chunk_size(self, size: int) -> None:
        if not 1 <= size <= MAX_CHUNK_SIZE:
            raise ValueError(f"chunk size {size} is outside 1..{MAX_CHUNK_SIZE}")
        self._chunk_size = size

    def write(self, message: Message) -> bytes:
        length = len(message.payload)
        if length > 0xFFFFFF:
            raise ValueError(f"RTMP message of {length} bytes exceeds the 24-bit length field")
        prev = self._streams.get(message.csid)
        use_delta = (
            self._compress
            and prev is not None
            and prev.stream_id == message.stream_id
            and 0 <= message.timestamp - prev.timestamp <= 0xFFFFFFFF
        )
        fmt = 0
        if use_delta:
            assert prev is not None
            value = message.timestamp - prev.timestamp
            ts_field = EXTENDED if value >= EXTENDED else value
            if prev.type_id == message.type_id and prev.length == length:
                fmt = 3 if ts_field == prev.ts_field else 2
            else:
                fmt = 1
        else:
            value = message.timestamp & 0xFFFFFFFF
            ts_field = EXTENDED if value >= EXTENDED else value
        self._streams[message.csid] = _OutStream(
            message.timestamp, ts_field, length, message.type_id, message.stream_id
        )
        out = bytearray(basic_header(fmt, message.csid))
        if fmt <= 2:
            out += ts_field.to_bytes(3, "big")
        if fmt <= 1:
            out += length.to_bytes(3, "big")
            out.append(message.type_id)
        if fmt == 0:
            out += message.stream_id.to_bytes(4, "little")
        ext = _U32.pack(value) if ts_field == EXTENDED else b""
        out += ext
        payload = message.payload
        size = self._chunk_size
        out += payload[:size]
        continuation = basic_header(3, message.csid) + ext
        for offset in range(size, length, size):
            out += continuation
            out += payload[offset : offset + size]
        return bytes(out)
