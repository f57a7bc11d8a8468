"""Rig files: loading, validation with named fields, bundled rigs, round trip, port discovery."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np
import pytest

from host_sdk.errors import ConfigError, TransportError
from host_sdk.physics import IOMap, paper_network
from host_sdk.rig import (
    MAX_BONDS_PER_BOARD,
    BoardSpec,
    Rig,
    lattice_rig,
    load_rig,
    resolve_ports,
    rig_to_toml,
)

DOCS = Path(__file__).resolve().parents[1] / "docs" / "rig.md"

# A 3-board rig: pinned top row (nodes 0, 1, 2), boards on the free nodes 3, 4 and 5.
#
#   0 ---- 1 ---- 2        (frame)
#     \  /   \  /
#      3 ---- 4
#        \  /
#         5
SMALL = """\
name = "bench"
network = { positions = [[0.0, 0.0], [0.016, 0.0], [0.032, 0.0], [0.008, -0.0138564], [0.024, -0.0138564], [0.016, -0.0277128]], bonds = [[0, 3], [1, 3], [1, 4], [2, 4], [3, 4], [3, 5], [4, 5]], fixed = [0, 1, 2] }
k_min = 100.0
k_max = 180.0
k0 = 140.0
force_max = 0.1
disp_max = 0.004

[io.push]
inputs = [[5, "y"]]
input_scale = -0.049
outputs = [[3, "x"], [4, "x"]]

[[board]]
address = 3
node = 3
usb_serial = "E6614C311B4F2A37"
bonds = [0, 1, 4]
force = true
disp = true

[[board]]
address = 4
node = 4
port = "serial:///dev/ttyACM1?baud=115200"
bonds = [2, 3]
strain_channels = [1, 0]
stiffness_channels = [5, 6]
force = true
disp = true

