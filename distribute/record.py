"""Recording of live streams to disk as HLS video on demand.

Layout, per recorded stream::

    {record.dir}/{tenant}/{stream}/index.m3u8               multivariant playlist
    {record.dir}/{tenant}/{stream}/{rendition}/index.m3u8   VOD (EVENT while live) playlist
    {record.dir}/{tenant}/{stream}/{rendition}/init-{k}.mp4 fMP4 init segments (EXT-X-MAP)
    {record.dir}/{tenant}/{stream}/{rendition}/{seq:06d}-{ms}.m4s (or .ts) media segments

Crash safety: every file is written to a temporary name, fsync'ed, renamed into
place and its directory fsync'ed, segment first and playlist second. A playlist
therefore never lists a segment that is not on disk; a segment the crash left
unlisted carries its duration in its name and is listed again on recovery. When
a node starts it closes every recording it finds (ENDLIST), so each is playable
as VOD; a publisher that comes back (same node or after a restart) continues the
same recording after an EXT-X-DISCONTINUITY.

Disk quota: a segment that would take the recordings past ``record.quota_bytes``
raises :class:`RecordQuotaExceeded` (logged, counted in
``record_quota_exceeded_total``); nothing recorded is ever overwritten.

All disk I/O runs on one writer thread, in order, so the event loop never waits
on fsync.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import re
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge

from containers.mp4box import decode_span, parse_init, shift_decode_times
from distribute.config import RecordConfig
from distribute.hls.playlist import SegmentRef, VariantRef, master_playlist, media_playlist
from media.names import stream_name_problem

log = logging.getLogger(__name__)

PLAYLIST_TYPE = b"application/vnd.apple.mpegurl"
NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")
SEGMENT_NAME = re.compile(r"^(\d{6,})-(\d+)\.(m4s|ts)$")
INIT_NAME = re.compile(r"^init-(\d+)\.mp4$")


class RecordError(OSError):
    """A recording could not be written."""


class RecordQuotaExceeded(RecordError):
    """Writing a segment would exceed ``record.quota_bytes``."""


class RecordMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        # record_segments_total: segments written to disk and listed in a VOD playlist.
        self.segments = Counter("record_segments_total", "Recorded segments", registry=registry)
        # record_bytes: bytes all recordings take on disk (segments and init segments).
        self.bytes = Gauge("record_bytes", "Bytes of recordings on disk", registry=registry)
        # record_quota_exceeded_total{tenant}: segments not recorded because of the disk quota.
        self.quota_exceeded = Counter(
            "record_quota_exceeded_total",
            "Segments not recorded because record.quota_bytes was reached",
            ["tenant"],
            registry=registry,
        )
        # record_errors_total: segments not recorded because of an I/O error.
        self.errors = Counter("record_errors_total", "Recording I/O errors", registry=registry)


@dataclass
class _Entry:
    file: str
    duration: float
    discontinuity: bool
    map_uri: str | None


@dataclass
class _Rendition:
    path: Path
    entries: list[_Entry] = field(default_factory=list)
    next_seq: int = 0
    next_init: int = 1
    init_data: bytes | None = None
    map_uri: str | None = None
    pending_discontinuity: bool = False
    ended: bool = False
    # One continuous timeline across publishes and restarts: where the recorded
    # media ends (seconds), each track's timescale, and the decode-time shift
    # (ticks per track id) that moves the current run to follow on; None until
    # the run's first segment.
    end_s: float | None = None
    timescales: dict[int, int] = field(default_factory=dict)
    shift: dict[int, int] | None = None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, fsync: bool = True) -> None:
    """Write ``data`` so that ``path`` holds either its old content or all of ``data``."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        if fsync:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)
    if fsync:
        _fsync_dir(path.parent)


def _timescales(init: bytes) -> dict[int, int]:
    return {t.track_id: t.timescale for t in parse_init(init)}


def _parse_playlist(text: str) -> list[_Entry]:
    """The entries of a VOD playlist this module wrote."""
    entries: list[_Entry] = []
    disc = False
    map_uri: str | None = None
    duration: float | None = None
    for line in text.splitlines():
        if line == "#EXT-X-DISCONTINUITY":
            disc = True
        elif line.startswith("#EXT-X-MAP:URI="):
            map_uri = line.split("=", 1)[1].strip('"')
        elif line.startswith("#EXTINF:"):
            duration = float(line[8:].split(",")[0])
        elif line and not line.startswith("#") and duration is not None:
            entries.append(_Entry(line, duration, disc, map_uri))
            disc, duration = False, None
    return entries


