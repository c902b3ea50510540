"""Capacity is known before a node opens its ports: measured then, or cached from before."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from nodeutil import NodeProcess

from transcode.capacity import cache_key, cached, remember
from transcode.config import Rendition, TranscodeConfig

CALIBRATE = {"NEARCAST_TRANSCODE_CAPACITY_UNITS": "0"}


def test_the_cache_keeps_a_figure_per_machine_and_ladder(tmp_path: Path) -> None:
    path = tmp_path / "capacity.json"
    config = TranscodeConfig()
    assert cached(config, path) is None
    remember(config, 0.87, path)
    assert cached(config, path) == 0.87
    other = dataclasses.replace(config, ladder=[Rendition("360p", 640, 360, 700_000)])
    assert cache_key(other) != cache_key(config)
    assert cached(other, path) is None
    remember(other, 2.5, path)
    assert (cached(config, path), cached(other, path)) == (0.87, 2.5)


def test_a_broken_or_unwritable_cache_is_no_error(tmp_path: Path) -> None:
    path = tmp_path / "capacity.json"
    path.write_text("{not json")
    assert cached(TranscodeConfig(), path) is None
    remember(TranscodeConfig(), 1.0, path)  # replaces the broken file
    assert cached(TranscodeConfig(), path) == 1.0
    blocked = tmp_path / "blocked"
    blocked.write_text("")
    remember(TranscodeConfig(), 1.0, blocked / "capacity.json")  # a file where a folder goes


def test_the_node_knows_its_capacity_when_its_ports_open(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = NodeProcess(tmp_path / "first.log", **CALIBRATE, XDG_CACHE_HOME=str(cache))
    try:
        # The ports are open (NodeProcess read them): the calibration is already done.
        measured = first.metric("transcode_capacity_units")
        assert measured > 0, first.log()
        assert "measuring transcode capacity before opening the ports" in first.log()
    finally:
        first.stop()
    started = time.monotonic()
    second = NodeProcess(tmp_path / "second.log", **CALIBRATE, XDG_CACHE_HOME=str(cache))
    try:
        assert second.metric("transcode_capacity_units") == measured
        assert "measured before, cached" in second.log()
        assert time.monotonic() - started < 20
    finally:
        second.stop()
