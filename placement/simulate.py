"""Policy simulator: a seeded synthetic fleet and a day of classes, policies side by side.

Deterministic for a given seed. Each class has one teacher (the publisher)
and 20-60 students, most in the teacher's city. Sessions are placed with the
real decision core; viewers are served by the origin when it is in their city
(or their region's MEC), else by a relay edge in their city fed by one
backbone copy, else straight from the origin across the backbone.
"""

from __future__ import annotations

import heapq
import json
import math
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, cast

from placement import core
from placement.errors import InvalidField
from placement.filters import Context, estimate_rtt_ms
from placement.model import (
    Capacity,
    FleetSnapshot,
    Load,
    Location,
    Node,
    PlacementRequest,
    Tier,
    Urls,
)
from placement.policy import DEFAULT_POLICY, Policy, parse_policy

ISPS = ("isp-a", "isp-b", "isp-c")
BITRATE_MBPS = 3.0
HOUR = 3600.0
# Share of classes starting in each hour of the day (school timetable shape).
DAILY = (0, 0, 0, 0, 0, 0, 1, 3, 8, 10, 10, 9, 6, 8, 9, 8, 6, 4, 3, 2, 2, 1, 0, 0)


def builtin_policies() -> list[Policy]:
    cloud = parse_policy(
        {"name": "cloud-only", "version": 1, "fallback": ["cloud"], "filters": {"max_rtt_ms": 500}}
    )
    return [DEFAULT_POLICY, cloud]


@dataclass(frozen=True)
class City:
    name: str
    region: str
    lat: float
    lon: float


@dataclass
class Fleet:
    nodes: list[Node]
    cities: list[City]


