"""Admission on a fresh node: N classes published at once, which rungs each gets, and
whether every rung keeps up.

Run: ``python -m bench.admission [--publishers N] [--settle S] [--seconds S]``

In one run, on this machine:

1. ``nearcast node`` starts with its own defaults (``transcode.capacity_units: 0``, so
   it calibrates before it opens its ports) and the calibration cache off, so the
   figure is measured now. The time from start to open ports is reported.
2. N publishers (``nearcast publish`` of the sample lecture, 720p, looped in real
   time) start a second apart, as a class's worth of teachers would.
3. After ``--settle`` seconds, ``GET /v1/streams`` tells each stream's renditions and
   what admission left out, and why.
4. Over the next ``--seconds``, every rendition's media playlist is read at both ends
   of the window: the segments listed in it, from media sequence numbers, against the
   live rate (window / segment duration). The node's degradation counters tell whether
   any stream had to degrade after admission.

The issue's claim checked here: on a 2-core machine three publishers all get a ladder
of some height, and what they get keeps up. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from bench.fanout import SAMPLE, fetch, start_publish
from nearcast.media_playlist import parse_media_playlist

TENANT = "live"


def listed(port: int, stream: str) -> dict[str, tuple[int, float]]:
    """Per rendition of ``stream``: (media sequence number after its newest segment,
    target duration)."""
    out: dict[str, tuple[int, float]] = {}
    master = fetch(port, f"/{TENANT}/{stream}/index.m3u8").decode()
    for uri in (x for x in master.splitlines() if x and not x.startswith("#")):
        pl = parse_media_playlist(fetch(port, f"/{TENANT}/{stream}/{uri}").decode())
        out[uri.split("/")[0]] = (pl.next_msn, pl.target)
    return out


def samples(text: str, name: str) -> dict[str, float]:
    """The samples called ``name`` in Prometheus text, by their labels."""
    return {
        ",".join(f'{k}="{v}"' for k, v in sample.labels.items()): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    }


def measure(publishers: int, settle: float, seconds: float) -> dict[str, Any]:
    from nearcast.launch import NodeSubprocess

    work = Path(tempfile.mkdtemp(prefix="admission-"))
    started = time.monotonic()
    node = NodeSubprocess(work / "node.log", env={"NEARCAST_TRANSCODE_CALIBRATION_CACHE": "false"})
    ports_open = time.monotonic() - started
    stop = threading.Event()
    threads: list[threading.Thread] = []
    names = [f"class{i + 1}" for i in range(publishers)]
    try:
        for name in names:
            threads.append(start_publish(node.rtmp(f"{TENANT}/{name}"), stop))
            time.sleep(1.0)
        time.sleep(settle)
        streams = {
            s["stream"]: s
            for s in json.loads(fetch(node.http_port, "/v1/streams"))["streams"]
            if s["stream"] in names
        }
        before = {name: listed(node.http_port, name) for name in names}
        t0 = time.monotonic()
        time.sleep(seconds)
        after = {name: listed(node.http_port, name) for name in names}
        window = time.monotonic() - t0
        metrics = fetch(node.http_port, "/metrics").decode()
    finally:
        stop.set()
        for t in threads:
            t.join(15)
        node.stop()
        shutil.rmtree(work, ignore_errors=True)

    rows = []
    for name in names:
        s = streams.get(name, {})
        rungs = {}
        for rendition, (end, target) in after[name].items():
            start = before[name].get(rendition, (end, target))[0]
            expected = window / target if target else 0.0
            rungs[rendition] = {
                "segments": end - start,
                "expected": round(expected, 2),
                "keeps_up": end - start >= expected - 1,
            }
        rows.append(
            {
                "stream": name,
                "profile": s.get("profile"),
                "renditions": list(rungs),
                "left_out": s.get("left_out", []),
                "rungs": rungs,
                "keeps_up": bool(rungs) and all(r["keeps_up"] for r in rungs.values()),
            }
        )
    capacity = samples(metrics, "transcode_capacity_units")
    degradations = samples(metrics, "transcode_degradations_total")
    return {
        "publishers": publishers,
        "ports_open_seconds": round(ports_open, 2),
        "capacity_units": next(iter(capacity.values()), None),
        "window_seconds": round(window, 2),
        "streams": rows,
        "degradations": degradations,
        "all_transcoded": all(any(r != "source" for r in row["renditions"]) for row in rows),
        "all_keep_up": all(row["keeps_up"] for row in rows),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    ap.add_argument("--publishers", type=int, default=3, help="classes published (default 3)")
    ap.add_argument("--settle", type=float, default=20.0, help="seconds before the rungs are read")
    ap.add_argument("--seconds", type=float, default=20.0, help="window for keeping up")
    args = ap.parse_args()
    if not SAMPLE.exists():
        print(f"bench.admission: {SAMPLE} is missing", file=sys.stderr)
        return 1
    f = measure(args.publishers, args.settle, args.seconds)
    print(
        f"node: {f['capacity_units']} ladder units calibrated, ports open after"
        f" {f['ports_open_seconds']} s; {f['publishers']} publishers"
    )
    print(f"{'stream':<8} {'renditions':<24} {'segments / due':<34} left out")
    for row in f["streams"]:
        listed_ = ", ".join(
            f"{k} {r['segments']}/{r['expected']:.0f}" for k, r in row["rungs"].items()
        )
        left = "; ".join(f"{x['rendition']}: {x['reason']}" for x in row["left_out"]) or "-"
        print(f"{row['stream']:<8} {', '.join(row['renditions']):<24} {listed_:<34} {left}")
    steps = ", ".join(f"{k} {v:.0f}" for k, v in f["degradations"].items())
    print(f"degradation steps: {steps or 'none'}")
    print(
        f"every class transcoded: {'yes' if f['all_transcoded'] else 'NO'};"
        f" every rendition keeps up: {'yes' if f['all_keep_up'] else 'NO'}"
    )
    print(json.dumps(f))
    return 0


if __name__ == "__main__":
    sys.exit(main())
