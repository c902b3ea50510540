"""A teacher publishes from a browser to a remote node: the publish page over HTTPS.

A browser grants the camera only in a secure context: https://, or localhost. The
node is reached as ``class.nearcast.test`` (mapped to loopback by Chromium's resolver
rules, so it is not localhost to the browser) with a certificate from a CA made for
the test, trusted by its public key hash.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from browserutil import CAMERA_ARGS
from cryptography import x509
from nodeutil import NodeProcess, require_binary, segment_numbers, wait_for
from playwright.sync_api import Page, sync_playwright
from tlsutil import HOST, CertAuthority, spki_sha256
from whiputil import LADDER, ready

CHROMIUM_ARGS = [*CAMERA_ARGS, f"--host-resolver-rules=MAP {HOST} 127.0.0.1"]
STATE = "[document.body.dataset.state, document.getElementById('detail').textContent]"


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> tuple[CertAuthority, Path]:
    d = tmp_path_factory.mktemp("tls")
    authority = CertAuthority.create(d)
    authority.issue(d / "cert.pem", d / "key.pem")
    return authority, d


@pytest.fixture(scope="module")
def node(
    tmp_path_factory: pytest.TempPathFactory, ca: tuple[CertAuthority, Path]
) -> Iterator[NodeProcess]:
    _authority, d = ca
    n = NodeProcess(
        tmp_path_factory.mktemp("node") / "node.log",
        NEARCAST_TRANSCODE_LADDER=LADDER,
        NEARCAST_HLS_SEGMENT_DURATION="1",
        NEARCAST_HLS_GRACE_PERIOD="1",
        NEARCAST_TRANSCODE_CAPACITY_UNITS="8",  # no start-up calibration encode
        NEARCAST_HTTP_TLS_LISTEN="127.0.0.1:0",
        NEARCAST_HTTP_TLS_CERT=str(d / "cert.pem"),
        NEARCAST_HTTP_TLS_KEY=str(d / "key.pem"),
    )
    yield n
    n.stop()


def _https_port(node: NodeProcess) -> int:
    port = int(node.get("/v1/streams").json()["node"]["https_port"])
    assert port > 0, "the node serves no HTTPS"
    return port


def _publish(page: Page, url: str) -> list[str]:
    page.goto(url)
    page.wait_for_function(
        "['publishing', 'error'].includes(document.body.dataset.state)", timeout=30_000
    )
    return list(page.evaluate(STATE))


def test_browser_publishes_over_https_to_a_remote_name(
    node: NodeProcess, ca: tuple[CertAuthority, Path]
) -> None:
    chromium = require_binary("chromium")
    authority, d = ca
    port = _https_port(node)
    spki = spki_sha256(x509.load_pem_x509_certificate((d / "cert.pem").read_bytes()))
    path = "live/https-class"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=chromium,
            headless=True,
            args=[*CHROMIUM_ARGS, f"--ignore-certificate-errors-spki-list={spki}"],
        )
        try:
            page = browser.new_page()
            # Control: the same page over plain HTTP on that name is no secure context,
            # so the browser offers no camera at all.
            plain = _publish(page, f"http://{HOST}:{node.http_port}/{path}/publish?autostart=1")
            assert plain[0] == "error", plain
            assert page.evaluate("window.isSecureContext") is False
            state = _publish(page, f"https://{HOST}:{port}/{path}/publish?autostart=1&codec=H264")
            assert page.evaluate("[window.isSecureContext, location.protocol]") == [True, "https:"]
            assert state[0] == "publishing", state
            wait_for(lambda: ready(node, path, 2), 40, f"segments of {path}")
            # The stream is live, and its media is served over the same TLS listener.
            with httpx.Client(verify=authority.client_context(), timeout=10) as c:
                url = f"https://127.0.0.1:{port}/{path}/240p/index.m3u8"
                ext = {"sni_hostname": HOST}
                r = c.get(url, headers={"host": f"{HOST}:{port}"}, extensions=ext)
                assert r.status_code == 200
                seg = segment_numbers(r.text)[-1]
                r = c.get(url.replace("index.m3u8", f"{seg}.m4s"), extensions=ext)
                # A CMAF segment (LL-HLS is the default delivery): it opens with a moof box.
                assert r.status_code == 200 and r.content[4:8] in (b"moof", b"styp")
            listed = node.get(f"/v1/streams/{path}").json()
            assert listed["live"] and listed["source"]["codec"] == "h264"
            assert node.metric("ingest_sessions", protocol="whip", tenant="live") == 1
            page.click("#stop")
            page.wait_for_function("document.body.dataset.state === 'stopped'", timeout=10_000)
        finally:
            browser.close()
    log = node.log()
    assert "Traceback" not in log and "fast path failed" not in log, log
