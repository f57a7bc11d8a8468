"""Golden wire vectors (tests/golden/vectors.json) against every codec.

The host codec (the ``msgpack`` library plus host framing), the firmware's own codec under
CPython, and the same firmware code under the MicroPython unix interpreter must all produce and
accept exactly these bytes.
"""

from __future__ import annotations

import json
import math
import zlib
from pathlib import Path
from typing import Any

import pytest

import fw_cases
from host_sdk import protocol as P
from host_sdk.errors import ProtocolError
from mp_runner import run_case

GOLDEN = Path(__file__).parent / "golden" / "vectors.json"
VECTORS: list[dict[str, Any]] = json.loads(GOLDEN.read_text())["vectors"]
BY_NAME = {v["name"]: v for v in VECTORS}
GOOD = [v for v in VECTORS if v["kind"] != "bad"]
BAD = [v for v in VECTORS if v["kind"] == "bad"]


def test_the_set_covers_the_protocol() -> None:
    # the calibration commands (READ_RAW, SET_ACTUATOR) keep their vectors beside their tests
    from test_calibration_commands import VECTORS as CALIBRATION_VECTORS

    assert len(VECTORS) >= 20
    commands = {v["command"] for v in VECTORS + CALIBRATION_VECTORS if v["kind"] == "request"}
    assert commands == {int(c) for c in P.Command}
    statuses = {v["status"] for v in VECTORS if v["kind"] == "reply"}
    assert {0, int(P.Status.BAD_ARGS), int(P.Status.UNKNOWN_COMMAND)} <= statuses
    largest = bytes.fromhex(BY_NAME["largest_frame"]["wire"])
    assert len(P.decode_frame(largest)) + 4 == P.MAX_FRAME
    assert {"oversize_frame", "bad_crc", "float32_edges", "int_edges"} <= set(BY_NAME)


def test_hello_request_by_hand() -> None:
    # msgpack: fixarray(5) [1, seq 1, address 3, HELLO 1, fixmap(0)]
    payload = bytes([0x95, 0x01, 0x01, 0x03, 0x01, 0x80])
    body = payload + zlib.crc32(payload).to_bytes(4, "little")
    assert 0 not in body  # so COBS is one block: length code, the bytes, the delimiter
    wire = bytes([len(body) + 1]) + body + b"\x00"
    assert BY_NAME["hello_request"]["wire"] == wire.hex()


def test_float32_edges_by_hand() -> None:
    payload = P.decode_frame(bytes.fromhex(BY_NAME["float32_edges"]["wire"]))
    for bits in ("00000000", "80000000", "3f800000", "c0200000", "3dcccccd", "7f800000",
                 "ff800000", "7fc00000", "7f7fffff", "ff7fffff", "00800000", "00000001", "80000001"):
        assert bytes.fromhex("ca" + bits) in payload, bits
    assert b"\xcb" not in payload  # no float64 on the wire


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) == math.copysign(1, b))
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return bool(a == b)


@pytest.mark.parametrize("vec", GOOD, ids=[v["name"] for v in GOOD])
def test_host_codec(vec: dict[str, Any]) -> None:
    wire = bytes.fromhex(vec["wire"])
    payloads = P.Deframer().feed(wire)
    assert len(payloads) == 1
    if vec["kind"] == "request":
        args = fw_cases.from_json(vec["args"])
        assert P.encode_request(vec["seq"], vec["address"], vec["command"], args) == wire
        req = P.decode_request(payloads[0])
        assert (req.seq, req.address, req.command) == (vec["seq"], vec["address"], vec["command"])
        assert _same(req.args, args)
    else:
        result = fw_cases.from_json(vec["result"])
        assert P.encode_reply(vec["seq"], vec["address"], vec["status"], result) == wire
        rep = P.decode_reply(payloads[0])
        assert (rep.seq, rep.address, rep.status) == (vec["seq"], vec["address"], vec["status"])
        assert _same(rep.result, result)


