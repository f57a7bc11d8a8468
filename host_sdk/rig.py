"""Rigs: which board sits where, which bonds it owns, on which channels, behind which port.

A rig maps a network (:mod:`host_sdk.physics`) onto node boards. It is described in a TOML file
(documented in ``docs/rig.md``), loaded and validated once by :func:`load_rig`, and immutable
afterwards. Two rigs are bundled:

``paper``
    One board per node of the paper's 14-node network (address = node index), two bonds per
    board, force actuators on every input and output node of the paper's tasks, displacement
    sensors on every output node, one emulated USB port per board (``emu://paper/<address>``).
``lattice:RxC``
    A triangular lattice of R rows and C columns with its top row pinned (built in code), its
    boards sharing one emulated RS-485 bus ``emu://lattice-RxC``, and one ``"iris"``-shaped task
    (four inputs in y on the bottom row, three outputs in x on the row above it) whatever the
    size, so host traffic per sample does not depend on the size.

Every validation error is a one-line :class:`~host_sdk.errors.ConfigError` that names the file,
the field (``board[3].bonds[1]``, 0-based) and what was expected.
"""

from __future__ import annotations

import importlib
import math
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any, NoReturn

import numpy as np

from .errors import ConfigError, PhysicsError, TransportError
from .physics import DOF, IOMap, Network, paper_network, triangular_lattice
from .protocol import BROADCAST, MAX_BONDS, MAX_TABLE
from .transport import check_url

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

__all__ = [
    "MAX_ADDRESS",
    "MAX_BONDS_PER_BOARD",
    "CALIBRATION_KEYS",
    "BoardSpec",
    "Rig",
    "load_rig",
    "rig_to_toml",
    "resolve_ports",
    "paper_rig",
    "lattice_rig",
]

MAX_ADDRESS = BROADCAST - 1
"""Largest board address; 255 is the broadcast address."""

MAX_BONDS_PER_BOARD = MAX_BONDS
"""Bonds one board may own (the firmware's ``MAX_BONDS``: per-bond replies fit one frame)."""

CALIBRATION_KEYS = ("gain", "disp_gain", "act_table")
"""Keys of a board's ``calibration`` table, sent unchanged with CONFIGURE."""

_Fail = Callable[[str, str], NoReturn]
_LATTICE_RE = re.compile(r"lattice:(\d+)x(\d+)")
_AXES = {"x": 0, "y": 1}
_AXIS_NAMES = ("x", "y")

# Limits of the bundled rigs (see docs/rig.md for the reasoning).
_PAPER_FORCE_MAX = 0.2  # N: the regression task applies up to 0.196 N
_PAPER_DISP_MAX = 0.005  # m
_PAPER_STRAIN_MAX = 0.002  # m
_LATTICE_FORCE_MAX = 0.2  # N
_LATTICE_DISP_MAX = 0.02  # m: deep lattices sag further than the paper's patch
_LATTICE_STRAIN_MAX = 0.002  # m
_LATTICE_INPUTS = 4
_LATTICE_OUTPUTS = 3
_FIVE_GRAMS_N = 0.049  # N, as the paper rounds it


# ---------------------------------------------------------------------------------------------
# small helpers


def _show(value: Any) -> str:
    """A short repr of a value for an error message."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_number(value: Any) -> bool:
    return (isinstance(value, (int, float, np.integer, np.floating))
            and not isinstance(value, (bool, np.bool_)))


def _finite(value: Any) -> bool:
    return _is_number(value) and math.isfinite(float(value))


def _plain(value: Any) -> Any:
    """Deep copy of a TOML-like value with containers made plain lists and dicts."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _frozen_map(value: Any) -> Any:
    if isinstance(value, Mapping):
        return MappingProxyType(_plain(value))
    return value


# ---------------------------------------------------------------------------------------------
# BoardSpec and Rig


@dataclass(frozen=True)
class BoardSpec:
    """One node board of a rig.

    Attributes:
        address: protocol address, 0..254, unique in the rig.
        node: the network node the board sits on (its force actuator and displacement sensor
            act there), 0-based, at most one board per node.
        port: port URL the board is reached through (``serial://...``, ``emu://...``, a device
            path); boards sharing a bus share a port. ``None`` until resolved from
            ``usb_serial``.
        usb_serial: USB serial number identifying the board when ports are discovered
            (:func:`resolve_ports`).
        bonds: indices of the bonds this board owns (measures and actuates).
        strain_channels: strain sensor channel of each owned bond (same order as ``bonds``);
            defaults to ``0, 1, ...``.
        stiffness_channels: stiffness actuator channel of each owned bond; defaults to
            ``0, 1, ...``.
        force: the board has a 2-axis force actuator at its node.
        disp: the board has a 2-axis displacement sensor at its node.
        hal_args: options passed unchanged to the board's HAL (pins, driver settings).
        calibration: calibration sent with CONFIGURE: any of ``gain`` (m per strain count,
            per bond), ``disp_gain`` (m per displacement count, x and y) and ``act_table``
            (stiffness -> actuator command points).
    """

    address: int
    node: int
    port: str | None = None
    usb_serial: str | None = None
    bonds: tuple[int, ...] = ()
    strain_channels: tuple[int, ...] = ()
    stiffness_channels: tuple[int, ...] = ()
    force: bool = False
    disp: bool = False
    hal_args: Mapping[str, Any] = field(default_factory=dict, hash=False)
    calibration: Mapping[str, Any] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        for name in ("bonds", "strain_channels", "stiffness_channels"):
            value = getattr(self, name)
            if isinstance(value, (list, tuple, np.ndarray)):
                object.__setattr__(
                    self, name, tuple(int(v) if _is_int(v) else v for v in value)
                )
        for name in ("strain_channels", "stiffness_channels"):
            if getattr(self, name) == () and isinstance(self.bonds, tuple) and self.bonds:
                object.__setattr__(self, name, tuple(range(len(self.bonds))))
        for name in ("address", "node"):
            value = getattr(self, name)
            if isinstance(value, np.integer):
                object.__setattr__(self, name, int(value))
        object.__setattr__(self, "hal_args", _frozen_map(self.hal_args))
        object.__setattr__(self, "calibration", _frozen_map(self.calibration))


