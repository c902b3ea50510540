"""viewers{protocol}: the HLS viewer estimate (distribute.viewers) and the part-delivery
histogram of the media path, on a fake clock and through a real fast path."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from nodeutil import wait_for
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from servehelp import LL_HLS, MediaServer, feed_init, feed_part

from distribute.media_metrics import PART_DELAY_BUCKETS, MediaMetrics
from distribute.viewers import HlsViewers


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def samples(registry: CollectorRegistry, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    text = generate_latest(registry).decode()
    return {
        tuple(sorted(s.labels.items())): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == name
    }


def test_one_viewer_is_one_address_user_agent_and_stream() -> None:
    v = HlsViewers(clock=Clock())
    for _ in range(5):  # reloads of one player, any rendition
        v.saw(("10.0.0.1", b"hls.js", b"live", b"a"), True)
    v.saw(("10.0.0.1", b"Safari", b"live", b"a"), True)  # another browser, same NAT
    v.saw(("10.0.0.2", b"hls.js", b"live", b"a"), True)
    v.saw(("10.0.0.1", b"hls.js", b"live", b"b"), False)  # the same player, another stream
    assert v.counts() == (1, 3)


@pytest.mark.parametrize(("age", "counted"), [(29.9, 1), (30.0, 0), (45.0, 0)])
def test_a_viewer_drops_out_after_the_window(age: float, counted: int) -> None:
    clock = Clock()
    v = HlsViewers(window=30.0, clock=clock)
    v.saw(("10.0.0.1", b"ua", b"t", b"s"), False)
    clock.now += age
    assert v.counts() == (counted, 0)
    assert len(v.seen) == counted  # expired keys are dropped, not only left uncounted


def test_a_full_table_drops_expired_keys_then_saturates() -> None:
    clock = Clock()
    v = HlsViewers(window=30.0, limit=3, clock=clock)
    for i in range(3):
        v.saw((f"10.0.0.{i}", b"ua", b"t", b"s"), True)
    v.saw(("10.0.0.9", b"ua", b"t", b"s"), True)  # full, none expired: left out
    assert v.saturated == 1 and len(v.seen) == 3
    v.saw(("10.0.0.0", b"ua", b"t", b"s"), True)  # a known key is always refreshed
    assert v.saturated == 1
    clock.now += 31
    v.saw(("10.0.0.9", b"ua", b"t", b"s"), True)  # the expired three make room
    assert v.counts() == (0, 1) and v.saturated == 1


@pytest.mark.parametrize(("window", "limit"), [(0, 10), (30, 0)])
def test_bad_settings_are_refused(window: float, limit: int) -> None:
    with pytest.raises(ValueError, match="viewer"):
        HlsViewers(window=window, limit=limit)


def test_viewers_metric_has_every_protocol_and_counts_whep_sessions() -> None:
    registry = CollectorRegistry()
    sessions = [1, 2]
    m = MediaMetrics(registry, whep=lambda: len(sessions))
    m.viewers.saw(("10.0.0.1", b"ua", b"t", b"s"), True)
    got = samples(registry, "viewers")
    assert got == {
        (("protocol", "hls"),): 0,
        (("protocol", "llhls"),): 1,
        (("protocol", "whep"),): 2,
    }


def test_part_delivery_histogram_buckets_are_cumulative_with_le_bounds() -> None:
    registry = CollectorRegistry()
    m = MediaMetrics(registry)
    m.part_blocking.observe(0.001)  # on a bound: that bucket (le)
    m.part_blocking.observe(0.003)
    m.part_plain.observe(7.0)  # past the last bound: +Inf only
    buckets = samples(registry, "hls_part_delivery_seconds_bucket")
    blocking = {dict(k)["le"]: v for k, v in buckets.items() if dict(k)["mode"] == "blocking"}
    plain = {dict(k)["le"]: v for k, v in buckets.items() if dict(k)["mode"] == "plain"}
    assert len(blocking) == len(PART_DELAY_BUCKETS) + 1
    assert blocking["0.001"] == 1 and blocking["0.0025"] == 1 and blocking["0.005"] == 2
    assert blocking["+Inf"] == 2 and plain["5.0"] == 0 and plain["+Inf"] == 1
    count = samples(registry, "hls_part_delivery_seconds_count")
    assert count == {(("mode", "blocking"),): 2, (("mode", "plain"),): 1}
    assert samples(registry, "hls_part_delivery_seconds_sum")[(("mode", "blocking"),)] == (
        pytest.approx(0.004)
    )


def test_fast_path_counts_held_and_plain_parts_and_playlist_viewers() -> None:
    srv = MediaServer(LL_HLS)
    try:
        s = srv.open()
        feed_init(srv, s)
        feed_part(srv, s, 0, 0)
        with httpx.Client(base_url=srv.url, headers={"User-Agent": "player-1"}) as c:
            # A blocking reload for the part that is there: answered now.
            ready = {"_HLS_msn": "0", "_HLS_part": "0"}
            assert c.get("/live/s/360p/index.m3u8", params=ready).status_code == 200
            assert c.get("/live/s/360p/0.0.m4s").status_code == 200  # there: plain
            with ThreadPoolExecutor(1) as pool:
                held = pool.submit(c.get, "/live/s/360p/0.1.m4s")  # the preload hint
                wait_for(lambda: srv.held() == 1, 10, "the part request to be held")
                feed_part(srv, s, 0, 1)
                assert held.result(10).status_code == 200
        m = srv.metrics
        assert sum(m.part_plain.counts) == 1 and sum(m.part_blocking.counts) == 1
        assert m.viewers.counts() == (0, 1)
    finally:
        srv.stop()
