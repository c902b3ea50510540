"""Constant frame rate and the monotonic timeline (pure cores of the worker's timing)."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from transcode.cfr import FrameRateConverter, Timeline, exact_rate


@pytest.mark.parametrize(
    ("fps", "rate"),
    [
        (30.0, Fraction(30)),
        (29.97, Fraction(30000, 1001)),
        (23.976, Fraction(24000, 1001)),
        (25, Fraction(25)),
    ],
)
def test_exact_rate(fps: float, rate: Fraction) -> None:
    assert exact_rate(fps) == rate


def test_exact_rate_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="must be positive"):
        exact_rate(0.0)


def _run(conv: FrameRateConverter, times: list[float]) -> list[tuple[int, int]]:
    """(slot, input index) for every output picture; duplicates repeat the previous input."""
    out: list[tuple[int, int]] = []
    for i, t in enumerate(times):
        fill, slot = conv.push(t)
        out += [(n, i - 1) for n in fill]
        if slot is not None:
            out.append((slot, i))
    return out


@given(
    steps=st.lists(st.floats(0.0, 200.0), min_size=1, max_size=200),
    fps=st.sampled_from([Fraction(30), Fraction(25), Fraction(30000, 1001), Fraction(60)]),
)
@settings(max_examples=200, deadline=None)
def test_every_slot_filled_once_in_order(steps: list[float], fps: Fraction) -> None:
    times = [1000.0]
    for s in steps:
        times.append(times[-1] + s)
    conv = FrameRateConverter(fps, 1000.0, max_fill=10_000)
    out = _run(conv, times)
    slots = [s for s, _ in out]
    assert slots == list(range(slots[0], slots[0] + len(slots))), "no slot skipped or repeated"
    half = Fraction(1, 2) * 1000 / fps
    for slot, i in out:
        if i >= 0 and (not out or slot == conv.slot_of(times[i])):
            # A frame sits on the slot nearest its timestamp.
            assert abs(Fraction(times[i]) - conv.time_of(slot)) <= half + Fraction(1, 10**6)


def test_jitter_keeps_one_picture_per_slot() -> None:
    conv = FrameRateConverter(Fraction(30), 0, max_fill=100)
    jitter = [0, 7, -6, 8, -8, 3, 0, -5]
    out = _run(conv, [round(n * 1000 / 30) + jitter[n % 8] for n in range(240)])
    assert [s for s, _ in out] == list(range(240))
    assert [i for _, i in out] == list(range(240)) and conv.dropped == conv.duplicated == 0


def test_gap_is_filled_with_repeats_and_double_rate_is_halved() -> None:
    conv = FrameRateConverter(Fraction(30), 0, max_fill=100)
    out = _run(conv, [0, 33.3, 66.7, 1000, 1033.3])
    assert [s for s, _ in out] == list(range(32))
    assert [i for _, i in out][3:30] == [2] * 27
    conv = FrameRateConverter(Fraction(30), 0, max_fill=100)
    out = _run(conv, [round(n * 1000 / 60) for n in range(120)])
    assert [s for s, _ in out] == list(range(60)) and conv.dropped == 60 and conv.duplicated == 0


def test_gap_longer_than_the_fill_limit_jumps_ahead() -> None:
    conv = FrameRateConverter(Fraction(30), 0, max_fill=5)
    out = _run(conv, [0, 1000])
    assert [s for s, _ in out] == [0, 1, 2, 3, 4, 5, 30]


def test_timeline_keeps_a_clock_reset_in_sync() -> None:
    tl = Timeline()
    out = []
    # Video and audio interleaved; the publisher restarts its clock at 0 after 10 s.
    for base, start in ((0, 0), (10_000, -10_000)):
        for t in range(0, 10_000, 20):
            out.append(("video", tl.map("video", base + start + t, 33)))
            out.append(("audio", tl.map("audio", base + start + t + 5, 21)))
    video = [t for k, t in out if k == "video"]
    audio = [t for k, t in out if k == "audio"]
    assert video == sorted(video) and audio == sorted(audio)
    assert all(a - v == 5 for v, a in zip(video, audio, strict=True)), "sync kept across the reset"
    assert tl.jumps == 1


def test_timeline_keeps_a_real_gap_in_one_kind() -> None:
    tl = Timeline(max_gap_ms=2000)
    for t in range(0, 3000, 20):
        tl.map("audio", t, 21)
    tl.map("video", 0, 33)
    # The camera froze for 2.9 s while the microphone went on: a real gap, kept.
    assert tl.map("video", 2900, 33) == 2900 and tl.jumps == 0


@given(
    st.lists(
        st.tuples(st.sampled_from(["video", "audio"]), st.integers(-(10**9), 10**9)), max_size=100
    )
)
@settings(max_examples=200, deadline=None)
def test_timeline_never_steps_back_more_than_the_tolerance(seq: list[tuple[str, int]]) -> None:
    tl = Timeline()
    last: dict[str, int] = {}
    for kind, t in seq:
        out = tl.map(kind, t, 20)
        if kind in last:
            assert out >= last[kind] - tl.max_backstep_ms
        last[kind] = max(out, last.get(kind, out))