@dataclass(frozen=True, eq=False)
class Rig:
    """A network mapped onto boards and ports, with its physical limits. Immutable.

    Attributes:
        name: a label for messages.
        source: where the rig came from (a file path, ``"paper"``, ``"lattice:RxC"``); error
            messages start with it.
        network: the spring network.
        k_min, k_max: stiffness range of every bond's actuator, N/m.
        k0: initial stiffness of every bond, N/m.
        boards: the boards, in the order of the rig file.
        io: task wiring by task name (``"iris"``, ...): input and output DOFs of each task.
        force_max: range of the force actuators, N (per axis); the adjoint gain is chosen so the
            largest adjoint load is a fixed fraction of it.
        emulated: the rig's ports are served by the emulator (``mnn emulate``).
        disp_max: range of the displacement sensors, m (per axis); ``None`` if not stated.
        strain_max: full-scale elongation of a strain channel, m; ``None`` if not stated.
        network_spec: ``"paper"`` or ``"lattice:RxC"`` when the network is a named one, ``""``
            when it is given inline (kept so :func:`rig_to_toml` writes the same form back).

    Raises:
        ConfigError: on construction, if anything is inconsistent (see ``docs/rig.md``).
    """

    name: str
    source: str
    network: Network
    k_min: float
    k_max: float
    k0: float
    boards: tuple[BoardSpec, ...]
    io: Mapping[str, IOMap]
    force_max: float
    emulated: bool = False
    disp_max: float | None = None
    strain_max: float | None = None
    network_spec: str = ""
    _owner: tuple[int, ...] = field(init=False, repr=False)
    _at_node: Mapping[int, int] = field(init=False, repr=False)
    _by_address: Mapping[int, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.boards, (list, tuple)):
            object.__setattr__(self, "boards", tuple(self.boards))
        if isinstance(self.io, Mapping):
            object.__setattr__(self, "io", MappingProxyType(dict(self.io)))
        for name in ("k_min", "k_max", "k0", "force_max", "disp_max", "strain_max"):
            value = getattr(self, name)
            if _is_number(value):
                object.__setattr__(self, name, float(value))
        owner, at_node, by_address = _check_rig(self)
        object.__setattr__(self, "_owner", owner)
        object.__setattr__(self, "_at_node", MappingProxyType(at_node))
        object.__setattr__(self, "_by_address", MappingProxyType(by_address))

    # -- lookups ---------------------------------------------------------------------------

    @property
    def n_bonds(self) -> int:
        """Number of bonds of the network."""
        return self.network.n_bonds

    def owner(self, bond: int) -> BoardSpec:
        """The board that owns ``bond``.

        Raises:
            ConfigError: ``bond`` is not a bond index of the network.
        """
        if not _is_int(bond) or not 0 <= int(bond) < len(self._owner):
            raise ConfigError(f"rig {self.name}: bond {bond!r} is outside 0..{len(self._owner) - 1}")
        return self.boards[self._owner[int(bond)]]

    def board_at(self, node: int) -> BoardSpec | None:
        """The board sitting on ``node``, or ``None`` if that node has no board."""
        index = self._at_node.get(int(node)) if _is_int(node) else None
        return None if index is None else self.boards[index]

    def board(self, address: int) -> BoardSpec:
        """The board with protocol address ``address``.

        Raises:
            ConfigError: no board has that address.
        """
        index = self._by_address.get(int(address)) if _is_int(address) else None
        if index is None:
            raise ConfigError(f"rig {self.name}: no board has address {address!r}")
        return self.boards[index]

    def links(self) -> dict[str, list[int]]:
        """Port URL -> addresses of the boards on it (ports in order of first appearance).

        Raises:
            ConfigError: a board has no port yet (only a USB serial number; see
                :func:`resolve_ports`).
        """
        out: dict[str, list[int]] = {}
        for board in self.boards:
            if board.port is None:
                raise ConfigError(
                    f"rig {self.name}: board {board.address} (node {board.node}) has no port yet: "
                    f"resolve its USB serial number {board.usb_serial!r} with resolve_ports()"
                )
            out.setdefault(board.port, []).append(board.address)
        return out

    def with_ports(self, ports: Mapping[int, str]) -> Rig:
        """A copy of the rig with the boards at the given addresses moved to new port URLs.

        Raises:
            ConfigError: an address is not a board of the rig, or a URL is malformed.
        """
        for address in ports:
            self.board(address)
        boards = tuple(
            replace(b, port=ports[b.address]) if b.address in ports else b for b in self.boards
        )
        return replace(self, boards=boards)

    # -- comparison ------------------------------------------------------------------------

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Rig):
            return NotImplemented
        return (
            _networks_equal(self.network, other.network)
            and all(
                getattr(self, f) == getattr(other, f)
                for f in ("name", "source", "k_min", "k_max", "k0", "boards", "force_max",
                          "emulated", "disp_max", "strain_max", "network_spec")
            )
            and dict(self.io) == dict(other.io)
        )

    __hash__ = None  # type: ignore[assignment]


