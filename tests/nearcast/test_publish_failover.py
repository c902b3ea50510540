"""``nearcast publish --placement --token --reconnect`` against two real nodes registered
with one real placement service (over its own redis-server): the publisher asks placement
with the stream's publish token, publishes to the node it is given with the same token,
and when that node is killed (SIGKILL) carries on with the other one."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from nodeutil import ROOT, SMALL, NodeProcess, wait_for
from placementutil import PlacementProcess, free_port, node_credential

import tokens

SECRET = "live-publish-key-0123456789"
KEYS = f"{{live: {{keys: {{p1: {SECRET}}}}}}}"
OP = {"Authorization": "Bearer op-test"}
HB, TTL = 0.25, 1.0
LADDER = "[{name: 180p, width: 320, height: 180, video_bitrate: 250000}]"


def publish_token(tenant: str = "live", stream: str = "cam") -> str:
    return tokens.sign(SECRET, "p1", "publish", tenant, stream, int(time.time()) + 3600)


class Fleet:
    """A placement service on a private redis-server and two nodes registered with it."""

    def __init__(self, tmp: Path) -> None:
        self.placement = PlacementProcess(
            tmp,
            config={
                "publish_keys": yaml.safe_load(KEYS),
                "liveness": {"heartbeat_interval": HB, "ttl": TTL, "full_stats_interval": 1.0},
            },
        )
        self.base = self.placement.base
        self.client = self.placement.client
        self.nodes: dict[str, NodeProcess] = {}
        try:
            for nid in ("origin-a", "origin-b"):
                self.nodes[nid] = NodeProcess(
                    tmp / f"{nid}.log",
                    NEARCAST_NODE_ID=nid,
                    NEARCAST_NODE_TIER="cloud",
                    NEARCAST_PLACEMENT_URL=self.base,
                    NEARCAST_PLACEMENT_NODE_TOKEN=node_credential(nid),
                    NEARCAST_PLACEMENT_LIVENESS_HEARTBEAT_INTERVAL=str(HB),
                    NEARCAST_PLACEMENT_LIVENESS_TTL=str(TTL),
                    NEARCAST_PLACEMENT_LIVENESS_FULL_STATS_INTERVAL="1",
                    NEARCAST_INGEST_AUTH_TENANTS=KEYS,
                    NEARCAST_TRANSCODE_LADDER=LADDER,
                    NEARCAST_HLS_SEGMENT_DURATION="1",
                )
            wait_for(lambda: self.alive() == set(self.nodes), 30, "both nodes registered")
        except BaseException:
            self.stop()
            raise

    def alive(self) -> set[str]:
        return self.placement.alive()

    def publishing_on(self) -> str | None:
        """The node a publisher is connected to, from the nodes' own metrics."""
        for nid, node in self.nodes.items():
            if node.proc.poll() is None and node.metric("ingest_sessions", tenant="live"):
                return nid
        return None

    def stop(self) -> None:
        for node in self.nodes.values():
            node.stop()
        self.placement.stop()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    f = Fleet(tmp_path_factory.mktemp("failover"))
    try:
        yield f
    finally:
        f.stop()


def publisher(tmp: Path, fleet: Fleet, token: str, *extra: str) -> subprocess.Popen[bytes]:
    log = tmp / "publish.log"
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "nearcast", "publish", SMALL]
            + ["--placement", fleet.base, "--token", token, *extra],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )


def test_a_token_of_a_tenant_placement_has_no_keys_for_is_refused_at_once(
    tmp_path: Path, fleet: Fleet
) -> None:
    token = tokens.sign("other-key-0123456789abc", "p1", "publish", "acme", "cam", 4_000_000_000)
    proc = publisher(tmp_path, fleet, token, "--reconnect")
    assert proc.wait(timeout=60) == 1
    out = (tmp_path / "publish.log").read_text()
    assert "placement refused a session of acme/cam: 401" in out
    assert "tenant 'acme' has no publish keys" in out


def test_the_publisher_moves_to_the_other_node_when_its_node_is_killed(
    tmp_path: Path, fleet: Fleet
) -> None:
    proc = publisher(tmp_path, fleet, publish_token(), "--reconnect", "--max-backoff", "1")
    log = tmp_path / "publish.log"
    try:
        first = wait_for(fleet.publishing_on, 60, "the publisher on a node")
        assert f"placed on node {first}" in log.read_text()
        other = next(n for n in fleet.nodes if n != first)

        fleet.nodes[first].proc.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        second = wait_for(fleet.publishing_on, 30, "the publisher on the other node")
        took = time.monotonic() - killed
        print(f"publisher moved from {first} to {second} in {took:.2f} s after SIGKILL")
        assert second == other
        # Placement stops giving the dead node within its TTL and a snapshot; the
        # publisher's retries (0.25 s doubling up to 1 s) and the connect add a little.
        assert took < TTL + 10, took
        out = log.read_text()
        assert f"switching from node {first} to node {other}" in out, out
        # The token went on to the node (it requires one) but is never logged.
        assert publish_token().split(".")[1] not in out

        # A relay reporting the nodes: placement probes their real /healthz.
        relay = {"Authorization": f"Bearer {node_credential('relay-1')}"}
        r = httpx.post(f"{fleet.base}/v1/nodes/{first}/suspect", headers=relay, timeout=10)
        assert r.status_code == 200 and r.json()["dead"] is True, r.text
        assert r.json()["probe"] == "unreachable"
        r = httpx.post(f"{fleet.base}/v1/nodes/{other}/suspect", headers=relay, timeout=10)
        assert r.status_code == 200, r.text
        assert r.json()["dead"] is False and r.json()["probe"] == "healthy"
        assert fleet.alive() == {other}

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        assert "stopped: sent" in log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_sigint_stops_a_publisher_that_waits_for_placement(tmp_path: Path) -> None:
    log = tmp_path / "publish.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "nearcast", "publish", SMALL, "--reconnect"]
            + ["--placement", f"http://127.0.0.1:{free_port()}", "--token", publish_token()],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
    try:
        # Nothing listens there: it keeps asking, with a bounded backoff.
        wait_for(lambda: log.read_text().count("asking again in") >= 2, 60, "two retries")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 0
        assert "stopped: sent 0 packets" in log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
