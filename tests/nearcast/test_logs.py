"""Structured logs (node.log_format): every line of a real node is one JSON object that
names the node, and the lines about a stream name its tenant, stream and session."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from nodeutil import ROOT, SMALL, SMALL_LADDER, NodeProcess, Publisher, wait_for

from nearcast import logs
from nearcast.config import ConfigError, load
from transcode import pool


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """The root logger writing JSON lines into a buffer (restored afterwards)."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    handler.addFilter(logs.ContextFilter("edge-test"))
    handler.setFormatter(logs.JsonFormatter())
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG)
    try:
        yield buf
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])


def lines(buf: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in buf.getvalue().splitlines()]


def test_an_exception_is_one_json_line_with_its_traceback(captured: io.StringIO) -> None:
    log = logging.getLogger("nearcast.test")
    try:
        raise ValueError("bad\nthing")
    except ValueError:
        log.exception("[node live/cam] handling failed")
    assert len(captured.getvalue().splitlines()) == 1
    (line,) = lines(captured)
    assert line["level"] == "ERROR" and line["logger"] == "nearcast.test"
    assert line["message"] == "[node live/cam] handling failed"
    assert line["exception"].startswith("Traceback (most recent call last):")
    assert line["exception"].endswith("ValueError: bad\nthing")
    assert (line["node"], line["tenant"], line["stream"]) == ("edge-test", "live", "cam")
    assert line["time"].endswith("Z") and "T" in line["time"]


@pytest.mark.parametrize(
    ("message", "fields"),
    [
        ("[rtmp live/class42] publishing from 1.2.3.4:5", {"tenant": "live", "stream": "class42"}),
        ("[whep school/math abc123] session closed", {"tenant": "school", "stream": "math"}),
        ("[session s-9~x] migrated a -> b", {"session": "s-9~x"}),
        ("[rtmp 127.0.0.1:5000] connection lost", {}),
        ("node stopping", {}),
    ],
)
def test_the_house_prefix_names_the_stream(
    captured: io.StringIO, message: str, fields: dict[str, str]
) -> None:
    logging.getLogger("nearcast.test").info(message)
    (line,) = lines(captured)
    assert {k: line[k] for k in ("tenant", "stream", "session") if k in line} == fields
    assert line["node"] == "edge-test"


def test_a_bound_stream_reaches_the_tasks_it_starts_and_no_other(captured: io.StringIO) -> None:
    log = logging.getLogger("nearcast.test")

    async def publisher() -> None:
        logs.bind_stream("live", "cam", "sess-1")
        log.info("publish accepted")
        await asyncio.get_running_loop().create_task(worker())

    async def worker() -> None:
        log.warning("worker restarted")

    async def other() -> None:
        await asyncio.sleep(0)
        log.info("unrelated")

    async def main() -> None:
        await asyncio.gather(publisher(), other())

    asyncio.run(main())
    by_message = {line["message"]: line for line in lines(captured)}
    for message in ("publish accepted", "worker restarted"):
        line = by_message[message]
        assert (line["tenant"], line["stream"], line["session"]) == ("live", "cam", "sess-1")
    assert "stream" not in by_message["unrelated"]


def test_the_text_format_is_unchanged(monkeypatch: pytest.MonkeyPatch) -> None:
    # setup_logging tells the workers this process would start how to log.
    monkeypatch.setattr(pool, "WORKER_LOG_ENV", {})
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])
    monkeypatch.setattr(root, "level", root.level)
    logs.setup_logging("INFO", "text", "edge-test")
    (handler,) = root.handlers
    record = logging.LogRecord("nearcast.node", logging.INFO, "", 0, "[node %s] up", ("a/b",), None)
    assert handler.format(record).endswith(" INFO    nearcast.node: [node a/b] up")
    assert pool.WORKER_LOG_ENV == {
        logs.WORKER_FORMAT_ENV: "text",
        logs.WORKER_NODE_ENV: "edge-test",
    }
    # Again: replaced, not doubled.
    logs.setup_logging("WARNING", "text", "edge-test")
    assert len(root.handlers) == 1 and root.handlers[0] is not handler
    root.handlers[0].close()


