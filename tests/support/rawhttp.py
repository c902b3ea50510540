"""HTTP/1.1 responses read off a raw socket, for tests that talk to the node byte by byte."""

from __future__ import annotations

import socket


class Responses:
    """The responses arriving on ``sock``, one at a time: pipelined ones that come in
    one read are kept for the next call."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def _more(self) -> None:
        chunk = self.sock.recv(65536)
        assert chunk, f"closed after {self.buf!r}"
        self.buf += chunk

    def read(self) -> tuple[bytes, bytes]:
        """The next response's head (status line and headers) and its body, sent with a
        Content-Length or chunked."""
        while b"\r\n\r\n" not in self.buf:
            self._more()
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        length = next(
            (
                int(line.partition(b":")[2])
                for line in head.split(b"\r\n")[1:]
                if line.partition(b":")[0].strip().lower() == b"content-length"
            ),
            -1,
        )
        if length >= 0:
            while len(self.buf) < length:
                self._more()
            body, self.buf = self.buf[:length], self.buf[length:]
            return head, body
        body = b""
        while True:  # chunked: each chunk's size line, then its bytes
            while b"\r\n" not in self.buf:
                self._more()
            size_line, _, self.buf = self.buf.partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            while len(self.buf) < size + 2:
                self._more()
            body, self.buf = body + self.buf[:size], self.buf[size + 2 :]
            if not size:
                return head, body


def read_response(sock: socket.socket) -> bytes:
    """One response on a socket that carries no other: its head and body."""
    head, body = Responses(sock).read()
    return head + b"\r\n\r\n" + body
