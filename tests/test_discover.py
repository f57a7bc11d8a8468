"""Discovery: HELLO sweeps over ports, the findings table, and rig-file skeletons that train."""

from __future__ import annotations

import json
import os
import subprocess
import tty
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from host_sdk import discover as Dv
from host_sdk.coordinator import RigBackend, RigSession
from host_sdk.emulator.rig import EmulatedRig
from host_sdk.errors import ConfigError
from host_sdk.fwinfo import firmware_hash
from host_sdk.optim import OptimiserConfig
from host_sdk.physics import forward_adjoint
from host_sdk.rig import load_rig
from host_sdk.transport import open_transport

PAPER = load_rig("paper")


@pytest.fixture(scope="module")
def paper_ptys() -> Iterator[EmulatedRig]:
    """The paper rig, in-process boards, one pseudo-terminal per board (as USB boards look)."""
    with EmulatedRig(PAPER, pty=True, noiseless=True) as emu:
        yield emu


def test_sweep_finds_the_one_board_on_a_usb_port(paper_ptys: EmulatedRig) -> None:
    transport = open_transport(paper_ptys.ports[11])
    try:
        found = Dv.hello_sweep(transport)
        assert list(found) == [11]
        assert found[11]["bonds"] == [22, 27] and found[11]["board"] == "emu-11"
        # a sweep of a subset that misses the board finds nothing, and says nothing to it
        assert Dv.hello_sweep(transport, [0, 1, 2], timeout=0.2) == {}
    finally:
        transport.close()


def test_sweep_finds_every_board_of_a_bus() -> None:
    with EmulatedRig("lattice:3x4", pty=True, noiseless=True) as emu:
        [url] = set(emu.ports.values())
        transport = open_transport(url)
        try:
            found = Dv.hello_sweep(transport)
        finally:
            transport.close()
        rig = emu.rig
        assert sorted(found) == sorted(b.address for b in rig.boards)
        for board in rig.boards:
            assert found[board.address]["bonds"] == list(board.bonds)


def test_sweep_refuses_bad_addresses(paper_ptys: EmulatedRig) -> None:
    transport = open_transport(paper_ptys.ports[0])
    try:
        with pytest.raises(ConfigError, match="addresses are 0..254"):
            Dv.hello_sweep(transport, [255])
    finally:
        transport.close()


def _echo_pty() -> tuple[subprocess.Popen[bytes], str, list[int]]:
    master, slave = os.openpty()
    tty.setraw(slave)
    proc = subprocess.Popen(["cat"], stdin=master, stdout=master)
    return proc, os.ttyname(slave), [master, slave]


def test_discover_lists_every_board_and_the_silent_ports(paper_ptys: EmulatedRig, monkeypatch: Any) -> None:
    emu = paper_ptys
    monkeypatch.setattr(Dv, "list_serial_ports", lambda: [])  # this machine's own ports stay out
    proc, echo, fds = _echo_pty()
    try:
        ports = [emu.paths[a] for a in sorted(emu.ports)] + ["serial://" + echo]
        lines: list[str] = []
        found = Dv.discover(ports, timeout=0.3, progress=lines.append)
    finally:
        proc.kill()
        proc.wait()
        for fd in fds:
            os.close(fd)
    boards = [f for f in found if f.ok]
    assert [f.address for f in boards] == list(range(14))
    assert [f.port for f in boards] == ["serial://" + emu.paths[a] for a in range(14)]
    for f in boards:
        assert f.hello["bonds"] == list(PAPER.board(f.address).bonds)
        assert f.hello["firmware_hash"] == firmware_hash() and f.usb_serial is None
    silent = [f for f in found if not f.ok]
    assert [(f.port, f.error) for f in silent] == [("serial://" + echo, "no board answered HELLO")]
    assert len(lines) == 15
    table = Dv.format_table(found).splitlines()
    assert table[0].split() == ["port", "usb", "serial", "address", "firmware", "hash", "bonds"]
    assert table[1].split() == [f"serial://{emu.paths[0]}", "-", "0", firmware_hash(), "0,10"]
    assert table[-1].split() == [f"serial://{echo}", "-", "-", "-", "no", "board", "answered", "HELLO"]


def test_discover_reports_a_port_it_cannot_open(monkeypatch: Any) -> None:
    monkeypatch.setattr(Dv, "list_serial_ports", lambda: [("/dev/ttyACM96", "E6614C311B4F2A37")])
    [f] = Dv.discover()
    assert (f.port, f.usb_serial, f.ok) == ("serial:///dev/ttyACM96", "E6614C311B4F2A37", False)
    assert f.error.startswith("cannot open serial port /dev/ttyACM96")
    with pytest.raises(ConfigError, match="unknown port URL scheme"):
        Dv.discover(["ftp://nowhere"], system=False)


