"""The node's HTTP API as an OpenAPI document (committed as docs/openapi-node.json).

Generated from the node's own FastAPI app (the control API of
:func:`distribute.api.create_api`, the WHIP router, the WHEP router), with the
request and response bodies FastAPI cannot see (SDP offers and answers, their
headers) described here, and the media routes that the fast path answers before
FastAPI (playlists, parts, segments, recordings; distribute.http) described by hand.

Print it with ``python -m nearcast.openapi``; regenerate the committed file with
``python -m nearcast.openapi --write``. A test fails when the two disagree.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute
from prometheus_client import CollectorRegistry
from starlette.routing import BaseRoute

from distribute.api import create_api
from distribute.config import HlsConfig
from distribute.hls.store import Store
from distribute.relay.api import add_relay_routes
from distribute.whep.config import WebRtcConfig
from distribute.whep.http import whep_router
from distribute.whep.server import WhepServer
from ingest.metrics import IngestMetrics
from ingest.sink import PublishRequest
from ingest.whip.config import WhipConfig
from ingest.whip.server import WhipServer

COMMITTED = Path(__file__).resolve().parent.parent / "docs" / "openapi-node.json"
REGENERATE = "python -m nearcast.openapi --write"

DESCRIPTION = """\
The HTTP API of one nearcast node: its streams and their publishers (`/v1/streams`),
WHIP ingest and WHEP playback (WebRTC, RFC 9725 and draft-ietf-wish-whep), health and
Prometheus metrics, and the HLS / LL-HLS media it serves.

A node without `placement.url` is also its own placement service and answers the
placement API's `/v1/` routes (sessions, route, nodes, policy, decisions) on the same
port: see openapi-placement.json.

