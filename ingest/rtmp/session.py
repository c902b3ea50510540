"""Server-side RTMP session state machine for publishers (sans-I/O).

Feed received bytes to :meth:`ServerSession.receive_data`, act on the returned
events (``accept_connect``, ``accept_publish``...), and write
:meth:`ServerSession.data_to_send` to the peer. No sockets, no clock, no asyncio.

The command flow follows what publishers send (Adobe RTMP specification 1.0, §7.2):
FFmpeg's rtmpproto.c sends connect (transaction 1) and, on its ``_result``,
releaseStream, FCPublish and createStream; on the createStream ``_result`` it sends
publish and then waits for ``onStatus NetStream.Publish.Start``. OBS (librtmp) sends
the same sequence. Replies to releaseStream and FCPublish mirror nginx-rtmp.
"""

from __future__ import annotations

import enum
import logging
import struct
from collections import deque
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from media.model import MediaPacket

from . import amf0, flv
from .chunk import (
    ABORT,
    ACKNOWLEDGEMENT,
    AGGREGATE,
    AUDIO,
    COMMAND_AMF0,
    COMMAND_AMF3,
    DATA_AMF0,
    DATA_AMF3,
    DEFAULT_MAX_COMMAND_SIZE,
    SET_CHUNK_SIZE,
    SET_PEER_BANDWIDTH,
    USER_CONTROL,
    VIDEO,
    WINDOW_ACK_SIZE,
    ChunkReader,
    ChunkWriter,
    Message,
)
from .exceptions import RtmpProtocolError
from .handshake import ServerHandshake

log = logging.getLogger(__name__)

# Chunk stream ids for what we send; 2 is reserved for protocol control (§5.4),
# 3 is what FMS, nginx-rtmp and FFmpeg use for command messages.
CSID_CONTROL = 2
CSID_COMMAND = 3
CSID_STATUS = 5

# User Control event types (§7.1.7).
STREAM_BEGIN = 0
STREAM_EOF = 1
SET_BUFFER_LENGTH = 3
PING_REQUEST = 6
PING_RESPONSE = 7

# Set Peer Bandwidth limit type (§5.4.5): 2 = dynamic.
LIMIT_DYNAMIC = 2

# Values FFmpeg's and librtmp's clients are used to from FMS and nginx-rtmp.
FMS_VERSION = "FMS/3,0,1,123"
FMS_CAPABILITIES = 31

_U32 = struct.Struct(">I")
_USER_CONTROL = struct.Struct(">HI")


class State(enum.Enum):
    HANDSHAKE = "handshake"
    AWAIT_CONNECT = "await_connect"
    CONNECT_PENDING = "connect_pending"
    CONNECTED = "connected"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class HandshakeCompleted:
    pass


@dataclass(frozen=True, slots=True)
class ConnectRequested:
    """``app`` is the application name with any ``?query`` removed; ``params`` are the
    query fields (from the app, else from tcUrl), ``query`` the raw query string and
    ``command_object`` the whole connect command object (flashVer, fourCcList...)."""

    app: str
    tc_url: str
    params: dict[str, str]
    query: str = ""
    command_object: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PublishRequested:
    stream_id: int
    name: str
    query: str
    publish_type: str


@dataclass(frozen=True, slots=True)
class MetadataReceived:
    stream_id: int
    metadata: dict[str, Any]


@dataclass(frozen=True, slots=True)
class MediaReceived:
    stream_id: int
    packet: MediaPacket


@dataclass(frozen=True, slots=True)
class PublishStopped:
    stream_id: int


@dataclass(frozen=True, slots=True)
class PlayRequested:
    stream_id: int
    name: str


@dataclass(frozen=True, slots=True)
class PongReceived:
    timestamp: int


@dataclass(frozen=True, slots=True)
class BytesAcknowledged:
    sequence: int


Event = (
    HandshakeCompleted
    | ConnectRequested
    | PublishRequested
    | MetadataReceived
    | MediaReceived
    | PublishStopped
    | PlayRequested
    | PongReceived
    | BytesAcknowledged
)


#: Longest peer-supplied string echoed back in a reply (FCPublish's stream name, an
#: unknown method's name): a reply never costs more than a few hundred bytes.
MAX_ECHO = 128


def _echo(value: str) -> str:
    return value if len(value) <= MAX_ECHO else value[:MAX_ECHO] + "..."


def _split_query(value: str) -> tuple[str, str]:
    name, _, query = value.partition("?")
    return name, query


