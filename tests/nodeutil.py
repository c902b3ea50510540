"""Run a real ``nearcast node`` process and real clients against it, with bounded waits."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from nearcast.launch import NodeSubprocess
from nearcast.publish import publish

ROOT = Path(__file__).resolve().parent.parent
SMALL = str(ROOT / "samples" / "small-360p.mp4")
LECTURE = str(ROOT / "samples" / "lecture-720p.mp4")
SMALL_LADDER = (
    "[{name: 360p, width: 640, height: 360, video_bitrate: 700000},"
    " {name: 240p, width: 426, height: 240, video_bitrate: 400000},"
    " {name: 180p, width: 320, height: 180, video_bitrate: 250000}]"
)
T = TypeVar("T")


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
        try:
            super().__init__(log_path, env)
        except RuntimeError as exc:
            raise AssertionError(str(exc)) from None
        self.client = httpx.Client(base_url=self.http, timeout=10)

    def get(self, path: str) -> httpx.Response:
        return self.client.get(path)

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
    return [int(line[:-3]) for line in playlist.splitlines() if line.endswith(".ts")]
