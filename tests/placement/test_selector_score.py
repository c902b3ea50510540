from __future__ import annotations

import pytest

from placement.selectors import Candidate, score


def test_select_node_takes_the_first_ranked() -> None:
    nodes = [Candidate("a", "edge", 9.0, {}, 0.9), Candidate("b", "edge", 5.0, {}, 0.1)]
    assert score.select_node(nodes).node_id == "a"


def test_select_node_needs_candidates() -> None:
    with pytest.raises(ValueError):
        score.select_node([])
