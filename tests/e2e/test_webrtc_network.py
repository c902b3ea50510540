"""WebRTC beyond loopback: a node with a UDP port range, an announced public IP and a TURN
server (coturn), published to over WHIP and watched over WHEP by aiortc clients.

The node runs as its own process, so its sockets are read from /proc as ``ss -u -a -p``
lists them. The viewer of the TURN test gathers relay candidates only (aiortc's
``iceTransportPolicy`` relay), with the TURN server and credentials the node's Link header
gives it: its media can only have come through coturn.
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Iterator
from typing import Any

import av
import httpx
import numpy as np
import pytest
from aiortc import (
    AudioStreamTrack,
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCSessionDescription,
    VideoStreamTrack,
)
from aiortc.rtcconfiguration import RTCIceTransportPolicy
from nodeutil import NodeProcess, wait_for
from turnutil import PASSWORD, USER, TurnServer, free_udp_range, process_udp_ports, turn_server
from whiputil import LADDER

PUBLIC_IP = "203.0.113.7"  # RFC 5737 TEST-NET-3: announced, never reached
SDP = {"Content-Type": "application/sdp"}


class MovingPicture(VideoStreamTrack):
    """A changing 320x240 picture (a still one encodes to almost nothing)."""

    def __init__(self) -> None:
        super().__init__()
        self.n = 0

    async def recv(self) -> av.VideoFrame:
        pts, time_base = await self.next_timestamp()
        img = np.zeros((240, 320, 3), np.uint8)
        img[:, (self.n * 4) % 280 :][:, :40] = (255, 200, 0)
        self.n += 1
        frame = av.VideoFrame.from_ndarray(img, format="rgb24")
        frame.pts, frame.time_base = pts, time_base
        return frame


class WhipPublisher:
    """An aiortc WHIP publisher on its own event loop thread, until :meth:`stop`."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.answer = ""
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self.thread.start()

    async def _run(self) -> None:
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        try:
            pc.addTransceiver(MovingPicture(), direction="sendonly")
            pc.addTransceiver(AudioStreamTrack(), direction="sendonly")
            await pc.setLocalDescription(await pc.createOffer())
            async with httpx.AsyncClient(timeout=15) as client:
                r = await client.post(self.url, content=pc.localDescription.sdp, headers=SDP)
            assert r.status_code == 201, (r.status_code, r.text)
            self.answer = r.text
            await pc.setRemoteDescription(RTCSessionDescription(r.text, "answer"))
            await asyncio.to_thread(self._stop.wait)
        except BaseException as exc:
            self.error = exc
        finally:
            await pc.close()

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(15)


def candidates(sdp: str) -> list[tuple[str, int, str]]:
    """(address, port, type) of every a=candidate line."""
    out = []
    for line in sdp.splitlines():
        if line.startswith("a=candidate:"):
            f = line.split()
            out.append((f[4], int(f[5]), f[7]))
    return out


def ice_servers_from_links(response: httpx.Response) -> list[RTCIceServer]:
    """RTCIceServers from ``Link: <url>; rel="ice-server"; username=..`` (RFC 9725 §4.6)."""
    servers = []
    for header in response.headers.get_list("link"):
        for link in re.split(r",\s*(?=<)", header):
            url = re.match(r"<([^>]+)>", link)
            params = dict(re.findall(r';\s*([\w-]+)="((?:[^"\\]|\\.)*)"', link))
            if url and params.get("rel") == "ice-server":
                servers.append(
                    RTCIceServer(url[1], params.get("username"), params.get("credential"))
                )
    return servers


@pytest.fixture(scope="module")
def turn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TurnServer]:
    with turn_server(tmp_path_factory.mktemp("turn")) as server:
        yield server


@pytest.fixture(scope="module")
def ports() -> tuple[int, int]:
    return free_udp_range(40)


@pytest.fixture(scope="module")
def node(
    tmp_path_factory: pytest.TempPathFactory, turn: TurnServer, ports: tuple[int, int]
) -> Iterator[NodeProcess]:
    n = NodeProcess(
        tmp_path_factory.mktemp("node") / "node.log",
        NEARCAST_TRANSCODE_LADDER=LADDER,
        NEARCAST_HLS_SEGMENT_DURATION="1",
        NEARCAST_WEBRTC_RENDITION="240p",
        NEARCAST_WEBRTC_UDP_PORT_MIN=str(ports[0]),
        NEARCAST_WEBRTC_UDP_PORT_MAX=str(ports[1]),
        NEARCAST_WEBRTC_ANNOUNCE_IPS=f"[{PUBLIC_IP}]",
        NEARCAST_WEBRTC_ICE_SERVERS=(
            f"[{{urls: ['{turn.url}'], username: {USER}, credential: {PASSWORD}}}]"
        ),
    )
    yield n
    n.stop()


