"""``nearcast probe URL``: glass-to-glass latency as a viewer sees it.

The probe plays a stream the way a player would, decodes every video frame and
reads the clock stamp that ``nearcast publish --clock`` burnt into it
(:mod:`media.clock`). Latency is the wall-clock time a frame is shown minus the
time it was captured; both clocks are this machine's, or NTP-synchronised ones.

- **HLS**: starts ``HOLD-BACK`` (default three target durations) behind the
  live edge, downloads each segment once it is listed, reloads the playlist
  every half target duration while waiting.
- **LL-HLS** (a playlist with parts and ``CAN-BLOCK-RELOAD``): starts at an
  independent part ``PART-HOLD-BACK`` behind the edge, then asks for each next
  part with a blocking playlist reload (``_HLS_msn``/``_HLS_part``) and fetches
  it as soon as it is listed, as hls.js does in low-latency mode.
- **WHEP**: an aiortc viewer; a frame is shown when it is decoded.

For HLS, frames are then "shown" by a playout model: a frame is shown at the
later of its arrival and the previous frame's time plus the PTS difference, and
each wait over 100 ms beyond its due time is a stall (a player rebuffering).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import logging
import sys
import time
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any
from urllib.parse import urlencode, urljoin, urlsplit, urlunsplit

import av
import httpx
import numpy as np

from media.clock import read_stamp

log = logging.getLogger(__name__)

STALL_GRACE = 0.1  # seconds late before a frame counts as a stall
WHEP_STALL_GAP = 0.25  # seconds between WebRTC frames that count as a stall


class ProbeError(Exception):
    """The stream cannot be probed; the message names the URL and the reason."""


# -- results --------------------------------------------------------------------------------


@dataclass
class ProbeResult:
    url: str
    protocol: str
    frames: int = 0
    stamped: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    stalls: int = 0
    stall_seconds: float = 0.0
    startup_seconds: float | None = None
    seconds: float = 0.0
    rendition: str = ""
    # WHEP: the picture size received, and the audio frames decoded beside it.
    resolution: str = ""
    audio_frames: int = 0
    audio_rate: int = 0

    def summary(self) -> dict[str, Any]:
        lat = sorted(self.latencies_ms)
        return {
            "url": self.url,
            "protocol": self.protocol,
            "rendition": self.rendition,
            "seconds": round(self.seconds, 2),
            "frames": self.frames,
            "stamped": self.stamped,
            "latency_p50_ms": round(percentile(lat, 0.5), 1) if lat else None,
            "latency_p95_ms": round(percentile(lat, 0.95), 1) if lat else None,
            "latency_min_ms": round(lat[0], 1) if lat else None,
            "latency_max_ms": round(lat[-1], 1) if lat else None,
            "stalls": self.stalls,
            "stall_seconds": round(self.stall_seconds, 3),
            "startup_seconds": round(self.startup_seconds, 3)
            if self.startup_seconds is not None
            else None,
            **(
                {
                    "resolution": self.resolution,
                    "audio_frames": self.audio_frames,
                    "audio_rate": self.audio_rate,
                }
                if self.protocol == "whep"
                else {}
            ),
        }


def percentile(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        raise ValueError("percentile of no values")
    k = max(0, min(len(sorted_values) - 1, int(round(p * len(sorted_values) + 0.5)) - 1))
    return sorted_values[k]


class Playout:
    """A player's clock: frames are shown at their PTS pace, never before they arrive.

    ``skip`` seconds of media at the start are decoded but not shown: a player
    loads from the independent part (or segment start) before its start position
    and seeks forward to the position its hold-back asks for, as hls.js does.
    """

    def __init__(self, result: ProbeResult, started: float, realtime_gaps: bool = False) -> None:
        self.result = result
        self.started = started
        self.realtime_gaps = realtime_gaps
        self.skip = 0.0
        self._skip_until: float | None = None
        self._shown: float | None = None
        self._pts: float | None = None

    def frame(self, arrival: float, pts: float | None, stamp_ms: int | None) -> float | None:
        """When the frame is shown (wall clock), or None if it is skipped."""
        if pts is not None and self.skip > 0:
            if self._skip_until is None:
                self._skip_until = pts + self.skip - 1e-6
            if pts < self._skip_until:
                return None
        r = self.result
        r.frames += 1
        if self._shown is None:
            shown = arrival
            r.startup_seconds = arrival - self.started
        elif self.realtime_gaps or pts is None or self._pts is None:
            # WebRTC: rendered on arrival; a long gap between frames is a stall.
            shown = arrival
            gap = arrival - self._shown
            if gap > WHEP_STALL_GAP:
                r.stalls += 1
                r.stall_seconds += gap
        else:
            step = min(max(pts - self._pts, 0.0), 1.0)  # a discontinuity is not a pause
            due = self._shown + step
            if arrival > due + STALL_GRACE:
                r.stalls += 1
                r.stall_seconds += arrival - due
            shown = max(arrival, due)
        self._shown, self._pts = shown, pts
        if stamp_ms is not None:
            r.stamped += 1
            r.latencies_ms.append(shown * 1000.0 - stamp_ms)
        return shown


def luma(frame: av.VideoFrame) -> np.ndarray:
    """The Y plane of a decoded frame, without a colour conversion when it is planar YUV."""
    if frame.format.name in ("yuv420p", "yuvj420p", "yuv422p", "yuv444p", "nv12"):
        plane = frame.planes[0]
        rows: np.ndarray = np.frombuffer(memoryview(plane), np.uint8)
        return rows.reshape(frame.height, plane.line_size)[:, : frame.width]
    return frame.to_ndarray(format="gray")


# -- HLS / LL-HLS ---------------------------------------------------------------------------


@dataclass
class Part:
    msn: int
    index: int
    uri: str
    duration: float
    independent: bool
    byterange: tuple[int, int] | None = None  # (length, offset)


@dataclass
class Segment:
    msn: int
    uri: str
    duration: float
    parts: list[Part]


@dataclass
class MediaPlaylist:
    target: float = 6.0
    sequence: int = 0
    segments: list[Segment] = field(default_factory=list)
    trailing: list[Part] = field(default_factory=list)  # parts of the segment being built
    map_uri: str | None = None
    part_target: float = 0.0
    can_block: bool = False
    hold_back: float = 0.0
    part_hold_back: float = 0.0
    ended: bool = False

    @property
    def next_msn(self) -> int:
        return self.sequence + len(self.segments)

    def parts(self) -> list[Part]:
        return [p for s in self.segments for p in s.parts] + self.trailing

    def segment(self, msn: int) -> Segment | None:
        i = msn - self.sequence
        return self.segments[i] if 0 <= i < len(self.segments) else None

    def parts_of(self, msn: int) -> list[Part]:
        seg = self.segment(msn)
        if seg is not None:
            return seg.parts
        return self.trailing if msn == self.next_msn else []


def _attrs(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    i = 0
    while i < len(text):
        eq = text.find("=", i)
        if eq < 0:
            break
        name = text[i:eq].strip().lstrip(",")
        if text[eq + 1 : eq + 2] == '"':
            end = text.index('"', eq + 2)
            out[name] = text[eq + 2 : end]
            i = end + 2
        else:
            end = text.find(",", eq)
            end = len(text) if end < 0 else end
            out[name] = text[eq + 1 : end]
            i = end + 1
    return out


def _byterange(value: str | None, last_end: int) -> tuple[int, int] | None:
    if not value:
        return None
    length, _, offset = value.partition("@")
    return int(length), int(offset) if offset else last_end


def parse_media_playlist(text: str) -> MediaPlaylist:
    """The parts of an RFC 8216bis media playlist a player needs (wire-format parser)."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not lines or lines[0] != "#EXTM3U":
        raise ValueError("playlist does not start with #EXTM3U")
    pl = MediaPlaylist()
    pending: list[Part] = []
    duration: float | None = None
    range_end = 0
    for line in lines[1:]:
        if line.startswith("#EXT-X-TARGETDURATION:"):
            pl.target = float(line.split(":", 1)[1])
        elif line.startswith("#EXT-X-MEDIA-SEQUENCE:"):
            pl.sequence = int(line.split(":", 1)[1])
        elif line.startswith("#EXT-X-MAP:"):
            pl.map_uri = _attrs(line.split(":", 1)[1]).get("URI")
        elif line.startswith("#EXT-X-PART-INF:"):
            pl.part_target = float(_attrs(line.split(":", 1)[1]).get("PART-TARGET", 0))
        elif line.startswith("#EXT-X-SERVER-CONTROL:"):
            a = _attrs(line.split(":", 1)[1])
            pl.can_block = a.get("CAN-BLOCK-RELOAD") == "YES"
            pl.hold_back = float(a.get("HOLD-BACK", 0))
            pl.part_hold_back = float(a.get("PART-HOLD-BACK", 0))
        elif line.startswith("#EXT-X-PART:"):
            a = _attrs(line.split(":", 1)[1])
            br = _byterange(a.get("BYTERANGE"), range_end)
            if br:
                range_end = br[0] + br[1]
            msn = pl.sequence + len(pl.segments)
            pending.append(
                Part(
                    msn,
                    len(pending),
                    a["URI"],
                    float(a["DURATION"]),
                    a.get("INDEPENDENT") == "YES",
                    br,
                )
            )
        elif line.startswith("#EXTINF:"):
            duration = float(line.split(":", 1)[1].split(",")[0])
        elif line == "#EXT-X-ENDLIST":
            pl.ended = True
        elif line.startswith("#EXT-X-SKIP:"):
            raise ValueError("delta playlists (EXT-X-SKIP) are not requested by this client")
        elif not line.startswith("#"):
            msn = pl.sequence + len(pl.segments)
            pl.segments.append(Segment(msn, line, duration or 0.0, pending))
            pending, duration, range_end = [], None, 0
    pl.trailing = pending
    return pl


