"""A real TURN server (coturn's ``turnserver``) on 127.0.0.1, and UDP port helpers."""

from __future__ import annotations

import contextlib
import random
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

USER = "nearcast"
PASSWORD = "turn-secret-0123"
REALM = "nearcast.test"


def free_udp_range(count: int, host: str = "0.0.0.0") -> tuple[int, int]:
    """``count`` consecutive UDP ports free at the time of the call (low, high)."""
    for _ in range(200):
        # Below the kernel's ephemeral range (32768-60999 by default), which clients draw from.
        low = random.randrange(20000, 32000 - count)
        socks: list[socket.socket] = []
        try:
            for port in range(low, low + count):
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                socks.append(s)
                s.bind((host, port))
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
        return low, low + count - 1
    raise AssertionError(f"no {count} consecutive free UDP ports found")


def process_udp_ports(pid: int) -> list[tuple[str, int]]:
    """(local address, port) of every UDP socket process ``pid`` holds, as ``ss -u -a -p``
    would list them: its socket inodes matched against /proc/net/udp and udp6."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = fd.readlink().as_posix()
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    out = []
    for table in ("udp", "udp6"):
        lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        for line in lines:
            fields = line.split()
            if fields[9] in inodes:
                addr, port = fields[1].split(":")
                out.append((addr, int(port, 16)))
    return out


@dataclass
class TurnServer:
    port: int
    relay_ports: tuple[int, int]
    log: Path

    @property
    def url(self) -> str:
        return f"turn:127.0.0.1:{self.port}?transport=udp"


@contextlib.contextmanager
def turn_server(directory: Path, timeout: float = 15.0) -> Iterator[TurnServer]:
    """coturn with one static long-term user, listening and relaying on 127.0.0.1.

    A missing ``turnserver`` fails the test: `make test` installs Debian's coturn."""
    binary = shutil.which("turnserver") or (
        "/usr/bin/turnserver" if Path("/usr/bin/turnserver").exists() else None
    )
    if binary is None:
        pytest.fail("turnserver is not installed; `make test` installs it (Debian package coturn)")
    port = free_udp_range(1, "127.0.0.1")[0]
    relay = free_udp_range(32, "127.0.0.1")
    log = directory / "turnserver.log"
    args = [
        binary,
        "-n",  # no configuration file
        "--listening-ip=127.0.0.1",
        "--relay-ip=127.0.0.1",
        f"--listening-port={port}",
        f"--min-port={relay[0]}",
        f"--max-port={relay[1]}",
        "--lt-cred-mech",
        f"--user={USER}:{PASSWORD}",
        f"--realm={REALM}",
        "--fingerprint",
        "--no-tls",
        "--no-dtls",
        "--no-tcp",
        "--no-cli",
        # The peers here are this machine's own addresses.
        "--allow-loopback-peers",
        "--simple-log",
        f"--log-file={log}",
        f"--pidfile={directory / 'turnserver.pid'}",
    ]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout
        while not _answers(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                text = log.read_text() if log.exists() else ""
                raise AssertionError(f"turnserver did not start (rc {proc.poll()}): {text[-2000:]}")
        yield TurnServer(port, relay, log)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _answers(port: int) -> bool:
    """A STUN binding request to 127.0.0.1:port gets a response within 0.2 s."""
    request = b"\x00\x01\x00\x00\x21\x12\xa4\x42" + random.randbytes(12)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.2)
        s.sendto(request, ("127.0.0.1", port))
        try:
            data = s.recv(2048)
        except OSError:
            return False
    return data[:2] == b"\x01\x01" and data[8:20] == request[8:20]
