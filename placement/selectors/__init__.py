"""Node-selection strategies, one per module, each behind ``select_node(nodes)``.

``nodes`` is the ranked feasible list (best total score first); a strategy
returns the one to try first. Following LiveKit's ``pkg/routing/selector``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType


@dataclass(frozen=True, slots=True)
class Candidate:
    node_id: str
    tier: str
    total: float
    scores: Mapping[str, float]
    load: float

    def to_dict(self) -> dict[str, object]:
        return {
            "node": self.node_id,
            "tier": self.tier,
            "total": round(self.total, 4),
            "scores": {k: round(v, 4) for k, v in self.scores.items()},
        }


Selector = Callable[[Sequence[Candidate]], Candidate]


def get(name: str) -> Selector:
    from placement.selectors import least_loaded, score

    table: Mapping[str, Selector] = MappingProxyType(
        {"score": score.select_node, "least_loaded": least_loaded.select_node}
    )
    return table[name]