class StampDecoder:
    """Decodes segments or parts in order with one persistent decoder and reads their stamps.

    Each frame comes back with the ``tag`` of the blob that carried it (the probe
    passes the time the blob was downloaded): with B-frames a decoder returns a
    frame one or two blobs later, but a player had its data, and could show it,
    when the blob that carried it arrived.
    """

    def __init__(self) -> None:
        self.init = b""
        self._ctx: av.VideoCodecContext | None = None
        self._tb: Fraction | None = None
        self._tags: dict[int, float] = {}

    def set_init(self, data: bytes) -> None:
        if data != self.init:
            self.init = data
            self._ctx = None

    def decode(self, blob: bytes, tag: float = 0.0) -> list[tuple[float | None, int | None, float]]:
        """``(pts seconds, stamp ms or None, tag)`` for every frame ``blob`` completes."""
        out: list[tuple[float | None, int | None, float]] = []
        try:
            container = av.open(io.BytesIO(self.init + blob), "r")
        except av.error.FFmpegError as exc:
            raise ProbeError(f"undecodable media ({len(blob)} bytes): {exc}") from None
        with container:
            if not container.streams.video:
                return out
            stream = container.streams.video[0]
            if self._ctx is None:
                ctx = av.CodecContext.create(stream.codec_context.name, "r")
                assert isinstance(ctx, av.VideoCodecContext)
                if stream.codec_context.extradata:
                    ctx.extradata = stream.codec_context.extradata
                self._ctx = ctx
            self._tb = stream.time_base or Fraction(1, 90000)
            for packet in container.demux(stream):
                if packet.size == 0:
                    continue
                packet.time_base = self._tb
                if packet.pts is not None:
                    self._tags[packet.pts] = tag
                try:
                    frames = self._ctx.decode(packet)
                except av.error.FFmpegError:
                    continue  # a part before the first IDR: skipped, as a player would
                for frame in frames:
                    out.append(self._frame(frame, tag))
        if len(self._tags) > 1000:  # frames that never came out (a decode error)
            self._tags.clear()
        return out

    def _frame(self, frame: av.VideoFrame, tag: float) -> tuple[float | None, int | None, float]:
        pts = float(frame.pts * self._tb) if frame.pts is not None and self._tb else None
        if frame.pts is not None:
            tag = self._tags.pop(frame.pts, tag)
        return pts, read_stamp(luma(frame)), tag


