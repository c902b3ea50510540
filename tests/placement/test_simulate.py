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
