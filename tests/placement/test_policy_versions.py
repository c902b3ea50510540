"""The policy activation history on the registry's journal, and while it is unreachable."""

from __future__ import annotations

from placementutil import FlakyJournal

from placement.policy import parse_policy_yaml
from placement.policy_versions import PolicyVersions


async def test_activations_are_journaled_and_kept_here_while_it_fails() -> None:
    reg = FlakyJournal()
    versions = PolicyVersions(reg, None, "")
    await versions.load()
    await versions.put(parse_policy_yaml("name: edge-first\nversion: 2\n"), "alice", 10.0)
    reg.down = True  # the activation is stored; only its history line waits
    await versions.put(versions.get(1) or versions.active, "bob", 20.0)
    assert versions.active.version == 1
    local = [(e["label"], e["operator"], e["rollback"]) for e in await versions.history()]
    assert local == [("edge-first@2", "alice", False), ("default@1", "bob", True)]
    reg.down = False
    # A restarted instance reads the journal: what reached the registry.
    again = PolicyVersions(reg, None, "")
    await again.load()
    assert again.active.version == 1
    assert [(e["label"], e["at"]) for e in await again.history()] == [("edge-first@2", 10.0)]
