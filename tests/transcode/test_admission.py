"""Admission trims a ladder from the top instead of falling off a passthrough cliff."""

from __future__ import annotations

from transcode.admission import admit
from transcode.capacity import ladder_units
from transcode.config import Rendition, TranscodeConfig

LADDER = TranscodeConfig().ladder  # 720p, 480p, 360p: 1.0 unit
UNITS = {r.name: ladder_units([r]) for r in LADDER}


def names(ladder: list[Rendition]) -> list[str]:
    return [r.name for r in ladder]


def test_the_whole_ladder_when_it_fits() -> None:
    got = admit(LADDER, 1.0)
    assert got is not None and names(got.ladder) == ["720p", "480p", "360p"]
    assert not got.trimmed and abs(got.units - 1.0) < 1e-9


def test_480p_and_360p_when_720p_does_not_fit_with_the_source_on_top() -> None:
    got = admit(LADDER, 0.65)
    assert got is not None
    assert names(got.ladder) == ["source", "480p", "360p"]
    assert [name for name, _ in got.left_out] == ["720p"]
    assert "720p needs 0.59 transcode units; 0.65 were free" in got.left_out[0][1]
    assert abs(got.units - UNITS["480p"] - UNITS["360p"]) < 1e-9


def test_no_source_rung_unless_asked() -> None:
    got = admit(LADDER, 0.2, add_source=False)
    assert got is not None and names(got.ladder) == ["360p"]
    assert [name for name, _ in got.left_out] == ["720p", "480p"]


def test_nothing_fits_is_none() -> None:
    assert admit(LADDER, UNITS["360p"] - 0.01) is None


def test_a_profile_with_the_source_keeps_it_and_adds_none() -> None:
    ladder = [Rendition("source", codec="copy"), *LADDER]
    got = admit(ladder, 0.5)
    assert got is not None and names(got.ladder) == ["source", "480p", "360p"]


def test_copies_alone_always_fit() -> None:
    got = admit([Rendition("source", codec="copy")], 0.0)
    assert got is not None and got.units == 0 and not got.trimmed


def test_the_reserve_leaves_room_for_the_next_class() -> None:
    # 0.9 units free: the whole ladder does not fit; 480p+360p leaves 0.5, above the reserve.
    first = admit(LADDER, 0.9, reserve=0.3)
    assert first is not None and names(first.ladder) == ["source", "480p", "360p"]
    # 0.5 free: 480p+360p would leave 0.1, under the reserve; 360p alone leaves 0.35.
    second = admit(LADDER, 0.9 - first.units, reserve=0.3)
    assert second is not None and names(second.ladder) == ["source", "360p"]
    # The reason names the reserve, which is what kept 480p out.
    assert "0.30 stay free for the next class" in dict(second.left_out)["480p"]
    # 0.35 free: nothing keeps the reserve, so the reserve is given up for 360p.
    third = admit(LADDER, 0.9 - first.units - second.units, reserve=0.3)
    assert third is not None and names(third.ladder) == ["source", "360p"]
    assert "stay free" not in dict(third.left_out)["480p"]


def test_three_classes_on_two_cores_all_get_a_ladder() -> None:
    """What a 2-core node measures (0.65 to 1.0 units): three publishers, three ladders."""
    for capacity in (0.65, 0.8, 0.9, 1.0):
        free = capacity
        for _ in range(3):
            got = admit(LADDER, free, reserve=0.3)
            assert got is not None, capacity
            assert any(r.codec != "copy" for r in got.ladder)
            free -= got.units
        assert free >= -1e-9
