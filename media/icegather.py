"""ICE candidate gathering for the node's aiortc peer connections (WHIP and WHEP).

aioice 0.13 gathers a connection's candidates in ``Connection.get_component_candidates``:
one socket per local address bound to port 0, a STUN query per IPv4 socket, a
TURN allocation from another port-0 socket, and the candidates those give. It can
be told neither a port range (aiortc #487, aioice #47) nor an address to announce.
:meth:`IceNetwork.bind` replaces that method on each connection of a peer connection
with :meth:`IceNetwork._gather`, which does the same with sockets bound by
:class:`media.ice.UdpPortRange`, adds a host candidate for each announced address
(the port of the socket it stands for), and says why a STUN or TURN server gave
no candidate instead of dropping it silently.

It reaches into aioice (``RTCIceGatherer._connection``, ``Connection._protocols``,
``TurnTransport._connect``): pyproject pins aioice to the minor version this was
written against.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import socket
from collections.abc import Sequence
from typing import Any

from aioice import Candidate
from aioice import ice as aioice_ice
from aioice import turn as aioice_turn
from aioice.candidate import candidate_foundation, candidate_priority
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection
from prometheus_client import CollectorRegistry, Counter

from media.ice import IceServer, PortsExhausted, UdpPortRange
from media.ratelog import RateLimitedLog

log = logging.getLogger(__name__)

# Seconds a STUN query or a TURN allocation may take before gathering ends without
# it: aioice's own bound, and the answer waits for it.
GATHER_TIMEOUT = 5.0


class IceMetrics:
    def __init__(self, registry: CollectorRegistry | None) -> None:
        registry = registry or CollectorRegistry()
        # webrtc_udp_ports_exhausted_total: WebRTC sockets (WHIP or WHEP) that could not be
        # bound because every port of webrtc.udp_port_min..udp_port_max was in use; each
        # refuses one session (503).
        self.exhausted = Counter(
            "webrtc_udp_ports_exhausted",
            "WebRTC sockets refused because the UDP port range was full",
            registry=registry,
        )
        # webrtc_ice_server_failures_total{kind}: STUN queries (kind="stun") or TURN
        # allocations (kind="turn") that gave a session no candidate: unreachable,
        # timed out, or refused (a wrong TURN credential).
        self.server_failures = Counter(
            "webrtc_ice_server_failures",
            "STUN queries and TURN allocations that gave no candidate",
            ["kind"],
            registry=registry,
        )


class IceNetwork:
    """How the node's WebRTC sessions reach the network: ports, announced IPs, servers.

    One instance serves WHIP and WHEP alike (the ``webrtc:`` section configures it
    once), so both draw their sockets from one port range.
    """

    def __init__(
        self,
        ports: UdpPortRange | None = None,
        announce_ips: Sequence[str] = (),
        servers: Sequence[IceServer] = (),
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.ports = ports or UdpPortRange()
        self.announce_ips = [str(ipaddress.ip_address(ip)) for ip in announce_ips]
        self.servers = list(servers)
        self.metrics = IceMetrics(registry)
        self._warn = RateLimitedLog(log, interval=60.0)

    # -- configuration ---------------------------------------------------------------

    def configuration(self) -> RTCConfiguration:
        """The RTCConfiguration of a node-side peer connection.

        aiortc uses the first STUN and the first TURN URL it can (it gathers through one
        of each); an empty list keeps it from falling back to Google's STUN server.
        """
        return RTCConfiguration(
            iceServers=[
                RTCIceServer(
                    urls=s.url_list, username=s.username or None, credential=s.credential or None
                )
                for s in self.servers
            ]
        )

    def links(self) -> list[str]:
        """``Link`` header values announcing the servers marked ``link`` (RFC 9725 §4.6)."""
        return [value for s in self.servers if s.link for value in s.link_headers()]

    def bind(self, pc: RTCPeerConnection) -> None:
        """Gather the candidates of ``pc`` here; call before ``setLocalDescription``.

        Call it once the transports are final (after ``setRemoteDescription`` for an
        answerer: BUNDLE drops the transports it does not keep).
        """
        seen: set[int] = set()
        gatherers: list[Any] = [
            t.receiver.transport.transport.iceGatherer for t in pc.getTransceivers()
        ]
        if pc.sctp is not None:
            gatherers.append(pc.sctp.transport.transport.iceGatherer)
        for gatherer in gatherers:
            connection = gatherer._connection
            if id(connection) in seen:
                continue
            seen.add(id(connection))
            connection.get_component_candidates = functools.partial(self._gather, connection)

    # -- gathering -------------------------------------------------------------------

    async def _gather(
        self,
        connection: aioice_ice.Connection,
        component: int,
        addresses: list[str],
    ) -> list[Candidate]:
        timeout = GATHER_TIMEOUT
        loop = asyncio.get_running_loop()
        hosts: list[aioice_ice.StunProtocol] = []
        try:
            for address in addresses:
                try:
                    sock = self.ports.bind(address)
                except PortsExhausted:
                    self.metrics.exhausted.inc()
                    raise
                except OSError as exc:
                    # As aioice does: an address that cannot be bound (a tentative IPv6
                    # address, one just removed) gives no candidate.
                    log.debug("cannot bind a WebRTC socket to %s: %s", address, exc)
                    continue
                with _closing_on_error(sock):
                    sock.setsockopt(
                        socket.SOL_SOCKET, socket.SO_RCVBUF, aioice_turn.UDP_SOCKET_BUFFER_SIZE
                    )
                    _, protocol = await loop.create_datagram_endpoint(
                        lambda: aioice_ice.StunProtocol(connection), sock=sock
                    )
                host, port = sock.getsockname()[:2]
                protocol.local_candidate = Candidate(
                    foundation=candidate_foundation("host", "udp", host),
                    component=component,
                    transport="udp",
                    priority=candidate_priority(component, "host"),
                    host=host,
                    port=port,
                    type="host",
                )
                hosts.append(protocol)
        except BaseException:
            for protocol in hosts:
                protocol.transport.close()
            raise
        connection._protocols += hosts
        candidates = [p.local_candidate for p in hosts]
        candidates += self._announced(component, candidates)

        tasks: dict[asyncio.Task[tuple[Candidate, Any]], str] = {}
        if connection.stun_server:
            stun_server = connection.stun_server
            for protocol in hosts:
                if ipaddress.ip_address(protocol.local_candidate.host).version == 4:
                    task = asyncio.create_task(
                        aioice_ice.server_reflexive_candidate(protocol, stun_server)
                    )
                    tasks[task] = "stun"
        if connection.turn_server:
            tasks[asyncio.create_task(self._relayed(connection, component))] = "turn"
        if tasks:
            try:
                _, pending = await asyncio.wait(tasks, timeout=timeout)
            except asyncio.CancelledError:
                for task in tasks:  # an allocation must not outlive the session
                    if not task.done():
                        task.cancel()
                    elif not task.cancelled() and task.exception() is None:
                        relay = task.result()[1]
                        if relay is not None:
                            relay.transport.close()
                raise
            for task in pending:
                task.cancel()
            exhausted: BaseException | None = None
            for task, kind in tasks.items():
                if task in pending:
                    self._server_failed(connection, kind, f"no answer within {timeout:g} s")
                    continue
                error = task.exception()
                if isinstance(error, PortsExhausted):  # the TURN allocation's socket
                    self.metrics.exhausted.inc()
                    exhausted = error
                elif error is not None:
                    self._server_failed(connection, kind, str(error) or type(error).__name__)
                else:
                    candidate, relay = task.result()
                    candidates.append(candidate)
                    if relay is not None:
                        connection._protocols.append(relay)
            if exhausted is not None:
                raise exhausted
        return candidates

    def _announced(self, component: int, hosts: list[Candidate]) -> list[Candidate]:
        """A host candidate per announced address and bound socket of its IP version.

        The peer sends to the announced address; the NAT in front of the node (1:1, or
        with the range forwarded port for port) delivers to the socket it stands for.
        """
        out: list[Candidate] = []
        taken = {(c.host, c.port) for c in hosts}
        for rank, ip in enumerate(self.announce_ips, start=1):
            version = ipaddress.ip_address(ip).version
            for host in hosts:
                if ipaddress.ip_address(host.host).version != version or (ip, host.port) in taken:
                    continue
                taken.add((ip, host.port))
                out.append(
                    Candidate(
                        foundation=candidate_foundation("host", "udp", ip),
                        component=component,
                        transport="udp",
                        # Below the local addresses: a peer on the node's own network
                        # tries the direct path first.
                        priority=candidate_priority(component, "host", 65535 - rank),
                        host=ip,
                        port=host.port,
                        type="host",
                    )
                )
        return out

    async def _relayed(
        self, connection: aioice_ice.Connection, component: int
    ) -> tuple[Candidate, aioice_ice.StunProtocol]:
        """A relayed candidate from the TURN server, its UDP socket bound in the range.

        aioice's ``relayed_candidate`` with the socket made here; TURN over TCP or TLS
        connects out from an ephemeral TCP port, which the UDP range does not cover.
        """
        assert connection.turn_server is not None
        relay_only = connection._transport_policy == aioice_ice.TransportPolicy.RELAY
        factory = functools.partial(aioice_ice.StunProtocol, connection)
        if connection.turn_transport != "udp":
            return await aioice_ice.relayed_candidate(
                component=component,
                hide_related_address=relay_only,
                protocol_factory=factory,
                turn_server=connection.turn_server,
                turn_username=connection.turn_username,
                turn_password=connection.turn_password,
                turn_ssl=connection.turn_ssl,
                turn_transport=connection.turn_transport,
            )
        loop = asyncio.get_running_loop()
        host, port = connection.turn_server
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
        family, _, _, _, sockaddr = infos[0]
        server = (str(sockaddr[0]), int(sockaddr[1]))
        sock = self.ports.bind("::" if family == socket.AF_INET6 else "0.0.0.0")
        with _closing_on_error(sock):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, aioice_turn.UDP_SOCKET_BUFFER_SIZE)
            sock.connect(server)
            inner_transport, inner = await loop.create_datagram_endpoint(
                lambda: aioice_turn.TurnClientUdpProtocol(
                    server,
                    username=connection.turn_username,
                    password=connection.turn_password,
                    lifetime=aioice_turn.DEFAULT_ALLOCATION_LIFETIME,
                    channel_refresh_time=aioice_turn.DEFAULT_CHANNEL_REFRESH_TIME,
                ),
                sock=sock,
            )
        try:
            protocol = factory()
            transport = aioice_turn.TurnTransport(inner)
            await transport._connect(protocol)
        except BaseException:
            inner_transport.close()  # also on cancellation: the socket must not leak
            raise
        relayed = transport.get_extra_info("sockname")
        related = transport.get_extra_info("related_address")
        if relay_only:
            # RFC 9429 §3.5.3 (as aioice): no disallowed address in the related address.
            related = ("0.0.0.0", 9) if ipaddress.ip_address(relayed[0]).version == 4 else ("::", 9)
        protocol.local_candidate = Candidate(
            foundation=candidate_foundation("relay", "udp", relayed[0]),
            component=component,
            transport="udp",
            priority=candidate_priority(component, "relay"),
            host=relayed[0],
            port=relayed[1],
            type="relay",
            related_address=related[0],
            related_port=related[1],
        )
        return protocol.local_candidate, protocol

    def _server_failed(self, connection: aioice_ice.Connection, kind: str, why: str) -> None:
        self.metrics.server_failures.labels(kind).inc()
        # The server's address only: a TURN credential never reaches the log.
        server = connection.stun_server if kind == "stun" else connection.turn_server
        where = f"{server[0]}:{server[1]}" if server else "?"
        self._warn.warning(
            (kind, where), "%s server %s gave no candidate: %s", kind.upper(), where, why
        )


class _closing_on_error:
    """Close ``sock`` when the block raises (the transport owns it afterwards)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def __enter__(self) -> socket.socket:
        return self.sock

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is not None:
            self.sock.close()
