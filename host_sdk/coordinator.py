"""The in situ loop: the host side of a rig of node boards.

:class:`RigSession` opens one :class:`~host_sdk.link.Link` per port of a rig, says HELLO to every
board (refusing a protocol version or firmware hash it does not expect), configures the boards
from the rig file and notices reboots through the boards' boot counters.

:class:`RigBackend` is the trainer's :class:`~host_sdk.training.Backend` for a rig. Per sample it
sets the input loads, has every board measure ``SAMPLE FWD`` (one broadcast frame on a bus, an
addressed frame per USB board; either way a barrier), reads the output displacements, asks the
trainer for the adjoint forces, applies them scaled by an adjoint gain on top of the input loads
and has every board measure ``SAMPLE ADJ``. The boards accumulate ``s_fwd * s_adj / gain`` per bond themselves.
Per batch it sends ``UPDATE`` to every board. Host traffic per sample involves only the input and
output boards, never the number of bonds.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from . import protocol
from .errors import ConfigError, NodeError, SdkError, TransportError
from .fwinfo import firmware_hash
from .link import Link
from .optim import OptimiserConfig
from .physics import DOF, IOMap
from .rig import BoardSpec, Rig
from .transport import open_transport

Command = protocol.Command


@dataclass
class SamplingConfig:
    """How boards measure a phase.

    Attributes:
        readings: readings averaged per measurement.
        tol: settle tolerance in m: two successive means closer than this end the wait.
        timeout_ms: longest wait for a steady reading; a phase that times out is reported.
        adjoint_fraction: the largest adjoint load is this fraction of the force actuators'
            range (``rig.force_max``); boards divide their products by the resulting gain.
        incremental: apply the adjoint loads on top of the input loads and take the difference
            (the tangent adjoint of a slightly nonlinear network); plain adjoint otherwise.
    """

    readings: int = 4
    tol: float = 1e-7
    timeout_ms: int = 2000
    adjoint_fraction: float = 0.5
    incremental: bool = True


@dataclass
class BoardState:
    """What the host knows of one board from its HELLO replies."""

    address: int
    url: str
    hello: dict[str, Any] = field(default_factory=dict)
    boots: int = -1
    reboots_seen: int = 0


class RigSession:
    """Open links to every board of a rig and keep track of them.

    Args:
        rig: the loaded rig description.
        ports: optional address -> port URL map that overrides the rig file's ports (an emulated
            rig supplies its own).
        timeout: seconds to wait for a reply before retrying with the same sequence number.
        retries: retries before a silent board is reported.
        expected_hash: firmware hash the boards must report; ``None`` means this host's own
            firmware (:func:`host_sdk.fwinfo.firmware_hash`), ``"any"`` accepts every hash.
    """

    def __init__(
        self,
        rig: Rig,
        ports: Mapping[int, str] | None = None,
        *,
        timeout: float = 0.5,
        retries: int = 3,
        expected_hash: str | None = None,
    ) -> None:
        self.rig = rig
        self.expected_hash = firmware_hash() if expected_hash is None else expected_hash
        urls: dict[int, str] = {}
        for board in rig.boards:
            url = (ports or {}).get(board.address) or board.port
            if not url:
                raise ConfigError(
                    f"rig {rig.name}: board {board.address} has no port "
                    "(give a port URL, or resolve its USB serial number with discovery)"
                )
            urls[board.address] = url
        self.links: dict[str, Link] = {}
        try:
            for url in dict.fromkeys(urls.values()):
                self.links[url] = Link(open_transport(url), timeout=timeout, retries=retries, name=url)
        except BaseException:
            self.close()
            raise
        self.boards: dict[int, BoardState] = {
            a: BoardState(address=a, url=u) for a, u in urls.items()
        }

    # -- plumbing ---------------------------------------------------------------------------
    def close(self) -> None:
        """Close every link (idempotent)."""
        for link in self.links.values():
            link.close()
        self.links = {}

    def __enter__(self) -> RigSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def link_of(self, address: int) -> Link:
        return self.links[self.boards[address].url]

    def request(self, address: int, command: Command, args: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Send one addressed request and return the board's result map."""
        return self.link_of(address).request(address, int(command), dict(args or {}))

    def broadcast(self, command: Command, args: Mapping[str, Any] | None = None) -> None:
        """Send one broadcast frame on every port (one frame per bus, one per USB board)."""
        for link in self.links.values():
            link.broadcast(int(command), dict(args or {}))

    def measure(self, args: Mapping[str, Any]) -> int:
        """Every board takes one SAMPLE measurement; return once all of them have finished.

        The loads must not change while any board is still measuring, so this is a barrier.
        A port with one board gets an addressed SAMPLE, and its reply marks the end; such
        ports are served in parallel when they are real serial ports (in-process emulated
        boards run synchronously anyway). A port shared by several boards (a bus) gets one
        broadcast frame; a real bus then waits ``timeout_ms``, the longest any board may
        measure. Returns the number of boards that reported an unsettled measurement.
        """
        single: list[tuple[int, Link]] = []
        on_port: dict[str, list[int]] = {}
        for address, state in self.boards.items():
            on_port.setdefault(state.url, []).append(address)
        wait = 0.0
        for url, addresses in on_port.items():
            if len(addresses) == 1:
                single.append((addresses[0], self.links[url]))
            else:
                self.links[url].broadcast(int(Command.SAMPLE), dict(args))
                if not url.startswith("emu://"):
                    wait = max(wait, float(args.get("timeout_ms", 0)) / 1000.0)

        def one(item: tuple[int, Link]) -> dict[str, Any]:
            address, link = item
            return link.request(address, int(Command.SAMPLE), dict(args))

        if any(not link.url.startswith("emu://") for _, link in single) and len(single) > 1:
            with ThreadPoolExecutor(max_workers=min(32, len(single))) as pool:
                replies = list(pool.map(one, single))
        else:
            replies = [one(item) for item in single]
        if wait:
            time.sleep(wait)
        return sum(1 for r in replies if not r.get("settled", True))

    def wire_bytes(self) -> int:
        """Bytes sent and received on all links so far."""
        return sum(link.stats.bytes_sent + link.stats.bytes_received for link in self.links.values())

    # -- handshake --------------------------------------------------------------------------
    def hello(self, address: int) -> dict[str, Any]:
        """HELLO one board, check its protocol and firmware, and note a reboot.

        Returns the HELLO result. Raises :class:`NodeError` for a board that speaks another
        protocol version or runs other firmware.
        """
        state = self.boards[address]
        result = self.request(address, Command.HELLO)
        where = f"board {address} on {state.url}"
        proto = result.get("proto")
        if proto != protocol.PROTO_VERSION:
            raise NodeError(
                f"{where} speaks protocol {proto}, this host speaks {protocol.PROTO_VERSION}",
                address=address,
            )
        got = result.get("firmware_hash")
        if self.expected_hash != "any" and got != self.expected_hash:
            raise NodeError(
                f"{where} runs firmware {got}, expected {self.expected_hash}: run `mnn deploy`",
                address=address,
            )
        boots = int(result.get("boots", 0))
        if state.boots >= 0 and boots != state.boots:
            state.reboots_seen += 1
        state.boots = boots
        state.hello = result
        return result

    def handshake(self) -> dict[int, dict[str, Any]]:
        """HELLO every board of the rig; return address -> HELLO result."""
        return {a: self.hello(a) for a in sorted(self.boards)}

    def configure(self, k: NDArray[np.float64] | None = None) -> None:
        """Send every board its part of the rig: owned bonds, channels, bounds and stiffness.

        Calibration fields present in the rig's board entries (``hal_args`` is not sent) are
        passed through unchanged, so a calibrated rig keeps its calibration.
        """
        k_all = np.full(self.rig.network.n_bonds, self.rig.k0) if k is None else np.asarray(k, float)
        for spec in self.rig.boards:
            self.request(spec.address, Command.CONFIGURE, configure_args(self.rig, spec, k_all))
        self.set_stiffness(k_all)

    def last_step(self) -> int:
        """The newest UPDATE step any board has applied (from the HELLO replies)."""
        return max((int(b.hello.get("step", -1)) for b in self.boards.values()), default=-1)

    def tare(self, readings: int = 16) -> None:
        """Zero every strain channel and displacement sensor with no load applied."""
        for spec in self.rig.boards:
            if spec.force:
                self.request(spec.address, Command.SET_LOAD, {"fx": 0.0, "fy": 0.0})
        for spec in self.rig.boards:
            self.request(spec.address, Command.TARE, {"n": readings})

    def read_stiffness(self) -> NDArray[np.float64]:
        """Ask every board for its bonds' stiffness (diagnostics; traffic grows with bonds)."""
        k = np.full(self.rig.network.n_bonds, np.nan)
        for spec in self.rig.boards:
            if not spec.bonds:
                continue
            result = self.request(spec.address, Command.READ_BONDS)
            k[list(result["bonds"])] = result["k"]
        return k

    def read_gradients(self) -> NDArray[np.float64]:
        """Per-bond batch-mean gradient (accumulated products / gain / count) as each board holds it."""
        g = np.full(self.rig.network.n_bonds, np.nan)
        for spec in self.rig.boards:
            if not spec.bonds:
                continue
            result = self.request(spec.address, Command.READ_BONDS)
            g[list(result["bonds"])] = result["grad"]
        return g

    def set_stiffness(self, k: NDArray[np.float64]) -> None:
        """Load a design: every board drives its bonds to ``k`` and restarts its optimiser."""
        k = np.asarray(k, dtype=float)
        for spec in self.rig.boards:
            if spec.bonds:
                self.request(spec.address, Command.SET_STIFFNESS, {"k": [float(k[b]) for b in spec.bonds]})


