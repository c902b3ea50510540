"""Hostile clients, and what they cost a node that is serving a class meanwhile.

Shared by ``bench.hostile`` (one table of costs), ``bench.soak`` (the attacks repeated
under load) and ``tests/hostile`` (each attack asserted). An attack is a function of the
node under attack that returns what the attacker saw (:class:`Outcome`: how many
connections ended which way, or which refusal codes came back). :class:`Stage` runs a
node with a class published and read; :meth:`Stage.attack` measures one attack:

* the class keeps going: its media playlist lists new segments, with consecutive media
  sequence numbers, no ``EXT-X-GAP`` and no discontinuity, and every new segment loads;
* ``/healthz``, probed every 50 ms from a thread, answers quickly (its latency is how
  long the node's event loop was stalled for everyone else);
* the node's RSS growth;
* the counters on ``/metrics`` that moved (refusals are counted there).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import socket
import statistics
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

import tokens
from ingest.rtmp import amf0
from ingest.rtmp.chunk import ChunkReader, ChunkWriter, Message
from ingest.rtmp.handshake import HandshakePacket
from nearcast.launch import NodeSubprocess
from nearcast.publish import publish

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = str(ROOT / "samples" / "small-360p.mp4")
LADDER = "[{name: 180p, width: 320, height: 180, video_bitrate: 250000}]"
CLASS = "live/class"
RENDITION = "180p"
# The playback key of the tenant ``live`` when a stage guards playback (tests only).
PLAY_KEY_ID, PLAY_SECRET = "k1", "hostile-playback-secret-0123"
PLAYBACK_GUARD = f"{{live: {{keys: {{{PLAY_KEY_ID}: {PLAY_SECRET}}}}}}}"
C1 = bytes(HandshakePacket(0, 0, bytes(1528)))
HANDSHAKE = b"\x03" + C1 + C1
S0S1S2 = 1 + 2 * 1536

Outcome = Counter[str]
Attack = Callable[[NodeSubprocess], Outcome]

# -- RTMP --------------------------------------------------------------------------------


# The address attacks connect from: 127.0.0.1 by default. A soak attacks from another
# loopback address (127.0.0.0/8 is all loopback), as a real attacker's address differs
# from the teacher's, whose per-address limits the attacks must not use up.
SOURCE_ADDRESS = ""


def connect(port: int, timeout: float) -> socket.socket:
    """A TCP connection to the node's ``port`` on loopback, from :data:`SOURCE_ADDRESS`."""
    source = (SOURCE_ADDRESS, 0) if SOURCE_ADDRESS else None
    return socket.create_connection(("127.0.0.1", port), timeout=timeout, source_address=source)


def connected() -> tuple[bytes, ChunkWriter]:
    """Handshake and connect, as every client sends them."""
    writer = ChunkWriter()
    connect = amf0.encode("connect", 1.0, {"app": "live", "tcUrl": "rtmp://h/live"})
    return HANDSHAKE + writer.write(Message(3, 0, 20, 0, connect)), writer


def send(port: int, data: bytes, seconds: float = 5.0) -> str:
    """Send ``data`` and read until the node ends the connection: ``closed`` (FIN),
    ``reset`` (RST) or ``open`` (still open after ``seconds``)."""
    with connect(port, seconds) as s:
        try:
            s.sendall(data)
        except TimeoutError:
            return "open"
        except OSError:
            return "reset"
        return _ended(s, seconds)


def amf_connect_16mib(node: NodeSubprocess) -> Outcome:
    """A command announcing 16 MiB right after the handshake: a 2 M-element strict
    array of nulls follows."""
    header = b"\x03\x00\x00\x00" + (16 * 1024 * 1024 - 1).to_bytes(3, "big") + b"\x14" + bytes(4)
    body = amf0.encode("connect", 1.0) + b"\x0a" + (2_000_000).to_bytes(4, "big")
    chunks = [body[:128]] + [b"\xc3" + b"\x05" * 128 for _ in range(8192)]
    return Counter([send(node.rtmp_port, HANDSHAKE + header + b"".join(chunks))])


