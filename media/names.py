"""The one rule a stream name must follow, wherever it enters the node.

A stream name becomes a URL path segment, a folder of the recording tree, a
metric and log field, and text on the player page. So it is 1 to 128 characters
of ``A-Z a-z 0-9 _ - . ~`` (RFC 3986's unreserved set), and it does not start
with a dot, which also rules out ``.`` and ``..``. MediaMTX's path rule is the
same alphabet (plus ``/``, which nearcast keeps for the tenant).
"""

from __future__ import annotations

import re

MAX_STREAM_NAME = 128
_NAME = re.compile(r"[A-Za-z0-9_~-][A-Za-z0-9._~-]*")


def stream_name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a stream, or ``None`` when it can."""
    if not name:
        return "the stream name is empty"
    if len(name) > MAX_STREAM_NAME:
        return f"the stream name is longer than {MAX_STREAM_NAME} characters"
    if not _NAME.fullmatch(name):
        return (
            "a stream name is letters, digits and '_-.~', not starting with '.' "
            f"(got {name[:40]!r})"
        )
    return None
