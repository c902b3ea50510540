"""What one hostile client costs the shipped node while a class is playing.

Starts ``nearcast node`` (the shipped command, default limits), publishes a class
into it with ``nearcast publish`` and reads its ladder, then runs each attack from
loopback in turn (the attacks and measurements live in :mod:`bench.attacks`, shared
with ``tests/hostile`` and ``bench.soak``). Throughout, ``/healthz`` is probed every
50 ms: its latency is how long the node's event loop was stalled for everyone else.
Per attack it prints the probe's p99 and max, the node's RSS growth, the segments the
class listed meanwhile (about one per 2 s of attack window; a stalled node lists
none), any gap the class's reader saw and the refusals its metrics counted. The
attacks are those of ``tests/hostile`` that need no set-up of their own: RTMP, HTTP,
publishes from one address, bad names and tampered playback tokens (the class's
tenant guards playback). Each runs from its own loopback address (127.0.0.0/8 is all
loopback), so that one attack's refusals do not meet the next one's.

    python -m bench.hostile
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
from pathlib import Path

from bench import attacks
from bench.attacks import (
    RTMP_ATTACKS,
    Result,
    Stage,
    bad_names,
    big_sdp,
    many_headers,
    random_publishes,
    slowloris,
    tampered_playback,
)

METRICS = ("ingest_rejected_total", "http_rejected_total", "playback_rejected_total")
ATTACKS = {
    **RTMP_ATTACKS,
    "300 slowloris HTTP connections": slowloris,
    "20,000 headers": many_headers,
    "100 MB SDP offer to WHIP": big_sdp,
    "200 publishes to random names": random_publishes,
    "names <img ...>, .. and .": bad_names,
    "tampered and malleated tokens": tampered_playback,
}


def run(names: list[str]) -> list[Result]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp, Stage(Path(tmp), guard_playback=True) as stage:
        for i, name in enumerate(names):
            # Socket attacks connect from 127.0.0.(10+i); publishes run FFmpeg from 127.0.0.1.
            attacks.SOURCE_ADDRESS = f"127.0.0.{10 + i}"
            rows.append(stage.attack(name, ATTACKS[name]))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--attack", action="append", choices=list(ATTACKS), help="default: all")
    args = parser.parse_args()
    rows = run(args.attack or list(ATTACKS))
    print(f"{'attack':34} {'p99 ms':>7} {'max ms':>7} {'RSS MB':>7} {'segs':>5}  refused")
    for r in rows:
        refused = {
            metric: r.refused(metric)
            for metric in (
                "ingest_rejected_total",
                "http_rejected_total",
                "playback_rejected_total",
            )
            if r.refused(metric)
        }
        print(
            f"{r.attack:34} {r.healthz_p99_ms:>7} {r.healthz_max_ms:>7} "
            f"{r.rss_growth_mb:>7} {r.segments:>5}  {refused} {' '.join(r.gaps)}"
        )
    print(json.dumps({"hostile": [dataclasses.asdict(r) for r in rows]}))


if __name__ == "__main__":
    main()