Playback of a tenant listed in `playback.tenants` needs a signed token, as
`?token=...` on the multivariant playlist (the playlists sign every URI they list with
it). Every response carries the CORS headers of `http.cors_origin`.
"""

# The HTML pages the node serves beside its API (watch, publish): not API operations.
_PAGES = {"/{tenant}/{stream}/publish", "/{tenant}/{stream}/watch"}
# Handlers that only answer 405 with a reason for the methods a resource does not take.
_METHOD_NOT_ALLOWED = {"endpoint_other", "resource_other", "patch"}

SDP = "application/sdp"
_TENANT = {"name": "tenant", "in": "path", "required": True, "schema": {"type": "string"}}
_STREAM = {"name": "stream", "in": "path", "required": True, "schema": {"type": "string"}}
_RENDITION = {
    "name": "rendition",
    "in": "path",
    "required": True,
    "description": "A rendition name of the stream's ladder, e.g. 720p.",
    "schema": {"type": "string"},
}
_SESSION_ID = {"name": "session_id", "in": "path", "required": True, "schema": {"type": "string"}}
_TOKEN = {
    "name": "token",
    "in": "query",
    "required": False,
    "description": "Signed playback token (tenants in playback.tenants).",
    "schema": {"type": "string"},
}


def _text(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"text/plain": {"schema": {"type": "string"}}}}


def _sdp_answer(kind: str) -> dict[str, Any]:
    return {
        "description": f"The SDP answer; the {kind} session's resource is at Location.",
        "content": {SDP: {"schema": {"type": "string"}}},
        "headers": {
            "Location": {
                "description": "The session's resource URL (DELETE it to end the session).",
                "schema": {"type": "string"},
            },
            "ETag": {"description": "The session's entity tag.", "schema": {"type": "string"}},
            "Link": {
                "description": 'STUN/TURN servers, rel="ice-server" (webrtc.ice_servers).',
                "schema": {"type": "string"},
            },
        },
    }


_OFFER = {
    "required": True,
    "description": "The client's SDP offer, every candidate included (no trickle ICE).",
    "content": {SDP: {"schema": {"type": "string"}}},
}
_PREFLIGHT = {
    "204": {
        "description": "CORS preflight: Allow, Accept-Post and the Access-Control headers.",
    }
}

# Operation -> what to set on it: FastAPI sees neither the SDP bodies nor the headers.
_OVERLAY: dict[tuple[str, str], dict[str, Any]] = {
    ("/{tenant}/{stream}/whip", "post"): {
        "summary": "Publish a stream over WebRTC (WHIP, RFC 9725)",
        "description": "The publish token is the bearer token (`Authorization: Bearer`), "
        "or `?token=`. Other methods on the endpoint answer 405.",
        "tags": ["whip"],
        "requestBody": _OFFER,
        "responses": {
            "201": _sdp_answer("WHIP"),
            "400": _text("The offer is malformed, or has no codec the node takes."),
            "401": _text("No publish token, and the tenant needs one."),
            "403": _text("The token or the publish webhook refused the publish."),
            "404": _text("The tenant is not configured on this node."),
            "409": _text("The stream is already being published."),
            "413": _text("The offer is larger than whip.max_offer_bytes."),
            "415": _text("The body is not application/sdp."),
            "429": _text("Too many publish attempts from this address (Retry-After)."),
            "503": _text("A limit or the transcode capacity is reached, or no UDP port."),
        },
    },
    ("/{tenant}/{stream}/whip", "options"): {
        "summary": "CORS preflight of the WHIP endpoint",
        "tags": ["whip"],
        "responses": _PREFLIGHT,
    },
    ("/{tenant}/{stream}/whip/{session_id}", "delete"): {
        "summary": "End a WHIP publish",
        "description": "Other methods on the session answer 405 (no trickle ICE or ICE "
        "restart: the answer carries every candidate).",
        "tags": ["whip"],
        "responses": {
            "200": {"description": "The publish ended; the stream flushes."},
            "404": _text("No such WHIP session for this stream."),
        },
    },
    ("/{tenant}/{stream}/whip/{session_id}", "options"): {
        "summary": "CORS preflight of a WHIP session",
        "tags": ["whip"],
        "responses": _PREFLIGHT,
    },
    ("/{tenant}/{stream}/whep", "post"): {
        "summary": "Watch a stream over WebRTC (WHEP)",
        "description": "Needs `webrtc.enabled`. The playback token, when the tenant needs "
        "one, is `?token=`. PATCH on the session answers 405.",
        "tags": ["whep"],
        "requestBody": _OFFER,
        "responses": {
            "201": _sdp_answer("WHEP"),
            "400": _text("The offer cannot be answered."),
            "404": _text("The stream is not offered over WebRTC on this node."),
            "413": _text("The offer is larger than 64 KiB."),
            "415": _text("The body is not application/sdp."),
            "503": _text("webrtc.max_viewers reached or no UDP port free (Retry-After)."),
        },
    },
    ("/{tenant}/{stream}/whep", "options"): {
        "summary": "CORS preflight of the WHEP endpoint",
        "tags": ["whep"],
        "responses": _PREFLIGHT,
    },
    ("/{tenant}/{stream}/whep/session/{session_id}", "delete"): {
        "summary": "End a WHEP session",
        "tags": ["whep"],
        "responses": {
            "200": {"description": "The session ended."},
            "404": _text("No such WHEP session for this stream."),
        },
    },
    ("/{tenant}/{stream}/whep/session/{session_id}", "options"): {
        "summary": "CORS preflight of a WHEP session",
        "tags": ["whep"],
        "responses": _PREFLIGHT,
    },
}


def _media(summary: str, description: str, ctype: str, params: list[Any]) -> dict[str, Any]:
    return {
        "get": {
            "summary": summary,
            "description": description,
            "operationId": "media_" + summary.lower().replace(" ", "_").replace("-", "_"),
            "tags": ["media"],
            "parameters": params,
            "responses": {
                "200": {"description": "The file.", "content": {ctype: {}}},
                "403": _text("The playback token is missing, expired or for another stream."),
                "404": _text("No such stream, rendition or file."),
            },
        }
    }


M3U8 = "application/vnd.apple.mpegurl"
# Answered by the fast path (distribute.http) before FastAPI: described by hand.
MEDIA_PATHS: dict[str, dict[str, Any]] = {
    "/{tenant}/{stream}/index.m3u8": _media(
        "Multivariant playlist",
        "Every rendition of the stream (RFC 8216bis §4.4.6).",
        M3U8,
        [_TENANT, _STREAM, _TOKEN],
    ),
    "/{tenant}/{stream}/{rendition}/index.m3u8": _media(
        "Media playlist",
        "A rendition's live playlist. With LL-HLS (hls.low_latency) `_HLS_msn` and "
        "`_HLS_part` hold the request until that part is listed (RFC 8216bis §6.2.5.2; "
        "503 after three target durations, 400 for a request too far ahead), and "
        "`_HLS_skip=YES|v2` asks for a delta update.",
        M3U8,
        [
            _TENANT,
            _STREAM,
            _RENDITION,
            _TOKEN,
            {"name": "_HLS_msn", "in": "query", "schema": {"type": "integer", "minimum": 0}},
            {"name": "_HLS_part", "in": "query", "schema": {"type": "integer", "minimum": 0}},
            {"name": "_HLS_skip", "in": "query", "schema": {"enum": ["YES", "v2"]}},
        ],
    ),
    "/{tenant}/{stream}/{rendition}/{file}": _media(
        "Segment, part or init segment",
        "`N.ts` (MPEG-TS segment), `N.m4s` (CMAF segment), `N.P.m4s` (LL-HLS part P of "
        "segment N; the preload-hinted part is held and sent as it is written) or "
        "`init-G.mp4` (the init segment of generation G). Range requests are answered.",
        "video/*",
        [
            _TENANT,
            _STREAM,
            _RENDITION,
            _TOKEN,
            {"name": "file", "in": "path", "required": True, "schema": {"type": "string"}},
        ],
    ),
    "/{tenant}/{stream}/vod/{file}": _media(
        "Recording playlist",
        "The recording of a tenant in record.tenants: `index.m3u8` lists its renditions.",
        M3U8,
        [
            _TENANT,
            _STREAM,
            _TOKEN,
            {"name": "file", "in": "path", "required": True, "schema": {"type": "string"}},
        ],
    ),
    "/{tenant}/{stream}/vod/{rendition}/{file}": _media(
        "Recording file",
        "A recorded rendition's playlist (`index.m3u8`), init segment or segments.",
        "video/*",
        [
            _TENANT,
            _STREAM,
            _RENDITION,
            _TOKEN,
            {"name": "file", "in": "path", "required": True, "schema": {"type": "string"}},
        ],
    ),
}


class _NoSink:
    """The WHIP server's sink; the document is built, never served."""

    async def open_publish(self, request: PublishRequest) -> Any:
        raise AssertionError("the OpenAPI app takes no publish")