def _with_query(url: str, params: dict[str, Any]) -> str:
    parts = urlsplit(url)
    query = parts.query + ("&" if parts.query else "") + urlencode(params)
    return urlunsplit(parts._replace(query=query))


class HlsProbe:
    client: httpx.AsyncClient

    def __init__(
        self,
        url: str,
        duration: float,
        *,
        rendition: str | None = None,
        low_latency: bool | None = None,
        client: httpx.AsyncClient | None = None,
        hold_back: float | None = None,
    ) -> None:
        self.url = url
        self.duration = duration
        self.rendition = rendition
        self.low_latency = low_latency
        self._client = client
        self.hold_back = hold_back
        self._init_url: str | None = None
        self.decoder = StampDecoder()

    async def run(self) -> ProbeResult:
        if self._client is not None:
            self.client = self._client
            return await self._run()
        async with httpx.AsyncClient(timeout=httpx.Timeout(30.0, connect=10.0)) as client:
            self.client = client
            return await self._run()

    async def _run(self) -> ProbeResult:
        media_url, name = await self._pick_variant(self.url)
        playlist = await self._playlist(media_url)
        ll = bool(playlist.can_block and playlist.parts())
        if self.low_latency is True and not ll:
            raise ProbeError(
                f"{media_url}: not a low-latency playlist (no parts or no blocking reload)"
            )
        if self.low_latency is False:
            ll = False
        result = ProbeResult(self.url, "llhls" if ll else "hls", rendition=name)
        started = time.time()
        playout = Playout(result, started)
        deadline = time.monotonic() + self.duration
        if ll:
            await self._run_ll(media_url, playlist, playout, deadline)
        else:
            await self._run_segments(media_url, playlist, playout, deadline)
        result.seconds = time.time() - started
        return result

    async def _get(self, url: str, headers: dict[str, str] | None = None) -> httpx.Response:
        try:
            r = await self.client.get(url, headers=headers)
        except httpx.HTTPError as exc:
            raise ProbeError(f"{url}: {exc!r}") from None
        if r.status_code not in (200, 206):
            raise ProbeError(f"{url}: HTTP {r.status_code} {r.text.strip()[:200]}")
        return r

    async def _pick_variant(self, url: str) -> tuple[str, str]:
        text = (await self._get(url)).text
        if "#EXT-X-STREAM-INF" not in text:
            return url, ""
        variants: list[tuple[int, str]] = []
        lines = text.splitlines()
        for i, line in enumerate(lines):
            if line.startswith("#EXT-X-STREAM-INF:"):
                bw = int(_attrs(line.split(":", 1)[1]).get("BANDWIDTH", 0))
                uri = next(
                    (x.strip() for x in lines[i + 1 :] if x.strip() and not x.startswith("#")), ""
                )
                variants.append((bw, uri))
        if not variants:
            raise ProbeError(f"{url}: multivariant playlist lists no variant")
        if self.rendition:
            chosen = [v for v in variants if v[1].split("/")[0] == self.rendition]
            if not chosen:
                names = ", ".join(v[1].split("/")[0] for v in variants)
                raise ProbeError(f"{url}: no rendition {self.rendition!r} (has {names})")
            uri = chosen[0][1]
        else:
            uri = min(variants)[1]  # the lowest: cheapest to decode, same latency
        return urljoin(url, uri), uri.split("/")[0]

    async def _playlist(self, url: str, **block: int) -> MediaPlaylist:
        target = _with_query(url, block) if block else url
        text = (await self._get(target)).text
        try:
            pl = parse_media_playlist(text)
        except (ValueError, KeyError) as exc:
            raise ProbeError(f"{target}: bad media playlist: {exc}") from None
        if pl.map_uri:
            init_url = urljoin(url, pl.map_uri)
            if init_url != self._init_url:
                self.decoder.set_init((await self._get(init_url)).content)
                self._init_url = init_url
        return pl

    async def _feed(self, data: bytes, playout: Playout) -> None:
        frames = await asyncio.to_thread(self.decoder.decode, data, time.time())
        for pts, stamp, arrival in frames:
            playout.frame(arrival, pts, stamp)

    async def _run_segments(
        self, url: str, pl: MediaPlaylist, playout: Playout, deadline: float
    ) -> None:
        hold = self.hold_back if self.hold_back is not None else pl.hold_back or 3 * pl.target
        start = len(pl.segments)
        back = 0.0
        while start > 0 and back < hold:
            start -= 1
            back += pl.segments[start].duration
        msn = pl.sequence + start
        playout.skip = max(0.0, back - hold)
        while time.monotonic() < deadline:
            seg = pl.segment(msn)
            if seg is None:
                if msn < pl.sequence:
                    msn = pl.sequence  # fell out of the window: skip ahead
                    continue
                if pl.ended:
                    return
                await asyncio.sleep(pl.target / 2)
                pl = await self._playlist(url)
                continue
            r = await self._get(urljoin(url, seg.uri))
            await self._feed(r.content, playout)
            msn += 1

    async def _run_ll(self, url: str, pl: MediaPlaylist, playout: Playout, deadline: float) -> None:
        parts = pl.parts()
        hold = self.hold_back
        if hold is None:
            hold = pl.part_hold_back or 3 * pl.part_target
        i = len(parts) - 1
        back = parts[i].duration
        while i > 0 and (back < hold or not parts[i].independent):
            i -= 1
            back += parts[i].duration
        msn, index = parts[i].msn, parts[i].index
        playout.skip = max(0.0, back - hold)
        while time.monotonic() < deadline:
            known = pl.parts_of(msn)
            if index < len(known):
                part = known[index]
                headers = None
                if part.byterange:
                    length, offset = part.byterange
                    headers = {"Range": f"bytes={offset}-{offset + length - 1}"}
                r = await self._get(urljoin(url, part.uri), headers)
                await self._feed(r.content, playout)
                index += 1
                continue
            if pl.segment(msn) is not None:
                msn, index = msn + 1, 0  # that segment is complete: on to the next
                continue
            if msn < pl.sequence:
                raise ProbeError(f"{url}: fell {pl.sequence - msn} segments behind the window")
            if pl.ended:
                return
            pl = await self._playlist(url, _HLS_msn=msn, _HLS_part=index)


