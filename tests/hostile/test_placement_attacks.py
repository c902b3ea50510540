"""Placement attacks on the node's embedded placement API while a class plays.

Intended behaviour of the placement trust change (strict xfail until it lands):

* a node heartbeating with a valid credential but a descriptor (tier, city) that the
  credential does not allow gets 403; when this is flipped, configure in
  :func:`stage_env` that ``edge-lyon-1``'s credential allows only tier ``edge`` in
  ``lyon`` (with the key that change adds);
* a node id with a space in it gets 422 (ids are names in URLs, logs and keys).

Refusals are counted in ``placement_rejected_total{reason}`` (the name that change is
expected to give it; adjust here if it differs).
"""

from __future__ import annotations

from collections import Counter

import httpx
import pytest
from hostileutil import attack
from placementutil import make_node

from bench.attacks import NodeSubprocess, Outcome, Stage

NODE_ID, NODE_TOKEN = "edge-lyon-1", "edge-lyon-1-credential-0123"
pytestmark = pytest.mark.xfail(
    strict=True, reason="fixed in the HTTP limits / placement trust change"
)


@pytest.fixture(scope="module")
def stage_env() -> dict[str, str]:
    return {"NEARCAST_PLACEMENT_NODE_TOKENS": f"{{{NODE_ID}: {NODE_TOKEN}, '*': {NODE_TOKEN}}}"}


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
        return Counter([str(_heartbeat(node, NODE_ID, "origin", "paris"))])

    attack(
        stage,
        "node registers as an origin in paris with an edge credential",
        register_as_origin,
        told=lambda seen: seen == {"403": 1},
        counted=lambda r: r.refused("placement_rejected_total") != {},
    )


def test_node_id_with_a_space(stage: Stage) -> None:
    def register_spaced(node: NodeSubprocess) -> Outcome:
        return Counter([str(_heartbeat(node, "edge lyon", "edge", "lyon"))])

    attack(
        stage,
        "node id with a space",
        register_spaced,
        told=lambda seen: seen == {"422": 1},
        counted=lambda r: r.refused("placement_rejected_total") != {},
    )
