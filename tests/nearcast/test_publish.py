"""``nearcast publish`` against FFmpeg's own RTMP server (``listen=1``) as the receiver.

FFmpeg stands in for the node's RTMP server here so this module only tests the publisher:
a real RTMP client talking to a real RTMP server.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import pytest

from nearcast.publish import PublishError, PublishStats, publish, redact, register

SMALL = str(Path(__file__).resolve().parents[2] / "samples" / "small-360p.mp4")
SMALL_SECONDS = 6.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Received:
    """Packets the sink demuxed, as (kind, dts seconds, keyframe) per stream kind."""

    packets: list[tuple[str, Fraction, bool]] = field(default_factory=list)
    codecs: dict[str, str] = field(default_factory=dict)
    error: BaseException | None = None
    listening: threading.Event = field(default_factory=threading.Event)

    def dts(self, kind: str) -> list[Fraction]:
        return [dts for k, dts, _ in self.packets if k == kind]


def _sink(url: str, received: Received) -> None:
    try:
        received.listening.set()
        # FFmpeg's own listen timeout (seconds), not PyAV's `timeout=`: PyAV's interrupt
        # callback needs the GIL, and a publisher in this process holds it while connecting.
        options = {"listen": "1", "timeout": "10"}
        with av.open(url, "r", format="flv", options=options) as container:
            for stream in container.streams:
                received.codecs[stream.type] = stream.codec_context.name
            for packet in container.demux():
                if packet.dts is None or packet.size == 0:
                    continue
                received.packets.append(
                    (packet.stream.type, packet.dts * packet.time_base, packet.is_keyframe)
                )
    except av.error.EOFError:
        pass
    except av.error.OSError as exc:
        # FFmpeg's RTMP server reports the publisher hanging up as EIO rather than EOF.
        if exc.errno != errno.EIO:
            received.error = exc
    except BaseException as exc:  # reported by the test thread
        received.error = exc


@contextlib.contextmanager
def rtmp_sink() -> Iterator[tuple[str, Received]]:
    """An FFmpeg RTMP server on a free port that accepts one publisher and records packets."""
    url = f"rtmp://127.0.0.1:{free_port()}/live/x"
    received = Received()
    thread = threading.Thread(target=_sink, args=(url, received), daemon=True)
    thread.start()
    assert received.listening.wait(5)
    yield url, received
    thread.join(timeout=15)
    assert not thread.is_alive(), "RTMP sink did not finish"
    if received.error is not None:
        raise received.error


def wait_listening(port: int, timeout: float = 5.0) -> None:
    """Wait until something listens on ``port`` without connecting to it: FFmpeg's
    listen mode accepts exactly one connection, so a probe would use it up."""
    table = Path("/proc/net/tcp")
    if not table.exists():
        threading.Event().wait(0.5)
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in table.read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            if state == "0A" and int(local.split(":")[1], 16) == port:  # 0A = LISTEN
                return
        threading.Event().wait(0.02)
    raise AssertionError(f"nothing listens on port {port}")


def publish_when_listening(url: str, **kwargs: object) -> PublishStats:
    """Publish once the sink listens; retry a refused connect in case the check above is
    not available."""
    wait_listening(int(url.split(":")[2].split("/")[0]))
    for _ in range(20):
        try:
            return publish(SMALL, url, **kwargs)  # type: ignore[arg-type]
        except PublishError as exc:
            if "Connection refused" not in str(exc):
                raise
            threading.Event().wait(0.1)
    raise AssertionError(f"RTMP sink at {url} never accepted a connection")


def test_publish_remuxes_h264_and_aac() -> None:
    with rtmp_sink() as (url, received):
        stats = publish_when_listening(url, realtime=False, duration=3.0)

    assert received.codecs == {"video": "h264", "audio": "aac"}
    video = received.dts("video")
    audio = received.dts("audio")
    assert len(video) >= 80  # ~3 s at 30 fps
    assert len(audio) >= 120  # ~3 s of 1024-sample AAC frames at 48 kHz
    assert received.packets[0][2] or received.packets[0][0] == "audio"
    assert min(video + audio) >= 0
    assert max(video + audio) < 3.0
    assert stats.packets == len(received.packets)
    assert stats.loops == 1
    assert 2.9 <= stats.media_seconds <= 3.1
    assert stats.bytes > 0


def test_loop_keeps_timestamps_monotonic() -> None:
    with rtmp_sink() as (url, received):
        stats = publish_when_listening(url, loop=True, realtime=False, duration=8.0)

    assert stats.loops == 2
    assert 7.9 <= stats.media_seconds <= 8.1
    for kind in ("video", "audio"):
        dts = received.dts(kind)
        assert all(a < b for a, b in zip(dts, dts[1:], strict=False)), kind
        assert dts[-1] > SMALL_SECONDS + 1  # it really went past the loop boundary
        # No hole at the boundary: the loop period is the longer track rounded up to whole
        # video frames, so either track skips at most one video frame (plus FLV's 1 ms).
        steps = [b - a for a, b in zip(dts, dts[1:], strict=False)]
        assert max(steps) <= Fraction(2, 30) + Fraction(2, 1000), kind
    video_keys = [dts for kind, dts, key in received.packets if kind == "video" and key]
    assert any(abs(dts - SMALL_SECONDS) < 0.1 for dts in video_keys)


def test_realtime_paces_and_stop_ends_early() -> None:
    stop = threading.Event()
    with rtmp_sink() as (url, received):
        timer = threading.Timer(3.0, stop.set)
        started = time.monotonic()
        timer.start()
        try:
            stats = publish_when_listening(url, loop=True, stop=stop)
        finally:
            timer.cancel()
        elapsed = time.monotonic() - started

    # Real time: no more media than wall time (a burst sends the 6 s file in a fraction of
    # a second, and loops), and the stop ends it early. The connection's set-up, slow on a
    # loaded machine, is wall time without media: hence the lower bound's slack.
    assert 1.0 <= stats.media_seconds <= elapsed + 0.5, (stats, elapsed)
    assert elapsed < 6
    assert received.packets


def test_connection_refused_is_a_clear_error() -> None:
    url = f"rtmp://127.0.0.1:{free_port()}/live/x"
    with pytest.raises(PublishError, match=r"^cannot connect to rtmp://.*: Connection refused"):
        publish(SMALL, url, realtime=False)


def test_missing_source_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(PublishError, match=r"^cannot open .*missing\.mp4"):
        publish(str(tmp_path / "missing.mp4"), "rtmp://127.0.0.1:1/live/x")


def test_cli_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="nearcast")
    register(parser.add_subparsers())
    url = f"rtmp://127.0.0.1:{free_port()}/live/x"
    args = parser.parse_args(["publish", SMALL, url, "--no-realtime", "--duration", "1"])
    assert args.realtime is False and args.duration == 1.0 and args.loop is False
    assert args.func(args) == 1
    err = capsys.readouterr().err
    assert f"cannot connect to {url}: Connection refused" in err


@pytest.mark.parametrize(
    "argv", [["--duration", "0"], ["--duration", "-1"], ["--open-timeout", "x"]]
)
def test_cli_rejects_bad_options(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="nearcast")
    register(parser.add_subparsers())
    with pytest.raises(SystemExit):
        parser.parse_args(["publish", SMALL, "rtmp://h/live/x", *argv])


def test_open_timeout_bounds_a_silent_server() -> None:
    # Accepts TCP (the kernel does, via the backlog) but never answers the RTMP handshake.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        url = f"rtmp://127.0.0.1:{server.getsockname()[1]}/live/x"
        started = time.monotonic()
        with pytest.raises(
            PublishError, match=r"^cannot connect to rtmp://.*: timed out after 1 s"
        ):
            publish(SMALL, url, open_timeout=1.0)
        assert time.monotonic() - started < 8


def test_start_at_carries_a_stream_on_from_that_media_time() -> None:
    # As after a switch to another node: timestamps continue, and pacing starts there
    # (about 1 s of media sent in about 1 s, not after a 5 s wait).
    started = time.monotonic()
    with rtmp_sink() as (url, received):
        stats = publish_when_listening(url, loop=True, duration=6.0, start_at=5.0)
    assert time.monotonic() - started < 5.0
    dts = received.dts("video") + received.dts("audio")
    assert 5.0 <= min(dts) and max(dts) < 6.0
    assert 5.9 <= stats.media_seconds <= 6.1


def test_a_failed_connect_reports_where_the_stream_was() -> None:
    url = f"rtmp://127.0.0.1:{free_port()}/live/x?token=secret-token"
    with pytest.raises(PublishError) as caught:
        publish(SMALL, url, realtime=False, start_at=12.5)
    assert caught.value.stats is not None and caught.value.stats.media_seconds == 12.5
    assert "secret-token" not in str(caught.value) and "token=..." in str(caught.value)


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["rtmp://h/live/x", "--placement", "http://p"], "not both"),
        (["--placement", "http://p"], "--placement needs --token"),
        (["--placement", "http://p", "--token", "op"], "not a publish token"),
        (["--placement", "http://p", "--token", "op", "--stream", "x"], "TENANT/STREAM"),
        ([], "give an RTMP URL"),
    ],
)
def test_cli_placement_options_are_checked(
    argv: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = argparse.ArgumentParser(prog="nearcast")
    register(parser.add_subparsers())
    args = parser.parse_args(["publish", SMALL, *argv])
    assert args.func(args) == 2
    assert says in capsys.readouterr().err


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("rtmp://h/live/x", "rtmp://h/live/x"),
        ("rtmp://h/live/x?session=s1&token=abc.def", "rtmp://h/live/x?session=s1&token=..."),
        ("rtmp://h/live/x?TOKEN=abc", "rtmp://h/live/x?TOKEN=..."),
    ],
)
def test_redact_hides_the_token_only(url: str, shown: str) -> None:
    assert redact(url) == shown
