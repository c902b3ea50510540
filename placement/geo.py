"""Client IP -> city/ISP: a CIDR table CSV, optionally a MaxMind database.

Explicit request hints override both. The CSV has a header row
``cidr,city,isp,region,lat,lon`` (lat/lon may be empty); the longest
matching prefix wins.
"""

from __future__ import annotations

import csv
import ipaddress
import logging
from collections.abc import Sequence
from dataclasses import replace
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
    """Looks a client IP up in MaxMind databases, then the CIDR table, field by field.

    Real MaxMind products split the fields: a City database has no ISP, an ISP or
    ASN database has no city. So every configured source is asked in order (the
    databases as listed, then the CSV) and each fills only what the earlier ones
    left blank. Coordinates go with the city: a later source supplies them only
    when it agrees on the city (or supplies the city itself).
    """

    def __init__(self, cidr: CidrTable | None = None, mmdb_path: str | Sequence[str] = "") -> None:
        self._cidr = cidr
        self._readers: list[Any] = []
        paths = [mmdb_path] if isinstance(mmdb_path, str) else list(mmdb_path)
        for path in filter(None, paths):
            import maxminddb

            try:
                self._readers.append(maxminddb.open_database(path))
            except (OSError, ValueError, maxminddb.InvalidDatabaseError) as exc:
                self.close()
                raise InvalidField("geo.mmdb", f"{path!r} cannot be opened: {exc}") from None

    @classmethod
    def from_paths(cls, cidr_csv: str, mmdb: str | Sequence[str]) -> GeoResolver:
        return cls(CidrTable.load(cidr_csv) if cidr_csv else None, mmdb)

    @staticmethod
    def _from_mmdb(reader: Any, ip: str) -> Location | None:
        try:
            rec = reader.get(ip)
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

    def lookup(self, ip: str) -> Location | None:
        """The merged answer of every source, or None when none knows the address."""
        found: Location | None = None
        sources = [self._from_mmdb(r, ip) for r in self._readers]
        if self._cidr is not None:
            sources.append(self._cidr.lookup(ip))
        for loc in sources:
            if loc is None or not (loc.city or loc.isp or loc.region or loc.lat is not None):
                continue
            found = loc if found is None else _fill(found, loc)
        return found

    def resolve(self, ip: str | None, hints: Location | None = None) -> Location:
        """Hints win field by field over the looked-up address (see the class)."""
        base = (self.lookup(ip) if ip else None) or Location()
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
        for reader in self._readers:
            reader.close()
        self._readers = []


def _fill(have: Location, more: Location) -> Location:
    """``have`` with its blanks filled from ``more``; the source names each that gave a field."""
    city = have.city or more.city
    coords_fit = have.lat is None and more.lat is not None and more.city in ("", city)
    filled = Location(
        city=city,
        isp=have.isp or more.isp,
        region=have.region or more.region,
        lat=more.lat if coords_fit else have.lat,
        lon=more.lon if coords_fit else have.lon,
        source=have.source,
    )
    if filled == have:
        return have
    names = have.source.split("+")
    if more.source not in names:
        filled = replace(filled, source="+".join([*names, more.source]))
    return filled
