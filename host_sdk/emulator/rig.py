"""An emulated rig: the world of a rig file, with its boards running the real firmware.

:class:`EmulatedRig` builds the :class:`~host_sdk.emulator.world.World` of a rig (its network,
with sensors and actuators ranged from the rig's limits), gives every board of the rig a flash
directory, and runs the boards either in this process (fast: ``emu://`` endpoints, or
pseudo-terminals for other processes) or as MicroPython processes on pseudo-terminals
(faithful). Use it as a context manager; :attr:`EmulatedRig.ports` tells the host what to open.

Before training, a board needs its part of the rig (owned bonds, channels, bounds, stiffness)
and its calibration. Unless ``configure=False`` or the rig is blank, the emulator sends each
board that HELLO reports unconfigured one CONFIGURE with :func:`configure_args` (the nominal
sensor gains and actuator table: the factory calibration of an emulated board), through the
board's own protocol. A board whose flash already holds a configuration keeps it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from .. import protocol
from ..errors import ConfigError, SdkError, TransportError
from ..fwinfo import firmware_dir, firmware_files, firmware_hash
from ..rig import BoardSpec, Rig, load_rig
from ..transport import Endpoint, endpoint_names, register_endpoint, unregister_endpoint
from .hal import BoardWiring
from .inproc import BOARD_CFG, Bus, InProcessBoard
from .models import ActuatorSpec, AdcSpec, DynamicsSpec, SensorSpec
from .mpboards import BoardProcess, Supervisor, WorldServer, find_micropython, read_log_tail
from .ptys import PtyBridge, PtyClient
from .world import World

__all__ = [
    "EmulatedRig",
    "HAL_MODULE",
    "FW_HASH_FILE",
    "configure_args",
    "sensors_for",
    "actuators_for",
    "write_flash",
    "hal_emu_path",
]

HAL_MODULE = "hal_emu"
"""The HAL module an emulated MicroPython board's ``board.cfg`` names."""

FW_HASH_FILE = "fw.hash"
"""Name of the firmware-hash stamp in a board's flash (read by the firmware, reported by HELLO)."""

_SEQ0 = 0xFFFFFF00  # sequence numbers of the emulator's own requests, far from the host's


