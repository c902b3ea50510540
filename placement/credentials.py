"""What a node may claim about itself: its registration checked against its credential.

A publisher's credential is a signed publish token (``tokens``) of its own stream,
checked with the tenant's keys: it may ask sessions for that stream only.

A node's credential (``tokens.node``) is signed by the operator and names the node
id and the tier, region, city, ISP, URL hosts and tenants that node may register.
Everything else it sends (capacity, load, coordinates) stays self-reported. Pure:
no I/O, no clock.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping, Sequence
from urllib.parse import urlsplit

from placement.errors import ClaimRefused
from placement.filters import tenant_csv
from placement.model import Node, Tier
from tokens import REASONS, Claims, TenantKeys, TokenError, verify
from tokens.node import (
    ANY,
    NodeCredential,
    NodeCredentialError,
    node_id_problem,
    sign_node,
    verify_node,
)

# Metric labels of placement_registrations_rejected_total for claims, in check order.
CLAIM_REASONS = ("tier", "region", "city", "isp", "urls", "tenants")
_SCHEMES = {"rtmp": ("rtmp", "rtmps"), "http": ("http", "https"), "whip": ("http", "https")}


def check_claims(node: Node, cred: NodeCredential) -> None:
    """Raise :class:`ClaimRefused` naming the first field ``cred`` does not allow."""
    for claim in ("tier", "region", "city", "isp"):
        value = str(getattr(node, claim))
        if not cred.allows(claim, value):
            raise ClaimRefused(
                f"node.{claim}",
                claim,
                f"is {value!r}; this node's credential allows only {getattr(cred, claim)!r}",
            )
    for name in ("rtmp", "http", "whip"):
        url = getattr(node.urls, name)
        try:
            parts = urlsplit(url)
            host = parts.hostname or ""
            parts.port  # noqa: B018 - raises on a port that is not a number
        except ValueError:
            raise ClaimRefused(f"node.urls.{name}", "urls", f"{url!r} is not a URL") from None
        if parts.scheme not in _SCHEMES[name] or not host or parts.username or parts.password:
            raise ClaimRefused(
                f"node.urls.{name}",
                "urls",
                f"{url!r} must be {' or '.join(_SCHEMES[name])}://HOST[:PORT] without user info",
            )
        if not cred.allows_host(host):
            raise ClaimRefused(
                f"node.urls.{name}",
                "urls",
                f"host {host!r} is not one this node's credential allows ({', '.join(cred.hosts)})",
            )
    if ANY not in cred.tenants:
        served = tenant_csv(node.labels, "tenants")
        allowed = set(cred.tenants)
        if not served or not served <= allowed:
            shown = ",".join(sorted(served)) or "(every tenant)"
            raise ClaimRefused(
                "node.labels.tenants",
                "tenants",
                f"is {shown}; this node's credential allows only {','.join(cred.tenants)}",
            )


def mint(
    keys: Mapping[str, str],
    node: str,
    *,
    tier: str,
    region: str,
    city: str,
    isp: str,
    hosts: Sequence[str],
    tenants: Sequence[str] = (ANY,),
    expires: int,
    key_id: str = "",
) -> str:
    """A credential for ``node`` signed with ``key_id`` of ``keys`` (default: the first
    key, as listed in ``placement.node_keys``). Raises ValueError naming what is wrong."""
    if not keys:
        raise ValueError("'placement.node_keys' holds no key to sign with")
    kid = key_id or next(iter(keys))
    if kid not in keys:
        raise ValueError(f"'placement.node_keys' has no key {kid!r}")
    if tier != ANY and tier not in {t.value for t in Tier}:
        raise ValueError(f"tier must be one of edge, mec, cloud or {ANY!r}, not {tier!r}")
    if region != ANY and (problem := node_id_problem(region, "a region")) is not None:
        raise ValueError(problem)
    cred = NodeCredential(
        kid, node, tier, region, city, isp, tuple(hosts), tuple(tenants), int(expires)
    )
    return sign_node(keys[kid], cred)


# Metric labels of placement_session_requests_rejected_total: a publish token's refusal
# reasons (tokens.REASONS), a tenant placement holds no publish keys of, and a body asking
# for another stream than the token's.
PUBLISH = "publish"
MAX_TOKEN = 2048  # as tokens.verify's bound: decoded only below it
PUBLISH_REASONS = (*REASONS, "unknown_tenant")


class PublisherRefused(ValueError):
    """A publish token does not let its bearer ask for this session. ``reason`` is one
    of :data:`PUBLISH_REASONS`."""

    def __init__(self, reason: str, message: str) -> None:
        assert reason in PUBLISH_REASONS, reason
        super().__init__(message)
        self.reason = reason


def verify_publisher(token: str, keys: Mapping[str, TenantKeys], now: float) -> Claims:
    """The claims of a genuine, unexpired publish token, checked with the keys of the
    tenant it names (``placement.publish_keys``). Raises :class:`PublisherRefused`;
    whether the request is for the token's stream is :func:`check_publisher`'s."""
    if not token:
        raise PublisherRefused("missing", "no publish token")
    if len(token) > MAX_TOKEN or token.count(".") != 1:
        raise PublisherRefused("malformed", "publish token is not two base64url parts")
    body = token.partition(".")[0]
    try:
        # The claims name the tenant whose keys check the signature; nothing in them is
        # believed before tokens.verify has checked it with those keys.
        told = Claims.parse(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    except (binascii.Error, ValueError) as exc:
        raise PublisherRefused("malformed", f"publish token cannot be decoded: {exc}") from None
    tenant = keys.get(told.tenant)
    if tenant is None or not tenant.keys:
        raise PublisherRefused(
            "unknown_tenant",
            f"tenant {told.tenant!r} has no publish keys in 'placement.publish_keys'",
        )
    try:
        return verify(token, tenant.keys, PUBLISH, told.tenant, told.stream, now)
    except TokenError as exc:
        raise PublisherRefused(exc.reason, f"publish token: {exc}") from None


def check_publisher(claims: Claims, tenant: str, stream: str) -> None:
    """Refuse (``PublisherRefused`` ``wrong_stream``) a request for another stream than the
    publish token's: a publisher may ask sessions for its own stream only."""
    if (claims.tenant, claims.stream) != (tenant, stream):
        raise PublisherRefused(
            "wrong_stream",
            f"publish token is for {claims.tenant}/{claims.stream}, "
            f"not {tenant}/{stream}: a publisher may ask sessions for its own stream only",
        )


def verify_reporter(token: str, keys: Mapping[str, str], now: float) -> NodeCredential:
    """The credential of whichever node presents ``token`` (a relay reporting another
    node): genuine and unexpired, for the node id its claims name. Raises
    :class:`NodeCredentialError`."""
    if not token:
        raise NodeCredentialError("missing", "no node credential")
    if len(token) > 4096 or token.count(".") != 1:  # tokens.node's bound
        raise NodeCredentialError("malformed", "credential is not two base64url parts")
    body = token.partition(".")[0]
    try:
        told = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    except (binascii.Error, ValueError, RecursionError):
        told = None
    node = told.get("n") if isinstance(told, dict) else None
    if not isinstance(node, str):
        raise NodeCredentialError("malformed", "credential cannot be decoded")
    # The claimed id only picks what to check against: verify_node checks the signature.
    return verify_node(token, keys, node, now)
