"""The audit log: every operator action, with the operator's name.

An action is any operator call that changes something (drain, cordon, uncordon,
decommission, policy apply or rollback, session end, kick, simulate...). Each is
logged (``[operator alice] drain node edge-ber-1 -> 200``) and kept in the
registry's ``audit`` journal, newest first and capped, for ``GET /v1/audit``: on
Redis it is shared by every instance and survives their restarts; embedded (the
in-process registry) it lives in memory. Each instance also keeps its own entries
in memory, answered while the registry is unreachable (entries not yet written are
written on the next action). The service's log is the durable record.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Mapping
from typing import Any

from placement.errors import RegistryUnavailable
from placement.registry import Registry

log = logging.getLogger(__name__)

AUDIT_SIZE = 1000
JOURNAL = "audit"
# Operator POSTs that change nothing and run often (the console validates a draft
# policy as the operator types, and replays a decision on each click): not recorded.
READ_ONLY_ACTIONS = frozenset({"validate_policy", "replay"})


class AuditLog:
    def __init__(self, registry: Registry | None = None, size: int = AUDIT_SIZE) -> None:
        self.registry = registry
        self.size = max(1, size)
        self._entries: deque[dict[str, Any]] = deque(maxlen=self.size)
        # Recorded, not yet in the registry (oldest first).
        self._pending: deque[dict[str, Any]] = deque(maxlen=self.size)

    def record(
        self,
        operator: str,
        action: str,
        target: Mapping[str, str],
        status: int,
        now: float,
        detail: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Keep and log one action; :meth:`flush` writes it to the registry."""
        entry: dict[str, Any] = {
            "at": now,
            "operator": operator,
            "action": action,
            "target": dict(target),
            "status": status,
            "ok": status < 400,
        }
        if detail:
            entry["detail"] = dict(detail)
        self._entries.appendleft(entry)
        if self.registry is not None:
            self._pending.append(entry)
        what = " ".join(f"{k} {v}" for k, v in target.items())
        extra = "".join(f" {k}={v}" for k, v in (detail or {}).items())
        where = f" {what}" if what else ""
        log.info("[operator %s] %s%s -> %d%s", operator, action, where, status, extra)
        return entry

    async def flush(self) -> None:
        """Write the recorded actions to the registry's journal; kept for the next
        flush while it is unreachable."""
        if self.registry is None or not self._pending:
            return
        batch = list(self._pending)
        try:
            await self.registry.append_journal(JOURNAL, batch, self.size)
        except RegistryUnavailable as exc:
            log.warning("audit: %d action(s) not stored in the registry yet: %s", len(batch), exc)
            return
        for _ in batch:
            self._pending.popleft()

    async def recent(self, limit: int | None = None) -> list[dict[str, Any]]:
        """Actions newest first: the registry's journal, or this instance's own while
        the registry is unreachable."""
        n = self.size if limit is None else limit
        if self.registry is not None:
            await self.flush()
            if not self._pending:
                try:
                    return await self.registry.journal(JOURNAL, n)
                except RegistryUnavailable:
                    pass
        return list(self._entries)[:n]
