"""asyncio adapter around the sans-I/O RTMP core.

One task per TCP connection: read bytes, feed :class:`ServerSession`, write
what it wants sent, and turn its events into calls on the node's
:class:`~ingest.sink.IngestSink`. All protocol decisions live in the core; the
adapter only adds timeouts, back-pressure and logging.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import time
from collections.abc import Callable
from typing import TypeVar
from urllib.parse import parse_qs

from ingest.config import RtmpConfig
from ingest.metrics import IngestMetrics
from ingest.rtmp import session as rtmp
from ingest.rtmp.exceptions import RtmpProtocolError, UnsupportedCodec
from ingest.sink import IngestSink, Publication, PublishRefused, PublishRequest
from ingest.source import SourceGuard
from media import StreamKey
from media.names import stream_name_problem

log = logging.getLogger(__name__)
T = TypeVar("T")
# Bytes read at once before a publish: commands are parsed on the event loop, so many
# peers sending them take turns in small pieces with everything else the loop serves.
PRE_PUBLISH_READ = 8192

# onStatus codes (Adobe RTMP command messages, NetStream status codes).
BAD_NAME = "NetStream.Publish.BadName"
UNAUTHORIZED = "NetStream.Publish.Unauthorized"
REFUSED = "NetStream.Publish.Rejected"

_REFUSAL_CODES = {"duplicate": BAD_NAME, "name": BAD_NAME, "auth": UNAUTHORIZED}


def refusal_code(reason: str) -> str:
    """The onStatus code FFmpeg, OBS and librtmp expect for a refusal reason."""
    if reason.startswith(("token_", "webhook_")):
        return UNAUTHORIZED
    return _REFUSAL_CODES.get(reason, REFUSED)


class _Connection:
    def __init__(
        self,
        server: RtmpServer,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        protocol: str = "rtmp",
    ) -> None:
        self.server = server
        self.protocol = protocol
        self.disconnected: str | None = None
        self.config = server.config
        self.reader = reader
        self.writer = writer
        peer = writer.get_extra_info("peername")
        self.remote = f"{peer[0]}:{peer[1]}" if peer else "?"
        self.session = rtmp.ServerSession(
            chunk_size=self.config.chunk_size,
            window_ack_size=self.config.window_ack_size,
            max_message_size=self.config.max_message_size,
            max_command_size=self.config.max_command_size,
        )
        # Parse-time credit in seconds: refills at parse_budget per second, up to
        # parse_burst; a peer that spends it all is costing the loop, not streaming.
        self._credit = self.config.parse_burst
        self._credit_at = time.monotonic()
        self.app = ""
        self.app_query = ""
        self.publication: Publication | None = None
        self.publish_key: StreamKey | None = None
        self.guard: SourceGuard | None = None
        self.prefix = f"[{protocol} {self.remote}]"

    async def run(self) -> None:
        m = self.server.metrics
        deadline = time.monotonic() + self.config.handshake_timeout
        try:
            while True:
                # Until publishing starts, the whole setup must fit in the
                # handshake timeout (slowloris); afterwards, media must keep flowing.
                if self.publication is None:
                    timeout = deadline - time.monotonic()
                    if timeout <= 0:
                        raise TimeoutError
                else:
                    timeout = self.config.idle_timeout
                data = await asyncio.wait_for(self.reader.read(self._read_size()), timeout)
                if not data or self.disconnected:
                    break
                m.bytes.labels(self.protocol).inc(len(data))
                started = time.monotonic()
                events = self.session.receive_data(data)
                self._charge(started)
                while events:
                    # Accepting a connect or publish releases what the core held
                    # back meanwhile; those events are handled in order, right here.
                    events = [*await self._handle(events[0]), *events[1:]]
                out = self.session.data_to_send()
                if out:
                    self.writer.write(out)
                    await self._drain()
        except TimeoutError:
            if self.publication is None and self.publish_key is not None:
                # Unpublished, and the client lingers (FFmpeg waits for replies to
                # deleteStream): a normal end, not a slowloris to count.
                log.info("%s closed after unpublishing", self.prefix)
                return
            reason = "timeout" if self.publication else "handshake_timeout"
            what = "media" if self.publication else "publish"
            log.warning("%s closed: no %s in time", self.prefix, what)
            m.rejected.labels(reason).inc()
        except UnsupportedCodec as exc:
            log.warning("%s unsupported codec, closing: %s", self.prefix, exc)
            m.rejected.labels("codec").inc()
        except RtmpProtocolError as exc:
            log.warning("%s protocol error, closing: %s", self.prefix, exc)
            m.rejected.labels("protocol").inc()
        except _Refused as exc:
            log.warning("%s publish refused (%s): %s", self.prefix, exc.reason, exc)
            m.rejected.labels(exc.reason).inc()
        except (ConnectionError, OSError) as exc:
            log.info("%s connection lost: %s", self.prefix, exc)
        finally:
            await self._finish()

    def _read_size(self) -> int:
        """Bytes to read at once: media in large reads once publishing (cheap to parse),
        commands before it in small ones (AMF decoding costs ~0.4 ms per KiB)."""
        return 65536 if self.publication is not None else PRE_PUBLISH_READ

    def _charge(self, started: float) -> None:
        now = time.monotonic()
        cfg = self.config
        # Credit accrues over all the time that passed, parsing included, and the parse
        # is paid from it: a budget of 1.0 can never run out.
        earned = (now - self._credit_at) * cfg.parse_budget
        self._credit = min(cfg.parse_burst, self._credit + earned - (now - started))
        self._credit_at = now
        if self._credit < 0:
            raise _Refused(
                "parse_budget",
                f"parsing this peer's input used over {cfg.parse_budget:.0%} of a core "
                f"(rtmp.parse_budget)",
            )

    async def _drain(self) -> None:
        """Wait for the peer to take what was written, at most write_timeout seconds."""
        try:
            await asyncio.wait_for(self.writer.drain(), self.config.write_timeout)
        except TimeoutError:
            raise _Refused(
                "write_timeout", f"peer read nothing for {self.config.write_timeout:g} s"
            ) from None

    async def _flush(self) -> None:
        out = self.session.data_to_send()
        if out:
            self.writer.write(out)
            with contextlib.suppress(ConnectionError, OSError, _Refused):
                await self._drain()

    async def _handle(self, ev: object) -> list[rtmp.Event]:
        """Act on one event; returns events the core released as a result."""
        m = self.server.metrics
        if isinstance(ev, rtmp.ConnectRequested):
            self.app = ev.app
            self.app_query = getattr(ev, "query", "") or ""
            if self.app not in self.config.tenants:
                self.session.reject_connect(f"unknown tenant {self.app!r}")
                await self._flush()
                raise _Refused("tenant", f"connect to unknown tenant {self.app!r}")
            self.session.accept_connect()
            return self.session.receive_data(b"")
        elif isinstance(ev, rtmp.PublishRequested):
            await self._publish(ev)
            return self.session.receive_data(b"")
        elif isinstance(ev, rtmp.MediaReceived):
            if self.publication is not None:
                m.frames.labels(self.protocol, ev.packet.kind).inc()
                if self.guard is not None:
                    await self._hold_to_limits(ev.stream_id, self.guard.packet, ev.packet)
                await self.publication.media(ev.packet)
        elif isinstance(ev, rtmp.MetadataReceived):
            if self.publication is not None:
                if self.guard is not None:
                    await self._hold_to_limits(ev.stream_id, self.guard.metadata, ev.metadata)
                self.publication.metadata(dict(ev.metadata))
        elif isinstance(ev, rtmp.PublishStopped):
            await self._unpublish()
        elif isinstance(ev, rtmp.PlayRequested):
            await self._flush()  # the core queued NetStream.Play.Failed
            raise _Refused("play", f"play of {ev.name!r} is not served over RTMP; use HLS")
        return []

    async def _hold_to_limits(self, stream_id: int, check: Callable[[T], None], arg: T) -> None:
        """Run a :class:`SourceGuard` check; a source over the limits ends the publish
        with an error status, and the connection."""
        try:
            check(arg)
        except PublishRefused as exc:
            # The client may have ended this publish in the same read, after the media
            # (the core has let the stream go already): then there is no publish to fail,
            # only the connection to close.
            if stream_id in self.session.publishing:
                self.session.fail_publish(stream_id, REFUSED, exc.description)
                await self._flush()
            raise _Refused(exc.reason, exc.description) from None

    async def _publish(self, ev: rtmp.PublishRequested) -> None:
        name = ev.name
        problem = stream_name_problem(name)
        if problem is not None:
            self.session.reject_publish(ev.stream_id, BAD_NAME, problem)
            await self._flush()
            raise _Refused("name", problem)
        if self.publication is not None:
            self.session.reject_publish(ev.stream_id, BAD_NAME, "already publishing")
            await self._flush()
            raise _Refused("duplicate", "second publish on one connection")
        key = StreamKey(self.app, name)
        query = "&".join(q for q in (self.app_query, ev.query) if q)
        request = PublishRequest(
            key=key,
            protocol=self.protocol,
            remote=self.remote,
            query=query,
            disconnect=self.disconnect,
        )
        try:
            self.publication = await self.server.sink.open_publish(request)
        except PublishRefused as exc:
            code = refusal_code(exc.reason)
            self.session.reject_publish(ev.stream_id, code, exc.description)
            await self._flush()
            raise _Refused(exc.reason, exc.description) from None
        self.publish_key = key
        limits = request.source_limits
        if limits is not None and not limits.unlimited:
            self.guard = SourceGuard(limits, str(key))
        self.prefix = f"[{self.protocol} {key}]"
        self.session.accept_publish(ev.stream_id)
        self.server.metrics.sessions.labels(self.protocol, key.tenant).inc()
        log.info("%s publishing from %s", self.prefix, self.remote)

    async def _unpublish(self) -> None:
        pub, self.publication = self.publication, None
        if pub is None:
            return
        assert self.publish_key is not None
        self.server.metrics.sessions.labels(self.protocol, self.publish_key.tenant).dec()
        log.info("%s unpublished", self.prefix)
        await pub.close()

    def disconnect(self, reason: str) -> None:
        """Close the connection from the node's side (kick, takeover, a limit)."""
        if self.disconnected:
            return
        self.disconnected = reason
        log.warning("%s disconnected by the node: %s", self.prefix, reason)
        # EOF for the read loop, which then unpublishes (flushing the stream) and ends.
        self.writer.close()

    async def _finish(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()
        try:
            await self._unpublish()
        except Exception:
            log.exception("%s error while closing the publication", self.prefix)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.writer.wait_closed(), 2)