def one_byte_chunks(node: NodeSubprocess) -> Outcome:
    """Set Chunk Size 1: 12 bytes of header per byte of payload, if the node took it."""
    hello, writer = connected()
    return Counter([send(node.rtmp_port, hello + writer.write(Message(2, 0, 1, 0, b"\0\0\0\1")))])


def null_commands(node: NodeSubprocess) -> Outcome:
    """64 KiB commands of AMF nulls back to back: the dearest bytes to decode."""
    hello, writer = connected()
    costly = writer.write(Message(3, 0, 20, 0, amf0.encode("_checkbw", 0.0) + b"\x05" * 65_000))
    return Counter([send(node.rtmp_port, hello + costly * 200, seconds=10)])


def never_read(node: NodeSubprocess, count: int = 500, hold: float = 12.0) -> Outcome:
    """``count`` connections that ask for replies (pings) and never read them, held for
    ``hold`` seconds (past rtmp.write_timeout, 10 s, the node drops those it took)."""
    hello, writer = connected()
    ping = writer.write(Message(2, 0, 4, 0, bytes.fromhex("0006 0000002a"))) * 4096
    socks: list[socket.socket] = []
    seen: Outcome = Counter()
    try:
        for _ in range(count):
            try:
                s = connect(node.rtmp_port, 2)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                s.setblocking(False)
                s.send(hello + ping)
                socks.append(s)
            except OSError:
                seen["reset"] += 1
        time.sleep(hold)
        for s in socks:
            seen[_ended(s)] += 1
    finally:
        for s in socks:
            s.close()
    return seen


def _ended(s: socket.socket, quiet: float = 0.2) -> str:
    """How a socket we never read from stands: ``closed``, ``reset`` or ``open`` (nothing
    more for ``quiet`` seconds). What the node queued before closing is read first: its
    FIN comes after it."""
    s.settimeout(quiet)
    try:
        while s.recv(65536):
            pass
    except TimeoutError:
        return "open"
    except OSError:
        return "reset"
    return "closed"


async def _publish_status(
    port: int,
    name: str,
    *,
    app: str = "live",
    hold: asyncio.Event | None = None,
    answered: Counter[str] | None = None,
) -> str:
    """Connect, createStream and publish ``name`` pipelined, as one round trip; the
    onStatus code the node answers (``reset``/``closed`` when it just hangs up).
    With ``hold``, keep the connection open until it is set, counting the answer in
    ``answered`` meanwhile."""
    writer = ChunkWriter()
    commands = [
        Message(3, 0, 20, 0, amf0.encode("connect", 1.0, {"app": app, "tcUrl": f"rtmp://h/{app}"})),
        Message(3, 0, 20, 0, amf0.encode("createStream", 2.0, None)),
        Message(4, 0, 20, 1, amf0.encode("publish", 3.0, None, name, "live")),
    ]
    try:
        reader, w = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return "reset"
    try:
        w.write(HANDSHAKE + b"".join(writer.write(m) for m in commands))
        await reader.readexactly(S0S1S2)
        chunks = ChunkReader()
        code = ""
        while not code:
            data = await reader.read(65536)
            if not data:
                return "closed"
            for msg in chunks.feed(data):
                if msg.type_id != 20:
                    continue
                values = amf0.decode(msg.payload)
                if values[0] in ("onStatus", "_error") and isinstance(values[-1], dict):
                    code = str(values[-1].get("code", values[0]))
        if hold is not None:
            if answered is not None:
                answered[code] += 1
            await hold.wait()
        return code
    except (OSError, asyncio.IncompleteReadError):
        return "reset"
    finally:
        w.close()
        with contextlib.suppress(OSError):
            await w.wait_closed()


def publish_status(node: NodeSubprocess, name: str, timeout: float = 10.0) -> str:
    """The onStatus code one publish of ``name`` gets (RTMP, tenant ``live``)."""

    async def one() -> str:
        return await asyncio.wait_for(_publish_status(node.rtmp_port, name), timeout)

    return asyncio.run(one())


