from __future__ import annotations

import json
from pathlib import Path

from placement.policy import DEFAULT_POLICY
from placement.simulate import build_fleet, build_trace, builtin_policies, run, simulate


def test_fleet_shape() -> None:
    fleet = build_fleet(1000, seed=3)
    tiers = {t: sum(1 for n in fleet.nodes if n.tier.value == t) for t in ("edge", "mec", "cloud")}
    assert sum(tiers.values()) == 1000 and tiers["cloud"] >= 1 and tiers["mec"] >= 1
    assert len({n.id for n in fleet.nodes}) == 1000


def test_deterministic_and_local_beats_cloud() -> None:
    fleet = build_fleet(500, seed=1)
    trace = build_trace(fleet, 200, seed=1)
    assert all(20 <= len(c.students) <= 60 for c in trace)
    a = simulate(fleet, trace, DEFAULT_POLICY).row()
    assert a == simulate(fleet, trace, DEFAULT_POLICY).row()
    local, cloud = (simulate(fleet, trace, p).figures() for p in builtin_policies())
    assert local["local_serve_ratio"] > 0.8 > cloud["local_serve_ratio"]
    assert local["backbone_saving"] > cloud["backbone_saving"]
    assert local["p95_latency_ms"] < cloud["p95_latency_ms"]


def test_replay_a_decision_log(tmp_path: Path) -> None:
    loc = {"city": "c00000", "isp": "isp-a", "region": "r0000"}
    entries = [
        {
            "kind": "publish",
            "at": 36000.0,
            "request": {"tenant": "s", "stream": "x", "location": loc},
        },
        {"kind": "view", "at": 36001.0, "request": {"tenant": "s", "stream": "x", "location": loc}},
    ]
    log = tmp_path / "log.jsonl"
    log.write_text("\n".join(json.dumps(e) for e in entries))
    from placement.simulate import load_log

    report = run(
        nodes=100,
        classes=0,
        policies=[DEFAULT_POLICY],
        out_dir=str(tmp_path),
        replay=load_log(str(log)),
    )
    [res] = report.results
    assert res.sessions == 1 and res.viewers == 1 and res.local_viewers == 1


async def test_replay_a_recorded_log_on_the_recorded_fleet(tmp_path: Path) -> None:
    """GET /v1/nodes and GET /v1/decisions saved as is, then simulated together."""
    import httpx
    from placementutil import NODE_KEYS, Clock, make_node

    from nearcast.cli import main
    from placement.app import create_app
    from placement.config import PlacementConfig
    from placement.registry.memory import InProcessRegistry

    clock = Clock()
    cfg = PlacementConfig(operator_token="op", node_keys=NODE_KEYS)
    app = create_app(cfg, InProcessRegistry(), clock=clock, background=False)
    svc = app.state.service
    await svc.start(background=False)
    for node in (
        make_node("lyon-1", hb=clock.t, cpu=0.95),  # busy when recorded: cleared for the run
        make_node("lyon-2", isp="sfr", hb=clock.t),
        make_node("paris-1", city="paris", isp="sfr", lat=48.86, lon=2.35, hb=clock.t),
        make_node("mec-1", "mec", city="west-metro", hb=clock.t),
    ):
        await svc.registry.register(node, clock.t)
    await svc.refresh()
    op = {"Authorization": "Bearer op"}
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://placement") as c:
        lyon = {"city": "lyon", "isp": "orange", "region": "west"}
        paris = {"city": "paris", "isp": "sfr", "region": "west"}
        for stream, where in (("maths", lyon), ("physics", paris)):
            body = {"tenant": "school", "stream": stream, "location": where}
            r = await c.post("/v1/sessions", json=body, headers=op)
            assert r.status_code == 201, r.text
            for _ in range(3):
                q = {"tenant": "school", "stream": stream, **where}
                assert (await c.get("/v1/route", params=q)).status_code == 200
        (tmp_path / "nodes.json").write_text((await c.get("/v1/nodes", headers=op)).text)
        (tmp_path / "log.json").write_text((await c.get("/v1/decisions", headers=op)).text)
    await svc.stop()
    argv = [
        "simulate",
        "--fleet",
        str(tmp_path / "nodes.json"),
        "--replay",
        str(tmp_path / "log.json"),
        "--out",
        str(tmp_path / "out"),
    ]
    assert main(argv) == 0
    report = (tmp_path / "out" / "report.md").read_text()
    assert "4 nodes" in report, report
    # Both classes on an edge node of their own city, and every viewer served locally
    # under the default policy; nothing reaches the (absent) cloud.
    from placement.simulate import load_fleet, load_log

    fleet = load_fleet(str(tmp_path / "nodes.json"))
    assert {c.name for c in fleet.cities} == {"lyon", "paris"}
    assert all(n.load.cpu == 0 and n.reserved_slots == 0 for n in fleet.nodes)
    res = run(
        nodes=0,
        classes=0,
        policies=[DEFAULT_POLICY],
        out_dir=str(tmp_path / "again"),
        replay=load_log(str(tmp_path / "log.json")),
        fleet=fleet,
    )
    [r] = res.results
    assert (r.sessions, r.rejected, r.tiers["edge"], r.viewers, r.local_viewers) == (2, 0, 2, 6, 6)


def test_a_bad_fleet_file_is_named(tmp_path: Path) -> None:
    import pytest

    from placement.errors import InvalidField
    from placement.simulate import load_fleet

    bad = tmp_path / "f.json"
    for text, field in (
        ("nope", "fleet"),
        ('{"nodes": []}', "fleet"),
        ('{"nodes": [{"id": "a"}]}', "fleet.nodes[0].region"),
    ):
        bad.write_text(text)
        with pytest.raises(InvalidField) as exc:
            load_fleet(str(bad))
        assert exc.value.field == field
