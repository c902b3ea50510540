"""Playback tokens: an ASGI guard in front of the media paths of tenants that require them.

A viewer of such a tenant presents ``?token=`` (signed for action ``play`` on
the tenant and stream, see :mod:`tokens`) on the multivariant
playlist. Every playlist answered to that viewer is rewritten so that each URI
in it (variants, segments, parts, init segments, preload hints, rendition
reports) carries the same token: players follow the links without knowing
about tokens. Segments and parts need the token too, so one tenant's media is
never reachable with another tenant's (or another stream's) token.

WebRTC viewers present the token as ``Authorization: Bearer`` (WHEP) or as the
query parameter. A refusal is ``403`` with the reason in the body and the log,
counted by reason.

Only playlists are buffered for rewriting (they are small); segments and parts
stream through untouched.

A viewer presents the same token on every request (a playlist reload every part
on LL-HLS), so :class:`TokenCheck` remembers a verified token until it expires:
one HMAC per viewer, not per request. With it, the HTTP fast path
(:meth:`distribute.http.MediaApp.fast`) answers a guarded tenant's media the way
it answers an open one's; whatever it cannot accept (no token, a bad one, a
``Bearer`` header) comes here, to be refused with its reason.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import parse_qs, quote

from prometheus_client import CollectorRegistry, Counter

from tokens import TokenError, verify

log = logging.getLogger(__name__)

Scope = dict[str, Any]
Receive = Callable[[], Any]
Send = Callable[[dict[str, Any]], Any]

PLAY = "play"
# A node pulling a stream to relay it signs its requests with a fleet relay key for this
# action: never a viewer's token, never usable as one (``relay.keys``).
RELAY = "relay"
# The request header every relay pull carries (its value: the pulling node's id). An edge
# node never starts a relay of its own to answer such a request (MediaApp.relays_for_relays):
# relays chain edge -> MEC -> origin, and an edge is asked by a relay only as an origin.
RELAY_HEADER = "x-nearcast-relay"
_URI_ATTR = re.compile(rb'URI="([^"]*)"')
# Paths under a stream that are not media: publishing has its own authentication, and the
# watch page is static (the media it then asks for carries the token).
_NOT_PLAYBACK = ("whip", "publish", "watch")


def _with_token(uri: bytes, token: bytes) -> bytes:
    if b"token=" in uri:
        return uri
    return uri + (b"&" if b"?" in uri else b"?") + b"token=" + token


def rewrite_playlist(body: bytes, token: str) -> bytes:
    """Add ``token`` to every URI of an M3U8 playlist (pure)."""
    tok = quote(token, safe="").encode()
    out = []
    for line in body.split(b"\n"):
        if line.startswith(b"#"):
            if b'URI="' in line:
                line = _URI_ATTR.sub(lambda m: b'URI="' + _with_token(m.group(1), tok) + b'"', line)
        elif line.strip():
            line = _with_token(line.rstrip(b"\r"), tok) + (b"\r" if line.endswith(b"\r") else b"")
        out.append(line)
    return b"\n".join(out)


class TokenCheck:
    """Playback token verification, with the verified tokens remembered until they expire.

    ``keys_for(tenant)`` gives the tenant's key id -> secret map when its
    playback requires a token, else ``None``. A remembered token is trusted only
    while ``keys_for`` still returns the same map, so replacing a tenant's keys
    takes effect at once.
    """

    def __init__(
        self,
        keys_for: Callable[[str], Mapping[str, str] | None],
        clock: Callable[[], float] = time.time,
        remember: int = 65536,
        relay_keys: Mapping[str, str] | None = None,
    ) -> None:
        self.keys_for = keys_for
        # Fleet relay keys: a relay credential (action "relay") lets another node pull
        # any guarded tenant's stream it names.
        self.relay_keys = dict(relay_keys or {})
        self.clock = clock
        self.remember = remember
        # (token, tenant, stream) -> (expiry, the key map it was verified with)
        self._ok: dict[tuple[str, str, str], tuple[float, Mapping[str, str]]] = {}
        # (playlist, token) -> the playlist with the token in every URI
        self._signed: dict[tuple[bytes, str], bytes] = {}

    def guarded(self, tenant: str) -> bool:
        return self.keys_for(tenant) is not None

    def check(self, token: str | None, tenant: str, stream: str) -> None:
        """Raise :class:`TokenError` unless ``token`` lets its bearer play ``tenant/stream``
        (an open tenant needs none)."""
        keys = self.keys_for(tenant)
        if keys is None:
            return
        now = self.clock()
        key = (token or "", tenant, stream)
        hit = self._ok.get(key)
        if hit is not None and now < hit[0] and hit[1] is keys:
            return
        try:
            claims = verify(token, keys, PLAY, tenant, stream, now)
        except TokenError as exc:
            if not self.relay_keys:
                raise
            try:
                claims = verify(token, self.relay_keys, RELAY, tenant, stream, now)
            except TokenError as relay_exc:
                if relay_exc.reason in ("wrong_stream", "expired"):
                    raise relay_exc from None  # a genuine relay credential, but not for this
                raise exc from None  # not a relay credential: the viewer's reason stands
        if len(self._ok) >= self.remember:
            self._ok = {k: v for k, v in self._ok.items() if now < v[0]}
            if len(self._ok) >= self.remember:
                self._ok.clear()
        self._ok[key] = (float(claims.expires), keys)

    def signed(self, playlist: bytes, token: str) -> bytes:
        """``playlist`` with ``token`` in every URI, rewritten once per playlist and token
        (a playlist is one bytes object until it changes)."""
        key = (playlist, token)
        out = self._signed.get(key)
        if out is None:
            if len(self._signed) >= 1024:
                self._signed.clear()
            out = self._signed[key] = rewrite_playlist(playlist, token)
        return out

    def valid(self, token: str, tenant: str, stream: str) -> bool:
        """:meth:`check` as a yes or no, for the fast path (a no is refused elsewhere)."""
        try:
            self.check(token, tenant, stream)
        except TokenError:
            return False
        return True


class PlaybackMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        # playback_rejected_total{reason}: media requests refused for their token.
        self.rejected = Counter(
            "playback_rejected_total",
            "Playback requests refused by token check",
            ["reason"],
            registry=registry,
        )


class PlaybackGuard:
    """ASGI middleware: token check for ``/{tenant}/{stream}/...`` of guarded tenants.

    ``tokens`` says which tenants need a token and checks it (an open tenant's
    request passes untouched).
    """

    def __init__(
        self,
        app: Callable[..., Any],
        tokens: TokenCheck,
        metrics: PlaybackMetrics,
        cors_origin: str = "*",
    ) -> None:
        self.app = app
        self.tokens = tokens
        self.metrics = metrics
        # A player on another origin must be able to read why it was refused.
        self._cors = [(b"access-control-allow-origin", cors_origin.encode())] if cors_origin else []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] == "OPTIONS":
            await self.app(scope, receive, send)
            return
        parts = scope["path"].strip("/").split("/")
        if len(parts) < 3 or parts[2] in _NOT_PLAYBACK or not self.tokens.guarded(parts[0]):
            await self.app(scope, receive, send)
            return
        tenant, stream = parts[0], parts[1]
        token = self._token(scope)
        try:
            self.tokens.check(token, tenant, stream)
        except TokenError as exc:
            self.metrics.rejected.labels(exc.reason).inc()
            client = (scope.get("client") or ("-",))[0]
            log.warning(
                "playback of %s/%s refused for %s (%s): %s", tenant, stream, client, exc.reason, exc
            )
            body = f"playback refused ({exc.reason}): {exc}\n".encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 403,
                    "headers": [
                        (b"content-type", b"text/plain; charset=utf-8"),
                        (b"content-length", str(len(body)).encode()),
                        (b"cache-control", b"no-store"),
                        *self._cors,
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        assert token is not None
        if scope["path"].endswith(".m3u8"):
            await self.app(scope, receive, _Rewriter(send, token))
        else:
            await self.app(scope, receive, send)

    @staticmethod
    def _token(scope: Scope) -> str | None:
        qs = scope.get("query_string", b"")
        if b"token=" in qs:
            values = parse_qs(qs.decode("latin-1")).get("token")
            if values:
                return str(values[0])
        for name, value in scope.get("headers", ()):
            if name == b"authorization" and value[:7].lower() == b"bearer ":
                return str(value[7:].decode("latin-1")).strip()
        return None


class _Rewriter:
    """A ``send`` that buffers a playlist response and adds the token to its URIs."""

    def __init__(self, send: Send, token: str) -> None:
        self.send = send
        self.token = token
        self.start: dict[str, Any] | None = None
        self.body = bytearray()

    async def __call__(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.start = message
            return
        if message["type"] != "http.response.body" or self.start is None:
            await self.send(message)
            return
        self.body += message.get("body", b"")
        if message.get("more_body"):
            return
        start, self.start = self.start, None
        body = bytes(self.body)
        if start["status"] == 200:
            body = rewrite_playlist(body, self.token)
        headers = [(k, v) for k, v in start.get("headers", ()) if k.lower() != b"content-length"]
        headers.append((b"content-length", str(len(body)).encode()))
        await self.send({**start, "headers": headers})
        await self.send({"type": "http.response.body", "body": body})
