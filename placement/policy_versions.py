"""The policy versions one service instance knows, and the active one.

Versions are stored in the registry. The active one is loaded at start (or
stored there, from the constructor or ``policy_file``, if none is), followed on
every refresh, since another instance may change it, and changed by ``put``: a
new, higher version, or an earlier one unchanged (a rollback).

Who activated which version, and when, is kept in the registry's ``policy``
journal (``history``, capped at HISTORY_SIZE): the console's policy history. On
Redis it is shared by every instance and survives their restarts; embedded (the
in-process registry) it lives in memory. Each instance also keeps the activations
it saw, answered while the registry is unreachable. The service's log and the
audit log record the same.
"""

from __future__ import annotations

import logging
from typing import Any

from placement.errors import InvalidField, PolicyConflict, RegistryUnavailable, UnknownTenant
from placement.policy import DEFAULT_POLICY, Policy, load_policy_file, parse_policy_yaml
from placement.registry import Registry

log = logging.getLogger(__name__)

HISTORY_SIZE = 1000
JOURNAL = "policy"


class PolicyVersions:
    def __init__(self, registry: Registry, initial: Policy | None, policy_file: str) -> None:
        self.registry = registry
        self._initial = initial
        self._policy_file = policy_file
        self._policy = initial or DEFAULT_POLICY
        self._versions: dict[int, Policy] = {}
        self._history: list[dict[str, Any]] = []

    @property
    def active(self) -> Policy:
        return self._policy

    def get(self, version: int) -> Policy | None:
        return self._versions.get(version)

    def versions(self) -> list[int]:
        return sorted(self._versions)

    def check_tenant(self, tenant: str) -> None:
        if self._policy.tenants and tenant not in self._policy.tenants:
            raise UnknownTenant(tenant)

    async def load(self) -> None:
        initial = self._initial
        if initial is None and self._policy_file:
            initial = load_policy_file(self._policy_file)
        try:
            stored = await self.registry.policies()
            self._versions = {v: parse_policy_yaml(t) for v, t in stored.items()}
            active = await self.registry.active_policy_version()
            if active is not None and active in self._versions:
                self._policy = self._versions[active]
                return
            self._policy = initial or DEFAULT_POLICY
            self._versions[self._policy.version] = self._policy
            await self.registry.store_policy(
                self._policy.version, self._policy.to_yaml(), activate=True
            )
        except RegistryUnavailable:
            self._policy = initial or DEFAULT_POLICY
            self._versions[self._policy.version] = self._policy

    async def sync(self) -> None:
        active = await self.registry.active_policy_version()
        if active is None or active == self._policy.version:
            return
        if active not in self._versions:
            stored = await self.registry.policies()
            if active not in stored:
                return
            self._versions[active] = parse_policy_yaml(stored[active])
        log.info("policy %s -> %s", self._policy.label, self._versions[active].label)
        self._policy = self._versions[active]
        # Activated by another instance, which put who and when in the journal: only
        # this instance's own copy notes it.
        self._history.append(
            _activation(self._policy, "", None, rollback=active < max(self._versions))
        )

    async def history(self) -> list[dict[str, Any]]:
        """Activations, oldest first (the last HISTORY_SIZE): version, label, operator
        and time, and whether it was a rollback. From the registry's journal; while it
        is unreachable, those this instance saw (operator and time empty and None when
        another instance made the change)."""
        try:
            return list(reversed(await self.registry.journal(JOURNAL, HISTORY_SIZE)))
        except RegistryUnavailable:
            return list(self._history)

    async def _activated(
        self, policy: Policy, operator: str, at: float | None, rollback: bool
    ) -> None:
        entry = _activation(policy, operator, at, rollback)
        self._history.append(entry)
        del self._history[:-HISTORY_SIZE]
        try:
            await self.registry.append_journal(JOURNAL, [entry], HISTORY_SIZE)
        except RegistryUnavailable as exc:
            # The version is active (stored just before): only its history line is missing.
            log.warning("policy %s: activation not stored in the history: %s", policy.label, exc)

    async def put(self, policy: Policy, operator: str = "", at: float | None = None) -> Policy:
        """Activate ``policy``: a new higher version, or an earlier one unchanged
        (rollback); ``operator`` and ``at`` go into the history."""
        stored = await self.registry.policies()
        for v, text in stored.items():
            self._versions.setdefault(v, parse_policy_yaml(text))
        existing = self._versions.get(policy.version)
        if existing is not None and existing.digest() != policy.digest():
            raise PolicyConflict(policy.version)
        latest = max(self._versions, default=0)
        if existing is None and policy.version <= latest:
            raise InvalidField(
                "version",
                f"must be greater than {latest} (the latest) or equal an earlier "
                "version, unchanged, to roll back",
            )
        await self.registry.store_policy(policy.version, policy.to_yaml(), activate=True)
        self._versions[policy.version] = policy
        by = f" by {operator}" if operator else ""
        log.info("policy %s -> %s%s", self._policy.label, policy.label, by)
        self._policy = policy
        await self._activated(policy, operator, at, rollback=existing is not None)
        return policy


def _activation(policy: Policy, operator: str, at: float | None, rollback: bool) -> dict[str, Any]:
    return {
        "version": policy.version,
        "label": policy.label,
        "operator": operator,
        "at": at,
        "rollback": rollback,
    }
