"""Log records that name what they are about, and the JSON lines they become.

Shared by every process of a node (the node and its transcode workers), so that
with ``node.log_format: json`` each writes the same fields. Every record passing
:class:`ContextFilter` carries the node's id and, when known, the tenant, stream
and placement session it is about, as attributes (``record.node``,
``record.tenant``, ``record.stream``, ``record.session``):

- a stream's publish binds them in a context variable (:func:`bind_stream`), so
  everything logged by the task that handles it, and by the tasks and timers it
  starts, carries them;
- a message that starts with the house prefix (``[node live/class42] ...``,
  ``[live/class42] ...``; STYLE rule 10) names its stream itself, which covers the
  call sites that run outside such a task (worker processes and threads, the HTTP
  API, the housekeeping).
"""

from __future__ import annotations

import contextvars
import datetime
import json
import logging
import re
from typing import Any

__all__ = ["FIELDS", "ContextFilter", "JsonFormatter", "bind_stream"]

# The fields a record may carry beyond time, level, logger and message.
FIELDS = ("node", "tenant", "stream", "session")

# Longest session id logged; placement's ids are far shorter.
MAX_SESSION = 128
_context: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar(
    "nearcast_log_context", default=None
)
# "[[<component> ]<tenant>/<stream>[ <more>]] ...": the house prefix of a stream's lines.
_PREFIX = re.compile(
    r"\[(?:(?P<component>[a-z]+) )?(?P<tenant>[^\s/\]]+)/(?P<stream>[^\s/\]]+)[\] ]"
)
# "[session <id>] ...": placement's lines about one session.
_SESSION = re.compile(r"\[session (?P<session>[^\s\]]+)\]")


def bind_stream(tenant: str, stream: str, session: str | None = None) -> None:
    """Tag what the current task (and the tasks and timers it starts from now on) logs
    with ``tenant``, ``stream`` and the placement ``session`` id (``?session=``)."""
    fields = {"tenant": tenant, "stream": stream}
    if session:
        # The publisher's own claim (?session=), so bounded: a log line is no dump.
        fields["session"] = session[:MAX_SESSION]
    _context.set(fields)


class ContextFilter(logging.Filter):
    """Adds ``node`` (always) and ``tenant``, ``stream``, ``session`` (when known) to
    every record that passes the handler it is attached to. Never drops a record."""

    def __init__(self, node_id: str = "") -> None:
        super().__init__()
        self.node_id = node_id

    def filter(self, record: logging.LogRecord) -> bool:
        if self.node_id and not getattr(record, "node", None):
            record.node = self.node_id
        bound = _context.get()
        if bound is not None:
            for name, value in bound.items():
                if not getattr(record, name, None):
                    setattr(record, name, value)
        if getattr(record, "stream", None) and getattr(record, "session", None):
            return True
        msg = record.msg if isinstance(record.msg, str) else ""
        if not msg.startswith("["):
            return True
        try:
            text = record.getMessage()
        except Exception:  # a broken call site: logging reports it when formatting
            return True
        match = _PREFIX.match(text)
        if match is not None and not getattr(record, "stream", None):
            record.tenant = match["tenant"]
            record.stream = match["stream"]
        match = _SESSION.match(text)
        if match is not None and not getattr(record, "session", None):
            record.session = match["session"]
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time`` (UTC, RFC 3339 with milliseconds), ``level``,
    ``logger``, ``message``, the context fields known, and ``exception`` (the whole
    traceback, one string) for a record logged with one."""

    def format(self, record: logging.LogRecord) -> str:
        when = datetime.datetime.fromtimestamp(record.created, datetime.UTC)
        out: dict[str, Any] = {
            "time": when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in FIELDS:
            value = getattr(record, name, None)
            if value:
                out[name] = str(value)
        if record.exc_info and record.exc_info[0] is not None:
            out["exception"] = self.formatException(record.exc_info).rstrip("\n")
        elif record.exc_text:
            out["exception"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        # ensure_ascii: a hostile stream name or header cannot break the line apart.
        return json.dumps(out, ensure_ascii=True, default=str)
