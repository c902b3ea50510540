"""The node's publish policy in process: attempts per address, what the webhook sees, and
the per-stream metric series a publish leaves behind."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from ingest.auth import redact_query
from ingest.sink import PublishRefused, PublishRequest
from ingest.webhook import HookAnswer
from media import StreamKey
from nearcast.config import load
from nearcast.node import Node
from nearcast.session import _StoreSink


@pytest.fixture
async def node(request: pytest.FixtureRequest) -> AsyncIterator[Node]:
    env = {"NEARCAST_TRANSCODE_CAPACITY_UNITS": "8", **getattr(request, "param", {})}
    n = Node(load(environ=env))
    yield n
    for session in list(n.sessions.values()):
        await session.close()
    for timer in n._grace.values():
        timer.cancel()
    await n.auth.aclose()


def publish(
    stream: str, remote: str = "198.51.100.7:40000", protocol: str = "rtmp", **kw: Any
) -> PublishRequest:
    return PublishRequest(StreamKey("live", stream), protocol, remote, **kw)


async def test_the_eleventh_attempt_in_a_minute_is_refused_rtmp_and_whip_alike(node: Node) -> None:
    for i in range(5):
        await node.open_publish(publish(f"r{i}", protocol="rtmp"))
        await node.open_publish(publish(f"w{i}", "198.51.100.7", protocol="whip"))
    with pytest.raises(PublishRefused) as info:
        await node.open_publish(publish("one-more", protocol="whip"))
    assert info.value.reason == "publish_rate" and info.value.retry_after > 50
    with pytest.raises(PublishRefused, match="publish attempts"):
        await node.open_publish(publish("one-more", protocol="rtmp"))
    # Another address, and a relay (exempt), are not affected.
    await node.open_publish(publish("other", "203.0.113.5:1935"))
    await node.open_publish(publish("relayed", exempt=True))


@pytest.mark.parametrize(
    "node", [{"NEARCAST_INGEST_MAX_PUBLISH_ATTEMPTS_PER_IP": "0"}], indirect=True
)
async def test_zero_lets_loopback_publish_as_often_as_it_likes(node: Node) -> None:
    for i in range(30):
        session = await node.open_publish(publish(f"s{i % 3}", "127.0.0.1:5000"))
        await session.close()


async def test_the_source_limits_of_the_tenant_come_with_the_accepted_publish(node: Node) -> None:
    request = publish("cam")
    await node.open_publish(request)
    assert request.source_limits is not None
    assert (request.source_limits.max_width, request.source_limits.max_height) == (1920, 1080)


@pytest.mark.parametrize(
    "node", [{"NEARCAST_INGEST_ON_PUBLISH_URL": "http://hooks.invalid/on_publish"}], indirect=True
)
async def test_no_spelling_of_the_token_reaches_the_webhook(node: Node) -> None:
    seen: list[dict[str, Any]] = []

    async def ask(payload: dict[str, Any]) -> HookAnswer:
        seen.append(payload)
        return HookAnswer("allowed", "test")

    node.auth.hook.ask = ask  # type: ignore[method-assign]
    query = "%74oken=s3cret&profile=passthrough&%54OKEN=s3cret2&t%6Fken=s3cret3&a=%74oken%3Dx"
    await node.open_publish(publish("cam", query=query))
    (payload,) = seen
    assert "s3cret" not in payload["query"]
    assert payload["query"] == "profile=passthrough&a=token%3Dx"


@pytest.mark.parametrize(
    ("query", "redacted"),
    [
        ("token=abc", ""),
        ("%74oken=abc&x=1", "x=1"),
        ("x=1&Token=abc&y=a+b", "x=1&y=a+b"),
        ("x=%ZZ&token", "x=%25ZZ"),
    ],
)
def test_redact_query(query: str, redacted: str) -> None:
    assert redact_query(query) == redacted


def _stream_series(node: Node) -> list[tuple[str, dict[str, str]]]:
    return [
        (s.name, s.labels)
        for metric in node.registry.collect()
        for s in metric.samples
        if "stream" in s.labels
    ]


async def test_ended_publishes_leave_no_per_stream_series(node: Node) -> None:
    sessions = []
    for i in range(5):
        session = await node.open_publish(publish(f"s{i}", f"192.0.2.{i}:1935"))
        sink = _StoreSink(node, session.stream)
        for wall, frames in ((1.0, 30), (2.0, 60)):  # two reports: a rate per rendition
            sink.on_stats(
                {
                    "wall_seconds": wall,
                    "media_seconds": wall,
                    "renditions": {"720p": frames, "360p": frames},
                }
            )
        sessions.append(session)
    assert len(_stream_series(node)) == 5 * 3  # fps of two renditions and lag, per stream
    for session in sessions[:4]:
        await session.close()
    assert {labels["stream"] for _, labels in _stream_series(node)} == {"live/s4"}
    await sessions[4].close()
    assert _stream_series(node) == []