# -- WHEP -------------------------------------------------------------------------------


async def probe_whep(url: str, duration: float, *, startup_timeout: float = 15.0) -> ProbeResult:
    from aiortc import RTCPeerConnection, RTCSessionDescription
    from aiortc.mediastreams import MediaStreamError

    result = ProbeResult(url, "whep")
    pc = RTCPeerConnection()
    pc.addTransceiver("video", direction="recvonly")
    pc.addTransceiver("audio", direction="recvonly")
    tracks: asyncio.Queue[Any] = asyncio.Queue()
    drains: list[asyncio.Task[None]] = []

    def on_track(track: Any) -> None:
        if track.kind == "video":
            tracks.put_nowait(track)
        else:  # counted whenever it comes, before or after the video
            drains.append(asyncio.ensure_future(_count_audio(track, result)))

    pc.on("track", on_track)
    location: str | None = None
    async with httpx.AsyncClient(timeout=15.0) as client:
        try:
            await pc.setLocalDescription(await pc.createOffer())
            started = time.time()
            try:
                r = await client.post(
                    url,
                    content=pc.localDescription.sdp,
                    headers={"Content-Type": "application/sdp"},
                )
            except httpx.HTTPError as exc:
                raise ProbeError(f"{url}: {exc!r}") from None
            if r.status_code != 201:
                raise ProbeError(f"{url}: HTTP {r.status_code} {r.text.strip()[:200]}")
            if "location" in r.headers:
                location = urljoin(url, r.headers["location"])
            await pc.setRemoteDescription(RTCSessionDescription(sdp=r.text, type="answer"))
            video = await asyncio.wait_for(tracks.get(), startup_timeout)
            playout = Playout(result, started, realtime_gaps=True)
            deadline = time.monotonic() + duration
            first_deadline = time.monotonic() + startup_timeout
            while time.monotonic() < deadline:
                limit = (first_deadline if result.frames == 0 else deadline) - time.monotonic()
                try:
                    frame = await asyncio.wait_for(video.recv(), max(0.05, limit))
                except TimeoutError:
                    if result.frames == 0:
                        raise ProbeError(
                            f"{url}: no video frame within {startup_timeout:.0f} s"
                        ) from None
                    break
                except MediaStreamError:
                    break
                arrival = time.time()
                result.resolution = f"{frame.width}x{frame.height}"
                playout.frame(arrival, None, read_stamp(luma(frame)))
            result.seconds = time.time() - started
        finally:
            for task in drains:
                task.cancel()
            if location:
                with contextlib.suppress(httpx.HTTPError):
                    await client.delete(location)
            await pc.close()
    return result


