"""A node serving a class, for attacks to be measured against (one node per module).

Every attack test asserts the same things through :func:`hostileutil.attack`: the class played on
with no segment gap, ``/healthz`` kept answering (p99 under 200 ms, max under 500 ms),
the node's RSS grew by less than 100 MB, and then what the attacker was told and
which metric counted it.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bench.attacks import Stage


@pytest.fixture(scope="module")
def stage_env() -> dict[str, str]:
    """``NEARCAST_*`` overrides for the module's node; a module redefines it to add some."""
    return {}


@pytest.fixture(scope="module")
def stage(tmp_path_factory: pytest.TempPathFactory, stage_env: dict[str, str]) -> Iterator[Stage]:
    """The shipped node, default limits, tenant ``live`` guarding playback with tokens."""
    try:
        # One second of /healthz either side of an attack (the bench keeps two).
        s = Stage(
            tmp_path_factory.mktemp("hostile"), stage_env, guard_playback=True, margin=1.0
        ).start()
    except RuntimeError as exc:
        raise AssertionError(str(exc)) from None
    try:
        yield s
    finally:
        s.stop()