[[board]]
address = 5
node = 5
port = "serial:///dev/ttyACM2"
bonds = [5, 6]
force = true
hal_args = { force = true, strain = [{ type = "hx711", dout = 2, sck = 3 }, { type = "adc", pin = 28 }] }
calibration = { gain = [1.5e-9, 1.6e-9], act_table = [[[100.0, 1000.0], [180.0, 2000.0]], [[100.0, 1100.0], [180.0, 1900.0]]] }
"""


def write(tmp_path: Path, text: str, name: str = "rig.toml") -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def load_text(tmp_path: Path, text: str) -> Rig:
    return load_rig(write(tmp_path, text))


def same_but_source(a: Rig, b: Rig) -> bool:
    return a == dataclasses.replace(b, source=a.source)


# ---- the small rig --------------------------------------------------------------------------


class TestSmallRig:
    def test_fields(self, tmp_path: Path) -> None:
        rig = load_text(tmp_path, SMALL)
        assert rig.name == "bench"
        assert rig.network.n_nodes == 6 and rig.n_bonds == 7
        assert list(rig.network.fixed) == [0, 1, 2]
        assert (rig.k_min, rig.k_max, rig.k0, rig.force_max) == (100.0, 180.0, 140.0, 0.1)
        assert rig.disp_max == 0.004 and rig.strain_max is None
        assert rig.emulated is False and rig.network_spec == ""
        assert [b.address for b in rig.boards] == [3, 4, 5]
        a3, a4, a5 = rig.boards
        # channels default to 0, 1, ... when not given
        assert a3.strain_channels == (0, 1, 2) and a3.stiffness_channels == (0, 1, 2)
        assert a4.strain_channels == (1, 0) and a4.stiffness_channels == (5, 6)
        assert a3.port is None and a3.usb_serial == "E6614C311B4F2A37"
        assert a5.disp is False and a5.force is True
        assert a5.hal_args["strain"][1] == {"type": "adc", "pin": 28}
        assert a5.calibration["gain"] == [1.5e-9, 1.6e-9]
        assert rig.io == {"push": IOMap(inputs=((5, 1),), input_scale=(-0.049,), outputs=((3, 0), (4, 0)))}

    def test_lookups(self, tmp_path: Path) -> None:
        rig = load_text(tmp_path, SMALL)
        assert [rig.owner(b).address for b in range(7)] == [3, 3, 4, 4, 3, 5, 5]
        assert rig.board_at(4) is rig.boards[1]
        assert rig.board_at(0) is None  # the frame carries no board
        assert rig.board_at(99) is None
        assert rig.board(5) is rig.boards[2]
        with pytest.raises(ConfigError, match=r"bond 7 is outside 0\.\.6"):
            rig.owner(7)
        with pytest.raises(ConfigError, match="no board has address 9"):
            rig.board(9)

    def test_links_need_resolved_ports(self, tmp_path: Path) -> None:
        rig = load_text(tmp_path, SMALL)
        with pytest.raises(ConfigError) as info:
            rig.links()
        assert str(info.value) == (
            "rig bench: board 3 (node 3) has no port yet: resolve its USB serial number "
            "'E6614C311B4F2A37' with resolve_ports()"
        )

    def test_resolve_ports(self, tmp_path: Path) -> None:
        rig = load_text(tmp_path, SMALL)
        ports = [("/dev/ttyACM0", "0000"), ("/dev/ttyACM7", "E6614C311B4F2A37"), ("/dev/ttyS0", None)]
        resolved = resolve_ports(rig, ports)
        assert resolved.boards[0].port == "serial:///dev/ttyACM7"
        assert resolved.boards[1:] == rig.boards[1:]
        assert resolved.links() == {
            "serial:///dev/ttyACM7": [3],
            "serial:///dev/ttyACM1?baud=115200": [4],
            "serial:///dev/ttyACM2": [5],
        }
        assert rig.boards[0].port is None  # the original is unchanged

    def test_resolve_ports_missing_board(self, tmp_path: Path) -> None:
        path = write(tmp_path, SMALL)
        rig = load_rig(path)
        with pytest.raises(TransportError) as info:
            resolve_ports(rig, [("/dev/ttyACM0", "0000")])
        assert str(info.value) == (
            f"{path}: board[0] (address 3, node 3) with USB serial 'E6614C311B4F2A37' is not "
            "connected (connected: /dev/ttyACM0 (0000))"
        )
        with pytest.raises(TransportError, match="matches several devices: /dev/a, /dev/b"):
            resolve_ports(rig, [("/dev/a", "E6614C311B4F2A37"), ("/dev/b", "E6614C311B4F2A37")])

    def test_with_ports(self, tmp_path: Path) -> None:
        rig = load_text(tmp_path, SMALL)
        moved = rig.with_ports({3: "/dev/pts/7", 5: "emu://x"})
        assert [b.port for b in moved.boards] == ["/dev/pts/7", "serial:///dev/ttyACM1?baud=115200", "emu://x"]
        with pytest.raises(ConfigError, match="no board has address 6"):
            rig.with_ports({6: "loop://"})
        with pytest.raises(ConfigError, match=r"board\[0\]\.port: unknown port URL scheme 'tcp'"):
            rig.with_ports({3: "tcp://h:1"})

    def test_round_trip(self, tmp_path: Path) -> None:
        rig = load_text(tmp_path, SMALL)
        text = rig_to_toml(rig)
        again = load_rig(write(tmp_path, text, "again.toml"))
        assert same_but_source(rig, again)
        assert again.source.endswith("again.toml")
        # and the written text is a fixed point
        assert rig_to_toml(again) == text

    def test_round_trip_awkward_strings(self, tmp_path: Path) -> None:
        rig = load_text(tmp_path, SMALL)
        board = dataclasses.replace(
            rig.boards[2], hal_args={"note \"q\"": "tab\there\nline\\ \x7f é", "list": [1, -2.5e-12, True]}
        )
        odd = dataclasses.replace(rig, name='rig "x"\\y', boards=(rig.boards[0], rig.boards[1], board))
        again = load_rig(write(tmp_path, rig_to_toml(odd), "odd.toml"))
        assert same_but_source(odd, again)


# ---- bundled rigs ---------------------------------------------------------------------------


class TestPaperRig:
    def test_one_board_per_node_two_bonds_each(self) -> None:
        rig = load_rig("paper")
        setup = paper_network()
        net = rig.network
        assert rig.source == "paper" and rig.network_spec == "paper" and rig.emulated is True
        assert np.array_equal(net.positions, setup.network.positions)
        assert np.array_equal(net.bonds, setup.network.bonds)
        assert (rig.k_min, rig.k_max, rig.k0) == (setup.k_min, setup.k_max, setup.k0)
        assert [(b.address, b.node) for b in rig.boards] == [(n, n) for n in range(14)]
        assert all(len(b.bonds) == 2 for b in rig.boards)
        owners = sorted(bond for b in rig.boards for bond in b.bonds)
        assert owners == list(range(28))
        for bond in range(28):
            assert rig.owner(bond).node in set(int(v) for v in net.bonds[bond])
        assert rig.links() == {f"emu://paper/{a}": [a] for a in range(14)}

    def test_every_paper_task_is_wired(self) -> None:
        rig = load_rig("paper")
        setup = paper_network()
        assert dict(rig.io) == setup.io
        force = {n for io in setup.io.values() for n, _ in io.inputs + io.outputs}
        disp = {n for io in setup.io.values() for n, _ in io.outputs}
        assert force == {1, 2, 7, 9, 10, 11, 12, 13}
        assert disp == {1, 2, 7, 12, 13}
        assert {b.node for b in rig.boards if b.force} == force
        assert {b.node for b in rig.boards if b.disp} == disp
        assert rig.force_max >= 0.196  # the regression task's largest input load

    def test_round_trip(self, tmp_path: Path) -> None:
        rig = load_rig("paper")
        text = rig_to_toml(rig)
        assert 'network = "paper"' in text
        assert same_but_source(rig, load_rig(write(tmp_path, text)))


class TestLatticeRig:
    @pytest.mark.parametrize("rows, cols, n_boards, group", [(4, 4, 16, 1), (20, 20, 200, 2), (15, 17, 255, 1)])
    def test_shape(self, rows: int, cols: int, n_boards: int, group: int) -> None:
        rig = load_rig(f"lattice:{rows}x{cols}")
        net = rig.network
        assert net.n_nodes == rows * cols
        assert net.n_bonds == 3 * rows * cols - 2 * rows - 2 * cols + 1
        assert list(net.fixed) == list(range(cols))
        assert len(rig.boards) == n_boards
        assert rig.links() == {f"emu://lattice-{rows}x{cols}": list(range(n_boards))}
        assert rig.emulated and rig.network_spec == f"lattice:{rows}x{cols}"
        # every bond owned once, by the board spanning one of its end nodes
        for bond, (i, j) in enumerate(net.bonds):
            home = rig.owner(bond).node
            spans = {int(n) for n in (i, j) if int(n) - (int(n) % cols) % group == home}
            assert spans, (bond, i, j, home)
        assert max(len(b.bonds) for b in rig.boards) <= MAX_BONDS_PER_BOARD

    def test_io_does_not_depend_on_size(self) -> None:
        small, large = load_rig("lattice:4x4"), load_rig("lattice:20x20")
        for rig, rows, cols in ((small, 4, 4), (large, 20, 20)):
            io = rig.io["iris"]
            assert len(io.inputs) == 4 and len(io.outputs) == 3
            assert all(axis == 1 and node // cols == rows - 1 for node, axis in io.inputs)
            assert all(axis == 0 and node // cols == rows - 2 for node, axis in io.outputs)
            assert io.input_scale == (-0.049,) * 4
            # the I/O boards have addresses 0..6 at every size: same frame lengths
            io_nodes = [n for n, _ in io.inputs + io.outputs]
            assert [rig.board_at(n).address for n in io_nodes] == list(range(7))  # type: ignore[union-attr]
        assert small.io["iris"].inputs == ((12, 1), (13, 1), (14, 1), (15, 1))
        assert small.io["iris"].outputs == ((8, 0), (10, 0), (11, 0))

    def test_round_trip(self, tmp_path: Path) -> None:
        rig = lattice_rig(5, 6)
        text = rig_to_toml(rig)
        assert 'network = "lattice:5x6"' in text
        assert same_but_source(rig, load_rig(write(tmp_path, text)))

    @pytest.mark.parametrize(
        "spec, message",
        [
            ("lattice:2x8", "lattice:2x8: expected at least 3 rows (pinned top, outputs, inputs) and 2 columns"),
            ("lattice:4x3", "lattice:4x3: the bottom row needs 4 boards for the inputs but has 3 (boards span 1 nodes each); use more columns"),
            ("lattice:80x8", "lattice:80x8: the bottom row needs 4 boards for the inputs but has 3 (boards span 3 nodes each); use more columns"),
            ("lattice:60x60", "lattice:60x60: boards spanning 15 nodes would own up to 45 bonds, more than 16; the lattice is too large for one bus"),
            ("lattice:4x", "rig 'lattice:4x': expected lattice:RxC with R rows and C columns, e.g. lattice:4x4"),
        ],
    )
    def test_bad_sizes(self, spec: str, message: str) -> None:
        with pytest.raises(ConfigError) as info:
            load_rig(spec)
        assert str(info.value) == message


# ---- validation -----------------------------------------------------------------------------


def edit(old: str, new: str, count: int = 1) -> str:
    assert SMALL.count(old) >= count, old
    return SMALL.replace(old, new, count)


BAD = [
    # (edited rig text, field, message after "FILE: field: ")
    (edit('name = "bench"', 'name = "bench"\nbogus = 1'), "bogus",
     "unknown key; expected one of name, emulated, network, k_min, k_max, k0, force_max, disp_max, strain_max, io, board"),
    (edit('node = 4\n', 'node = 4\nchannels = [1]\n'), "board[1].channels",
     "unknown key; expected one of address, node, port, usb_serial, bonds, strain_channels, stiffness_channels, force, disp, hal_args, calibration"),
    (edit("force_max = 0.1\n", ""), "force_max", "missing; expected a number (N)"),
    (edit("k0 = 140.0\n", ""), "k0", 'missing; expected a number (N/m) (required unless network = "paper")'),
    (edit("address = 4", 'address = "4"'), "board[1].address", "expected an integer 0..254, got '4'"),
    (edit("address = 4", "address = 255"), "board[1].address", "expected an integer 0..254, got 255"),
    (edit("address = 4", "address = true"), "board[1].address", "expected an integer 0..254, got True"),
    (edit("address = 4", "address = 3"), "board[1].address", "address 3 is already used by board[0]"),
    (edit("node = 4", "node = 6"), "board[1].node", "expected a node index 0..5, got 6"),
    (edit("node = 4", "node = 3"), "board[1].node", "node 3 already has board[0]; expected one board per node"),
    (edit("bonds = [2, 3]", "bonds = [2, 7]"), "board[1].bonds[1]", "expected a bond index 0..6, got 7"),
    (edit("bonds = [2, 3]", "bonds = [2, 1]"), "board[1].bonds[1]", "bond 1 is already owned by board[0]; expected exactly one owner"),
    (edit("bonds = [2, 3]", "bonds = [2, 2]"), "board[1].bonds[1]", "bond 2 is listed twice"),
    (edit("bonds = [2, 3]\nstrain_channels = [1, 0]\nstiffness_channels = [5, 6]", "bonds = [2]"), "board",
     "bond 3 (nodes 2-4) is owned by no board; expected every bond owned by exactly one board (1 unowned)"),
    (edit("bonds = [2, 3]", "bonds = 2"), "board[1].bonds", "expected an array of integers, got 2"),
    (edit("strain_channels = [1, 0]", "strain_channels = [1, 1]"), "board[1].strain_channels[1]",
     "channel 1 is already used by strain_channels[0]"),
    (edit("stiffness_channels = [5, 6]", "stiffness_channels = [5]"), "board[1].stiffness_channels",
     "expected one channel per owned bond (2), got 1"),
    (edit("stiffness_channels = [5, 6]", "stiffness_channels = [5, -1]"), "board[1].stiffness_channels[1]",
     "expected a channel number 0..255, got -1"),
    (edit('port = "serial:///dev/ttyACM2"\n', ""), "board[2]",
     'expected a port URL (port = "...") or a USB serial number (usb_serial = "...")'),
    (edit('port = "serial:///dev/ttyACM2"', 'port = "serial:///dev/ttyACM2?baud=fast"'), "board[2].port",
     "baud in port URL 'serial:///dev/ttyACM2?baud=fast' must be a positive integer, got 'fast'"),
    (edit("force = true\ndisp = true\n\n[[board]]\naddress = 5", "force = false\ndisp = true\n\n[[board]]\naddress = 5"),
     "io.push.outputs[1]", "node 4 needs a board with a force actuator (force = true) for adjoint loads, but has board 4 without one"),
    (edit("force = true\nhal_args", "hal_args"), "io.push.inputs[0]",
     "node 5 needs a board with a force actuator (force = true) for input loads, but has board 5 without one"),
    (edit("force = true\ndisp = true\n\n[[board]]\naddress = 5", "force = true\ndisp = false\n\n[[board]]\naddress = 5"),
     "io.push.outputs[1]", "node 4 needs a displacement sensor (disp = true) on board 4"),
    (edit('outputs = [[3, "x"], [4, "x"]]', 'outputs = [[3, "x"], [1, "x"]]'), "io.push.outputs[1]",
     "node 1 is pinned; expected a free node"),
    (edit('outputs = [[3, "x"], [4, "x"]]', 'outputs = [[3, "x"], [4, "z"]]'), "io.push.outputs[1]",
     "expected axis \"x\" or \"y\", got 'z'"),
    (edit('outputs = [[3, "x"], [4, "x"]]', 'outputs = [[3, "x"], [9, "x"]]'), "io.push.outputs[1]",
     "expected a node index 0..5, got 9"),
    (edit("input_scale = -0.049", "input_scale = [-0.049, 1.0]"), "io.push.input_scale",
     "expected one value per input (1), got 2"),
    (edit("input_scale = -0.049", "input_scale = nan"), "io.push.input_scale[0]", "expected a finite number (N), got nan"),
    (edit("k_min = 100.0", "k_min = 200.0"), "k_min", "expected k_min <= k_max, got k_min = 200.0 > k_max = 180.0"),
    (edit("k0 = 140.0", "k0 = 190.0"), "k0", "expected a value in [k_min, k_max] = [100.0, 180.0], got 190.0"),
    (edit("k_max = 180.0", "k_max = inf"), "k_max", "expected a positive finite number, got inf"),
    (edit("force_max = 0.1", "force_max = -0.1"), "force_max", "expected a positive finite number, got -0.1"),
    (edit("disp_max = 0.004", 'disp_max = "4 mm"'), "disp_max", "expected a number (m), got '4 mm'"),
    (edit('name = "bench"', 'name = ""'), "name", "expected a non-empty string, got ''"),
    (edit(SMALL.splitlines()[1], 'network = "hexagon"'), "network",
     "expected \"paper\", \"lattice:RxC\" or a table with positions, bonds and fixed, got 'hexagon'"),
    (edit("[0.008, -0.0138564]", "[0.008, nan]"), "network.positions[3]", "expected [x, y] finite numbers, got [0.008, nan]"),
    (edit("[3, 5], [4, 5]]", "[3, 5], [5, 5]]"), "network", "bond 6 joins node 5 to itself"),
    (edit("fixed = [0, 1, 2]", 'fixed = [0, "1"]'), "network.fixed[1]", "expected a node index, got '1'"),
    (edit("hal_args = {", "hal_args = { when = 1979-05-27, "), "board[2].hal_args.when",
     "expected a string, number, boolean, array or table, got datetime.date(1979, 5, 27)"),
    (edit("calibration = {", "calibration = { offset = 3, "), "board[2].calibration.offset",
     "unknown key; expected one of gain, disp_gain, act_table"),
    (edit("gain = [1.5e-9, 1.6e-9]", 'gain = [1.5e-9, "x"]'), "board[2].calibration.gain",
     "expected one finite number per owned bond (2), m per count"),
    (edit("gain = [1.5e-9, 1.6e-9]", "gain = [1.5e-9]"), "board[2].calibration.gain",
     "expected one finite number per owned bond (2), m per count"),
    (edit("calibration = {", "calibration = { disp_gain = [1e-6, 1e-6], "), "board[2].calibration.disp_gain",
     "the board has no displacement sensor (disp = false)"),
    (edit("[[100.0, 1100.0], [180.0, 1900.0]]]", "[[100.0, 1100.0]]]"),
     "board[2].calibration.act_table[1]", "expected 2..8 points [k, command]"),
    (edit("[[100.0, 1100.0], [180.0, 1900.0]]]", "[[100.0, 1100.0], [90.0, 900.0]]]"),
     "board[2].calibration.act_table[1]", "expected k >= 0 and strictly increasing"),
    (edit("[[100.0, 1100.0], [180.0, 1900.0]]]", "[[100.0, 1100.0], [180.0]]]"),
     "board[2].calibration.act_table[1][1]", "expected [k, command] finite numbers, got [180.0]"),
    (edit('name = "bench"', 'name = "bench"\nemulated = 1'), "emulated", "expected true or false, got 1"),
]


@pytest.mark.parametrize("text, field, message", BAD, ids=[f"{i:02d}-{b[1]}" for i, b in enumerate(BAD)])
def test_bad_rig_file(tmp_path: Path, text: str, field: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_rig(path)
    assert str(info.value) == f"{path}: {field}: {message}"


def test_too_many_bonds_on_one_board(tmp_path: Path) -> None:
    # 17 bonds on one board: a 3x7 lattice written inline, every bond on board 0.
    rig = lattice_rig(3, 7)
    n = rig.n_bonds
    assert n > MAX_BONDS_PER_BOARD
    text = rig_to_toml(rig)
    text = re.sub(r"bonds = \[[0-9, ]*\]", "bonds = []", text)
    text = text.replace("bonds = []", "bonds = " + str(list(range(n))), 1)
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_rig(path)
    assert str(info.value) == f"{path}: board[0].bonds: expected at most 16 bonds per board, got {n}"


def test_not_toml(tmp_path: Path) -> None:
    path = write(tmp_path, 'name = "x"\nboard = [\n')
    with pytest.raises(ConfigError) as info:
        load_rig(path)
    message = str(info.value)
    assert message.startswith(f"{path}: not valid TOML: ")
    assert "\n" not in message


def test_unknown_rig_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_rig("hexagon")
    assert str(info.value) == "unknown rig 'hexagon': expected 'paper', 'lattice:RxC' or the path of a TOML rig file"
    with pytest.raises(ConfigError, match="unknown rig"):
        load_rig(str(tmp_path / "nope.toml"))


def test_every_error_is_one_line(tmp_path: Path) -> None:
    for text, _field, _message in BAD:
        with pytest.raises(ConfigError) as info:
            load_text(tmp_path, text)
        assert "\n" not in str(info.value)


def test_named_network_must_match(tmp_path: Path) -> None:
    rig = load_rig("lattice:4x4")
    with pytest.raises(ConfigError) as info:
        dataclasses.replace(rig, network_spec="lattice:4x5")
    assert str(info.value) == "lattice:4x4: network: the network is not the one named 'lattice:4x5'"
    with pytest.raises(ConfigError, match="rows must be an integer >= 2"):
        load_text(tmp_path, SMALL.replace(SMALL.splitlines()[1], 'network = "lattice:1x4"'))


def test_rig_built_in_code_is_validated() -> None:
    setup = paper_network()
    boards = tuple(BoardSpec(address=n, node=n, port="loop://", bonds=()) for n in range(14))
    with pytest.raises(ConfigError) as info:
        Rig(name="code", source="code", network=setup.network, k_min=1.0, k_max=2.0, k0=1.5,
            boards=boards, io={}, force_max=1.0)
    assert str(info.value) == (
        "code: board: bond 0 (nodes 0-1) is owned by no board; expected every bond owned by "
        "exactly one board (28 unowned)"
    )


def _code_lines(text: str) -> list[str]:
    lines = (line.split("#")[0].rstrip() for line in text.splitlines())
    return [line for line in lines if line]


def test_docs_examples(tmp_path: Path) -> None:
    """The complete rig file in docs/rig.md loads; the paper excerpt is the bundled file's head."""
    blocks = re.findall(r"```toml\n(.*?)```", DOCS.read_text(encoding="utf-8"), flags=re.S)
    excerpts = [b for b in blocks if b.startswith("# excerpt")]
    complete = [b for b in blocks if "[[board]]" in b and b not in excerpts]
    assert len(complete) == 1 and len(excerpts) == 1
    rig = load_rig(write(tmp_path, complete[0]))
    assert [(b.address, b.usb_serial) for b in rig.boards] == [
        (3, "E6614C311B4F2A37"), (4, "E6614C311B4F2B90"), (5, "E6614C311B4F2C15")]
    assert rig.boards[0].calibration["disp_gain"] == [1.2e-6, 1.2e-6]
    bundled = Path(__file__).resolve().parents[1] / "host_sdk" / "rigs" / "paper.toml"
    excerpt = _code_lines(excerpts[0])
    assert excerpt == _code_lines(bundled.read_text(encoding="utf-8"))[: len(excerpt)]