def configure_args(rig: Rig, spec: BoardSpec, k: NDArray[np.float64]) -> dict[str, Any]:
    """CONFIGURE arguments for one board of a rig, with bond stiffness taken from ``k``."""
    n = len(spec.bonds)
    args: dict[str, Any] = {
        "address": spec.address,
        "node": spec.node,
        "bonds": list(spec.bonds),
        "channels": list(spec.strain_channels),
        "act_channels": list(spec.stiffness_channels),
        "k_min": [float(rig.k_min)] * n,
        "k_max": [float(rig.k_max)] * n,
        "k": [float(k[b]) for b in spec.bonds],
    }
    calibration = getattr(spec, "calibration", None) or {}
    for key in ("gain", "disp_gain", "act_table"):
        if key in calibration:
            args[key] = calibration[key]
    return args


class RigBackend:
    """The trainer's backend for a rig of boards that compute their own gradients.

    Args:
        session: an open, handshaken and configured :class:`RigSession`.
        io: where the task's input forces go and which displacements are its outputs.
        optimiser: the per-bond optimiser the boards run (a clip variant: boards clamp to
            their bounds).
        sampling: how boards measure each phase.
    """

    def __init__(
        self,
        session: RigSession,
        io: IOMap,
        *,
        optimiser: OptimiserConfig,
        sampling: SamplingConfig | None = None,
    ) -> None:
        self.set_optimiser(optimiser)
        self.session = session
        self.rig = session.rig
        self.io = io
        self.sampling = sampling or SamplingConfig()
        self.n_bonds = self.rig.network.n_bonds
        self.samples_run = 0
        self.unsettled = 0
        self._input_nodes = self._boards_for(io.inputs, need="force", what="input")
        self._output_nodes = self._boards_for(io.outputs, need="disp", what="output")
        self._boards_for(io.outputs, need="force", what="output (adjoint load)")
        self._load_nodes = sorted({n for n, _ in io.inputs} | {n for n, _ in io.outputs})
        self._last_batch: tuple[int, NDArray[np.float64], Callable[..., NDArray[np.float64]]] | None = None
        # Boards refuse a step id they have already applied, and keep the last one across runs
        # and reboots: the trainer's steps 0, 1, ... map to board steps after the newest one.
        self.step_base = session.last_step() + 1

    def _boards_for(self, dofs: tuple[DOF, ...], *, need: str, what: str) -> dict[int, int]:
        nodes: dict[int, int] = {}
        for node, _axis in dofs:
            spec = self.rig.board_at(node)
            if spec is None or not getattr(spec, need):
                kind = "force actuator" if need == "force" else "displacement sensor"
                raise ConfigError(f"rig {self.rig.name}: {what} node {node} has no board with a {kind}")
            nodes[node] = spec.address
        return nodes

    @property
    def optimiser_config(self) -> OptimiserConfig:
        """The optimiser the boards run."""
        return self.optimiser

    def set_optimiser(self, config: OptimiserConfig) -> None:
        """Change the optimiser sent with the next UPDATE (boards only clamp: clip variants)."""
        if config.project != "clip":
            raise ConfigError(
                f"boards clamp stiffness to their bounds; optimiser projection {config.project!r} "
                "is simulation-only (use a clip optimiser on a rig)"
            )
        self.optimiser = config

    # -- loads and phases ----------------------------------------------------------------------
    def _node_loads(self, dofs: tuple[DOF, ...], values: NDArray[np.float64]) -> dict[int, list[float]]:
        loads = {n: [0.0, 0.0] for n in self._load_nodes}
        for (node, axis), value in zip(dofs, values):
            loads[node][axis] += float(value)
        return loads

    def _apply_loads(self, loads: Mapping[int, list[float]]) -> None:
        for node, (fx, fy) in loads.items():
            address = self.rig.board_at(node).address  # type: ignore[union-attr]
            self.session.request(address, Command.SET_LOAD, {"fx": fx, "fy": fy})

    def _read_outputs(self, *, settle: bool) -> NDArray[np.float64]:
        """Output displacements: the values measured by the last SAMPLE (``settle=False``) or
        fresh readings taken once the output has settled."""
        cache: dict[int, dict[str, Any]] = {}
        y = np.empty(len(self.io.outputs))
        if settle:
            args = {"n": self.sampling.readings, "tol": self.sampling.tol, "timeout_ms": self.sampling.timeout_ms}
        else:
            args = {"n": 0}
        for i, (node, axis) in enumerate(self.io.outputs):
            if node not in cache:
                cache[node] = self.session.request(self._output_nodes[node], Command.READ_OUTPUT, args)
            y[i] = cache[node]["ux" if axis == 0 else "uy"]
        return y

    def _sample(self, phase: protocol.Phase, step: int, sample: int, gain: float = 1.0) -> None:
        args: dict[str, Any] = {
            "phase": int(phase),
            "step": self.step_base + step,
            "sample": sample,
            "n": self.sampling.readings,
            "tol": self.sampling.tol,
            "timeout_ms": self.sampling.timeout_ms,
        }
        if phase == protocol.Phase.ADJ:
            args["gain"] = gain
            args["incremental"] = self.sampling.incremental
        self.unsettled += self.session.measure(args)

    def _input_forces(self, inputs: NDArray[np.float64]) -> NDArray[np.float64]:
        return np.asarray(inputs, dtype=float).reshape(len(inputs), -1)

    # -- Backend protocol --------------------------------------------------------------------------
    def train_batch(
        self,
        step: int,
        inputs: NDArray[np.float64],
        adjoint: Callable[[NDArray[np.float64], NDArray[np.int64]], NDArray[np.float64]],
    ) -> NDArray[np.float64]:
        """Run forward and adjoint phases for every sample of a batch; boards accumulate."""
        forces = self._input_forces(inputs)
        self._last_batch = (step, forces, adjoint)
        return self._run_batch(step, forces, adjoint)

    def _run_batch(
        self,
        step: int,
        forces: NDArray[np.float64],
        adjoint: Callable[[NDArray[np.float64], NDArray[np.int64]], NDArray[np.float64]],
    ) -> NDArray[np.float64]:
        io = self.io
        outputs = np.empty((len(forces), len(io.outputs)))
        force_max = float(self.rig.force_max)
        for i, f in enumerate(forces):
            loads = self._node_loads(io.inputs, f)
            self._apply_loads(loads)
            self._sample(protocol.Phase.FWD, step, i)
            y = self._read_outputs(settle=False)
            outputs[i] = y
            adj = np.asarray(adjoint(y[None, :], np.array([i])), dtype=float).reshape(-1)
            peak = float(np.max(np.abs(adj))) if adj.size else 0.0
            gain = self.sampling.adjoint_fraction * force_max / peak if peak > 0 else 1.0
            if self.sampling.incremental:
                adj_loads = self._node_loads(io.inputs + io.outputs, np.concatenate([f, gain * adj]))
            else:
                adj_loads = self._node_loads(io.outputs, gain * adj)
            self._apply_loads(adj_loads)
            self._sample(protocol.Phase.ADJ, step, i, gain)
            self.samples_run += 1
        self._apply_loads({n: [0.0, 0.0] for n in self._load_nodes})
        return outputs

    def update(self, step: int) -> None:
        """Every board applies its batch-mean gradient once (idempotent by step id).

        A board that missed part of the batch (a lost broadcast, a reboot) refuses the update
        with BAD_STATE; the host then discards the batch on every board, repeats it and updates
        again, so no update is lost or applied twice.
        """
        if self._last_batch is None or self._last_batch[0] != step:
            raise SdkError(f"update({step}) without a matching train_batch")
        _, forces, adjoint = self._last_batch
        board_step = self.step_base + step
        opt = self.optimiser
        args = {
            "step": board_step,
            "count": len(forces),
            "lr": float(opt.lr),
            "opt": opt.opt_code,
            "b1": float(opt.b1),
            "b2": float(opt.b2),
            "eps": float(opt.eps),
        }
        for attempt in range(3):
            refused = []
            for spec in self.rig.boards:
                if not spec.bonds:
                    continue
                try:
                    self.session.request(spec.address, Command.UPDATE, args)
                except NodeError as e:
                    if e.status != protocol.Status.BAD_STATE:
                        raise
                    refused.append(spec.address)
            if not refused:
                return
            for address in refused:
                self.session.hello(address)
            self.session.broadcast(Command.DISCARD, {"step": board_step})
            self._run_batch(step, forces, adjoint)
        raise TransportError(f"boards {refused} kept refusing the update of step {board_step}")

    def evaluate(self, inputs: NDArray[np.float64]) -> NDArray[np.float64]:
        """Forward only: apply each sample's loads and read the output displacements."""
        forces = self._input_forces(inputs)
        outputs = np.empty((len(forces), len(self.io.outputs)))
        for i, f in enumerate(forces):
            self._apply_loads(self._node_loads(self.io.inputs, f))
            outputs[i] = self._read_outputs(settle=True)
        self._apply_loads({n: [0.0, 0.0] for n in self._load_nodes})
        return outputs

    def stiffness(self) -> NDArray[np.float64]:
        return self.session.read_stiffness()

    def set_stiffness(self, k: NDArray[np.float64]) -> None:
        self.session.set_stiffness(k)