def random_publishes(node: NodeSubprocess, count: int = 200, timeout: float = 15.0) -> Outcome:
    """``count`` publishes to random names at once, all held open until each has its
    answer: the node takes only as many as its connection and publisher caps allow."""

    async def many() -> Outcome:
        hold = asyncio.Event()
        held: Counter[str] = Counter()
        tasks = [
            asyncio.create_task(
                _publish_status(
                    node.rtmp_port, f"x{uuid.uuid4().hex[:12]}", hold=hold, answered=held
                )
            )
            for _ in range(count)
        ]
        try:
            # Until every attempt has its answer: refused ones end, accepted ones are held.
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                await asyncio.sleep(0.1)
                if sum(t.done() for t in tasks) + held.total() >= count:
                    break
        finally:
            hold.set()
        results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), timeout)
        return Counter(r if isinstance(r, str) else type(r).__name__ for r in results)

    return asyncio.run(many())


XSS_NAME = "<img src=x onerror=alert(1)>"
BAD_NAMES = (XSS_NAME, "..", ".")


def bad_names(node: NodeSubprocess) -> Outcome:
    """Publishes to names that would be markup or path traversal in a page or a URL."""
    return Counter(publish_status(node, name) for name in BAD_NAMES)


# -- playback tokens -----------------------------------------------------------------------


def play_token(stream: str = "class", ttl: float = 3600.0) -> str:
    return tokens.sign(PLAY_SECRET, PLAY_KEY_ID, "play", "live", stream, int(time.time() + ttl))


def _flip_mac_byte(token: str) -> str:
    body, mac = token.split(".")
    raw = bytearray(base64.urlsafe_b64decode(mac + "=" * (-len(mac) % 4)))
    raw[0] ^= 0x01
    return f"{body}.{base64.urlsafe_b64encode(bytes(raw)).rstrip(b'=').decode()}"


def _malleate_last(token: str) -> str:
    """The same bytes spelled differently: the unused low bits of the last character."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet.index(token[-1])
    return token[:-1] + alphabet[last ^ 0x01]


def tampered_tokens() -> dict[str, str]:
    """Spellings of a valid play token that must all be refused."""
    good = play_token()
    mid = len(good) // 2
    return {
        "bang": good[:mid] + "!!" + good[mid:],
        "padding": good + "====",
        "mac_flip": _flip_mac_byte(good),
        "malleated": _malleate_last(good),
    }


def tampered_playback(node: NodeSubprocess) -> Outcome:
    """Each tampered token on the class's playlist; the HTTP status of each."""
    seen: Outcome = Counter()
    with httpx.Client(base_url=node.http, timeout=5) as c:
        for tok in tampered_tokens().values():
            seen[str(c.get(f"/{CLASS}/index.m3u8", params={"token": tok}).status_code)] += 1
            seen[str(c.get(f"/{CLASS}/{RENDITION}/index.m3u8?token={tok}").status_code)] += 1
    return seen


RTMP_ATTACKS: dict[str, Attack] = {
    "16 MiB AMF0 connect": amf_connect_16mib,
    "Set Chunk Size 1": one_byte_chunks,
    "64 KiB AMF null commands x200": null_commands,
    "500 connections that never read": never_read,
}

# -- measurements --------------------------------------------------------------------------


