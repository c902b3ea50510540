"""``nearcast fleet``: the topology format, its errors, the state file and the command line.

The fleet itself, running, is tests/e2e/test_fleet_scenario.py; here only what needs
no fleet, plus one start that fails and must leave nothing behind.
"""

from __future__ import annotations

import copy
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from placementutil import REDIS_URL, free_port, redis_available

from nearcast import cli, fleet
from nearcast.config import Config
from settings import build

SAMPLE: dict[str, Any] = yaml.safe_load(fleet.DEFAULT_TOPOLOGY.read_text())


def _node(**over: Any) -> dict[str, Any]:
    return {
        "id": "e1",
        "tier": "edge",
        "region": "r1",
        "city": "lyon",
        "isp": "orange",
        "lat": 45.7,
        "lon": 4.8,
        **over,
    }


def _topology(**over: Any) -> dict[str, Any]:
    return {"nodes": [_node()], **over}


def test_the_shipped_topology_is_two_cities_of_two_edges_a_mec_and_a_cloud() -> None:
    topo = fleet.load_topology()
    assert topo.cities() == ["berlin", "munich"]
    by_tier = {t: [n for n in topo.nodes if n.tier == t] for t in fleet.TIERS}
    assert [len(by_tier[t]) for t in fleet.TIERS] == [4, 1, 1]
    for city in topo.cities():
        isps = {n.isp for n in by_tier["edge"] if n.city == city}
        assert len(isps) == 2, f"{city}'s edge nodes should be on two ISPs"
    service = build(Config, {"placement": dict(topo.placement.config)}).placement
    for spec in topo.nodes:
        cfg = build(Config, topo.node_config(spec, "http://127.0.0.1:1", "rec"))
        # No node calibrates at start (six would share the same cores), and the ladder
        # is small enough for six nodes on a laptop.
        assert cfg.transcode.capacity_units > 0, spec.id
        assert len(cfg.transcode.ladder) <= 2
        assert max(r.height for r in cfg.transcode.ladder) <= 360
        # Nodes and service agree on liveness; each node has its own ports (0: free).
        assert cfg.placement.liveness == service.liveness
        assert cfg.rtmp.listen == "127.0.0.1:0" and cfg.http.listen == "127.0.0.1:0"
        assert (cfg.node.id, cfg.node.city, cfg.node.isp) == (spec.id, spec.city, spec.isp)
        assert topo.demo.tenant in cfg.rtmp.tenants
    # The whole machine's CPU is every node's CPU: the policy must not filter on it.
    assert topo.placement.policy["filters"]["max_cpu"] == 1.5


def test_a_node_config_goes_over_the_defaults_key_by_key() -> None:
    topo = fleet.parse_topology(
        _topology(
            defaults={"hls": {"window": 8, "segment_duration": 1.0}, "rtmp": {"tenants": ["a"]}},
            nodes=[_node(config={"hls": {"window": 10}}), _node(id="e2")],
            demo={"tenant": "a"},
        )
    )
    first = topo.node_config(topo.nodes[0], "http://p:1", "rec")
    assert first["hls"] == {"window": 10, "segment_duration": 1.0}
    assert topo.node_config(topo.nodes[1], "http://p:1", "rec")["hls"]["window"] == 8
    assert first["placement"]["url"] == "http://p:1"
    assert first["record"]["dir"] == "rec"


