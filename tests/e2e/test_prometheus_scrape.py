"""Every panel of the shipped Grafana dashboards shows data for a live fleet.

Debian's ``prometheus`` scrapes, with the shipped deploy/prometheus.yml (its jobs, paths,
bearer-token files and alert rules; only the targets and the interval are the test's), a
fleet started here: a placement service on a redis-server of the module's own and two
nodes registered with it, their /metrics behind metrics tokens. Placement places one
stream, a publisher (FFmpeg's RTMP client, PyAV) sends it, three LL-HLS viewers with
their own User-Agents follow placement's redirect and play it with blocking reloads and
preload hints, and a bogus RTMP client is refused. Then every query of every panel,
with its template variables substituted as Grafana does, is evaluated through
Prometheus' HTTP API and must return at least one series.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from dashboards import DASHBOARDS, ROOT, Query, load, pending, queries, substitute
from nodeutil import SMALL, NodeProcess, Publisher, require_binary, wait_for
from placementutil import PlacementProcess, free_port, node_credential

pytestmark = pytest.mark.redis

TENANT, STREAM, RENDITION = "live", "cam", "180p"
OP = {"Authorization": "Bearer op-test"}
NODE_METRICS_TOKEN = "node-metrics-secret"
PLACEMENT_METRICS_TOKEN = "placement-metrics-secret"
LADDER = "[{name: 180p, width: 320, height: 180, video_bitrate: 250000}]"
NODES = ("edge-a", "edge-b")
VIEWERS = ("hls.js/1.5 (viewer 1)", "hls.js/1.5 (viewer 2)", "AVPlayer (viewer 3)")
RELAY_VIEWER = "hls.js/1.5 (a viewer of the relaying node)"
# What $__rate_interval becomes: Grafana's is four scrape intervals at least; ten of the
# test's 1 s scrapes keep a rate defined on a loaded machine.
RATE_INTERVAL = "10s"


class Fleet:
    """redis-server, placement and two nodes, as test_publish_failover starts them."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.nodes: dict[str, NodeProcess] = {}
        self.placement = PlacementProcess(tmp, config={"metrics_token": PLACEMENT_METRICS_TOKEN})
        self.placement_port = int(self.placement.base.rsplit(":", 1)[1])
        self.base = self.placement.base
        self.client = self.placement.client
        try:
            for nid in NODES:
                self.nodes[nid] = NodeProcess(
                    tmp / f"{nid}.log",
                    NEARCAST_NODE_ID=nid,
                    NEARCAST_NODE_TIER="edge",
                    NEARCAST_HTTP_METRICS_TOKEN=NODE_METRICS_TOKEN,
                    NEARCAST_PLACEMENT_URL=self.base,
                    NEARCAST_PLACEMENT_NODE_TOKEN=node_credential(nid),
                    NEARCAST_PLACEMENT_LIVENESS_HEARTBEAT_INTERVAL="0.25",
                    NEARCAST_PLACEMENT_LIVENESS_TTL="2",
                    NEARCAST_PLACEMENT_LIVENESS_FULL_STATS_INTERVAL="1",
                    NEARCAST_TRANSCODE_LADDER=LADDER,
                    NEARCAST_HLS_SEGMENT_DURATION="1",
                    NEARCAST_RELAY_ENABLED="true",
                )
            wait_for(lambda: self.alive() == set(NODES), 30, "both nodes registered")
        except BaseException:
            self.stop()
            raise

    def alive(self) -> set[str]:
        return self.placement.alive()

    def stop(self) -> None:
        for node in self.nodes.values():
            node.stop()
        self.placement.stop()


