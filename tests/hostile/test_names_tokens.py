"""Playback tokens tampered with on the wire: every spelling but the signed one is
refused with 403 and counted in ``playback_rejected_total{reason}``."""

from __future__ import annotations

from hostileutil import attack

from bench import attacks
from bench.attacks import Stage


def test_tampered_and_malleated_tokens(stage: Stage) -> None:
    n = len(attacks.tampered_tokens())
    # Two requests per token: the multivariant and the media playlist.
    attack(
        stage,
        "tampered and malleated playback tokens",
        attacks.tampered_playback,
        told=lambda seen: seen == {"403": 2 * n},
        counted=lambda r: r.refused("playback_rejected_total") == {"malformed": 6, "forged": 2},
    )


def test_the_untampered_token_plays(stage: Stage) -> None:
    """The control: the token the tampered ones came from is let through."""
    tok = attacks.play_token()
    with attacks.httpx.Client(base_url=stage.node.http, timeout=5) as c:
        assert c.get(f"/{attacks.CLASS}/index.m3u8", params={"token": tok}).status_code == 200
        assert c.get(f"/{attacks.CLASS}/index.m3u8").status_code == 403
