"""The placement data model: nodes, locations, requests, sessions and fleet snapshots.

Everything here is immutable plain data. Nodes and sessions round-trip through
``to_dict``/``from_dict`` so both registries store the same JSON.
"""

from __future__ import annotations

import bisect
import enum
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from placement.errors import InvalidField
from tokens.node import node_id_problem


class Tier(enum.StrEnum):
    EDGE = "edge"
    MEC = "mec"
    CLOUD = "cloud"


class NodeState(enum.StrEnum):
    READY = "ready"
    DRAINING = "draining"
    CORDONED = "cordoned"


class SessionState(enum.StrEnum):
    RESERVED = "reserved"
    LIVE = "live"


# Free-text descriptor fields (city, ISP, label names) and label values are bounded:
# every node's descriptor is read on each full snapshot refresh.
MAX_TEXT = 64
MAX_LABEL_VALUE = 1024
MAX_LABELS = 32


def check_node_id(value: str, field: str = "id", what: str = "a node id") -> None:
    """The one rule for node ids and regions (``tokens.node.NODE_ID``): they become Redis
    keys, hash tags and space-separated fields of the registry's Lua scripts."""
    if (problem := node_id_problem(value, what)) is not None:
        raise InvalidField(field, problem)


def _get(data: Mapping[str, Any], key: str, kind: type | tuple[type, ...], prefix: str) -> Any:
    name = f"{prefix}{key}"
    if key not in data:
        raise InvalidField(name, "is required")
    value = data[key]
    if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        raise InvalidField(name, "has the wrong type")
    if not isinstance(value, kind):
        raise InvalidField(name, "has the wrong type")
    return value


def _enum(cls: type[enum.StrEnum], value: Any, name: str) -> Any:
    try:
        return cls(value)
    except ValueError:
        allowed = ", ".join(m.value for m in cls)
        raise InvalidField(name, f"must be one of {allowed}, not {value!r}") from None


@dataclass(frozen=True, slots=True)
class Capacity:
    slots: int
    egress_mbps: float
    viewers: int

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], prefix: str = "capacity.") -> Capacity:
        slots = _get(d, "slots", int, prefix)
        egress = float(_get(d, "egress_mbps", (int, float), prefix))
        viewers = _get(d, "viewers", int, prefix)
        for k, v in (("slots", slots), ("egress_mbps", egress), ("viewers", viewers)):
            if v < 0:
                raise InvalidField(prefix + k, "must not be negative")
        return cls(slots, egress, viewers)


@dataclass(frozen=True, slots=True)
class Load:
    cpu: float = 0.0
    transcodes: int = 0
    egress_mbps: float = 0.0
    viewers: int = 0

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], prefix: str = "load.") -> Load:
        cpu = float(d.get("cpu", 0.0))
        if not 0 <= cpu <= 1.5:
            raise InvalidField(prefix + "cpu", "must be a fraction between 0 and 1.5")
        return cls(
            cpu,
            int(d.get("transcodes", 0)),
            float(d.get("egress_mbps", 0.0)),
            int(d.get("viewers", 0)),
        )


@dataclass(frozen=True, slots=True)
class Urls:
    """Public base URLs of a node (scheme://host:port). A session's ingest URLs are
    ``{rtmp}/{tenant}/{stream}`` and ``{whip}/{tenant}/{stream}/whip``; playback is
    ``{http}/{tenant}/{stream}/index.m3u8``."""

    rtmp: str
    http: str
    whip: str


