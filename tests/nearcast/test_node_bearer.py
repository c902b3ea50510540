"""Every bearer check on the node's HTTP port answers a non-ASCII Authorization header
with 401 or 403, never 500."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from aiortc import RTCPeerConnection

from nearcast.config import load
from nearcast.node import Node

SECRET = "s3cret-key-0123456789"
ROUTES = [
    ("POST", "/v1/streams/live/cam/kick"),  # ingest.operator_token
    ("GET", "/v1/nodes"),  # placement.operator_token (the embedded service)
    ("PUT", "/v1/policy"),
    ("POST", "/v1/nodes/edge-2/heartbeat"),  # placement.node_keys
    ("POST", "/secure/cam/whip"),  # publish token (ingest.auth)
    ("POST", "/live/cam/whep"),  # playback token (playback.tenants)
    ("GET", "/live/cam/index.m3u8"),
]
VALUES = [
    b"Bearer \xc3\xa9t\xc3\xa9",  # UTF-8
    b"Bearer \xff\xfe.\xe9",
    "Bearer é".encode("latin-1"),
    b"\xe9",
]


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    env = {
        "NEARCAST_TRANSCODE_CAPACITY_UNITS": "4",
        "NEARCAST_RTMP_TENANTS": "[live, secure]",
        "NEARCAST_INGEST_OPERATOR_TOKEN": SECRET,
        "NEARCAST_INGEST_AUTH_TENANTS": f"{{secure: {{keys: {{k1: {SECRET}}}}}}}",
        "NEARCAST_PLAYBACK_TENANTS": f"{{live: {{keys: {{k1: {SECRET}}}}}}}",
        "NEARCAST_PLACEMENT_OPERATOR_TOKEN": SECRET,
        "NEARCAST_PLACEMENT_NODE_KEYS": f"{{k1: {SECRET}}}",
    }
    node = Node(load(environ=env))
    transport = httpx.ASGITransport(app=node.http_app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://node") as c:
        yield c
    await node.auth.aclose()


async def _offer() -> bytes:
    pc = RTCPeerConnection()
    pc.addTransceiver("video", direction="sendonly")
    pc.addTransceiver("audio", direction="sendonly")
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    return sdp.encode()


@pytest.mark.parametrize(("method", "path"), ROUTES)
async def test_non_ascii_bearer_is_refused_not_a_500(
    client: httpx.AsyncClient, method: str, path: str
) -> None:
    body = await _offer()  # a real offer, so WHIP gets as far as the token
    for value in VALUES:
        r = await client.request(
            method,
            path,
            content=body,
            headers=[(b"authorization", value), (b"content-type", b"application/sdp")],
        )
        assert r.status_code in (401, 403), (value, r.status_code, r.text)