def _networks_equal(a: Network, b: Network) -> bool:
    return (
        a.name == b.name
        and np.array_equal(a.positions, b.positions)
        and np.array_equal(a.bonds, b.bonds)
        and np.array_equal(a.fixed, b.fixed)
    )


# ---------------------------------------------------------------------------------------------
# validation of a constructed rig


def _check_rig(rig: Rig) -> tuple[tuple[int, ...], dict[int, int], dict[int, int]]:
    """Check every invariant of a rig; return (owner board index per bond, node map, address map)."""
    where = rig.source if isinstance(rig.source, str) and rig.source else "rig"

    def fail(path: str, message: str) -> NoReturn:
        raise ConfigError(f"{where}: {path}: {message}")

    if not isinstance(rig.name, str) or not rig.name.strip():
        fail("name", f"expected a non-empty string, got {_show(rig.name)}")
    if not isinstance(rig.network, Network):
        fail("network", f"expected a Network, got {_show(rig.network)}")
    net = rig.network
    for name in ("k_min", "k_max", "k0", "force_max"):
        value = getattr(rig, name)
        if not _finite(value) or float(value) <= 0.0:
            fail(name, f"expected a positive finite number, got {_show(value)}")
    for name in ("disp_max", "strain_max"):
        value = getattr(rig, name)
        if value is not None and (not _finite(value) or float(value) <= 0.0):
            fail(name, f"expected a positive finite number, got {_show(value)}")
    if rig.k_min > rig.k_max:
        fail("k_min", f"expected k_min <= k_max, got k_min = {rig.k_min} > k_max = {rig.k_max}")
    if not rig.k_min <= rig.k0 <= rig.k_max:
        fail("k0", f"expected a value in [k_min, k_max] = [{rig.k_min}, {rig.k_max}], got {rig.k0}")
    if not isinstance(rig.emulated, bool):
        fail("emulated", f"expected true or false, got {_show(rig.emulated)}")
    if not isinstance(rig.network_spec, str):
        fail("network", f"expected a network name, got {_show(rig.network_spec)}")
    if rig.network_spec and not _networks_equal(net, _named_network(rig.network_spec, fail)):
        fail("network", f"the network is not the one named {rig.network_spec!r}")

    if not isinstance(rig.boards, tuple) or not rig.boards:
        fail("board", "expected at least one [[board]] table")
    owner: list[int] = [-1] * net.n_bonds
    at_node: dict[int, int] = {}
    by_address: dict[int, int] = {}
    for i, board in enumerate(rig.boards):
        _check_board(board, i, net, owner, at_node, by_address, fail)
    unowned = [b for b, o in enumerate(owner) if o < 0]
    if unowned:
        b = unowned[0]
        i, j = (int(v) for v in net.bonds[b])
        fail(
            "board",
            f"bond {b} (nodes {i}-{j}) is owned by no board; expected every bond owned by exactly "
            f"one board ({len(unowned)} unowned)",
        )

    fixed = {int(n) for n in net.fixed}
    if not isinstance(rig.io, Mapping):
        fail("io", f"expected a table of tasks, got {_show(rig.io)}")
    for task, iomap in rig.io.items():
        path = f"io.{task}"
        if not isinstance(task, str) or not task:
            fail("io", f"expected task names as non-empty strings, got {_show(task)}")
        if not isinstance(iomap, IOMap):
            fail(path, f"expected a table with inputs, input_scale and outputs, got {_show(iomap)}")
        for kind in ("inputs", "outputs"):
            for k, dof in enumerate(getattr(iomap, kind)):
                _check_dof(dof, f"{path}.{kind}[{k}]", net, fixed, fail)
                node = int(dof[0])
                board_index = at_node.get(node)
                io_board = None if board_index is None else rig.boards[board_index]
                if io_board is None or not io_board.force:
                    has = "no board" if io_board is None else f"board {io_board.address} without one"
                    role = "input loads" if kind == "inputs" else "adjoint loads"
                    fail(
                        f"{path}.{kind}[{k}]",
                        f"node {node} needs a board with a force actuator (force = true) for "
                        f"{role}, but has {has}",
                    )
                if kind == "outputs" and not io_board.disp:
                    fail(
                        f"{path}.outputs[{k}]",
                        f"node {node} needs a displacement sensor (disp = true) on board "
                        f"{io_board.address}",
                    )
        for k, scale in enumerate(iomap.input_scale):
            if not _finite(scale):
                fail(f"{path}.input_scale[{k}]", f"expected a finite number, got {_show(scale)}")
    return tuple(owner), at_node, by_address


def _named_network(spec: str, fail: _Fail) -> Network:
    """The network named ``"paper"`` or ``"lattice:RxC"``."""
    if spec == "paper":
        return paper_network().network
    match = _LATTICE_RE.fullmatch(spec)
    if match is None:
        fail("network", f"expected {_TOP_KEYS['network']}, got {_show(spec)}")
    try:
        return triangular_lattice(int(match.group(1)), int(match.group(2)))
    except PhysicsError as e:
        fail("network", str(e))


