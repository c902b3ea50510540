"""``nearcast publish``: push a media file to an RTMP URL in real time.

This is a test source, not part of the node. It deliberately uses FFmpeg's own RTMP client
(through PyAV) and only remuxes, so what a node receives is what OBS or
``ffmpeg -re -i FILE -c copy -f flv URL`` would send: the source's H.264/AAC packets in
FLV tags, paced at the rate they would be captured.

Example::

    nearcast publish samples/lecture-720p.mp4 rtmp://127.0.0.1:1935/live/lecture --loop
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import multiprocessing
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from multiprocessing.connection import Connection
from typing import Any, Protocol

import av
import av.container
import av.error
import av.stream

logger = logging.getLogger(__name__)

# What FLV can carry without re-encoding. Classic FLV has H.264 and AAC/MP3; enhanced RTMP
# (FFmpeg >= 6.1) adds HEVC, AV1, VP9 and Opus, which most servers do not accept yet, so
# they are refused here with a message rather than sent to fail somewhere downstream.
VIDEO_CODECS = frozenset({"h264"})
AUDIO_CODECS = frozenset({"aac", "mp3"})


class PublishError(Exception):
    """Publishing cannot start or could not continue; the message names the source or URL.

    ``stats`` is what was sent before it failed (``None`` when not known): a publisher
    carrying on elsewhere continues the stream's timestamps after ``media_seconds``.
    """

    def __init__(self, message: str, stats: PublishStats | None = None) -> None:
        super().__init__(message)
        self.stats = stats


class _ClockStamper:
    """``--clock``: decode each video frame, stamp the wall clock into it, re-encode.

    The stamp (see :mod:`media.clock`) is the time the frame is encoded, i.e. the
    moment a camera would have captured it, as the frames are paced in real time.
    libx264 with ``tune=zerolatency`` and no B-frames emits each frame as soon as
    it is stamped; the source's keyframes stay keyframes, so the GOP is unchanged.
    """

    def __init__(self, output: av.container.OutputContainer, template: av.stream.Stream) -> None:
        src = template.codec_context
        assert isinstance(src, av.VideoCodecContext)
        decoder = av.CodecContext.create(src.name, "r")
        assert isinstance(decoder, av.VideoCodecContext)
        self.decoder = decoder
        if src.extradata:
            self.decoder.extradata = src.extradata
        rate = template.average_rate or template.guessed_rate or 30
        stream = output.add_stream("libx264", rate=rate)
        assert isinstance(stream, av.VideoStream)
        stream.width = src.width
        stream.height = src.height
        stream.pix_fmt = "yuv420p"
        if template.time_base is not None:
            stream.codec_context.time_base = template.time_base
        stream.options = {
            "preset": "ultrafast",
            "tune": "zerolatency",
            "crf": "23",
            "forced-idr": "1",
            "x264-params": "bframes=0:scenecut=0:keyint=600",
        }
        self.stream = stream
        self.frames = 0

    def stamp(self, packet: av.Packet[Any]) -> list[av.Packet[Any]]:
        from media.clock import stamp_yuv420p

        out: list[av.Packet[Any]] = []
        for frame in self.decoder.decode(packet):
            planes = frame.to_ndarray(format="yuv420p")
            stamp_yuv420p(planes, int(time.time() * 1000))
            stamped = av.VideoFrame.from_ndarray(planes, format="yuv420p")
            stamped.pts = frame.pts
            stamped.time_base = packet.time_base
            if frame.key_frame:
                stamped.pict_type = av.video.frame.PictureType.I
            out += self.stream.encode(stamped)
            self.frames += 1
        return out

    def flush(self) -> list[av.Packet[Any]]:
        return list(self.stream.encode())


@dataclass(frozen=True)
class PublishStats:
    """What was sent.

    ``media_seconds`` is the media time covered (the end of the last packet, across loops);
    ``loops`` is the number of passes over the source that were started (1 without ``loop``).
    """

    packets: int
    bytes: int
    media_seconds: float
    loops: int


def redact(url: str) -> str:
    """``url`` without the value of its ``token`` parameter, to log or show."""
    base, sep, query = url.partition("?")
    if not sep:
        return url
    parts = [
        f"{k}=..." if k.lower() == "token" else p
        for p in query.split("&")
        for k in [p.partition("=")[0]]
    ]
    return f"{base}?{'&'.join(parts)}"


def _seconds(ts: int, time_base: Fraction) -> Fraction:
    return ts * time_base


def _pick_streams(
    source: str, container: av.container.InputContainer
) -> tuple[av.stream.Stream | None, av.stream.Stream | None]:
    video = next(iter(container.streams.video), None)
    audio = next(iter(container.streams.audio), None)
    if video is None and audio is None:
        raise PublishError(f"{source}: no audio or video stream")
    if video is not None and video.codec_context.name not in VIDEO_CODECS:
        raise PublishError(
            f"{source}: video codec {video.codec_context.name!r} cannot be sent over RTMP "
            f"without re-encoding; expected one of {sorted(VIDEO_CODECS)}"
        )
    if audio is not None and audio.codec_context.name not in AUDIO_CODECS:
        raise PublishError(
            f"{source}: audio codec {audio.codec_context.name!r} cannot be sent over RTMP "
            f"without re-encoding; expected one of {sorted(AUDIO_CODECS)}"
        )
    return video, audio


def _earliest_dts(
    source: str, container: av.container.InputContainer, streams: list[av.stream.Stream]
) -> Fraction:
    """The earliest DTS, in seconds, over ``streams``: each stream's first packet has its
    smallest DTS, and with B-frames video starts below zero, possibly after audio in the
    file. Reads until every stream has shown a packet (a few packets for an interleaved file).
    """
    firsts: dict[int, Fraction] = {}
    for packet in container.demux(streams):
        if packet.dts is not None and packet.size and packet.stream_index not in firsts:
            firsts[packet.stream_index] = _seconds(packet.dts, packet.time_base)
            if len(firsts) == len(streams):
                break
    if not firsts:
        raise PublishError(f"{source}: no packets")
    return min(firsts.values())


def _open_source(source: str, open_timeout: float) -> av.container.InputContainer:
    try:
        return av.open(source, "r", timeout=open_timeout)
    except av.error.FFmpegError as exc:
        raise PublishError(f"cannot open {source}: {exc.strerror}") from exc


def _reopen(
    source: str, container: av.container.InputContainer, open_timeout: float
) -> av.container.InputContainer:
    # Reopening rather than seeking: some demuxers (e.g. MPEG-TS) seek only approximately.
    container.close()
    return _open_source(source, open_timeout)


class _StopEvent(Protocol):
    def is_set(self) -> bool: ...
    def wait(self, timeout: float | None = None) -> bool: ...


class _ChildStopEvent(_StopEvent, Protocol):
    def set(self) -> None: ...


def _publish_here(
    source: str,
    url: str,
    loop: bool,
    realtime: bool,
    duration: float | None,
    stop: _StopEvent,
    open_timeout: float,
    report: Callable[[str], None],
    clock: bool = False,
    start_at: float = 0.0,
) -> PublishStats:
    """The publisher proper; runs in the child process :func:`publish` starts."""
    limit = Fraction(duration) if duration is not None else None
    prefix = f"[publish {redact(url)}]"

    packets = 0
    sent_bytes = 0
    passes = 0
    # Media time at which the current pass starts, and the furthest packet end sent so far.
    offset = Fraction(start_at)
    media_end = offset

    source_container = _open_source(source, open_timeout)
    try:
        video, audio = _pick_streams(source, source_container)
        # Each pass is rebased so the earliest DTS of the file (negative with B-frames) lands
        # on `offset`: FLV timestamps are unsigned, and each pass must start where the
        # previous one ended for the receiver to see one stream.
        first_dts = _earliest_dts(
            source, source_container, [s for s in (video, audio) if s is not None]
        )
        rate = (video.average_rate or video.guessed_rate) if video is not None else None
        frame_duration = 1 / Fraction(rate) if rate else None
        source_container = _reopen(source, source_container, open_timeout)
        video, audio = _pick_streams(source, source_container)
        try:
            output = av.open(url, "w", format="flv")
        except av.error.FFmpegError as exc:
            raise PublishError(f"cannot open {redact(url)}: {exc.strerror}") from exc
        out_streams: dict[str, av.stream.Stream] = {}
        connected = False
        stamper = _ClockStamper(output, video) if clock and video is not None else None
        try:
            if stamper is not None:
                out_streams["video"] = stamper.stream
            elif video is not None:
                out_streams["video"] = output.add_stream_from_template(video)
            if audio is not None:
                out_streams["audio"] = output.add_stream_from_template(audio)
            logger.info("%s connecting", prefix)
            report("connecting")
            try:
                # Opens the RTMP session (TCP connect, handshake, connect/publish commands)
                # and sends the FLV header.
                output.start_encoding()
            except av.error.FFmpegError as exc:
                raise PublishError(f"cannot connect to {redact(url)}: {exc.strerror}") from exc
            connected = True
            report("connected")
            logger.info(
                "%s publishing %s (%s)%s",
                prefix,
                source,
                " + ".join(s.codec_context.name for s in (video, audio) if s is not None),
                ", looping" if loop else "",
            )
            # A stream continued from `start_at` (another node took over) is paced from it.
            wall_start = time.monotonic() - start_at
            finished = False
            while not finished and not stop.is_set():
                passes += 1
                if passes > 1:
                    logger.info("%s pass %d starts at %.3f s", prefix, passes, float(offset))
                    source_container = _reopen(source, source_container, open_timeout)
                    video, audio = _pick_streams(source, source_container)
                selected = [s for s in (video, audio) if s is not None]
                video_index = video.index if video is not None else -1
                shift = offset - first_dts
                # Per stream: (first DTS, end of last packet), in source seconds.
                spans: dict[int, tuple[Fraction, Fraction]] = {}
                for packet in source_container.demux(selected):
                    if packet.dts is None or packet.size == 0:
                        continue  # demuxer flush packets carry no data
                    tb = packet.time_base
                    dts = _seconds(packet.dts, tb) + shift
                    if limit is not None and dts >= limit:
                        finished = True
                        break
                    if realtime:
                        delay = float(dts) - (time.monotonic() - wall_start)
                        if delay > 0 and stop.wait(delay):
                            break
                    elif stop.is_set():
                        break
                    pts = packet.pts if packet.pts is not None else packet.dts
                    shift_ticks = round(shift / tb)
                    packet.dts += shift_ticks
                    packet.pts = pts + shift_ticks
                    end = dts + _seconds(packet.duration or 0, tb)
                    media_end = max(media_end, end)
                    first = spans.get(packet.stream_index, (dts - shift, end))[0]
                    spans[packet.stream_index] = (first, end - shift)
                    kind = "video" if packet.stream_index == video_index else "audio"
                    size = packet.size
                    try:
                        if stamper is not None and kind == "video":
                            output.mux(stamper.stamp(packet))
                        else:
                            packet.stream = out_streams[kind]
                            output.mux(packet)
                    except av.error.FFmpegError as exc:
                        raise PublishError(
                            f"{redact(url)}: sending failed after {packets} packets: {exc.strerror}"
                        ) from exc
                    packets += 1
                    sent_bytes += size
                if not loop:
                    break
                if not spans:
                    raise PublishError(f"{source}: no packets to loop over")
                # The next pass starts one file length later, the same shift for every
                # stream to keep A/V sync. The length is the longest stream's own span
                # (first DTS to last packet end) so that stream continues without a gap;
                # video's B-frame DTS lead and AAC priming then cost a shorter stream at
                # most one of the longer stream's frames, instead of adding up into a jump.
                period = max(end - first for first, end in spans.values())
                if frame_duration is not None:
                    # Whole video frames, so every pass sits on the first pass's frame grid.
                    # Otherwise the grid shifts a little each pass, and after FLV's rounding
                    # to 1 ms a receiver mapping back to 1/fps sees two frames on one tick.
                    period = math.ceil(period / frame_duration) * frame_duration
                offset += period
            if stamper is not None and connected:
                with contextlib.suppress(av.error.FFmpegError):
                    output.mux(stamper.flush())
        finally:
            _close_output(output, connected, prefix)
    except PublishError as exc:
        if exc.stats is None:
            exc.stats = PublishStats(packets, sent_bytes, float(media_end), passes)
        raise
    finally:
        source_container.close()

    stats = PublishStats(packets, sent_bytes, float(media_end), passes)
    logger.info(
        "%s done: %d packets, %d bytes, %.3f s of media, %d pass(es)",
        prefix,
        stats.packets,
        stats.bytes,
        stats.media_seconds,
        stats.loops,
    )
    return stats


def _close_output(output: av.container.OutputContainer, connected: bool, prefix: str) -> None:
    if not connected:
        # Closing an unopened output would write the header, i.e. connect, just to hang up.
        # A half-finished connect is left to its (daemon) helper thread.
        return
    try:
        # Writes the FLV trailer and closes the RTMP session (FCUnpublish/deleteStream).
        output.close()
    except av.error.FFmpegError as exc:
        # The peer is usually already gone when this fails; the caller has the real error.
        logger.warning("%s closing failed: %s", prefix, exc.strerror)


def _child(
    source: str,
    url: str,
    loop: bool,
    realtime: bool,
    duration: float | None,
    stop: _ChildStopEvent,
    conn: Connection,
    open_timeout: float,
    log_level: int,
    clock: bool = False,
    start_at: float = 0.0,
) -> None:
    # The parent turns Ctrl-C into `stop`, so the connection is closed properly here.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(level=log_level, format="%(levelname)s %(name)s: %(message)s")
    parent = multiprocessing.parent_process()
    if parent is not None:
        # If the parent dies without stopping us (SIGKILL), stop rather than publish forever.
        def watch_parent() -> None:
            parent.join()
            stop.set()

        threading.Thread(target=watch_parent, name="nearcast-publish-parent", daemon=True).start()
    try:
        stats = _publish_here(
            source,
            url,
            loop,
            realtime,
            duration,
            stop,
            open_timeout,
            lambda state: conn.send((state, None)),
            clock,
            start_at,
        )
    except PublishError as exc:
        conn.send(("error", (str(exc), exc.stats)))
    except Exception as exc:
        logger.exception("[publish %s] failed", redact(url))
        conn.send(("error", (f"{redact(url)}: publishing failed: {exc!r}", None)))
    else:
        conn.send(("done", stats))
    finally:
        conn.close()


def publish(
    source: str,
    url: str,
    *,
    loop: bool = False,
    realtime: bool = True,
    duration: float | None = None,
    stop: threading.Event | None = None,
    open_timeout: float = 10.0,
    clock: bool = False,
    start_at: float = 0.0,
) -> PublishStats:
    """Remux the first video and first audio stream of ``source`` to ``url`` as FLV.

    With ``realtime`` each packet is sent when the wall clock reaches its decode timestamp
    (what ``ffmpeg -re`` does), so a receiver sees a live source. With ``loop`` the source
    restarts at its end and timestamps carry on from where the last pass ended, so the
    receiver sees one continuous stream. Publishing ends at the end of the source (without
    ``loop``), after ``duration`` seconds of media, or when ``stop`` is set (also while
    connecting; the stats are then all zero).

    ``open_timeout`` bounds opening ``source`` and the RTMP connect and handshake.

    ``start_at`` (seconds) is the media time the first packet is sent at: a stream that
    another node takes over carries on from where it was (see :func:`publish_placed`).

    The work runs in a child process: PyAV 18.1 opens an output and writes its header
    (the whole RTMP connect and handshake) while holding the GIL, so in-process it would
    freeze every other thread, deadlock against an RTMP server running in this process,
    and leave no way to enforce ``open_timeout``. Blocks until publishing ends.

    Raises :class:`PublishError` when the source cannot be read or the URL cannot be
    reached or stops accepting data. ``KeyboardInterrupt`` is let through after the child
    has closed the connection.
    """
    if duration is not None and duration <= 0:
        raise ValueError(f"'duration' must be greater than zero, got {duration}")
    if open_timeout <= 0:
        raise ValueError(f"'open_timeout' must be greater than zero, got {open_timeout}")
    if start_at < 0:
        raise ValueError(f"'start_at' must not be negative, got {start_at}")
    # spawn, not fork: callers (servers, test harnesses) have threads, and forking those
    # can copy a held lock into the child.
    ctx = multiprocessing.get_context("spawn")
    child_stop = ctx.Event()
    receiver, sender = ctx.Pipe(duplex=False)
    proc = ctx.Process(
        target=_child,
        args=(
            source,
            url,
            loop,
            realtime,
            duration,
            child_stop,
            sender,
            open_timeout,
            logger.getEffectiveLevel(),
            clock,
            start_at,
        ),
        name="nearcast-publish",
        daemon=True,
    )
    proc.start()
    sender.close()
    state = "starting"
    deadline: float | None = None
    try:
        while True:
            if stop is not None and stop.is_set():
                child_stop.set()
                if state != "connected":
                    # Stuck in connect() where it cannot see `stop`; nothing was sent.
                    return PublishStats(0, 0, 0.0, 0)
            if deadline is not None and time.monotonic() >= deadline:
                raise PublishError(
                    f"cannot connect to {redact(url)}: timed out after {open_timeout:g} s",
                    PublishStats(0, 0, start_at, 0),
                )
            if not receiver.poll(0.05):
                continue
            try:
                kind, value = receiver.recv()
            except EOFError:
                proc.join(timeout=1)
                raise PublishError(
                    f"{redact(url)}: publisher process ended unexpectedly "
                    f"(exit code {proc.exitcode})"
                ) from None
            if kind == "connecting":
                state, deadline = kind, time.monotonic() + open_timeout
            elif kind == "connected":
                state, deadline = kind, None
            elif kind == "error":
                message, stats = value
                raise PublishError(message, stats)
            else:
                assert isinstance(value, PublishStats)
                return value
    except KeyboardInterrupt:
        logger.info("[publish %s] interrupted, closing", redact(url))
        raise
    finally:
        child_stop.set()
        if state == "connected":
            proc.join(timeout=5)  # it closes the RTMP session within one pacing wait
        if proc.is_alive():
            proc.kill()
        proc.join(timeout=5)
        receiver.close()


class PlacementRefused(PublishError):
    """Placement refused the credential or the request (401, 403, 422): asking again
    cannot help."""


@dataclass(frozen=True)
class PlacedSession:
    """A session placement gave: its id, its node and the node's RTMP ingest URL."""

    id: str
    node: str
    rtmp: str


