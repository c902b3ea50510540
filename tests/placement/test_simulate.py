from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from placement.errors import InvalidField
from placement.policy import DEFAULT_POLICY
from placement.simulate import (
    BITRATE_MBPS,
    RELAY_SLOTS,
    Result,
    Trace,
    build_fleet,
    build_trace,
    builtin_policies,
    load_trace,
    local_recovery,
    parse_trace,
    run,
    simulate,
)


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


# --- relays hold to capacity, on small traces built here ----------------------------


def _node(nid: str, tier: str, city: str, region: str, **cap: float) -> dict[str, object]:
    lat, lon = {"lyon": (45.76, 4.84), "paris": (48.86, 2.35)}.get(city, (46.0, 4.0))
    capacity = {"slots": 4, "egress_mbps": 1000.0, "viewers": 300, **cap}
    return {
        "id": nid,
        "tier": tier,
        "region": region,
        "city": city,
        "isp": "isp-a",
        "lat": lat,
        "lon": lon,
        "capacity": capacity,
    }


def _small_trace(
    viewers: dict[str, int], paris_edge: dict[str, float] | None = None, **extra: object
) -> Trace:
    fleet = [
        _node("edge-lyon", "edge", "lyon", "west", viewers=3),
        _node("edge-paris", "edge", "paris", "west", **(paris_edge or {})),
        _node("mec-west", "mec", "west-metro", "west", viewers=2),
        _node("cloud-1", "cloud", "cloud", "cloud-eu"),
    ]
    classes = [{"start": "10:00", "minutes": 60, "city": "lyon", "viewers": viewers}]
    return parse_trace({"fleet": fleet, "classes": classes, **extra})


def test_a_viewer_is_local_only_while_a_node_of_their_city_has_room() -> None:
    """Lyon's one edge takes 3 viewers: of 6 lyon viewers, 3 are local, the MEC takes 2
    (its limit) and the cloud the last one; nobody is counted local past capacity."""
    t = _small_trace({"lyon": 6})
    r = simulate(t.fleet, t.classes, DEFAULT_POLICY)
    assert r.tiers["edge"] == 1 and r.local_viewers == 3
    s = r.shares()
    assert (s["local"], s["mec"], s["cloud"]) == (0.5, 2 / 6, 1 / 6)
    assert r.peak_use["edge-lyon"][2] == 3 and r.peak_use["mec-west"][2] == 2
    # The MEC and the cloud each hold a relay fed by the origin: one upstream copy each.
    assert r.relays == 2 and r.peak_use["edge-lyon"][1] == 3 * BITRATE_MBPS + 2 * BITRATE_MBPS
    assert r.peak_use["mec-west"][0] == RELAY_SLOTS


def test_a_relay_costs_its_node_a_slot_share_and_the_origin_one_backbone_copy() -> None:
    t = _small_trace({"lyon": 1, "paris": 5})
    r = simulate(t.fleet, t.classes, DEFAULT_POLICY)
    assert r.shares()["local"] == 1.0 and r.relays == 1
    slots, egress, viewers = r.peak_use["edge-paris"]
    assert (slots, egress, viewers) == (RELAY_SLOTS, 5 * BITRATE_MBPS, 5)
    # The origin sends its lyon viewer one copy and the paris relay one copy.
    assert r.peak_use["edge-lyon"] == (1.0, 2 * BITRATE_MBPS, 1)
    hour_gb = BITRATE_MBPS * 3600 / 8 / 1000
    assert r.backbone_gb == pytest.approx(hour_gb)  # only the relay's upstream copy
    assert r.cloud_gb == pytest.approx(7 * hour_gb)  # publisher + 6 viewers via the cloud


def test_a_node_without_room_for_a_relay_does_not_serve_its_city() -> None:
    """Paris's edge has viewer places but no slot share for a relay: its viewers spill."""
    t = _small_trace({"lyon": 1, "paris": 2}, paris_edge={"slots": 0})
    r = simulate(t.fleet, t.classes, DEFAULT_POLICY)
    assert "edge-paris" not in r.peak_use
    assert r.shares()["mec"] == pytest.approx(2 / 3)


