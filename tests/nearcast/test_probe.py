"""The latency probe: its playlist parser, its player model, and HLS from a real node."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st
from nodeutil import SMALL_LADDER, NodeProcess, publishing_node

from nearcast.cli import main as cli_main
from nearcast.media_playlist import parse_media_playlist
from nearcast.playout import Playout, ProbeResult, percentile
from nearcast.probe import probe

parts_st = st.lists(
    st.tuples(st.floats(0.1, 1.0, allow_nan=False), st.booleans()), min_size=0, max_size=6
)


@given(
    st.integers(0, 10**6),
    st.lists(parts_st, min_size=1, max_size=5),
    parts_st,
    st.booleans(),
)
def test_playlist_round_trip(sequence: int, segments: list, trailing: list, ended: bool) -> None:
    lines = [
        "#EXTM3U",
        "#EXT-X-VERSION:9",
        "#EXT-X-TARGETDURATION:2",
        f"#EXT-X-MEDIA-SEQUENCE:{sequence}",
        "#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK=1.0,CAN-SKIP-UNTIL=12.0",
        "#EXT-X-PART-INF:PART-TARGET=0.334",
        '#EXT-X-MAP:URI="init.mp4"',
    ]
    for s, parts in enumerate(segments):
        for p, (dur, ind) in enumerate(parts):
            extra = ",INDEPENDENT=YES" if ind else ""
            lines.append(f'#EXT-X-PART:DURATION={dur:.5f},URI="{s}.{p}.m4s"{extra}')
        lines += [f"#EXTINF:{sum(d for d, _ in parts) or 2.0:.5f},", f"{sequence + s}.m4s"]
    for p, (dur, ind) in enumerate(trailing):
        lines.append(
            f'#EXT-X-PART:DURATION={dur:.5f},URI="t.{p}.m4s"{",INDEPENDENT=YES" if ind else ""}'
        )
    lines.append(f'#EXT-X-PRELOAD-HINT:TYPE=PART,URI="t.{len(trailing)}.m4s"')
    if ended:
        lines.append("#EXT-X-ENDLIST")
    pl = parse_media_playlist("\n".join(lines) + "\n")
    assert pl.sequence == sequence and pl.target == 2.0 and pl.map_uri == "init.mp4"
    assert pl.can_block and pl.part_hold_back == 1.0 and pl.part_target == 0.334
    assert pl.ended == ended and pl.next_msn == sequence + len(segments)
    assert [s.uri for s in pl.segments] == [f"{sequence + i}.m4s" for i in range(len(segments))]
    for s, parts in enumerate(segments):
        got = pl.parts_of(sequence + s)
        assert [(p.index, p.independent) for p in got] == [
            (i, ind) for i, (_, ind) in enumerate(parts)
        ]
        assert all(p.msn == sequence + s for p in got)
    assert [p.uri for p in pl.parts_of(pl.next_msn)] == [f"t.{i}.m4s" for i in range(len(trailing))]


def test_playlist_errors() -> None:
    with pytest.raises(ValueError, match="EXTM3U"):
        parse_media_playlist("#EXTINF:2,\na.ts\n")


def test_playout_counts_stalls_and_latency() -> None:
    r = ProbeResult("u", "hls")
    play = Playout(r, started=99.0)
    # Three frames arrive together at t=100: shown at the PTS pace.
    for i in range(3):
        play.frame(100.0, i / 30, stamp_ms=int(99_000 + i * 1000 / 30))
    # The next one is 0.5 s late: one stall.
    play.frame(100.6, 3 / 30, stamp_ms=None)
    assert r.frames == 4 and r.stamped == 3 and r.stalls == 1
    assert r.latencies_ms == pytest.approx([1000.0, 1000.0, 1000.0], abs=1)
    assert r.stall_seconds == pytest.approx(0.5, abs=0.01)
    assert r.startup_seconds == pytest.approx(1.0)
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.0
    # Loaded from before the start position: the first 0.1 s are decoded, not shown.
    r = ProbeResult("u", "llhls")
    play = Playout(r, started=0.0)
    play.skip = 0.1
    shown = [play.frame(5.0, i / 30, None) for i in range(6)]
    assert shown[:3] == [None, None, None] and shown[3] == 5.0 and r.frames == 3


@pytest.fixture(scope="module")
def clocked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    with publishing_node(
        tmp_path_factory.mktemp("node") / "node.log",
        ["live/clk"],
        segments=3,
        clock=True,
        timeout=60,
        NEARCAST_TRANSCODE_LADDER=SMALL_LADDER,
        NEARCAST_TRANSCODE_CAPACITY_UNITS="8",
        # Plain HLS in MPEG-TS, whose hold-back the first test checks (LL-HLS has its own).
        NEARCAST_HLS_TENANTS="{live: ts}",
    ) as node:
        yield node


def test_probe_reads_publish_clock_stamps_over_hls(clocked: NodeProcess) -> None:
    """publish --clock -> RTMP -> ladder -> HLS -> probe: every 180p frame carries a stamp."""
    result = asyncio.run(probe(f"{clocked.http}/live/clk/index.m3u8", 5.0, "hls"))
    s = result.summary()
    assert s["rendition"] == "180p"
    assert s["frames"] >= 100 and s["stamped"] == s["frames"], s
    # Three 2 s segments of hold-back plus the pipeline: a few seconds, never negative.
    assert 4000 <= s["latency_p50_ms"] <= 15000, s


def test_probe_cli_json_and_errors(
    clocked: NodeProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    assert (
        cli_main(
            [
                "probe",
                f"{clocked.http}/live/clk/index.m3u8",
                "--duration",
                "2.5",
                "--rendition",
                "360p",
                "--json",
            ]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert out["rendition"] == "360p" and out["stamped"] > 0
    assert cli_main(["probe", f"{clocked.http}/live/nope/index.m3u8", "--duration", "1"]) == 1
    assert "HTTP 404" in capsys.readouterr().err


def test_decoder_follows_fmp4_parts_across_non_independent_ones() -> None:
    """LL-HLS parts: an init segment, then moof+mdat fragments, only some starting with an IDR."""
    import io
    from fractions import Fraction

    import av
    import numpy as np

    from media.clock import stamp_yuv420p
    from nearcast.stamp_decoder import StampDecoder

    buf = io.BytesIO()
    with av.open(
        buf,
        "w",
        format="mp4",
        options={"movflags": "empty_moov+default_base_moof+frag_every_frame"},
    ) as out:
        s = out.add_stream("libx264", rate=30)
        s.width, s.height, s.pix_fmt = 320, 180, "yuv420p"
        s.options = {"preset": "veryfast", "x264-params": "keyint=15:scenecut=0:bframes=2"}
        for i in range(30):
            planes = np.full((270, 320), 100, np.uint8)
            stamp_yuv420p(planes, 1_000_000 + i)
            f = av.VideoFrame.from_ndarray(planes, format="yuv420p")
            f.pts, f.time_base = i, Fraction(1, 30)
            out.mux(s.encode(f))
        out.mux(s.encode())
    data = buf.getvalue()
    boxes, pos = [], 0
    while pos < len(data):
        size = int.from_bytes(data[pos : pos + 4], "big")
        boxes.append((data[pos + 4 : pos + 8], data[pos : pos + size]))
        pos += size
    init = b"".join(b for t, b in boxes if t in (b"ftyp", b"moov"))
    frags = [b for t, b in boxes if t in (b"moof", b"mdat")]
    parts = [frags[i] + frags[i + 1] for i in range(0, len(frags), 2)]
    # Parts of 3 frames each, as a packager with a 0.1 s part target would cut them.
    grouped = [b"".join(parts[i : i + 3]) for i in range(0, len(parts), 3)]
    carried: dict[float, int] = {}  # frame time -> the part that carries its packet
    for k, g in enumerate(grouped):
        with av.open(io.BytesIO(init + g)) as c:
            for p in c.demux(video=0):
                if p.pts is not None:
                    carried[float(p.pts * p.time_base)] = k
    dec = StampDecoder()
    dec.set_init(init)
    got = [
        (pts, stamp, tag, k) for k, g in enumerate(grouped) for pts, stamp, tag in dec.decode(g, k)
    ]
    # B-frames: the decoder returns frames late (the last ones stay in it), each tagged
    # with the part that carried it, not the one after which it came out.
    assert [stamp for _, stamp, _, _ in got] == [1_000_000 + i for i in range(len(got))]
    assert len(got) >= 27
    assert all(tag == carried[pts] for pts, _, tag, _ in got if pts is not None)
    assert any(tag != k for _, _, tag, k in got)  # some did come out a part late


def test_watch_page_reads_stamps_in_hls_mode(clocked: NodeProcess) -> None:
    """The /watch page's LL-HLS switch plays through hls.js and its readout decodes the stamps."""
    from nodeutil import require_binary
    from playwright.sync_api import sync_playwright

    chromium = require_binary("chromium")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=chromium,
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--autoplay-policy=no-user-gesture-required"],
        )
        try:
            page = browser.new_page()
            page.goto(f"{clocked.http}/live/clk/watch?mode=hls")
            page.wait_for_function("window.nearcast.stamps >= 15", timeout=60000)
            state = page.evaluate(
                "({mode: window.nearcast.mode, lat: window.nearcast.latencies.slice()})"
            )
            assert state["mode"] == "hls"
            lat = sorted(state["lat"])
            assert 1000 <= lat[len(lat) // 2] <= 20000, lat
        finally:
            browser.close()


def _fmp4_fragments(frames: int, stamp0: int, gop: int) -> tuple[bytes, list[bytes]]:
    """An init segment and one moof+mdat per frame, each frame stamped stamp0 + i * 1000/30."""
    import io
    from fractions import Fraction

    import av
    import numpy as np

    from media.clock import stamp_yuv420p

    buf = io.BytesIO()
    flags = "empty_moov+default_base_moof+frag_every_frame"
    with av.open(buf, "w", format="mp4", options={"movflags": flags}) as out:
        s = out.add_stream("libx264", rate=30)
        s.width, s.height, s.pix_fmt = 320, 180, "yuv420p"
        s.options = {"preset": "ultrafast", "x264-params": f"keyint={gop}:min-keyint={gop}"}
        for i in range(frames):
            planes = np.full((270, 320), 90, np.uint8)
            stamp_yuv420p(planes, stamp0 + i * 1000 // 30)
            f = av.VideoFrame.from_ndarray(planes, format="yuv420p")
            f.pts, f.time_base = i, Fraction(1, 30)
            out.mux(s.encode(f))
        out.mux(s.encode())
    data = buf.getvalue()
    boxes, pos = [], 0
    while pos < len(data):
        size = int.from_bytes(data[pos : pos + 4], "big")
        boxes.append((data[pos + 4 : pos + 8], data[pos : pos + size]))
        pos += size
    init = b"".join(b for t, b in boxes if t in (b"ftyp", b"moov"))
    frags = [b for t, b in boxes if t in (b"moof", b"mdat")]
    return init, [frags[i] + frags[i + 1] for i in range(0, len(frags), 2)]


async def test_llhls_client_follows_parts_with_blocking_reload() -> None:
    """A live LL-HLS origin (0.1 s parts, 0.6 s segments, blocking reload) played by the probe."""
    import time

    import httpx

    from nearcast.hls_probe import HlsProbe

    fps, per_part, per_seg = 30, 3, 18
    t0 = time.time() + 1.0
    init, frames = _fmp4_fragments(150, int(t0 * 1000), gop=per_seg)
    parts = [b"".join(frames[i : i + per_part]) for i in range(0, len(frames), per_part)]
    parts_per_seg = per_seg // per_part
    ready_at = [t0 + (k + 1) * per_part / fps for k in range(len(parts))]
    requests: list[str] = []

    def available() -> int:
        return sum(1 for t in ready_at if t <= time.time())

    def playlist() -> str:
        n = available()
        lines = [
            "#EXTM3U",
            "#EXT-X-VERSION:9",
            "#EXT-X-TARGETDURATION:1",
            "#EXT-X-MEDIA-SEQUENCE:0",
            "#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK=0.3",
            "#EXT-X-PART-INF:PART-TARGET=0.1",
            '#EXT-X-MAP:URI="init.mp4"',
        ]
        for k in range(n):
            seg, idx = divmod(k, parts_per_seg)
            ind = ",INDEPENDENT=YES" if idx == 0 else ""
            lines.append(f'#EXT-X-PART:DURATION=0.1,URI="p{k}.m4s"{ind}')
            if idx == parts_per_seg - 1:
                lines += ["#EXTINF:0.6,", f"s{seg}.m4s"]
        lines.append(f'#EXT-X-PRELOAD-HINT:TYPE=PART,URI="p{n}.m4s"')
        return "\n".join(lines) + "\n"

    async def handler(request: httpx.Request) -> httpx.Response:
        name = request.url.path.rsplit("/", 1)[-1]
        requests.append(str(request.url.query, "ascii") if name == "index.m3u8" else name)
        if name == "index.m3u8":
            msn = request.url.params.get("_HLS_msn")
            if msn is not None:
                k = int(msn) * parts_per_seg + int(request.url.params.get("_HLS_part", 0))
                # Held until that part exists (the origin's clock), at most past the end.
                await asyncio.sleep(max(0.0, ready_at[min(k, len(parts) - 1)] - time.time()))
            return httpx.Response(200, text=playlist())
        if name == "init.mp4":
            return httpx.Response(200, content=init)
        k = int(name[1:-4])
        assert name.startswith("p") and ready_at[k] <= time.time(), name
        return httpx.Response(200, content=parts[k])

    # The viewer arrives when two segments exist.
    await asyncio.sleep(max(0.0, ready_at[2 * parts_per_seg - 1] - time.time()))
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        url = "http://origin/live/s/index.m3u8"
        result = await HlsProbe(url, 2.5, low_latency=True, client=client).run()
    s = result.summary()
    assert s["protocol"] == "llhls"
    assert s["frames"] >= 60 and s["stamped"] == s["frames"], s
    # Started at an independent part at least PART-HOLD-BACK back; blocking reloads after.
    first_part = next(r for r in requests if r.startswith("p"))
    assert int(first_part[1:-4]) % parts_per_seg == 0
    assert any("_HLS_msn=" in r and "_HLS_part=" in r for r in requests)
    # Loaded from the independent part before, shown from PART-HOLD-BACK (0.3 s) back.
    assert 200 <= s["latency_p50_ms"] <= 700, s
    assert s["stalls"] == 0, s
