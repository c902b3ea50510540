"""The node's WebRTC network settings, shared by WHIP ingest and WHEP playback.

Three things decide whether a WebRTC peer can reach a node: the UDP ports its
sockets are bound to (a firewall or a container may open only a known range),
the addresses its candidates announce (a node behind 1:1 NAT must announce its
public address, as LiveKit's ``node_ip`` and SRS's ``candidate`` do), and the
STUN/TURN servers it gathers through. This module holds the parts that need no
aiortc: the configured ICE servers (:class:`IceServer`), the UDP port range
(:class:`UdpPortRange`) and the ``Link: rel="ice-server"`` header (RFC 9725 §4.6).
:mod:`media.icegather` applies them to aiortc's peer connections.
"""

from __future__ import annotations

import errno
import ipaddress
import re
import socket
from dataclasses import dataclass, field

# The URI grammars aiortc 1.16 accepts (RFC 7064 §3.1, RFC 7065 §3.1), with the
# transports it can use: a URL outside them would be ignored without a word.
_STUN = re.compile(r"(?P<scheme>stuns?):(?P<host>[^?:/\s]+)(:(?P<port>[0-9]{1,5}))?")
_TURN = re.compile(
    r"(?P<scheme>turns?):(?P<host>[^?:/\s]+)(:(?P<port>[0-9]{1,5}))?"
    r"(\?transport=(?P<transport>udp|tcp))?"
)


def url_problem(url: str) -> str | None:
    """Why ``url`` cannot be used as a STUN or TURN server URL, or None when it can."""
    stun = _STUN.fullmatch(url)
    turn = _TURN.fullmatch(url)
    match = stun or turn
    if match is None:
        return (
            "must be a stun:, stuns:, turn: or turns: URL"
            f" (turn:HOST[:PORT][?transport=udp|tcp]), not {url!r}"
        )
    if match["port"] is not None and not 0 < int(match["port"]) < 65536:
        return f"must have a port between 1 and 65535, not {url!r}"
    if turn is not None and turn["scheme"] == "turns" and turn["transport"] == "udp":
        return f"must be turns: over TCP (TLS), not {url!r}"
    return None


def is_turn(url: str) -> bool:
    return url.startswith(("turn:", "turns:"))


@dataclass(frozen=True)
class IceServer:
    """One STUN or TURN server, as WebRTC's ``RTCIceServer`` describes it.

    ``credential`` is a secret: it is left out of ``repr`` and never logged. It does
    go to clients in the ``Link`` header when ``link`` is true, as RFC 9725 §4.6
    intends (a client behind a strict NAT needs the TURN server as much as the node).
    """

    urls: str | list[str] = field(default_factory=list)
    username: str = ""
    credential: str = field(default="", repr=False)
    link: bool = True

    @property
    def url_list(self) -> list[str]:
        return [self.urls] if isinstance(self.urls, str) else list(self.urls)

    def link_headers(self) -> list[str]:
        """``Link`` header values announcing this server to a client (RFC 9725 §4.6)."""
        out = []
        for url in self.url_list:
            value = f'<{url}>; rel="ice-server"'
            if is_turn(url):
                value += (
                    f'; username="{_quoted(self.username)}"'
                    f'; credential="{_quoted(self.credential)}"; credential-type="password"'
                )
            out.append(value)
        return out


def _quoted(text: str) -> str:
    # RFC 8288 §3: a quoted-string; backslash escapes a quote or a backslash.
    return text.replace("\\", "\\\\").replace('"', '\\"')


def ice_servers(entries: list[IceServer | str]) -> list[IceServer]:
    """The configured list with plain URL entries (the older form) as servers."""
    return [IceServer(urls=[e]) if isinstance(e, str) else e for e in entries]


def server_problem(entry: IceServer | str) -> tuple[str, str] | None:
    """(sub-key, why) when an ``ice_servers`` entry cannot be used, or None when it can."""
    if isinstance(entry, str):
        problem = url_problem(entry)
        if problem is not None:
            return "", problem
        if is_turn(entry):
            return "", (
                "is a TURN server, which needs credentials: write it as "
                f"{{urls: {entry}, username: ..., credential: ...}}"
            )
        return None
    urls = entry.url_list
    if not urls:
        return ".urls", "must name at least one stun:, stuns:, turn: or turns: URL"
    for url in urls:
        problem = url_problem(url)
        if problem is not None:
            return ".urls", problem
    if any(is_turn(u) for u in urls) and not (entry.username and entry.credential):
        return ".username", "and 'credential' are required for a turn: or turns: server"
    return None


def address_problem(ip: str) -> str | None:
    """Why ``ip`` cannot be announced in a candidate, or None when it can."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return f"must be an IPv4 or IPv6 address, not {ip!r}"
    if addr.is_unspecified or addr.is_multicast:
        return f"must be a unicast address a peer can send to, not {ip}"
    return None


def port_range_problem(low: int, high: int) -> tuple[str, str] | None:
    """(key, why) when ``low..high`` is no usable port range, or None (0..0: ephemeral)."""
    if low == 0 and high == 0:
        return None
    for key, value in (("udp_port_min", low), ("udp_port_max", high)):
        if not 1024 <= value <= 65535:
            return key, "must be 0 (ephemeral ports, with the other 0) or between 1024 and 65535"
    if low > high:
        return "udp_port_max", f"must be at least 'udp_port_min' ({low})"
    return None


class PortsExhausted(OSError):
    """Every port of the configured UDP range is taken on the address asked for."""


class UdpPortRange:
    """Binds UDP sockets to a port of ``low..high``, or to an ephemeral port when both are 0.

    aioice binds port 0 and cannot be given a range (aiortc #487, aioice #47), so the
    node binds its sockets here and hands them over. Which ports are free is the
    kernel's to know, not a table's that could drift from it: a port is tried with
    ``bind()`` (EADDRINUSE: the next one), starting after the last port handed out so a
    port just closed is not the first one tried again. A socket closed by anyone frees
    its port for the next bind.
    """

    def __init__(self, low: int = 0, high: int = 0) -> None:
        problem = port_range_problem(low, high)
        if problem is not None:
            raise ValueError(f"'{problem[0]}' {problem[1]}")
        self.low = low
        self.high = high
        self._next = 0  # offset of the first port the next bind tries

    @property
    def ephemeral(self) -> bool:
        return self.low == 0 and self.high == 0

    @property
    def size(self) -> int:
        return 0 if self.ephemeral else self.high - self.low + 1

    def __contains__(self, port: object) -> bool:
        return isinstance(port, int) and self.low <= port <= self.high

    def __str__(self) -> str:
        return "ephemeral" if self.ephemeral else f"{self.low}-{self.high}"

    def bind(self, host: str) -> socket.socket:
        """A non-blocking UDP socket bound to ``host`` and a port of the range.

        Raises :class:`PortsExhausted` when every port of the range is in use on
        ``host``, and the ``OSError`` of ``bind()`` for anything else (an address
        that is not this host's, say).
        """
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            if self.ephemeral:
                sock.bind((host, 0))
                return sock
            n = self.size
            for i in range(n):
                offset = (self._next + i) % n
                try:
                    sock.bind((host, self.low + offset))
                except OSError as exc:
                    if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                        continue
                    raise
                self._next = (offset + 1) % n
                return sock
        except BaseException:
            sock.close()
            raise
        sock.close()
        raise PortsExhausted(
            errno.EADDRINUSE,
            f"no free UDP port for a WebRTC socket on {host}: all {n} ports of "
            f"webrtc.udp_port_min..udp_port_max ({self}) are in use",
        )
