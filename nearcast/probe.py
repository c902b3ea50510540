"""``nearcast probe URL``: glass-to-glass latency as a viewer sees it.

The probe plays a stream the way a player would, decodes every video frame and
reads the clock stamp that ``nearcast publish --clock`` burnt into it
(:mod:`media.clock`). Latency is the wall-clock time a frame is shown minus the
time it was captured; both clocks are this machine's, or NTP-synchronised ones.

The players are :mod:`nearcast.hls_probe` (HLS and LL-HLS) and
:mod:`nearcast.whep_probe`; :mod:`nearcast.playout` decides when a frame is
shown and what counts as a stall. This module picks the player and is the command.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from typing import Any
from urllib.parse import urlsplit

from nearcast.playout import ProbeError, ProbeResult

log = logging.getLogger(__name__)


def detect_protocol(url: str) -> str:
    return "whep" if urlsplit(url).path.rstrip("/").endswith("/whep") else "hls"


async def probe(
    url: str,
    duration: float,
    protocol: str = "auto",
    rendition: str | None = None,
    hold_back: float | None = None,
) -> ProbeResult:
    """Probe ``url`` for ``duration`` seconds. ``protocol``: auto, hls, llhls or whep.

    ``hold_back`` (seconds behind the live edge to start HLS at) overrides the
    playlist's HOLD-BACK / PART-HOLD-BACK, to model players that sit closer or further.
    """
    if protocol == "auto":
        protocol = detect_protocol(url)
    # The players are imported when used: every other command starts without httpx,
    # aiortc and their decoders.
    if protocol == "whep":
        from nearcast.whep_probe import probe_whep

        return await probe_whep(url, duration)
    low = {"hls": None, "llhls": True, "hls-segments": False}.get(protocol)
    if protocol not in ("hls", "llhls", "hls-segments"):
        raise ValueError(f"unknown protocol {protocol!r}: auto, hls, hls-segments, llhls or whep")
    from nearcast.hls_probe import HlsProbe

    return await HlsProbe(
        url, duration, rendition=rendition, low_latency=low, hold_back=hold_back
    ).run()


def format_table(rows: list[dict[str, Any]]) -> str:
    head = (
        f"{'protocol':<13}{'rendition':<10}{'frames':>7}{'stamped':>8}"
        f"{'p50 ms':>9}{'p95 ms':>9}{'stalls':>7}{'stall s':>8}"
    )
    out = [head, "-" * len(head)]
    for s in rows:
        p50 = "-" if s["latency_p50_ms"] is None else f"{s['latency_p50_ms']:.0f}"
        p95 = "-" if s["latency_p95_ms"] is None else f"{s['latency_p95_ms']:.0f}"
        out.append(
            f"{s['protocol']:<13}{s['rendition'] or '-':<10}{s['frames']:>7}{s['stamped']:>8}"
            f"{p50:>9}{p95:>9}{s['stalls']:>7}{s['stall_seconds']:>8.2f}"
        )
    return "\n".join(out)


def _main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        result = asyncio.run(
            probe(args.url, args.duration, args.protocol, args.rendition, args.hold_back)
        )
    except (ProbeError, ValueError) as exc:
        print(f"nearcast probe: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    summary = result.summary()
    if args.json:
        print(json.dumps(summary))
    else:
        print(format_table([summary]))
        if not result.stamped:
            print("no clock stamps found: publish with `nearcast publish --clock`", file=sys.stderr)
    return 0 if result.stamped else 3


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser(
        "probe",
        help="measure glass-to-glass latency of a stream published with --clock",
        description=(
            "Play URL as a viewer (HLS, LL-HLS or WHEP), read the clock stamp of every frame "
            "and print the latency (p50, p95) and the stalls. Exits 0 with stamps, 3 when "
            "no frame carried one, 1 on an error."
        ),
        epilog="example: nearcast probe http://127.0.0.1:8080/live/class/whep --duration 20",
    )
    parser.add_argument(
        "url", metavar="URL", help="multivariant or media playlist URL, or a WHEP endpoint"
    )
    parser.add_argument(
        "--protocol",
        default="auto",
        choices=["auto", "hls", "hls-segments", "llhls", "whep"],
        help="auto: WHEP for URLs ending in /whep, else HLS, low-latency when the playlist "
        "offers parts (hls-segments forces whole segments, llhls insists on parts)",
    )
    parser.add_argument(
        "--duration", type=float, default=20.0, metavar="S", help="seconds to watch (default 20)"
    )
    parser.add_argument(
        "--rendition", metavar="NAME", help="HLS rendition to play (default: the lowest)"
    )
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object instead of a table"
    )
    parser.add_argument(
        "--hold-back",
        type=float,
        metavar="S",
        help="HLS: start S seconds behind the live edge instead of the playlist's HOLD-BACK "
        "(PART-HOLD-BACK for LL-HLS; by default 3 target durations / 3 part targets)",
    )
    parser.set_defaults(func=_main)
