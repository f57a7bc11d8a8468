"""Hostile input: size and nesting caps on both sides of the wire, no code execution or object
deserialisation on any wire path, validated rig and calibration files, and a board-level fuzz
of the firmware under MicroPython that must change nothing and crash nothing."""

from __future__ import annotations

import ast
import math
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from host_sdk import protocol as P
from host_sdk.coordinator import RigSession
from host_sdk.emulator.rig import EmulatedRig
from host_sdk.errors import ConfigError, ProtocolError
from host_sdk.firmware.mnnfw import framing, mpack
from host_sdk.rig import load_rig, rig_to_toml
from host_sdk.transport import open_transport

ROOT = Path(__file__).resolve().parents[1]
C = P.Command


def frame_of(payload: bytes) -> bytes:
    """A frame with a valid CRC around any payload (the encoder's checks bypassed)."""
    return bytes(framing.encode_frame(bytearray(payload)))


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


# -- caps on the host side -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, words",
    [
        ([1, 2, 3, 0, list(range(256))], "MAX_ITEMS"),
        ([1, 2, 3, 0, {str(i): i for i in range(256)}], "MAX_ITEMS"),
        ([1, 2, 3, 0, nested(6)], "nested deeper"),
    ],
)
def test_host_decoder_refuses_oversized_and_deep_containers(value: Any, words: str) -> None:
    payload = msgpack.packb(value, use_bin_type=True)
    with pytest.raises(ProtocolError, match=words):
        P.decode_reply(payload)


@pytest.mark.parametrize("ext", [b"\xd4\x01\x00", b"\xd6\xff\x00\x00\x00\x00", b"\xc7\x01\x05\x00", b"\xc1"])
def test_host_decoder_refuses_extension_types(ext: bytes) -> None:
    payload = b"\x95\x01\x01\x03\x00" + ext
    with pytest.raises(ProtocolError):
        P.decode_reply(payload)


def test_host_encoder_keeps_within_the_caps() -> None:
    with pytest.raises(ProtocolError, match="MAX_ITEMS"):
        P.encode_request(1, 3, C.SET_STIFFNESS, {"k": [1.0] * 256})
    with pytest.raises(ProtocolError, match="nested deeper"):
        P.encode_request(1, 3, C.CONFIGURE, {"act_table": nested(6)})
    with pytest.raises(ProtocolError, match="MAX_FRAME"):
        P.encode_request(1, 3, C.CONFIGURE, {"x": "a" * 1100})


def test_host_deframer_never_buffers_past_the_largest_frame() -> None:
    d = P.Deframer()
    limit = P.MAX_FRAME + P.MAX_FRAME // 254 + 1
    for _ in range(50):
        assert d.feed(b"\x55" * 700) == []
        assert len(d._buf) <= limit
    assert d.feed(b"\x00") == [] and d.oversize == 1
    good = P.encode_request(9, 3, C.HELLO, {})
    assert d.feed(good) == [P.decode_frame(good[:-1])]  # and the next frame is fine


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2100))
def test_host_receive_path_raises_nothing_but_protocol_errors(data: bytes) -> None:
    d = P.Deframer()
    for payload in d.feed(data + b"\x00"):
        try:
            reply = P.decode_reply(payload)
        except ProtocolError:
            continue
        assert 0 <= reply.seq <= P.MAX_SEQ and 0 <= reply.address <= 255


plain = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(max_size=8)
    | st.binary(max_size=8),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=4) | st.integers(0, 9), inner, max_size=5),
    max_leaves=20,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plain)
def test_host_decoder_on_any_msgpack_value(value: Any) -> None:
    try:
        payload = msgpack.packb(value, use_bin_type=True)
    except (ValueError, OverflowError, TypeError):
        return
    try:
        reply = P.decode_reply(payload)
    except ProtocolError:
        return
    assert isinstance(reply.seq, int) and isinstance(reply.status, int)


# -- caps on the firmware side (its codec under CPython; MicroPython below) --------------------------


