"""Named, versioned placement policies loaded from YAML.

A policy is plain data: which tiers to try in which order, the filter limits,
the scorer weights and the selector. Validation reuses the config builder so
errors quote the field, e.g. ``'weights.load' must not be negative``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from placement.errors import InvalidField
from settings import ConfigError, build, check, to_dict

TIERS = ("edge", "mec", "cloud")
SCORERS = ("locality", "load", "cost", "latency", "affinity")
SELECTORS = ("score", "least_loaded")


@dataclass(frozen=True)
class Filters:
    max_cpu: float = 0.7
    same_isp: bool = False
    max_rtt_ms: float = 150.0

    def __post_init__(self) -> None:
        check(0 < self.max_cpu <= 1.5, "max_cpu", "must be in (0, 1.5]")
        check(self.max_rtt_ms > 0, "max_rtt_ms", "must be greater than zero")


@dataclass(frozen=True)
class Weights:
    locality: float = 5.0
    load: float = 2.0
    cost: float = 1.0
    latency: float = 2.0
    affinity: float = 1.0

    def __post_init__(self) -> None:
        for name in SCORERS:
            check(getattr(self, name) >= 0, name, "must not be negative")

    def items(self) -> tuple[tuple[str, float], ...]:
        return tuple((n, float(getattr(self, n))) for n in SCORERS)


def _viewer_weights() -> Weights:
    return Weights(locality=3.0, load=2.0, cost=1.0, latency=4.0, affinity=0.0)


@dataclass(frozen=True)
class TierCosts:
    """Backbone/egress cost per GB served from each tier (currency-neutral units)."""

    edge: float = 0.002
    mec: float = 0.008
    cloud: float = 0.02

    def __post_init__(self) -> None:
        for name in TIERS:
            check(getattr(self, name) >= 0, name, "must not be negative")


@dataclass(frozen=True)
class SessionDefaults:
    slots: int = 1
    egress_mbps: float = 8.0

    def __post_init__(self) -> None:
        check(self.slots >= 1, "slots", "must be at least 1")
        check(self.egress_mbps >= 0, "egress_mbps", "must not be negative")


@dataclass(frozen=True)
class Policy:
    name: str = "default"
    version: int = 1
    fallback: tuple[str, ...] = TIERS
    tenants: tuple[str, ...] = ()
    filters: Filters = field(default_factory=Filters)
    weights: Weights = field(default_factory=Weights)
    viewer_weights: Weights = field(default_factory=_viewer_weights)
    cost_per_gb: TierCosts = field(default_factory=TierCosts)
    selector: str = "score"
    top_k: int = 3
    min_feasible: int = 20
    session: SessionDefaults = field(default_factory=SessionDefaults)

    def __post_init__(self) -> None:
        check(bool(self.name), "name", "must not be empty")
        check(self.version >= 1, "version", "must be at least 1")
        check(len(self.fallback) > 0, "fallback", "must list at least one tier")
        for i, t in enumerate(self.fallback):
            check(t in TIERS, f"fallback[{i}]", f"must be one of {', '.join(TIERS)}, not {t!r}")
        check(len(set(self.fallback)) == len(self.fallback), "fallback", "must not repeat a tier")
        check(self.selector in SELECTORS, "selector", f"must be one of {', '.join(SELECTORS)}")
        check(1 <= self.top_k <= 50, "top_k", "must be 1-50")
        check(1 <= self.min_feasible <= 100000, "min_feasible", "must be 1-100000")

    @property
    def label(self) -> str:
        return f"{self.name}@{self.version}"

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = to_dict(self)
        return d

    def digest(self) -> str:
        """Content hash ignoring nothing: a re-PUT of a version must match it exactly."""
        raw = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(raw).hexdigest()[:16]

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def parse_policy(data: Mapping[str, Any] | None) -> Policy:
    """Validate a policy mapping; raise :class:`InvalidField` naming the field at fault."""
    if data is not None and not isinstance(data, Mapping):
        raise InvalidField("policy", "must be a mapping")
    try:
        return build(Policy, data or {})
    except ConfigError as exc:
        msg = str(exc)
        if msg.startswith("'") and "' " in msg:
            key, _, rest = msg[1:].partition("' ")
            raise InvalidField(key, rest) from None
        raise InvalidField("policy", msg) from None


def parse_policy_yaml(text: str) -> Policy:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InvalidField("policy", f"is not valid YAML: {exc}") from None
    return parse_policy(data)


def load_policy_file(path: str) -> Policy:
    try:
        with open(path, encoding="utf-8") as fh:
            return parse_policy_yaml(fh.read())
    except OSError as exc:
        raise InvalidField("policy_file", f"cannot be read: {exc.strerror}") from None


DEFAULT_POLICY = Policy()
