"""HTTP attacks on the node's media port while a class plays.

This module's node sets a shorter ``http.header_timeout`` so that the slowloris attack
fits in the test's time:

* a request whose headers do not end within ``http.header_timeout`` seconds gets 408
  or is closed;
* a request with 20,000 header lines gets 431;
* a 100 MB SDP offer to WHIP gets 413 before the node reads the body.

Refusals are counted in ``http_rejected_total{reason}``: a body whose Content-Length is
over ``http.max_body_bytes`` is refused by the HTTP layer before WHIP sees it.
"""

from __future__ import annotations

from functools import partial

import pytest
from hostileutil import attack

from bench import attacks
from bench.attacks import Stage

HEADER_TIMEOUT = 5.0


@pytest.fixture(scope="module")
def stage_env() -> dict[str, str]:
    return {"NEARCAST_HTTP_HEADER_TIMEOUT": str(HEADER_TIMEOUT)}


def test_slowloris_300_connections(stage: Stage) -> None:
    # Every connection is ended by the node within the header timeout (plus the
    # attacker's 1 s polling and scheduling slack), well before the attack gives up.
    attack(
        stage,
        "HTTP slowloris x300",
        partial(attacks.slowloris, count=300, seconds=HEADER_TIMEOUT + 5.0),
        told=lambda seen: seen["open"] == 0 and seen["408"] + seen["closed"] + seen["reset"] == 300,
        counted=lambda r: r.refused("http_rejected_total").get("header_timeout", 0) >= 300,
    )


def test_20000_headers(stage: Stage) -> None:
    attack(
        stage,
        "20,000 request headers",
        attacks.many_headers,
        told=lambda seen: seen == {"431": 1},
        counted=lambda r: r.refused("http_rejected_total").get("headers", 0) == 1,
    )


def test_100mb_sdp_to_whip(stage: Stage) -> None:
    attack(
        stage,
        "100 MB SDP offer to WHIP",
        attacks.big_sdp,
        told=lambda seen: seen["413"] == 1 and seen["answered_under_16mb"] == 1,
        counted=lambda r: r.refused("http_rejected_total").get("body", 0) == 1,
    )