@pytest.mark.parametrize(
    "payload",
    [
        msgpack.packb([1, 1, 3, 1, list(range(256))]),
        msgpack.packb([1, 1, 3, 1, nested(6)]),
        b"\x95\x01\x01\x03\x01\xd4\x01\x00",
        b"\x95\x01\x01\x03\x01\xc1",
        msgpack.packb([1, 1, 3, 1, {}]) + b"\x00",  # bytes after the message
        b"\xdd\xff\xff\xff\xff",  # an array that claims 4 billion items
    ],
)
def test_firmware_codec_refuses_what_the_protocol_forbids(payload: bytes) -> None:
    with pytest.raises(ValueError):
        mpack.unpack(memoryview(bytearray(payload)), len(payload))


def test_firmware_server_drops_oversize_and_refuses_forbidden_broadcasts(tmp_path: Path) -> None:
    import fw_cases as fc

    hal = fc.FakeHal(str(tmp_path))
    srv = fc.Server(hal)
    assert srv.feed(b"\x33" * 5000 + b"\x00") == b""
    assert srv.deframer.oversize == 1
    before = fc._state(srv)
    for cmd, args in ((C.CONFIGURE, {"k": []}), (C.SET_STIFFNESS, {"k": []}), (C.REPL, {})):
        assert srv.feed(P.encode_request(5, P.BROADCAST, cmd, args)) == b""
    assert srv.errors == 3 and fc._state(srv) == before and not srv.want_repl


# -- actuator limits: whatever arrives on the wire ------------------------------------------------

wire_float = (
    st.floats(allow_nan=True, allow_infinity=True, width=32)
    | st.sampled_from([0.0, -0.0, 1e-45, 99.0, 100.0, 150.0, 200.0, 201.0, 3.4e38, -3.4e38, math.nan])
    | st.integers(-(2**31), 2**31)
)
table_points = st.lists(
    st.tuples(st.floats(0.0, 500.0), st.floats(-5000.0, 5000.0)), min_size=2, max_size=8
).map(lambda pts: sorted({round(k, 3): c for k, c in pts}.items()))
operation = st.one_of(
    st.tuples(st.just("set"), st.lists(wire_float, min_size=0, max_size=4)),
    st.tuples(st.just("bounds"), st.lists(wire_float, min_size=3, max_size=3), st.lists(wire_float, min_size=3, max_size=3)),
    st.tuples(st.just("table"), st.integers(0, 2), table_points),
    st.tuples(st.just("sample"), st.lists(st.integers(-(2**23), 2**23 - 1), min_size=4, max_size=4),
              st.lists(st.integers(-(2**23), 2**23 - 1), min_size=4, max_size=4), wire_float),
    st.tuples(st.just("update"), wire_float, st.integers(0, 1), wire_float, wire_float, wire_float,
              st.integers(-2, 3)),
)


def _range(node: Any, i: int) -> tuple[float, float]:
    """The command range bond ``i``'s calibration allows (the table's, or the default map's)."""
    t = node.tables[i]
    if t is None:
        return 1000.0, 2000.0
    cmds = [t[j] for j in range(1, len(t), 2)]
    return min(cmds), max(cmds)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(operation, min_size=1, max_size=12))
