"""What one hostile RTMP client costs the shipped node while a class is playing.

Starts ``nearcast node`` (the shipped command, default limits), publishes a class
into it with ``nearcast publish`` and reads its ladder, then runs each attack from
loopback in turn (the attacks and measurements live in :mod:`bench.attacks`, shared
with ``tests/hostile`` and ``bench.soak``). Throughout, ``/healthz`` is probed every
50 ms: its latency is how long the node's event loop was stalled for everyone else.
Per attack it prints the probe's p99 and max, the node's RSS growth, the segments the
class listed meanwhile (about one per 2 s of attack window; a stalled node lists
none), any gap the class's reader saw and the refusals counted in
``ingest_rejected_total``.

    python -m bench.hostile
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
from pathlib import Path

from bench.attacks import RTMP_ATTACKS, Result, Stage


def run(names: list[str]) -> list[Result]:
    with tempfile.TemporaryDirectory() as tmp, Stage(Path(tmp)) as stage:
        return [stage.attack(name, RTMP_ATTACKS[name]) for name in names]


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--attack", action="append", choices=list(RTMP_ATTACKS), help="default: all"
    )
    args = parser.parse_args()
    rows = run(args.attack or list(RTMP_ATTACKS))
    print(f"{'attack':34} {'p99 ms':>7} {'max ms':>7} {'RSS MB':>7} {'segs':>5}  refused")
    for r in rows:
        print(
            f"{r.attack:34} {r.healthz_p99_ms:>7} {r.healthz_max_ms:>7} "
            f"{r.rss_growth_mb:>7} {r.segments:>5}  {r.refused()} {' '.join(r.gaps)}"
        )
    print(json.dumps({"hostile": [dataclasses.asdict(r) for r in rows]}))


if __name__ == "__main__":
    main()
