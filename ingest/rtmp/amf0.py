"""AMF0 encoding and decoding (Action Message Format, AMF0 specification, 2007).

RTMP command (type 20) and data (type 18) messages carry sequences of AMF0 values.
Decoding is bounded: nesting is limited to :data:`MAX_DEPTH` and every element
count is checked against the bytes that remain, so a hostile payload costs at most
a small constant times its own size in memory and cannot exhaust the stack.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

from .exceptions import RtmpProtocolError

NUMBER = 0x00
BOOLEAN = 0x01
STRING = 0x02
OBJECT = 0x03
MOVIECLIP = 0x04
NULL = 0x05
UNDEFINED = 0x06
REFERENCE = 0x07
ECMA_ARRAY = 0x08
OBJECT_END = 0x09
STRICT_ARRAY = 0x0A
DATE = 0x0B
LONG_STRING = 0x0C
UNSUPPORTED = 0x0D
RECORDSET = 0x0E
XML_DOCUMENT = 0x0F
TYPED_OBJECT = 0x10
AVMPLUS_OBJECT = 0x11

#: Deepest nesting accepted. Real RTMP peers nest two levels (an object inside an
#: ECMA array for onMetaData); 32 leaves headroom without risking recursion limits.
MAX_DEPTH = 32

_DOUBLE = struct.Struct(">d")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_DATE = struct.Struct(">dh")


class EcmaArray(dict[str, Any]):
    """An AMF0 ECMA array (AMF0 §2.10): a dict that re-encodes with marker 0x08.

    FFmpeg's flvenc and OBS send ``onMetaData`` as an ECMA array; keeping the type
    makes ``encode(*decode(data)) == data`` hold for their payloads.
    """


class XmlDocument(str):
    """An AMF0 XML document (AMF0 §2.17): a str that re-encodes with marker 0x0F."""


@dataclass(frozen=True, slots=True)
class Date:
    """An AMF0 date (AMF0 §2.13): milliseconds since the epoch, UTC.

    The time-zone field is reserved ("should be set to 0x0000") but kept so that
    decoding and re-encoding is lossless.
    """

    milliseconds: float
    timezone: int = 0


class _Pending:
    """Placeholder for a complex value whose decoding has not finished."""


_PENDING = _Pending()


class _Decoder:
    __slots__ = ("_data", "_refs")

    def __init__(self, data: bytes) -> None:
        self._data = data
        # AMF0 §2.9: complex values are numbered in the order they *start*, so a
        # slot is reserved before the members are read and filled in afterwards.
        self._refs: list[Any] = []

    def _need(self, offset: int, size: int, what: str) -> None:
        left = len(self._data) - offset
        if size > left:
            raise RtmpProtocolError(
                f"AMF0 {what} at offset {offset} needs {size} bytes, only {left} left"
            )

    def _string(self, offset: int, width: int, what: str) -> tuple[str, int]:
        self._need(offset, width, f"{what} length")
        data = self._data
        size = int.from_bytes(data[offset : offset + width], "big")
        offset += width
        self._need(offset, size, what)
        try:
            text = data[offset : offset + size].decode("utf-8")
        except UnicodeDecodeError as exc:
            raise RtmpProtocolError(f"AMF0 {what} at offset {offset} is not valid UTF-8") from exc
        return text, offset + size

    def _properties(self, target: dict[str, Any], offset: int, depth: int) -> int:
        data = self._data
        while True:
            key, offset = self._string(offset, 2, "property name")
            if not key:
                # AMF0 §2.11: the object-end marker follows an empty UTF-8 name.
                self._need(offset, 1, "object-end marker")
                if data[offset] != OBJECT_END:
                    raise RtmpProtocolError(
                        f"AMF0 empty property name at offset {offset} is not followed "
                        "by the object-end marker"
                    )
                return offset + 1
            target[key], offset = self.value(offset, depth + 1)

    def _reserve(self) -> int:
        self._refs.append(_PENDING)
        return len(self._refs) - 1

    def value(self, offset: int, depth: int) -> tuple[Any, int]:
        if depth > MAX_DEPTH:
            raise RtmpProtocolError(f"AMF0 value nests deeper than {MAX_DEPTH} levels")
        data = self._data
        self._need(offset, 1, "type marker")
        marker = data[offset]
        offset += 1
        if marker == NUMBER:
            self._need(offset, 8, "number")
            return _DOUBLE.unpack_from(data, offset)[0], offset + 8
        if marker == BOOLEAN:
            self._need(offset, 1, "boolean")
            return data[offset] != 0, offset + 1
        if marker == STRING:
            return self._string(offset, 2, "string")
        if marker == NULL or marker == UNDEFINED:
            return None, offset
        if marker == OBJECT or marker == ECMA_ARRAY or marker == TYPED_OBJECT:
            if marker == ECMA_ARRAY:
                # The count is only a hint (AMF0 §2.10); members end with object-end.
                self._need(offset, 4, "ECMA array count")
                offset += 4
                obj: dict[str, Any] = EcmaArray()
            else:
                if marker == TYPED_OBJECT:
                    # The class name has no meaning to an ingest server; drop it.
                    _, offset = self._string(offset, 2, "typed object class name")
                obj = {}
            slot = self._reserve()
            offset = self._properties(obj, offset, depth)
            self._refs[slot] = obj
            return obj, offset
        if marker == STRICT_ARRAY:
            self._need(offset, 4, "strict array count")
            (count,) = _U32.unpack_from(data, offset)
            offset += 4
            left = len(data) - offset
            if count > left:
                # Every element takes at least its one-byte marker.
                raise RtmpProtocolError(
                    f"AMF0 strict array claims {count} elements but only {left} bytes remain"
                )
            slot = self._reserve()
            items: list[Any] = []
            for _ in range(count):
                item, offset = self.value(offset, depth + 1)
                items.append(item)
            self._refs[slot] = items
            return items, offset
        if marker == DATE:
            self._need(offset, 10, "date")
            ms, tz = _DATE.unpack_from(data, offset)
            return Date(ms, tz), offset + 10
        if marker == LONG_STRING:
            return self._string(offset, 4, "long string")
        if marker == XML_DOCUMENT:
            text, offset = self._string(offset, 4, "XML document")
            return XmlDocument(text), offset
        if marker == REFERENCE:
            self._need(offset, 2, "reference")
            (index,) = _U16.unpack_from(data, offset)
            if index >= len(self._refs):
                raise RtmpProtocolError(
                    f"AMF0 reference {index} at offset {offset} points past the "
                    f"{len(self._refs)} complex values decoded so far"
                )
            target = self._refs[index]
            if target is _PENDING:
                # Only possible for a self-referencing (cyclic) value; refusing it
                # keeps decoded values acyclic and safe to re-encode or log.
                raise RtmpProtocolError(
                    f"AMF0 reference {index} at offset {offset} points into a value "
                    "that is still being decoded"
                )
            return target, offset + 2
        if marker == OBJECT_END:
            raise RtmpProtocolError(f"unexpected AMF0 object-end marker at offset {offset - 1}")
        if marker == AVMPLUS_OBJECT:
            raise RtmpProtocolError(
                f"AMF3 value at offset {offset - 1}: only objectEncoding 0 (AMF0) is supported"
            )
        raise RtmpProtocolError(
            f"unsupported AMF0 type marker 0x{marker:02x} at offset {offset - 1}"
        )


def decode_one(buf: bytes, offset: int = 0) -> tuple[Any, int]:
    """Decode one AMF0 value at ``offset``; return it and the offset after it."""
    return _Decoder(bytes(buf)).value(offset, 0)


def decode(data: bytes) -> list[Any]:
    """Decode every AMF0 value in ``data`` (a whole command or data message body).

    Objects and ECMA arrays become dicts (:class:`EcmaArray` for the latter), null and
    undefined become ``None``, numbers become ``float``.
    """
    raw = bytes(data)
    decoder = _Decoder(raw)
    values: list[Any] = []
    offset = 0
    while offset < len(raw):
        value, offset = decoder.value(offset, 0)
        values.append(value)
    return values


def _encode_key(out: bytearray, key: str) -> None:
    if not isinstance(key, str):
        raise TypeError(f"AMF0 property names must be str, got {type(key).__name__}")
    raw = key.encode("utf-8")
    if len(raw) > 0xFFFF:
        raise ValueError(f"AMF0 property name of {len(raw)} bytes exceeds 65535")
    out += _U16.pack(len(raw))
    out += raw


def _encode(out: bytearray, value: Any, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise ValueError(f"AMF0 value to encode nests deeper than {MAX_DEPTH} levels")
    if value is None:
        out.append(NULL)
    elif isinstance(value, bool):
        out.append(BOOLEAN)
        out.append(1 if value else 0)
    elif isinstance(value, int | float):
        out.append(NUMBER)
        out += _DOUBLE.pack(float(value))
    elif isinstance(value, XmlDocument):
        raw = value.encode("utf-8")
        out.append(XML_DOCUMENT)
        out += _U32.pack(len(raw))
        out += raw
    elif isinstance(value, str):
        raw = value.encode("utf-8")
        if len(raw) <= 0xFFFF:
            out.append(STRING)
            out += _U16.pack(len(raw))
        else:
            out.append(LONG_STRING)
            out += _U32.pack(len(raw))
        out += raw
    elif isinstance(value, Date):
        out.append(DATE)
        out += _DATE.pack(value.milliseconds, value.timezone)
    elif isinstance(value, dict):
        if isinstance(value, EcmaArray):
            out.append(ECMA_ARRAY)
            out += _U32.pack(len(value))
        else:
            out.append(OBJECT)
        for key, item in value.items():
            _encode_key(out, key)
            _encode(out, item, depth + 1)
        out += b"\x00\x00\x09"
    elif isinstance(value, list | tuple):
        out.append(STRICT_ARRAY)
        out += _U32.pack(len(value))
        for item in value:
            _encode(out, item, depth + 1)
    else:
        raise TypeError(f"cannot encode {type(value).__name__} as AMF0")


def encode(*values: Any) -> bytes:
    """Encode values as consecutive AMF0 values.

    ``None`` becomes null, ``bool`` boolean, ``int``/``float`` number, ``str`` string
    (long string past 65535 bytes), ``dict`` object, :class:`EcmaArray` ECMA array,
    ``list``/``tuple`` strict array, :class:`Date` date.
    """
    out = bytearray()
    for value in values:
        _encode(out, value, 0)
    return bytes(out)
