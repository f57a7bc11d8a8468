"""The firmware's msgpack codec against the reference ``msgpack`` library."""

from __future__ import annotations

import math
import struct
from array import array
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from host_sdk import protocol as P
from host_sdk.firmware.mnnfw import mpack

scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.sampled_from([0, 127, 128, 255, 256, 65535, 65536, 2**32 - 1, 2**32, -32, -33, -128, -129,
                       -32768, -32769, -(2**31), -(2**31) - 1])
    | st.floats(width=32)
    | st.text(max_size=40)
    | st.binary(max_size=40)
    | st.sampled_from(["a" * 31, "a" * 32, "\u00e9" * 128, "x" * 255, "y" * 256, b"\x01" * 255, b"\x02" * 256])
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=20) | st.dictionaries(st.text(max_size=8), inner, max_size=20),
    max_leaves=20,
)


def same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return struct.pack(">d", a) == struct.pack(">d", b) or (math.isnan(a) and math.isnan(b))
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return bool(a == b)


def depth(v: Any) -> int:
    if isinstance(v, list):
        return 1 + max((depth(x) for x in v), default=0)
    if isinstance(v, dict):
        return 1 + max((depth(x) for x in v.values()), default=0)
    return 0


@settings(max_examples=150, deadline=None)
@given(values)
def test_pack_matches_the_reference_packer(v: Any) -> None:
    if depth(v) > mpack.MAX_DEPTH:
        return
    ref = msgpack.packb(P._canonical(v), use_bin_type=True, use_single_float=True)
    assert bytes(mpack.pack(v)) == ref
    assert same(mpack.unpack(ref), msgpack.unpackb(ref, raw=False, strict_map_key=False))


@settings(max_examples=1000, deadline=None)
@given(st.binary(min_size=1, max_size=64))
def test_unpack_random_bytes_agrees_with_the_reference(data: bytes) -> None:
    try:
        ref = msgpack.unpackb(data, raw=False, strict_map_key=False)
        ref_ok = True
    except Exception:
        ref_ok = False
    try:
        got = mpack.unpack(data)
    except mpack.DecodeError as e:
        # the firmware may refuse what msgpack accepts only for its documented limits
        if ref_ok:
            assert any(w in str(e) for w in ("unsupported type", "map key", "duplicate", "nesting")), e
        return
    assert ref_ok
    assert same(got, ref)


@pytest.mark.parametrize(
    ("hexdata", "value"),
    [
        ("cb3ff8000000000000", 1.5),  # float64 accepted on input
        ("cb7ff0000000000000", math.inf),
        ("d0df", -33),
        ("c403000102", b"\x00\x01\x02"),
        ("d903616263", "abc"),
        ("dc0002c0c3", [None, True]),
        ("de0001a16101", {"a": 1}),
        ("8101a162", {1: "b"}),
    ],
)
def test_decode_forms(hexdata: str, value: Any) -> None:
    assert same(mpack.unpack(bytes.fromhex(hexdata)), value)


@pytest.mark.parametrize(
    ("hexdata", "why"),
    [
        ("c1", "unsupported type"),
        ("d40100", "unsupported type"),  # fixext 1
        ("c70100", "unsupported type"),  # ext 8
        ("d6ff00000000", "unsupported type"),  # timestamp 32
        ("", "truncated"),
        ("92", "truncated"),
        ("cd01", "truncated"),
        ("ddffffffff", "container too large"),
        ("dc0100" + "00" * 256, "container too large"),
        ("a2ffff", "invalid utf-8"),
        ("0101", "trailing"),
        ("81c001", "map key"),
        ("8190c0", "map key"),
        ("82a161c0a16101", "duplicate"),
        ("91" * 7 + "01", "nesting"),
        ("db0000ffff61", "truncated"),
    ],
)
def test_decode_rejects(hexdata: str, why: str) -> None:
    with pytest.raises(mpack.DecodeError, match=why):
        mpack.unpack(bytes.fromhex(hexdata))


def test_depth_and_size_limits_are_exact() -> None:
    assert mpack.unpack(bytes.fromhex("91" * 5 + "90")) == [[[[[[]]]]]]  # 6 containers
    with pytest.raises(mpack.DecodeError):
        mpack.unpack(bytes.fromhex("91" * 6 + "90"))
    assert mpack.unpack(bytes.fromhex("dc00ff" + "00" * 255)) == [0] * 255
    with pytest.raises(ValueError):
        mpack.pack([[[[[[[]]]]]]])


def test_pack_details() -> None:
    assert bytes(mpack.pack(-0.0)).hex() == "ca80000000"
    assert bytes(mpack.pack(0.1)).hex() == "ca3dcccccd"  # rounded to float32
    assert bytes(mpack.pack(1e39)).hex() == "ca7f800000"  # past float32: +inf, like a C cast
    assert bytes(mpack.pack(array("f", [1.5, 2.0]))) == msgpack.packb([1.5, 2.0], use_single_float=True)
    assert bytes(mpack.pack((1, 2))) == b"\x92\x01\x02"
    assert bytes(mpack.pack({"b": 1, "a": 2})) == b"\x82\xa1a\x02\xa1b\x01"
    assert bytes(mpack.pack(bytearray(b"\x01"))) == b"\xc4\x01\x01"
    for n in (65535, 65536):
        assert bytes(mpack.pack("s" * n)) == msgpack.packb("s" * n)
        assert bytes(mpack.pack(b"b" * n)) == msgpack.packb(b"b" * n, use_bin_type=True)
        assert bytes(mpack.pack([0] * n)) == msgpack.packb([0] * n)
        assert bytes(mpack.pack(dict.fromkeys(range(n), 0))) == msgpack.packb(dict.fromkeys(range(n), 0))
    with pytest.raises(ValueError):
        mpack.pack(2**64)
    with pytest.raises(ValueError):
        mpack.pack(-(2**63) - 1)
    with pytest.raises(ValueError):
        mpack.pack({1, 2})