def test_a_failed_relay_moves_its_viewers_once_the_node_is_stale() -> None:
    t = _small_trace(
        {"lyon": 1, "paris": 4},
        failures=[{"node": "edge-paris", "at": "10:30"}],
        windows=[{"name": "x", "from": "10:00", "to": "11:00", "cities": ["paris"]}],
    )
    r = simulate(t.fleet, t.classes, DEFAULT_POLICY, t.failures, t.windows)
    [f] = r.failures
    assert (f.cut, f.lost) == (4, 0)
    # Stale after the TTL (6 s), seen on the next snapshot refresh (1 s): moved then.
    assert f.recovery_s == pytest.approx(7.0)
    assert r.share_at(f.at + 6.9, ["paris"])["unserved"] == 1.0
    after = r.share_at(f.at + 7.1, ["paris"])
    assert after["mec"] == 0.5 and after["cloud"] == 0.5  # the MEC holds two


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"classes": []}, "trace.classes"),
        ({"classes": [{"start": "25:99", "minutes": 5, "city": "lyon"}]}, "trace.classes[0].start"),
        ({"classes": [{"start": 0, "minutes": 5, "city": "nice"}]}, "trace.classes[0].city"),
        (
            {"classes": [{"start": 0, "minutes": 5, "city": "lyon", "viewers": {"nice": 1}}]},
            "trace.classes[0].viewers.nice",
        ),
        ({"failures": [{"node": "edge-nice", "at": 0}]}, "trace.failures[0].node"),
        ({"windows": [{"from": "10:00", "to": "09:00"}]}, "trace.windows[0].to"),
        ({"fleet": [{"id": "a"}]}, "trace.fleet.nodes[0].region"),
    ],
)
def test_a_bad_trace_names_the_field(change: dict[str, object], field: str) -> None:
    body: dict[str, object] = {
        "fleet": [_node("edge-lyon", "edge", "lyon", "west")],
        "classes": [{"start": 0, "minutes": 5, "city": "lyon", "viewers": {"lyon": 1}}],
        **change,
    }
    with pytest.raises(InvalidField) as exc:
        parse_trace(body)
    assert exc.value.field == field