class Recording:
    """One stream's recording. Every method does blocking I/O: call it on the writer thread."""

    def __init__(
        self, root: Path, tenant: str, stream: str, config: RecordConfig, recorder: Recorder
    ):
        self.tenant = tenant
        # Ingest refuses such names; the recorder still never writes outside its tree.
        if stream_name_problem(stream) is not None or stream_name_problem(tenant) is not None:
            raise ValueError(f"cannot record {tenant}/{stream!r}: not a safe folder name")
        self.path = root / tenant / stream
        self.config = config
        self.recorder = recorder
        self.renditions: dict[str, _Rendition] = {}
        self.variants: dict[str, VariantRef] = {}
        self.path.mkdir(parents=True, exist_ok=True)
        for sub in sorted(p for p in self.path.iterdir() if p.is_dir() and NAME.match(p.name)):
            self.renditions[sub.name] = self._recover(sub)

    def _recover(self, path: Path) -> _Rendition:
        r = _Rendition(path)
        playlist = path / "index.m3u8"
        if playlist.exists():
            r.entries = [
                e for e in _parse_playlist(playlist.read_text()) if (path / e.file).exists()
            ]
        listed = {e.file for e in r.entries}
        inits = sorted(int(m.group(1)) for p in path.iterdir() if (m := INIT_NAME.match(p.name)))
        if inits:
            r.next_init = inits[-1] + 1
            r.map_uri = f"init-{inits[-1]}.mp4"
            r.init_data = (path / r.map_uri).read_bytes()
        segs = sorted(
            (int(m.group(1)), p.name, int(m.group(2)))
            for p in path.iterdir()
            if (m := SEGMENT_NAME.match(p.name))
        )
        if segs:
            r.next_seq = segs[-1][0] + 1
        for _seq, name, ms in segs:
            if name not in listed and (not r.entries or name > r.entries[-1].file):
                # Written and renamed before the crash, but the playlist was not rewritten yet.
                mp4 = name.endswith(".m4s")
                r.entries.append(_Entry(name, ms / 1000, False, r.map_uri if mp4 else None))
        for stale in path.glob(".*.tmp"):
            stale.unlink(missing_ok=True)
        if r.entries:
            r.pending_discontinuity = True  # whatever is recorded next follows a break
        if r.init_data is not None:
            r.timescales = _timescales(r.init_data)
        last = r.entries[-1] if r.entries else None
        if last is not None and last.map_uri is not None and (path / last.map_uri).exists():
            try:
                scales = _timescales((path / last.map_uri).read_bytes())
                span = decode_span((path / last.file).read_bytes())
                r.end_s = max(end / scales[t] for t, (_, end) in span.items() if t in scales)
            except (ValueError, KeyError, OSError) as exc:
                log.warning("[record %s] cannot read where %s ends: %s", path, last.file, exc)
        return r

    def _playlist(self, r: _Rendition, ended: bool) -> bytes:
        refs = [
            SegmentRef(i, e.duration, e.file, e.discontinuity, map_uri=e.map_uri)
            for i, e in enumerate(r.entries)
        ]
        target = max((e.duration for e in r.entries), default=1.0)
        return media_playlist(
            refs, configured_target=target, discontinuity_sequence=0, ended=ended, vod=True
        ).encode()

    def _write_master(self) -> None:
        if not self.variants:
            return
        audio = None
        text = master_playlist(list(self.variants.values()), audio, version=7)
        write_atomic(self.path / "index.m3u8", text.encode(), self.config.fsync)

    def rendition(self, name: str, variant: VariantRef | None) -> _Rendition:
        r = self.renditions.get(name)
        if r is None:
            path = self.path / name
            path.mkdir(exist_ok=True)
            r = self.renditions[name] = _Rendition(path)
        if variant is not None and self.variants.get(name) != variant:
            self.variants[name] = variant
            self._write_master()
        return r

    def begin(self) -> None:
        """A new publish (or worker run) starts: its first segment follows a discontinuity."""
        for r in self.renditions.values():
            if r.entries:
                r.pending_discontinuity = True
            r.ended = False
            r.shift = None

    def write_init(self, name: str, data: bytes) -> None:
        r = self.rendition(name, None)
        if r.init_data == data:
            return
        try:
            scales = _timescales(data)
        except ValueError as exc:
            raise RecordError(f"{self.tenant}/{self.path.name}/{name}: bad init: {exc}") from None
        self.recorder.reserve(self.tenant, len(data))
        uri = f"init-{r.next_init}.mp4"
        write_atomic(r.path / uri, data, self.config.fsync)
        r.next_init += 1
        r.init_data, r.map_uri, r.timescales = data, uri, scales

    def write_segment(
        self, name: str, data: bytes, duration: float, fmp4: bool, variant: VariantRef | None = None
    ) -> str:
        """Write one complete segment and the playlist that lists it; returns its file name."""
        r = self.rendition(name, variant)
        if fmp4 and r.map_uri is None:
            raise RecordError(
                f"{self.tenant}/{self.path.name}/{name}: fMP4 segment before its init segment"
            )
        if fmp4:
            data = self._continue(r, name, data)
        self.recorder.reserve(self.tenant, len(data))
        file = f"{r.next_seq:06d}-{round(duration * 1000)}.{'m4s' if fmp4 else 'ts'}"
        write_atomic(r.path / file, data, self.config.fsync)
        r.next_seq += 1
        r.entries.append(
            _Entry(file, duration, r.pending_discontinuity, r.map_uri if fmp4 else None)
        )
        r.pending_discontinuity = False
        write_atomic(r.path / "index.m3u8", self._playlist(r, ended=False), self.config.fsync)
        return file

    def _continue(self, r: _Rendition, name: str, data: bytes) -> bytes:
        """The fMP4 segment moved onto the recording's timeline: a new run (reconnect,
        restart) starts where the recorded media ends, so the VOD plays straight on
        after its discontinuity instead of jumping back in time."""
        try:
            span = decode_span(data)
            if r.shift is None:
                r.shift = {}
                if r.end_s is not None and span:
                    first_s = min(first / r.timescales[t] for t, (first, _) in span.items())
                    delta = r.end_s - first_s
                    r.shift = {t: math.ceil(delta * scale) for t, scale in r.timescales.items()}
            if any(r.shift.values()):
                data = shift_decode_times(data, r.shift)
            end_s = max((end + r.shift.get(t, 0)) / r.timescales[t] for t, (_, end) in span.items())
        except (ValueError, KeyError) as exc:
            raise RecordError(
                f"{self.tenant}/{self.path.name}/{name}: bad fMP4 segment: {exc!r}"
            ) from None
        r.end_s = max(r.end_s or 0.0, end_s)
        return data

    def finish(self) -> None:
        """The stream ended (or the node restarted): every playlist becomes VOD with ENDLIST."""
        for r in self.renditions.values():
            if r.entries:
                write_atomic(
                    r.path / "index.m3u8", self._playlist(r, ended=True), self.config.fsync
                )
            r.ended = True
        if not (self.path / "index.m3u8").exists():
            # Recovered without a master (crash before the first one was written).
            for name, r in self.renditions.items():
                if r.entries and name not in self.variants:
                    self.variants[name] = VariantRef(f"{name}/index.m3u8", 1, 1, 0, 0, 0.0, "")
            if self.variants:
                lines = ["#EXTM3U", "#EXT-X-VERSION:7"]
                for v in self.variants.values():
                    lines += [f"#EXT-X-STREAM-INF:BANDWIDTH={v.bandwidth}", v.uri]
                write_atomic(
                    self.path / "index.m3u8", ("\n".join(lines) + "\n").encode(), self.config.fsync
                )


