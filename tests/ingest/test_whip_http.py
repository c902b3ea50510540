"""The WHIP HTTP edge in-process: auth hook, refusals -> status codes, resource lifecycle."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection
from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from ingest.metrics import IngestMetrics
from ingest.sink import PublishRefused, PublishRequest
from ingest.whip import WhipConfig
from ingest.whip.server import OfferError, WhipServer, check_offer
from media import MediaPacket

SDP = {"Content-Type": "application/sdp"}


class FakePublication:
    def __init__(self) -> None:
        self.packets: list[MediaPacket] = []
        self.closed = False

    async def media(self, packet: MediaPacket) -> None:
        self.packets.append(packet)

    def metadata(self, values: dict[str, Any]) -> None:
        pass

    async def close(self) -> None:
        self.closed = True


class FakeSink:
    def __init__(self, refuse: PublishRefused | None = None) -> None:
        self.requests: list[PublishRequest] = []
        self.publications: list[FakePublication] = []
        self.refuse = refuse

    async def open_publish(self, request: PublishRequest) -> FakePublication:
        self.requests.append(request)
        if self.refuse:
            raise self.refuse
        pub = FakePublication()
        self.publications.append(pub)
        return pub


async def offer() -> str:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver("video", direction="sendonly")
    pc.addTransceiver("audio", direction="sendonly")
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    return sdp


def make(sink: FakeSink, **kw: Any) -> tuple[WhipServer, httpx.AsyncClient, IngestMetrics]:
    metrics = IngestMetrics(CollectorRegistry())
    server = WhipServer(
        WhipConfig(connect_timeout=30), sink, metrics, cors_origin="https://school.example", **kw
    )
    app = FastAPI()
    app.include_router(server.router)
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://node")
    return server, client, metrics


def test_token_reaches_the_auth_hook_and_the_publish_request() -> None:
    seen: list[tuple[Any, ...]] = []

    async def authorize(
        tenant: str, stream: str, token: str | None, ip: str, protocol: str
    ) -> str | None:
        seen.append((tenant, stream, token, protocol))
        return None if token == "good" else "token signature is invalid"

    async def run() -> None:
        sink = FakeSink()
        server, client, metrics = make(sink, authorize=authorize)
        sdp = await offer()
        r = await client.post("/live/a/whip", content=sdp, headers=SDP)
        assert r.status_code == 401 and "publish refused: token signature is invalid" in r.text
        assert r.headers["www-authenticate"].startswith("Bearer")
        r = await client.post(
            "/live/a/whip", content=sdp, headers={**SDP, "Authorization": "Bearer bad"}
        )
        assert r.status_code == 403
        assert metrics.rejected.labels("auth")._value.get() == 2
        assert sink.requests == []  # refused before the node was asked
        r = await client.post(
            "/live/a/whip?profile=passthrough",
            content=sdp,
            headers={**SDP, "Authorization": "Bearer good"},
        )
        assert r.status_code == 201, r.text
        assert r.headers["access-control-allow-origin"] == "https://school.example"
        (req,) = sink.requests
        assert req.protocol == "whip" and req.key.tenant == "live" and req.key.stream == "a"
        assert req.query == "profile=passthrough&token=good"  # where RTMP publishers put it
        assert seen[-1] == ("live", "a", "good", "whip")
        assert metrics.sessions.labels("whip", "live")._value.get() == 1
        location = r.headers["location"]
        d = await client.delete(location)
        assert d.status_code == 200
        assert sink.publications[0].closed
        assert metrics.sessions.labels("whip", "live")._value.get() == 0
        assert (await client.delete(location)).status_code == 404
        await server.stop()

    asyncio.run(run())


@pytest.mark.parametrize(
    ("reason", "status"), [("duplicate", 409), ("capacity", 503), ("tenant", 404), ("profile", 400)]
)
def test_node_refusals_map_to_http_status(reason: str, status: int) -> None:
    async def run() -> None:
        sink = FakeSink(PublishRefused(reason, f"refused because {reason}"))
        server, client, metrics = make(sink)
        r = await client.post("/live/a/whip", content=await offer(), headers=SDP)
        assert r.status_code == status and f"refused because {reason}" in r.text
        assert metrics.rejected.labels(reason)._value.get() == 1
        assert server.sessions == {}

    asyncio.run(run())


def test_resource_of_another_stream_is_not_found_and_stop_closes_all() -> None:
    async def run() -> None:
        sink = FakeSink()
        server, client, _ = make(sink)
        r = await client.post("/live/a/whip", content=await offer(), headers=SDP)
        sid = r.headers["location"].rsplit("/", 1)[1]
        assert (await client.delete(f"/live/b/whip/{sid}")).status_code == 404
        assert (await client.request("PUT", f"/live/a/whip/{sid}")).status_code == 405
        big = await client.post("/live/a/whip", content="v=0\r\n" + "a=x\r\n" * 20000, headers=SDP)
        assert big.status_code == 413
        await server.stop()
        assert sink.publications[0].closed and server.sessions == {}

    asyncio.run(run())


def test_check_offer_messages() -> None:
    with pytest.raises(OfferError, match="empty"):
        check_offer("  ")
    sdp = asyncio.run(offer())
    check_offer(sdp)
    with pytest.raises(OfferError, match="no video m-line"):
        check_offer(sdp.split("m=video")[0])
    recv = sdp.replace("a=sendonly", "a=recvonly")
    with pytest.raises(OfferError, match="must send media"):
        check_offer(recv)
    nofp = "\r\n".join(ln for ln in sdp.split("\r\n") if not ln.startswith("a=fingerprint"))
    with pytest.raises(OfferError, match="fingerprint"):
        check_offer(nofp)


@pytest.mark.parametrize(
    "name",
    ["%3Cimg%20src%3Dx%20onerror%3Dalert(1)%3E", ".hidden", "a%0D%0ALocation:%20x", "x" * 129],
)
def test_stream_names_outside_the_rule_are_refused_before_anything_else(name: str) -> None:
    async def run() -> None:
        sink = FakeSink()
        server, client, metrics = make(sink)
        r = await client.post(f"/live/{name}/whip", content=await offer(), headers=SDP)
        assert r.status_code == 400 and "stream name" in r.text
        assert "location" not in r.headers
        assert metrics.rejected.labels("name")._value.get() == 1
        assert sink.requests == [] and server.sessions == {}

    asyncio.run(run())


def test_an_oversized_offer_is_refused_from_its_content_length() -> None:
    """A 100 MB body is refused on its header: the server reads none of it."""

    async def run() -> None:
        sink = FakeSink()
        _, client, _ = make(sink)
        read = 0

        async def hundred_megabytes():  # type: ignore[no-untyped-def]
            nonlocal read
            for _ in range(100):
                read += 1
                yield b"a=x\r\n" * 200_000

        headers = {**SDP, "Content-Length": str(100_000_000)}
        r = await client.post("/live/a/whip", content=hundred_megabytes(), headers=headers)
        assert r.status_code == 413
        assert read <= 1
        assert sink.requests == []

    asyncio.run(run())


def test_too_many_attempts_get_429_with_retry_after() -> None:
    async def run() -> None:
        refusal = PublishRefused("publish_rate", "10 publish attempts", retry_after=41.2)
        server, client, metrics = make(FakeSink(refusal))
        r = await client.post("/live/a/whip", content=await offer(), headers=SDP)
        assert r.status_code == 429 and "10 publish attempts" in r.text
        assert r.headers["retry-after"] == "42"
        assert "Retry-After" in r.headers["access-control-expose-headers"]
        assert metrics.rejected.labels("publish_rate")._value.get() == 1

    asyncio.run(run())
