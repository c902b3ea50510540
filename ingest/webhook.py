"""The ``on_publish`` webhook: ask an HTTP service whether a publish may start.

Same contract as SRS's ``on_publish``, nginx-rtmp's ``on_publish`` and MediaMTX's
``authHTTPAddress``: the node POSTs a JSON description of the publish; any 2xx
answer allows it, any other status denies it. A timeout or an unreachable
service is a *failure*, which ``fail_open`` turns into an allow or a deny.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import httpx

from ingest.config import WebhookConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class HookAnswer:
    """``outcome`` is ``allowed``, ``denied``, ``timeout`` or ``error``."""

    outcome: str
    detail: str

    @property
    def failed(self) -> bool:
        return self.outcome in ("timeout", "error")


class OnPublishHook:
    def __init__(self, config: WebhookConfig, client: httpx.AsyncClient | None = None) -> None:
        self.config = config
        self._own_client = client is None
        # No redirects: a 3xx from an auth service is a misconfiguration, so it denies.
        self._client = client or httpx.AsyncClient(
            timeout=config.timeout, follow_redirects=False, trust_env=False
        )

    @property
    def enabled(self) -> bool:
        return bool(self.config.url)

    async def ask(self, payload: dict[str, Any]) -> HookAnswer:
        """POST ``payload``; never raises for a network or HTTP problem."""
        url = self.config.url
        try:
            # httpx's timeout is per phase (connect, read...); the whole call gets one bound.
            async with asyncio.timeout(self.config.timeout):
                response = await self._client.post(url, json=payload)
        except (TimeoutError, httpx.TimeoutException):
            return HookAnswer("timeout", f"no answer from {url} within {self.config.timeout:g} s")
        except httpx.HTTPError as exc:
            return HookAnswer("error", f"{url} failed: {type(exc).__name__}: {exc}")
        if 200 <= response.status_code < 300:
            return HookAnswer("allowed", f"{url} answered {response.status_code}")
        body = response.text[:200].strip()
        return HookAnswer(
            "denied", f"{url} answered {response.status_code}" + (f": {body}" if body else "")
        )

    async def aclose(self) -> None:
        if self._own_client:
            await self._client.aclose()
