"""``nearcast placement`` end to end: the real CLI under uvicorn against the real Redis.

The service runs as a subprocess on a free port with its own key prefix (so it
cannot collide with other tests sharing the Redis server); everything is driven
over HTTP as a node and an operator would, then SIGTERM must end it cleanly.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from placementutil import NODE_KEYS, REDIS_URL, free_port, make_node, redis_available

pytestmark = pytest.mark.redis

OP = {"Authorization": "Bearer op-e2e"}


def poll(predicate: Any, limit: float, what: str) -> Any:
    """Poll a callable until it returns a truthy value, within a bounded time."""
    deadline = time.monotonic() + limit
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


class Service:
    def __init__(
        self,
        proc: subprocess.Popen[str],
        base: str,
        prefix: str,
        url: str,
        cluster: bool,
        config: str,
    ) -> None:
        self.config = config
        self.proc = proc
        self.base = base
        self.prefix = prefix
        self.url = url
        self.cluster = cluster

    def redis(self) -> redis.Redis | redis.RedisCluster:
        if self.cluster:
            return redis.RedisCluster.from_url(self.url, decode_responses=True)
        return redis.Redis.from_url(self.url, decode_responses=True)

    def output(self) -> str:
        if self.proc.poll() is None:
            self.proc.kill()
        out, _ = self.proc.communicate(timeout=10)
        return out


@pytest.fixture(params=["redis", "redis-cluster"])
def service(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Service]:
    cluster = request.param == "redis-cluster"
    url = request.getfixturevalue("cluster_server").url if cluster else REDIS_URL
    assert redis_available(url), f"the placement CLI test needs Redis at {url}"
    prefix = f"e2e{uuid.uuid4().hex[:10]}"
    cfg = tmp_path / "nearcast.yml"
    cfg.write_text(
        f"redis:\n  cluster: {'true' if cluster else 'false'}\n"
        "placement:\n"
        f"  operator_token: op-e2e\n"
        f"  node_keys: {{k1: {NODE_KEYS['k1']}}}\n"
        f"  key_prefix: {prefix}\n"
        "  snapshot_interval: 0.2\n"
    )
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "nearcast",
            "placement",
            "--config",
            str(cfg),
            "--redis",
            url,
            "--listen",
            f"127.0.0.1:{port}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    svc = Service(proc, f"http://127.0.0.1:{port}", prefix, url, cluster, str(cfg))
    try:
        yield svc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        r = svc.redis()
        for key in list(r.scan_iter(match=f"{{{prefix}:*", count=1000)):
            r.delete(key)  # one by one: on a cluster they live in different slots
        r.close()


def test_cli_serves_the_api_over_real_redis_and_exits_on_sigterm(service: Service) -> None:
    def up() -> bool:
        assert service.proc.poll() is None, f"service exited:\n{service.output()}"
        try:
            return httpx.get(f"{service.base}/openapi.json", timeout=1.0).status_code == 200
        except httpx.TransportError:
            return False

    poll(up, 30.0, "the placement service to listen")
    with httpx.Client(base_url=service.base, timeout=5.0) as c:
        node = make_node(
            "edge-hz-1", city="hangzhou", isp="china-telecom", region="east", hb=time.time()
        )
        beat = {"load": {"cpu": 0.2}, "node": node.descriptor()}
        # Wrong or missing node token: refused.
        r = c.post("/v1/nodes/edge-hz-1/heartbeat", json=beat)
        assert r.status_code == 401
        r = c.post(
            "/v1/nodes/edge-hz-1/heartbeat", json=beat, headers={"Authorization": "Bearer x"}
        )
        assert r.status_code == 401
        # The credential `nearcast node-credential` mints from the service's config.
        minted = subprocess.run(
            [sys.executable, "-m", "nearcast", "node-credential", "edge-hz-1"]
            + ["--config", service.config, "--tier", "edge", "--region", "east"]
            + ["--city", "hangzhou", "--isp", "china-telecom", "--host", "edge-hz-1.test"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        auth = {"Authorization": f"Bearer {minted.stdout.strip()}"}
        # It binds the node to its city: another one is refused, naming the field.
        elsewhere = {"load": {}, "node": {**beat["node"], "city": "shanghai"}}
        r = c.post("/v1/nodes/edge-hz-1/heartbeat", json=elsewhere, headers=auth)
        assert r.status_code == 403 and r.json()["field"] == "node.city", r.text
        r = c.post("/v1/nodes/edge-hz-1/heartbeat", json=beat, headers=auth)
        assert r.status_code == 200 and r.json()["known"] is True, r.text
        # A liveness beat (no descriptor) is accepted for a registered node.
        r = c.post("/v1/nodes/edge-hz-1/heartbeat", json={"load": {"cpu": 0.3}}, headers=auth)
        assert r.status_code == 200 and r.json()["known"] is True, r.text

        # Operator endpoints without the token: 401.
        assert c.get("/v1/nodes").status_code == 401
        assert c.post("/v1/sessions", json={"tenant": "t", "stream": "s"}).status_code == 401

        def listed() -> bool:
            r = c.get("/v1/nodes", headers=OP)
            assert r.status_code == 200, r.text
            return any(n["id"] == "edge-hz-1" and n["alive"] for n in r.json()["nodes"])

        poll(listed, 10.0, "the node to appear in the service's snapshot")

        loc = {"city": "hangzhou", "isp": "china-telecom"}
        r = c.post(
            "/v1/sessions",
            json={"tenant": "school", "stream": "math-101", "location": loc},
            headers=OP,
        )
        assert r.status_code == 201, r.text
        body = r.json()
        assert body["node"] == "edge-hz-1" and body["tier"] == "edge"
        assert (
            body["ingest"]["rtmp"] == f"rtmp://edge-hz-1.test/school/math-101?session={body['id']}"
        )
        assert body["explanation"]["candidates"][0]["node"] == "edge-hz-1"
        sid = body["id"]
        r = c.get(f"/v1/sessions/{sid}")
        assert r.status_code == 200 and r.json()["node"] == "edge-hz-1"

        # The reservation lives in the real Redis under this service's prefix.
        rc = service.redis()
        try:
            assert rc.hget(f"{{{service.prefix}:east}}:rslots", "edge-hz-1") == "1"
        finally:
            rc.close()

        r = c.get("/v1/route", params={"tenant": "school", "stream": "math-101", **loc})
        assert r.status_code == 200, r.text
        assert r.json()["playback"] == "http://edge-hz-1.test/school/math-101/index.m3u8"
        r = c.get("/school/math-101/index.m3u8", params=loc)
        assert r.status_code == 302
        assert r.headers["location"] == "http://edge-hz-1.test/school/math-101/index.m3u8"
        assert c.get("/school/nope/index.m3u8").status_code == 404

        r = c.delete(f"/v1/sessions/{sid}", headers=OP)
        assert r.status_code == 204
        assert c.get(f"/v1/sessions/{sid}").status_code == 404

    service.proc.send_signal(signal.SIGTERM)
    try:
        rc_exit = service.proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        pytest.fail(f"no exit within 15 s of SIGTERM:\n{service.output()}")
    out = service.output()
    assert rc_exit == 0, out
    assert "Application shutdown complete" in out, out
    assert "Traceback" not in out, out
