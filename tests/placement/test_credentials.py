"""Signed node credentials (tokens.node) and what they let a node claim (placement.credentials)."""

from __future__ import annotations

import base64
from dataclasses import replace
from typing import Any

import pytest
from placementutil import FAR, NODE_KEYS, make_node, node_credential

import tokens
from placement.credentials import CLAIM_REASONS, check_claims, mint
from placement.errors import ClaimRefused
from placement.metrics import REGISTRATION_REASONS
from placement.model import Node, Tier, Urls
from tokens.node import NODE_REASONS, NodeCredentialError, node_id_problem, verify_node

NOW = 1_000_000.0
CLAIMS: dict[str, Any] = {
    "tier": "edge",
    "region": "west",
    "city": "lyon",
    "isp": "orange",
    "hosts": ("e1.test",),
    "tenants": ("school",),
}


def lyon(**changes: Any) -> Node:
    """e1 as its credential allows it: make_node's place, hosts and a school label."""
    return replace(make_node("e1", labels={"tenants": "school"}), **changes)


def test_round_trip() -> None:
    token = node_credential("e1", **CLAIMS)
    cred = verify_node(token, NODE_KEYS, "e1", NOW)
    assert (cred.node, cred.tier, cred.city, cred.hosts) == ("e1", "edge", "lyon", ("e1.test",))
    assert cred.expires == FAR


@pytest.mark.parametrize(
    ("token", "node", "keys", "reason"),
    [
        ("", "e1", NODE_KEYS, "missing"),
        ("abc", "e1", NODE_KEYS, "malformed"),
        ("é.é", "e1", NODE_KEYS, "malformed"),
        (
            node_credential("e1", keys={"k2": "another-secret-0123456789"}),
            "e1",
            NODE_KEYS,
            "unknown_key",
        ),
        (
            node_credential("e1", keys={"k1": "another-secret-0123456789"}),
            "e1",
            NODE_KEYS,
            "forged",
        ),
        (node_credential("e1"), "e2", NODE_KEYS, "wrong_node"),
        (node_credential("e1", expires=int(NOW)), "e1", NODE_KEYS, "expired"),
        # A stream token signed with the same secret is not a node credential.
        (
            tokens.sign(NODE_KEYS["k1"], "k1", "publish", "school", "e1", FAR),
            "e1",
            NODE_KEYS,
            "malformed",
        ),
    ],
)
def test_refusals(token: str, node: str, keys: dict[str, str], reason: str) -> None:
    with pytest.raises(NodeCredentialError) as exc:
        verify_node(token, keys, node, NOW)
    assert exc.value.reason == reason


def test_a_credential_has_one_spelling() -> None:
    body, mac = node_credential("e1").split(".")
    for spelling in (f"{body}=.{mac}", f"{body}.{mac}=", f" {body}.{mac}"):
        with pytest.raises(NodeCredentialError) as exc:
            verify_node(spelling, NODE_KEYS, "e1", NOW)
        assert exc.value.reason == "malformed"


def test_same_secret_different_domain() -> None:
    """The node domain keeps a node credential's MAC from matching a stream token's."""
    token = node_credential("e1")
    body, mac = token.split(".")
    assert tokens._mac(NODE_KEYS["k1"], body) != base64.urlsafe_b64decode(mac + "==")


@pytest.mark.parametrize("bad", ["a b", "", "-x", ".x", "a/b", "a{b}", "a~b", "x" * 65, "é"])
def test_node_id_rule(bad: str) -> None:
    assert node_id_problem(bad) is not None
    with pytest.raises(ValueError, match="node id"):
        mint(NODE_KEYS, bad, tier="*", region="*", city="*", isp="*", hosts=["*"], expires=FAR)


@pytest.mark.parametrize("good", ["e1", "edge-ber-1", "A.b_c-9", "x" * 64])
def test_node_id_rule_admits(good: str) -> None:
    assert node_id_problem(good) is None


def test_mint_checks_its_claims() -> None:
    with pytest.raises(ValueError, match="tier"):
        mint(NODE_KEYS, "e1", tier="fog", region="*", city="*", isp="*", hosts=["*"], expires=1)
    with pytest.raises(ValueError, match="no key 'k9'"):
        mint(
            NODE_KEYS,
            "e1",
            tier="*",
            region="*",
            city="*",
            isp="*",
            hosts=["*"],
            expires=1,
            key_id="k9",
        )
    with pytest.raises(ValueError, match="no key to sign"):
        mint({}, "e1", tier="*", region="*", city="*", isp="*", hosts=["*"], expires=1)
    with pytest.raises(ValueError, match="hosts"):
        mint(NODE_KEYS, "e1", tier="*", region="*", city="*", isp="*", hosts=[], expires=1)


def cred(**claims: Any) -> Any:
    return verify_node(node_credential("e1", **{**CLAIMS, **claims}), NODE_KEYS, "e1", NOW)


def test_what_the_credential_allows_passes() -> None:
    check_claims(lyon(), cred())
    check_claims(lyon(labels={"tenants": "school", "deny-tenants": "live", "rack": "3"}), cred())
    check_claims(
        lyon(urls=Urls("rtmps://E1.test:443", "https://e1.test", "https://e1.test")), cred()
    )
    anything = cred(tier="*", region="*", city="*", isp="*", hosts=("*",), tenants=("*",))
    check_claims(make_node("e1", tier="cloud", city="paris", labels={}), anything)


@pytest.mark.parametrize(
    ("node", "field", "reason"),
    [
        (lyon(tier=Tier.MEC), "node.tier", "tier"),
        (lyon(region="east"), "node.region", "region"),
        (lyon(city="paris"), "node.city", "city"),
        (lyon(isp="free"), "node.isp", "isp"),
        (
            lyon(urls=Urls("rtmp://evil.test", "http://e1.test", "http://e1.test")),
            "node.urls.rtmp",
            "urls",
        ),
        (
            lyon(urls=Urls("rtmp://e1.test", "http://e1.test:x", "http://e1.test")),
            "node.urls.http",
            "urls",
        ),
        (
            lyon(urls=Urls("rtmp://e1.test", "http://e1.test", "http://me@e1.test")),
            "node.urls.whip",
            "urls",
        ),
        (
            lyon(urls=Urls("http://e1.test", "http://e1.test", "http://e1.test")),
            "node.urls.rtmp",
            "urls",
        ),
        (lyon(labels={}), "node.labels.tenants", "tenants"),
        (lyon(labels={"tenants": "school,acme"}), "node.labels.tenants", "tenants"),
    ],
)
def test_claims_refused_name_the_field(node: Node, field: str, reason: str) -> None:
    with pytest.raises(ClaimRefused) as exc:
        check_claims(node, cred())
    assert (exc.value.field, exc.value.reason) == (field, reason)
    assert str(exc.value).startswith(f"'{field}'")


def test_metric_reasons_cover_every_refusal() -> None:
    assert set(REGISTRATION_REASONS) == {"invalid_id", *NODE_REASONS, *CLAIM_REASONS}
