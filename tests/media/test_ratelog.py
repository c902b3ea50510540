from __future__ import annotations

import logging

import pytest

from media.ratelog import RateLimitedLog

log = logging.getLogger("test.ratelog")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_ten_thousand_occurrences_make_a_handful_of_lines(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    limited = RateLimitedLog(log, interval=10.0, clock=clock)
    with caplog.at_level(logging.WARNING, logger="test.ratelog"):
        for i in range(10_000):
            limited.warning("bad", "bad frame %d dropped", i)
            clock.now += 0.004  # 250 frames a second: 40 s in all
    lines = [r.getMessage() for r in caplog.records]
    assert 1 <= len(lines) <= 5, lines
    assert lines[0] == "bad frame 0 dropped"
    # Every later line says how many occurrences it stands for.
    assert all("more like it in the last" in line for line in lines[1:])
    counted = len(lines) + sum(int(line.split("(and ")[1].split()[0]) for line in lines[1:])
    assert counted <= 10_000


def test_keys_are_limited_separately() -> None:
    clock = Clock()
    limited = RateLimitedLog(log, interval=10.0, clock=clock)
    assert limited.warning("a", "x")
    assert limited.warning("b", "x")
    assert not limited.warning("a", "x")
    clock.now += 10
    assert limited.warning("a", "x")


def test_keys_are_bounded() -> None:
    limited = RateLimitedLog(log, interval=10.0, clock=Clock(), max_keys=4)
    for i in range(1000):
        limited.warning(i, "x")
    assert len(limited._state) == 4


def test_interval_must_be_positive() -> None:
    with pytest.raises(ValueError, match="interval"):
        RateLimitedLog(log, interval=0)
