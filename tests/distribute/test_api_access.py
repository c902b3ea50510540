"""What the node's API tells whom: anonymous callers see only public facts of open tenants."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry, Counter

from distribute.api import create_api
from distribute.config import HlsConfig
from distribute.hls.store import Store
from media import StreamKey

OPERATOR = "operator-token-0123456789"
METRICS = "metrics-token-0123456789"
# "school" requires playback tokens; "live" plays openly.
GUARDED = {"school"}


def _stats(tenant: str, stream: str) -> dict[str, Any]:
    return {"protocol": "rtmp", "client": "203.0.113.7:50123", "bitrate": 1_000_000}


def _client(metrics_token: str = "") -> httpx.AsyncClient:
    store = Store(HlsConfig())
    store.open(StreamKey("live", "open-class"))
    store.open(StreamKey("school", "maths"))
    registry = CollectorRegistry()
    Counter("probe_things_total", "a metric", registry=registry).inc()
    app = create_api(
        store,
        registry,
        lambda: {"ok": True},
        lambda: {"id": "edge-test"},
        ingest_stats=_stats,
        operator_token=OPERATOR,
        metrics_token=metrics_token,
        guarded=GUARDED.__contains__,
    )
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://node")


def _bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


async def test_anonymous_listing_hides_guarded_tenants_and_publisher_details() -> None:
    async with _client() as c:
        r = await c.get("/v1/streams")
        assert r.status_code == 200
        listed = r.json()["streams"]
        assert [(s["tenant"], s["stream"]) for s in listed] == [("live", "open-class")]
        assert "ingest" not in listed[0]
        assert "203.0.113.7" not in r.text
        # The source's bit rate is what its viewers receive anyway.
        assert listed[0]["source"]["bitrate"] == 1_000_000
        # The guarded stream is indistinguishable from one that does not exist.
        one = await c.get("/v1/streams/school/maths")
        none = await c.get("/v1/streams/school/nothing")
        assert one.status_code == none.status_code == 404
        assert one.json()["detail"].replace("maths", "X") == none.json()["detail"].replace(
            "nothing", "X"
        )
        r = await c.get("/v1/streams/live/open-class")
        assert r.status_code == 200 and "ingest" not in r.json()
        assert "203.0.113.7" not in r.text


async def test_operator_token_shows_every_tenant_with_ingest_details() -> None:
    async with _client() as c:
        r = await c.get("/v1/streams", headers=_bearer(OPERATOR))
        assert r.status_code == 200
        listed = {(s["tenant"], s["stream"]): s for s in r.json()["streams"]}
        assert set(listed) == {("live", "open-class"), ("school", "maths")}
        assert listed["school", "maths"]["ingest"]["client"] == "203.0.113.7:50123"
        r = await c.get("/v1/streams/school/maths", headers=_bearer(OPERATOR))
        assert r.status_code == 200 and r.json()["ingest"]["protocol"] == "rtmp"


@pytest.mark.parametrize("path", ["/v1/streams", "/v1/streams/live/open-class"])
@pytest.mark.parametrize("header", ["Bearer wrong", "Basic b3BlcmF0b3I=", "Bearer "])
async def test_a_wrong_operator_token_is_401_not_the_anonymous_view(path: str, header: str) -> None:
    async with _client() as c:
        r = await c.get(path, headers={"authorization": header})
        assert r.status_code == 401
        assert r.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        (_bearer("wrong"), 401),
        (_bearer(OPERATOR), 401),  # the operator's token is not the scraper's
        ({"authorization": METRICS}, 401),
        (_bearer(METRICS), 200),
    ],
)
async def test_metrics_token_guards_metrics(headers: dict[str, str], status: int) -> None:
    async with _client(metrics_token=METRICS) as c:
        r = await c.get("/metrics", headers=headers)
        assert r.status_code == status
        assert ("probe_things_total" in r.text) == (status == 200)


async def test_metrics_without_a_token_configured_stay_open() -> None:
    async with _client() as c:
        r = await c.get("/metrics")
        assert r.status_code == 200 and "probe_things_total" in r.text
