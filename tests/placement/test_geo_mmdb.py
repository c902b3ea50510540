"""Client IP -> city/ISP through a real MaxMind DB file read by ``maxminddb``.

The database is written by the test (``placementutil.write_mmdb``) in the
GeoIP2 City layout (IPv6 tree, IPv4 under ``::/96``); both the C extension and
the pure-Python reader must read it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import maxminddb
import pytest
from fastapi import FastAPI
from placementutil import NODE_KEYS, Clock, make_node, write_mmdb

from placement.app import create_app
from placement.config import GeoConfig, PlacementConfig
from placement.errors import InvalidField
from placement.geo import GeoResolver
from placement.model import Location
from placement.registry.memory import InProcessRegistry
from settings import build

OP = {"Authorization": "Bearer op"}


def city_record(city: str, region: str, lat: float, lon: float, **extra: Any) -> dict[str, Any]:
    return {
        "city": {"geoname_id": 1808926, "names": {"en": city, "zh-CN": city.upper()}},
        "subdivisions": [{"iso_code": "ZJ", "names": {"en": region}}],
        "location": {"latitude": lat, "longitude": lon, "accuracy_radius": 20},
        "country": {"iso_code": "CN", "names": {"en": "China"}},
        **extra,
    }


@pytest.fixture
def mmdb(tmp_path: Path) -> str:
    path = tmp_path / "city-isp.mmdb"
    write_mmdb(
        str(path),
        {
            # A wide block and a more specific one inside it: longest prefix wins.
            "203.0.0.0/8": city_record("shanghai", "east", 31.23, 121.47, isp="china-unicom"),
            "203.0.113.0/24": city_record("hangzhou", "east", 30.27, 120.15, isp="china-telecom"),
            # ASN-style record: the ISP comes from the AS organisation.
            "198.51.100.0/24": city_record(
                "ningbo", "east", 29.87, 121.54, autonomous_system_organization="china-mobile"
            ),
            "2001:db8:100::/48": city_record(
                "hangzhou", "east", 30.27, 120.15, isp="china-telecom"
            ),
        },
        database_type="GeoIP2-City",
    )
    return str(path)


@pytest.fixture
def cidr_csv(tmp_path: Path) -> str:
    path = tmp_path / "cidr.csv"
    path.write_text(
        "cidr,city,isp,region,lat,lon\n"
        "203.0.113.0/24,wrong-city,wrong-isp,wrong,1,1\n"
        "192.0.2.0/24,wuhan,china-telecom,central,30.59,114.31\n"
    )
    return str(path)


@pytest.mark.parametrize("mode", [maxminddb.MODE_AUTO, maxminddb.MODE_FILE])
def test_written_file_is_a_valid_maxmind_db(mmdb: str, mode: int) -> None:
    with maxminddb.open_database(mmdb, mode) as reader:
        meta = reader.metadata()
        assert meta.database_type == "GeoIP2-City" and meta.ip_version == 6
        rec, plen = reader.get_with_prefix_len("203.0.113.77")
        assert rec is not None and rec["city"]["names"]["en"] == "hangzhou" and plen == 24
        assert reader.get("10.0.0.1") is None


def test_ip_resolves_through_maxminddb(mmdb: str, cidr_csv: str) -> None:
    geo = GeoResolver.from_paths(cidr_csv, mmdb)
    try:
        # The C extension's reader or the pure-Python one, both from maxminddb.
        assert type(geo._readers[0]).__module__.startswith("maxminddb")
        loc = geo.resolve("203.0.113.9")
        assert loc == Location("hangzhou", "china-telecom", "east", 30.27, 120.15, "mmdb")
        # The /8 around it, and the AS organisation as ISP.
        assert geo.resolve("203.7.1.1").city == "shanghai"
        assert geo.resolve("203.7.1.1").isp == "china-unicom"
        assert geo.resolve("198.51.100.4").isp == "china-mobile"
        assert geo.resolve("2001:db8:100::42").city == "hangzhou"
        # Not in the database: the CIDR table answers; in neither: unknown.
        assert geo.resolve("192.0.2.8") == Location(
            "wuhan", "china-telecom", "central", 30.59, 114.31, "cidr"
        )
        assert geo.resolve("10.9.9.9") == Location()
        assert geo.resolve("not-an-ip") == Location()
    finally:
        geo.close()


def test_hints_override_the_database(mmdb: str) -> None:
    geo = GeoResolver.from_paths("", mmdb)
    try:
        loc = geo.resolve("203.0.113.9", Location(isp="china-unicom", source="hint"))
        assert (loc.city, loc.isp, loc.region, loc.source) == (
            "hangzhou",
            "china-unicom",
            "east",
            "hint",
        )
        # A city hint also drops the database's coordinates (they belong to another city).
        loc = geo.resolve("203.0.113.9", Location(city="ningbo", source="hint"))
        assert (loc.city, loc.isp, loc.lat, loc.lon) == ("ningbo", "china-telecom", None, None)
    finally:
        geo.close()


@pytest.fixture
async def app(mmdb: str) -> AsyncIterator[FastAPI]:
    cfg = PlacementConfig(operator_token="op", node_keys=NODE_KEYS, geo=GeoConfig(mmdb=mmdb))
    clock = Clock()
    app = create_app(cfg, InProcessRegistry(), clock=clock, background=False)
    svc = app.state.service
    await svc.start(background=False)
    common = {"region": "east", "hb": clock.t}
    for node in (
        make_node("hz-tel", city="hangzhou", isp="china-telecom", lat=30.27, lon=120.15, **common),
        make_node("hz-uni", city="hangzhou", isp="china-unicom", lat=30.27, lon=120.15, **common),
        make_node("sh-uni", city="shanghai", isp="china-unicom", lat=31.23, lon=121.47, **common),
    ):
        await svc.registry.register(node, clock.t)
    await svc.refresh()
    yield app
    await svc.stop()
    svc.geo.close()


async def test_api_places_by_client_ip_and_hints_win(app: FastAPI) -> None:
    transport = httpx.ASGITransport(app=app, client=("203.0.113.50", 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://placement") as c:
        # The connecting address is looked up in the .mmdb: Hangzhou, China Telecom.
        r = await c.post("/v1/sessions", json={"tenant": "t", "stream": "a"}, headers=OP)
        assert r.status_code == 201, r.text
        assert r.json()["node"] == "hz-tel"
        # An explicit client_ip (a proxy forwarding for a publisher) is looked up too.
        r = await c.post(
            "/v1/sessions",
            json={"tenant": "t", "stream": "b", "client_ip": "203.9.0.1"},
            headers=OP,
        )
        assert r.status_code == 201 and r.json()["node"] == "sh-uni", r.text
        # An explicit ISP hint overrides the database's ISP; the city still comes from it.
        r = await c.post(
            "/v1/sessions",
            json={"tenant": "t", "stream": "c", "location": {"isp": "china-unicom"}},
            headers=OP,
        )
        assert r.status_code == 201 and r.json()["node"] == "hz-uni", r.text
        log = (await c.get("/v1/decisions", headers=OP)).json()
        sources = [(e["request"]["stream"], e["request"]["location"]) for e in reversed(log)]
        assert [(s, loc["city"], loc["isp"], loc["source"]) for s, loc in sources] == [
            ("a", "hangzhou", "china-telecom", "mmdb"),
            ("b", "shanghai", "china-unicom", "mmdb"),
            ("c", "hangzhou", "china-unicom", "hint"),
        ]
        # Viewers are routed by their address too: a Shanghai viewer of stream "a".
        r = await c.get("/v1/route", params={"tenant": "t", "stream": "a", "ip": "203.1.2.3"})
        assert r.status_code == 200, r.text
        view = (await c.get("/v1/decisions", params={"limit": 1}, headers=OP)).json()[0]
        assert view["kind"] == "view"
        assert view["request"]["location"]["city"] == "shanghai"
        assert view["request"]["location"]["source"] == "mmdb"


def test_city_and_isp_databases_and_csv_merge_field_by_field(tmp_path: Path) -> None:
    """MaxMind ships City (no ISP) and ISP/ASN (no city) as separate databases."""
    city_db, isp_db = str(tmp_path / "city.mmdb"), str(tmp_path / "isp.mmdb")
    write_mmdb(
        city_db,
        {
            "203.0.113.0/24": city_record("hangzhou", "east", 30.27, 120.15),
            "192.0.2.0/24": city_record("wuhan", "central", 30.59, 114.31),
        },
        database_type="GeoIP2-City",
    )
    write_mmdb(
        isp_db,
        {"203.0.113.0/24": {"isp": "china-telecom", "autonomous_system_number": 4134}},
        database_type="GeoIP2-ISP",
    )
    csv_path = tmp_path / "cidr.csv"
    csv_path.write_text(
        "cidr,city,isp,region,lat,lon\n"
        # Disagrees on the city: only its ISP is taken, and not its coordinates.
        "192.0.2.0/24,elsewhere,china-unicom,west,1,1\n"
        # Only the table knows this block.
        "198.51.100.0/24,ningbo,china-mobile,east,29.87,121.54\n"
    )
    # One database: the CSV fills the ISP that a City database does not carry.
    geo = GeoResolver.from_paths(str(csv_path), city_db)
    try:
        assert geo.resolve("192.0.2.7") == Location(
            "wuhan", "china-unicom", "central", 30.59, 114.31, "mmdb+cidr"
        )
        assert geo.resolve("198.51.100.9").source == "cidr"
    finally:
        geo.close()
    # A City and an ISP database, as a YAML list: both answer for one address.
    cfg = build(PlacementConfig, {"geo": {"cidr_csv": str(csv_path), "mmdb": [city_db, isp_db]}})
    geo = GeoResolver.from_paths(cfg.geo.cidr_csv, cfg.geo.mmdb)
    try:
        assert geo.resolve("203.0.113.9") == Location(
            "hangzhou", "china-telecom", "east", 30.27, 120.15, "mmdb"
        )
        # The ISP database knows nothing of 192.0.2.0/24: the table still fills it.
        assert geo.resolve("192.0.2.7").isp == "china-unicom"
        # A hint still wins over every source.
        assert geo.resolve("203.0.113.9", Location(isp="x", source="hint")).isp == "x"
    finally:
        geo.close()
    # A bad second database names itself.
    with pytest.raises(InvalidField, match="geo.mmdb"):
        GeoResolver(None, [city_db, str(csv_path)])