BAD: list[tuple[str, Any, str]] = [
    ("not a mapping", [1, 2], "must be a mapping with 'nodes'"),
    ("unknown key", _topology(nodez=[]), "'nodez' is not a topology key"),
    ("no nodes", {"nodes": []}, "'nodes' must be a non-empty list"),
    ("no city", {"nodes": [{**_node(), "city": None}]}, "'nodes[0] (e1).city' is required"),
    ("bad tier", {"nodes": [_node(tier="fog")]}, "'nodes[0] (e1).tier' must be one of edge"),
    ("bad id", {"nodes": [_node(id="a b")]}, "'nodes[0].id' a node id is 1-64"),
    ("twice", {"nodes": [_node(), _node()]}, "'nodes[1] (e1).id' repeats the id"),
    ("bad region", {"nodes": [_node(region="eu west")]}, "'nodes[0] (e1).region' a region"),
    ("lat", {"nodes": [_node(lat=91)]}, "'nodes[0] (e1).lat' must be a number between -90"),
    ("port", {"nodes": [_node(http_port=70000)]}, "'nodes[0] (e1).http_port' must be a port"),
    (
        "same port",
        {"nodes": [_node(rtmp_port=1935), _node(id="e2", rtmp_port=1935)]},
        "'nodes[1] (e2).rtmp_port' 1935 is also nodes[0] (e1).rtmp_port",
    ),
    (
        "node key",
        {"nodes": [_node(colour="red")]},
        "'nodes[0].colour' is not a topology key",
    ),
    (
        "managed default",
        _topology(defaults={"rtmp": {"listen": "0.0.0.0:1935"}}),
        "'defaults.rtmp.listen' is set by the fleet; use 'rtmp_port'",
    ),
    (
        "managed node key",
        {"nodes": [_node(config={"node": {"city": "paris"}})]},
        "'nodes[0] (e1).config.node.city' is set by the fleet; use 'city'",
    ),
    (
        "unknown nearcast key",
        _topology(defaults={"hls": {"windw": 3}}),
        "nodes[0] (e1): 'hls.windw' is not a known key",
    ),
    (
        "bad nearcast value",
        {"nodes": [_node(config={"transcode": {"capacity_units": -1}})]},
        "nodes[0] (e1): 'transcode.capacity_units' must be zero (calibrate) or positive",
    ),
    (
        "managed placement key",
        _topology(placement={"config": {"listen": "0.0.0.0:8090"}}),
        "'placement.config.listen' is set by the fleet; use 'placement.port'",
    ),
    (
        "liveness",
        _topology(placement={"config": {"liveness": {"heartbeat_interval": 2, "ttl": 3}}}),
        "'placement.config.liveness.ttl' must be at least twice",
    ),
    (
        "policy",
        _topology(placement={"policy": {"filters": {"max_cpu": 2}}}),
        "'placement.policy.filters.max_cpu' must be in (0, 1.5]",
    ),
    (
        "redis",
        _topology(placement={"redis": "http://127.0.0.1:6379"}),
        "'placement.redis' must be a redis://",
    ),
    ("host", _topology(host="0.0.0.0"), "'host' must be one address that clients reach"),
    (
        "demo tenant",
        _topology(demo={"tenant": "school"}),
        "'demo.tenant' 'school' is not in 'rtmp.tenants' of nodes[0] (e1)",
    ),
]


