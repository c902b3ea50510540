"""What every hostile test asserts about one attack (see tests/hostile/)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from bench.attacks import Attack, Outcome, Result, Stage


def attack(
    stage: Stage,
    name: str,
    run: Attack,
    *,
    told: Callable[[Outcome], bool],
    counted: Callable[[Result], bool],
) -> Result:
    """Run one attack against ``stage`` and assert the node held and refused it:
    ``told`` checks what the attacker saw, ``counted`` the metrics that moved."""
    result = stage.attack(name, run)
    print(result)
    assert not result.problems(), f"{name}: {result.problems()} ({result})"
    assert told(Counter(result.outcome)), f"{name}: the attacker was told {result.outcome}"
    assert counted(result), f"{name}: counted {result.counted}"
    return result
