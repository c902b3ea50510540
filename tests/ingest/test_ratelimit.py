"""Publish attempts per address (ingest.max_publish_attempts_per_ip), sans-I/O."""

from __future__ import annotations

import pytest

from ingest.auth import PublishAuth
from ingest.config import IngestConfig
from ingest.ratelimit import PublishRateLimiter, address_key
from ingest.sink import PublishRefused


def test_ten_attempts_a_minute_then_retry_after() -> None:
    limiter = PublishRateLimiter(10, 60.0)
    for i in range(10):
        assert limiter.attempt("192.0.2.1", 100.0 + i) == 0.0
    wait = limiter.attempt("192.0.2.1", 110.0)
    assert wait == pytest.approx(50.0)  # the first attempt ages out at 160
    assert limiter.attempt("192.0.2.2", 110.0) == 0.0  # other addresses are not affected
    assert limiter.attempt("192.0.2.1", 160.0) == 0.0
    assert limiter.attempt("192.0.2.1", 160.5) > 0


def test_refused_attempts_do_not_extend_the_wait() -> None:
    limiter = PublishRateLimiter(2, 10.0)
    limiter.attempt("a", 0.0)
    limiter.attempt("a", 1.0)
    for t in range(2, 10):
        assert limiter.attempt("a", float(t)) > 0
    assert limiter.attempt("a", 10.0) == 0.0


def test_ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() -> None:
    assert address_key("2001:db8:1:2:aaaa::1") == address_key("2001:db8:1:2:bbbb::2")
    assert address_key("2001:db8:1:3::1") != address_key("2001:db8:1:2::1")
    assert address_key("::ffff:192.0.2.1") == "192.0.2.1"
    limiter = PublishRateLimiter(3, 60.0)
    for i in range(3):
        assert limiter.attempt(f"2001:db8::{i}", 0.0) == 0.0
    assert limiter.attempt("2001:db8::ffff", 0.0) > 0


def test_the_table_is_bounded() -> None:
    limiter = PublishRateLimiter(10, 60.0, max_addresses=1024)
    for i in range(100_000):
        limiter.attempt(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", i / 1000)
    assert len(limiter) <= 1024


def test_zero_is_no_limit() -> None:
    limiter = PublishRateLimiter(0, 60.0)
    assert all(limiter.attempt("a", 0.0) == 0.0 for _ in range(1000))
    assert len(limiter) == 0


def test_publish_auth_refuses_with_reason_and_retry_after_and_exempts_relays() -> None:
    auth = PublishAuth(IngestConfig(max_publish_attempts_per_ip=2))
    auth.check_rate("192.0.2.9", "live/a", now=0.0)
    auth.check_rate("192.0.2.9", "live/a", now=1.0)
    with pytest.raises(PublishRefused) as info:
        auth.check_rate("192.0.2.9", "live/a", now=2.0)
    assert info.value.reason == "publish_rate"
    assert info.value.retry_after == pytest.approx(58.0)
    assert "ingest.max_publish_attempts_per_ip" in info.value.description
    auth.check_rate("192.0.2.9", "live/a", exempt=True, now=2.0)  # a relay's hook
