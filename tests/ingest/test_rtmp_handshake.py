from __future__ import annotations

import pytest

from ingest.rtmp.exceptions import RtmpProtocolError
from ingest.rtmp.handshake import HANDSHAKE_SIZE, HandshakePacket, ServerHandshake

RANDOM = bytes(range(256)) * 5 + bytes(248)
C1 = bytes(HandshakePacket(1234, 0, bytes(reversed(RANDOM))))


def test_packet_round_trip() -> None:
    assert bytes(HandshakePacket.parse(C1)) == C1
    assert HandshakePacket.parse(C1).time == 1234


@pytest.mark.parametrize("split", [1, 7, 1537, 1538, 3073])
def test_simple_handshake(split: int) -> None:
    client = b"\x03" + C1 + C1 + b"after"
    hs = ServerHandshake(random=RANDOM)
    out1, rest1 = hs.feed(client[:split])
    out2, rest2 = hs.feed(client[split:])
    out = out1 + out2
    assert out == b"\x03" + bytes(HandshakePacket(0, 0, RANDOM)) + C1  # S2 echoes C1
    assert (rest1 or b"") + (rest2 or b"") == b"after" and hs.done
    assert len(out) == 1 + 2 * HANDSHAKE_SIZE


@pytest.mark.parametrize("version", [0, 6, 0x16, 0xFF])
def test_unsupported_version(version: int) -> None:
    with pytest.raises(RtmpProtocolError, match=f"unsupported RTMP version {version}"):
        ServerHandshake(random=RANDOM).feed(bytes([version]))


def test_bad_packet_size() -> None:
    with pytest.raises(RtmpProtocolError, match="1535 bytes"):
        HandshakePacket.parse(C1[:-1])