def stream_of_token(token: str) -> tuple[str, str] | None:
    """The tenant and stream a publish token names (read, not verified: placement and
    the node verify it), or ``None`` when ``token`` is not a publish token."""
    import base64
    import binascii

    import tokens

    body = token.partition(".")[0]
    try:
        claims = tokens.Claims.parse(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    except (binascii.Error, ValueError):
        return None
    return (claims.tenant, claims.stream) if claims.action == "publish" else None


def ask_placement(
    placement: str,
    token: str,
    tenant: str,
    stream: str,
    timeout: float = 10.0,
    location: dict[str, str] | None = None,
) -> PlacedSession:
    """``POST {placement}/v1/sessions`` for ``tenant/stream`` with ``token`` as the bearer
    (the operator token, or the stream's publish token), and ``location`` (city, isp,
    region) as a hint where placement would otherwise locate the publisher by its address.
    Raises :class:`PlacementRefused` when placement refuses it and :class:`PublishError`
    when it cannot place it now."""
    import httpx

    where = f"{placement.rstrip('/')}/v1/sessions"
    ask: dict[str, object] = {"tenant": tenant, "stream": stream}
    if location:
        ask["location"] = location
    try:
        r = httpx.post(
            where,
            json=ask,
            headers={"Authorization": f"Bearer {token}"},
            timeout=timeout,
        )
    except httpx.HTTPError as exc:
        raise PublishError(f"placement {where}: {type(exc).__name__}: {exc}") from None
    try:
        body = r.json()
    except ValueError:
        body = {}
    detail = body.get("detail", r.text[:200]) if isinstance(body, dict) else r.text[:200]
    if r.status_code in (401, 403, 422):
        raise PlacementRefused(
            f"placement refused a session of {tenant}/{stream}: {r.status_code} {detail}"
        )
    if r.status_code != 201:
        raise PublishError(
            f"placement has no session for {tenant}/{stream}: {r.status_code} {detail}"
        )
    try:
        return PlacedSession(str(body["id"]), str(body["node"]), str(body["ingest"]["rtmp"]))
    except (KeyError, TypeError):
        raise PublishError(f"placement {where} answered no session: {r.text[:200]}") from None


def publish_placed(
    source: str,
    placement: str,
    token: str,
    *,
    tenant: str = "",
    stream: str = "",
    reconnect: bool = True,
    loop: bool = True,
    realtime: bool = True,
    duration: float | None = None,
    stop: threading.Event | None = None,
    open_timeout: float = 10.0,
    clock: bool = False,
    min_backoff: float = 0.25,
    max_backoff: float = 5.0,
    on_placed: Callable[[PlacedSession], None] | None = None,
    location: dict[str, str] | None = None,
) -> PublishStats:
    """Publish ``source`` to the node placement gives this stream; with ``reconnect``,
    on any failure (the node died, refused, or cannot be reached) ask placement again
    and carry on with the node it gives then, until ``stop`` is set or ``duration``
    seconds of media were sent.

    ``token`` is the bearer for placement: the operator token, or the stream's publish
    token (``tenant`` and ``stream`` default to the ones it names), which also goes to
    the node as ``?token=``, so one credential does both. A stream carried on by another
    node continues the timestamps, with the time no node had it added when ``realtime``
    (a live encoder's clock keeps running). Retries wait ``min_backoff`` doubling up to
    ``max_backoff`` seconds, back to ``min_backoff`` once a node took media.
    ``on_placed`` sees each session placement gives; ``location`` is the hint of
    :func:`ask_placement`.
    """
    named = stream_of_token(token)
    if not (tenant and stream):
        if named is None:
            raise ValueError("give the tenant and stream, or a publish token naming them")
        tenant, stream = named
    if not 0 < min_backoff <= max_backoff:
        raise ValueError(f"need 0 < min_backoff <= max_backoff, got {min_backoff}, {max_backoff}")
    stop = stop or threading.Event()
    prefix = f"[publish {tenant}/{stream}]"
    packets = sent_bytes = passes = 0
    media_at = 0.0
    down_since: float | None = None  # when the last node failed
    backoff = min_backoff
    node: str | None = None
    while not stop.is_set():
        try:
            placed = ask_placement(placement, token, tenant, stream, open_timeout, location)
        except PlacementRefused:
            raise
        except PublishError as exc:
            if not reconnect:
                raise
            logger.warning("%s %s; asking again in %.2f s", prefix, exc, backoff)
            if stop.wait(backoff):
                break
            backoff = min(backoff * 2, max_backoff)
            continue
        if on_placed is not None:
            on_placed(placed)
        if node is not None and placed.node != node:
            logger.warning(
                "%s switching from node %s to node %s (session %s) at %.3f s of media",
                prefix,
                node,
                placed.node,
                placed.id,
                media_at,
            )
        else:
            logger.info("%s placed on node %s (session %s)", prefix, placed.node, placed.id)
        node = placed.node
        if down_since is not None and realtime:
            media_at += time.monotonic() - down_since
        down_since = None
        url = placed.rtmp
        if named == (tenant, stream):
            url += ("&" if "?" in url else "?") + f"token={token}"
        try:
            stats = publish(
                source,
                url,
                loop=loop,
                realtime=realtime,
                duration=duration,
                stop=stop,
                open_timeout=open_timeout,
                clock=clock,
                start_at=media_at,
            )
        except PublishError as exc:
            if not reconnect:
                raise
            down_since = time.monotonic()
            sent = exc.stats
            if sent is not None:
                packets += sent.packets
                sent_bytes += sent.bytes
                passes += sent.loops
                media_at = max(media_at, sent.media_seconds)
                if sent.packets:
                    backoff = min_backoff  # it was publishing: ask again at once
            logger.warning(
                "%s node %s failed: %s; asking placement again in %.2f s",
                prefix,
                node,
                exc,
                backoff,
            )
            if stop.wait(backoff):
                break
            backoff = min(backoff * 2, max_backoff)
            continue
        packets += stats.packets
        sent_bytes += stats.bytes
        passes += stats.loops
        media_at = max(media_at, stats.media_seconds)
        break
    return PublishStats(packets, sent_bytes, media_at, passes)


def _main(args: argparse.Namespace) -> int:
    if args.placement:
        return _main_placed(args)
    if not args.url:
        print("nearcast publish: give an RTMP URL, or --placement URL --token T", file=sys.stderr)
        return 2
    try:
        stats = publish(
            args.source,
            args.url,
            loop=args.loop,
            realtime=args.realtime,
            duration=args.duration,
            open_timeout=args.open_timeout,
            clock=args.clock,
        )
    except PublishError as exc:
        print(f"nearcast publish: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("nearcast publish: interrupted", file=sys.stderr)
        return 130  # the shell's convention for SIGINT
    print(
        f"sent {stats.packets} packets, {stats.bytes} bytes, "
        f"{stats.media_seconds:.1f} s of media in {stats.loops} pass(es)"
    )
    return 0


def _main_placed(args: argparse.Namespace) -> int:
    """``--placement``: ask placement for the node, and with ``--reconnect`` carry on
    elsewhere whenever it fails; SIGINT and SIGTERM end it cleanly (exit 0)."""
    if args.url:
        print("nearcast publish: give either an RTMP URL or --placement, not both", file=sys.stderr)
        return 2
    if not args.token:
        print("nearcast publish: --placement needs --token", file=sys.stderr)
        return 2
    tenant, _, stream = (args.stream or "").partition("/")
    if args.stream and not (tenant and stream):
        print("nearcast publish: --stream is TENANT/STREAM", file=sys.stderr)
        return 2
    if not args.stream and stream_of_token(args.token) is None:
        print(
            "nearcast publish: --token is not a publish token; name the stream with --stream",
            file=sys.stderr,
        )
        return 2
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s"
        )
    stop = threading.Event()
    signals = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in signals}
    try:
        stats = publish_placed(
            args.source,
            args.placement,
            args.token,
            tenant=tenant,
            stream=stream,
            reconnect=args.reconnect,
            loop=args.loop or args.reconnect,
            realtime=args.realtime,
            duration=args.duration,
            stop=stop,
            open_timeout=args.open_timeout,
            clock=args.clock,
            max_backoff=args.max_backoff,
            location={k: v for k in ("city", "isp", "region") if (v := getattr(args, k) or "")},
        )
    except PublishError as exc:
        print(f"nearcast publish: {exc}", file=sys.stderr)
        return 1
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print(
        f"{'stopped' if stop.is_set() else 'done'}: sent {stats.packets} packets, "
        f"{stats.bytes} bytes, {stats.media_seconds:.1f} s of media in {stats.loops} pass(es)"
    )
    return 0


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be greater than zero, got {text}")
    return value


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``publish`` subcommand to the ``nearcast`` CLI."""
    parser = subparsers.add_parser(
        "publish",
        help="push a media file to an RTMP URL in real time (a test source)",
        description=(
            "Push the first video and audio stream of SOURCE to an RTMP URL, paced in real "
            "time like a live encoder. Packets are remuxed, not re-encoded, so SOURCE must "
            "be H.264 video and AAC (or MP3) audio, e.g. the clips in samples/. "
            "Exits 0 when done, 1 on an error, 130 on Ctrl-C."
        ),
        epilog=(
            "examples: nearcast publish samples/lecture-720p.mp4 "
            "rtmp://127.0.0.1:1935/live/lecture --loop; "
            "nearcast publish samples/lecture-720p.mp4 --placement http://placement:8090 "
            "--token T --reconnect"
        ),
    )
    parser.add_argument("source", metavar="SOURCE", help="media file to send (any PyAV input)")
    parser.add_argument(
        "url",
        metavar="URL",
        nargs="?",
        help="RTMP URL ending in the app and stream key, e.g. rtmp://HOST:1935/live/KEY "
        "(or --placement instead)",
    )
    parser.add_argument(
        "--placement",
        metavar="URL",
        help="ask this placement service for the node (POST /v1/sessions) and publish to it",
    )
    parser.add_argument(
        "--token",
        metavar="T",
        help="with --placement: the stream's signed publish token (`nearcast token`), sent "
        "to placement as the bearer and to the node as ?token=; or the operator token",
    )
    parser.add_argument(
        "--stream",
        metavar="TENANT/STREAM",
        help="with --placement: the stream to publish (default: the one the token names)",
    )
    for key in ("city", "isp", "region"):
        parser.add_argument(
            f"--{key}",
            metavar=key.upper(),
            help=f"with --placement: the publisher's {key}, a hint for placement where it "
            "cannot tell from the publisher's address",
        )
    parser.add_argument(
        "--reconnect",
        action="store_true",
        help="with --placement: when the node fails, ask placement again and carry on with "
        "the node it gives, looping SOURCE, timestamps continuing; until Ctrl-C or SIGTERM",
    )
    parser.add_argument(
        "--max-backoff",
        type=_positive_float,
        default=5.0,
        metavar="S",
        help="with --reconnect: longest wait between asks, doubling from 0.25 s (default: 5)",
    )
    parser.add_argument(
        "--loop",
        action="store_true",
        help="restart SOURCE at its end, forever or until --duration; timestamps keep "
        "increasing so the receiver sees one continuous stream",
    )
    parser.add_argument(
        "--no-realtime",
        dest="realtime",
        action="store_false",
        help="send as fast as the connection allows instead of at the media's own pace",
    )
    parser.add_argument(
        "--duration",
        type=_positive_float,
        metavar="S",
        help="stop after S seconds of media (default: end of SOURCE, or never with --loop)",
    )
    parser.add_argument(
        "--open-timeout",
        type=_positive_float,
        default=10.0,
        metavar="S",
        help="give up if opening SOURCE or connecting to URL takes longer (default: 10)",
    )
    parser.add_argument(
        "--clock",
        action="store_true",
        help="re-encode the video with the wall-clock time (ms) stamped into every frame as "
        "a machine-readable band, for `nearcast probe` and the /watch page's latency readout",
    )
    parser.set_defaults(func=_main)