def test_no_actuator_command_leaves_its_calibrated_range(tmp_path_factory: Any, ops: list[Any]) -> None:
    import fw_cases as fc

    hal = fc.FakeHal(str(tmp_path_factory.mktemp("flash")), n_strain=3, n_act=3)
    srv = fc.Server(hal)
    cl = fc.Client(srv)
    assert cl.call(fc.C.CONFIGURE, fc._configure_args())[0] == 0
    node = srv.node
    step, sample = 1, 0

    def check() -> None:
        for ch, cmd in hal.cmds:
            lo, hi = _range(node, list(node.act).index(ch))
            assert math.isfinite(cmd) and lo <= cmd <= hi, (ch, cmd, lo, hi)
        hal.cmds.clear()

    check()
    for op in ops:
        if op[0] == "set":
            cl.call(fc.C.SET_STIFFNESS, {"k": op[1]})
        elif op[0] == "bounds":
            cl.call(fc.C.CONFIGURE, {"k_min": op[1], "k_max": op[2]})
        elif op[0] == "table":
            tables: list[Any] = [None, None, None]
            tables[op[1]] = [[k, c] for k, c in op[2]]
            cl.call(fc.C.CONFIGURE, {"act_table": tables})
        elif op[0] == "sample":
            hal.set_levels(op[1][:3])
            cl.call(fc.C.SAMPLE, {"phase": 0, "step": step, "sample": sample, "tol": 1e-3, "n": 1})
            hal.set_levels(op[2][:3])
            cl.call(fc.C.SAMPLE, {"phase": 1, "step": step, "sample": sample, "tol": 1e-3, "n": 1,
                               "gain": op[3]})
            sample += 1
        else:
            _, lr, opt, b1, b2, eps, extra = op
            count = max(1, node.count + extra)
            cl.call(fc.C.UPDATE, {"step": step, "count": count, "lr": lr, "opt": opt, "b1": b1,
                               "b2": b2, "eps": eps})
            if node.last_step == step:
                step, sample = step + 1, 0
        check()


# -- no code or object deserialisation on any wire path ----------------------------------------------

_FORBIDDEN_MODULES = {"pickle", "cPickle", "marshal", "shelve", "dill", "cloudpickle", "jsonpickle", "yaml"}
# calls that would run code or build objects from data
_FORBIDDEN_CALLS = {"eval", "exec", "compile", "__import__", "execfile", "input"}
# the one allowed dynamic import: a board's boot code picks its HAL module by the name in its
# own flash file board.cfg (written by deploy), never by anything that arrives on the wire
_ALLOWED = {("firmware/main.py", "__import__")}


def _sources() -> Iterator[tuple[str, ast.AST]]:
    for base in ("host_sdk", "firmware"):
        for path in sorted((ROOT / base).rglob("*.py")):
            yield str(path.relative_to(ROOT)), ast.parse(path.read_text(encoding="utf-8"))


