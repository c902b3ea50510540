from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from placementutil import make_node

from placement.core import resolve_context
from placement.filters import FILTERS, Context, feasible, first_rejection, summarize
from placement.model import FleetSnapshot, Location, Node, NodeState
from placement.policy import Filters, Policy, parse_policy

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


# ----- the scan's fast path must agree with the filter chain on every node and request


@st.composite
def node_and_context(draw: st.DrawFn) -> tuple[Node, Context]:
    labels = draw(
        st.sampled_from(
            [{}, {"tenants": "school"}, {"tenants": "other"}, {"deny-tenants": "school, x"}]
        )
    )
    node = make_node(
        draw(st.sampled_from(["n1", "n2"])),
        tier=draw(st.sampled_from(["edge", "mec", "cloud"])),
        city=draw(st.sampled_from(["lyon", "paris"])),
        region=draw(st.sampled_from(["west", "north"])),
        isp=draw(st.sampled_from(["orange", "free"])),
        lat=draw(st.floats(40, 50)),
        lon=draw(st.floats(-2, 8)),
        slots=draw(st.integers(0, 4)),
        egress=draw(st.sampled_from([0.0, 10.0, 100.0])),
        viewers=draw(st.integers(0, 3)),
        cpu=draw(st.floats(0, 1.2)),
        hb=draw(st.floats(990.0, 1000.0)),
        state=draw(st.sampled_from(list(NodeState))),
        labels=labels,
    )
    policy = Policy(
        filters=Filters(
            max_cpu=draw(st.sampled_from([0.5, 0.7, 1.0])),
            same_isp=draw(st.booleans()),
            max_rtt_ms=draw(st.sampled_from([5.0, 20.0, 150.0])),
        )
    )
    ctx = Context(
        tenant="school",
        stream_key="school/c1",
        city=draw(st.sampled_from(["lyon", "paris", ""])),
        isp=draw(st.sampled_from(["orange", "free", ""])),
        region=draw(st.sampled_from(["west", ""])),
        lat=draw(st.one_of(st.none(), st.floats(40, 50))),
        lon=draw(st.one_of(st.none(), st.floats(-2, 8))),
        slots=draw(st.integers(1, 3)),
        egress_mbps=draw(st.sampled_from([0.0, 8.0, 50.0])),
        policy=policy,
        now=1000.0,
        ttl=draw(st.sampled_from([0.5, 6.0])),
        headroom=draw(st.sampled_from([0.5, 1.0])),
        viewer=draw(st.booleans()),
        exclude=draw(st.sampled_from([frozenset(), frozenset({"n1"})])),
        tiers=frozenset(draw(st.lists(st.sampled_from(["edge", "mec", "cloud"]), max_size=3))),
        pending=draw(st.sampled_from([{}, {"n1": (1, 10.0)}, {"n2": (3, 90.0)}])),
    )
    return node, ctx


def test_fast_path_covers_exactly_the_filter_chain() -> None:
    # A filter added to the chain must be added to feasible() too.
    assert [f.__name__ for f in FILTERS] == [
        "tier_allowed",
        "not_excluded",
        "healthy",
        "schedulable",
        "tenant_labels",
        "same_isp",
        "cpu",
        "capacity",
        "max_rtt",
    ]


@settings(max_examples=200, deadline=None)
@given(node_and_context())
def test_fast_path_agrees_with_first_rejection(case: tuple[Node, Context]) -> None:
    node, ctx = case
    assert feasible(node, ctx) == (first_rejection(node, ctx) is None)
