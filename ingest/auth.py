"""Publish authorization, the same for every ingest protocol.

:meth:`PublishAuth.check` takes what any protocol knows at publish time (tenant,
stream, token, client address, protocol) and either returns or raises
:class:`~ingest.sink.PublishRefused` with a metric-label reason:

- ``token_missing``, ``token_malformed``, ``token_unknown_key``, ``token_forged``,
  ``token_wrong_action``, ``token_wrong_stream``, ``token_expired``: the signed
  token (:mod:`tokens`) does not grant this publish;
- ``webhook_denied``: the on_publish service answered non-2xx;
- ``webhook_timeout``, ``webhook_error``: it did not answer and ``fail_open`` is false;
- ``publish_rate`` (:meth:`PublishAuth.check_rate`): the client's address made too many
  publish attempts lately.

Tokens are checked first, so a stranger never makes the node call the webhook.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, urlencode

import tokens
from ingest.config import IngestConfig
from ingest.ratelimit import PublishRateLimiter
from ingest.sink import PublishRefused
from ingest.webhook import OnPublishHook

log = logging.getLogger(__name__)

PUBLISH = "publish"


def client_ip(remote: str) -> str:
    """``"1.2.3.4:5678"`` or ``"[::1]:5678"`` -> the address alone."""
    host, sep, port = remote.rpartition(":")
    if not sep or not port.isdigit() or (":" in host and not host.startswith("[")):
        return remote  # no port, or a bare IPv6 address
    return host.strip("[]")


def redact_query(query: str) -> str:
    """``query`` without its token, to show a webhook or a log.

    Names are compared decoded, as the token is read (``%74oken=`` is ``token=``), and
    the rest is re-encoded, so no spelling of the name lets the secret through.
    """
    pairs = parse_qsl(query, keep_blank_values=True)
    return urlencode([(k, v) for k, v in pairs if k.strip().lower() != "token"])


class PublishAuth:
    def __init__(
        self,
        config: IngestConfig,
        node_id: str = "",
        hook: OnPublishHook | None = None,
        clock: Callable[[], float] = time.time,
        on_webhook: Callable[[str], None] | None = None,
    ) -> None:
        self.config = config
        self.node_id = node_id
        self.hook = hook or OnPublishHook(config.on_publish)
        self._clock = clock
        # Called with each webhook outcome (allowed, denied, timeout, error): a metric.
        self._on_webhook = on_webhook
        self.attempts = PublishRateLimiter(
            config.max_publish_attempts_per_ip,
            config.publish_attempts_window,
            config.publish_attempts_tracked_ips,
        )

    def check_rate(
        self, client_ip: str, where: str, exempt: bool = False, now: float | None = None
    ) -> None:
        """Count one publish attempt from ``client_ip``; refuse it (``publish_rate``) when
        the address is over ``ingest.max_publish_attempts_per_ip``."""
        if exempt:
            return
        wait = self.attempts.attempt(client_ip, time.monotonic() if now is None else now)
        if wait:
            cfg = self.config
            raise PublishRefused(
                "publish_rate",
                f"{where}: {cfg.max_publish_attempts_per_ip} publish attempts from {client_ip} "
                f"in {cfg.publish_attempts_window:g} s (ingest.max_publish_attempts_per_ip); "
                f"try again in {math.ceil(wait)} s",
                retry_after=wait,
            )

    def token_required(self, tenant: str) -> bool:
        t = self.config.auth.tenants.get(tenant)
        return t is not None and t.require_token

    async def check(
        self,
        tenant: str,
        stream: str,
        token: str | None,
        client_ip: str,
        protocol: str,
        extra: dict[str, Any] | None = None,
    ) -> None:
        """Allow (return) or refuse (raise :class:`PublishRefused`) one publish."""
        where = f"{tenant}/{stream}"
        t = self.config.auth.tenants.get(tenant)
        # A token is verified when the tenant needs one, and also when one is offered to
        # a tenant with keys: a bad token is never silently ignored.
        if t is not None and (t.require_token or token):
            try:
                claims = tokens.verify(token, t.keys, PUBLISH, tenant, stream, self._clock())
            except tokens.TokenError as exc:
                raise PublishRefused(f"token_{exc.reason}", f"{where}: {exc}") from None
            log.info("[auth %s] token of key %r accepted from %s", where, claims.key_id, client_ip)
        if self.hook.enabled:
            payload = {
                "action": PUBLISH,
                "tenant": tenant,
                "stream": stream,
                "client_ip": client_ip,
                "protocol": protocol,
                "node": self.node_id,
                **(extra or {}),
            }
            answer = await self.hook.ask(payload)
            if self._on_webhook is not None:
                self._on_webhook(answer.outcome)
            if answer.outcome == "denied":
                raise PublishRefused(
                    "webhook_denied", f"{where}: on_publish denied: {answer.detail}"
                )
            if answer.failed:
                if not self.config.on_publish.fail_open:
                    raise PublishRefused(
                        f"webhook_{answer.outcome}",
                        f"{where}: on_publish failed and fail_open is false: {answer.detail}",
                    )
                log.warning(
                    "[auth %s] on_publish failed, allowed (fail_open): %s", where, answer.detail
                )

    async def aclose(self) -> None:
        await self.hook.aclose()
