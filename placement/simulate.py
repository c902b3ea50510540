"""Policy simulator: a fleet, a trace of classes, policies side by side.

Deterministic for a given seed. Each class has one teacher (the publisher) and
its students (viewers). Sessions are placed with the real decision core. Every
node's capacity is held to: a viewer is served only by a node with a viewer
place and the egress for one more copy. Viewers are tried in the policy's tier
order: a node of their own city (local), their region's MEC, the cloud; on each
tier a node that already holds the stream (the origin or a relay) first, else a
new relay there. A relay takes ``RELAY_SLOTS`` of a transcode slot on its node
(pulling and repackaging the ladder) and is fed one upstream copy by the origin
(or, when the origin's egress is spent, by a relay of the stream that has room):
a backbone copy. Viewers no node can take are turned away (unserved).

A trace file (see :func:`load_trace`) adds its own fleet, node failures and
reporting windows. A failed node serves nothing from the moment it fails; the
decision core stops choosing it once its heartbeat is older than the liveness
TTL, its relays' viewers then move, and its sessions are re-placed after the
autonomy window, as the service does.
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
from placement.config import LivenessConfig, PlacementConfig
from placement.errors import InvalidField
from placement.filters import Context, estimate_rtt_ms, feasible
from placement.model import (
    Capacity,
    FleetSnapshot,
    Load,
    Location,
    Node,
    NodeState,
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
    return fleet_from_nodes(items, "fleet")


def fleet_from_nodes(items: Any, name: str, default_urls: bool = False) -> Fleet:
    """Nodes as ``GET /v1/nodes`` shows them, load and reservations cleared.

    ``default_urls``: a node may leave out its URLs (a trace file's fleet: the
    simulator never connects to a node).
    """
    if not isinstance(items, list) or not items:
        raise InvalidField(name, "must hold nodes: GET /v1/nodes's body or a JSON array")
    nodes: dict[str, Node] = {}
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise InvalidField(f"{name}.nodes[{i}]", "must be a node object")
        if default_urls:
            item = {"urls": {}, **item}
        n = Node.from_dict(item, prefix=f"{name}.nodes[{i}].")
        if n.id in nodes:
            raise InvalidField(f"{name}.nodes[{i}].id", f"{n.id!r} is listed twice")
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
        raise InvalidField(name, "has no edge node with a city")
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


# --- trace files: a fleet, classes, node failures and reporting windows -------------

TRACES_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "traces")


@dataclass(frozen=True)
class Failure:
    """``node`` stops at ``at`` (seconds of the trace) and does not come back."""

    node: str
    at: float


@dataclass(frozen=True)
class Window:
    """A stretch of the trace the report gives its own viewer shares for: of the viewers
    in ``cities``, or of all of them."""

    name: str
    start: float
    end: float
    cities: tuple[str, ...] = ()


@dataclass(frozen=True)
class Trace:
    name: str
    fleet: Fleet
    classes: tuple[ClassEvent, ...]
    failures: tuple[Failure, ...] = ()
    windows: tuple[Window, ...] = ()
    description: str = ""


def _seconds(value: Any, name: str) -> float:
    """``"HH:MM"``, ``"HH:MM:SS"`` or a number of seconds."""
    if isinstance(value, bool):
        raise InvalidField(name, "must be HH:MM[:SS] or seconds")
    if isinstance(value, int | float):
        if value < 0:
            raise InvalidField(name, "must not be negative")
        return float(value)
    if isinstance(value, str):
        parts = value.split(":")
        if 2 <= len(parts) <= 3 and all(p.isdigit() for p in parts):
            h, m, s = (int(p) for p in (*parts, "0")[:3])
            if m < 60 and s < 60:
                return h * HOUR + m * 60.0 + s
    raise InvalidField(name, f"must be HH:MM[:SS] or seconds, not {value!r}")


def clock(t: float) -> str:
    """Seconds of the trace as ``HH:MM:SS`` (hours past 24 keep counting)."""
    s = int(round(t))
    return f"{s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}"


def _mapping(value: Any, name: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidField(name, "must be a mapping")
    return value


def resolve_trace(name_or_path: str) -> str:
    """A trace file's path: ``name_or_path`` itself, or a bundled trace's name."""
    if os.path.exists(name_or_path):
        return name_or_path
    bundled = os.path.join(TRACES_DIR, f"{name_or_path}.yml")
    if os.sep not in name_or_path and os.path.exists(bundled):
        return bundled
    names = ", ".join(bundled_traces()) or "none"
    raise InvalidField("trace", f"{name_or_path!r} is neither a file nor a bundled trace ({names})")


def bundled_traces() -> list[str]:
    if not os.path.isdir(TRACES_DIR):
        return []
    return sorted(f[:-4] for f in os.listdir(TRACES_DIR) if f.endswith(".yml"))


def load_trace(name_or_path: str) -> Trace:
    """A trace file (YAML): its fleet, classes, node failures and reporting windows.

    ``fleet``: nodes as ``GET /v1/nodes`` shows them (URLs may be left out).
    ``classes``: ``{start, minutes, city, viewers: {city: count}}`` (``tenant`` and
    ``stream`` optional); the teacher is in ``city``, viewers in the cities named.
    ``failures``: ``{node, at}``. ``windows``: ``{name, from, to}``. Times are
    ``HH:MM[:SS]`` or seconds.
    """
    import yaml

    path = resolve_trace(name_or_path)
    try:
        with open(path, encoding="utf-8") as fh:
            body = yaml.safe_load(fh)
    except OSError as exc:
        raise InvalidField("trace", f"cannot be read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise InvalidField("trace", f"is not valid YAML: {exc}") from None
    return parse_trace(body, os.path.splitext(os.path.basename(path))[0])


def parse_trace(body: Any, default_name: str = "trace") -> Trace:
    body = _mapping(body, "trace")
    fleet = fleet_from_nodes(body.get("fleet"), "trace.fleet", default_urls=True)
    cities = {c.name: c for c in fleet.cities}
    ids = {n.id for n in fleet.nodes}
    classes = body.get("classes")
    if not isinstance(classes, list) or not classes:
        raise InvalidField("trace.classes", "must list at least one class")
    out: list[ClassEvent] = []
    for k, item in enumerate(classes):
        at = f"trace.classes[{k}]"
        c = _mapping(item, at)
        start = _seconds(c.get("start"), f"{at}.start")
        minutes = c.get("minutes")
        if isinstance(minutes, bool) or not isinstance(minutes, int | float) or minutes <= 0:
            raise InvalidField(f"{at}.minutes", "must be a number of minutes above zero")
        city = cities.get(str(c.get("city")))
        if city is None:
            raise InvalidField(f"{at}.city", f"{c.get('city')!r} is no city of the fleet's edges")
        students: list[Viewer] = []
        for where, count in _mapping(c.get("viewers"), f"{at}.viewers").items():
            vc = cities.get(str(where))
            if vc is None:
                raise InvalidField(f"{at}.viewers.{where}", "is no city of the fleet's edges")
            if isinstance(count, bool) or not isinstance(count, int) or count < 0:
                raise InvalidField(f"{at}.viewers.{where}", "must be a count of viewers")
            for i in range(count):
                loc = Location(vc.name, ISPS[i % len(ISPS)], vc.region, vc.lat, vc.lon, "trace")
                students.append(Viewer(loc))
        teacher = Location(city.name, ISPS[k % len(ISPS)], city.region, city.lat, city.lon, "trace")
        out.append(
            ClassEvent(
                start,
                float(minutes) * 60,
                str(c.get("tenant", "school")),
                str(c.get("stream", f"class{k:05d}")),
                teacher,
                tuple(students),
            )
        )
    failures = []
    for k, item in enumerate(body.get("failures") or ()):
        f = _mapping(item, f"trace.failures[{k}]")
        if f.get("node") not in ids:
            raise InvalidField(
                f"trace.failures[{k}].node", f"{f.get('node')!r} is not in the fleet"
            )
        failures.append(Failure(str(f["node"]), _seconds(f.get("at"), f"trace.failures[{k}].at")))
    windows = []
    for k, item in enumerate(body.get("windows") or ()):
        w = _mapping(item, f"trace.windows[{k}]")
        start = _seconds(w.get("from"), f"trace.windows[{k}].from")
        end = _seconds(w.get("to"), f"trace.windows[{k}].to")
        if end <= start:
            raise InvalidField(f"trace.windows[{k}].to", "must come after 'from'")
        named = w.get("cities") or []
        if not isinstance(named, list) or any(c not in cities for c in named):
            raise InvalidField(
                f"trace.windows[{k}].cities", "must list cities of the fleet's edges"
            )
        windows.append(
            Window(str(w.get("name", f"window {k + 1}")), start, end, tuple(map(str, named)))
        )
    return Trace(
        str(body.get("name", default_name)),
        fleet,
        tuple(sorted(out, key=lambda e: e.start)),
        tuple(sorted(failures, key=lambda f: f.at)),
        tuple(windows),
        str(body.get("description", "")).strip(),
    )


# --- the simulation ------------------------------------------------------------------

# A relay pulls the stream's ladder and repackages it for its viewers (no transcode):
# a quarter of one transcode slot of its node.
RELAY_SLOTS = 0.25
# How viewers were served: by a node of their city, their region's MEC, the cloud, any
# other node (an edge of another city, another region's MEC), or not at all.
SHARES = ("local", "mec", "cloud", "remote", "unserved")
_EPS = 1e-6


@dataclass(frozen=True)
class Sample:
    """The state from ``t`` until the next sample: viewers by how they are served (in
    the whole fleet, and in the cities of failed nodes), backbone and cloud-only Mb/s."""

    t: float
    viewers: tuple[int, ...]
    backbone_mbps: float
    cloud_only_mbps: float
    cities: dict[str, tuple[int, ...]] = field(default_factory=dict)

    def count(self, cities: Sequence[str] = ()) -> tuple[int, ...]:
        """Viewers by how they are served, in ``cities`` (watched ones) or in all."""
        if not cities:
            return self.viewers
        rows = [self.cities[c] for c in cities]
        return tuple(sum(col) for col in zip(*rows, strict=True))


@dataclass
class FailureOutcome:
    node: str
    city: str
    at: float
    cut: int = 0  # viewers who lost the stream because of it
    lost: int = 0  # of those, left unserved until their class ended
    recovered_at: float | None = None  # when the last of them was served again
    pending: dict[int, set[int]] = field(default_factory=dict)

    @property
    def recovery_s(self) -> float | None:
        if self.recovered_at is None or self.pending or self.lost:
            return None
        return self.recovered_at - self.at


@dataclass
class Result:
    policy: str
    sessions: int = 0
    rejected: int = 0
    replaced: int = 0
    tiers: dict[str, int] = field(default_factory=lambda: {"edge": 0, "mec": 0, "cloud": 0})
    viewers: int = 0
    local_viewers: int = 0
    turned_away: int = 0
    relays: int = 0
    latencies: list[float] = field(default_factory=list)
    timeline: list[Sample] = field(default_factory=list)
    failures: list[FailureOutcome] = field(default_factory=list)
    windows: tuple[Window, ...] = ()
    # Per node, the most it ever used at once: slots, egress Mb/s, viewers.
    peak_use: dict[str, tuple[float, float, int]] = field(default_factory=dict)
    capacity: dict[str, Capacity] = field(default_factory=dict)

    def viewer_seconds(
        self, start: float = -math.inf, end: float = math.inf, cities: Sequence[str] = ()
    ) -> dict[str, float]:
        """Viewer-seconds by how they were served, between ``start`` and ``end``, of the
        viewers in ``cities`` (watched: those of windows and failed nodes) or of all."""
        out = dict.fromkeys(SHARES, 0.0)
        tl = self.timeline
        for a, b in zip(tl, tl[1:], strict=False):
            lo, hi = max(a.t, start), min(b.t, end)
            if hi > lo:
                for name, n in zip(SHARES, a.count(cities), strict=True):
                    out[name] += n * (hi - lo)
        return out

    def shares(
        self, start: float = -math.inf, end: float = math.inf, cities: Sequence[str] = ()
    ) -> dict[str, float]:
        vs = self.viewer_seconds(start, end, cities)
        total = sum(vs.values())
        return {k: v / total if total else 0.0 for k, v in vs.items()}

    def share_at(self, t: float, cities: Sequence[str] = ()) -> dict[str, float]:
        """Shares in the state that holds at ``t``."""
        counts: tuple[int, ...] = (0,) * len(SHARES)
        for s in self.timeline:
            if s.t > t:
                break
            counts = s.count(cities)
        total = sum(counts)
        return {k: n / total if total else 0.0 for k, n in zip(SHARES, counts, strict=True)}

    def traffic_gb(self, start: float = -math.inf, end: float = math.inf) -> tuple[float, float]:
        """Backbone GB between ``start`` and ``end``: as simulated, and had every viewer
        (and publisher) been served by the cloud."""
        backbone = cloud = 0.0
        tl = self.timeline
        for a, b in zip(tl, tl[1:], strict=False):
            span = min(b.t, end) - max(a.t, start)
            if span > 0:
                backbone += a.backbone_mbps * span
                cloud += a.cloud_only_mbps * span
        return backbone / 8 / 1000, cloud / 8 / 1000

    @property
    def backbone_gb(self) -> float:
        """Backbone GB: uplinks to a cloud origin, upstream copies to relays, and
        viewers served from the cloud or from another city."""
        return self.traffic_gb()[0]

    @property
    def cloud_gb(self) -> float:
        """Backbone GB had every viewer (and the publisher) been served by the cloud."""
        return self.traffic_gb()[1]

    @property
    def local_ratio(self) -> float:
        return self.shares()["local"]

    def hourly_local(self) -> list[tuple[float, float]]:
        """Per hour of the day: (local viewer-seconds, all viewer-seconds)."""
        out = [[0.0, 0.0] for _ in range(24)]
        tl = self.timeline
        for a, b in zip(tl, tl[1:], strict=False):
            t, total = a.t, sum(a.viewers)
            while t < b.t:
                edge = min(b.t, (math.floor(t / HOUR) + 1) * HOUR)
                bucket = out[int(t // HOUR) % 24]
                bucket[0] += a.viewers[0] * (edge - t)
                bucket[1] += total * (edge - t)
                t = edge
        return [(a, b) for a, b in out]

    def max_use(self) -> tuple[float, float, float]:
        """The highest share of its capacity any node used at once: slots, egress, viewers."""
        top = [0.0, 0.0, 0.0]
        for nid, (slots, egress, viewers) in self.peak_use.items():
            cap = self.capacity[nid]
            for i, (used, limit) in enumerate(
                ((slots, cap.slots), (egress, cap.egress_mbps), (viewers, cap.viewers))
            ):
                if used > 0:
                    top[i] = max(top[i], used / limit if limit else math.inf)
        return top[0], top[1], top[2]

    def row(self) -> dict[str, str]:
        placed = max(1, self.sessions - self.rejected)
        lat = sorted(self.latencies)
        p95 = lat[min(len(lat) - 1, int(0.95 * len(lat)))] if lat else 0.0
        backbone, cloud = self.backbone_gb, self.cloud_gb
        saving = round(1 - backbone / cloud if cloud else 0.0, 9) + 0.0
        s = self.shares()
        slots, egress, viewers = self.max_use()
        out = {
            "sessions": str(self.sessions),
            "local-serve ratio": f"{s['local']:.1%}",
            "viewers local / MEC / cloud / other / unserved": _shares_text(s),
            "edge placements": f"{self.tiers['edge'] / placed:.1%}",
            "MEC fallback": f"{self.tiers['mec'] / placed:.1%}",
            "cloud fallback": f"{self.tiers['cloud'] / placed:.1%}",
            "rejected sessions": str(self.rejected),
            "viewers turned away": str(self.turned_away),
            "relays": str(self.relays),
            "max node use: slots / egress / viewers": (
                f"{slots:.0%} / {egress:.0%} / {viewers:.0%}"
            ),
            "backbone GB": f"{backbone:,.1f}",
            "all-from-cloud GB": f"{cloud:,.1f}",
            "backbone / cloud-only": f"{backbone / cloud if cloud else 0.0:.3f}",
            "backbone saving": f"{saving:.1%}",
            "p95 viewer latency ms": f"{p95:.1f}",
        }
        for w in self.windows:
            where = f", {' '.join(w.cities)}" if w.cities else ""
            key = f"viewers local / MEC / cloud / other / unserved, {w.name}"
            span = f"{clock(w.start)[:5]}-{clock(w.end)[:5]}"
            out[f"{key} ({span}{where})"] = _shares_text(self.shares(w.start, w.end, w.cities))
            if not w.cities:
                used, cloud_only = self.traffic_gb(w.start, w.end)
                ratio = used / cloud_only if cloud_only else 0.0
                out[f"backbone / cloud-only, {w.name} ({span})"] = f"{ratio:.3f}"
        for f in self.failures:
            out[f"failure of {f.node} at {clock(f.at)}"] = _failure_text(self, f)
        return out

    def figures(self) -> dict[str, float]:
        r = self.row()
        cloud = self.cloud_gb
        return {
            "local_serve_ratio": self.local_ratio,
            "backbone_saving": 1 - self.backbone_gb / cloud if cloud else 0.0,
            "backbone_ratio": self.backbone_gb / cloud if cloud else 0.0,
            "p95_latency_ms": float(r["p95 viewer latency ms"]),
            "rejected": float(self.rejected),
        }


def _shares_text(s: dict[str, float]) -> str:
    return " / ".join(f"{s[k]:.1%}" for k in SHARES)


def local_recovery(res: Result, f: FailureOutcome) -> tuple[float, float, float | None]:
    """The failed node's city: local share just before the failure, its lowest after,
    and how long after the failure it was back to its level before (None: never)."""
    before = res.share_at(f.at - _EPS, [f.city])["local"]
    low, back = before, None
    for s in res.timeline:
        if s.t < f.at:
            continue
        counts = s.cities[f.city]
        if not sum(counts):
            continue
        share = counts[0] / sum(counts)
        low = min(low, share)
        if share >= before - 0.005 and low < before and back is None:
            back = s.t - f.at
    return before, low, back


def _failure_text(res: Result, f: FailureOutcome) -> str:
    if not f.cut:
        return "served no viewer: nothing to recover"
    done = (
        f"all served again after {f.recovery_s:.0f} s"
        if f.recovery_s is not None
        else f"{f.lost} left unserved"
    )
    if not sum(res.share_at(f.at - _EPS, [f.city]).values()):
        return f"{f.cut} viewers cut, {done}"  # nobody watches from its city (a MEC's)
    before, low, back = local_recovery(res, f)
    city = f"{f.city} local share {before:.0%} -> {low:.0%}"
    city += f", back after {back:.0f} s" if back is not None else ", not back"
    return f"{f.cut} viewers cut, {done}; {city}"


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


@dataclass
class _Stream:
    ev: ClassEvent
    slots: int
    origin: str | None = None
    # Node id -> the node feeding it (None: the origin).
    holders: dict[str, str | None] = field(default_factory=dict)
    where: list[str | None] = field(default_factory=list)
    counts: dict[tuple[str, str], int] = field(default_factory=dict)
    backbone_mbps: float = 0.0
    served: list[bool] = field(default_factory=list)


class _Engine:
    def __init__(
        self,
        fleet: Fleet,
        policy: Policy,
        failures: Sequence[Failure],
        watch: set[str],
        liveness: LivenessConfig,
    ) -> None:
        # Live nodes never miss a heartbeat; a failed one stops beating when it fails.
        self.sim = _SimSnapshot([replace(n, last_heartbeat=math.inf) for n in fleet.nodes])
        self.snap = self.sim.snap
        self.policy = policy
        self.ttl = liveness.ttl
        self.use: dict[str, list[float]] = {n.id: [0.0, 0.0, 0.0] for n in fleet.nodes}
        self.dirty: set[str] = set()
        self._ctxs: dict[Location, Context] = {}
        self._ctx_for: tuple[str, str, float] = ("", "", math.nan)
        self.down: dict[str, FailureOutcome] = {}
        self.node_streams: dict[str, set[int]] = {}
        self.streams: dict[int, _Stream] = {}
        self.counts = dict.fromkeys(SHARES, 0)
        watch = watch | {
            self.snap.nodes[f.node].city for f in failures if f.node in self.snap.nodes
        }
        self.city_counts: dict[str, dict[str, int]] = {c: dict.fromkeys(SHARES, 0) for c in watch}
        self.backbone_mbps = 0.0
        self.cloud_only_mbps = 0.0
        self.res = Result(policy.label)
        self.res.capacity = {n.id: n.capacity for n in fleet.nodes}

    # -- capacity ---------------------------------------------------------------------

    def _use(self, nid: str, slots: float = 0.0, egress: float = 0.0, viewers: int = 0) -> None:
        u = self.use[nid]
        u[0] += slots
        u[1] += egress
        u[2] += viewers
        self.dirty.add(nid)
        if slots > 0 or egress > 0 or viewers > 0:
            p = self.res.peak_use.get(nid, (0.0, 0.0, 0))
            self.res.peak_use[nid] = (max(p[0], u[0]), max(p[1], u[1]), max(p[2], int(u[2])))

    def _sync(self) -> None:
        """Show the decision core each changed node's use (its reservations and viewers)."""
        for nid in self.dirty:
            u, n = self.use[nid], self.snap.nodes[nid]
            ld = n.load
            self.sim.set(
                Node(
                    n.id,
                    n.tier,
                    n.region,
                    n.city,
                    n.isp,
                    n.lat,
                    n.lon,
                    n.urls,
                    n.capacity,
                    Load(ld.cpu, ld.transcodes, ld.egress_mbps, int(u[2])),
                    n.state,
                    n.labels,
                    n.last_heartbeat,
                    math.ceil(u[0] - _EPS),
                    max(0.0, u[1]),
                    n.streams,
                )
            )
        self.dirty.clear()

    def _has_egress(self, nid: str) -> bool:
        n = self.snap.nodes[nid]
        return self.use[nid][1] + BITRATE_MBPS <= n.capacity.egress_mbps + _EPS

    def _believed_up(self, nid: str, now: float) -> bool:
        return now - self.snap.nodes[nid].last_heartbeat <= self.ttl

    # -- streams ------------------------------------------------------------------------

    def _ctx(self, st: _Stream, v: Viewer, now: float) -> Context:
        """The viewer's request context; viewers of one stream at one place and instant
        share it (and its memo of RTT estimates)."""
        key = (st.ev.tenant, st.ev.stream, now)
        if self._ctx_for != key:
            self._ctx_for = key
            self._ctxs.clear()
        ctx = self._ctxs.get(v.location)
        if ctx is None:
            ctx = self._ctxs[v.location] = core.resolve_context(
                self.snap,
                st.ev.tenant,
                st.ev.stream,
                v.location,
                self.policy,
                now,
                ttl=self.ttl,
                headroom=1.0,
                viewer=True,
                egress_mbps=BITRATE_MBPS,
            )
        return ctx

    def _add_holder(self, idx: int, st: _Stream, nid: str, parent: str | None) -> None:
        st.holders[nid] = parent
        self.node_streams.setdefault(nid, set()).add(idx)
        if parent is not None:
            self._use(nid, slots=RELAY_SLOTS)
            self._use(parent, egress=BITRATE_MBPS)
            self.res.relays += 1

    def _drop_holder(self, idx: int, st: _Stream, nid: str) -> None:
        parent = st.holders.pop(nid)
        self.node_streams[nid].discard(idx)
        if parent is not None:
            self._use(nid, slots=-RELAY_SLOTS)
            self._use(parent, egress=-BITRATE_MBPS)

    def _feeder(self, st: _Stream, now: float) -> str | None:
        """The origin when it can send one more copy, else a relay of the stream that can
        (upper tiers first: they have the room)."""
        rank = {Tier.CLOUD: 0, Tier.MEC: 1, Tier.EDGE: 2}
        order = sorted(
            st.holders,
            key=lambda h: (st.holders[h] is not None, rank[self.snap.nodes[h].tier], h),
        )
        for h in order:
            if self._believed_up(h, now) and self._has_egress(h):
                return h
        return None

    def _pick(self, nodes: list[Node], ctx: Context) -> Node | None:
        best: tuple[float, float, str] | None = None
        chosen = None
        for n in nodes:
            key = (estimate_rtt_ms(n, ctx), -(n.capacity.viewers - self.use[n.id][2]), n.id)
            if best is None or key < best:
                best, chosen = key, n
        return chosen

    def _serve(self, idx: int, st: _Stream, i: int, now: float) -> bool:
        """Find viewer ``i`` a node; False when none can take them."""
        self._sync()
        v = st.ev.students[i]
        ctx = self._ctx(st, v, now)
        snap = self.snap
        tried: set[str] = set()
        for tier in self.policy.fallback:
            if tier == "edge":
                pool = snap.by_tier_city.get((Tier.EDGE, ctx.city), ()) if ctx.city else ()
                mine = [
                    snap.nodes[h]
                    for h in st.holders
                    if snap.nodes[h].tier is Tier.EDGE and snap.nodes[h].city == ctx.city
                ]
            elif tier == "mec":
                pool = snap.by_tier_region.get((Tier.MEC, ctx.region), ()) if ctx.region else ()
                mine = [
                    snap.nodes[h]
                    for h in st.holders
                    if snap.nodes[h].tier is Tier.MEC and snap.nodes[h].region == ctx.region
                ]
            else:
                pool = snap.by_tier.get(Tier.CLOUD, ())
                mine = [snap.nodes[h] for h in st.holders if snap.nodes[h].tier is Tier.CLOUD]
            tried.update(n.id for n in mine)
            node = self._pick([n for n in mine if feasible(n, ctx)], ctx)
            if node is None:
                feeder = self._feeder(st, now)
                if feeder is not None:
                    node = self._pick(
                        [
                            n
                            for n in pool
                            if n.id not in st.holders
                            and n.state is NodeState.READY
                            and self.use[n.id][0] + RELAY_SLOTS <= n.capacity.slots + _EPS
                            and feasible(n, ctx)
                        ],
                        ctx,
                    )
                    if node is not None:
                        self._add_holder(idx, st, node.id, feeder)
                        node = snap.nodes[node.id]
            if node is not None:
                self._assign(st, i, node, ctx)
                return True
        # Any other holder with room: the origin in another city, another region's MEC.
        others = [snap.nodes[h] for h in st.holders if h not in tried]
        node = self._pick([n for n in others if feasible(n, ctx)], ctx)
        if node is not None:
            self._assign(st, i, node, ctx)
            return True
        return False

    def _assign(self, st: _Stream, i: int, node: Node, ctx: Context) -> None:
        st.where[i] = node.id
        self._use(node.id, egress=BITRATE_MBPS, viewers=1)
        self.res.latencies.append(estimate_rtt_ms(node, ctx))

    def _unassign(self, st: _Stream, i: int) -> None:
        nid = st.where[i]
        if nid is not None:
            st.where[i] = None
            self._use(nid, egress=-BITRATE_MBPS, viewers=-1)

    def _kind(self, node: Node, v: Viewer, region: str) -> str:
        if node.tier is Tier.CLOUD:
            return "cloud"
        if node.city == v.location.city:
            return "local"
        if node.tier is Tier.MEC and node.region == region:
            return "mec"
        return "remote"

    def _refresh(self, idx: int, st: _Stream, now: float) -> None:
        """Recount how the stream's viewers are served, and its backbone Mb/s."""
        alive: dict[str, bool] = {}

        def up(h: str) -> bool:
            if h not in alive:
                parent = st.holders[h]
                alive[h] = h not in self.down and (parent is None or up(parent))
            return alive[h]

        counts: dict[tuple[str, str], int] = {}
        backbone = 0.0
        if st.origin is not None and up(st.origin):
            if self.snap.nodes[st.origin].tier is Tier.CLOUD:
                backbone += BITRATE_MBPS  # the publisher's uplink
        for h, parent in st.holders.items():
            if parent is not None and up(h):
                backbone += BITRATE_MBPS  # the upstream copy to a relay
        served = []
        for i, nid in enumerate(st.where):
            v = st.ev.students[i]
            if nid is None or not up(nid):
                kind = "unserved"
            else:
                region = v.location.region or self.snap.city_region.get(v.location.city, "")
                kind = self._kind(self.snap.nodes[nid], v, region)
                if kind in ("cloud", "remote"):
                    backbone += BITRATE_MBPS
            served.append(kind != "unserved")
            key = (v.location.city, kind)
            counts[key] = counts.get(key, 0) + 1
        self._apply(st.counts, -1)
        st.counts = counts
        self._apply(counts, 1)
        self.backbone_mbps += backbone - st.backbone_mbps
        st.backbone_mbps = backbone
        st.served = served
        for f in self.res.failures:
            waiting = f.pending.get(idx)
            if waiting:
                back = {i for i in waiting if served[i]}
                if back:
                    waiting -= back
                    f.recovered_at = now
                if not waiting:
                    del f.pending[idx]

    def _apply(self, counts: dict[tuple[str, str], int], sign: int) -> None:
        for (city, kind), n in counts.items():
            self.counts[kind] += sign * n
            if city in self.city_counts:
                self.city_counts[city][kind] += sign * n

    def _cut(self, idx: int, st: _Stream, before: list[bool]) -> None:
        """Viewers served before and not now were cut by a failure: wait for them."""
        for i, (was, now) in enumerate(zip(before, st.served, strict=True)):
            if was and not now:
                f = self._failure_of(st, i)
                if f is not None:
                    f.cut += 1
                    f.pending.setdefault(idx, set()).add(i)

    def _failure_of(self, st: _Stream, i: int) -> FailureOutcome | None:
        h = st.where[i]
        while h is not None:
            if h in self.down:
                return self.down[h]
            h = st.holders.get(h)
        return None

    def _place(self, idx: int, st: _Stream, now: float) -> None:
        ev = st.ev
        req = PlacementRequest(
            ev.tenant, ev.stream, ev.teacher, egress_mbps=BITRATE_MBPS * len(ev.students)
        )
        self._sync()
        d = core.decide(self.snap, req, self.policy, now, ttl=self.ttl)
        if d.node is None:
            st.origin = None
            return
        st.origin = d.node.id
        self._add_holder(idx, st, d.node.id, None)
        self._use(d.node.id, slots=st.slots)
        for i in range(len(ev.students)):
            self._admit(idx, st, i, now)

    def _admit(self, idx: int, st: _Stream, i: int, now: float) -> None:
        if not self._serve(idx, st, i, now):
            self.res.turned_away += 1
            return
        # A viewer sent to a node that is down (not known yet) waits for it too.
        f = self._failure_of(st, i)
        if f is not None:
            if not any(i in w for w in (g.pending.get(idx, ()) for g in self.res.failures)):
                f.cut += 1
            f.pending.setdefault(idx, set()).add(i)

    def _release(self, idx: int, st: _Stream) -> None:
        for i in range(len(st.where)):
            self._unassign(st, i)
        for h in sorted(st.holders, key=lambda h: st.holders[h] is None):
            if st.holders[h] is None:
                self._use(h, slots=-st.slots)
            self._drop_holder(idx, st, h)
        st.origin = None

    # -- events -------------------------------------------------------------------------

    def start(self, idx: int, ev: ClassEvent, now: float) -> None:
        st = _Stream(ev, self.policy.session.slots, where=[None] * len(ev.students))
        self.streams[idx] = st
        self.res.sessions += 1
        self.res.viewers += len(ev.students)
        self.cloud_only_mbps += BITRATE_MBPS * (1 + len(ev.students))
        self._place(idx, st, now)
        if st.origin is None:
            self.res.rejected += 1
        else:
            self.res.tiers[self.snap.nodes[st.origin].tier.value] += 1
        self._refresh(idx, st, now)
        self.res.local_viewers += sum(n for (_, k), n in st.counts.items() if k == "local")

    def end(self, idx: int, now: float) -> None:
        st = self.streams.pop(idx)
        for f in self.res.failures:
            lost = f.pending.pop(idx, None)
            if lost:
                f.lost += len(lost)
        self._release(idx, st)
        st.where = []
        self._refresh(idx, st, now)
        self.cloud_only_mbps -= BITRATE_MBPS * (1 + len(st.ev.students))

    def fail(self, f: Failure, now: float) -> None:
        n = self.snap.nodes[f.node]
        out = FailureOutcome(f.node, n.city, now)
        self.res.failures.append(out)
        self.down[f.node] = out
        self.sim.set(replace(n, last_heartbeat=now))  # its last heartbeat
        for idx in sorted(self.node_streams.get(f.node, ())):
            st = self.streams[idx]
            before = list(st.served)
            self._refresh(idx, st, now)
            self._cut(idx, st, before)

    def detect(self, nid: str, now: float) -> None:
        """The node is stale: its relays' viewers ask again and go elsewhere."""
        for idx in sorted(self.node_streams.get(nid, ())):
            st = self.streams[idx]
            if st.origin == nid:
                continue  # re-placed after the autonomy window
            gone = {h for h in st.holders if self._under(st, h, nid)}
            moved = [i for i, w in enumerate(st.where) if w in gone]
            for i in moved:
                self._unassign(st, i)
            for h in sorted(gone, key=lambda h: -self._depth(st, h)):
                self._drop_holder(idx, st, h)
            for i in moved:
                self._admit(idx, st, i, now)
            self._refresh(idx, st, now)

    def migrate(self, nid: str, now: float) -> None:
        """Sessions on the node are re-placed; all their viewers follow."""
        for idx in sorted(self.node_streams.get(nid, ())):
            st = self.streams[idx]
            if st.origin != nid:
                continue
            self._release(idx, st)
            self.res.replaced += 1
            self._place(idx, st, now)
            self._refresh(idx, st, now)

    def _under(self, st: _Stream, h: str | None, nid: str) -> bool:
        while h is not None:
            if h == nid:
                return True
            h = st.holders.get(h)
        return False

    def _depth(self, st: _Stream, h: str) -> int:
        d = 0
        parent = st.holders.get(h)
        while parent is not None:
            d += 1
            parent = st.holders.get(parent)
        return d

    def sample(self, now: float) -> None:
        self.res.timeline.append(
            Sample(
                now,
                tuple(self.counts[k] for k in SHARES),
                self.backbone_mbps,
                self.cloud_only_mbps,
                {c: tuple(v[k] for k in SHARES) for c, v in self.city_counts.items()},
            )
        )


