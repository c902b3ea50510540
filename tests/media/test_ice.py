"""The WebRTC network settings: the UDP port allocator, ICE server entries, their config keys."""

from __future__ import annotations

import socket

import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription, VideoStreamTrack
from prometheus_client import CollectorRegistry
from turnutil import free_udp_range

from media.ice import IceServer, PortsExhausted, UdpPortRange
from media.icegather import IceNetwork
from nearcast.config import load
from settings import ConfigError


def test_port_allocator_binds_inside_the_range_and_reuses_a_closed_port() -> None:
    low, high = free_udp_range(2, "127.0.0.1")
    ports = UdpPortRange(low, high)
    a, b = ports.bind("127.0.0.1"), ports.bind("127.0.0.1")
    try:
        assert {a.getsockname()[1], b.getsockname()[1]} == {low, high}
        with pytest.raises(PortsExhausted, match=rf"all 2 ports of .*\({low}-{high}\) are in use"):
            ports.bind("127.0.0.1")
        freed = a.getsockname()[1]
        a.close()
        c = ports.bind("127.0.0.1")
        assert c.getsockname()[1] == freed
        c.close()
    finally:
        a.close()
        b.close()


def test_port_allocator_skips_ports_other_programs_hold() -> None:
    low, high = free_udp_range(3, "127.0.0.1")
    squatter = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    squatter.bind(("0.0.0.0", low))  # not ours, on every address
    ports = UdpPortRange(low, high)
    try:
        got = [ports.bind("127.0.0.1") for _ in range(2)]
        assert sorted(s.getsockname()[1] for s in got) == [low + 1, high]
        for s in got:
            s.close()
    finally:
        squatter.close()


def test_port_allocator_zero_zero_takes_ephemeral_ports() -> None:
    s = UdpPortRange().bind("127.0.0.1")
    assert s.getsockname()[1] > 0 and not s.getblocking()
    s.close()
    with pytest.raises(ValueError, match="'udp_port_max' must be at least"):
        UdpPortRange(5000, 4000)


async def test_a_full_range_refuses_the_session_and_counts_it() -> None:
    """One port per local address: a second answering peer connection finds none."""
    low, high = free_udp_range(1)
    registry = CollectorRegistry()
    net = IceNetwork(UdpPortRange(low, high), registry=registry)

    async def answer() -> RTCPeerConnection:
        offerer = RTCPeerConnection()
        offerer.addTransceiver("video", direction="recvonly")
        await offerer.setLocalDescription(await offerer.createOffer())
        await offerer.close()
        pc = RTCPeerConnection(net.configuration())
        pc.addTransceiver(VideoStreamTrack(), direction="sendonly")
        await pc.setRemoteDescription(RTCSessionDescription(offerer.localDescription.sdp, "offer"))
        net.bind(pc)
        try:
            await pc.setLocalDescription(await pc.createAnswer())
        except BaseException:
            await pc.close()
            raise
        return pc

    first = await answer()
    ports = {
        int(line.split()[5])
        for line in first.localDescription.sdp.splitlines()
        if line.startswith("a=candidate:")
    }
    assert ports == {low}
    with pytest.raises(PortsExhausted, match=f"{low}-{high}"):
        await answer()
    assert registry.get_sample_value("webrtc_udp_ports_exhausted_total") == 1
    await first.close()
    again = await answer()  # the port is free again once the session closed
    await again.close()


def test_link_headers_carry_turn_credentials_and_repr_hides_them() -> None:
    turn = IceServer(urls="turn:turn.example.net?transport=udp", username="u", credential='p"w')
    assert turn.link_headers() == [
        '<turn:turn.example.net?transport=udp>; rel="ice-server"; username="u";'
        ' credential="p\\"w"; credential-type="password"'
    ]
    assert 'p"w' not in repr(turn)
    assert IceServer(urls=["stun:a:3478"]).link_headers() == ['<stun:a:3478>; rel="ice-server"']


def test_webrtc_network_keys_from_the_environment() -> None:
    cfg = load(
        environ={
            "NEARCAST_WEBRTC_ICE_SERVERS": (
                "[stun:stun.example.net, {urls: [turn:t.example.net:3478], username: u,"
                " credential: s3cret, link: false}]"
            ),
            "NEARCAST_WEBRTC_UDP_PORT_MIN": "40000",
            "NEARCAST_WEBRTC_UDP_PORT_MAX": "40099",
            "NEARCAST_WEBRTC_ANNOUNCE_IPS": "[203.0.113.7, '2001:db8::7']",
        }
    )
    w = cfg.webrtc
    assert w.ice_servers[0] == "stun:stun.example.net"
    assert w.ice_servers[1] == IceServer(["turn:t.example.net:3478"], "u", "s3cret", link=False)
    assert (w.udp_port_min, w.udp_port_max) == (40000, 40099)
    assert w.announce_ips == ["203.0.113.7", "2001:db8::7"]


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"NEARCAST_WEBRTC_ICE_SERVERS": "[turn:t.example.net]"},
            "'webrtc.ice_servers[0]' is a TURN server, which needs credentials",
        ),
        (
            {"NEARCAST_WEBRTC_ICE_SERVERS": "[{urls: turn:t.example.net, username: u}]"},
            "'webrtc.ice_servers[0].username' and 'credential' are required",
        ),
        (
            {"NEARCAST_WEBRTC_ICE_SERVERS": "[{urls: [stun:a, 'turn:b?transport=sctp']}]"},
            "'webrtc.ice_servers[0].urls' must be a stun:, stuns:, turn: or turns: URL",
        ),
        (
            {"NEARCAST_WEBRTC_ICE_SERVERS": "[{urls: []}]"},
            "'webrtc.ice_servers[0].urls' must name at least one",
        ),
        (
            {"NEARCAST_WEBRTC_UDP_PORT_MIN": "40000"},
            "'webrtc.udp_port_max' must be 0 (ephemeral ports, with the other 0) or between",
        ),
        (
            {"NEARCAST_WEBRTC_UDP_PORT_MIN": "50000", "NEARCAST_WEBRTC_UDP_PORT_MAX": "40000"},
            "'webrtc.udp_port_max' must be at least 'udp_port_min' (50000)",
        ),
        (
            {"NEARCAST_WEBRTC_ANNOUNCE_IPS": "[edge.example.net]"},
            "'webrtc.announce_ips[0]' must be an IPv4 or IPv6 address",
        ),
        (
            {"NEARCAST_WEBRTC_ANNOUNCE_IPS": "[0.0.0.0]"},
            "'webrtc.announce_ips[0]' must be a unicast address",
        ),
        (
            {"NEARCAST_WHIP_ICE_SERVERS": "[stun:stun.example.net]"},
            "'whip.ice_servers' has moved to 'webrtc.ice_servers'",
        ),
    ],
)
def test_webrtc_network_errors_name_the_key(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(environ=env)
    assert str(info.value).startswith(message), str(info.value)


def test_an_old_empty_whip_ice_servers_still_loads() -> None:
    assert load(environ={"NEARCAST_WHIP_ICE_SERVERS": "[]"}).whip.ice_servers == []
