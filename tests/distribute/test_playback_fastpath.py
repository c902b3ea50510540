"""Playback tokens on the media fast path.

A viewer whose token is verified is answered the way an open tenant's viewer is
(no ASGI, playlists signed with the token); whatever the fast path cannot accept
goes to the guard, which refuses it with its reason. Over real HTTP: uvicorn
serving the media app, httpx as the client.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import m3u8
import pytest
from nodeutil import wait_for
from servehelp import LL_HLS, MediaServer, feed_init, feed_part, feed_segment

import distribute.access
from distribute.access import TokenCheck
from distribute.hls.stream import LiveStream
from tokens import TokenError, sign

KEYS = {"k1": "class-secret-0123456789"}
TTL = 600


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def server(clock: Clock) -> Iterator[MediaServer]:
    srv = MediaServer(LL_HLS, tokens=TokenCheck({"live": KEYS}.get, clock=clock))
    try:
        yield srv
    finally:
        srv.stop()


def token(clock: Clock, stream: str = "s", key: str = "k1") -> str:
    return sign(KEYS[key], key, "play", "live", stream, int(clock.now) + TTL)


def live(server: MediaServer) -> LiveStream:
    """A stream with one complete segment and the first part of the next."""
    s = server.open()
    feed_init(server, s)
    feed_segment(server, s, 0)
    feed_part(server, s, 1, 0)
    return s


def uris(playlist: str) -> list[str]:
    """Every URI of a playlist: URI lines and URI="..." attributes."""
    out = []
    for line in playlist.splitlines():
        if line.startswith("#"):
            out += [p.split('"')[1] for p in line.split("URI=")[1:]]
        elif line.strip():
            out.append(line)
    return out


def test_a_verified_token_is_answered_on_the_fast_path_with_every_uri_signed(
    server: MediaServer, clock: Clock
) -> None:
    s = live(server)
    tok = token(clock)
    with httpx.Client(base_url=f"{server.url}/live/s", timeout=10) as client:
        master = client.get("/index.m3u8", params={"token": tok})
        assert master.status_code == 200
        variants = m3u8.loads(master.text).playlists
        assert variants and all(v.uri.endswith(f"?token={tok}") for v in variants)
        media = client.get(f"/{variants[0].uri}")
        assert media.status_code == 200
        listed = uris(media.text)
        # Segments, parts, the init segment, the preload hint and the rendition report.
        assert {u.split("?")[0].rsplit(".", 1)[-1] for u in listed} >= {"m4s", "mp4", "m3u8"}
        assert "PRELOAD-HINT" in media.text and "RENDITION-REPORT" in media.text
        assert all(u.endswith(f"token={tok}") for u in listed), listed
        rendition = variants[0].uri.split("/")[0]
        for uri in listed:
            if uri.startswith(("0.", "init-")):  # the complete segment, its parts, the init
                r = client.get(f"/{rendition}/{uri}")
                assert r.status_code == 200 and r.content, uri
        segment = client.get(f"/{rendition}/0.m4s", params={"token": tok})
        assert segment.content == server.call(lambda: s.renditions[rendition].by_msn[0].data)
    # Not one of those requests went through the ASGI guard.
    assert server.guarded == 0


def test_a_held_blocking_reload_is_answered_signed(server: MediaServer, clock: Clock) -> None:
    s = live(server)
    tok = token(clock)
    url = f"{server.url}/live/s/360p/index.m3u8"
    with ThreadPoolExecutor(1) as pool:
        held = pool.submit(
            httpx.get, url, params={"_HLS_msn": 2, "_HLS_part": 1, "token": tok}, timeout=10
        )
        wait_for(lambda: server.held() == 1, 10, "the reload held")
        feed_part(server, s, 1, 1)
        r = held.result(10)
    assert r.status_code == 200
    assert f'URI="2.1.m4s?token={tok}"' in r.text
    assert server.guarded == 0


def test_every_other_request_goes_to_the_guard_and_is_refused_with_its_reason(
    server: MediaServer, clock: Clock
) -> None:
    live(server)
    good = token(clock)
    cases = {
        "": "missing",
        f"token={token(clock, stream='other')}": "wrong_stream",
        f"token={good[:-2]}AA": "forged",
        "token=x": "malformed",
    }
    with httpx.Client(base_url=f"{server.url}/live/s", timeout=10) as client:
        for path in ("/index.m3u8", "/360p/index.m3u8", "/360p/0.m4s", "/360p/1.0.m4s"):
            for query, reason in cases.items():
                before = server.guarded
                r = client.get(f"{path}?{query}")
                assert r.status_code == 403, (path, query)
                assert f"({reason})" in r.text
                assert server.guarded == before + 1
        # A percent-encoded token is decoded by the guard, and plays.
        encoded = good.replace(".", "%2E")
        r = client.get(f"/360p/index.m3u8?token={encoded}")
        assert r.status_code == 200 and f"?token={good}" in r.text


def test_a_remembered_token_still_expires(server: MediaServer, clock: Clock) -> None:
    live(server)
    tok = token(clock)
    url = f"{server.url}/live/s/360p/0.m4s"
    assert httpx.get(url, params={"token": tok}, timeout=10).status_code == 200
    clock.now += TTL + 1
    r = httpx.get(url, params={"token": tok}, timeout=10)
    assert r.status_code == 403 and "(expired)" in r.text


def test_a_token_is_verified_once_until_the_keys_change(
    monkeypatch: pytest.MonkeyPatch, clock: Clock
) -> None:
    calls = []
    real = distribute.access.verify

    def counted(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(distribute.access, "verify", counted)
    tenants = {"live": dict(KEYS)}
    check = TokenCheck(tenants.get, clock=clock)
    tok = token(clock)
    for _ in range(100):
        check.check(tok, "live", "s")
    assert len(calls) == 1
    # Another stream is another question.
    with pytest.raises(TokenError):
        check.check(tok, "live", "t")
    # Keys replaced (the old one withdrawn): the remembered token is not trusted.
    tenants["live"] = {"k2": "new-secret-0123456789"}
    with pytest.raises(TokenError) as err:
        check.check(tok, "live", "s")
    assert err.value.reason == "unknown_key"
    # Open tenants need nothing.
    check.check(None, "open", "s")


def test_remembered_tokens_are_bounded(clock: Clock) -> None:
    check = TokenCheck({"live": KEYS}.get, clock=clock, remember=50)
    for i in range(500):
        assert check.valid(token(clock, stream=f"s{i}"), "live", f"s{i}")
    assert len(check._ok) <= 50
