"""The audit log on the registry's journal, and while the registry is unreachable."""

from __future__ import annotations

from typing import Any

from placementutil import FlakyJournal

from placement.console.audit import AuditLog


def actions(entries: list[dict[str, Any]]) -> list[str]:
    return [e["action"] for e in entries]


async def test_entries_go_to_the_registry_capped_newest_first() -> None:
    reg = FlakyJournal()
    audit = AuditLog(reg, size=2)
    for i, action in enumerate(("drain", "cordon", "uncordon")):
        audit.record("alice", action, {"node_id": "e1"}, 200, float(i))
        await audit.flush()
    assert actions(await reg.journal("audit", 10)) == ["uncordon", "cordon"]
    # Another instance on the same registry (or this one restarted) reads the same.
    assert actions(await AuditLog(reg, size=2).recent()) == ["uncordon", "cordon"]


async def test_an_unreachable_registry_gets_the_entries_once_it_is_back() -> None:
    reg = FlakyJournal()
    audit = AuditLog(reg)
    audit.record("alice", "drain", {"node_id": "e1"}, 200, 1.0)
    await audit.flush()
    reg.down = True
    audit.record("bob", "cordon", {"node_id": "e2"}, 409, 2.0)
    await audit.flush()  # kept for later, not raised
    assert actions(await audit.recent()) == ["cordon", "drain"]  # this instance's own
    reg.down = False
    assert actions(await audit.recent(1)) == ["cordon"]
    assert actions(await reg.journal("audit", 10)) == ["cordon", "drain"]


async def test_without_a_registry_it_is_memory_only() -> None:
    audit = AuditLog(None)
    audit.record("alice", "drain", {}, 500, 1.0)
    await audit.flush()
    (entry,) = await audit.recent()
    assert (entry["action"], entry["ok"], entry["target"]) == ("drain", False, {})