class Probe:
    """``/healthz`` every 50 ms in a thread; latencies in ms (5000 for a failure)."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(base_url=self.base, timeout=5) as c:
            while not self._stop.is_set():
                t0 = time.perf_counter()
                try:
                    c.get("/healthz").raise_for_status()
                    self.samples.append((time.perf_counter() - t0) * 1000)
                except httpx.HTTPError:
                    self.samples.append(5000.0)
                self._stop.wait(0.05)

    def __enter__(self) -> Probe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def p99(self) -> float:
        if len(self.samples) < 2:
            return self.samples[0] if self.samples else 0.0
        return statistics.quantiles(self.samples, n=100, method="inclusive")[98]


def rss_mb(pid: int) -> float:
    """VmRSS of ``pid`` in MiB (0 when it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (transcode workers and their helpers)."""
    out: list[int] = []
    todo = [pid]
    while todo:
        p = todo.pop()
        for task in Path(f"/proc/{p}/task").glob("*"):
            with contextlib.suppress(OSError):
                kids = [int(x) for x in (task / "children").read_text().split()]
                out += kids
                todo += kids
    return out


def open_fds(pids: list[int]) -> int:
    n = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            n += sum(1 for _ in Path(f"/proc/{pid}/fd").iterdir())
    return n


def socket_inodes(pid: int, local_port: int) -> set[str]:
    """Inodes of ``pid``'s established TCP connections on ``local_port`` (those it
    accepted there and both ends still hold), from ``/proc/<pid>/net/tcp`` and ``tcp6``."""
    out: set[str] = set()
    port = f":{local_port:04X}"
    for name in ("tcp", "tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/net/{name}").read_text().splitlines()[1:]:
                fields = line.split()
                if len(fields) > 9 and fields[1].endswith(port) and fields[3] == "01":
                    out.add(fields[9])
    return out


def fds_besides(pid: int, inodes: set[str]) -> int:
    """Open descriptors of ``pid`` other than the sockets in ``inodes``."""
    n = 0
    with contextlib.suppress(OSError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                target = str(fd.readlink())
                if not (target.startswith("socket:[") and target[8:-1] in inodes):
                    n += 1
    return n


def counters(base: str) -> dict[str, float]:
    """Every counter sample on ``/metrics``, keyed ``name{label=value,...}``."""
    text = httpx.get(f"{base}/metrics", timeout=5).text
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.type != "counter":
            continue
        for s in family.samples:
            if s.name.endswith("_total"):
                labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
                out[f"{s.name}{{{labels}}}"] = s.value
    return out


def moved(before: dict[str, float], after: dict[str, float]) -> dict[str, int]:
    return {k: int(v - before.get(k, 0)) for k, v in after.items() if v > before.get(k, 0)}


@dataclass
class Playlist:
    """One reading of a media playlist."""

    sequence: int
    durations: list[float]
    uris: list[str]
    gap: bool
    discontinuity: bool

    @classmethod
    def parse(cls, text: str) -> Playlist:
        seq, durations, uris, gap, disc = 0, [], [], False, False
        for line in text.splitlines():
            if line.startswith("#EXT-X-MEDIA-SEQUENCE:"):
                seq = int(line.split(":", 1)[1])
            elif line.startswith("#EXTINF:"):
                durations.append(float(line[8:].split(",")[0]))
            elif line.startswith("#EXT-X-GAP"):
                gap = True
            elif line.startswith("#EXT-X-DISCONTINUITY") and "SEQUENCE" not in line:
                disc = True
            elif line and not line.startswith("#"):
                uris.append(line)
        return cls(seq, durations, uris, gap, disc)


@dataclass
class Watch:
    """What the class's reader saw over a window."""

    segments: int = 0  # new segments listed (and loaded)
    seconds: float = 0.0  # their total duration
    problems: list[str] = field(default_factory=list)