# ---- property: rig_to_toml round trip -------------------------------------------------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_scalars = st.one_of(
    st.text(max_size=12),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
)
_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)),
    max_leaves=8,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    rows=st.integers(3, 5),
    cols=st.integers(4, 6),
    inline=st.booleans(),
    name=st.text(min_size=1, max_size=20).filter(lambda s: s.strip() != ""),
    hal=st.dictionaries(st.text(max_size=8), _values, max_size=4),
    serial=st.text(min_size=1, max_size=16).filter(lambda s: s.strip() != ""),
    data=st.data(),
)
def test_round_trip_property(
    tmp_path: Path, rows: int, cols: int, inline: bool, name: str, hal: dict[str, object],
    serial: str, data: st.DataObject,
) -> None:
    rig = lattice_rig(rows, cols)
    pick = data.draw(st.integers(0, len(rig.boards) - 1))
    boards = list(rig.boards)
    boards[pick] = dataclasses.replace(boards[pick], hal_args=hal, usb_serial=serial,
                                       port=None if data.draw(st.booleans()) else boards[pick].port)
    k_min = data.draw(st.floats(1e-3, 1e3))
    rig = dataclasses.replace(
        rig, name=name, boards=tuple(boards), network_spec="" if inline else rig.network_spec,
        k_min=k_min, k0=max(k_min, rig.k0), k_max=max(k_min, rig.k_max), emulated=data.draw(st.booleans()),
    )
    text = rig_to_toml(rig)
    again = load_rig(write(tmp_path, text))
    assert same_but_source(rig, again)
    assert rig_to_toml(again) == text