def simulate(
    fleet: Fleet,
    trace: Sequence[ClassEvent],
    policy: Policy,
    failures: Sequence[Failure] = (),
    windows: Sequence[Window] = (),
    liveness: LivenessConfig | None = None,
) -> Result:
    """Run ``trace`` on ``fleet`` under ``policy``; ``failures`` stop nodes mid-run.

    A failed node's relays lose their viewers at once; they ask again, and are moved,
    when the node's heartbeat is older than the liveness TTL (as the snapshot, refreshed
    every ``snapshot_interval``, first shows it); its sessions are re-placed once the
    autonomy window has passed as well.
    """
    live = liveness or LivenessConfig()
    refresh = PlacementConfig().snapshot_interval
    eng = _Engine(fleet, policy, failures, {c for w in windows for c in w.cities}, live)
    eng.res.windows = tuple(windows)
    # (time, order, seq, what): at one instant ends free capacity first, then failures
    # and their consequences, then classes start.
    events: list[tuple[float, int, int, str, Any]] = []
    for k, ev in enumerate(trace):
        heapq.heappush(events, (ev.start, 4, k, "start", k))
    for f in failures:
        if f.node not in eng.snap.nodes:
            raise InvalidField("failures", f"{f.node!r} is not in the fleet")
        heapq.heappush(events, (f.at, 1, 0, "fail", f))
    seq = len(trace)
    while events:
        now = events[0][0]
        while events and events[0][0] == now:
            _, _, _, what, arg = heapq.heappop(events)
            if what == "start":
                ev = trace[arg]
                eng.start(arg, ev, now)
                heapq.heappush(events, (now + ev.duration, 0, arg, "end", arg))
            elif what == "end":
                eng.end(arg, now)
            elif what == "fail":
                if arg.node in eng.down:
                    continue
                eng.fail(arg, now)
                seq += 1
                heapq.heappush(events, (now + live.ttl + refresh, 2, seq, "detect", arg.node))
                heapq.heappush(
                    events,
                    (now + live.ttl + live.autonomy_window + refresh, 3, seq, "migrate", arg.node),
                )
            elif what == "detect":
                eng.detect(arg, now)
            else:
                eng.migrate(arg, now)
        eng.sample(now)
    return eng.res


