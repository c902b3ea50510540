"""Configuration of the placement client and service (the ``placement:`` section)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PlacementConfig:
    url: str = ""
