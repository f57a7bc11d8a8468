"""READ_RAW (14) and SET_ACTUATOR (15): the calibration commands.

Golden wire vectors for both commands are checked against the host codec, the firmware codec
(CPython and MicroPython), and end to end: a board fed the request bytes must answer exactly the
reply bytes, under both interpreters. The rest checks the commands' behaviour on a board whose
readings the test chooses (``fw_cases.FakeHal``).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import pytest

import fw_cases as fc
from host_sdk import protocol as P
from host_sdk.firmware.mnnfw.handlers import NOT_BROADCAST
from host_sdk.firmware.mnnfw.server import Server
from mp_runner import run_case, run_script

Cmd = P.Command
S = P.Status


def _f32(x: float) -> str:
    return struct.pack(">f", x).hex()


# The board of the end-to-end vectors: address 3, bonds 4 and 9 on strain channels 2 and 0,
# strain levels (counts) per channel and a displacement sensor level.
BOARD_CONFIG = {"bonds": [4, 9], "channels": [2, 0], "gain": [2.5e-10, 2.5e-10]}
STRAIN_LEVELS = [-1572863, 0, 100000, 0]
DISP_LEVEL = [-7716, 493132]

RAW_RESULT = {"disp": [-123456, 7890112], "n": 16, "settled": True, "strain": [1600000, -25165808]}

# name, kind, seq, address, command or status, args or result, wire (hex)
VECTORS: list[dict[str, Any]] = [
    {
        "name": "read_raw_request", "kind": "request", "seq": 40, "address": 3, "command": 14,
        "args": {"n": 16, "period_ms": 5, "timeout_ms": 2000, "tol": {"$f32": _f32(4.0)}},
        "wire": "2a950128030e84a16e10a9706572696f645f6d7305aa74696d656f75745f6d73cd07d0a3746f6c"
                "ca40800105152efa5e00",
    },
    {
        "name": "read_raw_reply", "kind": "reply", "seq": 40, "address": 3, "status": 0,
        "result": RAW_RESULT,
        "wire": "05950128030e84a46469737092d2fffe1dc0ce197864c0a16e10a7736574746c6564c3a67374"
                "7261696e92ce03186a04d2fe800610403f816d00",
    },
    {
        "name": "read_raw_last_request", "kind": "request", "seq": 41, "address": 3, "command": 14,
        "args": {"n": 0},
        "wire": "09950129030e81a16e05e10301bf00",
    },
    {
        "name": "read_raw_last_reply", "kind": "reply", "seq": 41, "address": 3, "status": 0,
        "result": RAW_RESULT,
        "wire": "05950129030e84a46469737092d2fffe1dc0ce197864c0a16e10a7736574746c6564c3a67374"
                "7261696e92ce03186a04d2fe800610b126b0e900",
    },
    {
        "name": "set_actuator_request", "kind": "request", "seq": 42, "address": 3, "command": 15,
        "args": {"cmd": [{"$f32": _f32(1000.0)}, {"$f32": _f32(1500.5)}]},
        "wire": "0f95012a030f81a3636d6492ca447a0105ca44bb9005b9478e4f00",
    },
    {
        "name": "set_actuator_reply", "kind": "reply", "seq": 42, "address": 3, "status": 0,
        "result": {},
        "wire": "0595012a030680c07d78e100",
    },
    {
        "name": "set_actuator_refused_request", "kind": "request", "seq": 43, "address": 3,
        "command": 15, "args": {"cmd": [{"$f32": _f32(2500.0)}, {"$f32": _f32(1500.0)}]},
        "wire": "1095012b030f81a3636d6492ca451c4005ca44bb8005b61d5a9700",
    },
    {
        "name": "set_actuator_refused_reply", "kind": "reply", "seq": 43, "address": 3, "status": 3,
        "result": "cmd[0] = 2500.0 outside the actuator range [1000.0, 2000.0]",
        "wire": "4795012b0303d93b636d645b305d203d20323530302e30206f75747369646520746865206163"
                "747561746f722072616e6765205b313030302e302c20323030302e305d256da34f00",
    },
]
EXCHANGES = [("read_raw_request", "read_raw_reply"), ("read_raw_last_request", "read_raw_last_reply"),
             ("set_actuator_request", "set_actuator_reply"),
             ("set_actuator_refused_request", "set_actuator_refused_reply")]
BY_NAME = {v["name"]: v for v in VECTORS}


# -- codecs --------------------------------------------------------------------------------------


def test_the_new_commands_are_in_the_table() -> None:
    assert (int(Cmd.READ_RAW), int(Cmd.SET_ACTUATOR)) == (14, 15)
    assert (fc.C.READ_RAW, fc.C.SET_ACTUATOR) == (14, 15)
    assert fc.C.SET_ACTUATOR in NOT_BROADCAST and fc.C.READ_RAW not in NOT_BROADCAST


@pytest.mark.parametrize("vec", VECTORS, ids=[v["name"] for v in VECTORS])
def test_host_codec(vec: dict[str, Any]) -> None:
    wire = bytes.fromhex(vec["wire"])
    value = fc.from_json(vec["args"] if vec["kind"] == "request" else vec["result"])
    if vec["kind"] == "request":
        assert P.encode_request(vec["seq"], vec["address"], vec["command"], value) == wire
        req = P.decode_request(P.decode_frame(wire))
        assert (req.seq, req.address, req.command, req.args) == (vec["seq"], vec["address"], vec["command"], value)
    else:
        assert P.encode_reply(vec["seq"], vec["address"], vec["status"], value) == wire
        rep = P.decode_reply(P.decode_frame(wire))
        assert (rep.seq, rep.address, rep.status, rep.result) == (vec["seq"], vec["address"], vec["status"], value)


def _vector_file(tmp_path: Path) -> Path:
    path = tmp_path / "calibration_vectors.json"
    path.write_text(json.dumps({"vectors": VECTORS}))
    return path


def test_firmware_codec_under_cpython(tmp_path: Path) -> None:
    results = fc.golden(str(_vector_file(tmp_path)))
    assert results == [[v["name"], "ok"] for v in VECTORS]


@pytest.mark.micropython
def test_firmware_codec_under_micropython(tmp_path: Path) -> None:
    results = run_case("golden", str(_vector_file(tmp_path)))
    assert results == [[v["name"], "ok"] for v in VECTORS]


# The end-to-end exchange, as a script both interpreters run: configure the board, set the
# levels, feed each request's wire bytes, print the reply bytes.
EXCHANGE_SCRIPT = """
import binascii, json, sys
import fw_cases as fc
try:
    from host_sdk.firmware.mnnfw.server import Server
