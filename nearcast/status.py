"""``nearcast status [URL]``: the fleet, or one node, in the terminal.

Given a placement service (or a node that embeds one, i.e. runs without
``placement.url``) it prints the fleet: the nodes by tier and city with their
state and load, the sessions, and the latest placement decisions. Given a node
without placement it prints that node: its identity, its streams and its viewers.

It reads the same operator API the console does: ``GET /v1/nodes``,
``/v1/sessions``, ``/v1/decisions`` and the node's ``/v1/streams``, with the
operator token of ``--token`` or ``$NEARCAST_OPERATOR_TOKEN``. ``--json`` prints
what was read, as one JSON document, for scripts.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import httpx

DEFAULT_URL = "http://127.0.0.1:8080"
TOKEN_ENV = "NEARCAST_OPERATOR_TOKEN"
TIERS = ("edge", "mec", "cloud")


class StatusError(Exception):
    """Why the status could not be read; the message is for the operator."""


class _Absent(Exception):
    """The route does not exist there (404 or 405)."""


class _Unauthorized(StatusError):
    """401: no operator token, or a wrong one."""


class Reader:
    """GETs of one base URL, with the operator token when there is one."""

    def __init__(self, url: str, token: str, timeout: float) -> None:
        import httpx  # here, not at import: the other `nearcast` commands start without it

        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.client = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)
        self.token = token

    def close(self) -> None:
        self.client.close()

    def get(self, path: str, params: dict[str, Any] | None = None) -> httpx.Response:
        import httpx

        try:
            return self.client.get(path, params=params)
        except httpx.TimeoutException:
            raise StatusError(f"{self.url} did not answer GET {path} in time") from None
        except httpx.HTTPError as exc:
            raise StatusError(f"cannot reach {self.url}: {exc}") from None

    def json(self, path: str, params: dict[str, Any] | None = None) -> Any:
        r = self.get(path, params)
        if r.status_code in (404, 405):
            raise _Absent(path)
        if r.status_code == 401:
            hint = "the token was refused" if self.token else f"pass --token or set ${TOKEN_ENV}"
            raise _Unauthorized(
                f"{self.url}{path}: 401 Unauthorized: an operator token is required ({hint})"
            )
        if r.status_code >= 400:
            raise StatusError(f"{self.url}{path}: HTTP {r.status_code}: {_detail(r)}")
        try:
            return r.json()
        except ValueError:
            raise StatusError(
                f"{self.url}{path} did not answer JSON: is this a nearcast node or "
                "placement service?"
            ) from None


def _detail(r: httpx.Response) -> str:
    try:
        body = r.json()
    except ValueError:
        return r.text.strip()[:200]
    if isinstance(body, dict) and "detail" in body:
        return str(body["detail"])[:200]
    return json.dumps(body)[:200]


def gather(
    url: str, token: str = "", *, node_only: bool = False, decisions: int = 10, timeout: float = 5
) -> dict[str, Any]:
    """What ``nearcast status`` shows, as plain data (also its ``--json`` output):
    ``{"kind": "fleet", ...}`` for a placement service, ``{"kind": "node", ...}`` for a
    node without one. Raises :class:`StatusError`."""
    reader = Reader(url, token, timeout)
    try:
        refused: _Unauthorized | None = None
        if not node_only:
            try:
                fleet = reader.json("/v1/nodes")
            except _Absent:
                pass  # a node whose placement is elsewhere
            except _Unauthorized as exc:
                if token:
                    raise
                refused = exc  # without a token: a node's anonymous view, if it is a node
            else:
                return _fleet(reader, fleet, decisions)
        try:
            out = _node(reader)
        except StatusError:
            if refused is not None:
                raise refused from None
            raise
        if refused is not None:
            out["fleet"] = f"not shown: {refused}"
        return out
    finally:
        reader.close()


def _fleet(reader: Reader, fleet: Any, decisions: int) -> dict[str, Any]:
    if not isinstance(fleet, dict) or not isinstance(fleet.get("nodes"), list):
        raise StatusError(f"{reader.url}/v1/nodes did not answer a node list")
    out: dict[str, Any] = {
        "kind": "fleet",
        "url": reader.url,
        "at": time.time(),
        "snapshot": fleet.get("snapshot"),
        "degraded": bool(fleet.get("degraded")),
        "frozen_pools": fleet.get("frozen_pools", []),
        "nodes": fleet["nodes"],
    }
    # The placement service may or may not list its sessions (GET /v1/sessions); without
    # that list, the streams each node reports say where every stream is served.
    try:
        sessions = reader.json("/v1/sessions")
        out["sessions"] = sessions.get("sessions", []) if isinstance(sessions, dict) else sessions
    except _Absent:
        out["sessions"] = None
    try:
        out["decisions"] = reader.json("/v1/decisions", {"limit": decisions}) if decisions else []
    except _Absent:
        out["decisions"] = []
    # A node that embeds placement is a node too: its own streams.
    r = reader.get("/v1/streams")
    out["local"] = r.json() if r.status_code == 200 else None
    return out


def _node(reader: Reader) -> dict[str, Any]:
    try:
        doc = reader.json("/v1/streams")
    except _Absent:
        raise StatusError(
            f"{reader.url} has neither /v1/nodes nor /v1/streams: not a nearcast node or "
            "placement service"
        ) from None
    if not isinstance(doc, dict) or "node" not in doc:
        raise StatusError(f"{reader.url}/v1/streams did not answer a node's streams")
    return {
        "kind": "node",
        "url": reader.url,
        "at": time.time(),
        "node": doc["node"],
        "streams": doc.get("streams", []),
        "operator": bool(reader.token),
        "viewers": _viewers(reader),
    }


def _viewers(reader: Reader) -> dict[str, float] | None:
    """WebRTC viewers and held LL-HLS requests from the node's /metrics; None when the
    metrics are closed to this caller (http.metrics_token)."""
    r = reader.get("/metrics")
    if r.status_code != 200:
        return None
    from prometheus_client.parser import text_string_to_metric_families

    wanted = {"webrtc_sessions": "webrtc", "hls_held_requests": "hls_held"}
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(r.text):
        for sample in family.samples:
            if sample.name in wanted:
                out[wanted[sample.name]] = out.get(wanted[sample.name], 0) + sample.value
    return out


# -- rendering ---------------------------------------------------------------------------


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Columns padded to their widest cell; numbers right-aligned."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, v in enumerate(row):
            widths[i] = max(widths[i], len(v))
    numeric = [
        all(isinstance(row[i], int | float) and not isinstance(row[i], bool) for row in rows)
        and bool(rows)
        for i in range(len(headers))
    ]

    def line(values: Sequence[str]) -> str:
        return "  ".join(
            v.rjust(widths[i]) if numeric[i] else v.ljust(widths[i]) for i, v in enumerate(values)
        ).rstrip()

    return "\n".join([line(list(headers)), *(line(r) for r in cells)])


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.1f}" if abs(v) < 100 else f"{v:.0f}"
    return str(v)


def _ago(seconds: float) -> str:
    s = max(0, int(seconds))
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m"
    if s < 172800:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d"


def _kbps(bps: Any) -> str:
    try:
        return f"{float(bps) / 1000:.0f} kb/s"
    except (TypeError, ValueError):
        return "-"


def render(data: dict[str, Any]) -> str:
    return render_fleet(data) if data["kind"] == "fleet" else render_node(data)


def render_fleet(data: dict[str, Any]) -> str:
    now = data["at"]
    nodes: list[dict[str, Any]] = data["nodes"]
    head = f"fleet at {data['url']}: {len(nodes)} node(s)"
    if data.get("snapshot"):
        head += f", snapshot {data['snapshot']}"
    if data.get("degraded"):
        head += "  DEGRADED (registry unreachable: serving from the last snapshot)"
    out = [head]
    if data.get("frozen_pools"):
        out.append("migrations frozen in pools: " + ", ".join(data["frozen_pools"]))

    def order(n: dict[str, Any]) -> tuple[int, str, str]:
        tier = n.get("tier", "")
        return (TIERS.index(tier) if tier in TIERS else 9, n.get("city", ""), n.get("id", ""))

    rows = []
    for n in sorted(nodes, key=order):
        load, cap = n.get("load", {}), n.get("capacity", {})
        state = n.get("state", "?")
        if n.get("alive") is False:
            state += " (silent)"
        hb = n.get("last_heartbeat")
        rows.append(
            [
                n.get("tier"),
                n.get("city"),
                n.get("id"),
                state,
                f"{float(load.get('cpu', 0)) * 100:.0f}%",
                f"{load.get('transcodes', 0)}/{cap.get('slots', '?')}",
                f"{load.get('viewers', 0)}/{cap.get('viewers', '?')}",
                f"{float(load.get('egress_mbps', 0)):.1f}/{float(cap.get('egress_mbps', 0)):.0f}",
                len(n.get("streams", [])),
                _ago(now - hb) if isinstance(hb, int | float) else "-",
            ]
        )
    out += [
        "",
        "NODES",
        table(
            [
                "TIER",
                "CITY",
                "NODE",
                "STATE",
                "CPU",
                "TRANSCODES",
                "VIEWERS",
                "EGRESS Mb/s",
                "STREAMS",
                "HEARTBEAT",
            ],
            rows,
        )
        if rows
        else "(no node registered)",
    ]
    sessions = data.get("sessions")
    if sessions is not None:
        out += ["", f"SESSIONS ({len(sessions)})"]
        if sessions:
            srows = [
                [
                    s.get("id"),
                    f"{s.get('tenant')}/{s.get('stream')}",
                    s.get("node_id"),
                    s.get("tier"),
                    s.get("state"),
                    _ago(float(s["lease_expires"]) - now)
                    if isinstance(s.get("lease_expires"), int | float)
                    else "-",
                ]
                for s in sessions
            ]
            out.append(table(["SESSION", "STREAM", "NODE", "TIER", "STATE", "LEASE"], srows))
    else:
        served = [(st, n.get("id"), n.get("tier")) for n in nodes for st in n.get("streams", [])]
        out += ["", f"STREAMS BY NODE ({len(served)}, from the nodes' heartbeats)"]
        if served:
            out.append(table(["STREAM", "NODE", "TIER"], sorted(served)))
    decisions = data.get("decisions") or []
    out += ["", f"RECENT DECISIONS ({len(decisions)})"]
    if decisions:
        drows = []
        for d in decisions:
            req = d.get("request", {})
            at = d.get("at")
            drows.append(
                [
                    _ago(now - at) + " ago" if isinstance(at, int | float) else "-",
                    d.get("kind"),
                    f"{req.get('tenant')}/{req.get('stream')}",
                    d.get("node") or "(none)",
                    d.get("tier"),
                    d.get("step"),
                ]
            )
        out.append(table(["WHEN", "KIND", "STREAM", "NODE", "TIER", "STEP"], drows))
    local = data.get("local")
    if local:
        out += ["", f"THIS NODE ({local['node'].get('id')})", _streams_table(local["streams"])]
    return "\n".join(out) + "\n"


def _streams_table(streams: list[dict[str, Any]]) -> str:
    if not streams:
        return "(no stream)"
    rows = []
    for s in streams:
        ingest = s.get("ingest")
        source = s.get("source", {})
        size = f"{source['width']}x{source['height']}" if "width" in source else ""
        rows.append(
            [
                f"{s.get('tenant')}/{s.get('stream')}",
                "live" if s.get("live") else "ended",
                (f"{ingest['protocol']} {ingest['client']}" if ingest else "connected")
                if s.get("publisher_connected")
                else "gone",
                " ".join(x for x in (source.get("codec") or "", size) if x) or None,
                _kbps(source.get("bitrate")),
                s.get("profile"),
                ",".join(r["name"] for r in s.get("renditions", [])) or None,
                s.get("segments"),
                _ago(float(s.get("uptime", 0))),
            ]
        )
    return table(
        [
            "STREAM",
            "STATE",
            "PUBLISHER",
            "SOURCE",
            "BITRATE",
            "PROFILE",
            "RENDITIONS",
            "SEGMENTS",
            "UPTIME",
        ],
        rows,
    )


def render_node(data: dict[str, Any]) -> str:
    n = data["node"]
    ports = ", ".join(
        f"{name} {n[key]}"
        for name, key in (
            ("rtmp", "rtmp_port"),
            ("rtmps", "rtmps_port"),
            ("http", "http_port"),
            ("https", "https_port"),
        )
        if n.get(key)
    )
    out = [
        f"node {n.get('id')} at {data['url']}: {n.get('tier')} in {n.get('city')} "
        f"(region {n.get('region')}, isp {n.get('isp')}), up {_ago(float(n.get('uptime', 0)))}",
    ]
    if ports:
        out.append(f"ports: {ports}")
    viewers = data.get("viewers")
    if viewers is None:
        out.append("viewers: unknown (/metrics needs http.metrics_token)")
    else:
        out.append(
            f"viewers: {viewers.get('webrtc', 0):.0f} WebRTC, "
            f"{viewers.get('hls_held', 0):.0f} LL-HLS requests held"
        )
    streams = data["streams"]
    out += ["", f"STREAMS ({len(streams)})", _streams_table(streams)]
    if not data.get("operator"):
        out.append("(anonymous view: pass --token for every stream and its publisher)")
    if data.get("fleet"):
        out.append(f"fleet {data['fleet']}")
    return "\n".join(out) + "\n"


# -- command line ------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    token = args.token if args.token is not None else os.environ.get(TOKEN_ENV, "")
    if not 0 <= args.decisions <= 10000:
        print("nearcast status: --decisions must be between 0 and 10000", file=sys.stderr)
        return 2
    if not args.url.startswith(("http://", "https://")):
        print(f"nearcast status: URL must be http(s)://, got {args.url!r}", file=sys.stderr)
        return 2
    try:
        data = gather(
            args.url,
            token,
            node_only=args.node,
            decisions=args.decisions,
            timeout=args.timeout,
        )
    except StatusError as exc:
        print(f"nearcast status: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(data, indent=2, sort_keys=True))
    else:
        sys.stdout.write(render(data))
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "status",
        help="show the fleet (placement URL) or one node (node URL) in the terminal",
        description="Print the fleet as a placement service sees it (nodes by tier and "
        "city with state and load, sessions, recent decisions) when URL is a placement "
        "service or a node that embeds one; else the node at URL (its streams and "
        "viewers). Exit status 1 when URL cannot be read.",
    )
    p.add_argument(
        "url",
        nargs="?",
        default=DEFAULT_URL,
        metavar="URL",
        help=f"base URL of a placement service or node (default {DEFAULT_URL})",
    )
    p.add_argument(
        "--token",
        default=None,
        help=f"operator bearer token (default: ${TOKEN_ENV}); placement.operator_token "
        "for the fleet, ingest.operator_token for a node's every stream",
    )
    p.add_argument("--json", action="store_true", help="print the data read as JSON")
    p.add_argument(
        "--node",
        action="store_true",
        help="show the node at URL even when it embeds placement",
    )
    p.add_argument(
        "--decisions",
        type=int,
        default=10,
        metavar="N",
        help="recent placement decisions to show (default 10; 0 for none)",
    )
    p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for each answer (5)")
    p.set_defaults(func=run)
