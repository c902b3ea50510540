"""Publish authorization (ingest.auth) against a real webhook HTTP service."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator

import pytest
from hookserver import HookServer

import tokens
from ingest.auth import PublishAuth, client_ip
from ingest.config import AuthConfig, IngestConfig, TenantAuth, WebhookConfig
from ingest.sink import PublishRefused

SECRET = "school-secret-0123456789"


@pytest.fixture(scope="module")
def hook() -> Iterator[HookServer]:
    h = HookServer()
    yield h
    h.close()


def _config(url: str = "", fail_open: bool = False, timeout: float = 0.5) -> IngestConfig:
    return IngestConfig(
        auth=AuthConfig(tenants={"school": TenantAuth(keys={"k1": SECRET})}),
        on_publish=WebhookConfig(url=url, timeout=timeout, fail_open=fail_open),
    )


def _check(auth: PublishAuth, tenant: str, stream: str, token: str | None = None) -> str | None:
    """None when allowed, else the refusal reason."""

    async def run() -> str | None:
        try:
            await auth.check(tenant, stream, token, "192.0.2.7", "rtmp", {"query": "a=1"})
        except PublishRefused as exc:
            return exc.reason
        finally:
            await auth.aclose()
        return None

    return asyncio.run(run())


def test_tokens_by_tenant() -> None:
    auth = PublishAuth(_config())
    good = tokens.sign(SECRET, "k1", "publish", "school", "c", int(time.time()) + 60)
    assert _check(auth, "school", "c", good) is None
    assert _check(PublishAuth(_config()), "school", "c") == "token_missing"
    assert _check(PublishAuth(_config()), "school", "other", good) == "token_wrong_stream"
    # A tenant without keys needs no token; a tenant with keys refuses a bad one even if
    # its tokens are optional.
    assert _check(PublishAuth(_config()), "live", "c") is None
    optional = IngestConfig(
        auth=AuthConfig(tenants={"school": TenantAuth(require_token=False, keys={"k1": SECRET})})
    )
    assert _check(PublishAuth(optional), "school", "c") is None
    assert _check(PublishAuth(optional), "school", "c", good + "x") == "token_forged"


@pytest.mark.parametrize(
    ("stream", "fail_open", "reason"),
    [
        ("class1", False, None),
        ("deny-me", False, "webhook_denied"),
        ("deny-me", True, "webhook_denied"),  # a denial is never a failure
        ("redirect", False, "webhook_denied"),
        ("slow1", False, "webhook_timeout"),
        ("slow2", True, None),
    ],
)
def test_webhook(hook: HookServer, stream: str, fail_open: bool, reason: str | None) -> None:
    auth = PublishAuth(_config(hook.url, fail_open), node_id="edge-7")
    start = time.monotonic()
    assert _check(auth, "live", stream) == reason
    assert time.monotonic() - start < 3, "the webhook timeout bounds the wait"
    body = next(r for r in reversed(hook.requests) if r["stream"] == stream)
    assert body == {
        "action": "publish",
        "tenant": "live",
        "stream": stream,
        "client_ip": "192.0.2.7",
        "protocol": "rtmp",
        "node": "edge-7",
        "query": "a=1",
    }


@pytest.mark.parametrize(("fail_open", "reason"), [(False, "webhook_error"), (True, None)])
def test_unreachable_webhook(fail_open: bool, reason: str | None) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    auth = PublishAuth(_config(f"http://127.0.0.1:{port}/hook", fail_open))
    assert _check(auth, "live", "c") == reason


def test_token_is_checked_before_the_webhook(hook: HookServer) -> None:
    n = len(hook.requests)
    assert _check(PublishAuth(_config(hook.url)), "school", "x") == "token_missing"
    assert len(hook.requests) == n


@pytest.mark.parametrize(
    ("remote", "ip"),
    [("1.2.3.4:5678", "1.2.3.4"), ("[::1]:99", "::1"), ("?", "?"), ("::1", "::1")],
)
def test_client_ip(remote: str, ip: str) -> None:
    assert client_ip(remote) == ip
