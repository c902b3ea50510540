"""The operator's console in headless Chromium, on a real fleet.

One fleet serves the module, started as `nearcast fleet up` starts it, on a
redis-server of its own: placement and two nodes (a Berlin edge node and a cloud
node). An operator signs in with a named token and clicks through every page: the
fleet, a class published with FFmpeg's RTMP client (PyAV) previewed with hls.js
and kicked, the decision log with its explanation and replays, the policy editor,
the simulator, and a drain that must keep new sessions off the node. Each page is
saved as a screenshot (into ``$CONSOLE_SCREENSHOTS`` too when it is set).
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from browserutil import CHROMIUM_ARGS
from nodeutil import SMALL, NodeProcess, Publisher, require_binary, segment_numbers, wait_for
from PIL import Image
from placementutil import RedisServer, free_port
from playwright.sync_api import Browser, Page, expect, sync_playwright

from nearcast import cli, fleet

pytestmark = pytest.mark.redis

TENANT = "school"
BERLIN = {"city": "berlin", "isp": "telekom"}
EDGE = "edge-ber-1"
TIMEOUT_MS = 30_000


@dataclass
class Console:
    state: fleet.FleetState
    page: Page
    api: httpx.Client
    alice: str
    shots: list[Path]
    publishers: list[Publisher]

    @property
    def url(self) -> str:
        return f"{self.state.placement_url}/console"

    def go(self, page: str) -> None:
        self.page.goto(f"{self.url}#{page}")
        expect(self.page.locator(f"#page[data-page={page}]")).to_be_visible(timeout=TIMEOUT_MS)

    def shot(self, name: str) -> None:
        path = self.shots[0] / f"console-{name}.png"
        self.page.screenshot(path=str(path))
        if len(self.shots) > 1:
            # For the docs: a palette of 96 colours keeps each page near 30 KB.
            with Image.open(path) as im:
                small = im.convert("RGB").quantize(96, dither=Image.Dither.NONE)
                small.save(self.shots[1] / path.name, optimize=True)

    def place(self, stream: str) -> dict[str, Any]:
        r = self.api.post(
            "/v1/sessions", json={"tenant": TENANT, "stream": stream, "location": BERLIN}
        )
        assert r.status_code == 201, r.text
        body: dict[str, Any] = r.json()
        return body


def _topology(redis_url: str, alice: str, node_token: str) -> dict[str, Any]:
    topology: dict[str, Any] = yaml.safe_load(fleet.DEFAULT_TOPOLOGY.read_text())
    topology["placement"]["redis"] = redis_url
    topology["placement"]["config"]["operators"] = {"alice": alice}
    topology["placement"]["config"]["node_operator_token"] = node_token
    topology["defaults"]["ingest"]["operator_token"] = node_token
    # One small rung: two nodes transcoding one class on a shared machine; room for a
    # few classes on the edge node, so the dry run sees placements leave it.
    topology["defaults"]["transcode"]["capacity_units"] = 4
    topology["defaults"]["transcode"]["ladder"] = [
        {"name": "180p", "width": 320, "height": 180, "video_bitrate": 250000}
    ]
    topology["nodes"] = [n for n in topology["nodes"] if n["id"] in (EDGE, "cloud-ams-1")]
    return topology


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    require_binary("redis-server")
    chromium = require_binary("chromium")
    server = RedisServer(free_port())
    server.start()
    base = tmp_path_factory.mktemp("console")
    alice, node_token = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
    path = base / "fleet.yml"
    path.write_text(yaml.safe_dump(_topology(server.url, alice, node_token)))
    run_dir = base / "run"
    shots = [base]
    if os.environ.get("CONSOLE_SCREENSHOTS"):
        shots.append(Path(os.environ["CONSOLE_SCREENSHOTS"]))
        shots[1].mkdir(parents=True, exist_ok=True)
    publishers: list[Publisher] = []
    try:
        assert cli.main(["fleet", "up", "--topology", str(path), "--run-dir", str(run_dir)]) == 0
        state = fleet.read_state(run_dir)
        assert state is not None
        with (
            httpx.Client(
                base_url=state.placement_url,
                headers={"Authorization": f"Bearer {state.operator_token}"},
                timeout=10,
            ) as client,
            sync_playwright() as pw,
        ):
            browser: Browser = pw.chromium.launch(
                executable_path=chromium, headless=True, args=CHROMIUM_ARGS
            )
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 760})
                page.on("dialog", lambda d: d.accept())
                yield Console(state, page, client, alice, shots, publishers)
            finally:
                browser.close()
    finally:
        for pub in publishers:
            pub.stop()
        if fleet.read_state(run_dir) is not None:
            fleet.down(run_dir, grace=15)
        server.stop()


def test_sign_in_keeps_the_token_in_the_tab_and_out_of_the_url(console: Console) -> None:
    page = console.page
    page.goto(console.url)
    expect(page.locator("#login")).to_be_visible(timeout=TIMEOUT_MS)
    page.fill("#token", "not-a-token")
    page.click("#login button[type=submit]")
    expect(page.locator("#login-error")).to_contain_text("not an operator", timeout=TIMEOUT_MS)
    page.fill("#token", console.alice)
    page.click("#login button[type=submit]")
    expect(page.locator("#who")).to_have_text("operator: alice", timeout=TIMEOUT_MS)
    assert console.alice not in page.url
    assert page.evaluate("sessionStorage.getItem('nearcast.console.token')") == console.alice


def test_fleet_page_shows_every_node_in_the_table_and_on_the_map(console: Console) -> None:
    console.go("fleet")
    page = console.page
    for node in console.state.nodes:
        row = page.locator(f"tr[data-node={node.id}]")
        expect(row.get_by_test_id("status")).to_have_text("live", timeout=TIMEOUT_MS)
    expect(page.locator("[data-testid=fleet-map] circle[data-node]")).to_have_count(2)
    expect(page.locator(f"tr[data-node={EDGE}] td").nth(2)).to_have_text("berlin")
    console.shot("fleet")


def test_classes_page_previews_a_class_and_kicks_its_publisher(console: Console) -> None:
    session = console.place("physics")
    assert session["node"] == EDGE
    pub = Publisher(SMALL, session["ingest"]["rtmp"])
    console.publishers.append(pub)
    node = console.state.node(EDGE)

    def segments() -> bool:
        assert pub.error is None, pub.error
        r = httpx.get(f"{node.http}/{TENANT}/physics/180p/index.m3u8", timeout=5)
        return r.status_code == 200 and len(segment_numbers(r.text)) >= 2

    wait_for(segments, 60, "two segments of the physics class")
    console.go("classes")
    page = console.page
    row = page.locator(f"tr[data-key='{TENANT}/physics']")
    expect(row.get_by_test_id("holders")).to_contain_text(f"{EDGE} (origin", timeout=TIMEOUT_MS)
    expect(row.get_by_test_id("bitrate")).to_contain_text("kb/s", timeout=TIMEOUT_MS)
    # The origin's live edge is fresh (parts of 0.5 s or segments of 2 s: well under 5 s).
    expect(row.get_by_test_id("edge-age")).to_have_text(re.compile(r"^[0-4]\.\d s$"))
    expect(row.get_by_test_id("cities")).to_contain_text("berlin: ")
    (listed,) = [
        s
        for s in console.api.get("/v1/console/sessions").json()["sessions"]
        if s["key"] == f"{TENANT}/physics"
    ]
    assert 0 <= listed["edge_age"] < 5, listed
    assert listed["whep"] == f"{node.http}/{TENANT}/physics/whep"
    assert [(c["city"], c["nodes"]) for c in listed["cities"]] == [("berlin", 1)]
    assert listed["cities"][0]["viewers"] == listed["holders"][0]["viewers"]
    for mode in ("llhls", "whep"):
        page.get_by_test_id("preview-mode").select_option(mode)
        row.locator("[data-action=preview]").click()
        _plays(page, f"document.querySelector('video[data-session][data-mode={mode}]')")
        url = listed["whep"] if mode == "whep" else listed["playback"]
        expect(page.get_by_test_id("preview-state")).to_contain_text(f"playing {url}")
    console.shot("classes")  # previewing over WHEP
    # The node's WHEP viewer session ends with the preview (DELETE from another origin).
    page.get_by_test_id("preview-mode").select_option("llhls")
    row.locator("[data-action=preview]").click()
    wait_for(lambda: _whep_viewers(node.http) == 0, 20, "the WHEP preview's session to end")
    expect(page.get_by_test_id("preview-state")).to_contain_text("playing", timeout=60_000)
    row.locator("[data-action=kick]").click()
    expect(page.locator("#flash")).to_contain_text(f"kicked the publisher of {TENANT}/physics")

    def publisher_gone() -> bool:
        r = httpx.get(f"{node.http}/v1/streams/{TENANT}/physics", timeout=5)
        return r.status_code == 404 or r.json()["publisher_connected"] is False

    wait_for(publisher_gone, 20, "the kicked publisher to be disconnected")
    pub.stop()
    row.locator("[data-action=end]").click()
    expect(row).to_have_count(0, timeout=TIMEOUT_MS)
    audit = console.api.get("/v1/audit").json()
    assert [(e["operator"], e["action"]) for e in audit[:2]] == [
        ("alice", "delete_session"),
        ("alice", "kick"),
    ]


def _plays(page: Page, video: str) -> None:
    """The preview plays: frames decoded (its size is known) and its time advancing."""
    page.wait_for_function(
        f"{video} && !{video}.paused && {video}.videoWidth > 0 && {video}.currentTime > 0",
        timeout=60_000,
    )
    start = page.evaluate(f"{video}.currentTime")
    page.wait_for_function(f"{video}.currentTime >= {start + 1}", timeout=60_000)


def _whep_viewers(base: str) -> float:
    """The node's open WHEP sessions (webrtc_sessions)."""
    text = httpx.get(f"{base}/metrics", timeout=5).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.split("{")[0].split(" ")[0] == "webrtc_sessions"
    )


