"""A real on_publish webhook service for tests: ``http.server`` in a thread.

It answers by stream name: ``deny...`` gets 403, ``slow...`` gets no answer until the
server stops (a timeout for the node), ``redirect...`` a 302, anything else 204.
Every request body is kept in ``requests``.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class HookServer:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.release = threading.Event()
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                length = int(self.headers.get("content-length", "0"))
                body = json.loads(self.rfile.read(length) or b"{}")
                hook.requests.append(body)
                stream = str(body.get("stream", ""))
                if stream.startswith("slow"):
                    hook.release.wait(30)
                    status = 204
                elif stream.startswith("deny"):
                    status = 403
                elif stream.startswith("redirect"):
                    status = 302
                else:
                    status = 204
                payload = b"denied by policy" if status == 403 else b""
                try:
                    self.send_response(status)
                    if status == 302:
                        self.send_header("location", "http://127.0.0.1:1/")
                    self.send_header("content-length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except OSError:
                    pass  # the node gave up waiting (a timeout test)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/on_publish"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
