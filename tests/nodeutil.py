"""Run a real ``nearcast node`` process and real clients against it, with bounded waits."""

from __future__ import annotations

import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

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


class NodeProcess:
    """``python -m nearcast node`` on free ports, stopped with SIGTERM."""

    def __init__(self, log_path: Path, **env: str) -> None:
        full = dict(os.environ)
        full.update(
            {
                "NEARCAST_RTMP_LISTEN": "127.0.0.1:0",
                "NEARCAST_HTTP_LISTEN": "127.0.0.1:0",
                "PYTHONUNBUFFERED": "1",
            }
        )
        full.update(env)
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "nearcast", "node"],
            stdout=subprocess.PIPE,
            stderr=self._log,
            env=full,
            cwd=ROOT,
        )
        lines: queue.Queue[str] = queue.Queue()

        def pump() -> None:
            assert self.proc.stdout is not None
            for raw in self.proc.stdout:
                lines.put(raw.decode(errors="replace"))

        threading.Thread(target=pump, daemon=True).start()
        self.rtmp_port = self.http_port = self.rtmps_port = 0
        deadline = time.monotonic() + 30
        while not (self.rtmp_port and self.http_port):
            try:
                line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                self.stop()
                raise AssertionError(f"node did not start: {self.log()}") from None
            if "publish over TLS: rtmps://" in line:
                self.rtmps_port = int(line.split(":")[-1].split("/")[0])
            elif "publish: rtmp://" in line:
                self.rtmp_port = int(line.split(":")[-1].split("/")[0])
            elif "watch:" in line:
                self.http_port = int(line.rstrip("/\n").split(":")[-1])
        self.http = f"http://127.0.0.1:{self.http_port}"
        self.client = httpx.Client(base_url=self.http, timeout=10)

    def rtmp(self, path: str) -> str:
        return f"rtmp://127.0.0.1:{self.rtmp_port}/{path}"

    def get(self, path: str) -> httpx.Response:
        return self.client.get(path)

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")[-4000:]

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
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.client.close()
        self._log.close()
        return self.proc.returncode


class Publisher:
    """FFmpeg (bundled in PyAV) pushing a file over RTMP, in a thread."""

    def __init__(self, source: str, url: str, *, loop: bool = True, duration: float | None = None):
        self.stop_event = threading.Event()
        self.error: BaseException | None = None
        self.result: Any = None

        def run() -> None:
            try:
                self.result = publish(
                    source, url, loop=loop, duration=duration, stop=self.stop_event
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
