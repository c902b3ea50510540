"""CPU per request of the HTTP fast path, driven in process (no sockets, no client).

Run: ``python -m bench.fastpath [--requests N] [--rounds R]``

An LL-HLS stream (bench.cmaf's fMP4 parts) is put in a store; the node's
httptools protocol (:func:`distribute.fastpath.media_protocol`) is given a
stand-in transport that keeps nothing, and fed raw keep-alive GET requests one
at a time, as ``data_received`` would get them from the socket. What is timed
is the protocol's own work for each: parsing, the media lookup, metrics
(``hls_requests_total``, the part-delivery histogram, the viewer estimate) and
building the response bytes. The kernel's send and the client's work are not
in it. Each kind of request is timed over ``--requests`` requests, best of
``--rounds`` rounds (``time.process_time``: CPU, not wall time), two ways: the
same request bytes again and again, which the protocol answers from its memo
without parsing them, and bytes it has not seen (a header that differs per
request), which it parses, looks up and remembers. Then 1000 connections each hold
a blocking playlist reload for the next part, the part lands, and the CPU of
answering them all is timed, per viewer: the LL-HLS fan-out, which the memo does
not touch. The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

import uvicorn
from prometheus_client import CollectorRegistry

from bench.cmaf import cmaf
from distribute.config import HlsConfig
from distribute.fastpath import media_protocol
from distribute.hls.store import SEQUENCE_EPOCH, Store
from distribute.http import MediaApp
from distribute.media_metrics import MediaMetrics
from media import StreamKey
from media.segments import InitFrame, PartFrame, SegmentFrame

LL_HLS = HlsConfig(
    segment_format="fmp4", low_latency=True, part_duration=0.334, segment_duration=2.0
)
INFO = {
    "source": {"width": 640, "height": 360, "fps": 30.0},
    "audio": True,
    "renditions": [
        {
            "name": "360p",
            "width": 640,
            "height": 360,
            "fps": 30.0,
            "video_bitrate": 700_000,
            "maxrate": 700_000,
            "audio_bitrate": 128_000,
        }
    ],
}
SEGMENTS = 4
# Viewers held in a blocking playlist reload when a part lands (the "held" figure).
HELD = 1000


class _Transport:
    """Enough of an asyncio transport for the protocol: writes are counted and dropped."""

    def __init__(self) -> None:
        self.written = 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("192.0.2.10", 50000), "sockname": ("192.0.2.1", 8080)}.get(
            name, default
        )

    def write(self, data: bytes) -> None:
        self.written += len(data)

    def writelines(self, chunks: Any) -> None:
        for c in chunks:
            self.written += len(c)

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass


async def _fallback(scope: Any, receive: Any, send: Any) -> None:
    raise AssertionError(f"the fast path left {scope.get('path')} to the ASGI app")


def _store() -> Store:
    store = Store(LL_HLS)
    s = store.open(StreamKey("live", "s"), now=SEQUENCE_EPOCH)
    s.begin_generation()
    s.set_renditions(INFO)
    c = cmaf()
    s.add_init(InitFrame("360p", c.codecs, c.init))
    for index in range(SEGMENTS):
        frags = c.segments[index % len(c.segments)]
        for p, f in enumerate(frags):
            s.add_part(PartFrame("360p", index, p, f.start, f.duration, f.independent, f.data))
        data = b"".join(f.data for f in frags)
        dur = sum(f.duration for f in frags)
        s.add_segment(SegmentFrame("360p", index, frags[0].start, dur, c.codecs, data))
    return store


def _request(path: str, n: int | None = None) -> bytes:
    """A player's request for ``path``; with ``n``, one that no earlier request matches
    byte for byte (the fast path's memo does not know it)."""
    extra = "" if n is None else f"X-Request: {n}\r\n"
    return (
        f"GET {path} HTTP/1.1\r\nHost: node\r\nUser-Agent: Mozilla/5.0 (bench) hls.js\r\n"
        f"Accept: */*\r\nConnection: keep-alive\r\n{extra}\r\n"
    ).encode()


def run(requests: int, rounds: int) -> dict[str, dict[str, float]]:
    """CPU per request by kind: ``again`` for the same request bytes over and over (what
    ``wrk`` sends, and a player's reload that another viewer asked already), ``first``
    for bytes the memo has not seen (parsed by httptools, looked up, remembered)."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    store = _store()
    app = MediaApp(store, _fallback, MediaMetrics(CollectorRegistry()))
    proto_cls: Any = media_protocol(app)
    config = uvicorn.Config(app, http=proto_cls, log_level="warning", access_log=False)
    config.load()
    from uvicorn.server import ServerState

    proto = proto_cls(config=config, server_state=ServerState(), app_state={}, _loop=loop)
    transport = _Transport()
    proto.connection_made(transport)
    track = store.get("live", "s").renditions["360p"]  # type: ignore[union-attr]
    msn, part = track.last_part
    paths = {
        "playlist": "/live/s/360p/index.m3u8",
        "blocking_playlist_ready": f"/live/s/360p/index.m3u8?_HLS_msn={msn}&_HLS_part={part}",
        "part": f"/live/s/360p/{msn}.{part}.m4s",
        "segment": f"/live/s/360p/{SEGMENTS - 2}.m4s",
    }
    out: dict[str, dict[str, float]] = {"again": {}, "first": {}}
    serial = 0
    for kind, path in paths.items():
        data = _request(path)
        before = transport.written
        proto.data_received(data)
        assert transport.written > before, f"{kind}: not answered by the fast path"
        for mode in ("again", "first"):
            best = float("inf")
            for _ in range(rounds):
                if mode == "again":
                    reads = [data] * requests
                else:
                    reads = [_request(path, serial + i) for i in range(requests)]
                    serial += requests
                feed = proto.data_received
                t0 = time.process_time()
                for read in reads:
                    feed(read)
                best = min(best, time.process_time() - t0)
            out[mode][kind] = round(best / requests * 1e6, 3)
    proto.connection_lost(None)
    out["held"] = _held(proto_cls, config, loop, store, rounds)
    loop.close()
    return out


def _held(
    proto_cls: Any,
    config: uvicorn.Config,
    loop: asyncio.AbstractEventLoop,
    store: Store,
    rounds: int,
) -> dict[str, float]:
    """CPU per viewer when a part lands and :data:`HELD` viewers, each holding a blocking
    playlist reload for it on its own connection, are answered."""
    from uvicorn.server import ServerState

    s = store.get("live", "s")
    assert s is not None
    track = s.renditions["360p"]
    c = cmaf()
    best = float("inf")
    state = ServerState()
    for _ in range(rounds):
        msn, part = track.last_part
        nxt = part + 1
        frags = c.segments[msn % len(c.segments)]
        if nxt >= len(frags):
            msn, nxt = msn + 1, 0  # not reached here: bench.cmaf segments have enough parts
        viewers = []
        request = _request(f"/live/s/360p/index.m3u8?_HLS_msn={msn}&_HLS_part={nxt}")
        for _ in range(HELD):
            v = proto_cls(config=config, server_state=state, app_state={}, _loop=loop)
            v.connection_made(_Transport())
            v.data_received(request)
            viewers.append(v)
        assert len(track.waiters) >= HELD, "the reloads were not held"
        f = frags[nxt % len(frags)]
        frame = PartFrame("360p", msn, nxt, f.start, f.duration, f.independent, f.data)
        t0 = time.process_time()
        s.add_part(frame)
        best = min(best, time.process_time() - t0)
        answered = sum(1 for v in viewers if v.transport.written)
        assert answered == HELD, f"{answered} of {HELD} held viewers answered"
        for v in viewers:
            v.connection_lost(None)
    return {"playlist_per_viewer": round(best / HELD * 1e6, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    result = run(args.requests, args.rounds)
    for kind, us in result["again"].items():
        first = result["first"][kind]
        print(f"{kind:>24}: {us:.2f} us CPU per request again, {first:.2f} us the first time")
    held = result["held"]["playlist_per_viewer"]
    print(f"{'held reload, part lands':>24}: {held:.2f} us CPU per viewer ({HELD} viewers)")
    print(
        json.dumps(
            {
                "us_per_request": result["again"],
                "us_per_first_request": result["first"],
                "us_per_held_viewer": result["held"],
            }
        )
    )


if __name__ == "__main__":
    main()
