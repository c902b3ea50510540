"""Isolation under bad input: eight publishers stay gap-free while a ninth connection fuzzes.

Eight Debian ``ffmpeg`` CLI processes publish over RTMP (passed through, so two cores
cope); meanwhile one connection at a time sends mutated chunk streams (after a valid
handshake) or raw random bytes, reconnecting each time the node drops it. Every
stream must keep producing segments with contiguous sequence numbers, no
discontinuity or gap, and media time that keeps up with the wall clock.
"""

from __future__ import annotations

import random
import socket
import subprocess
import threading
import time
from collections.abc import Iterator

import m3u8
import pytest
from nodeutil import SMALL, NodeProcess, require_binary, wait_for

from bench.fuzz_rtmp import HANDSHAKE, load_corpus, mutate
from bench.ingest import ffmpeg_push

STREAMS = [f"iso{i}" for i in range(8)]
SEGMENTS_UNDER_FUZZ = 5
# Ingest statistics are for the operator.
OPERATOR = "operator-secret-0123"
AUTH = {"authorization": f"Bearer {OPERATOR}"}


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    n = NodeProcess(
        tmp_path_factory.mktemp("iso") / "node.log",
        NEARCAST_TRANSCODE_LADDER="[{name: source, codec: copy}]",
        NEARCAST_TRANSCODE_CAPACITY_UNITS="100",
        NEARCAST_HLS_SEGMENT_DURATION="1",
        NEARCAST_HLS_WINDOW="60",
        NEARCAST_RTMP_HANDSHAKE_TIMEOUT="2",
        NEARCAST_INGEST_OPERATOR_TOKEN=OPERATOR,
        # Publishers and fuzzer share loopback, and fuzzed streams may publish too.
        NEARCAST_INGEST_MAX_PUBLISH_ATTEMPTS_PER_IP="0",
    )
    yield n
    n.stop()


def _fuzz(port: int, stop: threading.Event, counts: dict[str, int]) -> None:
    rng = random.Random(4)
    chunks, amf, tags = load_corpus()
    pool = chunks + amf + tags
    while not stop.is_set():
        if rng.random() < 0.2:
            payload = rng.randbytes(rng.randint(1, 8192))
        else:
            payload = HANDSHAKE + mutate(rng, rng.choice(chunks), pool)
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.sendall(payload)
                s.shutdown(socket.SHUT_WR)
                while s.recv(65536):  # until the node closes it
                    pass
            counts["connections"] += 1
        except OSError:
            counts["errors"] += 1


def _playlist(node: NodeProcess, stream: str) -> m3u8.M3U8 | None:
    r = node.get(f"/live/{stream}/source/index.m3u8")
    return m3u8.loads(r.text) if r.status_code == 200 else None


def _count(node: NodeProcess, stream: str) -> int:
    pl = _playlist(node, stream)
    return len(pl.segments) if pl is not None else 0


def _media_seconds(pl: m3u8.M3U8) -> float:
    return sum(s.duration for s in pl.segments if s.uri)


def test_eight_publishers_survive_a_fuzzing_ninth(node: NodeProcess) -> None:
    ff = require_binary("ffmpeg")
    procs = [
        ffmpeg_push(SMALL, node.rtmp(f"live/{s}"), ffmpeg=ff, stderr=subprocess.PIPE)
        for s in STREAMS
    ]
    stop = threading.Event()
    counts = {"connections": 0, "errors": 0}
    fuzzer = threading.Thread(target=_fuzz, args=(node.rtmp_port, stop, counts), daemon=True)
    try:
        for s in STREAMS:
            wait_for(lambda s=s: _count(node, s) >= 2, 60, f"{s} live")
        before = {s: _playlist(node, s) for s in STREAMS}
        t0 = time.monotonic()
        fuzzer.start()
        # Fuzz until every stream has produced SEGMENTS_UNDER_FUZZ more segments (the
        # goals are all set now: set one by one, the streams would be waited for in turn).
        goals = {s: _count(node, s) + SEGMENTS_UNDER_FUZZ for s in STREAMS}
        for s, goal in goals.items():
            wait_for(
                lambda s=s, goal=goal: _count(node, s) >= goal, 40, f"{s} to advance under fuzzing"
            )
        stop.set()
        fuzzer.join(15)
        elapsed = time.monotonic() - t0
        assert counts["connections"] >= 5, counts
        # A second publisher of a live stream is refused (takeover is off by default).
        dup = subprocess.run(
            [ff, "-hide_banner", "-loglevel", "error", "-re", "-t", "2", "-i", SMALL]
            + ["-c", "copy", "-f", "flv", node.rtmp("live/iso0")],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=30,
        )
        assert dup.returncode != 0
        assert b"already being published" in dup.stderr, dup.stderr
        assert 'ingest_rejected_total{reason="duplicate"} 1.0' in node.get("/metrics").text
        for s, p in zip(STREAMS, procs, strict=True):
            assert p.poll() is None, f"publisher {s} exited with {p.returncode}"
            pl = _playlist(node, s)
            assert pl is not None
            text = pl.dumps()
            assert "#EXT-X-DISCONTINUITY" not in text and "#EXT-X-GAP" not in text, text
            # Whole segments (an LL-HLS playlist ends with the parts of the next one).
            whole = [seg for seg in pl.segments if seg.uri]
            numbers = [pl.media_sequence + i for i in range(len(whole))]
            uris = [int(seg.uri.split(".")[0]) for seg in whole]
            assert uris == numbers, f"{s}: segment numbers not contiguous: {uris}"
            for seg in whole:
                assert seg.duration <= pl.target_duration + 0.5, f"{s}: {seg.duration} s segment"
            gained = _media_seconds(pl) - _media_seconds(before[s])  # type: ignore[arg-type]
            assert gained >= elapsed - 2 * pl.target_duration, (s, gained, elapsed)
            stats = node.client.get(f"/v1/streams/live/{s}", headers=AUTH).json()["ingest"]
            # Nothing is dropped but late packets (DTS behind), which no muxer could take.
            assert stats["dropped_packets"] == stats["late_packets"], stats
        metrics = node.get("/metrics").text
        assert 'ingest_rejected_total{reason="protocol"}' in metrics
        log = node.log()
        assert "Traceback" not in log and "stream refused" not in log, log
    finally:
        stop.set()
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