def test_an_unknown_log_format_is_refused_naming_the_key() -> None:
    with pytest.raises(ConfigError, match="log_format"):
        load(environ={"NEARCAST_NODE_LOG_FORMAT": "xml"})


@pytest.fixture(scope="module")
def json_node_log(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """A real node with node.log_format json: one stream published with ?session=, until
    it has segments, then unpublished; the node stopped. Its log, parsed."""
    path = tmp_path_factory.mktemp("jsonlog") / "node.log"
    node = NodeProcess(
        path,
        NEARCAST_NODE_LOG_FORMAT="json",
        NEARCAST_NODE_ID="edge-json-1",
        NEARCAST_TRANSCODE_LADDER=SMALL_LADDER,
        NEARCAST_HLS_SEGMENT_DURATION="1",
        NEARCAST_HLS_GRACE_PERIOD="1",
    )
    pub: Publisher | None = None
    try:
        pub = Publisher(SMALL, node.rtmp("live/jsoncam?session=sess-42"))
        wait_for(
            lambda: node.get("/live/jsoncam/180p/index.m3u8").text.count("#EXTINF") >= 1,
            90,
            "a segment of live/jsoncam",
        )
        pub.stop()
        pub = None
        wait_for(lambda: "unpublished" in path.read_text(), 30, "the unpublish to be logged")
    finally:
        if pub is not None:
            pub.stop()
        node.stop()
    text = path.read_text()
    parsed = []
    for raw in text.splitlines():
        try:
            parsed.append(json.loads(raw))
        except ValueError:
            pytest.fail(f"a log line is not JSON: {raw!r}\n--- whole log:\n{text[-4000:]}")
    return parsed


def test_every_line_of_a_json_node_is_json_with_the_node_id(
    json_node_log: list[dict[str, Any]],
) -> None:
    assert len(json_node_log) >= 4
    for line in json_node_log:
        assert {"time", "level", "logger", "message"} <= line.keys(), line
        assert line["node"] == "edge-json-1", line


def test_lines_about_a_stream_carry_its_tenant_stream_and_session(
    json_node_log: list[dict[str, Any]],
) -> None:
    about = [line for line in json_node_log if "jsoncam" in line["message"]]
    assert any("publishing from" in line["message"] for line in about), json_node_log
    assert any("unpublished" in line["message"] for line in about), json_node_log
    for line in about:
        assert (line.get("tenant"), line.get("stream")) == ("live", "jsoncam"), line
    # Bound when the publish was accepted: the session of ?session= as well.
    published = next(line for line in about if "publishing from" in line["message"])
    assert published.get("session") == "sess-42", published


def test_a_crash_under_json_logging_is_one_json_line_with_its_traceback_threads_too() -> None:
    code = (
        "from nearcast import logs\n"
        "import threading\n"
        "logs.setup_logging('INFO', 'json', 'edge-crash')\n"
        "def fail():\n"
        "    raise ValueError('thread boom')\n"
        "t = threading.Thread(target=fail, name='pump')\n"
        "t.start(); t.join()\n"
        "raise RuntimeError('boom')\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 1
    thread, main = (json.loads(raw) for raw in proc.stderr.splitlines())
    assert (thread["level"], thread["message"]) == ("CRITICAL", "uncaught exception in thread pump")
    assert thread["exception"].endswith("ValueError: thread boom")
    assert (main["level"], main["message"], main["node"]) == (
        "CRITICAL",
        "uncaught exception",
        "edge-crash",
    )
    assert main["exception"].startswith("Traceback (most recent call last):")
    assert main["exception"].endswith("RuntimeError: boom")
