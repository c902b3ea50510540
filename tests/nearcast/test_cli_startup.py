"""What a ``nearcast`` command pays before its first frame: the imports of its own
command only, and one OpenBLAS thread, not one per core (nearcast does no linear
algebra). Each check runs a fresh interpreter, as the command line does."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from transcode.pool import worker_environment

# Modules the other commands need and `nearcast transcode` must not load.
OTHER_COMMANDS = ("fastapi", "aiortc", "uvicorn", "redis", "httpx", "asyncio")


def _run(code: str, env: dict[str, str] | None = None) -> str:
    environ = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={**environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return out.stdout.strip()


def test_transcode_command_line_imports_only_its_own_module() -> None:
    code = (
        "import sys, json\n"
        "from nearcast.cli import build_parser, _command\n"
        "build_parser(_command(['transcode', '--help']))\n"
        "import transcode.pipeline\n"  # what the command runs once parsed
        f"print(json.dumps([m for m in {OTHER_COMMANDS!r} if m in sys.modules]))\n"
    )
    assert json.loads(_run(code)) == []


def test_importing_nearcast_caps_openblas_at_one_thread_unless_set() -> None:
    code = "import os, nearcast, numpy\nprint(os.environ['OPENBLAS_NUM_THREADS'])\n"
    assert _run(code) == "1"
    assert _run(code, {"OPENBLAS_NUM_THREADS": "3"}) == "3"  # a value the user set stays


def test_openblas_thread_count_reaches_the_transcode_workers() -> None:
    assert worker_environment({"OPENBLAS_NUM_THREADS": "1"})["OPENBLAS_NUM_THREADS"] == "1"


def test_one_openblas_thread_means_no_extra_native_threads() -> None:
    """numpy's import starts OpenBLAS threads (OS threads, not Python's): counted in
    /proc, with and without the cap."""
    code = "import nearcast, numpy, os\nprint(len(os.listdir('/proc/self/task')))\n"
    capped = int(_run(code))
    uncapped = int(_run(code, {"OPENBLAS_NUM_THREADS": "4"}))
    assert capped == 1
    assert uncapped > capped