def _scan(rel: str, tree: ast.AST) -> list[tuple[str, str]]:
    """Everything in one module that could run code or rebuild objects from data."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(rel, a.name) for a in node.names if a.name.split(".")[0] in _FORBIDDEN_MODULES]
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module.split(".")[0] in _FORBIDDEN_MODULES:
                found.append((rel, node.module))
        elif isinstance(node, ast.Call):
            fn = node.func
            if isinstance(fn, ast.Name) and fn.id in _FORBIDDEN_CALLS and (rel, fn.id) not in _ALLOWED:
                found.append((rel, f"{fn.id}() at line {node.lineno}"))
            if isinstance(fn, ast.Attribute) and fn.attr == "import_module":
                if not (node.args and isinstance(node.args[0], ast.Constant)):
                    found.append((rel, f"import_module of a computed name at line {node.lineno}"))
            if isinstance(fn, ast.Attribute) and fn.attr in ("unpackb", "Unpacker"):
                if "ext_hook" not in {k.arg for k in node.keywords}:
                    found.append((rel, f"msgpack {fn.attr} without an ext_hook at line {node.lineno}"))
        elif isinstance(node, ast.Attribute) and node.attr == "ExtType":
            found.append((rel, f"msgpack ExtType at line {node.lineno}"))
    return found


def test_no_eval_exec_pickle_or_dynamic_imports_in_the_sources() -> None:
    sources = list(_sources())
    assert len(sources) > 40
    assert [f for rel, tree in sources for f in _scan(rel, tree)] == []


def test_the_scan_catches_what_it_forbids() -> None:
    source = (
        "import pickle\nfrom yaml import load\nx = eval(data)\nexec(code)\n__import__(name)\n"
        "importlib.import_module(name)\nmsgpack.unpackb(b)\nmsgpack.ExtType(1, b'')\n"
        "re.compile('x')\nimportlib.import_module('serial')\nmsgpack.unpackb(b, ext_hook=f)\n"
    )
    found = _scan("evil.py", ast.parse(source))
    assert len(found) == 8
    assert _scan("firmware/main.py", ast.parse("__import__(cfg['hal'])")) == []


# -- rig and calibration files ---------------------------------------------------------------------

BASE = rig_to_toml(load_rig("paper"))


@pytest.mark.parametrize(
    "old, new, words",
    [
        ("k_min = 103.125", "k_min = nan", "k_min: expected a positive finite number"),
        ("k_min = 103.125", "k_min = 1e400", "k_min"),
        ("address = 3\n", "address = 300\n", "board[3].address: expected an integer 0..254"),
        ('port = "emu://paper/3"', 'port = "ftp://x"', "unknown port URL scheme"),
        ("bonds = [15, 16]", "bonds = [15, 999]", "expected a bond index 0..27"),
        ("bonds = [15, 16]", "bonds = [15, 15]", "board[3].bonds"),
        ("force = false\ndisp = false", 'force = false\ndisp = false\ncalibration = {gain = ["abc", 1e-9]}',
         "calibration.gain"),
        ("force = false\ndisp = false",
         "force = false\ndisp = false\ncalibration = {act_table = [[[150.0, 1000.0], [120.0, 2000.0]], [[1.0, 1.0], [2.0, 2.0]]]}",
         "calibration.act_table"),
        ("force = false\ndisp = false",
         "force = false\ndisp = false\ncalibration = {act_table = [[[1.0, 1.0], [2.0, 2.0], [3.0, 3.0], [4.0, 4.0], [5.0, 5.0], [6.0, 6.0], [7.0, 7.0], [8.0, 8.0], [9.0, 9.0]], [[1.0, 1.0], [2.0, 2.0]]]}",
         "calibration.act_table"),
        ("force = false\ndisp = false", 'force = false\ndisp = false\ncalibration = {evil = "__import__"}',
         "calibration"),
    ],
)
def test_hostile_rig_files_give_one_line_naming_file_and_field(tmp_path: Path, old: str, new: str, words: str) -> None:
    assert old in BASE
    path = tmp_path / "hostile.toml"
    path.write_text(BASE.replace(old, new, 1), encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_rig(str(path))
    message = str(info.value)
    assert str(path) in message and words in message and "\n" not in message


def test_deeply_nested_rig_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "deep.toml"
    path.write_text(BASE + "\nx = " + "[" * 600 + "]" * 600 + "\n", encoding="utf-8")
    with pytest.raises(ConfigError):
        load_rig(str(path))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=400), st.integers(0, len(BASE)))
def test_mangled_rig_files_load_or_give_a_config_error(tmp_path: Path, junk: bytes, at: int) -> None:
    path = tmp_path / "mangled.toml"
    path.write_bytes(BASE.encode()[:at] + junk + BASE.encode()[at:])
    try:
        load_rig(str(path))
    except ConfigError as e:
        assert "\n" not in str(e)


# -- the firmware under MicroPython, at board level ----------------------------------------------------


def _bad_args(rng: np.random.Generator) -> tuple[int, dict[str, Any]]:
    """A request every board must refuse (or treat as a no-op) whatever its state."""
    nan, inf = math.nan, math.inf
    choices: list[tuple[int, dict[str, Any]]] = [
        (C.CONFIGURE, {"k": [1e9, 1e9]}),
        (C.CONFIGURE, {"bonds": [1, 1]}),
        (C.CONFIGURE, {"address": 300}),
        (C.CONFIGURE, {"gain": [0.0, 0.0]}),
        (C.CONFIGURE, {"channels": [99, 0]}),
        (C.CONFIGURE, {"k_min": [200.0, 200.0], "k_max": [100.0, 100.0]}),
        (C.CONFIGURE, {"act_table": [[[2.0, 1.0], [1.0, 2.0]], None]}),
        (C.CONFIGURE, {"bonds": list(range(17))}),
        (C.CONFIGURE, {"nonsense": 1}),
        (C.SET_STIFFNESS, {"k": [nan, 120.0]}),
        (C.SET_STIFFNESS, {"k": [120.0]}),
        (C.SET_STIFFNESS, {"k": [1e9, 1e9]}),
        (C.SET_STIFFNESS, {"k": [-inf, 120.0]}),
        (C.SET_STIFFNESS, {"k": "many"}),
        (C.UPDATE, {"step": -1, "count": 1, "lr": 1.0}),
        (C.UPDATE, {"step": 10**6, "count": 0, "lr": 1.0}),
        (C.UPDATE, {"step": 10**6, "count": 16, "lr": nan}),
        (C.UPDATE, {"step": 10**6, "count": 16, "lr": 1.0, "b1": 1.0, "opt": 1}),
        (C.UPDATE, {"step": 10**6, "count": 16, "lr": 1.0}),  # nothing accumulated: BAD_STATE
        (C.TARE, {"n": 0}),
        (C.TARE, {"n": 65}),
        (C.SAMPLE, {"phase": 2, "step": 1, "sample": 0}),
        (C.SAMPLE, {"phase": 0, "step": -1, "sample": 0}),
        (C.SAMPLE, {"phase": 0, "step": 1, "sample": 5000}),
        (C.SAMPLE, {"phase": 0, "step": 1, "sample": 0, "tol": 0.0}),
        (C.SAMPLE, {"phase": 1, "step": 1, "sample": 0, "gain": 0.0}),
        (C.SAMPLE, {"phase": 1, "step": 10**6, "sample": 3}),  # ADJ without FWD: BAD_STATE
        (C.SET_LOAD, {"fx": nan, "fy": 0.0}),
        (C.SET_LOAD, {"fx": 1.0}),
        (C.DISCARD, {"step": -3}),
        (C.READ_OUTPUT, {"n": 0, "tol": 1e-6}),
        (C.HELLO, {"x": 1}),
        (C.REBOOT, {"now": True}),
        (C.REPL, {"please": 1}),
        (99, {}),
    ]
    return choices[int(rng.integers(len(choices)))]


def hostile_frames(rng: np.random.Generator, address: int) -> bytes:
    """One hostile frame for the board at ``address``: random bytes, damaged frames, broken
    messages, refused requests, forbidden broadcasts, frames for other boards, oversize."""
    kind = int(rng.integers(8))
    seq = int(rng.integers(0, 2**32))
    if kind == 0:
        return bytes(rng.integers(0, 256, int(rng.integers(1, 300))).astype(np.uint8)) + b"\x00"
    if kind == 1:  # a good request with bytes flipped: fails its CRC (or COBS)
        frame = bytearray(P.encode_request(seq, address, C.SET_STIFFNESS, {"k": [110.0, 120.0]}))
        for i in rng.choice(len(frame) - 1, size=int(rng.integers(1, 4)), replace=False):
            new = int(rng.integers(1, 256))  # another non-zero value: the delimiters stay put
            frame[i] = new if new != frame[i] else new % 255 + 1
        return bytes(frame)
    if kind == 2:  # valid CRC, not a request
        junk = [
            msgpack.packb([2, seq, address, 1, {}]),
            msgpack.packb([1, seq, address]),
            msgpack.packb({"seq": seq}),
            msgpack.packb([1, seq, address, 1, list(range(300))]),
            msgpack.packb([1, seq, address, 1, nested(7)]),
            b"\x95\x01\x01" + bytes([address]) + b"\x01\xd4\x01\x00",
            msgpack.packb([1, -1, address, 1, {}]),
            msgpack.packb([1, seq, address, 1, {}]) + b"\xc0",
            bytes(rng.integers(0, 256, int(rng.integers(1, 60))).astype(np.uint8)),
        ]
        return frame_of(junk[int(rng.integers(len(junk)))])
    if kind in (3, 4):
        cmd, args = _bad_args(rng)
        return frame_of(msgpack.packb([1, seq, address, cmd, args], use_bin_type=True))
    if kind == 5:  # commands that name one board's data, broadcast: refused
        cmd = [C.CONFIGURE, C.SET_STIFFNESS, C.REPL][int(rng.integers(3))]
        args = {"k": [110.0, 120.0]} if cmd != C.REPL else {}
        return P.encode_request(seq, P.BROADCAST, cmd, args)
    if kind == 6:  # valid, state-changing, for another board: ignored
        other = (address + 1 + int(rng.integers(0, 253))) % 255
        cmd, args = [(C.SET_STIFFNESS, {"k": [110.0, 120.0]}), (C.REBOOT, {}), (C.REPL, {}),
                     (C.TARE, {"n": 4}), (C.SET_LOAD, {"fx": 0.1, "fy": 0.0})][int(rng.integers(5))]
        return P.encode_request(seq, other, cmd, args)
    return b"\x44" * int(rng.integers(1100, 3000)) + b"\x00"  # oversize


def _state(session: RigSession, emu: EmulatedRig, address: int) -> tuple[Any, ...]:
    hello = session.hello(address)
    bonds = session.request(address, C.READ_BONDS)
    with open(Path(emu.flash_dirs[address]) / "state.mp", "rb") as f:
        record = f.read()
    keep = ("address", "node", "bonds", "boots", "step", "configured", "firmware_hash")
    return tuple(hello[k] for k in keep), bonds, record


def fuzz_boards(frames_per_board: int, seed: int) -> dict[str, int]:
    """Push hostile frames at every MicroPython board of the paper rig in parallel; every board
    must end in the state it started in, answer HELLO, and have counted what it refused."""
    rig = load_rig("paper")
    with EmulatedRig(rig, micropython=True, noiseless=True) as emu:
        with RigSession(rig, emu.ports, timeout=2.0, retries=5) as session:
            session.handshake()
            before = {a: _state(session, emu, a) for a in emu.addresses}
            k_world, loads = emu.world.stiffness(), emu.world.loads()
            status0 = {a: session.request(a, C.STATUS) for a in emu.addresses}
        errors: list[BaseException] = []

        def attack(address: int) -> None:
            try:
                port = open_transport(emu.ports[address])
                stop = threading.Event()

                def drain() -> None:
                    while not stop.is_set():
                        port.read(0.05)

                reader = threading.Thread(target=drain, daemon=True)
                reader.start()
                rng = np.random.default_rng([seed, address])
                try:
                    for _ in range(frames_per_board):
                        port.write(hostile_frames(rng, address))
                    port.write(b"\x00")
                    time.sleep(0.3)
                finally:
                    stop.set()
                    reader.join()
                    port.close()
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)

        threads = [threading.Thread(target=attack, args=(a,)) for a in emu.addresses]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        with RigSession(rig, emu.ports, timeout=5.0, retries=5) as session:
            totals = {"frames": 0, "crc_errors": 0, "bad_frames": 0, "errors": 0, "oversize": 0}
            for a in emu.addresses:
                assert emu.board_running(a), emu.log(a)
                assert _state(session, emu, a) == before[a], f"board {a} changed"
                status = session.request(a, C.STATUS)
                assert status["boots"] == status0[a]["boots"]  # never crashed nor rebooted
                for key in totals:
                    totals[key] += status[key] - status0[a].get(key, 0)
            assert np.array_equal(emu.world.stiffness(), k_world)
            assert np.array_equal(emu.world.loads(), loads)
            return totals


@pytest.mark.micropython
def test_hostile_frames_change_nothing_on_micropython_boards() -> None:
    totals = fuzz_boards(150, seed=1)  # 2,100 frames over 14 boards
    assert totals["crc_errors"] > 200 and totals["bad_frames"] > 100
    assert totals["errors"] > 300 and totals["oversize"] > 50


@pytest.mark.slow
@pytest.mark.micropython
def test_hundred_thousand_hostile_frames_change_nothing_on_micropython_boards() -> None:
    totals = fuzz_boards(7200, seed=2)  # 100,800 frames over 14 boards
    assert totals["crc_errors"] > 10_000 and totals["bad_frames"] > 5_000
    assert totals["errors"] > 20_000 and totals["oversize"] > 5_000