def _check_dof(dof: Any, path: str, net: Network, fixed: set[int], fail: _Fail) -> None:
    if not isinstance(dof, tuple) or len(dof) != 2 or not all(_is_int(v) for v in dof):
        fail(path, f"expected [node, axis], got {_show(dof)}")
    node, axis = int(dof[0]), int(dof[1])
    if not 0 <= node < net.n_nodes:
        fail(path, f"expected a node index 0..{net.n_nodes - 1}, got {node}")
    if axis not in (0, 1):
        fail(path, f"expected axis \"x\" or \"y\" (0 or 1), got {axis}")
    if node in fixed:
        fail(path, f"node {node} is pinned; expected a free node")


def _check_board(
    board: Any,
    i: int,
    net: Network,
    owner: list[int],
    at_node: dict[int, int],
    by_address: dict[int, int],
    fail: _Fail,
) -> None:
    path = f"board[{i}]"
    if not isinstance(board, BoardSpec):
        fail(path, f"expected a BoardSpec, got {_show(board)}")
    a = board.address
    if not _is_int(a) or not 0 <= a <= MAX_ADDRESS:
        fail(f"{path}.address", f"expected an integer 0..{MAX_ADDRESS}, got {_show(a)}")
    if a in by_address:
        fail(f"{path}.address", f"address {a} is already used by board[{by_address[a]}]")
    by_address[a] = i
    n = board.node
    if not _is_int(n) or not 0 <= n < net.n_nodes:
        fail(f"{path}.node", f"expected a node index 0..{net.n_nodes - 1}, got {_show(n)}")
    if n in at_node:
        fail(f"{path}.node", f"node {n} already has board[{at_node[n]}]; expected one board per node")
    at_node[n] = i
    if board.port is None and board.usb_serial is None:
        fail(path, "expected a port URL (port = \"...\") or a USB serial number (usb_serial = \"...\")")
    if board.port is not None:
        if not isinstance(board.port, str):
            fail(f"{path}.port", f"expected a port URL string, got {_show(board.port)}")
        try:
            check_url(board.port)
        except ConfigError as e:
            fail(f"{path}.port", str(e))
    if board.usb_serial is not None and (
        not isinstance(board.usb_serial, str) or not board.usb_serial.strip()
    ):
        fail(f"{path}.usb_serial", f"expected a non-empty string, got {_show(board.usb_serial)}")
    for flag in ("force", "disp"):
        if not isinstance(getattr(board, flag), bool):
            fail(f"{path}.{flag}", f"expected true or false, got {_show(getattr(board, flag))}")

    if not isinstance(board.bonds, tuple):
        fail(f"{path}.bonds", f"expected an array of bond indices, got {_show(board.bonds)}")
    if len(board.bonds) > MAX_BONDS_PER_BOARD:
        fail(
            f"{path}.bonds",
            f"expected at most {MAX_BONDS_PER_BOARD} bonds per board, got {len(board.bonds)}",
        )
    for k, b in enumerate(board.bonds):
        if not _is_int(b) or not 0 <= b < net.n_bonds:
            fail(f"{path}.bonds[{k}]", f"expected a bond index 0..{net.n_bonds - 1}, got {_show(b)}")
        if owner[b] == i:
            fail(f"{path}.bonds[{k}]", f"bond {b} is listed twice")
        if owner[b] >= 0:
            fail(
                f"{path}.bonds[{k}]",
                f"bond {b} is already owned by board[{owner[b]}]; expected exactly one owner",
            )
        owner[b] = i
    for name in ("strain_channels", "stiffness_channels"):
        channels = getattr(board, name)
        if not isinstance(channels, tuple):
            fail(f"{path}.{name}", f"expected an array of channel numbers, got {_show(channels)}")
        if len(channels) != len(board.bonds):
            fail(
                f"{path}.{name}",
                f"expected one channel per owned bond ({len(board.bonds)}), got {len(channels)}",
            )
        seen: dict[int, int] = {}
        for k, c in enumerate(channels):
            if not _is_int(c) or not 0 <= c <= 255:
                fail(f"{path}.{name}[{k}]", f"expected a channel number 0..255, got {_show(c)}")
            if c in seen:
                fail(f"{path}.{name}[{k}]", f"channel {c} is already used by {name}[{seen[c]}]")
            seen[c] = k
    for name in ("hal_args", "calibration"):
        table = getattr(board, name)
        if not isinstance(table, Mapping):
            fail(f"{path}.{name}", f"expected a table, got {_show(table)}")
        _check_toml_value(table, f"{path}.{name}", fail)
    _check_calibration(board, path, fail)


def _numbers(value: Any, count: int) -> bool:
    return isinstance(value, (list, tuple)) and len(value) == count and all(_finite(v) for v in value)


