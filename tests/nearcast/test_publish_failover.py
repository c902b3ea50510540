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
from nodeutil import ROOT, SMALL, NodeProcess, wait_for
from placementutil import NODE_KEYS, RedisServer, free_port, node_credential

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
        self.redis = RedisServer(free_port())
        self.redis.start()
        cfg = tmp / "placement.yml"
        cfg.write_text(
            "placement:\n"
            "  operator_token: op-test\n"
            f"  node_keys: {{k1: {NODE_KEYS['k1']}}}\n"
            f"  publish_keys: {KEYS}\n"
            "  snapshot_interval: 0.2\n"
            f"  liveness: {{heartbeat_interval: {HB}, ttl: {TTL}, full_stats_interval: 1.0}}\n"
        )
        port = free_port()
        self.base = f"http://127.0.0.1:{port}"
        self.log = open(tmp / "placement.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "nearcast", "placement", "--config", str(cfg)]
            + ["--redis", self.redis.url, "--listen", f"127.0.0.1:{port}"],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
        self.client = httpx.Client(base_url=self.base, timeout=5.0, headers=OP)
        self.nodes: dict[str, NodeProcess] = {}
        try:
            wait_for(lambda: self.client.get("/openapi.json").status_code == 200, 30, "placement")
            # The nodes share this host's CPU with whatever else runs: placement's CPU
            # filter must not turn them away for it.
            policy = {"version": 2, "name": "tests", "filters": {"max_cpu": 1.5}}
            self.client.put("/v1/policy", json=policy).raise_for_status()
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
        r = self.client.get("/v1/nodes")
        r.raise_for_status()
        return {n["id"] for n in r.json()["nodes"] if n["alive"]}

    def publishing_on(self) -> str | None:
        """The node a publisher is connected to, from the nodes' own metrics."""
        for nid, node in self.nodes.items():
            if node.proc.poll() is None and node.metric("ingest_sessions", tenant="live"):
                return nid
        return None

    def stop(self) -> None:
        for node in self.nodes.values():
            node.stop()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.redis.stop()
        self.client.close()
        self.log.close()


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
