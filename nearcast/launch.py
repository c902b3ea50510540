"""Run ``nearcast node`` as a child process on free ports (for tests and benchmarks).

The node binds port 0 for RTMP and HTTP when told to, and prints the URLs it
really listens on (see :mod:`nearcast.cli`); this reads them back, so callers
never guess a free port.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Started from a process's main thread, the node is exec'ed from this stub, which first
# asks the kernel for SIGTERM when its parent dies (PR_SET_PDEATHSIG survives exec):
# a benchmark or test run that dies without stop() leaves no node behind. Not from
# another thread: the signal follows the thread that started the child, not the process.
_WITH_PARENT = """\
import os, signal, sys
from transcode.lifetime import die_with_parent
die_with_parent(signal.SIGTERM, int(sys.argv[1]))
os.execv(sys.executable, [sys.executable, "-m", "nearcast", "node"])
"""


class NodeSubprocess:
    """``python -m nearcast node`` on free loopback ports, stopped with SIGTERM.

    ``env`` adds ``NEARCAST_*`` overrides; stderr (the log) goes to ``log_path``.
    Raises :class:`RuntimeError` when the node has not printed its ports within
    ``start_timeout`` seconds.
    """

    def __init__(
        self, log_path: Path, env: dict[str, str] | None = None, start_timeout: float = 30.0
    ) -> None:
        full = {
            **os.environ,
            "NEARCAST_RTMP_LISTEN": "127.0.0.1:0",
            "NEARCAST_HTTP_LISTEN": "127.0.0.1:0",
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        argv = [sys.executable, "-m", "nearcast", "node"]
        if sys.platform == "linux" and threading.current_thread() is threading.main_thread():
            argv = [sys.executable, "-c", _WITH_PARENT, str(os.getpid())]
        self.proc = subprocess.Popen(
            argv,
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
        deadline = time.monotonic() + start_timeout
        while not (self.rtmp_port and self.http_port):
            try:
                line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                self.stop()
                raise RuntimeError(f"node did not start; log: {self.log()}") from None
            if "publish over TLS: rtmps://" in line:
                self.rtmps_port = int(line.split(":")[-1].split("/")[0])
            elif "publish: rtmp://" in line:
                self.rtmp_port = int(line.split(":")[-1].split("/")[0])
            elif "watch:" in line:
                self.http_port = int(line.rstrip("/\n").split(":")[-1])
        self.http = f"http://127.0.0.1:{self.http_port}"

    def rtmp(self, path: str) -> str:
        return f"rtmp://127.0.0.1:{self.rtmp_port}/{path}"

    def log(self) -> str:
        """The last 4000 characters of the node's log."""
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()
        return self.proc.returncode
