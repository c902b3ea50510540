"""The stream name rule: what may name a stream, and that nothing else does."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from media.names import MAX_STREAM_NAME, stream_name_problem


@pytest.mark.parametrize("name", ["class42", "teacher_A-1", "lecture.2026-12-06", "~x", "a" * 128])
def test_ordinary_names_pass(name: str) -> None:
    assert stream_name_problem(name) is None


@pytest.mark.parametrize(
    "name",
    [
        "",
        ".",
        "..",
        ".hidden",
        "a/b",
        "a\\b",
        "<img src=x onerror=alert(1)>",
        "a\r\nLocation: x",
        "a b",
        "é",
        "a?token=x",
        "a" * 129,
    ],
)
def test_hostile_names_are_refused_with_a_reason(name: str) -> None:
    problem = stream_name_problem(name)
    assert problem is not None and "stream name" in problem


@given(st.text(max_size=200))
def test_a_name_that_passes_is_a_safe_path_segment(name: str) -> None:
    if stream_name_problem(name) is None:
        assert 1 <= len(name) <= MAX_STREAM_NAME
        assert not name.startswith(".")
        assert all(c.isascii() and (c.isalnum() or c in "_-.~") for c in name)