# --- the report ----------------------------------------------------------------------


@dataclass(frozen=True)
class Report:
    markdown: str
    results: tuple[Result, ...]
    files: tuple[str, ...]


def _markdown(
    results: Sequence[Result], nodes: int, classes: int, seed: int, trace: Trace | None
) -> str:
    rows = [r.row() for r in results]
    keys = list(rows[0]) if rows else []
    head = "| metric | " + " | ".join(r.policy for r in results) + " |"
    sep = "|---|" + "---|" * len(results)
    title = f"# Placement simulation: {nodes} nodes, {classes} classes, seed {seed}"
    if trace is not None:
        title = f"# Placement simulation: trace {trace.name}, {nodes} nodes, {classes} classes"
    lines = [title, ""]
    if trace is not None and trace.description:
        lines += [trace.description, ""]
    lines += [head, sep]
    lines += [f"| {k} | " + " | ".join(row[k] for row in rows) + " |" for k in keys]
    lines += [
        "",
        "Viewer shares are viewer-time. Backbone: uplinks to a cloud origin, one upstream "
        "copy per relay, viewers served from the cloud or another city; all-from-cloud: "
        "every viewer and publisher through the cloud.",
    ]
    return "\n".join(lines) + "\n"


def _save(fig: Any, out_dir: str, name: str) -> str:
    import matplotlib.pyplot as plt

    path = os.path.join(out_dir, name)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