class Reader:
    """Reads the class like a player, in a thread: its media playlist every 0.5 s and
    each new segment. Between :meth:`mark` and :meth:`since` it notes any gap."""

    def __init__(
        self, base: str, path: str, token: str | None = None, *, discontinuity_ok: bool = False
    ) -> None:
        self.params = {"token": token} if token else {}
        self.discontinuity_ok = discontinuity_ok
        self.url = f"{base}/{path}"
        self.lock = threading.Lock()
        self.last = -1  # media sequence number of the newest segment read
        self.watch = Watch()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.ident is not None:
            self._thread.join(10)

    def mark(self) -> None:
        with self.lock:
            self.watch = Watch()

    def since(self) -> Watch:
        with self.lock:
            return self.watch

    def _run(self) -> None:
        with httpx.Client(timeout=5) as c:
            while not self._stop.is_set():
                try:
                    self._poll(c)
                except (httpx.HTTPError, ValueError) as exc:
                    with self.lock:
                        self.watch.problems.append(f"playlist: {exc!r}")
                self._stop.wait(0.5)

    def _poll(self, c: httpx.Client) -> None:
        r = c.get(f"{self.url}/index.m3u8", params=self.params)
        if r.status_code != 200:
            raise ValueError(f"playlist answered {r.status_code}")
        pl = Playlist.parse(r.text)
        if pl.gap:
            with self.lock:
                self.watch.problems.append("EXT-X-GAP listed")
        for i, (uri, duration) in enumerate(zip(pl.uris, pl.durations, strict=False)):
            seq = pl.sequence + i
            if seq <= self.last:
                continue
            problem = None
            if self.last >= 0 and seq != self.last + 1:
                problem = f"segments {self.last + 1}..{seq - 1} never listed"
            if pl.discontinuity and self.last >= 0 and not self.discontinuity_ok:
                problem = problem or f"discontinuity before segment {seq}"
            # A guarded playlist carries the token in its URIs (httpx would replace that
            # query with any params given, even empty ones).
            seg = (
                c.get(f"{self.url}/{uri}")
                if "token=" in uri
                else c.get(f"{self.url}/{uri}", params=self.params)
            )
            if seg.status_code != 200 or not seg.content:
                problem = problem or f"segment {seq} answered {seg.status_code}"
            with self.lock:
                if problem:
                    self.watch.problems.append(problem)
                self.watch.segments += 1
                self.watch.seconds += duration
            self.last = seq


@dataclass
class Result:
    """One attack's cost, and what the attacker saw."""

    attack: str
    outcome: dict[str, int]
    healthz_p99_ms: float
    healthz_max_ms: float
    rss_growth_mb: float
    fd_growth: int  # the node's own open descriptors (sockets included), after - before
    segments: int
    listed_seconds: float
    window_seconds: float
    gaps: list[str]
    counted: dict[str, int]

    def refused(self, metric: str = "ingest_rejected_total") -> dict[str, int]:
        """``counted`` for one metric, by its ``reason`` label."""
        out: dict[str, int] = {}
        for key, n in self.counted.items():
            name, _, labels = key.partition("{")
            if name == metric:
                reason = dict(kv.split("=", 1) for kv in labels.rstrip("}").split(",") if kv)
                out[reason.get("reason", "")] = out.get(reason.get("reason", ""), 0) + n
        return out

    def problems(
        self, *, p99_ms: float = 200.0, max_ms: float = 500.0, rss_mb: float = 100.0
    ) -> list[str]:
        """Every way the node failed the class during the attack (empty: it held)."""
        out = list(self.gaps)
        # The media listed after the window opened, up to 2.5 s after it closed, covers
        # the window but for the segment (2 s) being written when it opened.
        if self.listed_seconds < self.window_seconds - 2.0:
            out.append(
                f"class listed {self.listed_seconds:.1f} s of media over a "
                f"{self.window_seconds:.1f} s window"
            )
        if self.healthz_p99_ms >= p99_ms:
            out.append(f"/healthz p99 {self.healthz_p99_ms:.0f} ms")
        if self.healthz_max_ms >= max_ms:
            out.append(f"/healthz max {self.healthz_max_ms:.0f} ms")
        if self.rss_growth_mb >= rss_mb:
            out.append(f"RSS grew {self.rss_growth_mb:.0f} MB")
        return out