class Prometheus:
    """Debian's prometheus with the shipped scrape config, pointed at ``fleet``."""

    def __init__(self, binary: str, tmp: Path, fleet: Fleet, log: Any) -> None:
        config = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
        config["global"].update(scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s")
        shutil.copy(ROOT / "deploy" / "alerts.yml", tmp / "alerts.yml")
        targets = {
            "nearcast-node": [n.http.removeprefix("http://") for n in fleet.nodes.values()],
            "nearcast-placement": [f"127.0.0.1:{fleet.placement_port}"],
        }
        tokens = {
            "nearcast-node": NODE_METRICS_TOKEN,
            "nearcast-placement": PLACEMENT_METRICS_TOKEN,
        }
        for job in config["scrape_configs"]:
            name = job["job_name"]
            job["static_configs"] = [{"targets": targets[name]}]
            secret = tmp / f"{name}.token"
            secret.write_text(tokens[name])
            job["authorization"]["credentials_file"] = str(secret)
        (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
        port = free_port()
        self.api = httpx.Client(base_url=f"http://127.0.0.1:{port}/api/v1", timeout=10.0)
        self.proc = subprocess.Popen(
            [
                binary,
                f"--config.file={tmp / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_for(self.ready, 30, "prometheus to answer its API")
        except BaseException:
            self.stop()
            raise

    def ready(self) -> bool:
        assert self.proc.poll() is None, "prometheus exited (see prometheus.log)"
        return self.api.get("/status/buildinfo").status_code == 200

    def query(self, expr: str) -> list[dict[str, Any]]:
        r = self.api.get("/query", params={"query": expr})
        body = r.json()
        assert r.status_code == 200 and body["status"] == "success", (expr, body)
        return body["data"]["result"]  # type: ignore[no-any-return]

    def label_values(self, label: str, match: str) -> list[str]:
        r = self.api.get(f"/label/{label}/values", params={"match[]": match})
        r.raise_for_status()
        return r.json()["data"]  # type: ignore[no-any-return]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.api.close()


class Viewer:
    """An LL-HLS player in a thread: blocking playlist reloads, the newest listed part
    (there already) and the preload-hinted one (held until it exists)."""

    def __init__(self, url: str, user_agent: str) -> None:
        self.url = url
        self.client = httpx.Client(headers={"User-Agent": user_agent}, timeout=10.0)
        self.stop_event = threading.Event()
        self.error: BaseException | None = None
        self.parts = 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        base = self.url.rsplit("/", 1)[0]
        params: dict[str, str] = {}
        try:
            while not self.stop_event.is_set():
                r = self.client.get(self.url, params=params)
                r.raise_for_status()
                listed = re.findall(r'#EXT-X-PART:.*URI="([^"]+)"', r.text)
                hint = re.search(r'#EXT-X-PRELOAD-HINT:TYPE=PART,URI="([^"]+)"', r.text)
                if listed:
                    self.client.get(f"{base}/{listed[-1]}").raise_for_status()
                    self.parts += 1
                if hint is None:
                    params = {}
                    continue
                got = self.client.get(f"{base}/{hint.group(1)}")
                if got.status_code == 200:
                    self.parts += 1
                msn, part = hint.group(1).split("?")[0].split(".")[:2]
                params = {"_HLS_msn": msn, "_HLS_part": part}
        except BaseException as exc:
            if not self.stop_event.is_set():
                self.error = exc

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(15)
        self.client.close()


@pytest.fixture(scope="module")
def scraped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Prometheus, Fleet]]:
    binary = require_binary("prometheus")
    require_binary("redis-server")
    tmp = tmp_path_factory.mktemp("scrape")
    fleet = Fleet(tmp)
    prom: Prometheus | None = None
    pub: Publisher | None = None
    viewers: list[Viewer] = []
    log = open(tmp / "prometheus.log", "wb")  # noqa: SIM115 - closed below
    try:
        prom = Prometheus(binary, tmp, fleet, log)
        # Placement places the stream (a decision) and the publisher sends it there.
        here = {"city": "local", "isp": "local"}  # the nodes' default locality
        r = fleet.client.post(
            "/v1/sessions", json={"tenant": TENANT, "stream": STREAM, "location": here}
        )
        assert r.status_code == 201, r.text
        session = r.json()
        origin = fleet.nodes[session["node"]]
        pub = Publisher(SMALL, session["ingest"]["rtmp"])

        def listed() -> bool:
            assert pub is not None and pub.error is None, pub and pub.error
            # As the first viewer (its User-Agent): the viewer estimate counts the viewers.
            r = origin.client.get(
                f"/{TENANT}/{STREAM}/{RENDITION}/index.m3u8",
                headers={"User-Agent": VIEWERS[0]},
            )
            return r.status_code == 200 and "#EXT-X-PART:" in r.text

        wait_for(listed, 60, f"parts of {TENANT}/{STREAM} on {session['node']}")
        # Viewers follow placement's redirect (a routing decision) to the node.
        played = httpx.get(
            f"{fleet.base}/{TENANT}/{STREAM}/index.m3u8", params={"city": "local"}, timeout=10
        )
        assert played.status_code == 302, played.text
        master = played.headers["location"]
        assert master.startswith(origin.http), master
        playlist = master.rsplit("/", 1)[0] + f"/{RENDITION}/index.m3u8"
        viewers = [Viewer(playlist, ua) for ua in VIEWERS]
        # One more on the other node, which relays the stream from the origin (the relay
        # panel's bytes); the origin counts the relay as one more viewer.
        other = next(n for n in fleet.nodes.values() if n is not origin)
        relayed = f"{other.http}/{TENANT}/{STREAM}/{RENDITION}/index.m3u8"
        viewers.append(Viewer(relayed, RELAY_VIEWER))
        # A client that does not speak RTMP: refused (ingest_rejected_total).
        with socket.create_connection(("127.0.0.1", origin.rtmp_port), timeout=5) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + b"\0" * 1600)
            sock.settimeout(5)
            try:
                while sock.recv(4096):
                    pass
            except OSError:
                pass
        wait_for(lambda: all(v.parts >= 4 or v.error for v in viewers), 30, "viewers to play parts")
        assert not [v.error for v in viewers if v.error], [v.error for v in viewers]

        def scraping() -> bool:
            assert prom is not None
            up = prom.query("up == 1")
            return len(up) == len(NODES) + 1

        wait_for(scraping, 30, "prometheus to scrape every target", interval=0.5)
        yield prom, fleet
    finally:
        for v in viewers:
            v.stop()
        if pub is not None:
            pub.stop()
        if prom is not None:
            prom.stop()
        fleet.stop()
        log.close()


def _substituted(prom: Prometheus, name: str) -> list[tuple[Query, str]]:
    """The dashboard's queries as Grafana sends them with every instance selected."""
    d = load(name)
    values: dict[str, list[str]] = {}
    for var in d["templating"]["list"]:
        if var["type"] != "query":
            continue
        m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", var["query"]["query"])
        assert m, var["query"]
        values[var["name"]] = prom.label_values(m.group(2), m.group(1))
        assert values[var["name"]], f"variable {var['name']} has no value"
    return [(q, substitute(q.expr, values, RATE_INTERVAL)) for q in queries(name)]


@pytest.mark.parametrize("name", DASHBOARDS)
def test_every_panel_query_returns_series_from_the_fleet(
    scraped: tuple[Prometheus, Fleet], name: str
) -> None:
    prom, _ = scraped
    todo = [(q, e) for q, e in _substituted(prom, name) if not pending(q.expr)]
    assert todo
    empty: list[str] = []

    def answered() -> bool:
        empty[:] = [f"{q}\n    sent: {e}" for q, e in todo if not prom.query(e)]
        return not empty

    try:
        wait_for(answered, 40, "every panel query to return a series", interval=0.5)
    except AssertionError:
        raise AssertionError("queries without a series:\n" + "\n".join(empty)) from None


def test_relay_bytes_come_from_the_relaying_node_by_kind(
    scraped: tuple[Prometheus, Fleet],
) -> None:
    """The relay panel's metric, through Prometheus: the node relaying the stream pulled
    media and playlists from the origin, and the origin pulled nothing."""
    prom, fleet = scraped
    expr = 'sum by (instance, kind, origin) (relay_inbound_bytes_total{job="nearcast-node"})'

    def pulled() -> list[dict[str, Any]]:
        got = prom.query(expr)
        return got if {s["metric"]["kind"] for s in got} == {"media", "playlist"} else []

    series = wait_for(pulled, 30, "relay bytes of both kinds", interval=0.5)
    assert len({s["metric"]["instance"] for s in series}) == 1, series
    assert {s["metric"]["origin"] for s in series} <= set(NODES), series
    assert all(float(s["value"][1]) > 0 for s in series), series


def test_prometheus_scrapes_every_target_with_the_shipped_config(
    scraped: tuple[Prometheus, Fleet],
) -> None:
    prom, _ = scraped
    up = {(s["metric"]["job"], s["metric"]["instance"]): s["value"][1] for s in prom.query("up")}
    assert len(up) == len(NODES) + 1
    assert set(up.values()) == {"1"}, up
    # The shipped alert rules load (Prometheus read alerts.yml with the config).
    groups = prom.api.get("/rules").json()["data"]["groups"]
    assert {g["name"] for g in groups} == {"nearcast-node", "nearcast-placement"}


def test_new_metrics_read_what_the_fleet_did(scraped: tuple[Prometheus, Fleet]) -> None:
    """The metrics added for these dashboards, through Prometheus: the viewer estimate
    counts the three players (one address, three User-Agents), parts went out both to
    held and to plain requests, and placement sees both nodes' heartbeats as fresh."""
    prom, _ = scraped

    def value(expr: str) -> dict[str, float]:
        return {
            ",".join(f"{k}={v}" for k, v in sorted(s["metric"].items())): float(s["value"][1])
            for s in prom.query(expr)
        }

    # The players, the relay's own viewer, and the relay as a viewer of the origin.
    expected = {"protocol=hls": 0, "protocol=llhls": len(VIEWERS) + 2, "protocol=whep": 0}
    viewers = 'sum by (protocol) (viewers{job="nearcast-node"})'
    # Polled: the newest scrape may predate a viewer's first request.
    wait_for(lambda: value(viewers) == expected, 20, f"viewers {expected}", interval=0.5)
    sent = value('sum by (mode) (hls_part_delivery_seconds_count{job="nearcast-node"})')
    assert sent.keys() == {"mode=blocking", "mode=plain"} and min(sent.values()) > 0, sent
    ages = value('max by (node) (placement_node_heartbeat_age_seconds{job="nearcast-placement"})')
    assert ages.keys() == {f"node={n}" for n in NODES}, ages
    # Heartbeats every 0.25 s, a snapshot every 0.2 s: well under the 2 s TTL, with room
    # for a loaded machine.
    assert all(0 <= a < 2 for a in ages.values()), ages
