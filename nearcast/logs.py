"""Logging of the node and the placement service: text for a terminal, JSON lines
for a log pipeline (``node.log_format``).

Every line names the node, and the tenant, stream and placement session it is
about when known (media.logrecords says how). The text format is the one the
node always had; the house prefix (``[node live/class42] ...``) stays in the
message in both formats. The node's transcode workers write the same format to
the same stderr.
"""

from __future__ import annotations

import logging
import sys
import threading
from types import TracebackType
from typing import Any

from media.logrecords import ContextFilter, JsonFormatter, bind_stream

__all__ = [
    "FORMATS",
    "TEXT_FORMAT",
    "ContextFilter",
    "JsonFormatter",
    "bind_stream",
    "setup_logging",
    "uvicorn_log_config",
]

FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
# How the node tells its transcode workers to log (transcode.worker reads them).
WORKER_FORMAT_ENV = "NEARCAST_WORKER_LOG_FORMAT"
WORKER_NODE_ENV = "NEARCAST_WORKER_LOG_NODE"
_json_active = False


def setup_logging(level: str, log_format: str = "text", node_id: str = "") -> None:
    """Log to stderr at ``level`` in ``log_format`` (text or json), every record tagged
    with ``node_id`` and its stream (see media.logrecords). Calling it again replaces
    what it set up; like ``logging.basicConfig`` it leaves alone a root logger that
    someone else configured (an application embedding the node, a test runner)."""
    global _json_active
    if log_format not in FORMATS:
        raise ValueError(f"log format must be text or json, got {log_format!r}")
    root = logging.getLogger()
    ours = [h for h in root.handlers if getattr(h, "nearcast", False)]
    if len(ours) != len(root.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.nearcast = True  # type: ignore[attr-defined]
    handler.addFilter(ContextFilter(node_id))
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    for old in ours:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(level)
    _json_active = log_format == "json"
    # The transcode workers this process starts write the same format to the same stderr.
    from transcode.pool import WORKER_LOG_ENV

    WORKER_LOG_ENV.update({WORKER_FORMAT_ENV: log_format, WORKER_NODE_ENV: node_id})
    if _json_active:
        # A crash is one JSON line too, not a bare traceback a log pipeline splits up;
        # so is a Python warning.
        sys.excepthook = _log_uncaught
        threading.excepthook = _log_uncaught_in_thread
        logging.captureWarnings(True)
        # Whatever configured uvicorn's own handlers before now: let them propagate here.
        for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
            lg = logging.getLogger(name)
            for old in lg.handlers[:]:
                lg.removeHandler(old)
            lg.propagate = True


def _log_uncaught(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    if issubclass(kind, KeyboardInterrupt):
        sys.__excepthook__(kind, exc, tb)
        return
    logging.getLogger("nearcast").critical("uncaught exception", exc_info=(kind, exc, tb))


def _log_uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_value is None:
        return
    name = args.thread.name if args.thread is not None else "?"
    logging.getLogger("nearcast").critical(
        "uncaught exception in thread %s",
        name,
        exc_info=(args.exc_type, args.exc_value, args.exc_traceback),
    )


def uvicorn_log_config() -> dict[str, Any] | None:
    """``log_config`` for a uvicorn server in this process: with JSON logging none, so
    uvicorn's records reach the JSON handler instead of its own text one; otherwise
    uvicorn's default, as before."""
    if _json_active:
        return None
    from uvicorn.config import LOGGING_CONFIG

    return LOGGING_CONFIG
