"""Signed stream tokens: HMAC-SHA256 over action, tenant, stream and expiry.

One format serves publish tokens (RTMP ``?token=``, WHIP bearer) and, later,
playback tokens: the signed ``action`` ("publish", "play") keeps one from being
used as the other. A token is two base64url parts joined by a dot::

    base64url(claims JSON) "." base64url(HMAC-SHA256(secret, "nc1." + claims part))

with claims ``{"v": 1, "k": key id, "a": action, "t": tenant, "s": stream, "e": expiry}``
(expiry in Unix seconds). The claims travel in clear so a refusal can say *why*
(expired, other stream) once the signature has proved them genuine; they carry
nothing secret. Each tenant has several keys at once, by key id, so a secret can
be rotated without cutting publishers that hold tokens signed with the old one.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from settings import check

__all__ = ["Claims", "TenantKeys", "TokenError", "sign", "verify", "REASONS"]

VERSION = 1
_DOMAIN = b"nc1."
# Every refusal reason verify() can give; they are metric labels, so the set is closed.
REASONS = (
    "missing",
    "malformed",
    "unknown_key",
    "forged",
    "wrong_action",
    "wrong_stream",
    "expired",
)
_MAX_TOKEN = 2048


class TokenError(ValueError):
    """A token does not grant what was asked. ``reason`` is one of :data:`REASONS`."""

    def __init__(self, reason: str, message: str) -> None:
        assert reason in REASONS, reason
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Claims:
    key_id: str
    action: str
    tenant: str
    stream: str
    expires: int

    def __bytes__(self) -> bytes:
        doc = {
            "v": VERSION,
            "k": self.key_id,
            "a": self.action,
            "t": self.tenant,
            "s": self.stream,
            "e": self.expires,
        }
        return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()

    @classmethod
    def parse(cls, data: bytes) -> Claims:
        try:
            doc = json.loads(data)
        except (ValueError, UnicodeDecodeError, RecursionError):
            # RecursionError: "[[[[..." nested past Python's limit fits in a 2 KiB token.
            raise ValueError("token claims are not JSON") from None
        if not isinstance(doc, dict) or doc.get("v") != VERSION:
            raise ValueError(f"token claims are not version {VERSION}")
        fields = {"k": str, "a": str, "t": str, "s": str, "e": int}
        for name, tp in fields.items():
            value = doc.get(name)
            if not isinstance(value, tp) or isinstance(value, bool):
                raise ValueError(f"token claim {name!r} is missing or not a {tp.__name__}")
        return cls(doc["k"], doc["a"], doc["t"], doc["s"], doc["e"])


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    """Decode unpadded base64url, refusing every spelling but the canonical one.

    Python's decoder skips characters outside the alphabet, takes padding, and
    ignores the unused low bits of the last character, so one token could be
    written many ways. Only the form :func:`sign` writes is accepted (it must
    re-encode to itself): a token that verifies has exactly one spelling, and
    caches keyed on it are keyed on its claims and MAC.
    """
    raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if _b64(raw) != text:
        raise ValueError("not canonical unpadded base64url")
    return raw


def _mac(secret: str, body: str, domain: bytes = _DOMAIN) -> bytes:
    return hmac.new(secret.encode(), domain + body.encode("ascii"), hashlib.sha256).digest()


class Signed(Protocol):
    """What a token's body parses to: claims naming the key they are signed with."""

    @property
    def key_id(self) -> str: ...


S = TypeVar("S", bound=Signed)


def seal(secret: str, payload: bytes, domain: bytes) -> str:
    """The token form of ``payload``: its canonical base64url, a dot, and its MAC.
    ``domain`` keeps kinds of tokens apart: one never verifies as another."""
    if not secret:
        raise ValueError("cannot sign with an empty secret")
    body = _b64(payload)
    return f"{body}.{_b64(_mac(secret, body, domain))}"