@pytest.mark.parametrize(("data", "message"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_a_bad_topology_is_refused_naming_the_key(data: Any, message: str) -> None:
    with pytest.raises(fleet.TopologyError) as err:
        fleet.parse_topology(copy.deepcopy(data), "t.yml")
    assert str(err.value).startswith("t.yml: ")
    assert message in str(err.value)


def test_an_unreadable_or_invalid_topology_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(fleet.TopologyError, match="cannot be read"):
        fleet.load_topology(tmp_path / "missing.yml")
    bad = tmp_path / "bad.yml"
    bad.write_text("nodes: [\n")
    with pytest.raises(fleet.TopologyError, match="is not valid YAML"):
        fleet.load_topology(bad)


def _state(tmp_path: Path) -> fleet.FleetState:
    me = fleet.Proc("placement", os.getpid(), fleet._start_time(os.getpid()), "p.log")
    state = fleet.FleetState(
        run_dir=str(tmp_path),
        topology="t.yml",
        placement_url="http://127.0.0.1:8090",
        operator_token="tok",
        redis="redis://127.0.0.1:6379/0",
        key_prefix="fleet-x",
        owns_prefix=True,
        heartbeat_interval=1.0,
        placement=me,
        demo=fleet.Demo("school", "class 1", "samples/lecture-720p.mp4"),
    )
    for i, city in enumerate(("berlin", "berlin", "munich")):
        state.nodes.append(
            fleet.FleetNode(
                f"e{i}",
                "edge",
                "r",
                city,
                "isp",
                f"rtmp://127.0.0.1:{2000 + i}",
                f"http://127.0.0.1:{3000 + i}",
                fleet.Proc(f"e{i}", 1, "1", f"e{i}.log"),
            )
        )
    return state


def test_the_state_file_round_trips(tmp_path: Path) -> None:
    state = _state(tmp_path)
    assert fleet.FleetState.from_json(state.to_json()) == state
    with pytest.raises(fleet.FleetError, match="version"):
        fleet.FleetState.from_json('{"version": 99}')
    fleet.state_path(tmp_path).write_text("{not json")
    with pytest.raises(fleet.FleetError, match="not a fleet state file"):
        fleet.read_state(tmp_path)


def test_alive_knows_an_ended_child_and_a_reused_pid() -> None:
    me = fleet.Proc("me", os.getpid(), fleet._start_time(os.getpid()), "")
    assert fleet.alive(me)
    assert not fleet.alive(fleet.Proc("me", os.getpid(), "1", ""))  # another start time
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    proc = fleet.Proc("child", child.pid, fleet._start_time(child.pid), "")
    child.wait()
    assert not fleet.alive(proc)


def test_the_summary_shows_placement_every_node_and_a_302_url_per_city(tmp_path: Path) -> None:
    state = _state(tmp_path)
    text = fleet.describe(state)
    assert "http://127.0.0.1:8090" in text and "Bearer tok" in text
    for n in state.nodes:
        assert n.rtmp in text and f"{n.http}/?stream=school/class%201" in text
    for city in ("berlin", "munich"):
        assert f"http://127.0.0.1:8090/school/class%201/index.m3u8?city={city}" in text
    # The publish command asks placement for a Berlin node (the first city) first.
    assert '"location": {"city": "berlin"' in text and "-m nearcast publish" in text


def test_cli_refuses_a_bad_topology_before_starting_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "fleet.yml"
    bad.write_text(yaml.safe_dump(_topology(nodes=[_node(tier="fog")])))
    run = tmp_path / "run"
    rc = cli.main(["fleet", "up", "--topology", str(bad), "--run-dir", str(run)])
    assert rc == 2
    assert "'nodes[0] (e1).tier' must be one of edge, mec, cloud" in capsys.readouterr().err
    assert not run.exists()


def test_cli_down_and_status_without_a_fleet_say_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["fleet", "down", "--run-dir", str(tmp_path)]) == 2
    assert "no fleet runs from" in capsys.readouterr().err
    assert cli.main(["fleet", "status", "--run-dir", str(tmp_path)]) == 3


def test_up_without_redis_names_it_and_starts_nothing(tmp_path: Path) -> None:
    data = copy.deepcopy(SAMPLE)
    data["placement"]["redis"] = f"redis://127.0.0.1:{free_port()}/0"
    with pytest.raises(fleet.FleetError, match=r"placement's Redis at redis://127\.0\.0\.1"):
        fleet.up(fleet.parse_topology(data), tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.mark.redis
def test_a_node_that_fails_to_start_is_named_and_everything_started_is_stopped(
    tmp_path: Path,
) -> None:
    assert redis_available(REDIS_URL), f"this test needs Redis at {REDIS_URL}"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        data = {
            "placement": {"redis": REDIS_URL},
            "defaults": {"transcode": {"capacity_units": 1}},
            "nodes": [_node(id="edge-ok-1"), _node(id="edge-bad-1", rtmp_port=port)],
            "demo": {"tenant": "live"},
        }
        run = tmp_path / "run"
        with pytest.raises(fleet.FleetError, match="node edge-bad-1 exited") as err:
            fleet.up(fleet.parse_topology(data), run, timeout=60)
    assert "in use" in str(err.value)  # the tail of its log says why
    assert fleet.read_state(run) is None
    # Placement and the other node were stopped (and reaped).
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert str(run / "config") not in ps
