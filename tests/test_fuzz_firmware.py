"""Fuzzing the firmware's receive path: nothing crashes it, errors change nothing.

Hypothesis drives it under CPython; the MicroPython run pushes 10,000 (slow: 100,000) random
frames of ``fw_cases.fuzz`` through one board inside one ``micropython`` process.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fw_cases as fc
from host_sdk import protocol as P
from host_sdk.firmware.mnnfw import framing, mpack
from mp_runner import run_case

Cmd = P.Command
BOARD: dict[str, Any] = {}


def board() -> tuple[fc.FakeHal, Any, fc.Client]:
    """One configured board shared by the examples (its state is checked, not assumed)."""
    if not BOARD:
        d = tempfile.mkdtemp(prefix="fuzzflash")
        hal = fc.FakeHal(d)
        hal.set_levels(fc.Z)
        srv = fc.Server(hal)
        cl = fc.Client(srv)
        assert cl.call(fc.C.CONFIGURE, fc._configure_args())[0] == 0
        BOARD.update(hal=hal, srv=srv, cl=cl)
    return BOARD["hal"], BOARD["srv"], BOARD["cl"]


def check_feed(data: bytes) -> None:
    hal, srv, cl = board()
    before = fc._state(srv)
    out = srv.feed(data) + srv.feed(b"\x00")
    statuses = [P.decode_reply(p).status for p in P.Deframer().feed(out)]
    if P.Status.OK not in statuses:
        assert fc._state(srv) == before
    srv.want_repl = srv.want_reboot = False
    cl.address = srv.address
    assert cl.call(fc.C.STATUS, {})[0] == fc.C.OK


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_random_bytes(data: bytes) -> None:
    check_feed(data)


scalars = (
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(width=32)
    | st.sampled_from(list(fc._KEYS)) | st.binary(max_size=8)
)
msg_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.sampled_from(list(fc._KEYS)), inner, max_size=6),
    max_leaves=10,
)
arg_values = scalars | st.lists(scalars, max_size=4) | st.lists(st.lists(scalars, max_size=3), max_size=3)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(msg_values)
def test_random_messages_with_valid_crc(value: Any) -> None:
    try:
        wire = bytes(framing.encode_frame(mpack.pack(value)))
    except ValueError:
        return
    check_feed(wire)


commands = st.sampled_from([c for c in Cmd if c not in (Cmd.REPL, Cmd.REBOOT)] + [0, 14, 255])


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(commands, st.dictionaries(st.sampled_from(list(fc._KEYS)), arg_values, max_size=5), st.integers(0, 2**32 - 1))
def test_random_requests(cmd: int, args: dict[str, Any], seq: int) -> None:
    try:
        wire = P.encode_request(seq, 0, cmd, args)
    except Exception:
        return
    check_feed(wire)


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=1, max_size=200), st.integers(0, 199), st.integers(1, 255))
def test_mutated_frames(payload: bytes, pos: int, flip: int) -> None:
    wire = bytearray(P.encode_request(1, 0, Cmd.SET_STIFFNESS, {"k": [120.0, 130.0, 140.0], "p": payload}))
    wire[pos % (len(wire) - 1)] ^= flip
    check_feed(bytes(wire))


def _fuzz_ok(res: dict[str, Any], n: int) -> None:
    assert res["frames"] == n
    assert res["changed_on_error"] == 0
    assert res["unserved"] == 0
    c = res["counters"]
    # every kind of bad input was exercised
    assert c["crc_errors"] > n // 10 and c["bad_frames"] > n // 50 and c["errors"] > n // 10
    assert res["ok"] > 0


def test_fuzz_cases_under_cpython(tmp_path: Path) -> None:
    _fuzz_ok(fc.fuzz(2000, 7, str(tmp_path)), 2000)


@pytest.mark.micropython
def test_ten_thousand_random_frames_under_micropython(tmp_path: Path) -> None:
    _fuzz_ok(run_case("fuzz", "10000", "12345", str(tmp_path)), 10000)


@pytest.mark.slow
@pytest.mark.micropython
def test_hundred_thousand_random_frames_under_micropython(tmp_path: Path) -> None:
    _fuzz_ok(run_case("fuzz", "100000", "2024", str(tmp_path), timeout=3000), 100000)
