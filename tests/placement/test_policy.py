from __future__ import annotations

import pytest

from placement.errors import InvalidField
from placement.policy import DEFAULT_POLICY, parse_policy, parse_policy_yaml

EXAMPLE = """
name: classes
version: 3
fallback: [edge, mec, cloud]
tenants: [school]
filters: {max_cpu: 0.8, same_isp: true, max_rtt_ms: 80}
weights: {locality: 6, load: 2, cost: 1, latency: 2, affinity: 1}
selector: least_loaded
"""


def test_yaml_profile_parses() -> None:
    p = parse_policy_yaml(EXAMPLE)
    assert p.label == "classes@3"
    assert p.filters.same_isp and p.filters.max_cpu == 0.8
    assert p.tenants == ("school",)
    assert p.selector == "least_loaded"


def test_defaults_and_round_trip() -> None:
    assert parse_policy(None) == DEFAULT_POLICY
    p = parse_policy_yaml(EXAMPLE)
    assert parse_policy_yaml(p.to_yaml()) == p
    assert p.digest() == parse_policy_yaml(p.to_yaml()).digest()


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"weights": {"load": -1}}, "weights.load"),
        ({"filters": {"max_cpu": 0}}, "filters.max_cpu"),
        ({"filters": {"max_cpu": "high"}}, "filters.max_cpu"),
        ({"fallback": ["edge", "fog"]}, "fallback[1]"),
        ({"fallback": []}, "fallback"),
        ({"selector": "random"}, "selector"),
        ({"version": 0}, "version"),
        ({"colour": "red"}, "colour"),
        ({"top_k": 0}, "top_k"),
    ],
)
def test_invalid_policy_names_the_field(data: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidField) as exc:
        parse_policy(data)
    assert exc.value.field == field


def test_bad_yaml() -> None:
    with pytest.raises(InvalidField, match="policy"):
        parse_policy_yaml("a: [")
