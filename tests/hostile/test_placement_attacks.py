"""Placement attacks on the node's embedded placement API while a class plays.

* a node heartbeating with a valid credential but a descriptor (tier, city) that the
  credential does not allow gets 403: ``edge-lyon-1``'s credential allows only tier
  ``edge`` in ``lyon``;
* a node id with a space in it gets 422 (ids are names in URLs, logs and keys).

Refusals are counted in ``placement_registrations_rejected_total{reason}``.
"""

from __future__ import annotations

from collections import Counter

import httpx
import pytest
from hostileutil import attack
from placementutil import NODE_KEYS, make_node, node_credential

from bench.attacks import NodeSubprocess, Outcome, Stage

NODE_ID = "edge-lyon-1"
NODE_TOKEN = node_credential(NODE_ID, tier="edge", city="lyon")
REJECTED = "placement_registrations_rejected_total"


@pytest.fixture(scope="module")
def stage_env() -> dict[str, str]:
    keys = ", ".join(f"{k}: {v}" for k, v in NODE_KEYS.items())
    return {"NEARCAST_PLACEMENT_NODE_KEYS": f"{{{keys}}}"}


def _heartbeat(node: NodeSubprocess, node_id: str, tier: str, city: str) -> int:
    descriptor = make_node(node_id, tier, city=city).descriptor()
    r = httpx.post(
        f"{node.http}/v1/nodes/{node_id}/heartbeat",
        json={"node": descriptor},
        headers={"Authorization": f"Bearer {NODE_TOKEN}"},
        timeout=5,
    )
    return r.status_code


def test_labels_the_credential_does_not_allow(stage: Stage) -> None:
    def register_as_origin(node: NodeSubprocess) -> Outcome:
        return Counter([str(_heartbeat(node, NODE_ID, "cloud", "paris"))])

    attack(
        stage,
        "node registers as a cloud origin in paris with an edge credential for lyon",
        register_as_origin,
        told=lambda seen: seen == {"403": 1},
        counted=lambda r: r.refused(REJECTED) == {"tier": 1},
    )


def test_node_id_with_a_space(stage: Stage) -> None:
    def register_spaced(node: NodeSubprocess) -> Outcome:
        return Counter([str(_heartbeat(node, "edge lyon", "edge", "lyon"))])

    attack(
        stage,
        "node id with a space",
        register_spaced,
        told=lambda seen: seen == {"422": 1},
        counted=lambda r: r.refused(REJECTED) == {"invalid_id": 1},
    )