def node_routes() -> tuple[FastAPI, list[BaseRoute]]:
    """The node's FastAPI app and its routes, assembled as nearcast.node does it (the
    control API, then the WHIP and WHEP routers), with nothing behind them."""
    registry = CollectorRegistry()
    api = create_api(
        Store(HlsConfig()),
        registry,
        lambda: {},
        lambda: {},
        ingest_stats=lambda tenant, stream: None,
        kick=lambda tenant, stream: False,
    )
    add_relay_routes(api, lambda: [], "")
    whip = WhipServer(WhipConfig(), _NoSink(), IngestMetrics(registry)).router
    whep = whep_router(WhepServer(WebRtcConfig(), registry))
    return api, [*api.routes, *whip.routes, *whep.routes]


def schema() -> dict[str, Any]:
    app, all_routes = node_routes()
    routes: list[BaseRoute] = []
    for route in all_routes:
        if isinstance(route, APIRoute):
            if route.path in _PAGES or route.name in _METHOD_NOT_ALLOWED:
                continue
            if route.path.startswith("/{tenant}/{stream}/whep"):
                # The WHEP router keeps its routes out of the node's live /docs page; they
                # are part of the API all the same.
                route = copy.copy(route)
                route.include_in_schema = True
        routes.append(route)
    doc = get_openapi(
        title="nearcast node",
        version=app.version,
        description=DESCRIPTION,
        routes=routes,
    )
    paths: dict[str, dict[str, Any]] = doc["paths"]
    for (path, method), fields in _OVERLAY.items():
        operation = paths.get(path, {}).get(method)
        if operation is None:
            raise RuntimeError(f"the node has no {method.upper()} {path} route to describe")
        # FastAPI's generic 200 and 422 do not apply: these bodies are SDP, not JSON.
        operation.pop("responses", None)
        operation.update(copy.deepcopy(fields))
    for path, item in MEDIA_PATHS.items():
        if path in paths:
            raise RuntimeError(f"{path} is both a FastAPI route and a fast-path route")
        paths[path] = copy.deepcopy(item)
    return doc


def openapi_json() -> str:
    return json.dumps(schema(), indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m nearcast.openapi",
        description="Print the node's OpenAPI document, or write it to docs/openapi-node.json.",
    )
    parser.add_argument("--write", action="store_true", help=f"write {COMMITTED.name}")
    args = parser.parse_args(argv)
    text = openapi_json()
    if args.write:
        COMMITTED.write_text(text)
        print(f"wrote {COMMITTED.name}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
