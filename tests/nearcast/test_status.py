"""``nearcast status``: a real node that embeds placement, and a placement service with a
node registered to it, read as an operator reads them in a terminal. (The placement
service logs JSON lines here, node.log_format applying to it too.)"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from nodeutil import SMALL, SMALL_LADDER, NodeProcess, Publisher, wait_for
from placementutil import PlacementProcess, free_port, node_credential

from nearcast import cli, status

OP = "op-test"
# The node's CPU is shared with whatever else the machine runs: placement's CPU filter
# must not turn it away for that.
POLICY = {"version": 2, "name": "tests", "filters": {"max_cpu": 1.5}}


def run_status(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    rc = cli.main(["status", *args])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    """A node without placement.url (its own placement service), publishing
    live/statuscam, with one session placed on it."""
    tmp = tmp_path_factory.mktemp("status")
    node = NodeProcess(
        tmp / "node.log",
        NEARCAST_NODE_ID="edge-status-1",
        NEARCAST_NODE_CITY="lyon",
        NEARCAST_PLACEMENT_OPERATOR_TOKEN=OP,
        NEARCAST_INGEST_OPERATOR_TOKEN=OP,
        NEARCAST_TRANSCODE_LADDER=SMALL_LADDER,
        NEARCAST_HLS_SEGMENT_DURATION="1",
    )
    pub = Publisher(SMALL, node.rtmp("live/statuscam"))
    try:
        auth = {"Authorization": f"Bearer {OP}"}
        wait_for(
            lambda: node.get("/live/statuscam/180p/index.m3u8").text.count("#EXTINF") >= 1,
            90,
            "a segment of live/statuscam",
        )
        node.client.put("/v1/policy", json=POLICY, headers=auth).raise_for_status()

        def placed() -> bool:
            where = {"city": "lyon", "region": "local", "isp": "local"}
            body = {"tenant": "live", "stream": "statuscam", "location": where}
            r = node.client.post("/v1/sessions", json=body, headers=auth)
            return r.status_code == 201

        wait_for(placed, 30, "a session placed on the node")
        yield node
    finally:
        pub.stop()
        node.stop()


def test_status_of_a_node_with_placement_prints_the_fleet_sessions_and_decisions(
    embedded: NodeProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, out, err = run_status(capsys, embedded.http, "--token", OP)
    assert rc == 0, err
    nodes = out.split("NODES\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert nodes[0].split()[:4] == ["TIER", "CITY", "NODE", "STATE"]
    assert nodes[1].split()[:4] == ["edge", "lyon", "edge-status-1", "ready"]
    decisions = out.split("RECENT DECISIONS", 1)[1]
    assert "live/statuscam" in decisions and "edge-status-1" in decisions
    # The node's own streams, its publisher included (the operator's view).
    local = out.split("THIS NODE (edge-status-1)", 1)[1]
    assert "live/statuscam" in local and "rtmp 127.0.0.1:" in local


def test_status_json_is_the_data_read_and_the_token_may_come_from_the_environment(
    embedded: NodeProcess, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(status.TOKEN_ENV, OP)
    rc, out, err = run_status(capsys, embedded.http, "--json", "--decisions", "1")
    assert rc == 0, err
    data: dict[str, Any] = json.loads(out)
    assert data["kind"] == "fleet"
    assert [n["id"] for n in data["nodes"]] == ["edge-status-1"]
    assert len(data["decisions"]) == 1
    assert data["decisions"][0]["request"]["stream"] == "statuscam"
    assert [s["stream"] for s in data["local"]["streams"]] == ["statuscam"]


def test_status_node_option_shows_the_node_its_streams_and_viewers(
    embedded: NodeProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, out, err = run_status(capsys, embedded.http, "--node", "--token", OP)
    assert rc == 0, err
    assert out.startswith(f"node edge-status-1 at {embedded.http}: edge in lyon")
    assert "viewers: 0 WebRTC" in out
    rows = out.split("STREAMS (1)\n", 1)[1].splitlines()
    assert rows[0].split()[:3] == ["STREAM", "STATE", "PUBLISHER"]
    assert rows[1].split()[:3] == ["live/statuscam", "live", "rtmp"]


def test_status_without_a_token_shows_the_node_and_says_the_fleet_needs_one(
    embedded: NodeProcess, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(status.TOKEN_ENV, raising=False)
    rc, out, err = run_status(capsys, embedded.http)
    assert rc == 0, err
    assert out.startswith("node edge-status-1")
    assert "anonymous view" in out
    assert "fleet not shown:" in out and "401" in out and status.TOKEN_ENV in out


def test_status_with_a_wrong_token_fails_with_401(
    embedded: NodeProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, out, err = run_status(capsys, embedded.http, "--token", "nope")
    assert rc == 1 and out == ""
    assert err.startswith("nearcast status: ") and "401 Unauthorized" in err
    assert "the token was refused" in err


def test_status_of_an_unreachable_url_fails_naming_it(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    rc, out, err = run_status(capsys, url, "--timeout", "2")
    assert rc == 1 and out == ""
    assert err.startswith(f"nearcast status: cannot reach {url}")


def test_status_refuses_a_url_that_is_not_http(capsys: pytest.CaptureFixture[str]) -> None:
    rc, _out, err = run_status(capsys, "rtmp://127.0.0.1:1935")
    assert rc == 2 and "http(s)://" in err


class Placement(PlacementProcess):
    """A placement service (registry in memory) logging JSON, as a node would."""

    def __init__(self, tmp: Path) -> None:
        super().__init__(
            tmp,
            private_redis=False,
            config={"operator_token": OP},
            env={"NEARCAST_NODE_LOG_FORMAT": "json"},
        )


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Placement, NodeProcess]]:
    tmp = tmp_path_factory.mktemp("status-pair")
    placement = Placement(tmp)
    node: NodeProcess | None = None
    try:
        node = NodeProcess(
            tmp / "node.log",
            NEARCAST_NODE_ID="mec-status-2",
            NEARCAST_NODE_TIER="mec",
            NEARCAST_NODE_CITY="paris",
            NEARCAST_INGEST_OPERATOR_TOKEN=OP,
            NEARCAST_PLACEMENT_URL=placement.base,
            NEARCAST_PLACEMENT_NODE_TOKEN=node_credential("mec-status-2"),
            NEARCAST_PLACEMENT_LIVENESS_HEARTBEAT_INTERVAL="0.25",
            NEARCAST_PLACEMENT_LIVENESS_TTL="2",
            NEARCAST_PLACEMENT_LIVENESS_FULL_STATS_INTERVAL="1",
        )
        wait_for(
            lambda: node is not None and node.metric("placement_agent_registered") == 1,
            20,
            "the node to register",
        )
        yield placement, node
    finally:
        if node is not None:
            node.stop()
        placement.stop()


def test_status_of_a_placement_service_lists_its_nodes(
    pair: tuple[Placement, NodeProcess], capsys: pytest.CaptureFixture[str]
) -> None:
    placement, _node = pair

    def listed() -> str | None:
        rc, out, err = run_status(capsys, placement.base, "--token", OP)
        assert rc == 0, err
        return out if "mec-status-2" in out else None

    out = wait_for(listed, 15, "the node in the fleet's status")
    row = next(line for line in out.splitlines() if "mec-status-2" in line)
    assert row.split()[:4] == ["mec", "paris", "mec-status-2", "ready"]
    assert "THIS NODE" not in out  # a placement service holds no stream


def test_status_of_a_node_whose_placement_is_elsewhere_shows_the_node(
    pair: tuple[Placement, NodeProcess], capsys: pytest.CaptureFixture[str]
) -> None:
    _placement, node = pair
    rc, out, err = run_status(capsys, node.http, "--token", OP)
    assert rc == 0, err
    assert out.startswith("node mec-status-2") and "STREAMS (0)" in out


def test_a_placement_service_with_json_logging_writes_only_json_lines(
    pair: tuple[Placement, NodeProcess],
) -> None:
    placement, _node = pair
    # Its access log has the node's heartbeats by now.

    def heartbeats() -> str | None:
        text = placement.log_path.read_text()
        return text if "heartbeat" in text else None

    text = wait_for(heartbeats, 15, "a heartbeat in placement's access log")
    for raw in text.splitlines():
        line = json.loads(raw)
        assert {"time", "level", "logger", "message"} <= line.keys(), line
    assert any(json.loads(raw)["logger"] == "uvicorn.access" for raw in text.splitlines())


def test_an_exported_operator_token_does_not_stop_a_node_loading_its_config() -> None:
    from nearcast.config import load

    assert load(environ={status.TOKEN_ENV: OP}).node.id == "edge-local"
