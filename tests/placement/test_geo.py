from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from placement.errors import InvalidField
from placement.geo import CidrTable, GeoResolver
from placement.model import Location

CSV = """cidr,city,isp,region,lat,lon
10.0.0.0/8,paris,orange,north,48.85,2.35
10.1.0.0/16,lyon,free,west,45.76,4.84
2001:db8::/32,nice,sfr,south,,
"""


@pytest.fixture
def table(tmp_path: Path) -> CidrTable:
    p = tmp_path / "geo.csv"
    p.write_text(CSV)
    return CidrTable.load(str(p))


@pytest.mark.parametrize(
    ("ip", "city"),
    [
        ("10.2.3.4", "paris"),
        ("10.1.2.3", "lyon"),
        ("2001:db8::1", "nice"),
        ("192.0.2.1", None),
        ("not-an-ip", None),
    ],
)
def test_longest_prefix(table: CidrTable, ip: str, city: str | None) -> None:
    loc = table.lookup(ip)
    assert (loc.city if loc else None) == city


def test_hints_override(table: CidrTable) -> None:
    geo = GeoResolver(table)
    assert geo.resolve("10.1.2.3").isp == "free"
    loc = geo.resolve("10.1.2.3", Location(isp="orange", source="hint"))
    assert (loc.city, loc.isp, loc.source) == ("lyon", "orange", "hint")
    loc = geo.resolve("10.1.2.3", Location(city="paris"))
    assert loc.city == "paris" and loc.lat is None  # the table's coordinates were lyon's


def test_bad_csv_names_the_key(tmp_path: Path) -> None:
    p = tmp_path / "bad.csv"
    p.write_text("cidr,city\nnonsense,x\n")
    with pytest.raises(InvalidField, match="geo.cidr_csv"):
        CidrTable.load(str(p))
    with pytest.raises(InvalidField, match="geo.cidr_csv"):
        CidrTable.load(str(tmp_path / "missing.csv"))


def test_mmdb_wins_over_table(table: CidrTable) -> None:
    class FakeReader:
        def get(self, ip: str) -> dict[str, Any] | None:
            if ip.startswith("10."):
                return {
                    "city": {"names": {"en": "marseille"}},
                    "subdivisions": [{"names": {"en": "south"}}],
                    "location": {"latitude": 43.3, "longitude": 5.4},
                    "autonomous_system_organization": "bouygues",
                }
            return None

        def close(self) -> None:
            pass

    geo = GeoResolver(table)
    geo._readers = [FakeReader()]
    assert geo.resolve("10.1.2.3").city == "marseille"
    assert geo.resolve("10.1.2.3").isp == "bouygues"
    assert geo.resolve("2001:db8::5").city == "nice"  # not in the database: CSV answers


def test_unreadable_mmdb_names_the_key(tmp_path: Path) -> None:
    p = tmp_path / "x.mmdb"
    p.write_bytes(b"not a database")
    with pytest.raises(InvalidField, match="geo.mmdb"):
        GeoResolver(None, str(p))
