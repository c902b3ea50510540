"""Signed node credentials: what a node may claim about itself to the placement service.

A node credential is a token in the same format as stream tokens (two canonical
base64url parts joined by a dot, HMAC-SHA256 over the claims part) with its own
signing domain, so a stream token can never pass for a node credential or the
other way round, even when an operator reuses a secret::

    base64url(claims JSON) "." base64url(HMAC-SHA256(secret, "nc1.node." + claims part))

Claims: ``{"v": 1, "k": key id, "n": node id, "tier", "region", "city", "isp",
"hosts": [...], "tenants": [...], "e": expiry}``. Each of tier, region, city and
isp is the one value the node may register, or ``"*"`` for any; ``hosts`` are the
host names its public URLs may use; ``tenants`` are the only tenants it may serve
(it must carry a ``tenants`` label within them), ``["*"]`` for any. The claims
are signed, not secret: a refusal can name the field at fault.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass

from tokens import seal, unseal

__all__ = [
    "ANY",
    "NODE_ID",
    "NODE_REASONS",
    "NodeCredential",
    "NodeCredentialError",
    "node_id_problem",
    "sign_node",
    "verify_node",
]

VERSION = 1
ANY = "*"
_DOMAIN = b"nc1.node."
_MAX_TOKEN = 4096
# One rule for node ids (and regions, which name Redis pools): they become Redis keys,
# hash tags and space-separated fields of the registry's Lua scripts, and URL paths.
NODE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# Every refusal reason verify_node() gives; metric labels, so the set is closed.
NODE_REASONS = ("missing", "malformed", "unknown_key", "forged", "wrong_node", "expired")


def node_id_problem(value: str, what: str = "a node id") -> str | None:
    """Why ``value`` cannot be a node id (or region), or ``None`` when it can."""
    if NODE_ID.fullmatch(value):
        return None
    return (
        f"{what} is 1-64 letters, digits and '._-', starting with a letter or digit "
        f"(got {value[:70]!r})"
    )


class NodeCredentialError(ValueError):
    """A node credential is not valid. ``reason`` is one of :data:`NODE_REASONS`."""

    def __init__(self, reason: str, message: str) -> None:
        assert reason in NODE_REASONS, reason
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class NodeCredential:
    key_id: str
    node: str
    tier: str
    region: str
    city: str
    isp: str
    hosts: tuple[str, ...]
    tenants: tuple[str, ...]
    expires: int

    def __post_init__(self) -> None:
        if (problem := node_id_problem(self.node)) is not None:
            raise ValueError(problem)
        for name in ("tier", "region", "city", "isp"):
            if not getattr(self, name):
                raise ValueError(f"credential claim {name!r} is empty (use {ANY!r} for any)")
        for name in ("hosts", "tenants"):
            values = getattr(self, name)
            if not values or not all(isinstance(v, str) and v for v in values):
                raise ValueError(f"credential claim {name!r} needs non-empty names")

    def allows(self, claim: str, value: str) -> bool:
        """Whether a single-valued claim (tier, region, city, isp) admits ``value``."""
        allowed: str = getattr(self, claim)
        return allowed == ANY or allowed == value

    def allows_host(self, host: str) -> bool:
        return ANY in self.hosts or host.lower() in (h.lower() for h in self.hosts)

    def __bytes__(self) -> bytes:
        doc = {
            "v": VERSION,
            "k": self.key_id,
            "n": self.node,
            "tier": self.tier,
            "region": self.region,
            "city": self.city,
            "isp": self.isp,
            "hosts": list(self.hosts),
            "tenants": list(self.tenants),
            "e": self.expires,
        }
        return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()

    @classmethod
    def parse(cls, data: bytes) -> NodeCredential:
        try:
            doc = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            raise ValueError("credential claims are not JSON") from None
        if not isinstance(doc, dict) or doc.get("v") != VERSION:
            raise ValueError(f"credential claims are not version {VERSION}")
        scalars = {"k": str, "n": str, "tier": str, "region": str, "city": str, "isp": str}
        for name, tp in {**scalars, "e": int}.items():
            value = doc.get(name)
            if not isinstance(value, tp) or isinstance(value, bool):
                raise ValueError(f"credential claim {name!r} is missing or not a {tp.__name__}")
        for name in ("hosts", "tenants"):
            if not isinstance(doc.get(name), list):
                raise ValueError(f"credential claim {name!r} is missing or not a list")
        return cls(
            doc["k"],
            doc["n"],
            doc["tier"],
            doc["region"],
            doc["city"],
            doc["isp"],
            tuple(doc["hosts"]),
            tuple(doc["tenants"]),
            doc["e"],
        )


def sign_node(secret: str, credential: NodeCredential) -> str:
    """The token form of ``credential``, signed with ``secret`` (its ``key_id``'s)."""
    return seal(secret, bytes(credential), _DOMAIN)


def verify_node(
    token: str | None, keys: Mapping[str, str], node_id: str, now: float
) -> NodeCredential:
    """Check that ``token`` is a genuine, unexpired credential of ``node_id``.

    ``keys`` maps key id to secret (all valid at once: rotation). The signature is
    checked before any claim is believed. What the node may claim is then the
    caller's business (:meth:`NodeCredential.allows`).
    """
    if not token:
        raise NodeCredentialError("missing", f"no credential for node {node_id!r}")
    claims = unseal(
        token,
        keys,
        NodeCredential.parse,
        domain=_DOMAIN,
        max_len=_MAX_TOKEN,
        noun="credential",
        unknown_key="not a node key",
        error=NodeCredentialError,
    )
    if claims.node != node_id:
        raise NodeCredentialError(
            "wrong_node", f"credential is for node {claims.node!r}, not {node_id!r}"
        )
    if now >= claims.expires:
        raise NodeCredentialError("expired", f"credential expired {now - claims.expires:.0f} s ago")
    return claims
