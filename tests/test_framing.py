"""COBS + CRC32 framing: known COBS vectors, host/firmware agreement, the deframers' counters."""

from __future__ import annotations

import zlib
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from host_sdk import protocol as P
from host_sdk.errors import ProtocolError
from host_sdk.firmware.mnnfw import framing as F

R = bytes(range(1, 256))  # 01..FF
COBS = [
    (b"", "01"),
    (b"\x00", "0101"),
    (b"\x00\x00", "010101"),
    (b"\x00\x11\x00", "01021101"),
    (b"\x11\x22\x00\x33", "0311220233"),
    (b"\x11\x22\x33\x44", "0511223344"),
    (b"\x11\x00\x00\x00", "0211010101"),
    (R[:254], "ff" + R[:254].hex()),
    (b"\x00" + R[:254], "01ff" + R[:254].hex()),
    (R, "ff" + R[:254].hex() + "02ff"),
    (R[1:] + b"\x00", "ff" + R[1:].hex() + "0101"),
    (R[2:] + b"\x00\x01", "fe" + R[2:].hex() + "0201"),
]


def fw_encode(data: bytes) -> bytes:
    return bytes(F.cobs_encode(data))


def fw_decode(data: bytes) -> bytes:
    buf = bytearray(data)
    n = F.cobs_decode(buf, len(buf))
    if n < 0:
        raise ProtocolError("bad COBS")
    return bytes(buf[:n])


@pytest.mark.parametrize(("data", "encoded"), COBS, ids=range(len(COBS)))
def test_cobs_known_vectors(data: bytes, encoded: str) -> None:
    assert P.cobs_encode(data).hex() == encoded
    assert fw_encode(data).hex() == encoded
    assert P.cobs_decode(bytes.fromhex(encoded)) == data
    assert fw_decode(bytes.fromhex(encoded)) == data


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=1100) | st.lists(st.sampled_from([0, 1, 255]), max_size=800).map(bytes))
def test_cobs_roundtrip_and_agreement(data: bytes) -> None:
    enc = P.cobs_encode(data)
    assert fw_encode(data) == enc
    assert 0 not in enc
    assert len(enc) <= len(data) + len(data) // 254 + 1
    assert P.cobs_decode(enc) == data
    assert fw_decode(enc) == data


@pytest.mark.parametrize("bad", [b"\x05\x11\x22", b"\x00\x01", b"\x03\x11"])
def test_cobs_invalid_codes(bad: bytes) -> None:
    with pytest.raises(ProtocolError):
        P.cobs_decode(bad)
    with pytest.raises(ProtocolError):
        fw_decode(bad)


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1, max_size=P.MAX_FRAME - 4))
def test_encode_frame_agrees_and_carries_crc(payload: bytes) -> None:
    wire = P.encode_frame(payload)
    assert bytes(F.encode_frame(payload)) == wire
    assert wire[-1] == 0 and 0 not in wire[:-1]
    body = P.cobs_decode(wire[:-1])
    assert body == payload + zlib.crc32(payload).to_bytes(4, "little")
    assert P.decode_frame(wire) == payload


class FwDeframer:
    """The firmware deframer behind the host deframer's interface."""

    def __init__(self) -> None:
        self.d = F.Deframer()

    def feed(self, data: bytes) -> list[bytes]:
        out = []
        i = 0
        while i < len(data):
            i = self.d.scan(data, i)
            if self.d.ready >= 0:
                out.append(bytes(self.d.buf[: self.d.ready]))
        return out

    @property
    def crc_errors(self) -> int:
        return int(self.d.crc_errors)

    @property
    def oversize(self) -> int:
        return int(self.d.oversize)


DEFRAMERS: dict[str, Callable[[], P.Deframer | FwDeframer]] = {"host": P.Deframer, "firmware": FwDeframer}


def raw_frame(payload: bytes) -> bytes:
    body = payload + zlib.crc32(payload).to_bytes(4, "little")
    return P.cobs_encode(body) + b"\x00"


@pytest.fixture(params=sorted(DEFRAMERS))
def make(request: pytest.FixtureRequest) -> Callable[[], P.Deframer | FwDeframer]:
    return DEFRAMERS[request.param]


def test_any_split_gives_the_same_frames(make: Callable[[], P.Deframer | FwDeframer]) -> None:
    stream = raw_frame(b"\x00abc\x00") + raw_frame(bytes(300)) + raw_frame(b"\x01")
    for cut in range(len(stream) + 1):
        d = make()
        got = d.feed(stream[:cut]) + d.feed(stream[cut:])
        assert got == [b"\x00abc\x00", bytes(300), b"\x01"], cut
    d = make()
    assert sum((d.feed(bytes([b])) for b in stream), []) == [b"\x00abc\x00", bytes(300), b"\x01"]


def test_crc_errors_are_dropped_and_counted(make: Callable[[], P.Deframer | FwDeframer]) -> None:
    good = raw_frame(b"hello")
    bad = bytearray(good)
    bad[2] ^= 0x01
    d = make()
    assert d.feed(bytes(bad) + good) == [b"hello"]
    assert (d.crc_errors, d.oversize) == (1, 0)
    # too short to hold a CRC, and broken COBS codes: counted the same way
    assert d.feed(b"\x02\x11\x00" + b"\x09\x11\x00" + good) == [b"hello"]
    assert d.crc_errors == 3


def test_empty_frames_only_resynchronise(make: Callable[[], P.Deframer | FwDeframer]) -> None:
    d = make()
    assert d.feed(b"\x00\x00\x00" + raw_frame(b"x") + b"\x00") == [b"x"]
    assert (d.crc_errors, d.oversize) == (0, 0)


@pytest.mark.parametrize("fill", [0x00, 0x5A])
def test_frame_size_bound(make: Callable[[], P.Deframer | FwDeframer], fill: int) -> None:
    # zeros decode longer than they encode, non-zero runs encode longer: both paths end at
    # exactly MAX_FRAME bytes of payload + CRC
    largest = bytes([fill]) * (P.MAX_FRAME - 4)
    d = make()
    assert d.feed(raw_frame(largest)) == [largest]
    assert d.feed(raw_frame(largest + bytes([fill])) + raw_frame(b"ok")) == [b"ok"]
    assert (d.crc_errors, d.oversize) == (0, 1)


def test_endless_garbage_is_bounded(make: Callable[[], P.Deframer | FwDeframer]) -> None:
    d = make()
    assert d.feed(b"\x55" * 50_000) == []
    assert d.feed(b"\x00" + raw_frame(b"after")) == [b"after"]
    assert (d.crc_errors, d.oversize) == (0, 1)


def test_decode_frame_errors() -> None:
    good = raw_frame(b"abc")
    assert P.decode_frame(good) == b"abc"
    with pytest.raises(ProtocolError, match="CRC"):
        P.decode_frame(good[:1] + bytes([good[1] ^ 1]) + good[2:])
    with pytest.raises(ProtocolError, match="short"):
        P.decode_frame(P.cobs_encode(b"\x01\x02") + b"\x00")
    with pytest.raises(ProtocolError, match="too large"):
        P.encode_frame(bytes(P.MAX_FRAME - 3))
    with pytest.raises(ProtocolError, match="at least one"):
        P.encode_frame(b"")
    with pytest.raises(ValueError):
        F.encode_frame(bytes(P.MAX_FRAME - 3))