@pytest.mark.parametrize("vec", BAD, ids=[v["name"] for v in BAD])
def test_host_deframer_drops_bad_frames(vec: dict[str, Any]) -> None:
    d = P.Deframer()
    frames = d.feed(bytes.fromhex(vec["wire"]))
    assert {"frames": len(frames), "crc_errors": d.crc_errors, "oversize": d.oversize} == vec["expect"]


def test_host_refuses_to_build_an_oversize_frame() -> None:
    blob = fw_cases.from_json(BY_NAME["largest_frame"]["args"])["k"]
    with pytest.raises(ProtocolError, match="MAX_FRAME"):
        P.encode_request(21, 3, P.Command.SET_STIFFNESS, {"k": blob + b"\x01"})


def test_firmware_codec_under_cpython() -> None:
    results = fw_cases.golden(str(GOLDEN))
    assert [r for r in results if r[1] != "ok"] == []
    assert len(results) == len(VECTORS)


@pytest.mark.micropython
def test_firmware_codec_under_micropython() -> None:
    results = run_case("golden", str(GOLDEN))
    assert [r for r in results if r[1] != "ok"] == []
    assert len(results) == len(VECTORS)


# -- host codec edge cases ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        (P.pack({"a": 1}), "5-element"),
        (P.pack([1, 2, 3, 0]), "5-element"),
        (P.pack([2, 1, 3, 0, {}]), "version"),
        (P.pack([True, 1, 3, 0, {}]), "version"),
        (P.pack([1, -1, 3, 0, {}]), "seq"),
        (P.pack([1, 1, 255, 0, {}]), "address"),
        (P.pack([1, 1, 3, 0, "x"]), "result map"),
        (P.pack([1, 1, 3, 3, {}]), "message"),
        (b"\x95\x01\x01\x03\x00\xd4\x05\x00", "ext type"),
        (b"\x95\x01\x01\x03\x00\x80\x00", "bad msgpack"),
        (b"\xc1", "bad msgpack"),
    ],
)
def test_decode_reply_rejects(payload: bytes, match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        P.decode_reply(payload)


def test_reply_status_and_check() -> None:
    rep = P.decode_reply(P.pack([1, 4, 2, 9, "from a newer board"]))
    assert rep.status == 9 and not isinstance(rep.status, P.Status) and not rep.ok
    ok = P.decode_reply(P.pack([1, 4, 2, 0, {"a": 1}]))
    assert ok.status is P.Status.OK and ok.check() == {"a": 1}
    from host_sdk.errors import NodeError

    with pytest.raises(NodeError, match="board 2: BAD_STATE: nope") as info:
        P.decode_reply(P.pack([1, 4, 2, 4, "nope"])).check()
    assert (info.value.status, info.value.address) == (4, 2)


def test_encode_request_checks_and_numpy() -> None:
    np = pytest.importorskip("numpy")
    wire = P.encode_request(3, 1, P.Command.SET_STIFFNESS, {"k": np.array([1.5, 2.5], dtype=np.float32),
                                                            "n": np.int64(4)})
    req = P.decode_request(P.decode_frame(wire))
    assert req.args == {"k": [1.5, 2.5], "n": 4}
    for bad in ((-1, 1, 1), (2**32, 1, 1), (1, 256, 1), (1, 1, "x")):
        with pytest.raises(ProtocolError):
            P.encode_request(*bad)  # type: ignore[arg-type]
    with pytest.raises(ProtocolError, match="string keys"):
        P.encode_request(1, 1, 1, {1: 2})  # type: ignore[dict-item]
    with pytest.raises(ProtocolError, match="cannot encode"):
        P.encode_request(1, 1, 1, {"x": object()})
    with pytest.raises(ProtocolError, match="nested"):
        P.encode_request(1, 1, 1, {"x": [[[[[[]]]]]]})
    with pytest.raises(ProtocolError, match="MAX_ITEMS"):
        P.encode_request(1, 1, 1, {"x": [0] * 256})
    # past the float32 range: +-inf, as the board's C cast does
    assert P.decode_request(P.decode_frame(P.encode_request(1, 1, 1, {"x": -1e39}))).args == {"x": -math.inf}
