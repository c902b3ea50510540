"""A relay pulling from an origin over real HTTP, both served by uvicorn in-process.

The origin is a :class:`MediaServer` the test feeds with real CMAF parts; the relay is
another, whose media app has a :class:`RelayManager` and a directory that names the
origin. Viewers read the relay with blocking reloads, as players do.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from nodeutil import wait_for
from prometheus_client import CollectorRegistry
from servehelp import INFO, LL_HLS, MediaServer, feed_init, feed_part, feed_segment

from bench.cmaf import cmaf
from distribute.access import RELAY_HEADER, TokenCheck
from distribute.config import HlsConfig
from distribute.hls.store import SEQUENCE_EPOCH
from distribute.hls.stream import LiveStream
from distribute.relay.config import RelayConfig
from distribute.relay.cursor import Cursor
from distribute.relay.manager import NoUpstream, RelayManager, UnknownStream, Upstream
from distribute.relay.metrics import RelayMetrics
from distribute.relay.puller import Puller
from media import StreamKey
from media.segments import InitFrame, SegmentFrame
from tokens import sign

RELAY_KEYS = {"r1": "relay-key-0123456789abcdef"}


class Directory:
    """Placement as the relay sees it: names ``upstreams[0]``; records suspects."""

    def __init__(self, *upstreams: Upstream) -> None:
        self.upstreams = list(upstreams)
        self.suspects: list[str] = []
        self.asked = 0

    async def upstream(self, tenant: str, stream: str) -> Upstream:
        self.asked += 1
        if stream != "cam":
            raise UnknownStream(stream)
        if not self.upstreams:
            raise NoUpstream("none")
        return self.upstreams[0]

    async def suspect(self, node: str) -> None:
        self.suspects.append(node)
        if self.upstreams and self.upstreams[0].node == node:
            self.upstreams.pop(0)


class Relay:
    def __init__(
        self,
        directory: Directory,
        tokens: TokenCheck | None = None,
        hls: HlsConfig = LL_HLS,
        **cfg: Any,
    ) -> None:
        self.srv = MediaServer(hls, tokens=tokens)
        self.registry = CollectorRegistry()
        config = RelayConfig(enabled=True, keys=RELAY_KEYS, first_wait=5.0, **cfg)

        def make() -> RelayManager:
            m = RelayManager(config, self.srv.store, directory, RelayMetrics(self.registry))
            self.srv.app.relay = m
            m.start()
            return m

        self.manager = self.srv.call(make)
        self.client = httpx.Client(base_url=self.srv.url, timeout=10)

    def describe(self) -> list[dict[str, Any]]:
        return self.srv.call(self.manager.describe)

    def stop(self) -> None:
        self.client.close()
        asyncio.run_coroutine_threadsafe(self.manager.close(), self.srv.loop).result(10)
        self.srv.stop()


def _origin(segments: int = 4) -> tuple[MediaServer, LiveStream]:
    origin = MediaServer(LL_HLS)
    s = origin.open("cam")
    feed_init(origin, s)
    for i in range(segments):
        feed_segment(origin, s, i)
    return origin, s


@pytest.fixture
def origin() -> Iterator[tuple[MediaServer, LiveStream]]:
    o = _origin()
    yield o
    o[0].stop()


def _kill(srv: MediaServer) -> None:
    """The origin dies: it stops listening and its connections are reset."""

    def kill() -> None:
        for server in srv.server.servers:
            server.close()
        for conn in list(srv.server.server_state.connections):
            conn.transport.abort()

    srv.call(kill)


def _up(srv: MediaServer, node: str = "origin-a") -> Upstream:
    return Upstream(node, "cloud", srv.url, node)


def test_relay_serves_parts_each_pulled_once_with_blocking_reload(
    origin: tuple[MediaServer, LiveStream],
) -> None:
    srv, s = origin
    relay = Relay(Directory(_up(srv)))
    try:
        # The first request waits for the relay instead of a 404.
        master = relay.client.get("/live/cam/index.m3u8")
        assert master.status_code == 200
        assert "360p/index.m3u8" in master.text and "180p/index.m3u8" in master.text
        pl = relay.client.get("/live/cam/180p/index.m3u8")
        assert pl.status_code == 200 and "#EXTINF" in pl.text
        before = dict(srv.metrics.counts)
        frags = cmaf().segments[4 % len(cmaf().segments)]
        for p in range(len(frags)):
            # Ask the relay for the next part before it exists: held, then answered.
            text = relay.client.get("/live/cam/180p/index.m3u8").text
            hint = text.split('PRELOAD-HINT:TYPE=PART,URI="')[1].split('"')[0]
            msn, part = hint.split(".")[:2]
            feed_part(srv, s, 4, p)
            held = relay.client.get(f"/live/cam/180p/index.m3u8?_HLS_msn={msn}&_HLS_part={part}")
            assert held.status_code == 200 and hint in held.text
            got = relay.client.get(f"/live/cam/180p/{hint}")
            assert got.status_code == 200 and got.content == frags[p].data
        after = srv.metrics.counts
        # One origin request per new part, and no segment fetched while parts were pulled.
        assert after.get(("part", 200), 0) - before.get(("part", 200), 0) == len(frags)
        assert after.get(("segment", 200), 0) == before.get(("segment", 200), 0)
        # Only the rendition asked for is pulled.
        (described,) = relay.describe()
        assert set(described["renditions"]) == {"180p"}
    finally:
        relay.stop()


def test_relay_assembles_segments_from_parts_and_pulls_one_copy(
    origin: tuple[MediaServer, LiveStream],
) -> None:
    srv, s = origin
    relay = Relay(Directory(_up(srv)))
    try:
        assert relay.client.get("/live/cam/180p/index.m3u8").status_code == 200
        for i in (4, 5):
            feed_segment(srv, s, i, names=("360p", "180p"))

        def caught_up() -> dict[str, Any] | None:
            (d,) = relay.describe()
            r = d["renditions"]["180p"]
            return d if r["next"] == s.renditions["180p"].last_msn + 1 else None

        d = wait_for(caught_up, 10, "the relay to have the origin's last segment")
        track = s.renditions["180p"]
        r = d["renditions"]["180p"]
        expected = len(track.inits[track.init_id]) + sum(
            len(track.by_msn[m].data) for m in range(r["first"], r["next"])
        )
        assert d["bytes"]["media"] == expected
        # The relay's copy of each segment is the origin's, byte for byte.
        local = relay.srv.store.get("live", "cam")
        assert local is not None
        mine = [seg.data for seg in local.renditions["180p"].segments]
        assert mine == [track.by_msn[m].data for m in range(r["first"], r["next"])]
    finally:
        relay.stop()


def test_relay_moves_to_another_upstream_after_a_discontinuity() -> None:
    a, sa = _origin()
    b, sb = _origin()
    directory = Directory(_up(a, "origin-a"), _up(b, "origin-b"))
    relay = Relay(directory)
    try:
        assert relay.client.get("/live/cam/180p/index.m3u8").status_code == 200
        _kill(a)  # connections reset, then refused
        feed_segment(b, sb, 4)
        feed_segment(b, sb, 5)

        def switched() -> str | None:
            text = relay.client.get("/live/cam/180p/index.m3u8").text
            return text if "#EXT-X-DISCONTINUITY" in text else None

        text = wait_for(switched, 15, "the relay to continue from origin-b")
        assert directory.suspects == ["origin-a"]
        (d,) = relay.describe()
        assert d["upstream"]["node"] == "origin-b" and d["generation"] == 1
        # The playlist goes on: numbers keep increasing across the discontinuity.
        numbers = [int(line.split(".")[0]) for line in text.splitlines() if line.endswith(".m4s")]
        assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers)
    finally:
        relay.stop()
        a.stop()
        b.stop()


def test_relay_stops_and_frees_the_stream_when_idle(
    origin: tuple[MediaServer, LiveStream],
) -> None:
    srv, _ = origin
    relay = Relay(Directory(_up(srv)), idle_timeout=0.5)
    try:
        assert relay.client.get("/live/cam/180p/index.m3u8").status_code == 200
        wait_for(lambda: relay.srv.store.get("live", "cam") is None, 10, "the idle relay to stop")
        assert relay.describe() == []
        # A new viewer starts it again.
        assert relay.client.get("/live/cam/index.m3u8").status_code == 200
    finally:
        relay.stop()


def test_unknown_stream_is_404_without_waiting(origin: tuple[MediaServer, LiveStream]) -> None:
    srv, _ = origin
    directory = Directory(_up(srv))
    relay = Relay(directory)
    try:
        t0 = time.monotonic()
        assert relay.client.get("/live/nope/index.m3u8").status_code == 404
        assert relay.client.get("/live/nope/180p/index.m3u8").status_code == 404
        assert time.monotonic() - t0 < 3
        # Placement is not asked again at once (a burst of bad requests costs it one).
        assert directory.asked == 1
    finally:
        relay.stop()


def test_a_relay_pull_of_a_stream_not_held_here_is_never_relayed_onwards(
    origin: tuple[MediaServer, LiveStream],
) -> None:
    """On an edge node, another node's pull (it carries RELAY_HEADER) of a stream it does
    not hold gets a 404 at once, without a relay of its own: no two nodes relay from each
    other. A MEC or cloud node relays for the edges that pull through it."""
    srv, _ = origin
    directory = Directory(_up(srv))
    relay = Relay(directory)
    try:
        pull = {RELAY_HEADER: "mec-west"}
        assert relay.client.get("/live/cam/index.m3u8", headers=pull).status_code == 404
        assert relay.client.get("/live/cam/180p/index.m3u8", headers=pull).status_code == 404
        assert directory.asked == 0 and relay.describe() == []
        # A viewer's request for the same stream starts the relay.
        assert relay.client.get("/live/cam/index.m3u8").status_code == 200
        assert directory.asked == 1
    finally:
        relay.stop()
    mec = Relay(Directory(_up(srv)))
    try:
        mec.srv.app.relays_for_relays = True
        pull = {RELAY_HEADER: "edge-lyon"}
        assert mec.client.get("/live/cam/index.m3u8", headers=pull).status_code == 200
    finally:
        mec.stop()


class Recording(TokenCheck):
    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.seen: list[str] = []

    def check(self, token: str | None, tenant: str, stream: str) -> None:
        self.seen.append(token or "")
        super().check(token, tenant, stream)


def test_guarded_tenant_is_pulled_with_the_relay_credential_not_the_viewers_token() -> None:
    origin_keys = {"a1": "origin-play-key-0123456789"}
    relay_keys = {"b1": "relay-play-key-0123456789ab"}
    seen = Recording(lambda t: origin_keys if t == "live" else None, relay_keys=RELAY_KEYS)
    srv = MediaServer(LL_HLS, tokens=seen)
    s = srv.open("cam")
    feed_init(srv, s)
    for i in range(4):
        feed_segment(srv, s, i)
    relay = Relay(
        Directory(_up(srv)), tokens=TokenCheck(lambda t: relay_keys if t == "live" else None)
    )
    try:
        viewer = sign(relay_keys["b1"], "b1", "play", "live", "cam", int(time.time()) + 60)
        # No token: refused at the relay, which pulls nothing for it.
        assert relay.client.get("/live/cam/index.m3u8").status_code == 403
        assert seen.seen == []
        r = relay.client.get(f"/live/cam/180p/index.m3u8?token={viewer}")
        assert r.status_code == 200 and f"token={viewer}" in r.text
        assert seen.seen and viewer not in seen.seen
        # What the origin saw were relay credentials (action "relay"), never play tokens.
        assert all('"a":"relay"' in _claims(t) for t in seen.seen)
    finally:
        relay.stop()
        srv.stop()


def _claims(token: str) -> str:
    import base64

    body = token.split(".")[0]
    return base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)).decode()


def test_mpeg_ts_streams_are_pulled_segment_by_segment() -> None:
    ts = HlsConfig(segment_format="ts", low_latency=False, segment_duration=1.0)
    srv = MediaServer(ts)

    def segment(i: int) -> None:
        for name in ("360p", "180p"):
            s.add_segment(SegmentFrame(name, i, float(i), 1.0, "avc1.64001e", b"TS%d" % i * 188))

    s = srv.call(lambda: srv.store.open(StreamKey("live", "cam"), now=SEQUENCE_EPOCH))
    srv.call(lambda: s.set_renditions(INFO))
    for i in range(5):
        srv.call(lambda i=i: segment(i))
    relay = Relay(Directory(_up(srv)), hls=ts)
    try:
        text = relay.client.get("/live/cam/360p/index.m3u8").text
        assert text.count("#EXTINF") == 3 and "EXT-X-PART" not in text
        srv.call(lambda: segment(5))
        wait_for(
            lambda: relay.client.get("/live/cam/360p/index.m3u8").text.count("#EXTINF") == 4,
            10,
            "the relay to poll the new segment",
        )
        last = relay.client.get("/live/cam/360p/index.m3u8").text.strip().splitlines()[-1]
        assert last.endswith(".ts")
        assert relay.client.get(f"/live/cam/360p/{last}").content == b"TS5" * 188
        (d,) = relay.describe()
        assert set(d["renditions"]) == {"360p"}
    finally:
        relay.stop()
        srv.stop()


class Recorder:
    """A RenditionSink keeping what it is handed, in order."""

    def __init__(self) -> None:
        self.got: list[tuple[str, bytes]] = []

    def on_init(self, rendition: str, data: bytes) -> None:
        self.got.append(("init", data))

    def on_part(self, rendition: str, part: Any, data: bytes) -> None:
        self.got.append((f"part {part.index}", data))

    def on_segment(self, rendition: str, segment: Any, data: bytes) -> None:
        self.got.append(("segment", data))

    def on_discontinuity(self, rendition: str, msn: int) -> None:
        self.got.append(("discontinuity", b""))


async def test_a_hidden_rendition_is_pulled_into_any_sink() -> None:
    """What a WebRTC relay does with the origin's ``webrtc`` rendition (not in the
    multivariant playlist): its init and each part, handed over in order."""
    srv = MediaServer(LL_HLS)
    s = srv.open("cam")
    c = cmaf()
    srv.call(lambda: s.add_hidden_rendition("webrtc", width=640, height=360, fps=30, codecs=""))
    srv.call(lambda: s.add_init(InitFrame("webrtc", c.codecs, c.init)))
    feed_segment(srv, s, 0, names=("webrtc",))
    sink = Recorder()
    try:
        async with httpx.AsyncClient(timeout=10) as client:
            puller = Puller(
                client,
                f"{srv.url}/live/cam",
                "webrtc",
                sink,
                Cursor(backfill=0),
                token=lambda: None,
                count=lambda kind, n: None,
                hold=6.0,
            )
            task = asyncio.create_task(puller.run())
            frags = c.segments[1]
            for p in range(len(frags)):
                await asyncio.to_thread(feed_part, srv, s, 1, p, ("webrtc",))
            deadline = asyncio.get_running_loop().time() + 10
            while len(sink.got) < 1 + len(frags):
                assert asyncio.get_running_loop().time() < deadline, sink.got
                await asyncio.sleep(0.02)
            task.cancel()
        assert sink.got[0] == ("init", c.init)
        assert sink.got[1:] == [(f"part {i}", f.data) for i, f in enumerate(frags)]
        assert "webrtc" not in srv.call(lambda: s.master).decode()
    finally:
        srv.stop()


def test_an_upstream_discontinuity_carries_on_in_the_relays_playlist(
    origin: tuple[MediaServer, LiveStream],
) -> None:
    srv, s = origin
    relay = Relay(Directory(_up(srv)))
    try:
        assert relay.client.get("/live/cam/180p/index.m3u8").status_code == 200
        # The origin's worker restarts: a new run after a discontinuity.
        srv.call(s.begin_generation)
        feed_init(srv, s)
        feed_segment(srv, s, 0)
        feed_segment(srv, s, 1)

        def carried() -> str | None:
            text = relay.client.get("/live/cam/180p/index.m3u8").text
            _, disc, after = text.partition("#EXT-X-DISCONTINUITY")
            return text if disc and "#EXTINF" in after else None

        text = wait_for(carried, 10, "the relay's playlist to carry the discontinuity")
        numbers = [int(line.split(".")[0]) for line in text.splitlines() if line.endswith(".m4s")]
        assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers)
    finally:
        relay.stop()
