"""The shipped Grafana dashboards (deploy/grafana/*.json) as the tests read them: their
panels' PromQL with template variables substituted the way Grafana does, and the metric
names each expression selects."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARDS = ("node.json", "placement.json")

# Metrics a dashboard shows that this build does not export yet, with what brings them.
# A test asserts each is still absent, so the entry (and the check it exempts) must go
# the day the code lands.
PENDING: dict[str, str] = {}

_VARIABLE = r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]"

# Grafana's own variables (not template variables of the dashboard).
BUILTINS = ("__rate_interval", "__interval", "__range")


@dataclass(frozen=True)
class Query:
    dashboard: str
    panel: str
    ref: str
    expr: str

    def __str__(self) -> str:
        return f"{self.dashboard} / {self.panel} / {self.ref}: {self.expr}"


def load(name: str) -> dict[str, Any]:
    return json.loads((GRAFANA / name).read_text())  # type: ignore[no-any-return]


def panels(dashboard: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, those inside collapsed rows too."""
    for p in dashboard["panels"]:
        yield p
        yield from p.get("panels", ())


def queries(name: str) -> list[Query]:
    d = load(name)
    return [
        Query(name, p["title"], t["refId"], t["expr"])
        for p in panels(d)
        for t in p.get("targets", ())
    ]


def variables(expr: str) -> set[str]:
    """The ``$name`` / ``${name}`` / ``[[name]]`` variables an expression uses."""
    return {a or b or c for a, b, c in re.findall(_VARIABLE, expr)}


def substitute(expr: str, values: Mapping[str, Sequence[str]], rate_interval: str) -> str:
    """``expr`` as Grafana sends it with ``values`` selected for each variable (all of a
    multi-value variable's values: a regex alternation of the escaped values, as Grafana
    formats them for Prometheus) and ``$__rate_interval`` given."""

    def one(name: str) -> str:
        if name == "__rate_interval":
            return rate_interval
        # Regex-escaped, then each backslash doubled: the value sits in a PromQL string.
        vals = [re.escape(v).replace("\\", "\\\\") for v in values[name]]
        return vals[0] if len(vals) == 1 else "(" + "|".join(vals) + ")"

    return re.sub(
        _VARIABLE,
        lambda m: one(m.group(1) or m.group(2) or m.group(3)),
        expr,
    )


_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool"}
_KEYWORDS |= {"and", "or", "unless", "offset", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (not functions, labels, keywords)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", expr)
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    names = set()
    for m in re.finditer(r"(?<![\w.$])([a-zA-Z_:][\w:]*)\s*(\(?)", expr):
        if not m.group(2) and m.group(1).lower() not in _KEYWORDS:
            names.add(m.group(1))
    return names


def pending(expr: str) -> set[str]:
    """The :data:`PENDING` metrics ``expr`` needs."""
    return metric_names(expr) & PENDING.keys()
