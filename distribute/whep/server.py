"""WHEP sessions: one aiortc peer connection per viewer, fed from the stream's fan-out.

aiortc's ``RTCRtpSender`` asks its track for the next item; when that is an
``av.Packet`` rather than a frame it only packetizes it (H.264 into FU-A/STAP-A
per RFC 6184, Opus as is) and converts the packet's timestamps to the RTP clock
(90 kHz video, 48 kHz Opus). :class:`PacketTrack` hands it the worker's packets,
so a viewer costs the node packetization and SRTP only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Coroutine
from typing import Any

import av
from aiortc import (
    MediaStreamTrack,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc.exceptions import OperationError
from aiortc.mediastreams import MediaStreamError
from prometheus_client import CollectorRegistry, Counter, Gauge

from distribute.whep.config import WebRtcConfig
from distribute.whep.exceptions import (
    BadOffer,
    NoUdpPort,
    SessionNotFound,
    StreamNotFound,
    TooManyViewers,
)
from distribute.whep.fanout import TapFanout, ViewerFeed
from media import MediaPacket, StreamKey
from media.ice import PortsExhausted, UdpPortRange, ice_servers
from media.icegather import IceNetwork

log = logging.getLogger(__name__)

# What each kind is sent as; the TAP contract delivers exactly these.
MIME = {"video": "video/H264", "audio": "audio/opus"}


class PacketTrack(MediaStreamTrack):
    """A track whose ``recv()`` returns already-encoded packets from one viewer feed."""

    def __init__(self, kind: str, feed: ViewerFeed) -> None:
        super().__init__()
        self.kind = kind
        self.feed = feed

    async def recv(self) -> av.Packet:  # type: ignore
        if self.readyState != "live":
            raise MediaStreamError
        packet = await self.feed.get()
        if packet is None:
            self.stop()
            raise MediaStreamError
        return packet

    def stop(self) -> None:
        self.feed.close()
        super().stop()


class WhepMetrics:
    def __init__(self, registry: CollectorRegistry | None) -> None:
        registry = registry or CollectorRegistry()
        # webrtc_sessions: WHEP viewers currently connected or connecting.
        self.sessions = Gauge("webrtc_sessions", "WHEP sessions open", registry=registry)
        # webrtc_session_attempts_total{result}: offers by outcome (created, bad_offer,
        # not_found, full, no_port: the UDP port range was full).
        self.attempts = Counter(
            "webrtc_session_attempts", "WHEP session attempts", ["result"], registry=registry
        )
        # webrtc_outbound_packets_discarded_total: packets dropped for slow viewers.
        self.discarded = Counter(
            "webrtc_outbound_packets_discarded",
            "Encoded packets dropped because a viewer could not keep up",
            registry=registry,
        )


class WhepSession:
    def __init__(self, id: str, key: StreamKey, pc: RTCPeerConnection, feeds: list[ViewerFeed]):
        self.id = id
        self.key = key
        self.pc = pc
        self.feeds = feeds
        self.created = time.time()
        self.closed = False


def ice_network(config: WebRtcConfig, registry: CollectorRegistry | None = None) -> IceNetwork:
    """The node's WebRTC network from the ``webrtc:`` section, for WHEP and WHIP alike."""
    return IceNetwork(
        UdpPortRange(config.udp_port_min, config.udp_port_max),
        config.announce_ips,
        ice_servers(config.ice_servers),
        registry,
    )


