"""Find the node boards attached to this host and write a rig file for them.

A board answers HELLO only at its own address, and a host that meets a port for the first time
does not know that address. :func:`hello_sweep` therefore writes one HELLO per address (0 to
254, each with its own sequence number) in a single burst and collects the replies: a board
ignores frames for other addresses without counting them, so the sweep costs a USB board a few
milliseconds and finds every board of an RS-485 bus at once.

:func:`discover` sweeps every serial port pyserial lists (``serial.tools.list_ports``) plus
the ports it is given (the pseudo-terminals of an emulated rig), and :func:`format_table` prints
what it found: port, USB serial number, board address, firmware hash and owned bonds.
:func:`skeleton_rig` turns the findings into a :class:`~host_sdk.rig.Rig` (boards identified by
USB serial number, or by port when they have none) on a template's network, limits and tasks;
:func:`write_skeleton` writes it as a rig file that :func:`~host_sdk.rig.load_rig` reads back.
"""

from __future__ import annotations

import importlib
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from . import protocol
from .errors import ConfigError, ProtocolError, SdkError, TransportError
from .rig import BoardSpec, Rig, load_rig, rig_to_toml
from .transport import Transport, check_url, open_transport

__all__ = [
    "SWEEP_ADDRESSES",
    "FoundBoard",
    "hello_sweep",
    "list_serial_ports",
    "discover",
    "format_table",
    "skeleton_rig",
    "write_skeleton",
]

SWEEP_ADDRESSES: tuple[int, ...] = tuple(range(protocol.BROADCAST))
"""Every board address (0 to 254)."""

_EMU_BOARD_PREFIX = "emu-"  # board ids of emulated boards (the HAL contract: emu-<address>)


def hello_sweep(
    transport: Transport,
    addresses: Sequence[int] = SWEEP_ADDRESSES,
    *,
    timeout: float = 0.5,
) -> dict[int, dict[str, Any]]:
    """Say HELLO to every address in ``addresses`` on one port; return address -> HELLO result.

    All requests go out in one burst (after a ``0x00`` that ends any half-received frame); the
    sweep then reads until no reply has come for ``timeout`` seconds. Frames that are not a valid
    HELLO reply to one of the sweep's requests (echoes, noise, a REPL's output) are ignored.

    Raises:
        TransportError: the port cannot be written or read.
        ConfigError: an address outside 0..254.
    """
    wanted = [int(a) for a in addresses]
    if any(not 0 <= a < protocol.BROADCAST for a in wanted):
        raise ConfigError(f"board addresses are 0..{protocol.BROADCAST - 1}, got {list(addresses)!r}")
    base = 2**24 + secrets.randbelow(2**31 - 2**24 - protocol.BROADCAST)
    burst = b"\x00" + b"".join(
        protocol.encode_request(base + a, a, protocol.Command.HELLO, {}) for a in wanted
    )
    transport.write(burst)
    deframer = protocol.Deframer()
    found: dict[int, dict[str, Any]] = {}
    deadline = time.monotonic() + timeout
    while len(found) < len(wanted):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        data = transport.read(remaining)
        if not data:
            break
        for payload in deframer.feed(data):
            try:
                reply = protocol.decode_reply(payload)
            except ProtocolError:
                continue
            if (
                reply.ok
                and reply.seq - base == reply.address
                and reply.address in wanted
                and isinstance(reply.result, dict)
                and "board" in reply.result
            ):
                found[reply.address] = reply.result
                deadline = time.monotonic() + timeout
    return found


@dataclass
class FoundBoard:
    """One board found by :func:`discover` (or a port where none answered).

    Attributes:
        port: the port URL (``serial://<device>``).
        usb_serial: the USB serial number pyserial reports, or None.
        address: the board's address, or None when nothing answered.
        hello: the board's HELLO result (empty when nothing answered).
        error: why the port gave no board (empty for a board).
    """

    port: str
    usb_serial: str | None = None
    address: int | None = None
    hello: dict[str, Any] = field(default_factory=dict)
    error: str = ""

    @property
    def ok(self) -> bool:
        """A board answered."""
        return self.address is not None


def list_serial_ports() -> list[tuple[str, str | None]]:
    """``(device, USB serial number)`` of every serial port pyserial lists (real devices only)."""
    list_ports = importlib.import_module("serial.tools.list_ports")
    out: list[tuple[str, str | None]] = []
    for p in list_ports.comports():
        if getattr(p, "hwid", "n/a") == "n/a":
            continue
        serial_number = getattr(p, "serial_number", None)
        out.append((str(p.device), str(serial_number) if serial_number else None))
    return out


def _url(port: str) -> str:
    check_url(port)
    return port if "://" in port else "serial://" + port