async def _count_audio(track: Any, result: ProbeResult) -> None:
    """Decode the audio track beside the video: WHEP viewers must hear the class too."""
    with contextlib.suppress(Exception):
        while True:
            frame = await track.recv()
            result.audio_frames += 1
            result.audio_rate = int(frame.sample_rate)


# -- entry points -----------------------------------------------------------------------------


def detect_protocol(url: str) -> str:
    return "whep" if urlsplit(url).path.rstrip("/").endswith("/whep") else "hls"


async def probe(
    url: str,
    duration: float,
    protocol: str = "auto",
    rendition: str | None = None,
    hold_back: float | None = None,
) -> ProbeResult:
    """Probe ``url`` for ``duration`` seconds. ``protocol``: auto, hls, llhls or whep.

    ``hold_back`` (seconds behind the live edge to start HLS at) overrides the
    playlist's HOLD-BACK / PART-HOLD-BACK, to model players that sit closer or further.
    """
    if protocol == "auto":
        protocol = detect_protocol(url)
    if protocol == "whep":
        return await probe_whep(url, duration)
    low = {"hls": None, "llhls": True, "hls-segments": False}.get(protocol)
    if protocol not in ("hls", "llhls", "hls-segments"):
        raise ValueError(f"unknown protocol {protocol!r}: auto, hls, hls-segments, llhls or whep")
    return await HlsProbe(
        url, duration, rendition=rendition, low_latency=low, hold_back=hold_back
    ).run()


