"""What a relay fetches from each upstream playlist (the pure cursor), and its credentials."""

from __future__ import annotations

import pytest

from distribute.access import TokenCheck
from distribute.relay.config import RelayConfig
from distribute.relay.cursor import Assemble, Cursor, Init, Part, Whole
from distribute.relay.manager import Credentials
from distribute.relay.playlist import MediaPlaylist, PartRef, SegmentRef
from settings import ConfigError
from tokens import TokenError, sign


def parts(msn: int, n: int) -> tuple[PartRef, ...]:
    return tuple(PartRef(msn, i, f"{msn}.{i}.m4s", 0.25, i == 0) for i in range(n))


def playlist(first: int, last: int, trailing: int, *, listed: int = 2) -> MediaPlaylist:
    """Segments first..last complete (parts listed for the newest ``listed``), and
    ``trailing`` parts of last + 1."""
    segs = [
        SegmentRef(
            m, f"{m}.m4s", 1.0, map_uri="init-1.mp4", parts=parts(m, 4) if m > last - listed else ()
        )
        for m in range(first, last + 1)
    ]
    return MediaPlaylist(
        sequence=first,
        target=1.0,
        part_target=0.25,
        segments=segs,
        trailing=list(parts(last + 1, trailing)),
        trailing_map="init-1.mp4",
        preload_hint=(last + 1, trailing),
    )


def kinds(steps: list[object]) -> list[str]:
    out = []
    for s in steps:
        if isinstance(s, Init):
            out.append(f"init {s.uri}")
        elif isinstance(s, Whole):
            out.append(f"whole {s.segment.msn}")
        elif isinstance(s, Part):
            out.append(f"part {s.part.msn}.{s.part.index}")
        elif isinstance(s, Assemble):
            out.append(f"assemble {s.segment.msn}")
    return out


def run(c: Cursor, pl: MediaPlaylist) -> list[str]:
    steps = c.plan(pl)
    for s in steps:
        c.advance(s, b"x")
    return kinds(steps)


def test_starts_three_segments_back_then_follows_part_by_part() -> None:
    c = Cursor()
    assert run(c, playlist(10, 20, 2)) == [
        "init init-1.mp4",
        "whole 18",
        "whole 19",
        "whole 20",
        "part 21.0",
        "part 21.1",
    ]
    assert c.next_request(playlist(10, 20, 2)) == (21, 2)
    # The blocking reload returns with the next part, then with the segment complete.
    assert run(c, playlist(10, 20, 3)) == ["part 21.2"]
    assert run(c, playlist(10, 21, 1)) == ["part 21.3", "assemble 21", "part 22.0"]
    assert c.next_request(playlist(10, 21, 1)) == (22, 1)


def test_a_segment_assembled_from_its_parts_is_their_concatenation() -> None:
    c = Cursor(start=21)
    pl = playlist(10, 20, 4)
    for s in c.plan(pl):
        c.advance(s, f"[{s.part.index}]".encode() if isinstance(s, Part) else b"")
    (done,) = [s for s in c.plan(playlist(10, 21, 0)) if isinstance(s, Assemble)]
    assert c.advance(done) == b"[0][1][2][3]"


def test_a_new_generation_starts_at_its_first_segment() -> None:
    c = Cursor(start=15)
    assert run(c, playlist(10, 20, 0))[:3] == ["init init-1.mp4", "whole 15", "whole 16"]


def test_a_later_rendition_starts_no_earlier_than_the_first() -> None:
    assert run(Cursor(floor=20), playlist(10, 20, 0)) == ["init init-1.mp4", "whole 20"]


def test_a_relay_that_fell_out_of_the_window_goes_on_from_its_oldest_segment() -> None:
    c = Cursor()
    run(c, playlist(10, 20, 2))
    steps = run(c, playlist(30, 40, 0, listed=2))
    assert steps[0] == "whole 30" and c.skipped == 30 - 21
    # Parts of 21 were fetched, but 21 is gone: nothing of it is fed twice.
    assert "whole 21" not in steps


