"""HTTPS on the node: the same app over TLS (media fast path included), plain HTTP
optional, and certificates replaced without a restart (HTTPS and RTMPS)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from servehelp import INFO
from tlsutil import HOST, CertAuthority, served_certificate

from media import StreamKey
from media.segments import SegmentFrame
from nearcast.cli import playback_url
from nearcast.config import ConfigError, load
from nearcast.node import Node

SEGMENT = b"\x47" + b"\x11" * 187 * 4


def _config(tmp: Path, **env: str) -> Any:
    return load(
        environ={
            "NEARCAST_RTMP_LISTEN": "127.0.0.1:0",
            "NEARCAST_HTTP_LISTEN": "",
            "NEARCAST_HTTP_TLS_LISTEN": "127.0.0.1:0",
            "NEARCAST_HTTP_TLS_CERT": str(tmp / "http.pem"),
            "NEARCAST_HTTP_TLS_KEY": str(tmp / "http.key"),
            "NEARCAST_TRANSCODE_CAPACITY_UNITS": "8",
            # A whole MPEG-TS segment is fed straight into the store below.
            "NEARCAST_HLS_TENANTS": "{live: ts}",
            **env,
        }
    )


@pytest.fixture
def ca(tmp_path: Path) -> CertAuthority:
    authority = CertAuthority.create(tmp_path)
    authority.issue(tmp_path / "http.pem", tmp_path / "http.key")
    return authority


@pytest.fixture
async def node(tmp_path: Path, ca: CertAuthority) -> AsyncIterator[Node]:
    ca.issue(tmp_path / "rtmp.pem", tmp_path / "rtmp.key")
    n = Node(
        _config(
            tmp_path,
            NEARCAST_RTMP_TLS_LISTEN="127.0.0.1:0",
            NEARCAST_RTMP_TLS_CERT=str(tmp_path / "rtmp.pem"),
            NEARCAST_RTMP_TLS_KEY=str(tmp_path / "rtmp.key"),
        )
    )
    await n.start()
    try:
        yield n
    finally:
        await n.stop()


async def _https(node: Node, ca: CertAuthority, path: str) -> httpx.Response:
    """GET over HTTPS, the CA trusted and the certificate checked for HOST."""

    def get() -> httpx.Response:
        with httpx.Client(verify=ca.client_context(), timeout=10) as c:
            return c.get(
                f"https://127.0.0.1:{node.https_port}{path}",
                headers={"host": f"{HOST}:{node.https_port}"},
                extensions={"sni_hostname": HOST},
            )

    return await asyncio.to_thread(get)


async def _until(probe: Callable[[], Any], what: str, limit: float = 10) -> Any:
    """Poll ``probe`` (run off the loop) every 0.2 s until truthy; fail after ``limit`` s."""
    for _ in range(int(limit / 0.2)):
        got = await asyncio.to_thread(probe)
        if got:
            return got
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out after {limit:.0f} s waiting for {what}")


async def test_https_only_node_serves_api_and_media_over_tls(node: Node, ca: CertAuthority) -> None:
    assert node.http_port == 0 and node.https_port > 0
    assert node.info()["https_port"] == node.https_port
    r = await _https(node, ca, "/readyz")
    assert r.status_code == 200 and r.json()["ready"] is True
    # A segment is answered by the media fast path over TLS, not by the ASGI app.
    stream = node.store.open(StreamKey("live", "tls"))
    stream.begin_generation()
    stream.set_renditions(INFO)
    stream.add_segment(SegmentFrame("360p", 0, 0.0, 2.0, "avc1.64001e", SEGMENT))
    msn = next(iter(stream.renditions["360p"].by_msn))
    fast = node.media_app.fast
    hits: list[Any] = []

    def spy(url: bytes, headers: Any, *client: Any) -> Any:
        got = fast(url, headers, *client)
        hits.append(got)
        return got

    node.media_app.fast = spy  # type: ignore[method-assign]
    r = await _https(node, ca, f"/live/tls/360p/{msn}.ts")
    assert r.status_code == 200 and r.content == SEGMENT
    assert len(hits) == 1 and isinstance(hits[0], tuple)
    r = await _https(node, ca, "/live/tls/360p/index.m3u8")
    assert r.status_code == 200 and f"{msn}.ts" in r.text


async def test_a_renewed_certificate_is_served_without_a_restart(
    node: Node, ca: CertAuthority, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    client = ca.client_context()
    first = await asyncio.to_thread(served_certificate, node.https_port, client)
    # A broken pair (a certificate without its key) is refused; the old one stays.
    (tmp_path / "http.pem").write_bytes(b"-----BEGIN CERTIFICATE-----\nnot one\n")
    await _until(lambda: "HTTPS certificate not reloaded" in caplog.text, "the refusal")
    now = await asyncio.to_thread(served_certificate, node.https_port, client)
    assert now.serial_number == first.serial_number
    renewed = ca.issue(tmp_path / "http.pem", tmp_path / "http.key")
    assert renewed.serial_number != first.serial_number

    def serial() -> bool:
        cert = served_certificate(node.https_port, client)
        return cert.serial_number == renewed.serial_number

    await _until(serial, "the renewed HTTPS certificate on a new connection")
    assert (await _https(node, ca, "/healthz")).status_code == 200


async def test_a_renewed_rtmps_certificate_is_served_without_a_restart(
    node: Node, ca: CertAuthority, tmp_path: Path
) -> None:
    client = ca.client_context()
    port = node.rtmp.tls_port
    first = await asyncio.to_thread(served_certificate, port, client)
    renewed = ca.issue(tmp_path / "rtmp.pem", tmp_path / "rtmp.key")
    assert renewed.serial_number != first.serial_number

    def serial() -> bool:
        return served_certificate(port, client).serial_number == renewed.serial_number

    await _until(serial, "the renewed RTMPS certificate on a new connection")


@pytest.mark.parametrize(
    ("env", "key"),
    [
        ({"NEARCAST_HTTP_TLS_CERT": "", "NEARCAST_HTTP_TLS_KEY": ""}, "'http.listen'"),
        ({"NEARCAST_HTTP_TLS_KEY": ""}, "'http.tls_cert'"),
        ({"NEARCAST_HTTP_TLS_LISTEN": "8443"}, "'http.tls_listen'"),
    ],
)
def test_bad_https_settings_name_the_key(tmp_path: Path, env: dict[str, str], key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        _config(tmp_path, **env)


async def test_unreadable_certificate_fails_the_start_naming_the_key(tmp_path: Path) -> None:
    n = Node(_config(tmp_path))  # no files were written
    with pytest.raises(ValueError, match="http.tls_cert"):
        await n.start()
    await n.stop()


def test_playback_url_of_an_https_only_node_is_https(tmp_path: Path) -> None:
    config = _config(
        tmp_path,
        NEARCAST_HTTP_TLS_LISTEN="0.0.0.0:8443",
        NEARCAST_PLAYBACK_TENANTS="{live: {keys: {k1: live-secret-0123456789}}}",
    )
    url = playback_url(config, "live", "cls", 60, host=HOST)
    assert url.startswith(f"https://{HOST}:8443/live/cls/index.m3u8?token=")