def hal_emu_path() -> str:
    """Path of the MicroPython HAL that emulated boards run (``mp/hal_emu.py``)."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "mp", "hal_emu.py")


def _ranged(spec: AdcSpec, full_scale: float | None) -> AdcSpec:
    """``spec`` with its gain set so ``full_scale`` metres is the largest count; the noise and
    offset keep their size in metres."""
    if full_scale is None:
        return spec
    gain = float(full_scale) / (2 ** (spec.bits - 1) - 1)
    ratio = spec.gain / gain
    return replace(spec, gain=gain, noise=spec.noise * ratio, offset_std=spec.offset_std * ratio)


def sensors_for(rig: Rig, base: SensorSpec | None = None, *, noiseless: bool = False) -> SensorSpec:
    """The sensor models of a rig: ``base`` (default :class:`SensorSpec`) ranged to the rig's
    ``strain_max`` and ``disp_max`` (noise and offsets keep their size in metres)."""
    spec = base if base is not None else SensorSpec()
    spec = SensorSpec(strain=_ranged(spec.strain, rig.strain_max), disp=_ranged(spec.disp, rig.disp_max))
    return spec.noiseless() if noiseless else spec


def actuators_for(
    rig: Rig, base: ActuatorSpec | None = None, *, noiseless: bool = False
) -> ActuatorSpec:
    """The actuator models of a rig: ``base`` with the rig's ``k_min``, ``k_max``, ``force_max``;
    ideal (continuous, linear) when ``noiseless``."""
    spec = base if base is not None else ActuatorSpec()
    spec = replace(spec, k_min=rig.k_min, k_max=rig.k_max, force_max=rig.force_max)
    return spec.ideal() if noiseless else spec


def configure_args(
    rig: Rig,
    address: int,
    *,
    sensors: SensorSpec | None = None,
    actuators: ActuatorSpec | None = None,
    k: ArrayLike | None = None,
) -> dict[str, Any]:
    """CONFIGURE arguments that set up one emulated board of ``rig`` from scratch.

    Args:
        rig: the rig.
        address: the board's address.
        sensors: the sensor models (default :func:`sensors_for` the rig); the board is given
            their nominal gains.
        actuators: the actuator models (default :func:`actuators_for` the rig); the board is
            given their nominal command table.
        k: stiffness of every bond of the network, N/m (default ``rig.k0``).

    Returns:
        ``address``, ``node``, ``bonds``, ``channels``, ``act_channels``, ``gain``, ``k_min``,
        ``k_max``, ``k``, ``act_table`` and, for a board with a displacement sensor,
        ``disp_gain``. Calibration values in the rig's board entry take precedence.
    """
    spec = rig.board(address)
    sens = sensors if sensors is not None else sensors_for(rig)
    acts = actuators if actuators is not None else actuators_for(rig)
    kk = np.broadcast_to(np.asarray(rig.k0 if k is None else k, dtype=np.float64), (rig.n_bonds,))
    n = len(spec.bonds)
    table = acts.act_table(2)
    args: dict[str, Any] = {
        "address": spec.address,
        "node": spec.node,
        "bonds": list(spec.bonds),
        "channels": list(spec.strain_channels),
        "act_channels": list(spec.stiffness_channels),
        "gain": [sens.strain.gain] * n,
        "k_min": [float(rig.k_min)] * n,
        "k_max": [float(rig.k_max)] * n,
        "k": [float(kk[b]) for b in spec.bonds],
        "act_table": [table] * n,
    }
    if spec.disp:
        args["disp_gain"] = [sens.disp.gain, sens.disp.gain]
    for key, value in dict(spec.calibration).items():
        args[key] = value
    return args


def write_flash(
    flash_dir: str,
    address: int,
    *,
    firmware: bool = True,
    hal_args: Mapping[str, Any] | None = None,
    fw_hash: str | None = None,
) -> None:
    """Put what a deploy puts on an emulated board into ``flash_dir``.

    Writes ``board.cfg`` (``{"hal": "hal_emu", "hal_args": {...}, "address": N}``) and
    ``fw.hash`` (``fw_hash``, default :func:`~host_sdk.fwinfo.firmware_hash`); with ``firmware``
    also ``main.py``, ``hal_board.py``, ``mnnfw/*.py`` and ``hal_emu.py`` (a MicroPython board
    boots them). Other files (the firmware's records) are left alone, so a board keeps its state
    across emulator runs.
    """
    os.makedirs(flash_dir, exist_ok=True)
    if firmware:
        root = firmware_dir()
        for path in firmware_files():
            rel = path.relative_to(root)
            dst = os.path.join(flash_dir, *rel.parts)
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            shutil.copyfile(path, dst)
        shutil.copyfile(hal_emu_path(), os.path.join(flash_dir, HAL_MODULE + ".py"))
    cfg = {"hal": HAL_MODULE, "hal_args": dict(hal_args or {}), "address": int(address)}
    _write_text(os.path.join(flash_dir, BOARD_CFG), json.dumps(cfg, sort_keys=True) + "\n")
    stamp = firmware_hash() if fw_hash is None else fw_hash
    _write_text(os.path.join(flash_dir, FW_HASH_FILE), stamp + "\n")


def _write_text(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def _scratch_dir() -> str | None:
    """A memory-backed directory for temporary flash (``/dev/shm``) when there is one: the
    firmware syncs every record it writes, which costs nothing there."""
    shm = "/dev/shm"
    if os.path.isdir(shm) and os.access(shm, os.W_OK | os.X_OK):
        return shm
    return None


def _endpoint_name(port: str | None, rig: Rig, address: int) -> str:
    """The ``emu://`` name for a port of the rig (its own name when it is an emu:// URL)."""
    if port and port.startswith("emu://") and len(port) > len("emu://"):
        base = port[len("emu://") :]
    else:
        base = f"{rig.name}/{address}"
    taken = set(endpoint_names())
    name, i = base, 1
    while name in taken:
        i += 1
        name = f"{base}~{i}"
    return name


class EmulatedRig:
    """A rig whose boards run the real firmware against an emulated world.

    Args:
        rig: a :class:`~host_sdk.rig.Rig`, or what :func:`~host_sdk.rig.load_rig` accepts.
        micropython: run each board as a ``micropython`` process on a pseudo-terminal (else the
            firmware runs in this process).
        noiseless: exact sensors (no noise, exact gains, no offsets) and ideal actuators.
        flash_dir: directory holding one flash directory per board (``board-<address>``), kept
            after :meth:`stop`; default a temporary directory (in ``/dev/shm`` when there is
            one), removed by :meth:`stop`.
        blank: MicroPython boards start with empty flash (the bare REPL) for a deploy tool;
            nothing is written to their flash and nothing is configured.
        seed: seeds the sensor models (gain and offset draws, noise).
        pty: serve in-process boards on pseudo-terminals too (one per port of the rig).
        sensors, actuators, dynamics: override the models (sensors and actuators are then
            still ranged to the rig's limits).
        configure: configure unconfigured boards with :func:`configure_args` at start.
        start_timeout: seconds a MicroPython board may take to answer its first HELLO.
        endpoint_wrapper: in-process boards: ``(bus, addresses) -> endpoint`` puts something
            between each port and its boards (fault injection: ``FaultInjector.wrap_endpoint``).

    Attributes:
        rig: the rig.
        world: the emulated world.
        ports: address -> URL the host opens (``emu://NAME`` or ``serial:///dev/pts/N``).
        paths: address -> device path, for boards served on pseudo-terminals.
        flash_dirs: address -> the board's flash directory.

    Raises:
        ConfigError: bad options, or no MicroPython interpreter.
        TransportError: a MicroPython board did not come up (its log is quoted).
    """

    def __init__(
        self,
        rig: Rig | str,
        *,
        micropython: bool = False,
        noiseless: bool = False,
        flash_dir: str | None = None,
        blank: bool = False,
        seed: int = 0,
        pty: bool = False,
        sensors: SensorSpec | None = None,
        actuators: ActuatorSpec | None = None,
        dynamics: DynamicsSpec | None = None,
        configure: bool = True,
        start_timeout: float = 20.0,
        endpoint_wrapper: Callable[[Endpoint, list[int]], Endpoint] | None = None,
    ) -> None:
        self.rig = load_rig(rig) if isinstance(rig, str) else rig
        if not isinstance(self.rig, Rig):
            raise ConfigError(f"rig must be a Rig or a rig name/path, got {type(rig).__name__}")
        if blank and not micropython:
            raise ConfigError("blank boards need --micropython (in-process boards cannot be deployed to)")
        self.micropython = bool(micropython)
        self.noiseless = bool(noiseless)
        self.blank = bool(blank)
        self.sensors = sensors_for(self.rig, sensors, noiseless=noiseless)
        self.actuators = actuators_for(self.rig, actuators, noiseless=noiseless)
        self.world = World(
            self.rig.network,
            self.rig.k0,
            sensors=self.sensors,
            actuators=self.actuators,
            dynamics=dynamics,
            seed=seed,
        )
        self.wirings = {b.address: BoardWiring(self.world, b) for b in self.rig.boards}
        self.ports: dict[int, str] = {}
        self.paths: dict[int, str] = {}
        self.flash_dirs: dict[int, str] = {}
        self.inproc: dict[int, InProcessBoard] = {}
        self.processes: dict[int, BoardProcess] = {}
        self._buses: dict[str, Bus] = {}
        self._names: list[str] = []
        self._bridge: PtyBridge | None = None
        self._server: WorldServer | None = None
        self._supervisor: Supervisor | None = None
        self._stopped = False
        self._wrap = endpoint_wrapper
        if flash_dir is None:
            self._root = tempfile.mkdtemp(prefix="mnn-emu-", dir=_scratch_dir())
            self._own_root = True
        else:
            self._root = os.path.abspath(flash_dir)
            self._own_root = False
        try:
            self._start(micropython, pty, configure, start_timeout)
        except BaseException:
            self.stop()
            raise

    # -- start-up ------------------------------------------------------------------------

    def _start(self, micropython: bool, pty: bool, configure: bool, start_timeout: float) -> None:
        stamp = firmware_hash()
        for spec in self.rig.boards:
            d = os.path.join(self._root, f"board-{spec.address}")
            os.makedirs(d, exist_ok=True)
            self.flash_dirs[spec.address] = d
            if not self.blank:
                write_flash(d, spec.address, firmware=micropython, fw_hash=stamp)
        if micropython:
            self._start_micropython(configure, start_timeout)
        else:
            self._start_inproc(pty, configure)

    def _start_inproc(self, pty: bool, configure: bool) -> None:
        for spec in self.rig.boards:
            self.inproc[spec.address] = InProcessBoard(
                self.wirings[spec.address], self.flash_dirs[spec.address]
            )
        groups: dict[str, list[BoardSpec]] = {}
        for spec in self.rig.boards:
            key = spec.port or f"{self.rig.name}/{spec.address}"
            groups.setdefault(key, []).append(spec)
        for key, specs in groups.items():
            bus = Bus([self.inproc[s.address] for s in specs])
            self._buses[key] = bus
            if configure:
                for s in specs:
                    self._configure_inproc(bus, s.address)
        served: dict[str, Endpoint] = dict(self._buses)
        if self._wrap is not None:
            served = {key: self._wrap(bus, [s.address for s in groups[key]]) for key, bus in self._buses.items()}
        if pty:
            self._bridge = PtyBridge(served)
            self._bridge.start()
            for key, specs in groups.items():
                path = self._bridge.ptys[key].path
                for s in specs:
                    self.paths[s.address] = path
                    self.ports[s.address] = "serial://" + path
        else:
            for key, specs in groups.items():
                name = _endpoint_name(key, self.rig, specs[0].address)
                register_endpoint(name, served[key])
                self._names.append(name)
                for s in specs:
                    self.ports[s.address] = "emu://" + name

    def _configure_inproc(self, bus: Bus, address: int) -> None:
        seq = _SEQ0
        hello = _exchange(bus, seq, address, protocol.Command.HELLO, {})
        if not hello.get("configured", False):
            args = configure_args(self.rig, address, sensors=self.sensors, actuators=self.actuators)
            _exchange(bus, seq + 1, address, protocol.Command.CONFIGURE, args)
            _exchange(bus, seq + 2, address, protocol.Command.HELLO, {})

    def _start_micropython(self, configure: bool, start_timeout: float) -> None:
        exe = find_micropython()
        self._server = WorldServer(self.wirings, on_reset=self._on_reset)
        self._server.start()
        for spec in self.rig.boards:
            log = os.path.join(self._root, f"board-{spec.address}.log")
            proc = BoardProcess(spec.address, self.flash_dirs[spec.address], self._server.port, exe, log)
            self.processes[spec.address] = proc
            self.paths[spec.address] = proc.path
            self.ports[spec.address] = "serial://" + proc.path
        self._supervisor = Supervisor(self.processes)
        self._supervisor.start()
        procs = list(self.processes.values())

        def start_all() -> None:
            for proc in procs:
                proc.start()

        self._supervisor.call(start_all)
        if self.blank:
            return
        for address, proc in self.processes.items():
            self._await_board(address, proc, configure, start_timeout)

    def _await_board(self, address: int, proc: BoardProcess, configure: bool, timeout: float) -> None:
        client = PtyClient(proc.pty, f"emulated board {address} ({proc.path})", seq0=_SEQ0)
        try:
            hello = client.request(address, protocol.Command.HELLO, timeout=timeout)
            if configure and not hello.get("configured", False):
                args = configure_args(self.rig, address, sensors=self.sensors, actuators=self.actuators)
                client.request(address, protocol.Command.CONFIGURE, args)
                client.request(address, protocol.Command.HELLO)
        except SdkError as e:
            tail = read_log_tail(proc.log_path).strip().splitlines()
            why = f"; its log ends: {tail[-1]}" if tail else ""
            raise TransportError(f"{e}{why}") from e
        client.drain()

    def _on_reset(self, address: int) -> None:
        if self._supervisor is not None:
            self._supervisor.request_restart(address)

    # -- control -------------------------------------------------------------------------

    @property
    def addresses(self) -> list[int]:
        """Addresses of the rig's boards, in rig order."""
        return [b.address for b in self.rig.boards]

    def kill_board(self, address: int) -> None:
        """Cut a board's power: it stays silent until :meth:`restart_board`."""
        self._check_address(address)
        if self.micropython:
            self.processes[address].kill()
        else:
            self.inproc[address].kill()

    def restart_board(self, address: int) -> None:
        """Boot a board again from its flash (killing it first if it runs)."""
        self._check_address(address)
        if self.micropython:
            assert self._supervisor is not None
            self._supervisor.call(self.processes[address].restart)
            self._supervisor.forgive(address)
        else:
            board = self.inproc[address]
            board.kill()
            board.boot()

    def board_running(self, address: int) -> bool:
        """Whether the board is powered and running (its firmware or, if blank, the REPL)."""
        self._check_address(address)
        if self.micropython:
            return self.processes[address].running()
        return self.inproc[address].state == "running"

    def log(self, address: int) -> str:
        """The end of a MicroPython board's standard error (empty for in-process boards)."""
        self._check_address(address)
        if not self.micropython:
            return ""
        return read_log_tail(self.processes[address].log_path)

    def _check_address(self, address: int) -> None:
        if address not in self.wirings:
            raise ConfigError(f"rig {self.rig.name}: no board has address {address!r}")

    # -- shutdown ------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop every board, thread and terminal; remove a temporary flash root (idempotent)."""
        if self._stopped:
            return
        self._stopped = True
        for name in self._names:
            unregister_endpoint(name)
        self._names.clear()
        for proc in self.processes.values():
            proc.close()
        if self._supervisor is not None:
            self._supervisor.stop()
        if self._server is not None:
            self._server.stop()
        if self._bridge is not None:
            self._bridge.stop()
        for board in self.inproc.values():
            board.kill()
        if self._own_root:
            shutil.rmtree(self._root, ignore_errors=True)

    def __enter__(self) -> EmulatedRig:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        kind = "micropython" if self.micropython else "in-process"
        return f"<EmulatedRig {self.rig.name}: {len(self.wirings)} {kind} boards>"


def _exchange(bus: Bus, seq: int, address: int, command: int, args: dict[str, Any]) -> dict[str, Any]:
    """One request to an in-process board through its bus; the reply's result map."""
    out = bus.feed(protocol.encode_request(seq, address, command, args))
    deframer = protocol.Deframer()
    for payload in deframer.feed(out):
        reply = protocol.decode_reply(payload)
        if reply.seq == seq and reply.address == address:
            return reply.check()
    raise TransportError(f"emulated board {address} did not answer {protocol.Command(command).name}")

