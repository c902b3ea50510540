"""A bit reader for codec parameter sets (pure): Exp-Golomb codes over an RBSP.

ISO 14496-10 §7.2 and ITU-T H.265 §7.2: parameter sets are read bit by bit, most
significant first, after the emulation prevention bytes (00 00 03) are removed.
Reading past the end raises :class:`ValueError`, so a truncated or hostile
parameter set is an error, never an exception of another kind.
"""

from __future__ import annotations


def unescape(nal: bytes) -> bytes:
    """The RBSP of a NAL unit payload: every ``00 00 03`` becomes ``00 00`` (§7.4.1)."""
    if b"\x00\x00\x03" not in nal:
        return nal
    out = bytearray()
    zeros = 0
    for b in nal:
        if zeros >= 2 and b == 3:
            zeros = 0
            continue
        out.append(b)
        zeros = zeros + 1 if b == 0 else 0
    return bytes(out)


class BitReader:
    def __init__(self, data: bytes, what: str = "parameter set") -> None:
        self._value = int.from_bytes(data, "big")
        self._left = len(data) * 8
        self.what = what

    def u(self, n: int) -> int:
        """``n`` bits as an unsigned integer (u(n))."""
        if n > self._left:
            raise ValueError(f"{self.what} is truncated")
        self._left -= n
        return (self._value >> self._left) & ((1 << n) - 1)

    def flag(self) -> bool:
        return bool(self.u(1))

    def skip(self, n: int) -> None:
        self.u(n)

    def ue(self) -> int:
        """An unsigned Exp-Golomb code (ue(v), §9.1); at most 32 leading zero bits."""
        zeros = 0
        while not self.u(1):
            zeros += 1
            if zeros > 32:
                raise ValueError(f"{self.what} has an Exp-Golomb code over 32 bits")
        return (1 << zeros) - 1 + self.u(zeros)

    def se(self) -> int:
        """A signed Exp-Golomb code (se(v), §9.1.1)."""
        k = self.ue()
        return (k + 1) // 2 if k & 1 else -(k // 2)