class _Refused(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def parse_query(query: str) -> dict[str, str]:
    return {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}


class RtmpServer:
    def __init__(self, config: RtmpConfig, sink: IngestSink, metrics: IngestMetrics) -> None:
        self.config = config
        self.sink = sink
        self.metrics = metrics
        self._server: asyncio.Server | None = None
        self._tls_server: asyncio.Server | None = None
        # The live RTMPS context: loading a new certificate into it (the node's
        # housekeeping does when the files change) serves it to every new handshake.
        self.tls_context: ssl.SSLContext | None = None
        self.tls_port = 0
        self._conns: set[asyncio.Task[None]] = set()
        self._per_ip: dict[str, int] = {}
        self.port = 0

    @property
    def serving(self) -> bool:
        return self._server is not None and self._server.is_serving()

    async def start(self) -> None:
        host, _, port = self.config.listen.rpartition(":")
        host = host.strip("[]") or "0.0.0.0"
        self._server = await asyncio.start_server(
            self._accept, host, int(port), reuse_address=True, backlog=256
        )
        self.port = self._server.sockets[0].getsockname()[1]
        if self.config.tls:
            await self._start_tls()

    def _ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            ctx.load_cert_chain(self.config.tls_cert, self.config.tls_key)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(
                f"cannot load RTMPS certificate {self.config.tls_cert!r} / key "
                f"{self.config.tls_key!r}: {exc}"
            ) from None
        return ctx

    async def _start_tls(self) -> None:
        host, _, port = self.config.tls_listen.rpartition(":")
        host = host.strip("[]") or "0.0.0.0"
        self.tls_context = self._ssl_context()
        self._tls_server = await asyncio.start_server(
            self._accept_tls,
            host,
            int(port),
            reuse_address=True,
            backlog=256,
            ssl=self.tls_context,
            # A client that never finishes TLS is a slowloris too.
            ssl_handshake_timeout=self.config.handshake_timeout,
        )
        self.tls_port = self._tls_server.sockets[0].getsockname()[1]

    async def _accept_tls(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self._accept(reader, writer, "rtmps")

    async def _accept(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, protocol: str = "rtmp"
    ) -> None:
        peer = writer.get_extra_info("peername")
        ip = str(peer[0]) if peer else "?"
        refusal = self._over_limit(ip)
        if refusal is not None:
            # Refused before a byte is read: no handshake, no session, no buffers.
            self.metrics.rejected.labels("connections").inc()
            log.info("[%s %s] connection refused: %s", protocol, ip, refusal)
            writer.transport.abort()
            return
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        self._per_ip[ip] = self._per_ip.get(ip, 0) + 1
        try:
            await _Connection(self, reader, writer, protocol).run()
        except asyncio.CancelledError:
            # Only stop() cancels connection tasks; asyncio's stream callback would log a
            # cancelled handler as an error, so end quietly instead of re-raising.
            return
        except Exception:
            log.exception("rtmp connection handler failed")
        finally:
            self._conns.discard(task)
            left = self._per_ip.pop(ip) - 1
            if left:
                self._per_ip[ip] = left

    def _over_limit(self, ip: str) -> str | None:
        cfg = self.config
        if cfg.max_connections and len(self._conns) >= cfg.max_connections:
            return f"{len(self._conns)} connections open (rtmp.max_connections)"
        if cfg.max_connections_per_ip and self._per_ip.get(ip, 0) >= cfg.max_connections_per_ip:
            return f"{self._per_ip[ip]} connections from this address (rtmp.max_connections_per_ip)"
        return None

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        if self._tls_server is not None:
            self._tls_server.close()
        for t in list(self._conns):
            t.cancel()
        if self._conns:
            await asyncio.wait(list(self._conns), timeout=15)
        for server in (self._server, self._tls_server):
            if server is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(server.wait_closed(), 2)