def discover(
    ports: Sequence[str] = (),
    *,
    system: bool = True,
    timeout: float = 0.5,
    jobs: int = 8,
    progress: Callable[[str], None] | None = None,
) -> list[FoundBoard]:
    """Say HELLO on serial ports and report the boards that answer.

    Args:
        ports: more port URLs or device paths to sweep (e.g. an emulated rig's terminals).
        system: also sweep every port pyserial lists.
        timeout: seconds a port may stay silent before the sweep of it ends.
        jobs: ports swept at the same time.
        progress: called with a line per port swept.

    Returns:
        One entry per board found (ports with a bus give several), plus one entry with an
        ``error`` for every port where nothing answered or that could not be opened; in the order
        of the ports.

    Raises:
        ConfigError: a malformed port URL.
    """
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ConfigError(f"jobs must be an integer >= 1, got {jobs!r}")
    entries: list[tuple[str, str | None]] = []
    seen: set[str] = set()
    for port in ports:
        url = _url(port)
        if url not in seen:
            seen.add(url)
            entries.append((url, None))
    if system:
        for device, serial_number in list_serial_ports():
            url = "serial://" + device
            if url not in seen:
                seen.add(url)
                entries.append((url, serial_number))
    def sweep(entry: tuple[str, str | None]) -> list[FoundBoard]:
        url, serial_number = entry
        if progress is not None:
            with lock:
                progress(f"sweeping {url}")
        try:
            transport = open_transport(url)
        except SdkError as e:
            return [FoundBoard(url, serial_number, error=str(e))]
        try:
            hellos = hello_sweep(transport, timeout=timeout)
        except TransportError as e:
            return [FoundBoard(url, serial_number, error=str(e))]
        finally:
            transport.close()
        if not hellos:
            return [FoundBoard(url, serial_number, error="no board answered HELLO")]
        return [FoundBoard(url, serial_number, a, hellos[a]) for a in sorted(hellos)]

    lock = threading.Lock()
    found: list[FoundBoard] = []
    if entries:
        with ThreadPoolExecutor(max_workers=min(jobs, len(entries))) as pool:
            for group in pool.map(sweep, entries):
                found.extend(group)
    return found


def format_table(found: Sequence[FoundBoard]) -> str:
    """The table :func:`discover`'s findings print as: port, USB serial, address, hash, bonds."""
    rows = [("port", "usb serial", "address", "firmware hash", "bonds")]
    for f in found:
        if f.ok:
            bonds = ",".join(str(b) for b in f.hello.get("bonds", [])) or "-"
            rows.append((f.port, f.usb_serial or "-", str(f.address),
                         str(f.hello.get("firmware_hash", "?")), bonds))
        else:
            rows.append((f.port, f.usb_serial or "-", "-", "-", f.error))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r[:-1], widths)) + "  " + r[-1] for r in rows]
    return "\n".join(line.rstrip() for line in lines)


def skeleton_rig(found: Sequence[FoundBoard], template: Rig | str = "paper", *, name: str | None = None) -> Rig:
    """A rig of the boards found, on the network, limits and tasks of ``template``.

    Each board is identified by its USB serial number, or by its port when it has none (an
    emulated board, a bus). A configured board brings its node and owned bonds from HELLO; an
    unconfigured one (freshly deployed) takes them from the template's board with the same
    address. Force actuators and displacement sensors come from the boards' capabilities; the
    template's tasks whose inputs and outputs the boards cannot serve are left out. The rig is
    marked emulated when every board is an emulated one (board id ``emu-<address>``).

    Raises:
        ConfigError: no board found, an unconfigured board with no template counterpart, or
            boards that do not make a valid rig of the template's network (e.g. a bond that no
            board owns: a board is missing).
    """
    base = load_rig(template) if isinstance(template, str) else template
    boards = [f for f in found if f.ok]
    if not boards:
        raise ConfigError("no board answered HELLO: nothing to write (is the rig powered and connected?)")
    specs: list[BoardSpec] = []
    addresses: set[int] = set()
    for f in boards:
        assert f.address is not None
        if f.address in addresses:
            raise ConfigError(f"two boards answer at address {f.address} (on {f.port}); give each its own address")
        addresses.add(f.address)
        hello = f.hello
        caps = hello.get("caps", {})
        node = int(hello.get("node", -1))
        bonds = tuple(int(b) for b in hello.get("bonds", []))
        twin = next((b for b in base.boards if b.address == f.address), None)
        if not hello.get("configured", False) or node < 0:
            if twin is None:
                raise ConfigError(
                    f"board {f.address} on {f.port} is not configured and the template rig "
                    f"{base.name} has no board at that address: its node and bonds are unknown"
                )
            node, bonds = twin.node, twin.bonds
        channels: dict[str, Any] = {}
        if twin is not None and twin.bonds == bonds:
            channels = {"strain_channels": twin.strain_channels, "stiffness_channels": twin.stiffness_channels,
                        "hal_args": dict(twin.hal_args)}
        ident: dict[str, Any] = {"usb_serial": f.usb_serial} if f.usb_serial else {"port": f.port}
        specs.append(BoardSpec(address=f.address, node=node, bonds=bonds,
                               force=bool(caps.get("force", False)), disp=bool(caps.get("disp", False)),
                               **ident, **channels))
    specs.sort(key=lambda s: s.address)
    by_node = {s.node: s for s in specs}
    io = {}
    for task, iomap in base.io.items():
        nodes_ok = all(n in by_node and by_node[n].force for n, _ in iomap.inputs + iomap.outputs)
        if nodes_ok and all(by_node[n].disp for n, _ in iomap.outputs):
            io[task] = iomap
    emulated = all(str(f.hello.get("board", "")).startswith(_EMU_BOARD_PREFIX) for f in boards)
    label = name or f"{base.name}-discovered"
    try:
        return replace(base, name=label, source=label, boards=tuple(specs), io=io, emulated=emulated)
    except ConfigError as e:
        raise ConfigError(f"the boards found do not make a rig of {base.name}'s network: {e}") from e


def write_skeleton(
    found: Sequence[FoundBoard], path: str | Path, template: Rig | str = "paper", *, name: str | None = None
) -> Rig:
    """Write :func:`skeleton_rig` of ``found`` to ``path`` and return the rig read back from it.

    Raises:
        ConfigError: as :func:`skeleton_rig`, or the file cannot be written.
    """
    rig = skeleton_rig(found, template, name=name)
    target = Path(path)
    try:
        target.write_text(rig_to_toml(rig), encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"cannot write rig file {target}: {e}") from e
    return load_rig(str(target))