def format_table(rows: list[dict[str, Any]]) -> str:
    head = (
        f"{'protocol':<13}{'rendition':<10}{'frames':>7}{'stamped':>8}"
        f"{'p50 ms':>9}{'p95 ms':>9}{'stalls':>7}{'stall s':>8}"
    )
    out = [head, "-" * len(head)]
    for s in rows:
        p50 = "-" if s["latency_p50_ms"] is None else f"{s['latency_p50_ms']:.0f}"
        p95 = "-" if s["latency_p95_ms"] is None else f"{s['latency_p95_ms']:.0f}"
        out.append(
            f"{s['protocol']:<13}{s['rendition'] or '-':<10}{s['frames']:>7}{s['stamped']:>8}"
            f"{p50:>9}{p95:>9}{s['stalls']:>7}{s['stall_seconds']:>8.2f}"
        )
    return "\n".join(out)


def _main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        result = asyncio.run(
            probe(args.url, args.duration, args.protocol, args.rendition, args.hold_back)
        )
    except (ProbeError, ValueError) as exc:
        print(f"nearcast probe: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    summary = result.summary()
    if args.json:
        print(json.dumps(summary))
    else:
        print(format_table([summary]))
        if not result.stamped:
            print("no clock stamps found: publish with `nearcast publish --clock`", file=sys.stderr)
    return 0 if result.stamped else 3


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser(
        "probe",
        help="measure glass-to-glass latency of a stream published with --clock",
        description=(
            "Play URL as a viewer (HLS, LL-HLS or WHEP), read the clock stamp of every frame "
            "and print the latency (p50, p95) and the stalls. Exits 0 with stamps, 3 when "
            "no frame carried one, 1 on an error."
        ),
        epilog="example: nearcast probe http://127.0.0.1:8080/live/class/whep --duration 20",
    )
    parser.add_argument(
        "url", metavar="URL", help="multivariant or media playlist URL, or a WHEP endpoint"
    )
    parser.add_argument(
        "--protocol",
        default="auto",
        choices=["auto", "hls", "hls-segments", "llhls", "whep"],
        help="auto: WHEP for URLs ending in /whep, else HLS, low-latency when the playlist "
        "offers parts (hls-segments forces whole segments, llhls insists on parts)",
    )
    parser.add_argument(
        "--duration", type=float, default=20.0, metavar="S", help="seconds to watch (default 20)"
    )
    parser.add_argument(
        "--rendition", metavar="NAME", help="HLS rendition to play (default: the lowest)"
    )
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object instead of a table"
    )
    parser.add_argument(
        "--hold-back",
        type=float,
        metavar="S",
        help="HLS: start S seconds behind the live edge instead of the playlist's HOLD-BACK "
        "(PART-HOLD-BACK for LL-HLS; by default 3 target durations / 3 part targets)",
    )
    parser.set_defaults(func=_main)
