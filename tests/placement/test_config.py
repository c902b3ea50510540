"""The ``placement:`` section: defaults, validation, and the shipped file agreeing."""

from __future__ import annotations

from pathlib import Path

import pytest

from nearcast.config import SHIPPED_CONFIG, load
from placement.config import PlacementConfig
from settings import ConfigError, build, to_dict


def test_shipped_section_states_the_defaults() -> None:
    shipped = load(str(SHIPPED_CONFIG), environ={})
    assert to_dict(shipped.placement) == to_dict(PlacementConfig())


def test_every_shipped_key_has_a_comment() -> None:
    """Every key of every section, two levels deep, has a comment above it (section
    headers, and the fields of example list items documented above their list, excepted)."""
    previous = ""
    for line in SHIPPED_CONFIG.read_text().splitlines():
        stripped = line.strip()
        indent = len(line) - len(line.lstrip(" "))
        is_key = stripped and not stripped.startswith(("#", "- ")) and ":" in stripped
        if is_key and 0 < indent <= 4:
            assert previous.startswith("#"), f"no comment above {stripped!r}"
        if stripped:
            previous = stripped if indent else "#"  # a section header opens the section


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"url": "ftp://x"}, "'placement.url' must be empty or an http(s) URL"),
        ({"key_prefix": "a{b"}, "'placement.key_prefix' must not contain braces"),
        ({"liveness": {"ttl": 1}}, "'placement.liveness.ttl' must be at least twice"),
        (
            {"liveness": {"mass_disconnect_threshold": 0}},
            "'placement.liveness.mass_disconnect_threshold'",
        ),
        ({"degraded_headroom": 2}, "'placement.degraded_headroom' must be in (0, 1]"),
        ({"snapshot_max_age": 0.1}, "'placement.snapshot_max_age' must be at least"),
        ({"node_keys": {"k1": "short"}}, "'placement.node_keys.k1' secret must be at least 16"),
        ({"node_keys": {"a.b": "0123456789abcdef"}}, "'placement.node_keys.a.b' key id must"),
        ({"max_body_bytes": 10}, "'placement.max_body_bytes' must be 1024-16777216"),
    ],
)
def test_validation_names_the_key(data: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        build(PlacementConfig, data, prefix="placement")
    assert str(exc.value).startswith(message)


def test_environment_override(tmp_path: Path) -> None:
    cfg = load(None, environ={"NEARCAST_PLACEMENT_LIVENESS_TTL": "9"})
    assert cfg.placement.liveness.ttl == 9.0