_COLOURS = {
    "local": "#2a9d8f",
    "mec": "#e9c46a",
    "cloud": "#4d7ebf",
    "remote": "#a58bd1",
    "unserved": "#e76f51",
}
_LABELS = {
    "local": "local (own city)",
    "mec": "regional MEC",
    "cloud": "cloud",
    "remote": "other node",
    "unserved": "unserved",
}


def _stack(ax: Any, res: Result, start: float, end: float, city: str | None, unit: float) -> None:
    pts = [s for s in res.timeline if start <= s.t <= end]
    before = [s for s in res.timeline if s.t < start]
    if before:
        pts = [replace(before[-1], t=start), *pts]
    if not pts:
        return
    xs = [s.t / unit for s in pts] + [end / unit]
    series = []
    for k, _ in enumerate(SHARES):
        ys = [s.count([city] if city else ())[k] for s in pts]
        series.append([*ys, ys[-1]])
    ax.stackplot(
        xs,
        *series,
        step="post",
        labels=[_LABELS[k] for k in SHARES],
        colors=[_COLOURS[k] for k in SHARES],
    )


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
            [a / b if b else float("nan") for a, b in r.hourly_local()],
            marker="o",
            label=r.policy,
        )
    ax.set_xlabel("hour of day")
    ax.set_ylabel("local-serve ratio")
    ax.set_title("Viewers served in their own city")
    ax.legend()
    files.append(_save(fig, out_dir, "local_by_hour.png"))

    # Viewers by how they are served, over the run: the spill to MEC and cloud.
    fig, axes = plt.subplots(
        len(results) + 1,
        1,
        figsize=(10, 3.2 * (len(results) + 1)),
        sharex=True,
        squeeze=False,
        layout="constrained",
    )
    for ax, r in zip(axes[:, 0], results, strict=False):
        if len(r.timeline) < 2:
            continue
        _stack(ax, r, r.timeline[0].t, r.timeline[-1].t, None, HOUR)
        for w in {(w.name, w.start, w.end): w for w in r.windows}.values():
            ax.axvspan(w.start / HOUR, w.end / HOUR, color="grey", alpha=0.08)
            ax.text(
                w.start / HOUR,
                1.0,
                f" {w.name}",
                transform=ax.get_xaxis_transform(),
                va="top",
                fontsize=8,
            )
        for f in r.failures:
            ax.axvline(f.at / HOUR, color="black", linestyle="--", linewidth=1)
            ax.text(
                f.at / HOUR,
                0.9,
                f" {f.node} fails",
                transform=ax.get_xaxis_transform(),
                va="top",
                fontsize=8,
            )
        ax.set_ylabel("viewers")
        ax.set_title(f"Viewers by serving tier: {r.policy}")
        ax.legend(loc="upper left", fontsize=8)
    ax = axes[-1, 0]
    for r in results:
        if r.timeline:
            ax.step(
                [s.t / HOUR for s in r.timeline],
                [s.backbone_mbps for s in r.timeline],
                where="post",
                label=f"{r.policy} backbone",
            )
    if results and results[0].timeline:
        tl = results[0].timeline
        ax.step(
            [s.t / HOUR for s in tl],
            [s.cloud_only_mbps for s in tl],
            where="post",
            color="black",
            linestyle=":",
            label="all from the cloud",
        )
    ax.set_ylabel("backbone Mb/s")
    ax.set_xlabel("hour of the trace")
    ax.set_title("Backbone traffic against serving everyone from the cloud")
    ax.legend(loc="upper left", fontsize=8)
    files.append(_save(fig, out_dir, "viewers.png"))

    # Around each failure that cut viewers: the failed node's city, cut off and served again.
    failures = [(r, f) for r in results for f in r.failures if f.cut]
    if failures:
        fig, axes = plt.subplots(
            len(failures), 1, figsize=(9, 3.4 * len(failures)), squeeze=False, layout="constrained"
        )
        for ax, (r, f) in zip(axes[:, 0], failures, strict=True):
            _stack(ax, r, f.at - 60, f.at + 120, f.city, 1.0)
            ax.axvline(f.at, color="black", linestyle="--", linewidth=1)
            ticks = [f.at + d for d in range(-60, 121, 30)]
            ax.set_xticks(ticks, [f"{d:+d} s" for d in range(-60, 121, 30)])
            ax.set_xlabel(f"seconds from {f.node}'s failure at {clock(f.at)}")
            ax.set_ylabel(f"viewers in {f.city}")
            ax.set_title(f"Recovery after {f.node} fails: {r.policy}")
            ax.legend(loc="lower right", fontsize=8)
        files.append(_save(fig, out_dir, "failure.png"))
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
    trace: Trace | None = None,
) -> Report:
    """Simulate on ``fleet`` (default: a synthetic one of ``nodes`` nodes), or ``trace``
    (a trace file's fleet, classes, failures and windows)."""
    failures: Sequence[Failure] = ()
    windows: Sequence[Window] = ()
    if trace is not None:
        fleet, events = trace.fleet, list(trace.classes)
        failures, windows = trace.failures, trace.windows
    else:
        fleet = fleet or build_fleet(nodes, seed)
        events = trace_from_log(replay) if replay is not None else build_trace(fleet, classes, seed)
    results = tuple(simulate(fleet, events, p, failures, windows) for p in policies)
    os.makedirs(out_dir, exist_ok=True)
    md = _markdown(results, len(fleet.nodes), len(events), seed, trace)
    path = os.path.join(out_dir, "report.md")
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(md)
    files = [path, *_plots(results, out_dir)]
    return Report(md, results, tuple(files))