def build_fleet(n: int, seed: int, now: float = 0.0) -> Fleet:
    rng = random.Random(seed)
    n_cloud = max(1, n // 1000)
    n_cities = max(1, n // 25)
    n_regions = max(1, n_cities // 10)
    n_mec = min(max(1, n - n_cloud - n_cities), n_regions * 2) if n > 2 else 0
    n_edge = max(0, n - n_cloud - n_mec)
    regions = []
    side = math.ceil(math.sqrt(n_regions))
    for r in range(n_regions):
        lat = -40 + 80 * ((r // side) + 0.5) / side
        lon = -150 + 300 * ((r % side) + 0.5) / side
        regions.append((f"r{r:04d}", lat, lon))
    cities = []
    for c in range(n_cities):
        reg, rlat, rlon = regions[c % n_regions]
        cities.append(City(f"c{c:05d}", reg, rlat + rng.uniform(-2, 2), rlon + rng.uniform(-2, 2)))
    nodes: list[Node] = []

    def add(
        i: int, tier: Tier, region: str, city: str, isp: str, lat: float, lon: float, cap: Capacity
    ) -> None:
        nid = f"{tier.value}-{i:06d}"
        host = f"http://{nid}.example"
        nodes.append(
            Node(
                nid,
                tier,
                region,
                city,
                isp,
                lat,
                lon,
                Urls(f"rtmp://{nid}.example", host, host),
                cap,
                last_heartbeat=now,
            )
        )

    for i in range(n_edge):
        city = cities[i % n_cities]
        add(
            i,
            Tier.EDGE,
            city.region,
            city.name,
            ISPS[(i // n_cities) % len(ISPS)],
            city.lat,
            city.lon,
            Capacity(2, 1000.0, 400),
        )
    for i in range(n_mec):
        reg, lat, lon = regions[i % n_regions]
        add(i, Tier.MEC, reg, f"{reg}-metro", "transit", lat, lon, Capacity(32, 10000.0, 4000))
    for i in range(n_cloud):
        reg, lat, lon = regions[(i * 7) % n_regions]
        add(
            i,
            Tier.CLOUD,
            f"cloud-{reg}",
            "cloud",
            "cloud",
            lat,
            lon,
            Capacity(2000, 200000.0, 200000),
        )
    return Fleet(nodes, cities)


def load_fleet(path: str) -> Fleet:
    """A recorded fleet: the body of ``GET /v1/nodes`` saved as is, or a JSON array of nodes.

    Each node keeps its place, capacity, state and labels; its live load, reservations
    and streams are cleared, since the trace places sessions of its own. The cities
    for a synthetic trace are those of the fleet's edge nodes.
    """
    try:
        with open(path, encoding="utf-8") as fh:
            body = json.load(fh)
    except OSError as exc:
        raise InvalidField("fleet", f"cannot be read: {exc.strerror}") from None
    except ValueError as exc:
        raise InvalidField("fleet", f"is not JSON: {exc}") from None
    items = body.get("nodes") if isinstance(body, dict) else body
    if not isinstance(items, list) or not items:
        raise InvalidField("fleet", "must hold nodes: GET /v1/nodes's body or a JSON array")
    nodes: dict[str, Node] = {}
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise InvalidField(f"fleet.nodes[{i}]", "must be a node object")
        n = Node.from_dict(item, prefix=f"fleet.nodes[{i}].")
        nodes[n.id] = replace(
            n,
            load=Load(),
            last_heartbeat=0.0,
            reserved_slots=0,
            reserved_egress_mbps=0.0,
            streams=frozenset(),
        )
    cities: dict[str, City] = {}
    for n in nodes.values():
        if n.tier is Tier.EDGE and n.city:
            cities.setdefault(n.city, City(n.city, n.region, n.lat, n.lon))
    if not cities:
        raise InvalidField("fleet", "has no edge node with a city")
    return Fleet(list(nodes.values()), sorted(cities.values(), key=lambda c: c.name))


@dataclass(frozen=True)
class Viewer:
    location: Location


@dataclass(frozen=True)
class ClassEvent:
    start: float
    duration: float
    tenant: str
    stream: str
    teacher: Location
    students: tuple[Viewer, ...]


def _loc(city: City, rng: random.Random) -> Location:
    return Location(city.name, rng.choice(ISPS), city.region, city.lat, city.lon, "sim")


def build_trace(fleet: Fleet, classes: int, seed: int) -> list[ClassEvent]:
    rng = random.Random(seed * 7919 + 1)
    weights = [1.0 / (i + 1) ** 0.8 for i in range(len(fleet.cities))]  # big cities first
    hours = [h for h, w in enumerate(DAILY) for _ in range(w)]
    out = []
    for k in range(classes):
        city = rng.choices(fleet.cities, weights)[0]
        start = rng.choice(hours) * HOUR + rng.uniform(0, HOUR)
        students = []
        for _ in range(rng.randint(20, 60)):
            c = city if rng.random() < 0.85 else rng.choices(fleet.cities, weights)[0]
            students.append(Viewer(_loc(c, rng)))
        out.append(
            ClassEvent(
                start,
                rng.uniform(45, 90) * 60,
                "school",
                f"class{k:05d}",
                _loc(city, rng),
                tuple(students),
            )
        )
    return sorted(out, key=lambda e: e.start)


def parse_log(text: str) -> list[dict[str, Any]]:
    """Decision-log entries from either form: the JSON array ``GET /v1/decisions``
    returns, or JSON lines (one entry per line)."""
    stripped = text.strip()
    try:
        if stripped.startswith("["):
            data = json.loads(stripped)
        else:
            data = [json.loads(line) for line in stripped.splitlines() if line.strip()]
    except json.JSONDecodeError as exc:
        raise InvalidField(
            "replay", f"is neither a JSON array nor JSON lines of decisions: {exc}"
        ) from None
    if not isinstance(data, list) or not all(isinstance(e, dict) for e in data):
        raise InvalidField("replay", "must hold decision objects (a JSON array or JSON lines)")
    return data


def load_log(path: str) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as fh:
        return parse_log(fh.read())


def trace_from_log(entries: Sequence[dict[str, Any]]) -> list[ClassEvent]:
    """Publish entries become sessions; view entries of the same stream become viewers."""
    viewers: dict[str, list[Viewer]] = {}
    pubs: list[dict[str, Any]] = []
    for e in entries:
        req = e.get("request") or {}
        key = f"{req.get('tenant')}/{req.get('stream')}"
        if e.get("kind") == "view":
            loc = Location.from_dict(req.get("location") or {})
            viewers.setdefault(key, []).append(Viewer(loc))
        elif e.get("kind") == "publish":
            pubs.append(e)
    out = []
    for e in pubs:
        req = PlacementRequest.from_dict(e["request"])
        out.append(
            ClassEvent(
                float(e.get("at", 0.0)),
                HOUR,
                req.tenant,
                req.stream,
                req.location,
                tuple(viewers.get(f"{req.tenant}/{req.stream}", ())),
            )
        )
    return sorted(out, key=lambda e: e.start)


@dataclass
class Result:
    policy: str
    sessions: int = 0
    rejected: int = 0
    tiers: dict[str, int] = field(default_factory=lambda: {"edge": 0, "mec": 0, "cloud": 0})
    viewers: int = 0
    local_viewers: int = 0
    backbone_gb: float = 0.0
    cloud_gb: float = 0.0
    latencies: list[float] = field(default_factory=list)
    hourly_local: list[list[int]] = field(default_factory=lambda: [[0, 0] for _ in range(24)])

    def row(self) -> dict[str, str]:
        placed = max(1, self.sessions - self.rejected)
        lat = sorted(self.latencies)
        p95 = lat[min(len(lat) - 1, int(0.95 * len(lat)))] if lat else 0.0
        saving = round(1 - self.backbone_gb / self.cloud_gb if self.cloud_gb else 0.0, 9) + 0.0
        return {
            "sessions": str(self.sessions),
            "local-serve ratio": f"{self.local_viewers / max(1, self.viewers):.1%}",
            "edge placements": f"{self.tiers['edge'] / placed:.1%}",
            "MEC fallback": f"{self.tiers['mec'] / placed:.1%}",
            "cloud fallback": f"{self.tiers['cloud'] / placed:.1%}",
            "rejected sessions": str(self.rejected),
            "backbone GB": f"{self.backbone_gb:,.1f}",
            "all-from-cloud GB": f"{self.cloud_gb:,.1f}",
            "backbone saving": f"{saving:.1%}",
            "p95 viewer latency ms": f"{p95:.1f}",
        }

    def figures(self) -> dict[str, float]:
        r = self.row()
        return {
            "local_serve_ratio": self.local_viewers / max(1, self.viewers),
            "backbone_saving": 1 - self.backbone_gb / self.cloud_gb if self.cloud_gb else 0.0,
            "p95_latency_ms": float(r["p95 viewer latency ms"]),
            "rejected": float(self.rejected),
        }


class _SimSnapshot:
    """The simulator's private snapshot, whose nodes change in place in O(1).

    Its indexes hold lists, and every node knows its slot in each of them, so a
    reservation swaps one node without rebuilding a city's (or a tier's) list.
    """

    def __init__(self, nodes: Sequence[Node]) -> None:
        self.snap = FleetSnapshot.build(nodes, "sim", 0.0)
        self._slots: dict[str, list[tuple[list[Node], int]]] = {}
        for name in ("by_tier_city", "by_tier_region", "by_tier"):
            index = cast(dict[Any, Any], getattr(self.snap, name))
            for key, members in list(index.items()):
                mutable = list(members)
                index[key] = mutable
                for i, n in enumerate(mutable):
                    self._slots.setdefault(n.id, []).append((mutable, i))

    def set(self, node: Node) -> None:
        cast(dict[str, Node], self.snap.nodes)[node.id] = node
        for members, i in self._slots.get(node.id, ()):
            members[i] = node


def simulate(fleet: Fleet, trace: Sequence[ClassEvent], policy: Policy) -> Result:
    sim = _SimSnapshot(fleet.nodes)
    snap = sim.snap
    res = Result(policy.label)
    ttl = float("inf")  # simulated nodes never miss a heartbeat
    ends: list[tuple[float, str, int, float]] = []
    for ev in trace:
        while ends and ends[0][0] <= ev.start:
            _, nid, slots, egress = heapq.heappop(ends)
            n = snap.nodes[nid]
            sim.set(
                replace(
                    n,
                    reserved_slots=n.reserved_slots - slots,
                    reserved_egress_mbps=n.reserved_egress_mbps - egress,
                ),
            )
        res.sessions += 1
        egress = BITRATE_MBPS * len(ev.students)
        req = PlacementRequest(ev.tenant, ev.stream, ev.teacher, egress_mbps=egress)
        d = core.decide(snap, req, policy, ev.start, ttl=ttl)
        gb = BITRATE_MBPS * ev.duration / 8 / 1000  # one stream copy for the class, in GB
        res.cloud_gb += gb * (1 + len(ev.students))
        if d.node is None:
            res.rejected += 1
            continue
        origin = d.node
        res.tiers[origin.tier.value] += 1
        sim.set(
            replace(
                origin,
                reserved_slots=origin.reserved_slots + 1,
                reserved_egress_mbps=origin.reserved_egress_mbps + egress,
            ),
        )
        heapq.heappush(ends, (ev.start + ev.duration, origin.id, 1, egress))
        # The publisher's uplink crosses the backbone only to a node outside its region.
        if origin.tier is Tier.CLOUD:
            res.backbone_gb += gb
        relays: set[str] = set()
        hour = int(ev.start // HOUR) % 24
        for v in ev.students:
            loc = v.location
            ctx = Context(
                ev.tenant,
                "",
                loc.city,
                loc.isp,
                loc.region,
                loc.lat,
                loc.lon,
                1,
                0,
                policy,
                0,
                ttl,
                1.0,
                True,
                frozenset(),
                frozenset(policy.fallback),
            )
            serving = origin
            if origin.tier is Tier.EDGE and origin.city == loc.city:
                local = True
            elif origin.tier is Tier.MEC and origin.region == loc.region:
                local = False
            else:
                local_edges = snap.by_tier_city.get((Tier.EDGE, loc.city), ())
                if "edge" in policy.fallback and origin.tier is not Tier.CLOUD and local_edges:
                    serving = local_edges[0]
                    local = True
                    if loc.city not in relays:
                        relays.add(loc.city)
                        res.backbone_gb += gb
                else:
                    local = False
                    res.backbone_gb += gb
            res.viewers += 1
            res.local_viewers += local
            res.hourly_local[hour][0] += local
            res.hourly_local[hour][1] += 1
            res.latencies.append(estimate_rtt_ms(serving, ctx))
    return res


@dataclass(frozen=True)
class Report:
    markdown: str
    results: tuple[Result, ...]
    files: tuple[str, ...]


def _markdown(results: Sequence[Result], nodes: int, classes: int, seed: int) -> str:
    rows = [r.row() for r in results]
    keys = list(rows[0]) if rows else []
    head = "| metric | " + " | ".join(r.policy for r in results) + " |"
    sep = "|---|" + "---|" * len(results)
    lines = [
        f"# Placement simulation: {nodes} nodes, {classes} classes, seed {seed}",
        "",
        head,
        sep,
    ]
    lines += [f"| {k} | " + " | ".join(row[k] for row in rows) + " |" for k in keys]
    return "\n".join(lines) + "\n"


def _save(fig: Any, out_dir: str, name: str) -> str:
    import matplotlib.pyplot as plt

    path = os.path.join(out_dir, name)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def _plots(results: Sequence[Result], out_dir: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.8 / max(1, len(results))
    for i, r in enumerate(results):
        placed = max(1, r.sessions - r.rejected)
        xs = [j + i * width for j in range(3)]
        ax.bar(xs, [r.tiers[t] / placed for t in ("edge", "mec", "cloud")], width, label=r.policy)
    ax.set_xticks([j + width * (len(results) - 1) / 2 for j in range(3)], ["edge", "MEC", "cloud"])
    ax.set_ylabel("share of sessions")
    ax.set_title("Where sessions were placed")
    ax.legend()
    files.append(_save(fig, out_dir, "tiers.png"))

    fig, ax = plt.subplots(figsize=(7, 4))
    for r in results:
        lat = sorted(r.latencies)
        if lat:
            ax.plot(lat, [(i + 1) / len(lat) for i in range(len(lat))], label=r.policy)
    ax.set_xlabel("estimated viewer RTT (ms)")
    ax.set_ylabel("CDF")
    ax.set_title("Viewer latency")
    ax.legend()
    files.append(_save(fig, out_dir, "latency.png"))

    fig, ax = plt.subplots(figsize=(7, 4))
    for r in results:
        ax.plot(
            range(24),
            [a / b if b else float("nan") for a, b in r.hourly_local],
            marker="o",
            label=r.policy,
        )
    ax.set_xlabel("hour of day")
    ax.set_ylabel("local-serve ratio")
    ax.set_title("Viewers served in their own city")
    ax.legend()
    files.append(_save(fig, out_dir, "local_by_hour.png"))
    return files


def run(
    *,
    nodes: int,
    classes: int,
    policies: Sequence[Policy],
    out_dir: str,
    seed: int = 1,
    replay: Sequence[dict[str, Any]] | None = None,
    fleet: Fleet | None = None,
) -> Report:
    """Simulate on ``fleet`` (default: a synthetic one of ``nodes`` nodes)."""
    fleet = fleet or build_fleet(nodes, seed)
    nodes = len(fleet.nodes)
    trace = trace_from_log(replay) if replay is not None else build_trace(fleet, classes, seed)
    results = tuple(simulate(fleet, trace, p) for p in policies)
    os.makedirs(out_dir, exist_ok=True)
    md = _markdown(results, nodes, len(trace), seed)
    path = os.path.join(out_dir, "report.md")
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(md)
    files = [path, *_plots(results, out_dir)]
    return Report(md, results, tuple(files))