@dataclass(frozen=True, slots=True)
class Node:
    id: str
    tier: Tier
    region: str
    city: str
    isp: str
    lat: float
    lon: float
    urls: Urls
    capacity: Capacity
    load: Load = Load()
    state: NodeState = NodeState.READY
    labels: Mapping[str, str] = field(default_factory=dict)
    last_heartbeat: float = 0.0
    reserved_slots: int = 0
    reserved_egress_mbps: float = 0.0
    streams: frozenset[str] = frozenset()

    @property
    def pool(self) -> str:
        """Redis Cluster hash-tag pool: one per region keeps reservations single-slot."""
        return self.region

    def free_slots(self, headroom: float = 1.0) -> float:
        used = max(self.reserved_slots, self.load.transcodes)
        return self.capacity.slots * headroom - used

    def free_egress(self, headroom: float = 1.0) -> float:
        used = max(self.reserved_egress_mbps, self.load.egress_mbps)
        return self.capacity.egress_mbps * headroom - used

    def descriptor(self) -> dict[str, Any]:
        """The static part a node registers (and re-sends with full stats)."""
        return {
            "id": self.id,
            "tier": self.tier.value,
            "region": self.region,
            "city": self.city,
            "isp": self.isp,
            "lat": self.lat,
            "lon": self.lon,
            "urls": {"rtmp": self.urls.rtmp, "http": self.urls.http, "whip": self.urls.whip},
            "capacity": {
                "slots": self.capacity.slots,
                "egress_mbps": self.capacity.egress_mbps,
                "viewers": self.capacity.viewers,
            },
            "labels": dict(self.labels),
        }

    def to_dict(self) -> dict[str, Any]:
        d = self.descriptor()
        d.update(
            load={
                "cpu": self.load.cpu,
                "transcodes": self.load.transcodes,
                "egress_mbps": self.load.egress_mbps,
                "viewers": self.load.viewers,
            },
            state=self.state.value,
            last_heartbeat=self.last_heartbeat,
            reserved_slots=self.reserved_slots,
            reserved_egress_mbps=self.reserved_egress_mbps,
            streams=sorted(self.streams),
        )
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], prefix: str = "") -> Node:
        node_id = _get(d, "id", str, prefix)
        check_node_id(node_id, prefix + "id")
        region = _get(d, "region", str, prefix)
        check_node_id(region, prefix + "region", "a region")
        urls = _get(d, "urls", Mapping, prefix)
        lat = float(_get(d, "lat", (int, float), prefix))
        lon = float(_get(d, "lon", (int, float), prefix))
        if not (-90 <= lat <= 90):
            raise InvalidField(prefix + "lat", "must be between -90 and 90")
        if not (-180 <= lon <= 180):
            raise InvalidField(prefix + "lon", "must be between -180 and 180")
        labels = d.get("labels") or {}
        if not isinstance(labels, Mapping):
            raise InvalidField(prefix + "labels", "must be a mapping")
        if len(labels) > MAX_LABELS:
            raise InvalidField(prefix + "labels", f"has more than {MAX_LABELS} entries")
        for k, v in labels.items():
            if len(str(k)) > MAX_TEXT or len(str(v)) > MAX_LABEL_VALUE:
                raise InvalidField(
                    f"{prefix}labels.{str(k)[:MAX_TEXT]}",
                    f"names are at most {MAX_TEXT} characters, values {MAX_LABEL_VALUE}",
                )
        for key in ("city", "isp"):
            text = _get(d, key, str, prefix)
            if len(text) > MAX_TEXT or not text.isprintable():
                raise InvalidField(
                    prefix + key, f"must be printable text of at most {MAX_TEXT} characters"
                )
        return cls(
            id=node_id,
            tier=_enum(Tier, d.get("tier"), prefix + "tier"),
            region=region,
            city=_get(d, "city", str, prefix),
            isp=_get(d, "isp", str, prefix),
            lat=lat,
            lon=lon,
            urls=Urls(
                rtmp=str(urls.get("rtmp", "")),
                http=str(urls.get("http", "")),
                whip=str(urls.get("whip", "")),
            ),
            capacity=Capacity.from_dict(_get(d, "capacity", Mapping, prefix), prefix + "capacity."),
            load=Load.from_dict(d.get("load") or {}, prefix + "load."),
            state=_enum(NodeState, d.get("state", "ready"), prefix + "state"),
            labels={str(k): str(v) for k, v in labels.items()},
            last_heartbeat=float(d.get("last_heartbeat", 0.0)),
            reserved_slots=int(d.get("reserved_slots", 0)),
            reserved_egress_mbps=float(d.get("reserved_egress_mbps", 0.0)),
            streams=frozenset(str(s) for s in d.get("streams") or ()),
        )


