"""Client IP -> city/ISP: a CIDR table CSV, optionally a MaxMind database.

Explicit request hints override both. The CSV has a header row
``cidr,city,isp,region,lat,lon`` (lat/lon may be empty); the longest
matching prefix wins.
"""

from __future__ import annotations

import csv
import ipaddress
import logging
from typing import Any

from placement.errors import InvalidField
from placement.model import Location

log = logging.getLogger(__name__)


class CidrTable:
    def __init__(self) -> None:
        # prefix length -> network address int -> location, per IP version.
        self._tables: dict[int, dict[int, dict[int, Location]]] = {4: {}, 6: {}}

    def add(self, cidr: str, loc: Location) -> None:
        net = ipaddress.ip_network(cidr, strict=False)
        self._tables[net.version].setdefault(net.prefixlen, {})[int(net.network_address)] = loc

    @classmethod
    def load(cls, path: str) -> CidrTable:
        table = cls()
        try:
            with open(path, encoding="utf-8", newline="") as fh:
                for i, row in enumerate(csv.DictReader(fh), start=2):
                    try:
                        lat, lon = row.get("lat") or "", row.get("lon") or ""
                        table.add(
                            row["cidr"],
                            Location(
                                city=row.get("city") or "",
                                isp=row.get("isp") or "",
                                region=row.get("region") or "",
                                lat=float(lat) if lat else None,
                                lon=float(lon) if lon else None,
                                source="cidr",
                            ),
                        )
                    except (KeyError, ValueError) as exc:
                        raise InvalidField("geo.cidr_csv", f"line {i} is invalid: {exc}") from None
        except OSError as exc:
            raise InvalidField("geo.cidr_csv", f"cannot be read: {exc.strerror}") from None
        return table

    def lookup(self, ip: str) -> Location | None:
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return None
        bits = 32 if addr.version == 4 else 128
        value = int(addr)
        table = self._tables[addr.version]
        for plen in sorted(table, reverse=True):
            key = value >> (bits - plen) << (bits - plen) if plen else 0
            loc = table[plen].get(key)
            if loc is not None:
                return loc
        return None


class GeoResolver:
    def __init__(self, cidr: CidrTable | None = None, mmdb_path: str = "") -> None:
        self._cidr = cidr
        self._mmdb: Any = None
        if mmdb_path:
            import maxminddb

            try:
                self._mmdb = maxminddb.open_database(mmdb_path)
            except (OSError, ValueError, maxminddb.InvalidDatabaseError) as exc:
                raise InvalidField("geo.mmdb", f"cannot be opened: {exc}") from None

    @classmethod
    def from_paths(cls, cidr_csv: str, mmdb: str) -> GeoResolver:
        return cls(CidrTable.load(cidr_csv) if cidr_csv else None, mmdb)

    def _from_mmdb(self, ip: str) -> Location | None:
        try:
            rec = self._mmdb.get(ip)
        except ValueError:
            return None
        if not isinstance(rec, dict):
            return None
        city = ((rec.get("city") or {}).get("names") or {}).get("en", "")
        subdivisions = rec.get("subdivisions") or [{}]
        region = (subdivisions[0].get("names") or {}).get("en", "")
        loc = rec.get("location") or {}
        isp = rec.get("isp") or rec.get("autonomous_system_organization") or ""
        return Location(
            city=city,
            isp=str(isp),
            region=region,
            lat=loc.get("latitude"),
            lon=loc.get("longitude"),
            source="mmdb",
        )

    def resolve(self, ip: str | None, hints: Location | None = None) -> Location:
        """Hints win field by field; the MaxMind database wins over the CIDR table."""
        found: Location | None = None
        if ip:
            if self._mmdb is not None:
                found = self._from_mmdb(ip)
            if found is None and self._cidr is not None:
                found = self._cidr.lookup(ip)
        base = found or Location()
        if hints is None or not (hints.city or hints.isp or hints.region):
            return base
        return Location(
            city=hints.city or base.city,
            isp=hints.isp or base.isp,
            region=hints.region or base.region,
            lat=hints.lat if hints.lat is not None else (base.lat if not hints.city else None),
            lon=hints.lon if hints.lon is not None else (base.lon if not hints.city else None),
            source="hint",
        )

    def close(self) -> None:
        if self._mmdb is not None:
            self._mmdb.close()