def test_simulate_cli_runs_a_trace_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from nearcast.cli import main

    trace = {
        "name": "tiny",
        "fleet": [_node("edge-lyon", "edge", "lyon", "west"), _node("c", "cloud", "cloud", "c")],
        "classes": [{"start": "10:00", "minutes": 30, "city": "lyon", "viewers": {"lyon": 4}}],
        "failures": [{"node": "edge-lyon", "at": "10:10"}],
    }
    path = tmp_path / "tiny.yml"
    path.write_text(yaml.safe_dump(trace))
    assert main(["simulate", "--trace", str(path), "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "trace tiny, 2 nodes, 1 classes" in out
    assert "| failure of edge-lyon at 10:10:00 | 4 viewers cut, all served again after 17 s" in out
    for name in ("report.md", "viewers.png", "failure.png", "local_by_hour.png"):
        assert (tmp_path / "out" / name).stat().st_size > 0
    assert main(["simulate", "--trace", str(path), "--fleet", str(path)]) == 2
    assert main(["simulate", "--trace", "no-such-trace"]) == 2


# --- the bundled stress trace: an evening peak and an edge node failing ---------------

HOT = ("lille", "amiens", "rouen")


@pytest.fixture(scope="module")
def stress() -> tuple[Trace, Result, Result]:
    t = load_trace("evening-peak")
    default, cloud = (
        simulate(t.fleet, t.classes, p, t.failures, t.windows) for p in builtin_policies()
    )
    return t, default, cloud


def _window(t: Trace, name: str, cities: tuple[str, ...] = ()) -> tuple[float, float]:
    [w] = [w for w in t.windows if w.name == name and w.cities == cities]
    return w.start, w.end


def test_the_stress_peak_is_130_percent_of_the_hot_cities_edge_capacity(
    stress: tuple[Trace, Result, Result],
) -> None:
    t, _, _ = stress
    start, end = _window(t, "peak")
    for city in ("lille", "amiens", "rouen", "lyon"):
        edges = [n for n in t.fleet.nodes if n.tier.value == "edge" and n.city == city]
        capacity = sum(
            min(n.capacity.viewers, n.capacity.egress_mbps / BITRATE_MBPS) for n in edges
        )
        for at in (start, (start + end) / 2, end - 60):
            watching = sum(
                1
                for c in t.classes
                if c.start <= at < c.start + c.duration
                for v in c.students
                if v.location.city == city
            )
            assert watching / capacity == pytest.approx(1.3 if city in HOT else 0.6), (city, at)


def test_the_peak_spills_to_mec_and_cloud_and_only_while_it_lasts(
    stress: tuple[Trace, Result, Result],
) -> None:
    t, r, _ = stress
    before, peak, after = (r.shares(*_window(t, w, HOT), HOT) for w in ("before", "peak", "after"))
    assert before["local"] == after["local"] == 1.0
    assert peak["mec"] > 0.05 and peak["cloud"] > 0.05
    # Unserved only for the seconds a few of them watched a class from lyon's failed node.
    assert peak["unserved"] < 1e-4
    # Local is what the hot cities' edges hold: 900 of 1170 viewers in each.
    assert peak["local"] == pytest.approx(900 / 1170, abs=0.005)
    assert r.tiers["mec"] > 0 and r.tiers["cloud"] > 0 and r.rejected == 0


def test_viewers_of_the_failed_node_are_served_again(stress: tuple[Trace, Result, Result]) -> None:
    _, r, _ = stress
    [f] = r.failures
    assert f.node == "edge-lyon-2" and f.cut > 100 and f.lost == 0 and not f.pending
    # Its sessions are re-placed after the liveness TTL, the autonomy window and a refresh.
    assert f.recovery_s == pytest.approx(6 + 10 + 1) and r.replaced >= 1


def test_local_share_drops_at_the_failure_then_recovers(
    stress: tuple[Trace, Result, Result],
) -> None:
    _, r, _ = stress
    [f] = r.failures
    city = [f.city]
    assert r.share_at(f.at - 1, city)["local"] == 1.0
    assert r.share_at(f.at + 1, city)["local"] < 0.8
    assert r.share_at(f.at + 1, city)["unserved"] > 0.2
    assert r.share_at(f.at + 30, city)["local"] == 1.0
    before, low, back = local_recovery(r, f)
    assert before == 1.0 and low < 0.8 and back == pytest.approx(17.0)


def test_no_node_is_ever_over_capacity(stress: tuple[Trace, Result, Result]) -> None:
    t, r, _ = stress
    caps = {n.id: n.capacity for n in t.fleet.nodes}
    assert r.relays > 100
    for nid, (slots, egress, viewers) in r.peak_use.items():
        cap = caps[nid]
        assert slots <= cap.slots and egress <= cap.egress_mbps + 1e-6, nid
        assert viewers <= cap.viewers, nid
    # Capacity is what bound: the hot cities' edges were full.
    assert all(r.peak_use[f"edge-{c}-{i}"][2] == 300 for c in HOT for i in (1, 2, 3))


def test_backbone_with_relays_is_a_fraction_of_cloud_only(
    stress: tuple[Trace, Result, Result],
) -> None:
    t, r, cloud = stress
    assert 0 < r.backbone_gb < 0.2 * r.cloud_gb
    assert cloud.backbone_gb == pytest.approx(cloud.cloud_gb) == pytest.approx(r.cloud_gb)
    assert r.figures()["backbone_ratio"] == pytest.approx(r.backbone_gb / r.cloud_gb)
    # The spill to the cloud costs backbone: more of cloud-only's during the peak.
    peak, before = (r.traffic_gb(*_window(t, w)) for w in ("peak", "before"))
    assert before[0] / before[1] < peak[0] / peak[1] < 0.2


def test_viewers_no_node_can_take_after_a_failure_are_counted_lost() -> None:
    """Lyon's only edge fails and no tier can take its session: nobody is served again."""
    fleet = [
        _node("edge-lyon", "edge", "lyon", "west"),
        _node("edge-paris", "edge", "paris", "west"),
    ]
    classes = [{"start": "10:00", "minutes": 30, "city": "lyon", "viewers": {"lyon": 3}}]
    t = parse_trace(
        {"fleet": fleet, "classes": classes, "failures": [{"node": "edge-lyon", "at": "10:10"}]}
    )
    r = simulate(t.fleet, t.classes, DEFAULT_POLICY, t.failures)
    [f] = r.failures
    assert (f.cut, f.lost, f.recovery_s) == (3, 3, None)
    assert r.share_at(f.at + 60)["unserved"] == 1.0
    assert "3 left unserved" in r.row()["failure of edge-lyon at 10:10:00"]


def test_a_relay_feeds_another_once_the_origin_egress_is_spent() -> None:
    """Lyon's origin can send two copies. Paris's and nice's edges (one viewer place
    each) are busy until 10:20, so the MEC serves both cities from one relay. When the
    MEC fails, the two viewers get relays in their cities: the origin feeds paris's (its
    last copy) and paris's feeds nice's. When paris fails, nice is cut with it."""
    fleet = [
        _node("edge-lyon", "edge", "lyon", "west", egress_mbps=2 * BITRATE_MBPS),
        _node("edge-paris", "edge", "paris", "west", viewers=1),
        _node("edge-nice", "edge", "nice", "west", viewers=1),
        _node("mec-west", "mec", "west-metro", "west"),
        _node("cloud-1", "cloud", "cloud", "cloud-eu"),
    ]
    classes = [
        {"start": "09:00", "minutes": 80, "city": "paris", "viewers": {"paris": 1}},
        {"start": "09:00", "minutes": 80, "city": "nice", "viewers": {"nice": 1}},
        {"start": "10:00", "minutes": 60, "city": "lyon", "viewers": {"paris": 1, "nice": 1}},
        {"start": "10:05", "minutes": 55, "city": "lyon", "viewers": {"lyon": 1}},
    ]
    failures = [{"node": "mec-west", "at": "10:30"}, {"node": "edge-paris", "at": "10:40"}]
    t = parse_trace({"fleet": fleet, "classes": classes, "failures": failures})
    r = simulate(t.fleet, t.classes, DEFAULT_POLICY, t.failures)
    mec, paris = r.failures
    assert r.share_at(mec.at - 1)["mec"] == 2 / 3
    assert (mec.cut, mec.recovery_s) == (2, 7.0)
    assert r.share_at(mec.at + 8)["local"] == 1.0
    # Paris's edge sent its viewer and nice's relay a copy each; lyon never over 2.
    assert r.peak_use["edge-paris"][1] == 2 * BITRATE_MBPS
    assert r.peak_use["edge-lyon"][1] == 2 * BITRATE_MBPS
    assert (paris.cut, paris.lost, paris.recovery_s) == (2, 0, 7.0)
    assert r.share_at(paris.at + 1)["unserved"] == 2 / 3
    # Paris's viewer goes to the cloud, whose relay now feeds nice's.
    assert r.share_at(paris.at + 8) == pytest.approx(
        {"local": 2 / 3, "mec": 0, "cloud": 1 / 3, "remote": 0, "unserved": 0}
    )
    assert r.peak_use["cloud-1"][1] == 2 * BITRATE_MBPS
    row = r.row()
    assert row["failure of mec-west at 10:30:00"] == "2 viewers cut, all served again after 7 s"
    assert row["failure of edge-paris at 10:40:00"].endswith(
        "paris local share 100% -> 0%, not back"
    )