@dataclass(frozen=True, slots=True)
class Location:
    city: str = ""
    isp: str = ""
    region: str = ""
    lat: float | None = None
    lon: float | None = None
    source: str = "unknown"

    def to_dict(self) -> dict[str, Any]:
        return {
            "city": self.city,
            "isp": self.isp,
            "region": self.region,
            "lat": self.lat,
            "lon": self.lon,
            "source": self.source,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Location:
        lat, lon = d.get("lat"), d.get("lon")
        return cls(
            str(d.get("city", "")),
            str(d.get("isp", "")),
            str(d.get("region", "")),
            None if lat is None else float(lat),
            None if lon is None else float(lon),
            str(d.get("source", "unknown")),
        )


def stream_key(tenant: str, stream: str) -> str:
    return f"{tenant}/{stream}"


@dataclass(frozen=True, slots=True)
class PlacementRequest:
    tenant: str
    stream: str
    location: Location = Location()
    slots: int = 0
    egress_mbps: float = 0.0
    exclude: frozenset[str] = frozenset()

    def to_dict(self) -> dict[str, Any]:
        return {
            "tenant": self.tenant,
            "stream": self.stream,
            "location": self.location.to_dict(),
            "slots": self.slots,
            "egress_mbps": self.egress_mbps,
            "exclude": sorted(self.exclude),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PlacementRequest:
        return cls(
            tenant=str(d["tenant"]),
            stream=str(d["stream"]),
            location=Location.from_dict(d.get("location") or {}),
            slots=int(d.get("slots", 0)),
            egress_mbps=float(d.get("egress_mbps", 0.0)),
            exclude=frozenset(d.get("exclude") or ()),
        )


@dataclass(frozen=True, slots=True)
class Session:
    id: str
    tenant: str
    stream: str
    node_id: str
    tier: Tier
    pool: str
    slots: int
    egress_mbps: float
    created: float
    lease_expires: float
    state: SessionState = SessionState.RESERVED
    degraded: bool = False
    # Where the publisher is (given or derived from its IP): re-placement after its
    # node dies starts from here, not from the dead node. None for sessions stored
    # before it was recorded.
    location: Location | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "tenant": self.tenant,
            "stream": self.stream,
            "node_id": self.node_id,
            "tier": self.tier.value,
            "pool": self.pool,
            "slots": self.slots,
            "egress_mbps": self.egress_mbps,
            "created": self.created,
            "lease_expires": self.lease_expires,
            "state": self.state.value,
            "degraded": self.degraded,
            "location": self.location.to_dict() if self.location is not None else None,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Session:
        loc = d.get("location")
        return cls(
            id=str(d["id"]),
            tenant=str(d["tenant"]),
            stream=str(d["stream"]),
            node_id=str(d["node_id"]),
            tier=Tier(d["tier"]),
            pool=str(d["pool"]),
            slots=int(d["slots"]),
            egress_mbps=float(d["egress_mbps"]),
            created=float(d["created"]),
            lease_expires=float(d["lease_expires"]),
            state=SessionState(d.get("state", "reserved")),
            degraded=bool(d.get("degraded", False)) in (True, "1", "true"),
            location=Location.from_dict(loc) if isinstance(loc, Mapping) else None,
        )

    def with_(self, **changes: Any) -> Session:
        return replace(self, **changes)


def session_pool(session_id: str) -> str:
    """Session ids are ``<pool>~<random>`` so a lookup finds its hash slot without a scan."""
    pool, sep, _ = session_id.partition("~")
    if not sep or not pool:
        raise InvalidField("session_id", f"{session_id!r} is not a placement session id")
    return pool


def _node_id(node: Node) -> str:
    return node.id


def haversine_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 12742.0 * math.asin(min(1.0, math.sqrt(a)))


@dataclass(frozen=True)
class FleetSnapshot:
    """An immutable, indexed view of the fleet at ``taken_at``.

    Indexes by locality key let a decision scan only the publisher's city, the
    region's MEC nodes or the cloud, so its cost does not grow with fleet size.
    """

    id: str
    taken_at: float
    nodes: Mapping[str, Node]
    by_tier_city: Mapping[tuple[Tier, str], tuple[Node, ...]]
    by_tier_region: Mapping[tuple[Tier, str], tuple[Node, ...]]
    by_tier: Mapping[Tier, tuple[Node, ...]]
    by_stream: Mapping[str, tuple[Node, ...]]
    city_centroid: Mapping[str, tuple[float, float]]
    city_region: Mapping[str, str]

    @classmethod
    def build(cls, nodes: Iterable[Node], snapshot_id: str, taken_at: float) -> FleetSnapshot:
        all_nodes = sorted(nodes, key=lambda n: n.id)
        by_id: dict[str, Node] = {}
        tc: dict[tuple[Tier, str], list[Node]] = {}
        tr: dict[tuple[Tier, str], list[Node]] = {}
        tt: dict[Tier, list[Node]] = {}
        bs: dict[str, list[Node]] = {}
        sums: dict[str, list[float]] = {}
        regions: dict[str, str] = {}
        for n in all_nodes:
            by_id[n.id] = n
            tc.setdefault((n.tier, n.city), []).append(n)
            tr.setdefault((n.tier, n.region), []).append(n)
            tt.setdefault(n.tier, []).append(n)
            for s in n.streams:
                bs.setdefault(s, []).append(n)
            if n.tier is not Tier.CLOUD:
                acc = sums.setdefault(n.city, [0.0, 0.0, 0.0])
                acc[0] += n.lat
                acc[1] += n.lon
                acc[2] += 1
                regions.setdefault(n.city, n.region)
        return cls(
            id=snapshot_id,
            taken_at=taken_at,
            nodes=by_id,
            by_tier_city={k: tuple(v) for k, v in tc.items()},
            by_tier_region={k: tuple(v) for k, v in tr.items()},
            by_tier={k: tuple(v) for k, v in tt.items()},
            by_stream={k: tuple(v) for k, v in bs.items()},
            city_centroid={c: (a[0] / a[2], a[1] / a[2]) for c, a in sums.items()},
            city_region=regions,
        )

    def update(
        self,
        changed: Iterable[Node],
        removed: Iterable[str],
        snapshot_id: str,
        taken_at: float,
    ) -> FleetSnapshot:
        """A new snapshot with ``changed`` nodes upserted and ``removed`` ids dropped.

        Only the index entries the changes touch are rebuilt, so the cost follows the
        number of changes rather than the fleet; this snapshot is left as it was
        (decision replay keeps using it). The result equals :meth:`build` on the
        updated node set.
        """
        nodes = dict(self.nodes)
        latest = {n.id: n for n in changed}  # the last change of a node wins
        gone = [i for i in removed if i not in latest]
        olds = [self.nodes[i] for i in (*gone, *latest) if i in self.nodes]
        news = list(latest.values())
        for node_id in gone:
            nodes.pop(node_id, None)
        nodes.update(latest)
        if not olds and not news:
            return replace(self, id=snapshot_id, taken_at=taken_at, nodes=nodes)

        def rebuild(
            index: Mapping[Any, tuple[Node, ...]], keys_of: Any
        ) -> dict[Any, tuple[Node, ...]]:
            out = dict(index)
            before: dict[Any, set[str]] = {}
            after: dict[Any, dict[str, Node]] = {}
            for n in olds:
                for k in keys_of(n):
                    before.setdefault(k, set()).add(n.id)
            for n in news:
                for k in keys_of(n):
                    after.setdefault(k, {})[n.id] = n
            for k in before.keys() | after.keys():
                left, joined = before.get(k, set()), after.get(k, {})
                current = out.get(k, ())
                if left == joined.keys():  # same members: swap in place, order kept
                    members = list(current)  # sorted by id: find each by bisection
                    for node_id, n in joined.items():
                        members[bisect.bisect_left(members, node_id, key=_node_id)] = n
                    out[k] = tuple(members)
                    continue
                members = [n for n in current if n.id not in left] + list(joined.values())
                if members:
                    out[k] = tuple(sorted(members, key=lambda n: n.id))
                else:
                    out.pop(k, None)
            return out

        by_tier_city = rebuild(self.by_tier_city, lambda n: ((n.tier, n.city),))

        # Centroids and city -> region change only when a node appears, goes or moves.
        def geo(n: Node) -> tuple[Tier, str, str, float, float]:
            return (n.tier, n.city, n.region, n.lat, n.lon)

        dirty: set[str] = set()
        old_ids = {o.id for o in olds}
        for o in olds:
            cur = nodes.get(o.id)
            if cur is None or geo(cur) != geo(o):
                dirty.add(o.city)
                if cur is not None:
                    dirty.add(cur.city)
        dirty.update(n.city for n in news if n.id not in old_ids)
        centroid = dict(self.city_centroid)
        regions = dict(self.city_region)
        for city in dirty:
            members = sorted(
                (n for t in Tier if t is not Tier.CLOUD for n in by_tier_city.get((t, city), ())),
                key=lambda n: n.id,
            )
            if not members:
                centroid.pop(city, None)
                regions.pop(city, None)
                continue
            lat = lon = 0.0
            for n in members:
                lat += n.lat
                lon += n.lon
            centroid[city] = (lat / len(members), lon / len(members))
            regions[city] = members[0].region
        return FleetSnapshot(
            id=snapshot_id,
            taken_at=taken_at,
            nodes=nodes,
            by_tier_city=by_tier_city,
            by_tier_region=rebuild(self.by_tier_region, lambda n: ((n.tier, n.region),)),
            by_tier=rebuild(self.by_tier, lambda n: (n.tier,)),
            by_stream=rebuild(self.by_stream, lambda n: n.streams),
            city_centroid=centroid,
            city_region=regions,
        )