def unseal(
    token: str,
    keys: Mapping[str, str],
    parse: Callable[[bytes], S],
    *,
    domain: bytes,
    max_len: int,
    noun: str,
    unknown_key: str,
    error: Callable[[str, str], Exception],
) -> S:
    """The claims of ``token``, once it is proven genuine: well formed, signed with one
    of ``keys`` (key id -> secret, all valid at once: rotation) under ``domain``. The
    signature is checked before any claim is believed. A refusal raises
    ``error(reason, message)`` with reason ``malformed``, ``unknown_key`` or ``forged``;
    what the claims grant is the caller's to check."""
    if len(token) > max_len or token.count(".") != 1:
        raise error("malformed", f"{noun} is not two base64url parts joined by '.'")
    body, _, mac = token.partition(".")
    try:
        raw = _unb64(body)
        given = _unb64(mac)
        claims = parse(raw)
    except (binascii.Error, ValueError) as exc:
        raise error("malformed", f"{noun} cannot be decoded: {exc}") from None
    secret = keys.get(claims.key_id)
    if secret is None:
        raise error("unknown_key", f"{noun} is signed with key {claims.key_id!r}, {unknown_key}")
    if not hmac.compare_digest(given, _mac(secret, body, domain)):
        raise error("forged", f"{noun} signature does not match key {claims.key_id!r}")
    return claims


def sign(secret: str, key_id: str, action: str, tenant: str, stream: str, expires: int) -> str:
    """A token granting ``action`` on ``tenant/stream`` until ``expires`` (Unix seconds)."""
    return seal(secret, bytes(Claims(key_id, action, tenant, stream, int(expires))), _DOMAIN)


def verify(
    token: str | None,
    keys: Mapping[str, str],
    action: str,
    tenant: str,
    stream: str,
    now: float,
) -> Claims:
    """Check that ``token`` grants ``action`` on ``tenant/stream`` at ``now``.

    ``keys`` maps key id to secret: every key listed is valid (rotation). Raises
    :class:`TokenError` naming the first thing wrong; the signature is checked
    before any claim is believed, so a forged token never reads as "expired".
    """
    if not token:
        raise TokenError("missing", f"no token for {action} of {tenant}/{stream}")
    claims = unseal(
        token,
        keys,
        Claims.parse,
        domain=_DOMAIN,
        max_len=_MAX_TOKEN,
        noun="token",
        unknown_key=f"unknown for {tenant}",
        error=TokenError,
    )
    if claims.action != action:
        raise TokenError("wrong_action", f"token grants {claims.action!r}, not {action!r}")
    if (claims.tenant, claims.stream) != (tenant, stream):
        raise TokenError(
            "wrong_stream",
            f"token is for {claims.tenant}/{claims.stream}, not {tenant}/{stream}",
        )
    if now >= claims.expires:
        raise TokenError("expired", f"token expired {now - claims.expires:.0f} s ago")
    return claims


@dataclass(frozen=True)
class TenantKeys:
    """Token keys of one tenant (publish or playback): key id -> secret, all valid at once
    (rotation)."""

    require_token: bool = True
    keys: dict[str, str] = field(default_factory=dict)
    # Key id `nearcast token` signs with; empty means the first key listed.
    sign_key: str = ""

    def __post_init__(self) -> None:
        check(
            not self.require_token or bool(self.keys),
            "keys",
            "must hold at least one key when require_token is true",
        )
        for kid, secret in self.keys.items():
            check(bool(kid) and "." not in kid, f"keys.{kid}", "key id must be non-empty, no '.'")
            check(len(secret) >= 16, f"keys.{kid}", "secret must be at least 16 characters")
        check(
            not self.sign_key or self.sign_key in self.keys,
            "sign_key",
            "must name one of the tenant's keys",
        )

    def signing_key(self) -> tuple[str, str]:
        if not self.keys:
            raise ValueError("the tenant has no keys to sign with")
        kid = self.sign_key or next(iter(self.keys))
        return kid, self.keys[kid]