def test_decisions_page_explains_a_placement_and_replays_it_both_ways(console: Console) -> None:
    console.place("maths")
    console.go("decisions")
    page = console.page
    row = page.locator("tr[data-kind=publish]", has_text=f"{TENANT}/maths").first
    row.click()
    snap = page.get_by_test_id("replay-snapshot")
    expect(snap.get_by_test_id("same")).to_contain_text(f"same node ({EDGE})", timeout=TIMEOUT_MS)
    expect(snap.get_by_test_id("candidates").locator("tbody tr").first).to_contain_text(EDGE)
    expect(snap.get_by_test_id("fallback")).to_contain_text("edge")
    page.locator("[data-action=replay-fleet]").click()
    expect(page.get_by_test_id("replay-fleet").get_by_test_id("same")).to_be_visible(
        timeout=TIMEOUT_MS
    )
    console.shot("decisions")


def test_policy_page_validates_dry_runs_applies_and_rolls_back(console: Console) -> None:
    console.go("policy")
    page = console.page
    editor = page.get_by_test_id("policy-editor")
    expect(editor).to_have_value(re.compile("^name: "), timeout=TIMEOUT_MS)  # the active policy
    editor.fill("name: cloud-first\nversion: 2\nfallback: [cloud, moon]\n")
    expect(page.get_by_test_id("validity")).to_contain_text("fallback[1]", timeout=TIMEOUT_MS)
    editor.fill(
        "name: cloud-first\nversion: 2\nfallback: [cloud]\n"
        "filters: {max_cpu: 1.5, max_rtt_ms: 500}\n"
    )
    expect(page.get_by_test_id("validity")).to_contain_text("valid: cloud-first@2")
    page.locator("[data-action=dry-run]").click()
    expect(page.get_by_test_id("shifts")).to_contain_text("edge", timeout=TIMEOUT_MS)
    expect(page.get_by_test_id("local-ratio")).to_contain_text("→ 0.0%")
    console.shot("policy")
    page.locator("[data-action=apply]").click()
    history = page.get_by_test_id("history")
    expect(history.locator("tr[data-version='2']")).to_contain_text("applied by alice")
    assert console.api.get("/v1/policy").json()["active"] == "cloud-first@2"
    history.locator("tr[data-version='1'] [data-action=rollback]").click()
    expect(history.locator("tr[data-version='1']")).to_contain_text("rolled back by alice")
    assert console.api.get("/v1/policy").json()["active"].endswith("@1")


