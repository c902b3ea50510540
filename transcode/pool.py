"""Node-side handles on transcode worker processes.

The event loop never touches a codec: it moves compressed packets into a
bounded queue per stream, a writer task streams them into the worker's stdin,
and a reader task turns the worker's stdout into segment callbacks. A worker
that dies while its publisher is still live is restarted with the same spec;
the stream continues in the same playlists after a discontinuity.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, replace
from typing import Any, Protocol

from media import MediaPacket, StreamKey
from media.segments import SegmentFrame
from transcode.protocol import (
    ENV_MEMORY,
    ENV_PARENT,
    FrameReader,
    FrameType,
    FramingError,
    decode_init,
    decode_packet,
    decode_part,
    decode_segment,
    encode_json,
    encode_packet,
)
from transcode.spec import Spec

log = logging.getLogger(__name__)


# A GOP kept for a restarted worker is at most this large (20 s of a 6 Mb/s source).
MAX_GOP_BYTES = 16 * 1024 * 1024

# Optional sink methods: frame type -> (method, payload -> its arguments).
_OPTIONAL: dict[FrameType, tuple[str, Callable[[bytes], tuple[Any, ...]]]] = {
    FrameType.PART: ("on_part", lambda p: (decode_part(p),)),
    FrameType.INIT: ("on_init", lambda p: (decode_init(p),)),
    FrameType.RECORD_INIT: ("on_record_init", lambda p: (decode_init(p),)),
    FrameType.RECORD_SEGMENT: ("on_record_segment", lambda p: (decode_segment(p),)),
    FrameType.TAP: ("on_tap", decode_packet),  # (packet, arrival) for WebRTC viewers
}


class TranscodeSink(Protocol):
    """What the pool reports to, per stream (the distribution store)."""

    def on_renditions(self, info: dict[str, Any]) -> None: ...
    def on_segment(self, segment: SegmentFrame) -> None: ...
    def on_restart(self) -> None: ...
    def on_stats(self, stats: dict[str, Any]) -> None: ...


class WorkerState(enum.Enum):
    STARTING = "starting"
    RUNNING = "running"
    FINISHING = "finishing"
    STOPPED = "stopped"
    FAILED = "failed"


def spec_to_json(spec: Spec) -> dict[str, Any]:
    return {
        "stream": spec.stream,
        "ladder": [asdict(r) for r in spec.ladder],
        "audio": asdict(spec.audio),
        "segment_duration": spec.segment_duration,
        "x264_threads": spec.x264_threads,
        "fps_hint": spec.fps_hint,
        "live": spec.live,
        "degrade_lag": spec.degrade_lag,
        "recover_after": spec.recover_after,
        "segment_format": spec.segment_format,
        "part_duration": spec.part_duration,
        "tap": spec.tap,
        "record_fmp4": spec.record_fmp4,
        "resume_ms": spec.resume_ms,
        "timeline_origin_ms": spec.timeline_origin_ms,
    }


class Transcoder:
    """One stream's worker process, supervised."""

    def __init__(
        self,
        key: StreamKey,
        spec: Spec,
        sink: TranscodeSink,
        *,
        queue_packets: int = 600,
        restart_backoff: float = 0.5,
        max_restarts: int = 20,
        memory_mb: int = 0,
    ) -> None:
        self.key = key
        self.memory_mb = memory_mb
        self.spec = spec
        self.sink = sink
        self.restarts = 0
        self.fatal: str | None = None
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=queue_packets)
        self._backoff = restart_backoff
        self._max_restarts = max_restarts
        self._proc: asyncio.subprocess.Process | None = None
        self._task: asyncio.Task[None] | None = None
        self._configs: dict[str, bytes] = {}
        # The packets sent since the last video keyframe: a restarted worker gets them
        # first, so it starts at once instead of waiting up to a GOP for a keyframe.
        self._gop: list[bytes] = []
        self._gop_bytes = 0
        # Media time (ms) every rendition has delivered up to, for the restarted worker.
        self._delivered: dict[str, int] = {}
        self._need_keyframe = False
        self._state = WorkerState.STARTING
        self._finishing = False
        self._done = asyncio.Event()
        self.prefix = f"[transcode {key}]"

    # -- state -----------------------------------------------------------------

    @property
    def state(self) -> WorkerState:
        return self._state

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def _set_state(self, state: WorkerState) -> None:
        if state is not self._state:
            log.info("%s %s -> %s", self.prefix, self._state.value, state.value)
            self._state = state
            if state in (WorkerState.STOPPED, WorkerState.FAILED):
                self._done.set()

    # -- public ------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._supervise(), name=f"transcode {self.key}")

    async def send(self, packet: MediaPacket) -> None:
        """Queue one packet; waits (throttling the publisher) when the queue is full."""
        if self._state in (WorkerState.STOPPED, WorkerState.FAILED) or self._finishing:
            return
        frame = encode_packet(packet, time.time())
        if packet.config:
            self._configs[packet.kind] = frame
        await self._queue.put(frame)

    async def finish(self, timeout: float = 10.0) -> None:  # noqa: ASYNC109
        """Flush: the worker encodes what it has, emits its last segments and exits."""
        if self._finishing:
            await self._wait_done(timeout)
            return
        self._finishing = True
        await self._queue.put(None)
        await self._wait_done(timeout)

    async def stop(self) -> None:
        """Stop now, without waiting for a flush. Never hangs."""
        self._finishing = True
        await self._kill()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self._state not in (WorkerState.STOPPED, WorkerState.FAILED):
            self._set_state(WorkerState.STOPPED)

    async def _wait_done(self, timeout: float) -> None:  # noqa: ASYNC109
        try:
            await asyncio.wait_for(self._done.wait(), timeout)
        except TimeoutError:
            log.warning("%s worker did not finish in %.0f s; killing it", self.prefix, timeout)
            await self.stop()

    # -- supervision -------------------------------------------------------------------

    async def _spawn(self) -> asyncio.subprocess.Process:
        env = worker_environment(os.environ)
        env.update(WORKER_LOG_ENV)
        env[ENV_PARENT] = str(os.getpid())
        env[ENV_MEMORY] = str(self.memory_mb)
        return await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "transcode.worker",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=env,
            # A session of its own: a Ctrl-C at the node's terminal does not reach
            # the worker, so the node decides when it ends and the last segments are
            # flushed. (No preexec_fn: it is unsafe once the node has threads.)
            start_new_session=True,
        )

    async def _supervise(self) -> None:
        try:
            while True:
                self._proc = await self._spawn()
                log.info("%s worker pid %d started", self.prefix, self._proc.pid)
                self._set_state(WorkerState.RUNNING)
                clean = await self._run_once(self._proc)
                if clean or self._finishing:
                    self._set_state(WorkerState.STOPPED)
                    return
                if self.fatal is not None:
                    log.error("%s stream refused: %s", self.prefix, self.fatal)
                    self._set_state(WorkerState.FAILED)
                    return
                self.restarts += 1
                if self.restarts > self._max_restarts:
                    log.error("%s worker crashed %d times; giving up", self.prefix, self.restarts)
                    self._set_state(WorkerState.FAILED)
                    return
                log.warning(
                    "%s worker exited with %s; restart %d",
                    self.prefix,
                    self._proc.returncode,
                    self.restarts,
                )
                self._set_state(WorkerState.STARTING)
                # With the last GOP replayed, the new worker needs no fresh keyframe.
                self._need_keyframe = not self._gop
                self.sink.on_restart()
                if self.restarts > 1:
                    # The first restart is immediate; a crash loop waits between tries.
                    await asyncio.sleep(self._backoff)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s supervisor failed", self.prefix)
            self._set_state(WorkerState.FAILED)
        finally:
            await self._kill()

    async def _run_once(self, proc: asyncio.subprocess.Process) -> bool:
        assert proc.stdin is not None and proc.stdout is not None
        writer = asyncio.create_task(self._write(proc.stdin))
        try:
            clean = await self._read(proc.stdout)
        finally:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await writer
            with contextlib.suppress(ProcessLookupError):
                if proc.returncode is None and not clean:
                    proc.kill()
            await proc.wait()
        return clean

    async def _write(self, stdin: asyncio.StreamWriter) -> None:
        try:
            start = spec_to_json(self.spec)
            if self.restarts and self._delivered:
                start["resume_ms"] = min(self._delivered.values())
            stdin.write(encode_json(FrameType.START, start))
            for cfg in self._configs.values():
                stdin.write(cfg)
            if self.restarts:
                # Without their arrival times: the replay is not lag to catch up on.
                stdin.writelines(encode_packet(decode_packet(i[5:])[0]) for i in self._gop)
            while True:
                item = await self._queue.get()
                if item is None:
                    stdin.write(encode_json(FrameType.END, {}))
                    await stdin.drain()
                    return
                if self._need_keyframe:
                    # After a restart the new decoder can only start on a keyframe.
                    if item[5] == 0 and not (item[6] & 0x03):
                        continue
                    if item[5] == 0 and item[6] & 0x01:
                        self._need_keyframe = False
                self._keep(item)
                stdin.write(item)
                await stdin.drain()
        except (ConnectionResetError, BrokenPipeError):
            return

    def _keep(self, item: bytes) -> None:
        """Remember ``item`` (an encoded packet frame) as part of the current GOP."""
        if item[5] == 0 and item[6] & 0x02:
            return  # a sequence header: kept in _configs
        if item[5] == 0 and item[6] & 0x01:
            self._gop.clear()
            self._gop_bytes = 0
        elif not self._gop:
            return  # no keyframe seen yet: a replay could not start from here
        self._gop.append(item)
        self._gop_bytes += len(item)
        if self._gop_bytes > MAX_GOP_BYTES:
            # A source with very long GOPs: a restart waits for a keyframe instead.
            self._gop.clear()
            self._gop_bytes = 0

    def _delivered_to(self, rendition: str, end_s: float) -> None:
        end = int(end_s * 1000)
        if end > self._delivered.get(rendition, -1):
            self._delivered[rendition] = end

    async def _read(self, stdout: asyncio.StreamReader) -> bool:
        reader = FrameReader()
        while True:
            chunk = await stdout.read(1 << 16)
            if not chunk:
                return False
            try:
                frames = reader.feed(chunk)
            except FramingError as exc:
                log.error("%s corrupt output from worker: %s", self.prefix, exc)
                return False
            for ftype, payload in frames:
                if ftype is FrameType.SEGMENT:
                    segment = decode_segment(payload)
                    self._delivered_to(segment.rendition, segment.start + segment.duration)
                    self.sink.on_segment(segment)
                elif ftype is FrameType.RENDITIONS:
                    info = json.loads(payload)
                    if info.get("timeline_origin_ms") is not None:
                        # A restarted worker continues this run's fMP4 timeline.
                        origin = int(info["timeline_origin_ms"])
                        self.spec = replace(self.spec, timeline_origin_ms=origin)
                    self.sink.on_renditions(info)
                elif ftype is FrameType.STATS:
                    self.sink.on_stats(json.loads(payload))
                elif ftype is FrameType.FATAL:
                    self.fatal = str(json.loads(payload).get("error"))
                elif ftype is FrameType.DONE:
                    return True
                elif ftype in _OPTIONAL:
                    # Frames a sink may not want (parts, fMP4 for the recorder, WebRTC
                    # packets): a sink without the method ignores them.
                    method, parse = _OPTIONAL[ftype]
                    handler = getattr(self.sink, method, None)
                    if handler is not None or ftype is FrameType.PART:
                        args = parse(payload)
                        if ftype is FrameType.PART:
                            part = args[0]
                            self._delivered_to(part.rendition, part.start + part.duration)
                        if handler is not None:
                            handler(*args)

    async def _kill(self) -> None:
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(proc.wait(), 5)


#: Variables a worker keeps from the node's environment: how to find Python, its
#: packages and libraries, locale and time zone, and thread settings of the numeric
#: libraries. Everything else, tokens and other secrets above all, stays behind.
_WORKER_ENV = frozenset(
    ("PATH", "HOME", "LANG", "TZ", "TMPDIR", "LD_LIBRARY_PATH", "VIRTUAL_ENV", "SYSTEMROOT")
)
_WORKER_ENV_PREFIXES = ("LC_", "PYTHON", "OPENBLAS_", "OMP_", "MKL_", "CUDA_", "NVIDIA_")


#: Added to every worker's environment: how the node logs (node.log_format), which
#: nearcast.logs sets, so that the workers' lines match the node's on their shared stderr.
WORKER_LOG_ENV: dict[str, str] = {}


def worker_environment(parent: Mapping[str, str]) -> dict[str, str]:
    """The environment a worker starts with: the node's, less what it has no use for."""
    env = {
        k: v
        for k, v in parent.items()
        if k in _WORKER_ENV or k.startswith(_WORKER_ENV_PREFIXES) or k == "NEARCAST_WORKER_LOG"
    }
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env
