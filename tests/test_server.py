"""The protocol server through its wire interface, with requests built by the host codec."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fw_cases as fc
from fw_cases import FakeHal
from host_sdk import protocol as P
from host_sdk.firmware.mnnfw import loop as fwloop
from host_sdk.firmware.mnnfw.server import Server
from mp_runner import FIRMWARE, run_script

Cmd = P.Command
S = P.Status


class Board:
    """A Server on a FakeHal, spoken to with the host codec."""

    def __init__(self, flash: Path, address: int = 0, fw_hash: str | None = None, **kw: Any) -> None:
        self.flash = flash
        self.hal = FakeHal(str(flash), **kw)
        self.hal.set_levels(fc.Z)
        self.hal.disp_level = list(fc.DISP_Z)
        self.srv = Server(self.hal, fw_hash=fw_hash, address=address)
        self.seq = 0

    def feed(self, data: bytes) -> list[P.Reply]:
        return [P.decode_reply(p) for p in P.Deframer().feed(self.srv.feed(data))]

    def call(self, cmd: int, args: dict[str, Any] | None = None, address: int | None = None) -> P.Reply | None:
        self.seq += 1
        addr = self.srv.address if address is None else address
        replies = self.feed(P.encode_request(self.seq, addr, cmd, args or {}))
        assert len(replies) <= 1
        return replies[0] if replies else None

    def ok(self, cmd: int, args: dict[str, Any] | None = None) -> dict[str, Any]:
        r = self.call(cmd, args)
        assert r is not None and r.status == S.OK, r
        return r.check()

    def state(self) -> tuple[str, bytes]:
        path = self.flash / "state.mp"
        return fc._state(self.srv), path.read_bytes() if path.exists() else b""


def configured(flash: Path, **kw: Any) -> Board:
    b = Board(flash, **kw)
    args = fc._configure_args()
    if not b.hal.disp:
        del args["disp_gain"]
    b.ok(Cmd.CONFIGURE, args)
    b.hal.t += 1000
    b.ok(Cmd.TARE, {"n": 4})
    return b


def test_hello(tmp_path: Path) -> None:
    b = Board(tmp_path)
    r = b.ok(Cmd.HELLO)
    assert r == {
        "proto": 1, "firmware": "0.1.0", "firmware_hash": "dev", "board": "fake-01", "address": 0,
        "node": -1, "bonds": [], "caps": {"strain": 4, "stiffness": 4, "force": True, "disp": True},
        "boots": 1, "step": -1, "configured": False,
    }
    (tmp_path / "fw.hash").write_text("0123456789abcdef\n")
    assert Board(tmp_path).ok(Cmd.HELLO)["firmware_hash"] == "0123456789abcdef"
    assert Board(tmp_path, fw_hash="cafe").ok(Cmd.HELLO)["firmware_hash"] == "cafe"


def test_boots_step_and_address_persist(tmp_path: Path) -> None:
    b = configured(tmp_path, address=7)
    assert b.ok(Cmd.HELLO)["boots"] == 1
    assert b.srv.address == 7
    b.ok(Cmd.SAMPLE, {"phase": 0, "step": 3, "sample": 0, "tol": 1e-9})
    b.ok(Cmd.SAMPLE, {"phase": 1, "step": 3, "sample": 0, "tol": 1e-9})
    b.ok(Cmd.UPDATE, {"step": 3, "count": 1, "lr": 1.0})
    # a reboot: same flash, board.cfg still says 7
    b2 = Board(tmp_path, address=7)
    h = b2.ok(Cmd.HELLO)
    assert (h["boots"], h["step"], h["configured"], h["bonds"], h["node"]) == (2, 3, True, [4, 9, 17], 5)
    # CONFIGURE's address wins over board.cfg's from then on; the reply comes from the old one
    r = b2.call(Cmd.CONFIGURE, {"address": 12})
    assert r is not None and r.ok and r.address == 7
    assert b2.call(Cmd.HELLO, address=7) is None
    assert b2.call(Cmd.HELLO, address=12) is not None
    b3 = Board(tmp_path, address=7)
    assert b3.srv.address == 12 and b3.ok(Cmd.HELLO)["boots"] == 3


def test_other_addresses_and_broadcast(tmp_path: Path) -> None:
    b = configured(tmp_path, address=3)
    before = b.state()
    assert b.call(Cmd.SET_STIFFNESS, {"k": [120.0, 120.0, 120.0]}, address=4) is None
    assert b.state() == before
    # a broadcast is executed without a reply
    assert b.call(Cmd.SET_LOAD, {"fx": 0.5, "fy": -0.25}, address=P.BROADCAST) is None
    assert b.hal.forces[-1] == (0.5, -0.25)
    # commands naming one board's data are refused when broadcast (counted, state kept)
    errors = b.srv.stats["errors"]
    assert b.call(Cmd.SET_STIFFNESS, {"k": [120.0, 120.0, 120.0]}, address=P.BROADCAST) is None
    assert b.call(Cmd.CONFIGURE, {"address": 9}, address=P.BROADCAST) is None
    assert b.call(Cmd.REPL, address=P.BROADCAST) is None
    assert b.srv.stats["errors"] == errors + 3 and not b.srv.want_repl
    assert b.state() == before


NAN = math.nan
BAD_REQUESTS: list[tuple[str, int, dict[str, Any], int]] = [
    ("unknown command", 99, {}, S.UNKNOWN_COMMAND),
    ("unknown arg", Cmd.HELLO, {"x": 1}, S.BAD_ARGS),
    ("missing arg", Cmd.SAMPLE, {"phase": 0, "step": 1}, S.BAD_ARGS),
    ("bool for int", Cmd.SAMPLE, {"phase": True, "step": 1, "sample": 0}, S.BAD_ARGS),
    ("str for float", Cmd.SET_LOAD, {"fx": "1", "fy": 0.0}, S.BAD_ARGS),
    ("nan load", Cmd.SET_LOAD, {"fx": NAN, "fy": 0.0}, S.BAD_ARGS),
    ("phase 2", Cmd.SAMPLE, {"phase": 2, "step": 1, "sample": 0}, S.BAD_ARGS),
    ("n too large", Cmd.SAMPLE, {"phase": 0, "step": 1, "sample": 0, "n": 65}, S.BAD_ARGS),
    ("tol zero", Cmd.SAMPLE, {"phase": 0, "step": 1, "sample": 0, "tol": 0.0}, S.BAD_ARGS),
    ("sample out of range", Cmd.SAMPLE, {"phase": 0, "step": 1, "sample": 1024}, S.BAD_ARGS),
    ("alpha negative", Cmd.SAMPLE, {"phase": 1, "step": 1, "sample": 0, "gain": -1.0}, S.BAD_ARGS),
    ("nan stiffness", Cmd.SET_STIFFNESS, {"k": [NAN, 150.0, 150.0]}, S.BAD_ARGS),
    ("inf stiffness", Cmd.SET_STIFFNESS, {"k": [math.inf, 150.0, 150.0]}, S.BAD_ARGS),
    ("negative stiffness", Cmd.SET_STIFFNESS, {"k": [-1.0, 150.0, 150.0]}, S.BAD_ARGS),
    ("stiffness past bound", Cmd.SET_STIFFNESS, {"k": [150.0, 181.0, 150.0]}, S.BAD_ARGS),
    ("wrong length", Cmd.SET_STIFFNESS, {"k": [150.0, 150.0]}, S.BAD_ARGS),
    ("not a list", Cmd.SET_STIFFNESS, {"k": 150.0}, S.BAD_ARGS),
    ("nan lr", Cmd.UPDATE, {"step": 0, "count": 1, "lr": NAN}, S.BAD_ARGS),
    ("negative lr", Cmd.UPDATE, {"step": 0, "count": 1, "lr": -0.1}, S.BAD_ARGS),
    ("b1 one", Cmd.UPDATE, {"step": 0, "count": 1, "lr": 0.1, "opt": 1, "b1": 1.0}, S.BAD_ARGS),
    ("count zero", Cmd.UPDATE, {"step": 0, "count": 0, "lr": 0.1}, S.BAD_ARGS),
    ("update without samples", Cmd.UPDATE, {"step": 0, "count": 1, "lr": 0.1}, S.BAD_STATE),
    ("k_min > k_max", Cmd.CONFIGURE, {"k_min": [100.0, 190.0, 100.0]}, S.BAD_ARGS),
    ("negative k_min", Cmd.CONFIGURE, {"k_min": [-5.0, 100.0, 100.0]}, S.BAD_ARGS),
    ("k outside new bounds", Cmd.CONFIGURE, {"k_max": [200.0, 180.0, 150.0], "k": [150.0, 150.0, 160.0]}, S.BAD_ARGS),
    ("zero gain", Cmd.CONFIGURE, {"gain": [1e-6, 0.0, 1e-6]}, S.BAD_ARGS),
    ("float32 overflow", Cmd.CONFIGURE, {"gain": [1e-6, 1e39, 1e-6]}, S.BAD_ARGS),
    ("duplicate bonds", Cmd.CONFIGURE, {"bonds": [1, 2, 1]}, S.BAD_ARGS),
    ("too many bonds", Cmd.CONFIGURE, {"bonds": list(range(17))}, S.BAD_ARGS),
    ("table decreasing", Cmd.CONFIGURE, {"act_table": [None, None, [[150.0, 1.0], [120.0, 2.0]]]}, S.BAD_ARGS),
    ("table one point", Cmd.CONFIGURE, {"act_table": [None, None, [[150.0, 1.0]]]}, S.BAD_ARGS),
    ("address 255", Cmd.CONFIGURE, {"address": 255}, S.BAD_ARGS),
    ("missing channel", Cmd.CONFIGURE, {"channels": [0, 1, 4]}, S.NOT_CAPABLE),
    ("no displacement sensor", Cmd.CONFIGURE, {"disp_gain": [1.0, 1.0]}, S.NOT_CAPABLE),
    ("no force actuator", Cmd.SET_LOAD, {"fx": 1.0, "fy": 0.0}, S.NOT_CAPABLE),
    ("discard wrong type", Cmd.DISCARD, {"step": "x"}, S.BAD_ARGS),
]


@pytest.mark.parametrize(("what", "cmd", "args", "status"), BAD_REQUESTS, ids=[r[0] for r in BAD_REQUESTS])
def test_bad_requests_get_an_error_and_change_nothing(
    tmp_path: Path, what: str, cmd: int, args: dict[str, Any], status: int
) -> None:
    caps = {"force": False, "disp": False} if status == S.NOT_CAPABLE else {}
    b = configured(tmp_path, **caps)
    before = b.state()
    cmds = list(b.hal.cmds)
    errors = b.srv.stats["errors"]
    r = b.call(cmd, args)
    assert r is not None and r.status == status, r
    assert isinstance(r.result, str) and "\n" not in r.result and 0 < len(r.result) <= 100
    assert b.state() == before
    assert b.hal.cmds == cmds
    assert b.srv.stats["errors"] == errors + 1
    assert b.ok(Cmd.STATUS)["errors"] == errors + 1


def test_bad_version_and_bad_messages(tmp_path: Path) -> None:
    b = configured(tmp_path)
    before = b.state()
    wire = P.encode_frame(P.pack([2, 5, 0, Cmd.HELLO, {}]))
    [r] = b.feed(wire)
    assert (r.seq, r.status) == (5, S.BAD_VERSION)
    [r] = b.feed(P.encode_frame(P.pack([1, 6, 0, Cmd.HELLO, [1, 2]])))
    assert r.status == S.BAD_ARGS and "map" in r.result
    # valid CRC, but not a request: dropped and counted, no reply
    for payload in (b"\xc1", P.pack([1, 2, 3]), P.pack([1, -1, 0, 1, {}]), P.pack([1, 1, 256, 1, {}]),
                    P.pack({"a": 1}), b"\x95\x01\x01\x00\x01"):
        assert b.feed(P.encode_frame(payload)) == []
    assert b.srv.stats["bad_frames"] == 6
    assert b.state() == before


def test_retry_with_the_same_seq_returns_the_cached_reply(tmp_path: Path) -> None:
    b = configured(tmp_path)
    b.hal.set_levels([fc.Z[0] + 5000, fc.Z[1] - 5000, fc.Z[2] + 5000])
    b.hal.t += 1000
    b.ok(Cmd.SAMPLE, {"phase": 0, "step": 0, "sample": 0, "tol": 1e-9})
    b.ok(Cmd.SAMPLE, {"phase": 1, "step": 0, "sample": 0, "tol": 1e-9})
    wire = P.encode_request(500, 0, Cmd.UPDATE, {"step": 0, "count": 1, "lr": 1e6})
    first = b.srv.feed(wire)
    k = list(b.srv.node.k)
    assert k != [150.0, 140.0, 160.0]
    again = b.srv.feed(wire)
    assert again == first
    assert list(b.srv.node.k) == k
    assert b.srv.stats["updates"] == 1 and b.srv.stats["retries"] == 1
    # a new seq for the same step: not applied again
    r = b.call(Cmd.UPDATE, {"step": 0, "count": 1, "lr": 1e6})
    assert r is not None and r.result == {"step": 0, "applied": False}
    assert list(b.srv.node.k) == k and b.srv.stats["updates"] == 1
    # the same seq with other bytes (a host that restarted its numbering) is executed
    [r] = b.feed(P.encode_request(500, 0, Cmd.HELLO, {}))
    assert "proto" in r.result


def test_byte_by_byte_and_garbage(tmp_path: Path) -> None:
    b = configured(tmp_path)
    wire = P.encode_request(77, 0, Cmd.STATUS, {})
    whole = b.srv.feed(wire)
    b.seq = 0
    junk = b"\x13\x00\xff\xfe" + wire[:7] + b"\x00" + bytes(3000) + b"\x42" * 3000 + b"\x00"
    out = b"".join(b.srv.feed(bytes([x])) for x in junk + P.encode_request(78, 0, Cmd.STATUS, {}))
    [r] = [P.decode_reply(p) for p in P.Deframer().feed(out)]
    assert r.seq == 78 and r.ok
    assert r.result["crc_errors"] == 2 and r.result["oversize"] == 1
    assert P.decode_reply(P.decode_frame(whole)).seq == 77


def test_hardware_errors_are_reported_and_survived(tmp_path: Path) -> None:
    b = configured(tmp_path)
    b.hal.fail = "HX711 timeout"
    r = b.call(Cmd.SAMPLE, {"phase": 0, "step": 0, "sample": 0, "tol": 1e-9})
    assert r is not None and r.status == S.HW_ERROR and "HX711 timeout" in r.result
    b.hal.fail = None
    assert b.ok(Cmd.SAMPLE, {"phase": 0, "step": 0, "sample": 0, "tol": 1e-9})["settled"]


def test_repl_and_reboot_flags(tmp_path: Path) -> None:
    b = Board(tmp_path)
    assert b.ok(Cmd.REPL) == {} and b.srv.want_repl and not b.srv.want_reboot
    b = Board(tmp_path)
    assert b.ok(Cmd.REBOOT) == {} and b.srv.want_reboot


def test_largest_replies_fit_a_frame(tmp_path: Path) -> None:
    b = Board(tmp_path, n_strain=16, n_act=16)
    n = P.MAX_BONDS
    b.ok(Cmd.CONFIGURE, {"bonds": list(range(1000, 1000 + n)), "k_max": [3.0e38] * n, "k": [1.0e-30] * n})
    for cmd in (Cmd.HELLO, Cmd.READ_BONDS, Cmd.STATUS):
        assert b.ok(cmd)
    assert len(b.srv.feed(P.encode_request(9999, 0, Cmd.READ_BONDS, {}))) < P.MAX_FRAME


def test_store_damage_falls_back(tmp_path: Path) -> None:
    b = configured(tmp_path)
    b.ok(Cmd.SET_STIFFNESS, {"k": [110.0, 120.0, 130.0]})
    main = tmp_path / "state.mp"
    good = main.read_bytes()
    # a power cut during a FAT-style replace: only the temp file holds the record
    main.unlink()
    (tmp_path / "state.tmp").write_bytes(good)
    assert list(Board(tmp_path).srv.node.k) == [110.0, 120.0, 130.0]
    # a damaged main file and a half-written temp file: start blank and say so
    main.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
    (tmp_path / "state.tmp").write_bytes(good[:20])
    b2 = Board(tmp_path)
    assert b2.srv.node.bonds == [] and b2.ok(Cmd.HELLO)["boots"] == 1
    # a record with a valid CRC that this firmware cannot use
    from host_sdk.firmware.mnnfw.store import Store

    Store(str(tmp_path)).save({"fmt": 1, "boots": 4, "address": 0, "node": {"bonds": "x"}})
    b3 = Board(tmp_path)
    assert b3.srv.node.bonds == [] and b3.ok(Cmd.STATUS)["store_errors"] == 1


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(allow_nan=True, allow_infinity=True) | st.integers(-5, 500), min_size=3, max_size=3))
def test_actuator_commands_stay_in_range_whatever_arrives(ks: list[float]) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        b = configured(Path(d))
        n = len(b.hal.cmds)
        before = b.state()
        r = b.call(Cmd.SET_STIFFNESS, {"k": ks})
        assert r is not None
        if r.ok:
            assert all(lo <= k <= hi for k, lo, hi in zip(b.srv.node.k, fc.K_MIN, fc.K_MAX))
        else:
            assert r.status == S.BAD_ARGS and b.state() == before
        sent = b.hal.cmds[n:]
        assert all(1000.0 <= c <= 2000.0 for ch, c in sent if ch < 2)
        assert all(900.0 <= c <= 2100.0 for ch, c in sent if ch == 2)


class SerialHal(FakeHal):
    """A FakeHal with a scripted serial line, for the serving loop."""

    def __init__(self, flash: str, incoming: bytes) -> None:
        super().__init__(flash)
        self.incoming = incoming
        self.written = b""
        self.resets = 0

    def read(self, buf: bytearray) -> int:
        n = min(len(buf), 5, len(self.incoming))
        buf[:n] = self.incoming[:n]
        self.incoming = self.incoming[n:]
        if not n and not self.incoming:
            raise AssertionError("loop kept reading after the script ended")
        return n

    def write(self, data: bytes) -> None:
        self.written += bytes(data)

    def reset(self) -> None:
        self.resets += 1


@pytest.mark.parametrize("last", [Cmd.REPL, Cmd.REBOOT])
def test_serving_loop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, last: int) -> None:
    calls: list[int] = []
    monkeypatch.setattr(fwloop, "kbd_intr", calls.append)
    script = P.encode_request(1, 0, Cmd.HELLO) + b"\x00junk\x00" + P.encode_request(2, 0, last)
    hal = SerialHal(str(tmp_path), script)
    fwloop.run(hal, Server(hal))
    replies = [P.decode_reply(p) for p in P.Deframer().feed(hal.written)]
    assert [r.seq for r in replies] == [1, 2] and all(r.ok for r in replies)
    assert calls == [-1, 3]  # Ctrl-C off while serving, back on afterwards
    assert hal.resets == (1 if last == Cmd.REBOOT else 0)


class FlakyHal(SerialHal):
    """Serial errors: the first read and the first write raise OSError."""

    def __init__(self, flash: str, incoming: bytes) -> None:
        super().__init__(flash, incoming)
        self.read_fail = self.write_fail = True

    def read(self, buf: bytearray) -> int:
        if self.read_fail:
            self.read_fail = False
            raise OSError("USB")
        return super().read(buf)

    def write(self, data: bytes) -> None:
        if self.write_fail:
            self.write_fail = False
            raise OSError("USB")
        super().write(data)


def test_serving_loop_survives_serial_errors(tmp_path: Path) -> None:
    script = P.encode_request(1, 0, Cmd.HELLO) + P.encode_request(2, 0, Cmd.STATUS) + P.encode_request(3, 0, Cmd.REPL)
    hal = FlakyHal(str(tmp_path), script)
    srv = Server(hal)
    fwloop.run(hal, srv)
    # the first reply was lost in the failed write; the board kept serving
    assert [P.decode_reply(p).seq for p in P.Deframer().feed(hal.written)] == [2, 3]


FAKE_HAL_MODULE = '''
import sys
sys.path.append(TESTS)
from fw_cases import FakeHal

class Hal(FakeHal):
    def __init__(self, script, flash):
        FakeHal.__init__(self, flash)
        self.script = bytes.fromhex(script)
    def read(self, buf):
        n = min(len(buf), len(self.script))
        if n == 0:
            raise SystemExit("script ended")
        buf[:n] = self.script[:n]
        self.script = self.script[n:]
        return n
    def write(self, data):
        print("OUT", bytes(data).hex())
    def reset(self):
        print("RESET")
'''


@pytest.mark.parametrize("interp", ["cpython", "micropython"])
def test_main_py(tmp_path: Path, interp: str) -> None:
    def run() -> subprocess.CompletedProcess[str]:
        if interp == "micropython":
            return run_script(FIRMWARE / "main.py", cwd=tmp_path, extra_path=[tmp_path])
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(FIRMWARE), str(tmp_path)]))
        return subprocess.run([sys.executable, str(FIRMWARE / "main.py")], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=60, check=False)

    blank = run()
    assert blank.returncode == 0 and blank.stdout.strip() == "mnn: no board.cfg: staying at the REPL"
    (tmp_path / "hal_fake.py").write_text(FAKE_HAL_MODULE.replace("TESTS", repr(str(Path(__file__).parent))))
    script = P.encode_request(1, 9, Cmd.HELLO) + P.encode_request(2, 9, Cmd.REPL)
    flash = tmp_path / "flash"
    flash.mkdir()
    (tmp_path / "board.cfg").write_text(
        '{"hal": "hal_fake", "hal_args": {"script": "%s", "flash": "%s"}, "address": 9}' % (script.hex(), flash)
    )
    proc = run()
    assert proc.returncode == 0, proc.stderr
    out = b"".join(bytes.fromhex(line[4:]) for line in proc.stdout.splitlines() if line.startswith("OUT "))
    replies = [P.decode_reply(p) for p in P.Deframer().feed(out)]
    assert [(r.seq, r.address, r.status) for r in replies] == [(1, 9, 0), (2, 9, 0)]
    assert replies[0].result["board"] == "fake-01"
    assert proc.stdout.splitlines()[-1] == "mnn: protocol loop left: REPL"
