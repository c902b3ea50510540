"""What a node may claim about itself: its registration checked against its credential.

A node's credential (``tokens.node``) is signed by the operator and names the node
id and the tier, region, city, ISP, URL hosts and tenants that node may register.
Everything else it sends (capacity, load, coordinates) stays self-reported. Pure:
no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from urllib.parse import urlsplit

from placement.errors import ClaimRefused
from placement.filters import tenant_csv
from placement.model import Node, Tier
from tokens.node import ANY, NodeCredential, node_id_problem, sign_node

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
