from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.rtmp import amf0
from ingest.rtmp.exceptions import RtmpProtocolError

# (value, exact AMF0 bytes) — canonical encodings round-trip both ways.
VECTORS: list[tuple[Any, bytes]] = [
    (0.0, b"\x00" + bytes(8)),
    (1.0, bytes.fromhex("003ff0000000000000")),
    (True, b"\x01\x01"),
    (False, b"\x01\x00"),
    ("connect", b"\x02\x00\x07connect"),
    ("", b"\x02\x00\x00"),
    (None, b"\x05"),
    ({"app": "live"}, b"\x03\x00\x03app\x02\x00\x04live\x00\x00\x09"),
    ({}, b"\x03\x00\x00\x09"),
    (
        amf0.EcmaArray(duration=0.0),
        b"\x08\x00\x00\x00\x01\x00\x08duration\x00" + bytes(8) + b"\x00\x00\x09",
    ),
    ([1.0, "a"], bytes.fromhex("0a00000002003ff0000000000000") + b"\x02\x00\x01a"),
    (amf0.Date(0.0, 0), b"\x0b" + bytes(10)),
    ("x" * 70000, b"\x0c" + (70000).to_bytes(4, "big") + b"x" * 70000),
    (amf0.XmlDocument("<a/>"), b"\x0f\x00\x00\x00\x04<a/>"),
]


@pytest.mark.parametrize(("value", "data"), VECTORS)
def test_vectors_round_trip(value: Any, data: bytes) -> None:
    assert amf0.encode(value) == data
    assert amf0.decode(data) == [value]
    assert amf0.encode(*amf0.decode(data)) == data


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"\x06", [None]),  # undefined decodes as None
        (b"\x10\x00\x01C\x00\x01a\x05\x00\x00\x09", [{"a": None}]),  # typed object
        (b"\x0a\x00\x00\x00\x01\x03\x00\x00\x09\x07\x00\x01", [[{}], {}]),  # reference
        (b"\x08\x00\x00\x00\x09\x00\x00\x09", [{}]),  # ECMA count is only a hint
    ],
)
def test_decode_special(data: bytes, expected: list[Any]) -> None:
    assert amf0.decode(data) == expected


def test_decode_one_offset() -> None:
    data = amf0.encode("publish", 5.0, None)
    assert amf0.decode_one(data, 0) == ("publish", 10)
    assert amf0.decode_one(data, 10) == (5.0, 19)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x00\x00", "number at offset 1 needs 8 bytes"),
        (b"\x02\x00\x05ab", "string at offset 3 needs 5 bytes"),
        (b"\x02\x00\x01\xff", "not valid UTF-8"),
        (b"\x03\x00\x01a", "type marker at offset 4"),
        (b"\x03\x00\x00\x05", "not followed by the object-end marker"),
        (b"\x09", "unexpected AMF0 object-end marker at offset 0"),
        (b"\x0a\xff\xff\xff\xff\x05", "claims 4294967295 elements but only 1 bytes remain"),
        (b"\x07\x00\x00", "reference 0 at offset 1 points past"),
        (b"\x0a\x00\x00\x00\x01\x07\x00\x00", "still being decoded"),
        (b"\x11\x00", "AMF3 value at offset 0"),
        (b"\x04", "unsupported AMF0 type marker 0x04"),
        (b"\x0d", "unsupported AMF0 type marker 0x0d"),
        (b"\x0a\x00\x00\x00\x01" * 40 + b"\x05", "deeper than 32 levels"),
        (b"\x03\x00\x01a" * 40, "deeper than 32 levels"),
    ],
)
def test_decode_errors(data: bytes, message: str) -> None:
    with pytest.raises(RtmpProtocolError, match=message):
        amf0.decode(data)


def test_encode_rejects_unknown_types() -> None:
    with pytest.raises(TypeError):
        amf0.encode(object())
    with pytest.raises(ValueError):
        amf0.encode([[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]])


_scalars = st.none() | st.booleans() | st.floats(allow_nan=False) | st.text(max_size=20)
_values = st.recursive(
    _scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(min_size=1, max_size=8), children, max_size=4)
        | st.dictionaries(st.text(min_size=1, max_size=8), children, max_size=4).map(amf0.EcmaArray)
    ),
    max_leaves=20,
)


@given(st.lists(_values, max_size=4))
def test_property_round_trip(values: list[Any]) -> None:
    data = amf0.encode(*values)
    assert amf0.decode(data) == values
    assert amf0.encode(*amf0.decode(data)) == data


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_property_garbage_only_raises_protocol_error(data: bytes) -> None:
    try:
        amf0.decode(data)
    except RtmpProtocolError:
        pass