class Recorder:
    """Records the streams of the tenants in ``record.tenants``; serves the recordings."""

    def __init__(self, config: RecordConfig, metrics: RecordMetrics | None = None) -> None:
        self.config = config
        self.root = Path(config.dir)
        self.metrics = metrics or RecordMetrics(CollectorRegistry())
        self.recordings: dict[tuple[str, str], Recording] = {}
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="record")
        self._used = 0
        self._failed: set[tuple[str, str]] = set()
        self._last: Future[object] | None = None

    # -- setup ------------------------------------------------------------------------

    def recover(self) -> int:
        """Close every recording left on disk (a crash, a restart). Blocking; returns how many."""
        self.root.mkdir(parents=True, exist_ok=True)
        self._used = sum(
            p.stat().st_size
            for p in self.root.rglob("*")
            if p.is_file() and not p.name.startswith(".")
        )
        self.metrics.bytes.set(self._used)
        n = 0
        for tenant_dir in sorted(
            p for p in self.root.iterdir() if p.is_dir() and NAME.match(p.name)
        ):
            for stream_dir in sorted(
                p for p in tenant_dir.iterdir() if p.is_dir() and NAME.match(p.name)
            ):
                rec = Recording(self.root, tenant_dir.name, stream_dir.name, self.config, self)
                rec.finish()
                self.recordings[(tenant_dir.name, stream_dir.name)] = rec
                n += 1
        if n:
            log.info("recordings: %d recovered and closed under %s", n, self.root)
        return n

    def mode(self, tenant: str) -> str | None:
        return self.config.tenants.get(tenant)

    def reserve(self, tenant: str, nbytes: int) -> None:
        if self._used + nbytes > self.config.quota_bytes:
            self.metrics.quota_exceeded.labels(tenant).inc()
            raise RecordQuotaExceeded(
                f"recording quota of {self.config.quota_bytes} bytes (record.quota_bytes) reached: "
                f"{self._used} bytes recorded, {nbytes} more refused"
            )
        self._used += nbytes
        self.metrics.bytes.set(self._used)

    def get(self, tenant: str, stream: str) -> Recording:
        rec = self.recordings.get((tenant, stream))
        if rec is None:
            rec = self.recordings[(tenant, stream)] = Recording(
                self.root, tenant, stream, self.config, self
            )
        return rec

    # -- live side: called on the event loop, written on the writer thread -------------

    def submit(self, tenant: str, stream: str, what: str, fn_name: str, *args: object) -> None:
        key = (tenant, stream)

        def run() -> object:
            try:
                result = getattr(self.get(tenant, stream), fn_name)(*args)
                if fn_name == "write_segment":
                    self.metrics.segments.inc()
                    self._failed.discard(key)
                return result
            except RecordQuotaExceeded as exc:
                if key not in self._failed:
                    log.error("[record %s/%s] %s not recorded: %s", tenant, stream, what, exc)
                self._failed.add(key)
            except (OSError, ValueError) as exc:
                self.metrics.errors.inc()
                log.error("[record %s/%s] %s not recorded: %s", tenant, stream, what, exc)
            return None

        self._last = self._pool.submit(run)

    def begin(self, tenant: str, stream: str) -> None:
        self.submit(tenant, stream, "start", "begin")

    def init(self, tenant: str, stream: str, rendition: str, data: bytes) -> None:
        self.submit(tenant, stream, f"{rendition} init", "write_init", rendition, data)

    def segment(
        self,
        tenant: str,
        stream: str,
        rendition: str,
        data: bytes,
        duration: float,
        fmp4: bool,
        variant: VariantRef | None = None,
    ) -> None:
        self.submit(
            tenant,
            stream,
            f"{rendition} segment",
            "write_segment",
            rendition,
            data,
            duration,
            fmp4,
            variant,
        )

    def end(self, tenant: str, stream: str) -> None:
        self.submit(tenant, stream, "end", "finish")

    def flush(self, timeout: float = 30) -> None:
        """Wait until everything submitted so far is on disk (blocking)."""
        if self._last is not None:
            self._last.result(timeout)

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    # -- read side (HTTP) ---------------------------------------------------------------

    async def read(
        self, tenant: str, stream: str, rendition: str | None, file: str
    ) -> tuple[bytes, bytes] | None:
        names = [tenant, stream, file] + ([rendition] if rendition is not None else [])
        if not all(NAME.match(n) for n in names):
            return None
        path = self.root / tenant / stream
        if rendition is not None:
            path = path / rendition
        path = path / file
        if file.endswith(".m3u8"):
            ctype = PLAYLIST_TYPE
        elif file.endswith(".ts"):
            ctype = b"video/mp2t"
        elif file.endswith((".m4s", ".mp4")):
            ctype = b"video/mp4"
        else:
            return None
        try:
            data = await asyncio.to_thread(path.read_bytes)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None
        return data, ctype