def _check_calibration(board: BoardSpec, path: str, fail: _Fail) -> None:
    """The calibration table holds what CONFIGURE accepts, in the shapes the firmware wants."""
    nb = len(board.bonds)
    for key, value in board.calibration.items():
        at = f"{path}.calibration.{key}"
        if key == "gain":
            if not _numbers(value, nb):
                fail(at, f"expected one finite number per owned bond ({nb}), m per count")
        elif key == "disp_gain":
            if not board.disp:
                fail(at, "the board has no displacement sensor (disp = false)")
            if not _numbers(value, 2):
                fail(at, "expected [x, y] finite numbers, m per count")
        elif key == "act_table":
            if not isinstance(value, (list, tuple)) or len(value) != nb:
                fail(at, f"expected one table per owned bond ({nb})")
            for i, table in enumerate(value):
                if not isinstance(table, (list, tuple)) or not 2 <= len(table) <= MAX_TABLE:
                    fail(f"{at}[{i}]", f"expected 2..{MAX_TABLE} points [k, command]")
                for j, point in enumerate(table):
                    if not _numbers(point, 2):
                        fail(f"{at}[{i}][{j}]", f"expected [k, command] finite numbers, got {_show(point)}")
                ks = [float(point[0]) for point in table]
                if ks[0] < 0 or any(b <= a for a, b in zip(ks, ks[1:])):
                    fail(f"{at}[{i}]", "expected k >= 0 and strictly increasing")
        else:
            fail(at, f"unknown key; expected one of {', '.join(CALIBRATION_KEYS)}")


