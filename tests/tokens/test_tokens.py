"""Signed stream tokens (tokens) and `nearcast token`."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from urllib.parse import parse_qs, urlsplit

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tokens
from nearcast.cli import publish_url
from nearcast.config import ConfigError, load

KEYS = {"k2": "new-secret-0123456789", "k1": "old-secret-0123456789"}
NOW = 1_800_000_000


def _sign(
    kid: str = "k2", action: str = "publish", stream: str = "class1", exp: int = NOW + 60
) -> str:
    return tokens.sign(KEYS[kid], kid, action, "school", stream, exp)


def test_valid_token_with_either_key_during_rotation() -> None:
    for kid in KEYS:
        claims = tokens.verify(_sign(kid), KEYS, "publish", "school", "class1", NOW)
        assert claims == tokens.Claims(kid, "publish", "school", "class1", NOW + 60)


def _forged() -> str:
    body, _, mac = _sign().partition(".")
    return f"{body}.{'A' if mac[0] != 'A' else 'B'}{mac[1:]}"


def _tampered_claims() -> str:
    # A genuine signature on other claims: the stream renamed inside the token.
    good = _sign()
    other = _sign(stream="class2")
    return f"{other.partition('.')[0]}.{good.partition('.')[2]}"


@pytest.mark.parametrize(
    ("token", "reason", "message"),
    [
        (None, "missing", "no token for publish of school/class1"),
        ("", "missing", "no token"),
        ("abc", "malformed", "two base64url parts"),
        ("!!!.???", "malformed", "cannot be decoded"),
        ("e30.AAAA", "malformed", "not version 1"),
        (
            tokens.sign("x" * 20, "k9", "publish", "school", "class1", NOW + 60),
            "unknown_key",
            "'k9'",
        ),
        (_forged(), "forged", "does not match key 'k2'"),
        (_tampered_claims(), "forged", "does not match"),
        (tokens.sign("x" * 20, "k1", "publish", "school", "class1", NOW + 60), "forged", "'k1'"),
        (_sign(action="play"), "wrong_action", "grants 'play', not 'publish'"),
        (_sign(stream="class2"), "wrong_stream", "for school/class2, not school/class1"),
        (_sign(exp=NOW - 5), "expired", "expired 5 s ago"),
        (_sign(exp=NOW), "expired", "expired 0 s ago"),
    ],
)
def test_refusals_name_the_reason(token: str | None, reason: str, message: str) -> None:
    with pytest.raises(tokens.TokenError, match=message) as info:
        tokens.verify(token, KEYS, "publish", "school", "class1", NOW)
    assert info.value.reason == reason and reason in tokens.REASONS


def test_play_tokens_use_the_same_format() -> None:
    t = tokens.sign(KEYS["k1"], "k1", "play", "school", "class1", NOW + 1)
    assert tokens.verify(t, KEYS, "play", "school", "class1", NOW).action == "play"


def test_claims_round_trip() -> None:
    c = tokens.Claims("k", "publish", "t", "s", 5)
    assert tokens.Claims.parse(bytes(c)) == c


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_any_string_is_refused_with_token_error_only(text: str) -> None:
    with pytest.raises(tokens.TokenError):
        tokens.verify(text, KEYS, "publish", "school", "class1", NOW)


@settings(max_examples=200, deadline=None)
@given(
    tenant=st.text(min_size=1, max_size=20),
    stream=st.text(min_size=1, max_size=40),
    exp=st.integers(NOW + 1, 2**40),
    flip=st.integers(0, 10_000),
)
def test_round_trip_and_any_bit_flip_is_refused(
    tenant: str, stream: str, exp: int, flip: int
) -> None:
    t = tokens.sign(KEYS["k1"], "k1", "publish", tenant, stream, exp)
    assert tokens.verify(t, KEYS, "publish", tenant, stream, NOW).expires == exp
    i = flip % len(t)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_."
    swapped = alphabet[(alphabet.index(t[i]) + 1) % len(alphabet)]
    bad = t[:i] + swapped + t[i + 1 :]
    try:
        tokens.verify(bad, KEYS, "publish", tenant, stream, NOW)
    except tokens.TokenError:
        return
    # Only a change in base64 padding bits may decode to the same bytes.
    assert tokens._unb64(bad.partition(".")[0]) == tokens._unb64(t.partition(".")[0])
    assert tokens._unb64(bad.partition(".")[2]) == tokens._unb64(t.partition(".")[2])


ENV = {
    "NEARCAST_INGEST_AUTH_TENANTS": "{school: {keys: {k2: new-secret-0123456789, "
    "k1: old-secret-0123456789}, sign_key: k1}}",
    "NEARCAST_RTMP_TENANTS": "[live, school]",
    "NEARCAST_RTMP_LISTEN": "0.0.0.0:1940",
}


def test_publish_url_is_signed_with_the_sign_key() -> None:
    cfg = load(environ=ENV)
    url = publish_url(cfg, "school", "class1", 600, now=NOW)
    parts = urlsplit(url)
    assert (parts.scheme, parts.netloc, parts.path) == ("rtmp", "127.0.0.1:1940", "/school/class1")
    token = parse_qs(parts.query)["token"][0]
    claims = tokens.verify(token, KEYS, "publish", "school", "class1", NOW)
    assert (claims.key_id, claims.expires) == ("k1", NOW + 600)
    tls = publish_url(cfg, "school", "c", 1, tls=True, host="edge.example", key_id="k2")
    assert tls.startswith("rtmps://edge.example:1936/school/c?token=")
    with pytest.raises(ValueError, match="has no keys"):
        publish_url(cfg, "live", "c", 60)
    with pytest.raises(ValueError, match="not in rtmp.tenants"):
        publish_url(cfg, "nosuch", "c", 60)


def test_nearcast_token_command() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEARCAST_")}
    out = subprocess.run(
        [sys.executable, "-m", "nearcast", "token", "school", "class1", "--ttl", "3600"],
        env={**env, **ENV},
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    url = out.stdout.strip()
    token = parse_qs(urlsplit(url).query)["token"][0]
    claims = tokens.verify(token, KEYS, "publish", "school", "class1", time.time())
    assert 3590 < claims.expires - time.time() <= 3600
    bad = subprocess.run(
        [sys.executable, "-m", "nearcast", "token", "live", "x"],
        env={**env, **ENV},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert bad.returncode == 2 and "has no keys" in bad.stderr


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"NEARCAST_INGEST_AUTH_TENANTS": "{s: {keys: {}}}"},
            "'ingest.auth.tenants.s.keys' must hold",
        ),
        ({"NEARCAST_INGEST_AUTH_TENANTS": "{s: {keys: {k: short}}}"}, "at least 16 characters"),
        (
            {"NEARCAST_INGEST_AUTH_TENANTS": "{s: {keys: {k: 0123456789abcdef}, sign_key: x}}"},
            "'ingest.auth.tenants.s.sign_key' must name",
        ),
        ({"NEARCAST_INGEST_ON_PUBLISH_URL": "ftp://x"}, "'ingest.on_publish.url' must be"),
        ({"NEARCAST_RTMP_TLS_CERT": "c.pem"}, "'rtmp.tls_cert' and 'tls_key' must be set together"),
        ({"NEARCAST_INGEST_MAX_BITRATE": "-1"}, "'ingest.max_bitrate' must be >= 0"),
    ],
)
def test_config_errors_name_the_key(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        load(environ=env)


# -- one spelling per token ------------------------------------------------------------


@pytest.mark.parametrize(
    "malleate",
    [
        lambda t: t[:10] + "!!" + t[10:],  # characters outside the alphabet were skipped
        lambda t: t + "====",  # padding was accepted
        lambda t: t.replace(".", "==."),
        lambda t: t[:5] + " " + t[5:],
        lambda t: t[:-1] + "\n" + t[-1],
    ],
)
def test_malleated_spellings_of_a_valid_token_are_refused(malleate: object) -> None:
    token = _sign()
    assert callable(malleate)
    bad = malleate(token)
    assert bad != token
    with pytest.raises(tokens.TokenError) as exc:
        tokens.verify(bad, KEYS, "publish", "school", "class1", NOW)
    assert exc.value.reason in ("malformed", "forged")


def test_unused_low_bits_of_the_last_character_are_refused() -> None:
    """32 MAC bytes leave 2 unused bits in the last base64 character: flipping them
    decodes to the same bytes, and must not verify."""
    token = _sign()
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet.index(token[-1])
    for low in (1, 2, 3):
        twin = token[:-1] + alphabet[(last & ~3) | low]
        with pytest.raises(tokens.TokenError, match="canonical"):
            tokens.verify(twin, KEYS, "publish", "school", "class1", NOW)


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=200), st.text(min_size=1, max_size=3))
def test_no_edit_of_a_token_verifies_but_the_token_itself(at: int, insert: str) -> None:
    token = _sign()
    at %= len(token) + 1
    edited = token[:at] + insert + token[at:]
    try:
        tokens.verify(edited, KEYS, "publish", "school", "class1", NOW)
    except tokens.TokenError:
        return
    raise AssertionError(f"{edited!r} verified as well as {token!r}")
