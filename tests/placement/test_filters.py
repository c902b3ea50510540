from __future__ import annotations

import pytest

from placement.core import resolve_context
from placement.filters import FILTERS, first_rejection, summarize
from placement.model import FleetSnapshot, Location, Node, NodeState
from placement.policy import parse_policy
from placement.testing import make_node

NOW = 1_000_000.0


def ctx_for(
    node: Node,
    policy: dict[str, object] | None = None,
    viewer: bool = False,
    tenant: str = "school",
    slots: int = 1,
) -> object:
    snap = FleetSnapshot.build([node], "s", NOW)
    return resolve_context(
        snap,
        tenant,
        "class1",
        Location("lyon", "orange", "west", 45.76, 4.84),
        parse_policy(policy or {}),
        NOW,
        ttl=6.0,
        headroom=1.0,
        viewer=viewer,
        slots=slots,
    )


@pytest.mark.parametrize(
    ("node", "policy", "tenant", "reason"),
    [
        (make_node("a"), {}, "school", None),
        (make_node("a", tier="cloud"), {"fallback": ["edge"]}, "school", "tier not allowed"),
        (make_node("a", hb=NOW - 7), {}, "school", "no heartbeat"),
        (make_node("a", state=NodeState.DRAINING), {}, "school", "draining"),
        (make_node("a", state=NodeState.CORDONED), {}, "school", "cordoned"),
        (make_node("a", labels={"tenants": "bank"}), {}, "school", "pinned to other tenant"),
        (make_node("a", labels={"deny-tenants": "school"}), {}, "school", "tenant denied"),
        (make_node("a", isp="free"), {"filters": {"same_isp": True}}, "school", "wrong ISP"),
        (make_node("a", isp="free"), {}, "school", None),
        (make_node("a", cpu=0.9), {}, "school", "cpu>0.7"),
        (make_node("a", slots=0), {}, "school", "no transcode slots"),
        (make_node("a", egress=1.0), {}, "school", "no egress"),
        (make_node("a", lat=-33.9, lon=151.2), {}, "school", "rtt>150ms"),
    ],
)
def test_first_rejection(
    node: Node, policy: dict[str, object], tenant: str, reason: str | None
) -> None:
    assert first_rejection(node, ctx_for(node, policy, tenant=tenant)) == reason  # type: ignore[arg-type]


def test_viewers_may_join_a_draining_node() -> None:
    node = make_node("a", state=NodeState.DRAINING)
    assert first_rejection(node, ctx_for(node, viewer=True)) is None  # type: ignore[arg-type]


def test_summary_in_fit_error_style() -> None:
    text = summarize(0, 42, {"wrong ISP": 30, "cpu>0.7": 12})
    assert text == "0/42 nodes available: 30 wrong ISP, 12 cpu>0.7"


def test_every_filter_is_listed_once() -> None:
    assert len(set(FILTERS)) == len(FILTERS)