def test_simulate_page_draws_the_figures(console: Console) -> None:
    console.go("simulate")
    page = console.page
    page.get_by_label("fleet").select_option("synthetic")
    page.get_by_label("nodes").fill("120")
    page.get_by_label("classes").fill("100")
    page.get_by_label("with the draft policy").check()
    page.locator("[data-action=simulate]").click()
    result = page.get_by_test_id("sim-result")
    expect(result.get_by_test_id("sim-table")).to_contain_text("cloud-first@2", timeout=60_000)
    expect(result.locator("[data-testid=plot-hourly] polyline")).to_have_count(2)
    expect(result.locator("[data-testid=plot-shares] rect")).not_to_have_count(0)
    result.get_by_test_id("plot-hourly").scroll_into_view_if_needed()
    console.shot("simulate")


def test_a_drain_clicked_in_the_console_keeps_new_sessions_off_the_node(console: Console) -> None:
    console.go("fleet")
    page = console.page
    row = page.locator(f"tr[data-node={EDGE}]")
    row.locator("[data-action=drain]").click()
    expect(row.get_by_test_id("status")).to_have_text("draining", timeout=TIMEOUT_MS)
    placed = [console.place(f"drained-{i}")["node"] for i in range(2)]
    assert EDGE not in placed and set(placed) == {"cloud-ams-1"}
    audit = console.api.get("/v1/audit").json()
    assert (audit[0]["operator"], audit[0]["action"], audit[0]["target"]) == (
        "alice",
        "drain",
        {"node_id": EDGE},
    )
    # Drained and emptied, it can be decommissioned from the console.
    for s in console.api.get("/v1/console/sessions").json()["sessions"]:
        if s["node_id"] == EDGE:
            assert console.api.delete(f"/v1/sessions/{s['id']}").status_code == 204
    row.locator("[data-action=decommission]").click()

    def decommissioned() -> bool:
        last = console.api.get("/v1/audit").json()[0]
        return (last["operator"], last["action"], last["status"]) == ("alice", "remove_node", 200)

    wait_for(decommissioned, 20, f"alice's decommission of {EDGE}")


def test_a_single_node_with_embedded_placement_serves_the_console(
    tmp_path: Path,
) -> None:
    node = NodeProcess(tmp_path / "node.log", NEARCAST_PLACEMENT_OPERATOR_TOKEN="op-single")
    try:
        page = node.get("/console")
        assert page.status_code == 200 and 'src="/console/console.js"' in page.text
        assert node.get("/console/fleet.js").status_code == 200
        who = node.client.get("/v1/console/whoami", headers={"Authorization": "Bearer op-single"})
        assert who.status_code == 200 and who.json() == {"operator": "operator"}
        assert node.get("/v1/console/fleet").status_code == 401
    finally:
        node.stop()
