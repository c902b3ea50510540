"""The Grafana dashboards of deploy/grafana/ import cleanly and show only metrics the code
defines. (tests/e2e/test_prometheus_scrape.py runs every panel's query against a fleet.)"""

from __future__ import annotations

import json
import re
from functools import cache

import pytest
from dashboards import (
    BUILTINS,
    DASHBOARDS,
    GRAFANA,
    PENDING,
    load,
    metric_names,
    panels,
    pending,
    queries,
    substitute,
    variables,
)
from prometheus_client import CollectorRegistry

from distribute.media_metrics import MediaMetrics
from distribute.relay.metrics import RelayMetrics
from distribute.whep.server import WhepMetrics
from ingest.metrics import IngestMetrics
from placement.agent import AgentCollector
from placement.metrics import PlacementMetrics
from transcode.metrics import TranscodeMetrics

# Prometheus' own series for every target.
SCRAPE = {"up"}
# Lowest dashboard schema this directory is written for (Grafana 10 and later).
MIN_SCHEMA = 36


def exposed(registry: CollectorRegistry) -> set[str]:
    """Every sample name /metrics can carry for the registry's families."""
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_count", "_sum", "_created"),
        "summary": ("", "_count", "_sum", "_created"),
        "info": ("_info",),
    }
    out: set[str] = set()
    for family in registry.collect():
        out |= {family.name + s for s in suffixes.get(family.type, ("",))}
        out |= {s.name for s in family.samples}
    return out


@cache
def defined() -> frozenset[str]:
    """The metric names of the node's and placement's metric classes, each in a fresh
    registry."""
    node = CollectorRegistry()
    IngestMetrics(node)
    TranscodeMetrics(node)
    MediaMetrics(node)
    WhepMetrics(node)
    RelayMetrics(node)
    node.register(AgentCollector(lambda: None))
    placement = PlacementMetrics(CollectorRegistry())
    return frozenset(exposed(node) | exposed(placement.registry))


@pytest.mark.parametrize("name", DASHBOARDS)
def test_dashboard_is_valid_json_with_recent_schema_and_uid(name: str) -> None:
    d = json.loads((GRAFANA / name).read_text())
    assert d["schemaVersion"] >= MIN_SCHEMA
    assert d["uid"] and len(d["uid"]) <= 40
    assert d["title"]
    # Imported, not exported from one Grafana: no database id to clash with.
    assert d.get("id") is None


def test_every_dashboard_of_the_directory_is_tested() -> None:
    assert sorted(p.name for p in GRAFANA.glob("*.json")) == sorted(DASHBOARDS)


def test_dashboard_uids_differ() -> None:
    uids = [load(n)["uid"] for n in DASHBOARDS]
    assert len(set(uids)) == len(uids)


@pytest.mark.parametrize("name", DASHBOARDS)
def test_dashboard_picks_its_prometheus_datasource_by_variable(name: str) -> None:
    d = load(name)
    ds = [v for v in d["templating"]["list"] if v["type"] == "datasource"]
    assert len(ds) == 1 and ds[0]["query"] == "prometheus"
    ref = {"type": "prometheus", "uid": "${" + ds[0]["name"] + "}"}
    for v in d["templating"]["list"]:
        if v["type"] == "query":
            assert v["datasource"] == ref, v["name"]


@pytest.mark.parametrize("name", DASHBOARDS)
def test_every_panel_and_query_has_the_datasource(name: str) -> None:
    d = load(name)
    ds = next(v["name"] for v in d["templating"]["list"] if v["type"] == "datasource")
    ref = {"type": "prometheus", "uid": "${" + ds + "}"}
    for p in panels(d):
        assert p.get("datasource") == ref, p["title"]
        assert p["targets"], f"{p['title']} has no query"
        for t in p["targets"]:
            assert t.get("datasource", ref) == ref, (p["title"], t["refId"])
            assert t["expr"].strip(), (p["title"], t["refId"])