class Stage:
    """A shipped ``nearcast node`` with a class published (the sample, looped) and read.

    ``env`` adds ``NEARCAST_*`` overrides; ``guard_playback`` makes tenant ``live``
    require playback tokens (the reader then presents a valid one).
    """

    def __init__(
        self,
        log_dir: Path,
        env: dict[str, str] | None = None,
        *,
        guard_playback: bool = False,
        margin: float = 2.0,
    ) -> None:
        # Seconds measured before and after each attack (see ``window``).
        self.margin = margin
        full = {
            "NEARCAST_TRANSCODE_LADDER": LADDER,
            "NEARCAST_TRANSCODE_CAPACITY_UNITS": "4",
            "NEARCAST_NODE_LOG_LEVEL": "WARNING",
            **({"NEARCAST_PLAYBACK_TENANTS": PLAYBACK_GUARD} if guard_playback else {}),
            **(env or {}),
        }
        self.node = NodeSubprocess(log_dir / "node.log", full)
        self.stop_event = threading.Event()
        self.publish_error: BaseException | None = None
        self.teacher = threading.Thread(target=self._teach, daemon=True)
        self.reader = Reader(
            self.node.http, f"{CLASS}/{RENDITION}", play_token() if guard_playback else None
        )

    def _teach(self) -> None:
        try:
            publish(SAMPLE, self.node.rtmp(CLASS), loop=True, stop=self.stop_event)
        except BaseException as exc:
            self.publish_error = exc

    def start(self, timeout: float = 90.0) -> Stage:
        self.teacher.start()
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=5) as c:
            while time.monotonic() < deadline:
                with contextlib.suppress(httpx.HTTPError):
                    r = c.get(
                        f"{self.node.http}/{CLASS}/{RENDITION}/index.m3u8",
                        params=self.reader.params,
                    )
                    if r.status_code == 200 and r.text.count("#EXTINF") >= 2:
                        break
                if self.publish_error is not None or self.node.proc.poll() is not None:
                    break
                time.sleep(0.2)
            else:
                self.stop()
                raise RuntimeError(f"the class never played; node log: {self.node.log()}")
        if self.publish_error is not None or self.node.proc.poll() is not None:
            self.stop()
            raise RuntimeError(f"the class did not start ({self.publish_error}): {self.node.log()}")
        self.reader.start()
        return self

    def stop(self) -> None:
        self.stop_event.set()
        self.teacher.join(15)
        self.reader.stop()
        self.node.stop()

    def __enter__(self) -> Stage:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @contextlib.contextmanager
    def window(self, name: str) -> Iterator[dict[str, Any]]:
        """Measure what happens inside the block, with ``self.margin`` seconds either side.

        Yields a dict; the block's outcome goes in ``box["outcome"]``, and after the block
        ``box["result"]`` holds the :class:`Result`."""
        box: dict[str, Any] = {"outcome": Counter()}
        pid = self.node.proc.pid
        before_rss, before_fds = rss_mb(pid), open_fds([pid])
        before = counters(self.node.http)
        self.reader.mark()
        t0 = time.monotonic()
        with Probe(self.node.http) as probe:
            time.sleep(self.margin)  # measured: /healthz before the attack
            yield box
            time.sleep(self.margin)  # and after it
        window = time.monotonic() - t0
        # The segment that was being written when the window closed is listed within
        # one target duration: wait (2.5 s at most) until the media listed since the
        # window opened covers it, as ``Result.problems`` judges it.
        deadline = time.monotonic() + 2.5
        while time.monotonic() < deadline and self.reader.since().seconds < window - 2.0:
            time.sleep(0.1)
        watch = self.reader.since()
        lat = sorted(probe.samples)
        box["result"] = Result(
            attack=name,
            outcome=dict(box["outcome"]),
            healthz_p99_ms=round(probe.p99(), 1),
            healthz_max_ms=round(lat[-1] if lat else 0.0, 1),
            rss_growth_mb=round(rss_mb(pid) - before_rss, 1),
            fd_growth=open_fds([pid]) - before_fds,
            segments=watch.segments,
            listed_seconds=round(watch.seconds, 1),
            window_seconds=round(window, 1),
            gaps=list(watch.problems),
            counted=moved(before, counters(self.node.http)),
        )
        if self.publish_error is not None:
            box["result"].gaps.append(f"the class's publisher failed: {self.publish_error!r}")

    def attack(self, name: str, attack: Attack) -> Result:
        with self.window(name) as box:
            box["outcome"] = attack(self.node)
        result: Result = box["result"]
        return result


