"""Server side of the RTMP handshake (Adobe RTMP specification 1.0, §5.2).

Only the "simple" handshake is implemented: S1 carries a zero version field and S2
echoes C1. FFmpeg and OBS (librtmp) publishers accept it. FFmpeg's client sends a
Flash-style digest C1 but only validates the server digest when it *plays* and S1
announces a server version (rtmpproto.c, rtmp_handshake: ``is_input &&
serverdata[5] >= 3``); a zero version field makes digest clients fall back, and
in practice Flash-era digest clients accept the simple echo too. C2 is accepted
without validation for the same reason.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

from .exceptions import RtmpProtocolError

RTMP_VERSION = 3
HANDSHAKE_SIZE = 1536
_RANDOM_SIZE = HANDSHAKE_SIZE - 8
_TIMES = struct.Struct(">II")


@dataclass(frozen=True, slots=True)
class HandshakePacket:
    """C1/S1/C2/S2 (§5.2.3, §5.2.4): time, a second time (zero in C1/S1), random echo."""

    time: int
    time2: int
    random: bytes

    @classmethod
    def parse(cls, data: bytes) -> HandshakePacket:
        if len(data) != HANDSHAKE_SIZE:
            raise RtmpProtocolError(
                f"RTMP handshake packet is {len(data)} bytes, needs {HANDSHAKE_SIZE}"
            )
        time, time2 = _TIMES.unpack_from(data)
        return cls(time, time2, bytes(data[8:]))

    def __bytes__(self) -> bytes:
        if len(self.random) != _RANDOM_SIZE:
            raise ValueError(f"handshake random is {len(self.random)} bytes, needs {_RANDOM_SIZE}")
        return _TIMES.pack(self.time, self.time2) + self.random


class ServerHandshake:
    """Consume C0+C1 and C2; produce S0+S1+S2.

    ``random`` fills S1 (1528 bytes); it defaults to ``os.urandom`` and is
    injectable so tests are deterministic. The S1 time field is 0: the spec lets
    it be any epoch, and the core reads no clock.
    """

    def __init__(self, *, random: bytes | None = None) -> None:
        self._random = random if random is not None else os.urandom(_RANDOM_SIZE)
        if len(self._random) != _RANDOM_SIZE:
            raise ValueError(f"handshake random is {len(self._random)} bytes, needs {_RANDOM_SIZE}")
        self._buf = bytearray()
        self._sent = False
        self.done = False

    def feed(self, data: bytes) -> tuple[bytes, bytes | None]:
        """Consume bytes; return (bytes to send, bytes past C2 or None until done)."""
        if self.done:
            return b"", bytes(data)
        self._buf += data
        out = b""
        if not self._sent:
            if not self._buf:
                return b"", None
            # §5.2.2: C0 is the version byte. 6 is RTMPE (encrypted), never plain RTMP.
            version = self._buf[0]
            if version != RTMP_VERSION:
                raise RtmpProtocolError(f"unsupported RTMP version {version}")
            if len(self._buf) < 1 + HANDSHAKE_SIZE:
                return b"", None
            c1 = bytes(self._buf[1 : 1 + HANDSHAKE_SIZE])
            del self._buf[: 1 + HANDSHAKE_SIZE]
            s1 = HandshakePacket(0, 0, self._random)
            out = bytes([RTMP_VERSION]) + bytes(s1) + c1
            self._sent = True
        if len(self._buf) < HANDSHAKE_SIZE:
            return out, None
        rest = bytes(self._buf[HANDSHAKE_SIZE:])
        self._buf = bytearray()
        self.done = True
        return out, rest