except ImportError:
    from mnnfw.server import Server

def run(flash, config, levels, disp, requests):
    fc.clean_dir(flash)
    hal = fc.FakeHal(flash)
    srv = Server(hal, address=3)
    st = fc.Client(srv, 3).call(fc.C.CONFIGURE, config)[0]
    hal.set_levels(levels)
    hal.disp_level = disp
    hal.t += 1000
    out = [st]
    for wire in requests:
        out.append(str(binascii.hexlify(srv.feed(binascii.unhexlify(wire))), "ascii"))
    out.append([[c, x] for c, x in hal.cmds[-2:]])
    return out

if __name__ == "__main__":
    doc = json.loads(open(sys.argv[2]).read())
    print(json.dumps(run(sys.argv[1], doc["config"], doc["levels"], doc["disp"], doc["requests"])))
"""


def _exchange_input(tmp_path: Path) -> tuple[Path, list[str], list[str]]:
    requests = [BY_NAME[q]["wire"] for q, _ in EXCHANGES]
    replies = [BY_NAME[r]["wire"] for _, r in EXCHANGES]
    doc = tmp_path / "exchange.json"
    doc.write_text(json.dumps({"config": BOARD_CONFIG, "levels": STRAIN_LEVELS, "disp": DISP_LEVEL,
                               "requests": requests}))
    return doc, requests, replies


def test_a_board_answers_the_golden_bytes_under_cpython(tmp_path: Path) -> None:
    doc, _requests, replies = _exchange_input(tmp_path)
    namespace: dict[str, Any] = {"__name__": "exchange"}
    exec(compile(EXCHANGE_SCRIPT, "exchange", "exec"), namespace)
    spec = json.loads(doc.read_text())
    out = namespace["run"](str(tmp_path / "flash"), spec["config"], spec["levels"], spec["disp"], spec["requests"])
    assert out[0] == S.OK
    assert out[1:-1] == replies
    # the refused command left the actuators where the accepted one put them
    assert out[-1] == [[0, 1000.0], [1, 1500.5]]


@pytest.mark.micropython
def test_a_board_answers_the_golden_bytes_under_micropython(tmp_path: Path) -> None:
    doc, _requests, replies = _exchange_input(tmp_path)
    script = tmp_path / "exchange.py"
    script.write_text(EXCHANGE_SCRIPT)
    proc = run_script(script, str(tmp_path / "flash"), str(doc), cwd=tmp_path, timeout=60.0)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out[0] == S.OK
    assert out[1:-1] == replies
    assert out[-1] == [[0, 1000.0], [1, 1500.5]]


# -- behaviour -----------------------------------------------------------------------------------


class Board:
    """A server on a FakeHal, driven through the host codec."""

    def __init__(self, flash: Path, *, disp: bool = True, address: int = 3) -> None:
        self.flash = flash
        self.hal = fc.FakeHal(str(flash), disp=disp)
        self.srv = Server(self.hal, address=address)
        self.address = address
        self.seq = 1000

    def send(self, command: int, args: dict[str, Any] | None = None, *, address: int | None = None) -> P.Reply | None:
        self.seq += 1
        to = self.address if address is None else address
        out = self.srv.feed(P.encode_request(self.seq, to, command, args or {}))
        if not out:
            return None
        return P.decode_reply(P.decode_frame(out))

    def ok(self, command: int, args: dict[str, Any] | None = None) -> dict[str, Any]:
        reply = self.send(command, args)
        assert reply is not None
        return reply.check()

    def error(self, command: int, args: dict[str, Any]) -> tuple[int, str]:
        reply = self.send(command, args)
        assert reply is not None and not reply.ok
        return int(reply.status), str(reply.result)

    def flash_bytes(self) -> bytes:
        return (self.flash / "state.mp").read_bytes()


def _board(tmp_path: Path, **kw: Any) -> Board:
    b = Board(tmp_path, **kw)
    b.ok(Cmd.CONFIGURE, {"bonds": [4, 9, 17], "channels": [2, 0, 3], "act_channels": [1, 2, 0],
                         "gain": [2.5e-10, 5e-10, 1e-9], "k_min": [100.0] * 3, "k_max": [200.0] * 3,
                         "k": [150.0] * 3,
                         "act_table": [None, [[100.0, 900.0], [150.0, 1400.0], [200.0, 2100.0]], None]})
    return b


def test_read_raw_sums_every_channel_exactly(tmp_path: Path) -> None:
    b = _board(tmp_path)
    b.hal.set_levels([11, -7, 300001, 8388607])
    b.hal.disp_level = [-8388608, 5]
    b.hal.t += 1000
    r = b.ok(Cmd.READ_RAW, {"n": 64})
    # bonds 4, 9, 17 sit on channels 2, 0, 3: 64 readings each, summed without rounding
    assert r == {"strain": [64 * 300001, 64 * 11, 64 * 8388607], "disp": [64 * -8388608, 64 * 5],
                 "n": 64, "settled": True}
    assert b.ok(Cmd.READ_RAW, {"n": 0}) == r
    assert b.ok(Cmd.READ_RAW, {}) == {**r, "strain": [16 * 300001, 16 * 11, 16 * 8388607],
                                      "disp": [16 * -8388608, 16 * 5], "n": 16}


def test_read_raw_settles_on_a_moving_channel(tmp_path: Path) -> None:
    b = _board(tmp_path)
    b.hal.set_levels([0, 0, 0, 0])
    b.hal.t += 1000
    b.hal.set_levels([0, 0, 1 << 20, 0])  # channel 2 (bond 4) halves its distance every 4 ms
    t0 = b.hal.t
    unsettled = b.srv.stats["unsettled"]
    # rounds repeat until two rounds' sums of 4 readings differ by less than 4 * 3 counts
    r = b.ok(Cmd.READ_RAW, {"n": 4, "tol": 3.0, "timeout_ms": 1000, "period_ms": 5})
    assert r["settled"] is True
    assert abs(r["strain"][0] - 4 * (1 << 20)) < 4 * 3
    assert b.hal.t - t0 > 60  # it waited for the transient (4 ms halving from 2**20 counts)
    assert b.srv.stats["unsettled"] == unsettled
    # the gains play no part: the same with a gain a million times larger
    b.ok(Cmd.CONFIGURE, {"gain": [1e-3, 1e-3, 1e-3]})
    b.hal.set_levels([0, 0, 0, 0])
    r = b.ok(Cmd.READ_RAW, {"n": 4, "tol": 3.0, "timeout_ms": 1000, "period_ms": 5})
    assert r["settled"] is True and abs(r["strain"][0]) < 4 * 3
    # a timeout is reported and counted, never a hang
    b.hal.set_levels([0, 0, 1 << 22, 0])
    r = b.ok(Cmd.READ_RAW, {"n": 4, "tol": 1.0, "timeout_ms": 10, "period_ms": 5})
    assert r["settled"] is False and b.srv.stats["unsettled"] == unsettled + 1
    # READ_OUTPUT still reports no settle-checked measurement: READ_RAW left it alone
    assert b.error(Cmd.READ_OUTPUT, {"n": 0})[0] == S.BAD_STATE


def test_read_raw_errors(tmp_path: Path) -> None:
    b = _board(tmp_path)
    assert b.error(Cmd.READ_RAW, {"n": 0}) == (S.BAD_STATE, "no READ_RAW measurement yet: ask for n >= 1 readings")
    assert b.error(Cmd.READ_RAW, {"n": 65})[0] == S.BAD_ARGS
    assert b.error(Cmd.READ_RAW, {"n": 0, "tol": 1e-6}) == (S.BAD_ARGS, "settling (tol > 0) needs n >= 1")
    assert b.error(Cmd.READ_RAW, {"n": 4, "tol": -1.0})[0] == S.BAD_ARGS
    assert b.error(Cmd.READ_RAW, {"n": 4, "gain": 1.0}) == (S.BAD_ARGS, "unknown arg 'gain'")
    b.hal.fail = "HX711 timeout"
    status, message = b.error(Cmd.READ_RAW, {"n": 4})
    assert status == S.HW_ERROR and "HX711 timeout" in message


def test_read_raw_without_a_displacement_sensor(tmp_path: Path) -> None:
    b = _board(tmp_path, disp=False)
    b.hal.set_levels([5, 6, 7, 8])
    b.hal.t += 1000
    assert b.ok(Cmd.READ_RAW, {"n": 2}) == {"strain": [14, 10, 16], "n": 2, "settled": True}


def test_broadcast_read_raw_then_collect(tmp_path: Path) -> None:
    b = _board(tmp_path)
    b.hal.set_levels([1, 2, 3, 4])
    b.hal.t += 1000
    assert b.send(Cmd.READ_RAW, {"n": 8}, address=P.BROADCAST) is None
    assert b.ok(Cmd.READ_RAW, {"n": 0})["strain"] == [24, 8, 32]


def test_set_actuator_drives_raw_commands_and_keeps_k(tmp_path: Path) -> None:
    b = _board(tmp_path)
    stored = b.flash_bytes()
    k = b.ok(Cmd.READ_BONDS)["k"]
    b.hal.cmds.clear()
    assert b.ok(Cmd.SET_ACTUATOR, {"cmd": [1000.0, 2100.0, 1234.5]}) == {}
    # actuator channels 1, 2, 0; bond 9's table reaches 900..2100 us
    assert b.hal.cmds == [(1, 1000.0), (2, 2100.0), (0, 1234.5)]
    bonds = b.ok(Cmd.READ_BONDS)
    assert bonds["cmd"] == [1000.0, 2100.0, 1234.5] and bonds["k"] == k
    assert b.flash_bytes() == stored  # nothing persisted
    # CONFIGURE (no fields) drives the table's commands for k again
    b.hal.cmds.clear()
    b.ok(Cmd.CONFIGURE, {})
    assert b.hal.cmds == [(1, 1500.0), (2, 1400.0), (0, 1500.0)]


@pytest.mark.parametrize(
    ("cmd", "message"),
    [
        ([999.0, 1500.0, 1500.0], "cmd[0] = 999.0 outside the actuator range [1000.0, 2000.0]"),
        ([1500.0, 2100.5, 1500.0], "cmd[1] = 2100.5 outside the actuator range [900.0, 2100.0]"),
        ([1500.0, 1500.0, float("nan")], "cmd[2] must be finite"),
        ([1500.0, 1500.0], "cmd needs 3 items, got 2"),
        (1500.0, "cmd must be an array"),
    ],
)
def test_set_actuator_refuses_and_changes_nothing(tmp_path: Path, cmd: Any, message: str) -> None:
    b = _board(tmp_path)
    before = (b.ok(Cmd.READ_BONDS), list(b.hal.cmds), b.flash_bytes())
    assert b.error(Cmd.SET_ACTUATOR, {"cmd": cmd}) == (S.BAD_ARGS, message)
    assert (b.ok(Cmd.READ_BONDS), list(b.hal.cmds), b.flash_bytes()) == before


def test_set_actuator_is_refused_when_broadcast(tmp_path: Path) -> None:
    b = _board(tmp_path)
    errors = b.srv.stats["errors"]
    commands = list(b.hal.cmds)
    assert b.send(Cmd.SET_ACTUATOR, {"cmd": [1500.0] * 3}, address=P.BROADCAST) is None
    assert b.hal.cmds == commands and b.srv.stats["errors"] == errors + 1
    assert b.error(Cmd.SET_ACTUATOR, {})[1] == "missing arg 'cmd'"