# -- HTTP ----------------------------------------------------------------------------------


def _status_line(data: bytes) -> str:
    """``408`` from ``HTTP/1.1 408 Request Timeout``...; ``?`` when it is not one."""
    parts = data.split(b" ", 2)
    if len(parts) >= 2 and parts[0].startswith(b"HTTP/") and parts[1].isdigit():
        return parts[1].decode()
    return "?"


def slowloris(node: NodeSubprocess, count: int = 300, seconds: float = 15.0) -> Outcome:
    """``count`` requests whose headers never end: one more header line a second per
    connection, for ``seconds``. Each ends as the status the node answered (``408``),
    ``closed``/``reset`` without one, or ``open`` when it outlived ``seconds``."""
    socks: dict[socket.socket, str] = {}
    seen: Outcome = Counter()
    try:
        for _ in range(count):
            try:
                s = connect(node.http_port, 2)
                s.sendall(b"GET /healthz HTTP/1.1\r\nHost: nearcast\r\n")
                s.setblocking(False)
                socks[s] = ""
            except OSError:
                seen["reset"] += 1
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and any(not v for v in socks.values()):
            time.sleep(1.0)
            for s, state in socks.items():
                if state:
                    continue
                try:
                    data = s.recv(4096)
                    socks[s] = _status_line(data) if data else "closed"
                except BlockingIOError:
                    try:
                        s.send(b"X-Slow: 1\r\n")
                    except OSError:
                        socks[s] = "reset"
                except OSError:
                    socks[s] = "reset"
        seen.update(v or "open" for v in socks.values())
    finally:
        for s in socks:
            s.close()
    return seen


def many_headers(node: NodeSubprocess, count: int = 20_000) -> Outcome:
    """One request with ``count`` header lines; the status it gets."""
    head = b"GET /healthz HTTP/1.1\r\nHost: nearcast\r\n"
    head += b"".join(b"X-H%d: v\r\n" % i for i in range(count)) + b"\r\n"
    with connect(node.http_port, 10) as s:
        try:
            s.sendall(head)
            return Counter([_status_line(s.recv(4096))])
        except OSError:
            return Counter(["reset"])


def big_sdp(node: NodeSubprocess, size: int = 100 * 1024 * 1024, seconds: float = 5.0) -> Outcome:
    """A 100 MB "SDP offer" POSTed to WHIP, sent as fast as the node reads it. The status
    the node answers, and ``answered_under_16mb`` when it answered (or closed) before the
    kernel took 16 MiB of it: it refused from the headers instead of reading the body.
    (What was sent is not what the node read: loopback socket buffers take several MB
    before the node's answer gets back, more so on a busy machine.)"""
    head = (
        f"POST /live/sdpbomb/whip HTTP/1.1\r\nHost: nearcast\r\n"
        f"Content-Type: application/sdp\r\nContent-Length: {size}\r\n\r\n"
    ).encode()
    chunk = b"a=x-bomb:" + b"0" * 65_000 + b"\r\n"
    seen: Outcome = Counter()
    sent = 0
    with connect(node.http_port, seconds) as s:
        s.sendall(head)
        s.setblocking(False)
        deadline = time.monotonic() + seconds
        answer = b""
        while time.monotonic() < deadline and sent < size:
            try:
                answer = s.recv(4096)
                break
            except BlockingIOError:
                pass
            except OSError:
                break
            try:
                sent += s.send(chunk)
            except BlockingIOError:
                time.sleep(0.01)
            except OSError:
                break
        seen[_status_line(answer) if answer else "closed"] += 1
    if sent < 16 * 1024 * 1024:
        seen["answered_under_16mb"] += 1
    return seen