def test_the_skeleton_loads_and_trains(paper_ptys: EmulatedRig, tmp_path: Path) -> None:
    emu = paper_ptys
    found = Dv.discover([emu.paths[a] for a in sorted(emu.ports)], system=False, timeout=0.3)
    path = tmp_path / "found.toml"
    rig = Dv.write_skeleton(found, path)
    assert rig.source == str(path) and rig.emulated is True and rig.network_spec == "paper"
    assert sorted(rig.io) == sorted(PAPER.io)
    for board, paper_board in zip(rig.boards, PAPER.boards):
        assert board.port == "serial://" + emu.paths[board.address] and board.usb_serial is None
        for key in ("address", "node", "bonds", "strain_channels", "stiffness_channels", "force", "disp"):
            assert getattr(board, key) == getattr(paper_board, key), key
    # it trains: one Fig. 1 step over the protocol, the boards' gradient equal to the twin's
    with RigSession(rig) as session:
        session.handshake()
        session.configure()
        session.tare()
        io = rig.io["fig1"]
        backend = RigBackend(session, io, optimiser=OptimiserConfig("sgd", lr=1e6))

        def adjoint(y: Any, idx: Any) -> Any:
            return -2.0 * (y + 0.025)

        forces = np.array([[io.input_scale[0]]])
        backend.train_batch(0, forces, adjoint)
        grad = session.read_gradients()
        f = np.zeros((1, rig.network.n_nodes, 2))
        f[0, io.inputs[0][0], io.inputs[0][1]] = io.input_scale[0]
        _y, twin, _s = forward_adjoint(rig.network, np.full(rig.n_bonds, rig.k0), f, list(io.outputs),
                                       lambda y: -2.0 * (y + 0.025))
        cos = float(grad @ twin / np.linalg.norm(grad) / np.linalg.norm(twin))
        assert cos > 0.9999
        k0 = session.read_stiffness()
        backend.update(0)
        k1 = session.read_stiffness()
        np.testing.assert_allclose(k1, np.clip(k0 - 1e6 * grad, rig.k_min, rig.k_max), rtol=1e-6)
        assert np.count_nonzero(k1 != k0) == rig.n_bonds


def _found(address: int, **hello: Any) -> Dv.FoundBoard:
    spec = PAPER.board(address)
    base = {"board": f"ser-{address}", "configured": True, "node": spec.node, "bonds": list(spec.bonds),
            "caps": {"strain": 2, "stiffness": 2, "force": spec.force, "disp": spec.disp},
            "firmware_hash": "0123456789abcdef"}
    return Dv.FoundBoard(f"serial:///dev/ttyACM{address}", f"SER{address:04d}", address, {**base, **hello})


def test_usb_boards_are_identified_by_serial_number() -> None:
    rig = Dv.skeleton_rig([_found(a) for a in range(14)], name="bench")
    assert rig.name == "bench" and rig.emulated is False
    assert [(b.usb_serial, b.port) for b in rig.boards] == [(f"SER{a:04d}", None) for a in range(14)]


def test_unconfigured_boards_take_their_place_from_the_template() -> None:
    found = [_found(a) for a in range(14)]
    found[3] = _found(3, configured=False, node=-1, bonds=[])
    rig = Dv.skeleton_rig(found)
    assert rig.board(3).node == 3 and rig.board(3).bonds == PAPER.board(3).bonds


def test_a_task_the_boards_cannot_serve_is_left_out() -> None:
    found = [_found(a) for a in range(14)]
    found[7] = _found(7, caps={"strain": 2, "stiffness": 2, "force": True, "disp": False})
    rig = Dv.skeleton_rig(found)
    assert "iris" not in rig.io and "fig1" in rig.io  # iris reads node 7 (paper node 8)


@pytest.mark.parametrize(
    ("found", "match"),
    [
        ([], "no board answered HELLO"),
        ([_found(a) for a in range(13)], "do not make a rig of paper's network: .*bond 9 .* is owned by no board"),
        ([_found(a) for a in range(14)] + [_found(5)], "two boards answer at address 5"),
        ([_found(a) for a in range(14)][:-1] + [Dv.FoundBoard("serial:///dev/x", None, 40,
                                                             {"configured": False, "node": -1, "bonds": []})],
         "board 40 on serial:///dev/x is not configured and the template rig paper has no board"),
    ],
)
def test_skeleton_errors(found: list[Dv.FoundBoard], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        Dv.skeleton_rig(found)


def _mnn(argv: list[str]) -> int:
    import argparse

    from host_sdk.cli_rig import add_parser

    parser = argparse.ArgumentParser(prog="mnn")
    add_parser(parser.add_subparsers())
    args = parser.parse_args(argv)
    return int(args.func(args))


def test_mnn_rig_discover_writes_a_rig(paper_ptys: EmulatedRig, tmp_path: Path, capsys: Any) -> None:
    emu = paper_ptys
    ports = json.dumps({"boards": {str(a): p for a, p in emu.paths.items()}})
    path = tmp_path / "found.toml"
    assert _mnn(["rig", "discover", "--ports", ports, "--port", emu.paths[0], "--no-system",
                 "--timeout", "0.3", "--write", str(path)]) == 0
    out, err = capsys.readouterr()
    rows = out.splitlines()
    assert len(rows) == 15 and rows[14].split()[:3] == [f"serial://{emu.paths[13]}", "-", "13"]
    assert err.splitlines()[-1] == f"wrote {path}: 14 boards, tasks fig1, behaviour, regression, iris"
    assert load_rig(str(path)).board(13).port == "serial://" + emu.paths[13]
    with pytest.raises(ConfigError, match="rig: a subcommand is required: discover"):
        _mnn(["rig"])