@pytest.fixture(scope="module")
def publisher(node: NodeProcess) -> Iterator[WhipPublisher]:
    pub = WhipPublisher(f"{node.http}/live/cam/whip")

    def live() -> bool:
        assert pub.error is None, pub.error
        r = node.get("/live/cam/240p/index.m3u8")
        return r.status_code == 200 and "#EXTINF" in r.text

    try:
        wait_for(live, 60, "the WHIP publish transcoded into 240p segments")
        yield pub
    finally:
        pub.stop()


async def watch(
    node: NodeProcess, frames: int, *, relay_only: bool = False
) -> tuple[str, str, list[tuple[str, int]]]:
    """A WHEP viewer until ``frames`` video frames have arrived: (its offer, the node's answer,
    the node's UDP sockets while it watched)."""
    url = f"{node.http}/live/cam/whep"
    async with httpx.AsyncClient(timeout=15) as client:
        servers = ice_servers_from_links(await client.options(url)) if relay_only else []
        config = RTCConfiguration(
            iceServers=servers,
            iceTransportPolicy=RTCIceTransportPolicy.RELAY
            if relay_only
            else RTCIceTransportPolicy.ALL,
        )
        pc = RTCPeerConnection(config)
        received: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        location = None

        @pc.on("track")
        def on_track(track: Any) -> None:
            if track.kind != "video":
                return

            async def read() -> None:
                try:
                    for _ in range(frames):
                        await track.recv()
                    received.set_result(None)
                except Exception as exc:
                    if not received.done():
                        received.set_exception(exc)

            asyncio.ensure_future(read())

        try:
            pc.addTransceiver("video", direction="recvonly")
            pc.addTransceiver("audio", direction="recvonly")
            await pc.setLocalDescription(await pc.createOffer())
            r = await client.post(url, content=pc.localDescription.sdp, headers=SDP)
            assert r.status_code == 201, (r.status_code, r.text)
            location = r.headers["location"]
            await pc.setRemoteDescription(RTCSessionDescription(r.text, "answer"))
            await asyncio.wait_for(received, 20)
            sockets = process_udp_ports(node.proc.pid)
            return pc.localDescription.sdp, r.text, sockets
        finally:
            if location is not None:
                await client.delete(f"{node.http}{location}")
            await pc.close()


def test_whip_answer_announces_the_public_ip_on_ports_of_the_range(
    publisher: WhipPublisher, ports: tuple[int, int]
) -> None:
    found = candidates(publisher.answer)
    hosts = [(ip, port) for ip, port, kind in found if kind == "host" and ip != PUBLIC_IP]
    announced = [port for ip, port, kind in found if ip == PUBLIC_IP]
    assert hosts and announced, found
    # The public address stands for a local socket: same port, inside the range.
    assert set(announced) <= {port for ip, port in hosts if "." in ip}, found
    assert all(ports[0] <= port <= ports[1] for _, port in hosts), (ports, found)


async def test_node_webrtc_sockets_stay_inside_the_port_range_while_publishing_and_watching(
    node: NodeProcess, publisher: WhipPublisher, ports: tuple[int, int]
) -> None:
    _, answer, sockets = await watch(node, frames=30)
    assert any(ip == PUBLIC_IP for ip, _, _ in candidates(answer)), answer
    # The WHIP session and the WHEP session, each a socket per local address and one to
    # the TURN server: all of them in the range.
    assert len(sockets) >= 4, sockets
    outside = [s for s in sockets if not ports[0] <= s[1] <= ports[1]]
    assert not outside, (ports, sockets)


async def test_whep_viewer_plays_through_turn_with_relay_candidates_only(
    node: NodeProcess, publisher: WhipPublisher, turn: TurnServer
) -> None:
    offer, answer, _ = await watch(node, frames=30, relay_only=True)
    # Relay candidates only, from coturn's relay ports: the media came through the TURN
    # server the node's Link header named, with its credentials.
    offered = candidates(offer)
    assert offered and all(kind == "relay" for _, _, kind in offered), offered
    assert all(turn.relay_ports[0] <= port <= turn.relay_ports[1] for _, port, _ in offered)
    # The node gathered through the same TURN server with its own credentials.
    assert any(kind == "relay" for _, _, kind in candidates(answer)), answer
    assert PASSWORD not in node.log_path.read_text()  # the TURN credential is never logged


