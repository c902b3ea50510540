from __future__ import annotations

import pytest

from placement.selectors import Candidate, least_loaded


@pytest.mark.parametrize(
    ("nodes", "chosen"),
    [
        ([("a", 10.0, 0.8), ("b", 9.5, 0.2)], "b"),  # within the 10% band: less loaded wins
        ([("a", 10.0, 0.8), ("b", 5.0, 0.0)], "a"),  # outside the band: score wins
        ([("b", 10.0, 0.5), ("a", 10.0, 0.5)], "a"),  # full tie: node id
    ],
)
def test_select_node(nodes: list[tuple[str, float, float]], chosen: str) -> None:
    cands = [Candidate(n, "edge", t, {}, load) for n, t, load in nodes]
    assert least_loaded.select_node(cands).node_id == chosen


def test_select_node_needs_candidates() -> None:
    with pytest.raises(ValueError):
        least_loaded.select_node([])
