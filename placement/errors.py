"""Exceptions of the placement domain. HTTP status codes are chosen in :mod:`placement.app`."""

from __future__ import annotations

from typing import Any


class PlacementError(Exception):
    """Base class of every placement failure."""


class UnknownNode(PlacementError, LookupError):
    def __init__(self, node_id: str) -> None:
        super().__init__(f"unknown node {node_id!r}")
        self.node_id = node_id


class UnknownSession(PlacementError, LookupError):
    def __init__(self, session_id: str) -> None:
        super().__init__(f"unknown session {session_id!r}")
        self.session_id = session_id


class UnknownTenant(PlacementError, LookupError):
    def __init__(self, tenant: str) -> None:
        super().__init__(f"unknown tenant {tenant!r}")
        self.tenant = tenant


class UnknownStream(PlacementError, LookupError):
    def __init__(self, tenant: str, stream: str) -> None:
        super().__init__(f"no live session for stream {tenant}/{stream}")
        self.tenant = tenant
        self.stream = stream


class InvalidField(PlacementError, ValueError):
    """A request or policy value is invalid; ``field`` is its dotted name."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"'{field}' {message}")
        self.field = field
        self.message = message


class PolicyConflict(PlacementError):
    """A policy version already exists with different content."""

    def __init__(self, version: int) -> None:
        super().__init__(
            f"policy version {version} already exists with different content; "
            "use a higher 'version' or PUT that version unchanged to roll back"
        )
        self.version = version


class NodeBusy(PlacementError):
    """A node cannot be removed yet: it may still get sessions, or it holds some."""

    def __init__(self, node_id: str, reason: str) -> None:
        super().__init__(f"node {node_id!r} cannot be removed: {reason}")
        self.node_id = node_id


class NoCapacity(PlacementError):
    """No node passed the filters at any fallback step."""

    def __init__(self, summary: str, explanation: dict[str, Any]) -> None:
        super().__init__(summary)
        self.explanation = explanation


class RegistryUnavailable(PlacementError):
    """The shared registry (Redis) cannot be reached."""


class SnapshotTooOld(PlacementError):
    """Degraded mode has outlived ``placement.snapshot_max_age``."""


class ClaimRefused(PlacementError):
    """A node registered something its credential does not allow; ``field`` is its
    dotted name and ``reason`` the metric label (tier, region, city, isp, urls, tenants)."""

    def __init__(self, field: str, reason: str, message: str) -> None:
        super().__init__(f"'{field}' {message}")
        self.field = field
        self.reason = reason
        self.message = message
