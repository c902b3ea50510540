"""Many-inputs fuzz of the RTMP parsers, seeded from the committed corpus.

CI (``CI=true``) runs at least 100,000 mutated inputs; locally 20,000 keep the
suite fast. ``python -m bench.fuzz_rtmp --seconds 600`` runs the same loop longer.
"""

from __future__ import annotations

import os
import tracemalloc
from pathlib import Path

import pytest

from bench import fuzz_rtmp
from ingest.rtmp import amf0, flv
from ingest.rtmp.chunk import ChunkReader
from ingest.rtmp.exceptions import RtmpProtocolError
from ingest.rtmp.session import MediaReceived, PublishStopped, ServerSession

CI = os.environ.get("CI", "").lower() == "true"


def test_corpus_is_valid_and_small() -> None:
    files = sorted(fuzz_rtmp.CORPUS.glob("*.bin"))
    assert files and sum(f.stat().st_size for f in files) < 200_000
    chunk, amf, tags = fuzz_rtmp.load_corpus()
    for data in chunk:
        assert ChunkReader().feed(data)
    for data in amf:
        assert amf0.decode(data)
    for data in tags:
        parse = flv.parse_video if data[0] == 9 else flv.parse_audio
        assert parse(0, data[1:]) is not None


def test_corpus_is_what_the_seeds_write() -> None:
    """``--write-corpus`` output is committed: a seed change must regenerate it."""
    for name, data in fuzz_rtmp.seed_streams().items():
        assert (fuzz_rtmp.CORPUS / name).read_bytes() == data, name


@pytest.mark.parametrize("name", ["avc-aac", "hevc", "av1-opus"])
def test_publish_seeds_reach_media(name: str) -> None:
    """The publish seeds go through connect, publish and every tag to a media packet."""
    session = ServerSession(handshake_random=bytes(1528))
    session.receive_data(fuzz_rtmp.HANDSHAKE)
    events = session.receive_data(fuzz_rtmp.publish_stream(fuzz_rtmp.PUBLISHES[name]))
    session.accept_connect()
    events += session.receive_data(b"")
    session.accept_publish(1)
    events += session.receive_data(b"")
    packets = [e.packet for e in events if isinstance(e, MediaReceived)]
    expected = [
        flv.parse_video(0, b) if t == 9 else flv.parse_audio(0, b)
        for t, b in fuzz_rtmp.PUBLISHES[name]
    ]
    assert [p.codec for p in packets] == [p.codec for p in expected if p is not None]
    assert any(p.config for p in packets) and any(not p.config for p in packets)
    assert isinstance(events[-1], PublishStopped)


def test_corpus_replays_without_crash() -> None:
    """Every committed seed, regression inputs included, through every target."""
    for path in sorted(fuzz_rtmp.CORPUS.glob("*.bin")):
        fuzz_rtmp.replay(path.read_bytes(), range(4))


def test_delete_stream_of_nan_is_a_protocol_error() -> None:
    """Regression (found by the session fuzzer): ``deleteStream(NaN)`` raised a bare
    ValueError from ``int()``, which the adapter logs as a handler crash."""
    session = ServerSession(handshake_random=bytes(1528))
    session.receive_data(fuzz_rtmp.HANDSHAKE)
    data = (fuzz_rtmp.CORPUS / "chunk-deletestream-nan.bin").read_bytes()
    session.receive_data(data)
    session.accept_connect()
    with pytest.raises(RtmpProtocolError, match="deleteStream"):
        session.receive_data(b"")


def test_many_inputs(tmp_path: Path) -> None:
    count = 100_000 if CI else 20_000
    counts = fuzz_rtmp.fuzz(count=count, seed=1234, crash_dir=tmp_path)
    print(f"fuzzed {count} inputs: {counts}")
    assert sum(counts[t] for t in fuzz_rtmp.TARGETS) == count
    assert counts["chunk"] + counts["amf0"] >= count * 5 // 8
    # Mutated publishes get through connect and publish into the FLV tag parser and
    # out as media packets; before, no session input got past connect.
    assert counts["published"] >= counts["session"] // 20
    assert counts["flv_reached"] >= counts["session"] // 50
    assert counts["media"] > counts["flv_reached"]
    assert not list(tmp_path.iterdir())


def test_memory_stays_bounded() -> None:
    tracemalloc.start()
    try:
        fuzz_rtmp.fuzz(count=2_000, seed=99)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Inputs are a few KB and messages are capped at 64 KiB; a leak or an
    # allocation driven by a hostile length field would show up far above this.
    assert peak < 16 * 1024 * 1024