class WhepServer:
    """Every WHEP session of a node, and the fan-out of each stream offered over WebRTC."""

    def __init__(
        self,
        config: WebRtcConfig,
        registry: CollectorRegistry | None = None,
        *,
        network: IceNetwork | None = None,
    ) -> None:
        self.config = config
        self.metrics = WhepMetrics(registry)
        # Ports, announced addresses and STUN/TURN servers; the node shares it with WHIP.
        self.network = network or ice_network(config, registry)
        self.fanouts: dict[StreamKey, TapFanout] = {}
        self.sessions: dict[str, WhepSession] = {}
        # Offers past the max_viewers check and not yet sessions: they hold a slot, so
        # concurrent offers cannot all pass the check before any of them is counted.
        self._reserved = 0
        self._tasks: set[asyncio.Task[None]] = set()

    # -- node side ---------------------------------------------------------------------

    def viewers(self, key: StreamKey) -> int:
        """WHEP sessions of ``key`` open now."""
        fanout = self.fanouts.get(key)
        return sum(1 for s in self.sessions.values() if s.key == key) if fanout else 0

    def open(self, key: StreamKey) -> TapFanout:
        """The stream is live (again): viewers may join."""
        fanout = self.fanouts.get(key)
        if fanout is None or fanout.closed:
            fanout = self.fanouts[key] = TapFanout(str(key), self.config.viewer_queue_packets)
        return fanout

    def feed(self, key: StreamKey, packet: MediaPacket) -> None:
        fanout = self.fanouts.get(key)
        if fanout is None:
            return  # not opened (WebRTC off) or already ended: a worker's last packets
        dropped = fanout.publish(packet)
        if dropped:
            self.metrics.discarded.inc(dropped)

    def restart(self, key: StreamKey) -> None:
        fanout = self.fanouts.get(key)
        if fanout is not None:
            fanout.restart()

    def end(self, key: StreamKey) -> None:
        """The stream ended: its viewers' tracks end and their sessions close."""
        fanout = self.fanouts.pop(key, None)
        if fanout is not None:
            fanout.close()
        for session in [s for s in self.sessions.values() if s.key == key]:
            self._spawn(self._close(session))

    async def close(self) -> None:
        for key in list(self.fanouts):
            self.end(key)
        await asyncio.gather(*(self._close(s) for s in list(self.sessions.values())))
        for task in list(self._tasks):
            task.cancel()

    # -- viewer side ---------------------------------------------------------------------

    def ice_links(self) -> list[str]:
        """``Link: rel="ice-server"`` values for viewers (RFC 9725 §4.6)."""
        return self.network.links()

    async def create(self, key: StreamKey, offer_sdp: str) -> tuple[WhepSession, str]:
        """Answer a viewer's offer. Returns the session and the SDP answer."""
        if not self.config.enabled:
            raise StreamNotFound("WebRTC playback is disabled on this node (webrtc.enabled)")
        fanout = self.fanouts.get(key)
        if fanout is None or fanout.closed:
            self.metrics.attempts.labels("not_found").inc()
            raise StreamNotFound(f"stream {key} is not live on this node")
        if len(self.sessions) + self._reserved >= self.config.max_viewers:
            self.metrics.attempts.labels("full").inc()
            raise TooManyViewers(
                f"{len(self.sessions) + self._reserved} WebRTC viewers already "
                "(webrtc.max_viewers); try HLS"
            )
        # Reserved before the first await, given back once the session counts or failed.
        self._reserved += 1
        try:
            return await self._create(key, offer_sdp, fanout)
        finally:
            self._reserved -= 1

    async def _create(
        self, key: StreamKey, offer_sdp: str, fanout: TapFanout
    ) -> tuple[WhepSession, str]:
        kinds = _offered_kinds(offer_sdp)
        if "video" not in kinds:
            self.metrics.attempts.labels("bad_offer").inc()
            raise BadOffer(f"offer for {key} has no video m-line")
        pc = RTCPeerConnection(self.network.configuration())
        feeds: list[ViewerFeed] = []
        try:
            # Transceivers made before the offer is applied take its m-lines of their kind,
            # and only then do codec preferences restrict what is negotiated.
            for kind in ("video", "audio"):
                if kind not in kinds:
                    continue
                feed = fanout.attach(kind)
                feeds.append(feed)
                transceiver = pc.addTransceiver(PacketTrack(kind, feed), direction="sendonly")
                caps = RTCRtpSender.getCapabilities(kind).codecs
                transceiver.setCodecPreferences(
                    [c for c in caps if c.mimeType.lower() in (MIME[kind].lower(), f"{kind}/rtx")]
                )
            try:
                await pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
            except OperationError:
                raise BadOffer(
                    f"offer for {key} accepts neither H.264 (packetization-mode 1) video "
                    "nor Opus audio as this node sends them"
                ) from None
            except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
                raise BadOffer(f"offer for {key} is not valid SDP: {exc}") from None
            self.network.bind(pc)
            try:
                answer = await pc.createAnswer()
            except (ValueError, RuntimeError) as exc:
                raise BadOffer(f"cannot negotiate with the offer for {key}: {exc}") from None
            if not _answer_has(answer.sdp, "H264"):
                raise BadOffer(
                    f"offer for {key} does not accept H.264 video (packetization-mode 1)"
                )
            try:
                await pc.setLocalDescription(answer)
            except PortsExhausted as exc:
                raise NoUdpPort(f"cannot answer the offer for {key}: {exc.strerror}") from None
        except BaseException as exc:
            for feed in feeds:
                fanout.detach(feed)
            await pc.close()
            if isinstance(exc, BadOffer):
                self.metrics.attempts.labels("bad_offer").inc()
            elif isinstance(exc, NoUdpPort):
                self.metrics.attempts.labels("no_port").inc()
            raise
        session = WhepSession(secrets.token_urlsafe(12), key, pc, feeds)
        self.sessions[session.id] = session
        self.metrics.sessions.inc()
        self.metrics.attempts.labels("created").inc()

        @pc.on("connectionstatechange")
        async def _state() -> None:
            log.info("[whep %s %s] connection %s", key, session.id, pc.connectionState)
            if pc.connectionState in ("failed", "closed"):
                await self._close(session)

        self._spawn(self._connect_deadline(session))
        log.info("[whep %s %s] session created (%s)", key, session.id, ", ".join(sorted(kinds)))
        return session, pc.localDescription.sdp

    async def delete(self, key: StreamKey, session_id: str) -> None:
        session = self.sessions.get(session_id)
        if session is None or session.key != key:
            raise SessionNotFound(f"no WHEP session {session_id!r} on stream {key}")
        await self._close(session)

    async def _close(self, session: WhepSession) -> None:
        if session.closed:
            return
        session.closed = True
        if self.sessions.pop(session.id, None) is not None:
            self.metrics.sessions.dec()
        fanout = self.fanouts.get(session.key)
        for feed in session.feeds:
            if fanout is not None:
                fanout.detach(feed)
            else:
                feed.close()
        with contextlib.suppress(Exception):
            await session.pc.close()
        log.info("[whep %s %s] session closed", session.key, session.id)

    async def _connect_deadline(self, session: WhepSession) -> None:
        await asyncio.sleep(self.config.connect_timeout)
        if not session.closed and session.pc.connectionState != "connected":
            log.warning(
                "[whep %s %s] not connected after %.0f s; closing",
                session.key,
                session.id,
                self.config.connect_timeout,
            )
            await self._close(session)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _offered_kinds(sdp: str) -> set[str]:
    if not sdp.lstrip().startswith("v=0"):
        raise BadOffer("offer is not an SDP session description (must start with v=0)")
    return {line[2:].split(" ", 1)[0] for line in sdp.splitlines() if line.startswith("m=")}


def _answer_has(sdp: str, codec: str) -> bool:
    return any(line.startswith("a=rtpmap:") and f" {codec}/" in line for line in sdp.splitlines())
