"""Many-inputs fuzz of the RTMP parsers, seeded from the committed corpus.

CI (``CI=true``) runs at least 100,000 mutated inputs; locally 20,000 keep the
suite fast. ``python -m bench.fuzz_rtmp --seconds 600`` runs the same loop longer.
"""

from __future__ import annotations

import os
import tracemalloc

from bench import fuzz_rtmp
from ingest.rtmp import amf0
from ingest.rtmp.chunk import ChunkReader

CI = os.environ.get("CI", "").lower() == "true"


def test_corpus_is_valid_and_small() -> None:
    files = sorted(fuzz_rtmp.CORPUS.glob("*.bin"))
    assert files and sum(f.stat().st_size for f in files) < 200_000
    chunk, amf = fuzz_rtmp.load_corpus()
    for data in chunk:
        assert ChunkReader().feed(data)
    for data in amf:
        assert amf0.decode(data)


def test_many_inputs() -> None:
    count = 100_000 if CI else 20_000
    counts = fuzz_rtmp.fuzz(count=count, seed=1234)
    print(f"fuzzed {sum(counts.values())} inputs: {counts}")
    assert sum(counts.values()) == count
    assert counts["chunk"] + counts["amf0"] >= count * 7 // 8


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
