"""Run a real ``nearcast node`` process and real clients against it, with bounded waits."""

from __future__ import annotations

import contextlib
import datetime
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import httpx
import m3u8
import pytest
from prometheus_client.parser import text_string_to_metric_families

from nearcast.launch import NodeSubprocess
from nearcast.publish import publish

ROOT = Path(__file__).resolve().parents[2]
SMALL = str(ROOT / "samples" / "small-360p.mp4")
LECTURE = str(ROOT / "samples" / "lecture-720p.mp4")
SMALL_LADDER = (
    "[{name: 360p, width: 640, height: 360, video_bitrate: 700000},"
    " {name: 240p, width: 426, height: 240, video_bitrate: 400000},"
    " {name: 180p, width: 320, height: 180, video_bitrate: 250000}]"
)
# The picture size of each rung of SMALL_LADDER.
SMALL_SIZES = {"360p": (640, 360), "240p": (426, 240), "180p": (320, 180)}
T = TypeVar("T")


def self_signed(directory: Path, common_name: str = "localhost") -> tuple[str, str]:
    """A P-256 certificate (for localhost) and its key as PEM files: (cert, key) paths.

    P-256 is the curve every TLS and WebRTC (RFC 8827 §6.5) endpoint must support."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=7))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(cert_path), str(key_path)


def require_binary(name: str) -> str:
    """A missing component fails the test (CI must never skip silently)."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed; `make test` installs it (Debian package {name})")
    return path


def wait_for(probe: Callable[[], T | None], timeout: float, what: str, interval: float = 0.1) -> T:
    """Poll ``probe`` until it returns something truthy, or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = probe()
            if value:
                return value
        except Exception as exc:  # the thing polled may not exist yet
            last_exc = exc
        time.sleep(interval)
    raise AssertionError(
        f"timed out after {timeout:.0f} s waiting for {what} (last error: {last_exc})"
    )


class NodeProcess(NodeSubprocess):
    """``python -m nearcast node`` on free ports, with an HTTP client; a node that does
    not start fails the test."""

    def __init__(self, log_path: Path, **env: str) -> None:
        # A configured capacity, generous for a test's streams: ladders do not depend on
        # how fast the machine is or how busy it is, and no calibration slows the start.
        # Tests of admission and calibration set their own.
        env = {"NEARCAST_TRANSCODE_CAPACITY_UNITS": "8", **env}
        try:
            super().__init__(log_path, env)
        except RuntimeError as exc:
            raise AssertionError(str(exc)) from None
        self.client = httpx.Client(base_url=self.http, timeout=10)

    def get(self, path: str) -> httpx.Response:
        return self.client.get(path)

    def metric(self, name: str, **labels: str) -> float:
        """The sum of the node's ``/metrics`` samples called ``name`` that carry ``labels``
        (0 when there is none)."""
        text = self.get("/metrics").text
        return sum(
            s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        )

    def children(self) -> list[int]:
        pid = self.proc.pid
        out: list[int] = []
        for task in Path(f"/proc/{pid}/task").glob("*"):
            try:
                out += [int(x) for x in (task / "children").read_text().split()]
            except OSError:
                pass
        return out

    def stop(self, timeout: float = 30) -> int:
        rc = super().stop(timeout)
        if hasattr(self, "client"):  # not when the node failed to start
            self.client.close()
        return rc


class Publisher:
    """FFmpeg (bundled in PyAV) pushing a file over RTMP, in a thread; with ``clock`` the
    wall clock is stamped into every frame (``nearcast publish --clock``)."""

    def __init__(
        self,
        source: str,
        url: str,
        *,
        loop: bool = True,
        duration: float | None = None,
        clock: bool = False,
    ):
        self.stop_event = threading.Event()
        self.error: BaseException | None = None
        self.result: Any = None

        def run() -> None:
            try:
                self.result = publish(
                    source, url, loop=loop, duration=duration, stop=self.stop_event, clock=clock
                )
            except BaseException as exc:
                self.error = exc

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def alive(self) -> bool:
        return self.thread.is_alive()

    def wait(self, timeout: float) -> None:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "publisher did not finish in time"

    def stop(self, timeout: float = 15) -> None:
        self.stop_event.set()
        self.thread.join(timeout)


def segment_numbers(playlist: str) -> list[int]:
    """The media sequence numbers of the whole segments a media playlist lists (MPEG-TS
    ``N.ts`` or CMAF ``N.m4s``; LL-HLS parts ``N.P.m4s`` are not segments)."""
    return [
        int(name.split(".")[0])
        for name in (line.split("?")[0] for line in playlist.splitlines())
        if re.fullmatch(r"\d+\.(ts|m4s)", name)
    ]


@contextlib.contextmanager
def publishing_node(
    log_path: Path,
    streams: Sequence[str],
    *,
    rendition: str = "180p",
    segments: int = 2,
    clock: bool = False,
    timeout: float = 90,
    **env: str,
) -> Iterator[NodeProcess]:
    """A node with SMALL published (looped) to each of ``streams`` ("tenant/stream"), once
    each lists ``segments`` segments of ``rendition``; stopped, publishers first, on exit."""
    node = NodeProcess(log_path, **env)
    pubs = [Publisher(SMALL, node.rtmp(s), clock=clock) for s in streams]
    try:
        for s in streams:

            def listed(s: str = s) -> bool:
                r = node.get(f"/{s}/{rendition}/index.m3u8")
                errors = [p.error for p in pubs if p.error is not None]
                assert not errors, errors
                return r.status_code == 200 and r.text.count("#EXTINF") >= segments

            wait_for(listed, timeout, f"{segments} {rendition} segments of {s}")
        yield node
    finally:
        for p in pubs:
            p.stop()
        node.stop()


def segment_bytes(node: NodeProcess, rendition: str, msn: int) -> tuple[bytes, str]:
    """Segment ``msn`` of the media playlist at ``/{rendition}/index.m3u8``, as bytes a
    demuxer opens on their own, and the demuxer's format: an MPEG-TS segment as it is, a
    CMAF segment (``N.m4s``) behind the init segment its playlist maps it to."""
    text = node.get(f"/{rendition}/index.m3u8").text
    playlist = m3u8.loads(text)
    if f"\n{msn}.ts" in text:
        return node.get(f"/{rendition}/{msn}.ts").content, "mpegts"
    init = None
    for segment in playlist.segments:
        if segment.init_section is not None:
            init = segment.init_section.uri
        if segment.uri and segment.uri.split("?")[0] == f"{msn}.m4s":
            break
    assert init is not None, f"no EXT-X-MAP for segment {msn} of {rendition}"
    head = node.get(f"/{rendition}/{init}").content
    return head + node.get(f"/{rendition}/{msn}.m4s").content, "mp4"


def independent_segments(playlist: str) -> list[int]:
    """The segments of a media playlist that start with an IDR. MPEG-TS and plain CMAF
    segments all do; LL-HLS lists the first segment of every worker run as a three-part
    lead and the rest, which starts mid-GOP, so there only the segments whose first part
    says INDEPENDENT=YES count (parts are listed for the newest segments only)."""
    parsed = m3u8.loads(playlist)
    if not parsed.server_control or not parsed.server_control.can_block_reload:
        return segment_numbers(playlist)
    return [
        int(s.uri.split(".")[0])
        for s in parsed.segments
        if s.uri and s.parts and s.parts[0].independent
    ]
