from __future__ import annotations

import pytest

from nearcast.config import SHIPPED_CONFIG, Config, load
from settings import ConfigError, env_keys, to_dict


def test_shipped_file_equals_builtin_defaults() -> None:
    assert to_dict(load(str(SHIPPED_CONFIG), environ={})) == to_dict(load(environ={}))


def test_every_key_in_shipped_file_has_a_comment() -> None:
    """Each run of keys (a key, or keys that share one explanation) opens with a comment."""
    lines = SHIPPED_CONFIG.read_text().splitlines()
    for i, line in enumerate(lines):
        stripped = line.strip()
        if not line.startswith(" ") or stripped.startswith("#") or not stripped:
            continue  # section headers are named by the keys inside them
        prev = lines[i - 1]
        indent = len(line) - len(line.lstrip())
        prev_indent = len(prev) - len(prev.lstrip())
        ok = (
            prev.strip().startswith("#")
            or prev.strip().startswith("- ")
            or stripped.startswith("- ")
            or (prev_indent == indent and ":" in prev)
            # a nested mapping is described by the comment on its parent key
            or (prev.rstrip().endswith(":") and prev_indent < indent)
        )
        assert ok, f"line {i + 1} ({stripped!r}) has no comment above it"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"NEARCAST_HLS_WINDOW": "1"}, "'hls.window' must be between 3 and 100"),
        ({"NEARCAST_HLS_SEGMENT_DURATION": "0"}, "'hls.segment_duration' must be between"),
        ({"NEARCAST_RTMP_TENANTS": "[]"}, "'rtmp.tenants' must name at least one tenant"),
        ({"NEARCAST_RTMP_CHUNK_SIZE": "big"}, "'rtmp.chunk_size' must be an integer"),
        ({"NEARCAST_NODE_TIER": "moon"}, "'node.tier' must be edge, mec or cloud"),
        ({"NEARCAST_NOPE": "1"}, "NEARCAST_NOPE names no configuration key"),
        (
            {"NEARCAST_TRANSCODE_LADDER": "[{name: a, width: 3, height: 2, video_bitrate: 1}]"},
            "'transcode.ladder[0].width' must be a positive even number",
        ),
    ],
)
def test_errors_name_the_key(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load(environ=env)


def test_env_overrides_any_key() -> None:
    cfg = load(environ={"NEARCAST_HLS_WINDOW": "8", "NEARCAST_RTMP_LISTEN": "127.0.0.1:0"})
    assert cfg.hls.window == 8
    assert cfg.rtmp.listen == "127.0.0.1:0"
    assert "NEARCAST_TRANSCODE_AUDIO_BITRATE" in env_keys(Config)


def test_a_string_key_takes_its_variable_verbatim() -> None:
    # Parsed as YAML these would be a number, a truncated secret, an alias error and a bool.
    cfg = load(
        environ={
            "NEARCAST_PLACEMENT_NODE_TOKEN": "0123456789",
            "NEARCAST_PLACEMENT_OPERATOR_TOKEN": "s3cret #not-a-comment",
            "NEARCAST_HTTP_CORS_ORIGIN": "*",
            "NEARCAST_NODE_ISP": "yes",
        }
    )
    assert cfg.placement.node_token == "0123456789"
    assert cfg.placement.operator_token == "s3cret #not-a-comment"
    assert cfg.http.cors_origin == "*"
    assert cfg.node.isp == "yes"
    # Other keys are still YAML: numbers, lists, mappings.
    cfg = load(environ={"NEARCAST_HLS_WINDOW": "8", "NEARCAST_HLS_TENANTS": "{school: llhls}"})
    assert cfg.hls.window == 8 and cfg.hls.tenants == {"school": "llhls"}


def test_unknown_key_in_file_is_named(tmp_path) -> None:  # type: ignore[no-untyped-def]
    p = tmp_path / "c.yml"
    p.write_text("hls:\n  windoe: 3\n")
    with pytest.raises(ConfigError, match="'hls.windoe' is not a known key"):
        load(str(p), environ={})


def test_hls_delivery_per_tenant() -> None:
    from distribute.config import HlsConfig

    hls = HlsConfig(tenants={"school": "llhls", "tv": "ts", "vod": "fmp4"})
    assert (hls.segment_format, hls.low_latency) == ("fmp4", True)  # LL-HLS by default
    assert hls.for_tenant("other") is hls
    assert hls.for_tenant("school") is hls  # the node's own delivery already
    tv = hls.for_tenant("tv")
    assert (tv.segment_format, tv.low_latency, tv.tenants) == ("ts", False, {})
    vod = hls.for_tenant("vod")
    assert (vod.segment_format, vod.low_latency) == ("fmp4", False)
    with pytest.raises(ValueError, match=r"tenants\.school"):
        HlsConfig(tenants={"school": "dash"})