async def test_a_full_port_range_refuses_whip_and_whep_with_503() -> None:
    """One port per local address: the first session takes it, the next ones are refused
    with a reason, counted, and the node goes on (in-process, no worker needed to answer)."""
    from media import StreamKey
    from nearcast.config import load
    from nearcast.node import Node

    low, high = free_udp_range(1)
    node = Node(
        load(
            environ={
                "NEARCAST_RTMP_LISTEN": "127.0.0.1:0",
                "NEARCAST_HTTP_LISTEN": "127.0.0.1:0",
                "NEARCAST_TRANSCODE_CAPACITY_UNITS": "1",
                "NEARCAST_WEBRTC_UDP_PORT_MIN": str(low),
                "NEARCAST_WEBRTC_UDP_PORT_MAX": str(high),
            }
        )
    )
    await node.start()
    node.whep.open(StreamKey("live", "cam"))
    viewer = RTCPeerConnection()
    publisher = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        viewer.addTransceiver("video", direction="recvonly")
        await viewer.setLocalDescription(await viewer.createOffer())
        publisher.addTransceiver(MovingPicture(), direction="sendonly")
        await publisher.setLocalDescription(await publisher.createOffer())
        base = "/live"
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{node.http_port}", timeout=15
        ) as c:
            offer = viewer.localDescription.sdp
            first = await c.post(f"{base}/cam/whep", content=offer, headers=SDP)
            assert first.status_code == 201, first.text
            assert {port for _, port, _ in candidates(first.text)} == {low}
            again = await c.post(f"{base}/cam/whep", content=offer, headers=SDP)
            assert again.status_code == 503 and again.headers["retry-after"], again.text
            assert f"webrtc.udp_port_min..udp_port_max ({low}-{high})" in again.text
            sdp = publisher.localDescription.sdp
            whip = await c.post(f"{base}/pub/whip", content=sdp, headers=SDP)
            assert whip.status_code == 503 and "no free UDP port" in whip.text, whip.text
            assert node.registry.get_sample_value("webrtc_udp_ports_exhausted_total") == 2
            # The refused sessions left nothing behind; the first one is still there.
            assert len(node.whep.sessions) == 1 and node.whip.sessions == {}
            assert (await c.delete(first.headers["location"])).status_code == 200
            third = await c.post(f"{base}/cam/whep", content=offer, headers=SDP)
            assert third.status_code == 201, third.text
    finally:
        await viewer.close()
        await publisher.close()
        await node.stop()


async def test_a_refused_turn_credential_is_logged_without_the_secret_and_counted(
    turn: TurnServer, caplog: pytest.LogCaptureFixture
) -> None:
    from prometheus_client import CollectorRegistry

    from media.ice import IceServer, UdpPortRange
    from media.icegather import IceNetwork

    secret = "wrong-secret-4567"
    registry = CollectorRegistry()
    net = IceNetwork(
        UdpPortRange(*free_udp_range(4)),
        servers=[IceServer(urls=[turn.url], username=USER, credential=secret)],
        registry=registry,
    )
    offerer = RTCPeerConnection()
    pc = RTCPeerConnection(net.configuration())
    try:
        offerer.addTransceiver("video", direction="recvonly")
        await offerer.setLocalDescription(await offerer.createOffer())
        pc.addTransceiver(VideoStreamTrack(), direction="sendonly")
        await pc.setRemoteDescription(offerer.localDescription)
        net.bind(pc)
        await pc.setLocalDescription(await pc.createAnswer())
    finally:
        await pc.close()
        await offerer.close()
    # The session still answers, with host candidates only.
    assert [kind for _, _, kind in candidates(pc.localDescription.sdp)] and all(
        kind == "host" for _, _, kind in candidates(pc.localDescription.sdp)
    )
    assert registry.get_sample_value("webrtc_ice_server_failures_total", {"kind": "turn"}) == 1
    assert f"TURN server 127.0.0.1:{turn.port} gave no candidate" in caplog.text
    assert "401" in caplog.text and secret not in caplog.text
