"""The audit log: every operator action, with the operator's name.

An action is any operator call that changes something (drain, cordon, uncordon,
decommission, policy apply or rollback, session end, kick, simulate...). Each is
logged (``[operator alice] drain node edge-ber-1 -> 200``) and kept in this
instance's memory, newest first, for ``GET /v1/audit``; the service's log is the
durable record.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Mapping
from typing import Any

log = logging.getLogger(__name__)

AUDIT_SIZE = 1000
# Operator POSTs that change nothing and run often (the console validates a draft
# policy as the operator types, and replays a decision on each click): not recorded.
READ_ONLY_ACTIONS = frozenset({"validate_policy", "replay"})


class AuditLog:
    def __init__(self, size: int = AUDIT_SIZE) -> None:
        self._entries: deque[dict[str, Any]] = deque(maxlen=max(1, size))

    def record(
        self,
        operator: str,
        action: str,
        target: Mapping[str, str],
        status: int,
        now: float,
        detail: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
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
        what = " ".join(f"{k} {v}" for k, v in target.items())
        extra = "".join(f" {k}={v}" for k, v in (detail or {}).items())
        where = f" {what}" if what else ""
        log.info("[operator %s] %s%s -> %d%s", operator, action, where, status, extra)
        return entry

    def recent(self, limit: int | None = None) -> list[dict[str, Any]]:
        entries = list(self._entries)
        return entries if limit is None else entries[:limit]