@pytest.mark.parametrize("name", DASHBOARDS)
def test_panel_ids_and_query_refs_are_unique(name: str) -> None:
    d = load(name)
    ids = [p["id"] for p in panels(d)]
    assert len(set(ids)) == len(ids), ids
    for p in panels(d):
        refs = [t["refId"] for t in p["targets"]]
        assert len(set(refs)) == len(refs), p["title"]


@pytest.mark.parametrize("name", DASHBOARDS)
def test_panels_do_not_overlap(name: str) -> None:
    taken: dict[tuple[int, int], str] = {}
    for p in panels(load(name)):
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in taken, f"{p['title']} overlaps {taken[(x, y)]}"
                taken[(x, y)] = p["title"]


@pytest.mark.parametrize("name", DASHBOARDS)
def test_queries_use_only_defined_variables(name: str) -> None:
    d = load(name)
    names = {v["name"] for v in d["templating"]["list"]} | set(BUILTINS)
    for q in queries(name):
        assert variables(q.expr) <= names, q


def test_every_metric_a_panel_shows_is_defined_in_the_code() -> None:
    unknown = {
        str(q): metric_names(q.expr) - defined() - SCRAPE - PENDING.keys()
        for name in DASHBOARDS
        for q in queries(name)
    }
    assert not {k: v for k, v in unknown.items() if v}, unknown


def test_pending_metrics_are_still_missing_from_the_code() -> None:
    """A metric listed in PENDING that the code now defines: take it off the list, so
    the scrape test asserts its panels too."""
    assert not PENDING.keys() & defined()
    # And a dashboard still shows it (otherwise the entry is dead).
    used = {n for name in DASHBOARDS for q in queries(name) for n in pending(q.expr)}
    assert used == PENDING.keys()


def test_every_panel_query_names_a_metric() -> None:
    for name in DASHBOARDS:
        for q in queries(name):
            assert metric_names(q.expr), q


def test_metric_name_extraction() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (instance, le) (rate(a_bucket{x="y}"}[$__rate_interval])))'
        ' > 0.1 and on (instance) b_total{instance=~"$instance"} / c offset 5m > 45 * 1e3'
    )
    assert metric_names(expr) == {"a_bucket", "b_total", "c"}
    assert variables(expr) == {"__rate_interval", "instance"}


def test_substitution_escapes_values_as_grafana_does() -> None:
    expr = 'up{instance=~"$instance"}[${__rate_interval}]'
    got = substitute(expr, {"instance": ["a.b:1", "c:2"]}, "1m")
    assert got == 'up{instance=~"(a\\\\.b:1|c:2)"}[1m]'


def test_node_dashboard_covers_the_node() -> None:
    """The panels issue 17 asks for, by the metrics they show."""
    shown = _shown("node.json")
    for metric in (
        "ingest_bytes_total",
        "ingest_rejected_total",
        "transcode_lag_seconds",
        "transcode_degradations_total",
        "transcode_segments_total",
        "viewers",
        "hls_part_delivery_seconds_bucket",
        "relay_inbound_bytes_total",
    ):
        assert metric in shown, metric


def test_placement_dashboard_covers_placement() -> None:
    shown = _shown("placement.json")
    for metric in (
        "placement_decisions_total",
        "placement_node_heartbeat_age_seconds",
        "placement_degraded",
        "placement_nodes",
    ):
        assert metric in shown, metric


def _shown(name: str) -> set[str]:
    out: set[str] = set()
    for q in queries(name):
        out |= metric_names(q.expr)
    return out


@pytest.mark.parametrize("name", DASHBOARDS)
def test_legends_name_only_labels_the_query_keeps(name: str) -> None:
    """A legend's {{label}} must survive the query's aggregation, or Grafana prints it
    empty."""
    for p in panels(load(name)):
        for t in p["targets"]:
            kept = re.findall(r"\bby\s*\(([^)]*)\)", t["expr"])
            if not kept:
                continue  # no aggregation: every label of the series is there
            labels = {x.strip() for group in kept for x in group.split(",")}
            legend = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", t.get("legendFormat", "")))
            assert legend <= labels, (p["title"], t["refId"], legend - labels)