def selected(mode: str | None, rendition: str, sizes: dict[str, int]) -> bool:
    """Is ``rendition`` recorded under ``mode``? ``sizes``: pixels of every rendition."""
    if mode == "all":
        return True
    if mode != "source":
        return False
    if "source" in sizes:
        return rendition == "source"
    return bool(sizes) and rendition == max(sizes, key=lambda n: sizes[n])


class StreamRecorder:
    """What a node's transcode sink tells the recorder about one live stream."""

    def __init__(self, recorder: Recorder, tenant: str, stream: str) -> None:
        self.recorder = recorder
        self.tenant = tenant
        self.stream = stream
        self.mode = recorder.mode(tenant)

    def wants(self, rendition: str, sizes: dict[str, int]) -> bool:
        return selected(self.mode, rendition, sizes)

    def begin(self) -> None:
        self.recorder.begin(self.tenant, self.stream)

    def init(self, rendition: str, data: bytes) -> None:
        self.recorder.init(self.tenant, self.stream, rendition, data)

    def segment(
        self, rendition: str, data: bytes, duration: float, fmp4: bool, variant: VariantRef
    ) -> None:
        self.recorder.segment(self.tenant, self.stream, rendition, data, duration, fmp4, variant)

    def end(self) -> None:
        self.recorder.end(self.tenant, self.stream)