def _status(level: str, code: str, description: str, **extra: Any) -> dict[str, Any]:
    return {"level": level, "code": code, "description": description, **extra}


class ServerSession:
    """One RTMP connection from a publisher, seen from the server."""

    def __init__(
        self,
        *,
        chunk_size: int = 4096,
        window_ack_size: int = 2_500_000,
        max_message_size: int = 16 * 1024 * 1024,
        max_command_size: int = DEFAULT_MAX_COMMAND_SIZE,
        handshake_random: bytes | None = None,
    ) -> None:
        self._chunk_size = chunk_size
        self._window_ack_size = window_ack_size
        self._handshake = ServerHandshake(random=handshake_random)
        # Until a publish is accepted, no message may be larger than a command: an
        # unauthenticated peer gets no 16 MiB buffers (see accept_publish).
        self._max_media = max_message_size
        self._reader = ChunkReader(
            max_message_size=min(max_command_size, max_message_size),
            max_command_size=max_command_size,
        )
        self._writer = ChunkWriter()
        self._out = bytearray()
        self._state = State.HANDSHAKE
        self._connect_txn = 0.0
        self._app = ""
        # §5.4.4: the peer's Window Acknowledgement Size says how often it wants
        # acknowledgements. Publishers normally never send one; we then ack at the
        # window we announce, as nginx-rtmp does. Clients ignore surplus acks.
        self._ack_window = window_ack_size
        self._received = 0
        self._last_ack = 0
        self._next_stream_id = 1
        self._streams: set[int] = set()
        self._pending: dict[int, str] = {}
        self._publishing: dict[int, str] = {}
        self._prefix = "[rtmp]"
        # Messages parsed while connect or publish awaits the application's
        # decision; they are processed once it decides (see receive_data).
        self._backlog: deque[Message] = deque()
        self._backlog_bytes = 0
        self._max_backlog = max_message_size
        self._max_backlog_pending = max_command_size

    # -- state ---------------------------------------------------------------

    @property
    def state(self) -> State:
        return self._state

    @property
    def closed(self) -> bool:
        return self._state is State.CLOSED

    @property
    def app(self) -> str:
        return self._app

    @property
    def publishing(self) -> dict[int, str]:
        """Stream ids whose publish was accepted, with their stream names."""
        return dict(self._publishing)

    def _set_state(self, state: State) -> None:
        if state is self._state:
            return
        log.debug("%s %s -> %s", self._prefix, self._state.value, state.value)
        self._state = state

    # -- output --------------------------------------------------------------

    def data_to_send(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out

    def _send(self, csid: int, type_id: int, payload: bytes, stream_id: int = 0) -> None:
        self._out += self._writer.write(Message(csid, 0, type_id, stream_id, payload))

    def _send_command(self, stream_id: int, *values: Any) -> None:
        csid = CSID_COMMAND if stream_id == 0 else CSID_STATUS
        self._send(csid, COMMAND_AMF0, amf0.encode(*values), stream_id)

    def _user_control(self, event: int, value: int) -> None:
        self._send(CSID_CONTROL, USER_CONTROL, _USER_CONTROL.pack(event, value & 0xFFFFFFFF))

    def accept_connect(self) -> None:
        if self._state is not State.CONNECT_PENDING:
            raise RuntimeError(f"accept_connect() in state {self._state.value}")
        self._send(CSID_CONTROL, WINDOW_ACK_SIZE, _U32.pack(self._window_ack_size))
        self._send(
            CSID_CONTROL,
            SET_PEER_BANDWIDTH,
            _U32.pack(self._window_ack_size) + bytes([LIMIT_DYNAMIC]),
        )
        self._send(CSID_CONTROL, SET_CHUNK_SIZE, _U32.pack(self._chunk_size))
        # §5.4.1: the new size applies to every chunk after this message.
        self._writer.chunk_size = self._chunk_size
        self._send_command(
            0,
            "_result",
            self._connect_txn,
            {"fmsVer": FMS_VERSION, "capabilities": FMS_CAPABILITIES},
            _status(
                "status",
                "NetConnection.Connect.Success",
                "Connection succeeded.",
                objectEncoding=0,
            ),
        )
        self._set_state(State.CONNECTED)

    def reject_connect(self, description: str) -> None:
        if self._state is not State.CONNECT_PENDING:
            raise RuntimeError(f"reject_connect() in state {self._state.value}")
        self._send_command(
            0,
            "_error",
            self._connect_txn,
            None,
            _status("error", "NetConnection.Connect.Rejected", description),
        )
        self._set_state(State.CLOSED)

    def accept_publish(self, stream_id: int) -> None:
        name = self._pending.pop(stream_id, None)
        if name is None:
            raise RuntimeError(f"accept_publish({stream_id}) without a pending publish")
        self._publishing[stream_id] = name
        self._reader.max_message_size = self._max_media
        self._prefix = f"[rtmp {self._app}/{name}]"
        self._user_control(STREAM_BEGIN, stream_id)
        self._send_command(
            stream_id,
            "onStatus",
            0,
            None,
            _status("status", "NetStream.Publish.Start", f"{name} is now published.", details=name),
        )
        log.info("%s publish accepted on stream %d", self._prefix, stream_id)

    def reject_publish(self, stream_id: int, code: str, description: str) -> None:
        if self._pending.pop(stream_id, None) is None:
            raise RuntimeError(f"reject_publish({stream_id}) without a pending publish")
        self._send_command(stream_id, "onStatus", 0, None, _status("error", code, description))

    def fail_publish(self, stream_id: int, code: str, description: str) -> None:
        """End an accepted publish with an error status (a limit the media broke); its
        later media is dropped. The adapter then closes the connection."""
        if self._publishing.pop(stream_id, None) is None:
            raise RuntimeError(f"fail_publish({stream_id}) on a stream that is not publishing")
        self._send_command(stream_id, "onStatus", 0, None, _status("error", code, description))
        log.info("%s publish failed on stream %d: %s", self._prefix, stream_id, description)

    def ping(self, timestamp: int) -> None:
        self._user_control(PING_REQUEST, timestamp)

    # -- input ---------------------------------------------------------------

    def receive_data(self, data: bytes) -> list[Event]:
        """Consume bytes from the peer; return the events they complete.

        While a connect or publish awaits ``accept_*``/``reject_*``, later messages
        are held back (up to ``max_message_size`` bytes), so a client that pipelines
        commands or starts media early loses nothing. After deciding, call
        ``receive_data(b"")`` to process what was held back if the peer is waiting.
        """
        if self._state is State.CLOSED:
            return []
        try:
            return self._receive(data)
        except RtmpProtocolError:
            self._set_state(State.CLOSED)
            raise

    def _receive(self, data: bytes) -> list[Event]:
        events: list[Event] = []
        self._received += len(data)
        if self._state is State.HANDSHAKE:
            out, rest = self._handshake.feed(data)
            self._out += out
            if rest is None:
                return events
            self._set_state(State.AWAIT_CONNECT)
            events.append(HandshakeCompleted())
            data = rest
        for message in self._reader.feed(data):
            self._backlog.append(message)
            self._backlog_bytes += len(message.payload)
        while self._backlog and not self._paused():
            message = self._backlog.popleft()
            self._backlog_bytes -= len(message.payload)
            self._on_message(message, events)
            if self._state is State.CLOSED:
                self._backlog.clear()
                break
        limit = self._max_backlog if self._publishing else self._max_backlog_pending
        if self._backlog_bytes > limit:
            raise RtmpProtocolError(
                f"peer sent {self._backlog_bytes} bytes while its connect or publish "
                f"was pending, over the limit of {limit}"
            )
        # §5.4.3: acknowledge once the bytes received since the last ack reach the
        # window; the sequence number is the total received so far, mod 2**32.
        if self._received - self._last_ack >= self._ack_window:
            self._last_ack = self._received
            self._send(CSID_CONTROL, ACKNOWLEDGEMENT, _U32.pack(self._received & 0xFFFFFFFF))
        return events

    def _paused(self) -> bool:
        return self._state is State.CONNECT_PENDING or bool(self._pending)

    def _on_message(self, message: Message, events: list[Event]) -> None:
        type_id = message.type_id
        payload = message.payload
        if type_id == VIDEO or type_id == AUDIO:
            self._on_media(message.stream_id, type_id, message.timestamp, payload, events)
        elif type_id == COMMAND_AMF0 or type_id == COMMAND_AMF3:
            if type_id == COMMAND_AMF3:
                # §7.1.1: AMF3 commands start with a format byte, then AMF0 values
                # when the client negotiated objectEncoding 0.
                payload = payload[1:]
            self._on_command(message.stream_id, amf0.decode(payload), events)
        elif type_id == DATA_AMF0 or type_id == DATA_AMF3:
            if type_id == DATA_AMF3:
                payload = payload[1:]
            self._on_data(message.stream_id, amf0.decode(payload), events)
        elif type_id == USER_CONTROL:
            self._on_user_control(payload, events)
        elif type_id == ACKNOWLEDGEMENT:
            events.append(BytesAcknowledged(self._u32(payload, "Acknowledgement")))
        elif type_id == WINDOW_ACK_SIZE:
            window = self._u32(payload, "Window Acknowledgement Size")
            if window == 0:
                raise RtmpProtocolError("Window Acknowledgement Size of 0")
            self._ack_window = window
        elif type_id == AGGREGATE:
            self._on_aggregate(message, events)
        # SET_CHUNK_SIZE and ABORT were applied by the ChunkReader; SET_PEER_BANDWIDTH
        # limits what we send, and we send almost nothing; shared objects are unused.
        elif type_id in (SET_CHUNK_SIZE, ABORT, SET_PEER_BANDWIDTH):
            pass

    @staticmethod
    def _u32(payload: bytes, what: str) -> int:
        if len(payload) < 4:
            raise RtmpProtocolError(f"{what} message is {len(payload)} bytes, needs 4")
        value: int = _U32.unpack_from(payload)[0]
        return value

    def _on_user_control(self, payload: bytes, events: list[Event]) -> None:
        if len(payload) < 2:
            raise RtmpProtocolError(f"User Control message is {len(payload)} bytes, needs 2")
        event = int.from_bytes(payload[:2], "big")
        if event == PING_REQUEST:
            self._user_control(PING_RESPONSE, self._u32(payload[2:], "PingRequest"))
        elif event == PING_RESPONSE:
            events.append(PongReceived(self._u32(payload[2:], "PingResponse")))
        # SetBufferLength and the stream events only matter to players.

    def _on_aggregate(self, message: Message, events: list[Event]) -> None:
        # §7.1.6: a sequence of FLV tags (11-byte header, body, 4-byte back pointer);
        # sub-tag times are re-based on the aggregate message's own timestamp.
        payload = message.payload
        offset = 0
        base: int | None = None
        while offset < len(payload):
            if offset + 11 > len(payload):
                raise RtmpProtocolError("aggregate message has a truncated FLV tag header")
            tag_type = payload[offset]
            size = int.from_bytes(payload[offset + 1 : offset + 4], "big")
            ts = int.from_bytes(payload[offset + 4 : offset + 7], "big") | (
                payload[offset + 7] << 24
            )
            body_end = offset + 11 + size
            if body_end + 4 > len(payload):
                raise RtmpProtocolError("aggregate message has a truncated FLV tag body")
            if base is None:
                base = ts
            timestamp = message.timestamp + ts - base
            body = payload[offset + 11 : body_end]
            if tag_type in (AUDIO, VIDEO):
                self._on_media(message.stream_id, tag_type, timestamp, body, events)
            elif tag_type == DATA_AMF0:
                self._on_data(message.stream_id, amf0.decode(body), events)
            offset = body_end + 4

    def _on_media(
        self, stream_id: int, type_id: int, timestamp: int, payload: bytes, events: list[Event]
    ) -> None:
        if stream_id not in self._publishing:
            # Media before Publish.Start (or after a refusal) is never let through.
            return
        if type_id == VIDEO:
            packet = flv.parse_video(timestamp, payload)
        else:
            packet = flv.parse_audio(timestamp, payload)
        if packet is not None:
            events.append(MediaReceived(stream_id, packet))

    def _on_data(self, stream_id: int, values: list[Any], events: list[Event]) -> None:
        # FFmpeg and OBS send ["@setDataFrame", "onMetaData", {...}]; the
        # @setDataFrame wrapper asks the server to store it for later players.
        if values and values[0] == "@setDataFrame":
            values = values[1:]
        if len(values) >= 2 and values[0] == "onMetaData" and isinstance(values[1], dict):
            if stream_id in self._publishing:
                events.append(MetadataReceived(stream_id, dict(values[1])))

    # -- commands (§7.2) ----------------------------------------------------------

    def _on_command(self, stream_id: int, values: list[Any], events: list[Event]) -> None:
        if not values or not isinstance(values[0], str):
            raise RtmpProtocolError("RTMP command message does not start with a command name")
        name = values[0]
        txn = values[1] if len(values) > 1 and isinstance(values[1], float) else 0.0
        args = values[3:]
        if name == "connect":
            if self._state is not State.AWAIT_CONNECT:
                raise RtmpProtocolError(f"connect command in state {self._state.value}")
            command = values[2] if len(values) > 2 and isinstance(values[2], dict) else {}
            events.append(self._on_connect(txn, command))
            return
        if self._state is not State.CONNECTED:
            raise RtmpProtocolError(f"command {name!r} before connect was accepted")
        if name == "createStream":
            if len(self._streams) >= 16:
                raise RtmpProtocolError("more than 16 createStream calls on one connection")
            new_id = self._next_stream_id
            self._next_stream_id += 1
            self._streams.add(new_id)
            self._send_command(0, "_result", txn, None, float(new_id))
        elif name in ("releaseStream", "FCPublish"):
            self._send_command(0, "_result", txn, None, None)
            if name == "FCPublish":
                # nginx-rtmp answers FCPublish with onFCPublish too; FMLE waits for it.
                stream = (
                    _echo(_split_query(args[0])[0]) if args and isinstance(args[0], str) else ""
                )
                self._send_command(
                    0,
                    "onFCPublish",
                    0,
                    None,
                    _status("status", "NetStream.Publish.Start", stream, details=stream),
                )
        elif name == "publish":
            self._on_publish(stream_id, txn, args, events)
        elif name == "play":
            stream = args[0] if args and isinstance(args[0], str) else ""
            events.append(PlayRequested(stream_id, stream))
            self._send_command(
                stream_id,
                "onStatus",
                0,
                None,
                _status(
                    "error",
                    "NetStream.Play.Failed",
                    "This server only accepts publishing; play over HLS.",
                ),
            )
        elif name == "FCUnpublish":
            stream = args[0] if args and isinstance(args[0], str) else ""
            for sid, published in list(self._publishing.items()):
                if published == _split_query(stream)[0]:
                    self._stop(sid, events)
            if txn:
                self._send_command(0, "_result", txn, None, None)
        elif name in ("deleteStream", "closeStream"):
            # deleteStream names the stream in its argument, closeStream in the header.
            sid = stream_id
            if name == "deleteStream" and args and isinstance(args[0], float):
                if not args[0].is_integer():  # NaN and infinities too
                    raise RtmpProtocolError(f"deleteStream of stream id {args[0]!r}")
                sid = int(args[0])
            self._stop(sid, events)
            self._pending.pop(sid, None)
            if name == "deleteStream":
                self._streams.discard(sid)
        elif name == "getStreamLength":
            self._send_command(0, "_result", txn, None, 0.0)
        elif name == "_checkbw":
            self._send_command(0, "_result", txn, None, None)
        elif name in ("_result", "_error", "onStatus", "onBWDone"):
            pass
        elif txn:
            self._send_command(
                0,
                "_error",
                txn,
                None,
                _status("error", "NetConnection.Call.Failed", f"Method not found ({_echo(name)})."),
            )

    def _on_connect(self, txn: float, command: dict[str, Any]) -> ConnectRequested:
        app_raw = command.get("app")
        tc_url = command.get("tcUrl")
        app_raw = app_raw if isinstance(app_raw, str) else ""
        tc_url = tc_url if isinstance(tc_url, str) else ""
        # OBS puts the query of "rtmp://host/live?token=x" into app; FFmpeg puts it
        # in the stream name. Take the app's, else the tcUrl's.
        app, query = _split_query(app_raw)
        if not query and tc_url:
            query = urlsplit(tc_url).query
        app = app.strip("/")
        self._app = app
        self._connect_txn = txn
        self._prefix = f"[rtmp {app}]"
        self._set_state(State.CONNECT_PENDING)
        params = dict(parse_qsl(query, keep_blank_values=True))
        return ConnectRequested(app, tc_url, params, query, dict(command))

    def _on_publish(self, stream_id: int, txn: float, args: list[Any], events: list[Event]) -> None:
        if not args or not isinstance(args[0], str):
            raise RtmpProtocolError("publish command has no stream name")
        if stream_id in self._publishing or stream_id in self._pending:
            raise RtmpProtocolError(f"publish on stream {stream_id}, which is already publishing")
        publish_type = args[1] if len(args) > 1 and isinstance(args[1], str) else "live"
        name, query = _split_query(args[0])
        self._pending[stream_id] = name
        events.append(PublishRequested(stream_id, name, query, publish_type))

    def _stop(self, stream_id: int, events: list[Event]) -> None:
        if self._publishing.pop(stream_id, None) is not None:
            log.info("%s publish stopped on stream %d", self._prefix, stream_id)
            events.append(PublishStopped(stream_id))