def _check_toml_value(value: Any, path: str, fail: _Fail) -> None:
    """Values a rig file can hold and rig_to_toml can write back."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                fail(path, f"expected string keys, got {_show(key)}")
            _check_toml_value(item, f"{path}.{key}", fail)
    elif isinstance(value, (list, tuple)):
        for k, item in enumerate(value):
            _check_toml_value(item, f"{path}[{k}]", fail)
    elif isinstance(value, float):
        if not math.isfinite(value):
            fail(path, f"expected a finite number, got {value}")
    elif not isinstance(value, (str, int, bool)):
        fail(path, f"expected a string, number, boolean, array or table, got {_show(value)}")


# ---------------------------------------------------------------------------------------------
# reading TOML


_TOP_KEYS = {
    "name": "a string",
    "emulated": "true or false",
    "network": '"paper", "lattice:RxC" or a table with positions, bonds and fixed',
    "k_min": "a number (N/m)",
    "k_max": "a number (N/m)",
    "k0": "a number (N/m)",
    "force_max": "a number (N)",
    "disp_max": "a number (m)",
    "strain_max": "a number (m)",
    "io": "a table of tasks",
    "board": "an array of [[board]] tables",
}
_REQUIRED_TOP = ("name", "network", "force_max", "board")
_BOARD_KEYS = (
    "address", "node", "port", "usb_serial", "bonds", "strain_channels", "stiffness_channels",
    "force", "disp", "hal_args", "calibration",
)
_IO_KEYS = ("inputs", "input_scale", "outputs")
_NETWORK_KEYS = ("name", "positions", "bonds", "fixed")


class _Reader:
    """Turns the parsed TOML of one rig file into a Rig, naming fields in every error."""

    def __init__(self, where: str) -> None:
        self.where = where

    def fail(self, path: str, message: str) -> NoReturn:
        raise ConfigError(f"{self.where}: {path}: {message}")

    def keys(self, table: Mapping[str, Any], allowed: Sequence[str], path: str) -> None:
        for key in table:
            if key not in allowed:
                at = f"{path}.{key}" if path else key
                self.fail(at, f"unknown key; expected one of {', '.join(allowed)}")

    def table(self, value: Any, path: str) -> Mapping[str, Any]:
        if not isinstance(value, Mapping):
            self.fail(path, f"expected a table, got {_show(value)}")
        return value

    def array(self, value: Any, path: str, what: str) -> list[Any]:
        if not isinstance(value, list):
            self.fail(path, f"expected {what}, got {_show(value)}")
        return value

    def rig(self, data: Mapping[str, Any], source: str) -> Rig:
        self.keys(data, list(_TOP_KEYS), "")
        for key in _REQUIRED_TOP:
            if key not in data:
                self.fail(key, f"missing; expected {_TOP_KEYS[key]}")
        network, spec, defaults = self.network(data["network"])
        values: dict[str, Any] = {}
        for key in ("k_min", "k_max", "k0"):
            if key in data:
                values[key] = data[key]
            elif key in defaults:
                values[key] = defaults[key]
            else:
                self.fail(key, f"missing; expected {_TOP_KEYS[key]} (required unless network = \"paper\")")
        for key in ("k_min", "k_max", "k0", "force_max", "disp_max", "strain_max"):
            value = values.get(key, data.get(key))
            if value is not None and not _is_number(value):
                self.fail(key, f"expected {_TOP_KEYS[key]}, got {_show(value)}")
        boards_raw = self.array(data["board"], "board", _TOP_KEYS["board"])
        boards = [self.board(b, f"board[{i}]") for i, b in enumerate(boards_raw)]
        io_raw = self.table(data.get("io", {}), "io")
        io = {str(task): self.iomap(t, f"io.{task}") for task, t in io_raw.items()}
        return Rig(
            name=data["name"],
            source=source,
            network=network,
            k_min=values["k_min"],
            k_max=values["k_max"],
            k0=values["k0"],
            boards=tuple(boards),
            io=io,
            force_max=data["force_max"],
            emulated=data.get("emulated", False),
            disp_max=data.get("disp_max"),
            strain_max=data.get("strain_max"),
            network_spec=spec,
        )

    def network(self, value: Any) -> tuple[Network, str, dict[str, float]]:
        if isinstance(value, str):
            if value == "paper":
                setup = paper_network()
                bounds = {"k_min": setup.k_min, "k_max": setup.k_max, "k0": setup.k0}
                return setup.network, "paper", bounds
            return _named_network(value, self.fail), value, {}
        table = self.table(value, "network")
        self.keys(table, _NETWORK_KEYS, "network")
        for key in ("positions", "bonds"):
            if key not in table:
                self.fail(f"network.{key}", "missing")
        positions = self.array(table["positions"], "network.positions", "an array of [x, y] in m")
        for i, p in enumerate(positions):
            if not (isinstance(p, list) and len(p) == 2 and all(_finite(v) for v in p)):
                self.fail(f"network.positions[{i}]", f"expected [x, y] finite numbers, got {_show(p)}")
        bonds = self.array(table["bonds"], "network.bonds", "an array of [i, j] node pairs")
        for i, b in enumerate(bonds):
            if not (isinstance(b, list) and len(b) == 2 and all(_is_int(v) for v in b)):
                self.fail(f"network.bonds[{i}]", f"expected [i, j] node indices, got {_show(b)}")
        fixed = self.array(table.get("fixed", []), "network.fixed", "an array of node indices")
        for i, n in enumerate(fixed):
            if not _is_int(n):
                self.fail(f"network.fixed[{i}]", f"expected a node index, got {_show(n)}")
        name = table.get("name", "")
        if not isinstance(name, str):
            self.fail("network.name", f"expected a string, got {_show(name)}")
        try:
            net = Network(
                np.array(positions, dtype=float).reshape(-1, 2),
                np.array(bonds, dtype=np.int64).reshape(-1, 2),
                np.array(fixed, dtype=np.int64),
                name=name,
            )
        except PhysicsError as e:
            self.fail("network", str(e))
        return net, "", {}

    def board(self, value: Any, path: str) -> BoardSpec:
        table = self.table(value, path)
        self.keys(table, _BOARD_KEYS, path)
        for key in ("address", "node"):
            if key not in table:
                self.fail(f"{path}.{key}", "missing; expected an integer")
        fields: dict[str, Any] = {}
        for key in _BOARD_KEYS:
            if key not in table:
                continue
            v = table[key]
            if key in ("bonds", "strain_channels", "stiffness_channels"):
                v = tuple(self.array(v, f"{path}.{key}", "an array of integers"))
            elif key in ("hal_args", "calibration"):
                v = self.table(v, f"{path}.{key}")
            fields[key] = v
        return BoardSpec(**fields)

    def iomap(self, value: Any, path: str) -> IOMap:
        table = self.table(value, path)
        self.keys(table, _IO_KEYS, path)
        dofs: dict[str, tuple[DOF, ...]] = {}
        for kind in ("inputs", "outputs"):
            raw = self.array(table.get(kind, []), f"{path}.{kind}", 'an array of [node, "x" or "y"]')
            out: list[DOF] = []
            for k, item in enumerate(raw):
                at = f"{path}.{kind}[{k}]"
                if not (isinstance(item, list) and len(item) == 2 and _is_int(item[0])):
                    self.fail(at, f'expected [node, "x" or "y"], got {_show(item)}')
                axis = item[1]
                if isinstance(axis, str) and axis in _AXES:
                    axis = _AXES[axis]
                if not (_is_int(axis) and axis in (0, 1)):
                    self.fail(at, f'expected axis "x" or "y", got {_show(item[1])}')
                out.append((int(item[0]), int(axis)))
            dofs[kind] = tuple(out)
        if not dofs["outputs"]:
            self.fail(f"{path}.outputs", "expected at least one output")
        scale = table.get("input_scale", [])
        if _is_number(scale):
            scale = [scale] * len(dofs["inputs"])
        scale = self.array(scale, f"{path}.input_scale", "a number or an array of numbers (N)")
        if len(scale) != len(dofs["inputs"]):
            self.fail(
                f"{path}.input_scale",
                f"expected one value per input ({len(dofs['inputs'])}), got {len(scale)}",
            )
        for k, s in enumerate(scale):
            if not _finite(s):
                self.fail(f"{path}.input_scale[{k}]", f"expected a finite number (N), got {_show(s)}")
        return IOMap(
            inputs=dofs["inputs"],
            input_scale=tuple(float(s) for s in scale),
            outputs=dofs["outputs"],
        )


def _read_toml(text: str, where: str, source: str) -> Rig:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{where}: not valid TOML: {e}") from e
    except RecursionError as e:
        raise ConfigError(f"{where}: not valid TOML: nested too deeply") from e
    return _Reader(where).rig(data, source)


# ---------------------------------------------------------------------------------------------
# bundled rigs


def paper_rig() -> Rig:
    """The bundled ``paper`` rig (read from the package's ``rigs/paper.toml``)."""
    text = resources.files("host_sdk.rigs").joinpath("paper.toml").read_text(encoding="utf-8")
    return _read_toml(text, "paper.toml (bundled)", "paper")


def _lattice_shape(rows: int, cols: int) -> tuple[int, int]:
    """Nodes per board ``g`` and boards per row for a lattice rig on one 255-address bus."""
    if rows < 3 or cols < 2:
        raise ConfigError(
            f"lattice:{rows}x{cols}: expected at least 3 rows (pinned top, outputs, inputs) "
            "and 2 columns"
        )
    for group in range(1, cols + 1):
        per_row = -(-cols // group)
        if rows * per_row <= MAX_ADDRESS + 1:
            break
    else:
        group, per_row = cols, 1
    if rows * per_row > MAX_ADDRESS + 1:
        raise ConfigError(
            f"lattice:{rows}x{cols}: {rows} rows need more than {MAX_ADDRESS + 1} boards on one bus"
        )
    if per_row < _LATTICE_INPUTS:
        raise ConfigError(
            f"lattice:{rows}x{cols}: the bottom row needs {_LATTICE_INPUTS} boards for the inputs "
            f"but has {per_row} (boards span {group} nodes each); use more columns"
        )
    return group, per_row


def lattice_rig(rows: int, cols: int) -> Rig:
    """The bundled ``lattice:RxC`` rig, built in code.

    The network is ``triangular_lattice(rows, cols)`` (a = 16 mm, top row pinned). Boards share
    one bus, ``emu://lattice-RxC``, whose 255 addresses bound the board count: each board spans
    ``g`` consecutive nodes of a row (``g`` = 1 while ``rows·cols <= 255``, else the smallest
    ``g`` that fits) and sits on the first of them. Each bond is owned by the board of one of
    its end nodes, whichever owns fewer so far. The ``"iris"`` task puts 4 inputs (down, 0.049 N
    per unit feature) on boards spread along the bottom row and 3 outputs (x) on boards spread
    along the row above; these 7 boards get addresses 0..6 at every size, so every frame of a
    training sample has the same length whatever ``rows`` and ``cols``.

    Raises:
        ConfigError: fewer than 3 rows, too few boards in the bottom row for 4 inputs, or more
            nodes than 255 boards of at most ``MAX_BONDS_PER_BOARD`` bonds can cover.
    """
    spec = f"lattice:{rows}x{cols}"
    try:
        net = triangular_lattice(rows, cols)
    except PhysicsError as e:
        raise ConfigError(f"{spec}: {e}") from e
    group, per_row = _lattice_shape(rows, cols)
    home_of_node = np.empty(net.n_nodes, dtype=np.int64)  # board home node of every node
    homes: list[int] = []
    for r in range(rows):
        for j in range(per_row):
            first = r * cols + j * group
            homes.append(first)
            home_of_node[first: r * cols + min(cols, (j + 1) * group)] = first
    owned: dict[int, list[int]] = {h: [] for h in homes}
    for b, (i, j) in enumerate(net.bonds):
        a, c = int(home_of_node[i]), int(home_of_node[j])
        target = a if len(owned[a]) <= len(owned[c]) else c
        owned[target].append(b)
    worst = max(len(v) for v in owned.values())
    if worst > MAX_BONDS_PER_BOARD:
        raise ConfigError(
            f"{spec}: boards spanning {group} nodes would own up to {worst} bonds, more than "
            f"{MAX_BONDS_PER_BOARD}; the lattice is too large for one bus"
        )

    def spread(row: int, count: int) -> list[int]:
        picks = np.round(np.linspace(0, per_row - 1, count)).astype(int)
        return [homes[row * per_row + int(p)] for p in picks]

    inputs = spread(rows - 1, _LATTICE_INPUTS)
    outputs = spread(rows - 2, _LATTICE_OUTPUTS)
    io_homes = set(inputs) | set(outputs)
    order = inputs + outputs + [h for h in homes if h not in io_homes]
    url = f"emu://lattice-{rows}x{cols}"
    boards = tuple(
        BoardSpec(
            address=address,
            node=home,
            port=url,
            bonds=tuple(owned[home]),
            force=home in inputs or home in outputs,
            disp=home in outputs,
        )
        for address, home in enumerate(order)
    )
    setup = paper_network()
    io = {
        "iris": IOMap(
            inputs=tuple((n, 1) for n in inputs),
            input_scale=(-_FIVE_GRAMS_N,) * _LATTICE_INPUTS,
            outputs=tuple((n, 0) for n in outputs),
        )
    }
    return Rig(
        name=spec,
        source=spec,
        network=net,
        k_min=setup.k_min,
        k_max=setup.k_max,
        k0=setup.k0,
        boards=boards,
        io=io,
        force_max=_LATTICE_FORCE_MAX,
        emulated=True,
        disp_max=_LATTICE_DISP_MAX,
        strain_max=_LATTICE_STRAIN_MAX,
        network_spec=spec,
    )


def load_rig(spec: str) -> Rig:
    """Load a rig: ``"paper"``, ``"lattice:RxC"`` or the path of a TOML rig file.

    Raises:
        ConfigError: unknown name, unreadable file, invalid TOML or an invalid rig; the one-line
            message names the file, the field and what was expected.
    """
    if not isinstance(spec, str) or not spec:
        raise ConfigError(f"rig must be 'paper', 'lattice:RxC' or a TOML file path, got {spec!r}")
    if spec == "paper":
        return paper_rig()
    match = _LATTICE_RE.fullmatch(spec)
    if match:
        return lattice_rig(int(match.group(1)), int(match.group(2)))
    if spec.startswith("lattice:"):
        raise ConfigError(f"rig {spec!r}: expected lattice:RxC with R rows and C columns, e.g. lattice:4x4")
    path = Path(spec)
    if not path.is_file():
        raise ConfigError(
            f"unknown rig {spec!r}: expected 'paper', 'lattice:RxC' or the path of a TOML rig file"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read rig file {spec}: {e}") from e
    return _read_toml(text, spec, spec)


# ---------------------------------------------------------------------------------------------
# writing TOML


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _toml_key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else _toml_string(key)


def _toml_string(text: str) -> str:
    out = ['"']
    for ch in text:
        code = ord(ch)
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\u{code:04X}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _toml_value(value: Any) -> str:
    if isinstance(value, (bool, np.bool_)):
        return "true" if value else "false"
    if _is_int(value):
        return str(int(value))
    if _is_number(value):
        return repr(float(value))
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, Mapping):
        items = ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items())
        return "{ " + items + " }" if items else "{}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise ConfigError(f"cannot write {_show(value)} to TOML")


def _dofs(dofs: Sequence[DOF]) -> str:
    return "[" + ", ".join(f'[{int(n)}, "{_AXIS_NAMES[int(a)]}"]' for n, a in dofs) + "]"


def rig_to_toml(rig: Rig) -> str:
    """The TOML text of a rig file that :func:`load_rig` reads back to an equal rig.

    (The ``source`` of the reloaded rig is the file it was read from.)
    """
    lines = [f"# a rig of {rig.network.n_nodes} nodes, {rig.n_bonds} bonds and "
             f"{len(rig.boards)} boards (field reference: docs/rig.md)", ""]
    lines.append(f"name = {_toml_string(rig.name)}")
    lines.append(f"emulated = {_toml_value(rig.emulated)}")
    if rig.network_spec:
        lines.append(f"network = {_toml_string(rig.network_spec)}")
    for key in ("k_min", "k_max", "k0", "force_max", "disp_max", "strain_max"):
        value = getattr(rig, key)
        if value is not None:
            lines.append(f"{key} = {_toml_value(value)}")
    if not rig.network_spec:
        net = rig.network
        lines += ["", "[network]"]
        if net.name:
            lines.append(f"name = {_toml_string(net.name)}")
        lines.append("positions = [")
        lines += [f"  [{float(x)!r}, {float(y)!r}]," for x, y in net.positions]
        lines.append("]")
        lines.append("bonds = " + _toml_value([[int(i), int(j)] for i, j in net.bonds]))
        lines.append("fixed = " + _toml_value([int(n) for n in net.fixed]))
    for task, iomap in rig.io.items():
        lines += ["", f"[io.{_toml_key(task)}]"]
        lines.append(f"inputs = {_dofs(iomap.inputs)}")
        lines.append(f"input_scale = {_toml_value(list(iomap.input_scale))}")
        lines.append(f"outputs = {_dofs(iomap.outputs)}")
    for board in rig.boards:
        lines += ["", "[[board]]"]
        lines.append(f"address = {board.address}")
        lines.append(f"node = {board.node}")
        if board.port is not None:
            lines.append(f"port = {_toml_string(board.port)}")
        if board.usb_serial is not None:
            lines.append(f"usb_serial = {_toml_string(board.usb_serial)}")
        lines.append(f"bonds = {_toml_value(list(board.bonds))}")
        lines.append(f"strain_channels = {_toml_value(list(board.strain_channels))}")
        lines.append(f"stiffness_channels = {_toml_value(list(board.stiffness_channels))}")
        lines.append(f"force = {_toml_value(board.force)}")
        lines.append(f"disp = {_toml_value(board.disp)}")
        if board.hal_args:
            lines.append(f"hal_args = {_toml_value(board.hal_args)}")
        if board.calibration:
            lines.append(f"calibration = {_toml_value(board.calibration)}")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# discovery


def resolve_ports(rig: Rig, ports: Sequence[tuple[str, str | None]] | None = None) -> Rig:
    """Fill the port of every board that has a USB serial number from the connected devices.

    Args:
        rig: a rig whose boards may give ``usb_serial`` instead of (or besides) ``port``.
        ports: ``(device, serial_number)`` pairs, as pyserial's
            ``serial.tools.list_ports.comports()`` reports them (``port.device``,
            ``port.serial_number``); ``None`` asks pyserial.

    Returns:
        A copy of the rig where each such board's port is ``serial://<device>``. Boards without
        a USB serial number keep their port.

    Raises:
        TransportError: a board's serial number matches no connected device, or several.
    """
    if ports is None:
        list_ports = importlib.import_module("serial.tools.list_ports")
        ports = [(p.device, p.serial_number) for p in list_ports.comports()]
    devices: dict[str, list[str]] = {}
    for device, serial_number in ports:
        if serial_number:
            devices.setdefault(str(serial_number).strip(), []).append(str(device))
    mapping: dict[int, str] = {}
    for i, board in enumerate(rig.boards):
        if board.usb_serial is None:
            continue
        found = devices.get(board.usb_serial.strip(), [])
        if not found:
            connected = ", ".join(f"{d[0]} ({s})" for s, d in sorted(devices.items())) or "none"
            raise TransportError(
                f"{rig.source}: board[{i}] (address {board.address}, node {board.node}) with USB "
                f"serial {board.usb_serial!r} is not connected (connected: {connected})"
            )
        if len(found) > 1:
            raise TransportError(
                f"{rig.source}: board[{i}] USB serial {board.usb_serial!r} matches several "
                f"devices: {', '.join(found)}"
            )
        mapping[board.address] = f"serial://{found[0]}"
    return rig.with_ports(mapping) if mapping else rig
