"""The transcode worker: one child process per live stream.

Run as ``python -m transcode.worker``. It reads framed compressed packets on
stdin (see :mod:`transcode.protocol`), decodes each once, scales and encodes
every rung of the ladder, and writes finished MPEG-TS segments on stdout.

Threading follows the measurements in the performance notes: the main thread
reads and decodes; one thread per rung scales (its own swscale context, one
swscale thread) and encodes. PyAV releases the GIL in decode, scale, encode and
mux, so the rungs run in parallel on all cores.

This module is the process's side of the framing: START, PACKET and END in,
FATAL and DONE out. The work itself is :class:`~transcode.pipeline.Pipeline`
(the decode loop), :mod:`transcode.rungs` (per-rung encoding),
:mod:`transcode.overload`, :mod:`transcode.packaging` and :mod:`transcode.audio`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import resource
import signal
import sys
from pathlib import Path
from typing import BinaryIO

import av

from media.logrecords import ContextFilter, JsonFormatter
from transcode import collector
from transcode.lifetime import die_with_parent
from transcode.output import Output
from transcode.pipeline import Pipeline
from transcode.protocol import (
    ENV_MEMORY,
    ENV_PARENT,
    FrameReader,
    FrameType,
    decode_packet,
    encode_json,
)
from transcode.spec import Spec


def run(stdin: BinaryIO, stdout: BinaryIO) -> int:
    out = Output(stdout)
    reader = FrameReader()
    pipeline: Pipeline | None = None
    while True:
        chunk = stdin.read1(1 << 16) if hasattr(stdin, "read1") else stdin.read(1 << 16)
        if not chunk:
            break
        for ftype, payload in reader.feed(chunk):
            if ftype is FrameType.START:
                try:
                    spec = Spec.from_json(json.loads(payload))
                except (ValueError, KeyError, TypeError) as exc:
                    out.write(encode_json(FrameType.FATAL, {"error": f"invalid spec: {exc}"}))
                    return 2
                pipeline = Pipeline(spec, out)
            elif ftype is FrameType.PACKET:
                if pipeline is None:
                    raise ValueError("packet before START")
                try:
                    pipeline.feed(*decode_packet(payload))
                except ValueError as exc:
                    out.write(encode_json(FrameType.FATAL, {"error": str(exc)}))
                    return 2
                for r in pipeline._rungs:
                    if r.error is not None:
                        out.write(encode_json(FrameType.FATAL, {"error": str(r.error)}))
                        return 3
            elif ftype is FrameType.END:
                if pipeline is not None:
                    pipeline.finish()
                out.write(encode_json(FrameType.DONE, {}))
                return 0
    if pipeline is not None:
        pipeline.finish()
    out.write(encode_json(FrameType.DONE, {}))
    return 0


def confine() -> None:
    """The worker's first act: die with the node, and be the one the kernel kills.

    - ``PR_SET_PDEATHSIG``: the kernel sends SIGKILL when the node dies, whatever
      the worker's threads are doing (a node killed with -9 left workers running
      for good). If the node died before this line, the parent is already another
      process: exit at once.
    - ``oom_score_adj`` 1000: under memory pressure the kernel picks a worker, never
      the node that serves every other class.
    - ``RLIMIT_AS``: a generous backstop against a runaway decoder.
    """
    die_with_parent(signal.SIGKILL, int(os.environ.get(ENV_PARENT) or 0))
    if sys.platform == "linux":
        with contextlib.suppress(OSError):
            Path("/proc/self/oom_score_adj").write_text("1000")
    limit_mb = int(os.environ.get(ENV_MEMORY) or 0)
    if limit_mb > 0:
        limit = limit_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def main() -> int:
    confine()
    logging.basicConfig(
        level=os.environ.get("NEARCAST_WORKER_LOG", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # The node's node.log_format (nearcast.logs): its lines and ours share one stderr.
    for handler in logging.getLogger().handlers:
        handler.addFilter(ContextFilter(os.environ.get("NEARCAST_WORKER_LOG_NODE", "")))
        if os.environ.get("NEARCAST_WORKER_LOG_FORMAT") == "json":
            handler.setFormatter(JsonFormatter())
    av.logging.set_level(av.logging.ERROR)
    collector.tune()
    try:
        return run(sys.stdin.buffer, sys.stdout.buffer)
    except (BrokenPipeError, KeyboardInterrupt):
        return 0


if __name__ == "__main__":
    sys.exit(main())
