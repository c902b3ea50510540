"""Least loaded among the candidates whose score is within 10% of the best.

Spreads a burst of classes in one city over its edge nodes instead of filling
the single best-scored node first.
"""

from __future__ import annotations

from collections.abc import Sequence

from placement.selectors import Candidate

BAND = 0.9


def select_node(nodes: Sequence[Candidate]) -> Candidate:
    if not nodes:
        raise ValueError("select_node needs at least one candidate")
    best = nodes[0].total
    band = [c for c in nodes if c.total >= best * BAND]
    return min(band, key=lambda c: (c.load, -c.total, c.node_id))
