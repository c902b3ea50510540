"""TLS server contexts whose certificate is replaced without a restart.

A certificate from an ACME client (certbot, lego, Caddy's) is renewed every
60-90 days by rewriting the PEM files. The node watches their modification
times (``CertReloader.check``, called by its housekeeping every few seconds) and
loads the new pair into the *live* :class:`ssl.SSLContext`: the listening
sockets keep it, so every handshake after the load presents the new certificate
and connections already open keep theirs.

A pair is first loaded into a scratch context: a half-written file or a
certificate written before its key must never leave the live context with a
certificate and a key that do not match (every handshake would fail). A pair
that does not load is logged once and retried when the files change again; the
old certificate stays in use meanwhile.
"""

from __future__ import annotations

import logging
import os
import ssl
from collections.abc import Callable

log = logging.getLogger(__name__)


def server_context(cert: str, key: str, what: str) -> ssl.SSLContext:
    """A TLS 1.2+ server context with ``cert``/``key`` loaded; ``what`` names the
    config keys in the error (``ValueError``) when they do not load."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"cannot load {what} certificate {cert!r} / key {key!r}: {exc}") from None
    return ctx


class CertReloader:
    """Reload ``cert``/``key`` into ``context`` when either file changes.

    ``stat`` is the seam tests replace; it returns a signature of a file that
    changes whenever the file does (modification time in ns, size, inode: an
    atomic rename keeps the mtime an editor may have preserved but not the inode).
    """

    def __init__(
        self,
        context: ssl.SSLContext,
        cert: str,
        key: str,
        what: str,
        stat: Callable[[str], tuple[int, ...]] | None = None,
    ) -> None:
        self.context = context
        self.cert = cert
        self.key = key
        self.what = what
        self._stat = stat or _signature
        self._loaded = self._files()
        self._failed: tuple[tuple[int, ...], tuple[int, ...]] | None = None
        self.reloads = 0

    def _files(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        return self._stat(self.cert), self._stat(self.key)

    def check(self) -> bool:
        """Load the files into the live context if they changed; True when it did."""
        try:
            now = self._files()
        except OSError as exc:
            # Mid-replacement (a rename in flight) or gone: keep serving the old pair.
            if self._failed is None:
                log.warning("%s certificate not reloaded: %s", self.what, exc)
                self._failed = ((), ())
            return False
        if now == self._loaded:
            self._failed = None
            return False
        if now == self._failed:
            return False
        try:
            server_context(self.cert, self.key, self.what)
            self.context.load_cert_chain(self.cert, self.key)
        except (ValueError, OSError, ssl.SSLError) as exc:
            log.warning("%s certificate not reloaded; the old one stays in use: %s", self.what, exc)
            self._failed = now
            return False
        self._loaded, self._failed = now, None
        self.reloads += 1
        log.info("%s certificate reloaded from %s", self.what, self.cert)
        return True


def _signature(path: str) -> tuple[int, ...]:
    st = os.stat(path)
    return st.st_mtime_ns, st.st_size, st.st_ino
