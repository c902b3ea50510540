"""Publish policy on a real node, with real publishers.

Publishers: the Debian ``ffmpeg`` CLI (FFmpeg 5.1) and FFmpeg 8.1 bundled in PyAV.
The webhook is a real HTTP service (tests/support/hookserver.py). Streams are passed through
(a ``copy`` ladder), so only ingest work runs on the test machine.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import av
import pytest
from hookserver import HookServer
from nodeutil import (
    SMALL,
    NodeProcess,
    Publisher,
    require_binary,
    segment_numbers,
    self_signed,
    wait_for,
)

import tokens
from bench.ingest import ffmpeg_push

KEYS = {"k2": "school-secret-new-0123", "k1": "school-secret-old-0123"}
OPERATOR = "operator-secret-0123"
_OPERATOR_AUTH = {"authorization": f"Bearer {OPERATOR}"}
PASSTHROUGH = "[{name: source, codec: copy}]"
BASE_ENV = {
    "NEARCAST_TRANSCODE_LADDER": PASSTHROUGH,
    "NEARCAST_TRANSCODE_CAPACITY_UNITS": "100",
    "NEARCAST_HLS_SEGMENT_DURATION": "1",
    "NEARCAST_HLS_GRACE_PERIOD": "5",
    "NEARCAST_RTMP_TENANTS": "[live, school]",
    # ?profile=tiny: the source plus one real (small, cheap) x264 rung.
    "NEARCAST_TRANSCODE_PROFILES": "{tiny: {ladder: [{name: source, codec: copy},"
    " {name: 180p, width: 320, height: 180, video_bitrate: 250000}]}}",
}


@pytest.fixture(scope="module")
def hook() -> Iterator[HookServer]:
    h = HookServer()
    yield h
    h.close()


AUTH_TENANTS = "{school: {keys: {k2: " + KEYS["k2"] + ", k1: " + KEYS["k1"] + "}}}"


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, hook: HookServer) -> Iterator[NodeProcess]:
    tmp = tmp_path_factory.mktemp("ingest")
    cert, key = self_signed(tmp)
    n = NodeProcess(
        tmp / "node.log",
        **BASE_ENV,
        NEARCAST_INGEST_AUTH_TENANTS=AUTH_TENANTS,
        NEARCAST_INGEST_ON_PUBLISH_URL=hook.url,
        NEARCAST_INGEST_ON_PUBLISH_TIMEOUT="1",
        NEARCAST_INGEST_OPERATOR_TOKEN=OPERATOR,
        NEARCAST_INGEST_TAKEOVER="true",
        NEARCAST_RTMP_TLS_LISTEN="127.0.0.1:0",
        NEARCAST_RTMP_TLS_CERT=cert,
        NEARCAST_RTMP_TLS_KEY=key,
        # The module's many publishes all come from loopback.
        NEARCAST_INGEST_MAX_PUBLISH_ATTEMPTS_PER_IP="0",
    )
    yield n
    n.stop()


def _segments(node: NodeProcess, path: str) -> int:
    r = node.get(f"/{path}/source/index.m3u8")
    return r.text.count("#EXTINF") if r.status_code == 200 else 0


def _ffmpeg(url: str, loop: bool = True) -> subprocess.Popen[bytes]:
    ff = require_binary("ffmpeg")
    return ffmpeg_push(SMALL, url, loop=loop, ffmpeg=ff, loglevel="warning", stderr=subprocess.PIPE)


def _stop(proc: subprocess.Popen[bytes]) -> str:
    if proc.poll() is None:
        proc.terminate()
    try:
        _, err = proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate(timeout=5)
    return err.decode(errors="replace")


def _ingest(node: NodeProcess, tenant: str, stream: str) -> dict | None:
    # Ingest statistics (the publisher's address among them) are for the operator.
    r = node.client.get(f"/v1/streams/{tenant}/{stream}", headers=_OPERATOR_AUTH)
    return r.json().get("ingest") if r.status_code == 200 else None


def _token(stream: str, kid: str = "k2", ttl: int = 300, tenant: str = "school") -> str:
    return tokens.sign(KEYS[kid], kid, "publish", tenant, stream, int(time.time()) + ttl)


def test_ffmpeg_cli_with_nearcast_token_then_kick(node: NodeProcess) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEARCAST_")}
    env.update(
        NEARCAST_RTMP_TENANTS=BASE_ENV["NEARCAST_RTMP_TENANTS"],
        NEARCAST_INGEST_AUTH_TENANTS=AUTH_TENANTS,
        NEARCAST_RTMP_LISTEN=f"127.0.0.1:{node.rtmp_port}",
    )
    url = subprocess.run(
        [sys.executable, "-m", "nearcast", "token", "school", "cli", "--ttl", "3600"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout.strip()
    assert url.startswith(f"rtmp://127.0.0.1:{node.rtmp_port}/school/cli?token=")
    proc = _ffmpeg(url + "&profile=tiny")
    try:
        wait_for(lambda: _segments(node, "school/cli") >= 3, 40, "3 segments of school/cli")
        wait_for(
            lambda: node.get("/school/cli/180p/index.m3u8").text.count("#EXTINF") >= 2,
            40,
            "transcoded 180p segments",
        )
        with av.open(f"{node.http}/school/cli/180p/index.m3u8", timeout=(10, 10)) as c:
            frame = next(c.decode(video=0))
            assert (frame.width, frame.height) == (320, 180)
        stats = wait_for(
            lambda: (s := _ingest(node, "school", "cli")) and s["uptime"] > 5 and s,
            20,
            "5 s of ingest stats",
        )
        assert stats["protocol"] == "rtmp" and stats["client"].startswith("127.0.0.1:")
        assert (stats["video_codec"], stats["audio_codec"]) == ("h264", "aac")
        assert 20 <= stats["fps"] <= 40, stats
        assert 150_000 < stats["bitrate"] < 1_000_000, stats
        assert stats["keyframe_interval"] > 0
        # Nothing is dropped but late packets (DTS behind), which no muxer could take.
        assert stats["dropped_packets"] == stats["late_packets"], stats
        listed = node.client.get("/v1/streams", headers=_OPERATOR_AUTH).json()["streams"]
        assert next(s for s in listed if s["stream"] == "cli")["ingest"]["protocol"] == "rtmp"
        assert node.metric("ingest_sessions", protocol="rtmp", tenant="school") >= 1
        # Kick: operator token required, unknown streams are 404.
        kick = "/v1/streams/school/cli/kick"
        assert node.client.post(kick).status_code == 401
        assert node.client.post(kick, headers={"authorization": "Bearer nope"}).status_code == 401
        auth = {"authorization": f"Bearer {OPERATOR}"}
        assert node.client.post("/v1/streams/school/none/kick", headers=auth).status_code == 404
        before = node.metric("ingest_closed_total", reason="kicked")
        r = node.client.post(kick, headers=auth)
        assert r.status_code == 200, r.text
        wait_for(lambda: proc.poll() is not None, 20, "ffmpeg to see the connection closed")
        assert node.metric("ingest_closed_total", reason="kicked") == before + 1
        wait_for(lambda: _ingest(node, "school", "cli") is None, 10, "the publisher gone")
        assert "kicked" in node.log()
    finally:
        _stop(proc)


def test_ffmpeg_cli_without_token_is_refused(node: NodeProcess) -> None:
    before = node.metric("ingest_rejected_total", reason="token_missing")
    proc = _ffmpeg(node.rtmp("school/notoken"), loop=False)
    try:
        proc.wait(30)
    finally:
        err = _stop(proc)
    assert proc.returncode != 0
    assert "Unauthorized" in err or "no token" in err, err
    assert node.metric("ingest_rejected_total", reason="token_missing") == before + 1
    assert re.search(r"publish refused \(token_missing\): school/notoken: no token", node.log())


def test_pyav_with_a_rotated_key_is_transcoded(node: NodeProcess) -> None:
    pub = Publisher(SMALL, node.rtmp(f"school/av?token={_token('av', kid='k1')}"), loop=True)
    try:
        wait_for(lambda: _segments(node, "school/av") >= 2, 40, "2 segments of school/av")
        assert pub.alive() and pub.error is None
    finally:
        pub.stop()


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        (f"school/exp?token={_token('exp', ttl=-10)}", "token_expired"),
        (f"school/forge?token={_token('forge')[:-3]}AAA", "token_forged"),
        (f"school/mine?token={_token('yours')}", "token_wrong_stream"),
        (
            f"school/mine?token={tokens.sign('x' * 16, 'k9', 'publish', 'school', 'mine', 2**40)}",
            "token_unknown_key",
        ),
        # The token on the app (as OBS sends "rtmp://host/school?token=..") works too.
        (f"school?token={_token('appq', ttl=-1)}/appq", "token_expired"),
        ("school/none", "token_missing"),
        ("live/deny-1", "webhook_denied"),
        ("live/slow-1", "webhook_timeout"),
    ],
)
def test_pyav_refusals(node: NodeProcess, path: str, reason: str) -> None:
    before = node.metric("ingest_rejected_total", reason=reason)
    pub = Publisher(SMALL, node.rtmp(path), loop=False)
    pub.wait(40)
    assert pub.error is not None, "the publish must be refused"
    wait_for(
        lambda: node.metric("ingest_rejected_total", reason=reason) == before + 1,
        10,
        f"ingest_rejected_total{{reason={reason}}}",
    )
    assert f"publish refused ({reason})" in node.log()


def test_takeover_continues_the_stream(node: NodeProcess) -> None:
    first = _ffmpeg(node.rtmp("live/tk"))
    second: Publisher | None = None
    try:
        wait_for(lambda: _segments(node, "live/tk") >= 2, 40, "segments of the first publisher")
        before = node.metric("ingest_closed_total", reason="takeover")
        second = Publisher(SMALL, node.rtmp("live/tk"), loop=True)
        wait_for(lambda: first.poll() is not None, 30, "the first publisher to be disconnected")
        n = _segments(node, "live/tk")
        wait_for(lambda: _segments(node, "live/tk") >= n + 2, 30, "segments of the taker")
        assert second.alive() and second.error is None
        text = node.get("/live/tk/source/index.m3u8").text
        assert "#EXT-X-DISCONTINUITY" in text and "#EXT-X-ENDLIST" not in text
        assert node.metric("ingest_closed_total", reason="takeover") == before + 1
    finally:
        _stop(first)
        if second is not None:
            second.stop()


def test_rtmps_with_ffmpeg_cli_and_pyav(node: NodeProcess) -> None:
    assert node.rtmps_port
    proc = _ffmpeg(f"rtmps://127.0.0.1:{node.rtmps_port}/live/tls")
    try:
        wait_for(lambda: _segments(node, "live/tls") >= 2, 40, "segments over RTMPS")
        assert _ingest(node, "live", "tls")["protocol"] == "rtmps"
    finally:
        _stop(proc)
    # FFmpeg 8.1 (PyAV), with a token of a tenant that needs one.
    url = f"rtmps://127.0.0.1:{node.rtmps_port}/school/tls-av?token={_token('tls-av')}"
    pub = Publisher(SMALL, url, loop=True)
    try:
        wait_for(lambda: _segments(node, "school/tls-av") >= 2, 40, "PyAV segments over RTMPS")
        assert _ingest(node, "school", "tls-av")["protocol"] == "rtmps"
        assert pub.error is None
    finally:
        pub.stop()
    wait_for(
        lambda: node.metric("ingest_sessions", protocol="rtmps", tenant="school") == 0,
        15,
        "the RTMPS session to end",
    )
    # Publishers that ended normally, long after the handshake, are not slowloris refusals.
    assert node.metric("ingest_rejected_total", reason="handshake_timeout") == 0
    # Plain RTMP on the TLS port is a failed TLS handshake, not a crash.
    bad = _ffmpeg(f"rtmp://127.0.0.1:{node.rtmps_port}/live/plain", loop=False)
    bad.wait(30)
    _stop(bad)
    assert bad.returncode != 0


def test_fail_open_limits_and_bitrate(tmp_path: Path, hook: HookServer) -> None:
    n = NodeProcess(
        tmp_path / "node.log",
        **BASE_ENV,
        NEARCAST_INGEST_ON_PUBLISH_URL=hook.url,
        NEARCAST_INGEST_ON_PUBLISH_TIMEOUT="0.5",
        NEARCAST_INGEST_ON_PUBLISH_FAIL_OPEN="true",
        NEARCAST_INGEST_MAX_PUBLISHERS="2",
        NEARCAST_INGEST_MAX_PUBLISHERS_PER_TENANT="1",
        # The sample is ~340 kbit/s: over this limit once a full window is measured.
        NEARCAST_INGEST_MAX_BITRATE="150000",
        NEARCAST_INGEST_BITRATE_WINDOW="8",
        NEARCAST_INGEST_OPERATOR_TOKEN=OPERATOR,  # _ingest reads the operator's view
    )
    procs: list[subprocess.Popen[bytes]] = []
    try:
        # The webhook never answers: fail_open lets the publish in.
        procs.append(_ffmpeg(n.rtmp("live/slow-open")))
        wait_for(lambda: _ingest(n, "live", "slow-open"), 20, "the fail-open publisher")
        assert "allowed (fail_open)" in n.log()
        assert n.metric("ingest_webhook_requests_total", outcome="timeout") == 1
        procs.append(_ffmpeg(n.rtmp("live/second"), False))
        assert procs[-1].wait(20) != 0
        assert n.metric("ingest_rejected_total", reason="limit_tenant") == 1
        procs.append(_ffmpeg(n.rtmp("school/slow-b")))
        wait_for(lambda: _ingest(n, "school", "slow-b"), 20, "a publisher of another tenant")
        procs.append(_ffmpeg(n.rtmp("school/third"), False))
        assert procs[-1].wait(20) != 0
        assert n.metric("ingest_rejected_total", reason="limit_node") == 1
        # Both live publishers run at ~340 kbit/s: cut once 8 s are measured.
        wait_for(
            lambda: procs[0].poll() is not None and procs[2].poll() is not None,
            30,
            "publishers over max_bitrate to be disconnected",
        )
        assert n.metric("ingest_rejected_total", reason="bitrate") == 2
        assert "over the bit rate limit" in n.log()
    finally:
        for p in procs:
            _stop(p)
        n.stop()


def test_source_too_large_and_publish_rate_with_real_publishers(tmp_path: Path) -> None:
    """A tenant held to 320x180 refuses the 640x360 sample as soon as its SPS arrives, and
    the fourth publish attempt from loopback within the window is refused; the stream
    already live goes on untouched."""
    n = NodeProcess(
        tmp_path / "node.log",
        **BASE_ENV,
        NEARCAST_INGEST_TENANTS="{school: {max_width: 320, max_height: 180}}",
        NEARCAST_INGEST_MAX_PUBLISH_ATTEMPTS_PER_IP="3",
    )
    live = Publisher(SMALL, n.rtmp("live/class"), loop=True)
    try:
        wait_for(lambda: n.get("/live/class/source/index.m3u8").status_code == 200, 30, "class")
        big = Publisher(SMALL, n.rtmp("school/cam"), loop=False)
        big.wait(30)
        assert big.error is not None, "a source over the tenant's limit must be refused"
        assert n.metric("ingest_rejected_total", reason="source_too_large") == 1
        assert "640x360 is larger than 320x180" in n.log()
        short = Publisher(SMALL, n.rtmp("live/short"), loop=False, duration=1)
        short.wait(30)
        assert short.error is None, short.error
        over = Publisher(SMALL, n.rtmp("live/over"), loop=False)
        over.wait(30)
        assert over.error is not None, "the fourth attempt in a minute must be refused"
        assert n.metric("ingest_rejected_total", reason="publish_rate") == 1
        assert "ingest.max_publish_attempts_per_ip" in n.log()

        # The class never stopped: its playlist keeps growing.
        def newest() -> int:
            return max(segment_numbers(n.get("/live/class/source/index.m3u8").text))

        before = newest()
        wait_for(lambda: newest() > before, 10, "a new segment of the class")
        assert live.alive() and live.error is None
    finally:
        live.stop()
        n.stop()
