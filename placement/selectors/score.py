"""Highest weighted score wins; ties were already broken by node id when ranking."""

from __future__ import annotations

from collections.abc import Sequence

from placement.selectors import Candidate


def select_node(nodes: Sequence[Candidate]) -> Candidate:
    if not nodes:
        raise ValueError("select_node needs at least one candidate")
    return nodes[0]
