"""The node's OpenAPI document (docs/openapi-node.json) is the node's app, regenerated."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nearcast import openapi


def test_committed_node_openapi_matches_the_node_app() -> None:
    committed = openapi.COMMITTED.read_text()
    assert json.loads(committed) == json.loads(openapi.openapi_json()), (
        f"docs/openapi-node.json is stale; regenerate it: {openapi.REGENERATE}"
    )


def test_node_openapi_covers_the_control_api_whip_whep_health_and_media() -> None:
    paths = openapi.schema()["paths"]
    expected = {
        ("/v1/streams", "get"),
        ("/v1/streams/{tenant}/{stream}", "get"),
        ("/v1/streams/{tenant}/{stream}/kick", "post"),
        ("/healthz", "get"),
        ("/readyz", "get"),
        ("/metrics", "get"),
        ("/{tenant}/{stream}/whip", "post"),
        ("/{tenant}/{stream}/whip/{session_id}", "delete"),
        ("/{tenant}/{stream}/whep", "post"),
        ("/{tenant}/{stream}/whep/session/{session_id}", "delete"),
        ("/{tenant}/{stream}/index.m3u8", "get"),
        ("/{tenant}/{stream}/{rendition}/index.m3u8", "get"),
    }
    assert expected <= {(p, m) for p, item in paths.items() for m in item}
    # Every operation says what it answers, and SDP exchanges are SDP, not JSON.
    for path, item in paths.items():
        for method, op in item.items():
            assert op.get("responses"), f"{method.upper()} {path} documents no response"
    for path in ("/{tenant}/{stream}/whip", "/{tenant}/{stream}/whep"):
        post = paths[path]["post"]
        assert list(post["requestBody"]["content"]) == ["application/sdp"]
        assert list(post["responses"]["201"]["content"]) == ["application/sdp"]
        assert "Location" in post["responses"]["201"]["headers"]
    streams = paths["/v1/streams"]["get"]["responses"]["200"]["content"]["application/json"]
    assert streams["schema"] == {"$ref": "#/components/schemas/StreamList"}


def test_the_write_option_rewrites_the_committed_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "openapi-node.json"
    monkeypatch.setattr(openapi, "COMMITTED", target)
    assert openapi.main(["--write"]) == 0
    assert target.read_text() == openapi.openapi_json()
