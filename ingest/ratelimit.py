"""Publish attempts per client address over a sliding window (sans-I/O: takes ``now``).

Every publish attempt, accepted or not, is one entry in its address's log; an
address with ``limit`` entries younger than ``window`` seconds is refused until the
oldest of them ages out, and that wait is the Retry-After it is told. Memory is
bounded twice: each address keeps at most ``limit`` timestamps, and the table keeps
at most ``max_addresses`` addresses, forgetting the least recently seen. Forgetting
lets an address start afresh, but a peer able to cycle through that many addresses
within one window could publish as often as it likes anyway.

IPv6 addresses are counted per /64: a subscriber is handed a whole prefix and picks
any address in it.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict, deque


def address_key(ip: str) -> str:
    """The address the limit counts: an IPv4 address, or an IPv6 address's /64."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return ip  # not an IP address (a test client, a Unix socket): counted as it is
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        return str(ipaddress.IPv6Network((addr, 64), strict=False))
    return str(addr)


class PublishRateLimiter:
    def __init__(self, limit: int, window: float, max_addresses: int = 4096) -> None:
        if window <= 0 or max_addresses < 1 or limit < 0:
            raise ValueError("a rate limit needs limit >= 0, window > 0 and max_addresses >= 1")
        self.limit = limit
        self.window = window
        self.max_addresses = max_addresses
        self._log: OrderedDict[str, deque[float]] = OrderedDict()

    def attempt(self, ip: str, now: float) -> float:
        """Count one attempt from ``ip`` at ``now``: 0.0 when it is allowed, else the
        seconds until one would be (the refused attempt is not counted)."""
        if not self.limit:
            return 0.0
        key = address_key(ip)
        times = self._log.get(key)
        if times is None:
            times = self._log[key] = deque(maxlen=self.limit)
            if len(self._log) > self.max_addresses:
                self._expire(now)
                while len(self._log) > self.max_addresses:
                    self._log.popitem(last=False)
        else:
            self._log.move_to_end(key)
        while times and times[0] <= now - self.window:
            times.popleft()
        if len(times) >= self.limit:
            return max(times[0] + self.window - now, 0.001)
        times.append(now)
        return 0.0

    def _expire(self, now: float) -> None:
        """Forget addresses whose every attempt is older than the window. The table is in
        order of last attempt, so they are all at its front: no scan of the rest."""
        cutoff = now - self.window
        while self._log:
            times = next(iter(self._log.values()))
            if times and times[-1] > cutoff:
                return
            self._log.popitem(last=False)

    def __len__(self) -> int:
        return len(self._log)