def test_parts_no_longer_listed_are_completed_with_the_whole_segment() -> None:
    c = Cursor(start=21)
    run(c, playlist(10, 20, 2))
    assert run(c, playlist(10, 24, 0, listed=2))[:1] == ["whole 21"]


def test_a_new_init_is_fetched_when_the_map_changes() -> None:
    c = Cursor()
    run(c, playlist(10, 20, 0))
    pl = playlist(10, 21, 0)
    pl.segments[-1] = SegmentRef(21, "21.m4s", 1.0, map_uri="init-2.mp4", parts=parts(21, 4))
    assert run(c, pl) == ["init init-2.mp4", "whole 21"]


def test_without_parts_segments_are_polled() -> None:
    pl = playlist(10, 20, 0, listed=0)
    pl.part_target = 0.0
    c = Cursor()
    assert run(c, pl) == ["init init-1.mp4", "whole 18", "whole 19", "whole 20"]
    assert c.next_request(pl) is None


def test_parts_fed_out_of_order_are_refused() -> None:
    c = Cursor(start=21)
    c.plan(playlist(10, 20, 2))
    with pytest.raises(ValueError, match="out of order"):
        c.advance(Part(parts(21, 2)[1]), b"x")


# -- relay credentials ---------------------------------------------------------------


KEYS = {"r1": "relay-key-0123456789abcdef"}
PLAY_KEYS = {"p1": "play-key-0123456789abcdef"}


def test_a_relay_credential_opens_any_guarded_stream_it_names_and_nothing_else() -> None:
    now = [1000.0]
    cred = Credentials(RelayConfig(keys=KEYS, credential_lifetime=60), clock=lambda: now[0])
    token = cred.token("vip", "cam")
    assert token is not None
    check = TokenCheck(lambda t: PLAY_KEYS, clock=lambda: now[0], relay_keys=KEYS)
    check.check(token, "vip", "cam")
    with pytest.raises(TokenError) as exc:
        check.check(token, "vip", "other")
    assert exc.value.reason == "wrong_stream"
    # Not a viewer's token: a node without relay keys refuses it.
    with pytest.raises(TokenError) as exc:
        TokenCheck(lambda t: PLAY_KEYS, clock=lambda: now[0]).check(token, "vip", "cam")
    assert exc.value.reason == "unknown_key"
    # A viewer's token signed with a relay key is not a relay credential.
    viewer = sign(KEYS["r1"], "r1", "play", "vip", "cam", 2000)
    with pytest.raises(TokenError):
        check.check(viewer, "vip", "cam")
    # Renewed at half its lifetime; expired ones are refused.
    now[0] += 20
    assert cred.token("vip", "cam") == token
    now[0] += 15
    assert cred.token("vip", "cam") != token
    now[0] += 30
    with pytest.raises(TokenError) as exc:
        TokenCheck(lambda t: PLAY_KEYS, clock=lambda: now[0], relay_keys=KEYS).check(
            token, "vip", "cam"
        )
    assert exc.value.reason == "expired"


def test_without_keys_a_relay_sends_no_credential() -> None:
    assert Credentials(RelayConfig()).token("live", "cam") is None


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"idle_timeout": 0}, "'idle_timeout' must be greater than zero"),
        ({"keys": {"r1": "short"}}, "'keys.r1' secret must be at least 16 characters"),
        ({"keys": KEYS, "key_id": "r9"}, "'key_id' must name one of 'keys'"),
        ({"credential_lifetime": 5}, "'credential_lifetime' must be between 30 and 86400"),
        ({"first_wait": 0}, "'first_wait' must be greater than 0"),
    ],
)
def test_relay_settings_errors_name_the_key(kw: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        RelayConfig(**kw)  # type: ignore[arg-type]
