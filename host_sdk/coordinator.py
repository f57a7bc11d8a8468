"""The in situ loop: the host side of a rig of node boards, and how it survives faults.

:class:`RigSession` opens one :class:`~host_sdk.link.Link` per port of a rig, says HELLO to every
board (refusing a protocol version or firmware hash it does not expect), configures the boards
from the rig file and notices reboots through the boards' boot counters.

:class:`RigBackend` is the trainer's :class:`~host_sdk.training.Backend` for a rig. Per sample it
sets the input loads, has every board measure the forward phase, reads the output
displacements, asks the trainer for the adjoint forces, applies them scaled by an adjoint gain on
top of the input loads and has every board measure the adjoint phase. The boards accumulate
``s_fwd * s_adj / gain`` per bond themselves. Per batch it sends ``UPDATE`` to every board. Host
traffic per sample involves only the input and output boards and one frame per port, never the
number of bonds.

Reliability (``docs/reliability.md``). Nothing is lost and nothing is applied twice:

* every addressed request is retried with the same sequence number (the board answers a
  repeat from its reply cache);
* a port with one board gets its ``SAMPLE`` frames addressed, so the reply confirms each
  measurement and the board's sample count; a port shared by several boards gets one broadcast;
* a board whose count falls behind (a lost frame, a reboot that cleared its accumulator) is
  brought up to date at once: the host clears its step and replays the batch's samples so far
  for that board alone, with the loads it recorded, in order, so the board's float32 sums come
  out exactly as they would have;
* before the commit the host reads every board's count and stiffness back (``READ_BONDS``);
  boards that are behind are replayed while no board has applied the step yet;
* the commit sends ``UPDATE`` to every board; one that answers ``applied: false`` with the
  step had applied it already (its reply was lost). One that lost its accumulator during the
  commit (a power cut in the commit window) cannot be replayed in a network whose other bonds
  have moved: the host moves them back (``CONFIGURE k``, which keeps their optimiser state),
  replays the lagging boards, commits them, and moves the others forward again;
* an optional journal records each commit before it starts, so a host that dies mid-commit is
  finished by the next one (:meth:`RigBackend.resume_step`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from . import protocol
from .errors import ConfigError, FloppyNetworkError, NodeError, SdkError, TransportError
from .fwinfo import firmware_hash
from .health import Exclusion, HealthMonitor, HealthReport, exclude_bond
from .link import Link, LinkStats
from .optim import OptimiserConfig
from .physics import DOF, IOMap
from .rig import BoardSpec, Rig
from .transport import EmuTransport, Transport, open_transport

__all__ = [
    "SamplingConfig",
    "RecoveryConfig",
    "RecoveryStats",
    "BoardState",
    "CommitLog",
    "RigSession",
    "RigBackend",
    "BatchRecord",
    "configure_args",
]

Command = protocol.Command
Array = NDArray[np.float64]
AdjointFn = Callable[[Array, NDArray[np.int64]], Array]


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
class RecoveryConfig:
    """How hard the host works to lose nothing.

    Attributes:
        readback: read every board's count and stiffness (``READ_BONDS``) before each commit.
            It costs one request per board and batch, and it is what makes a power cut in the
            commit window recoverable exactly (the host knows the stiffness to move back to).
            Without it such a board is replayed in the moved network (counted in
            ``inexact_replays``).
        max_replays: replays of one batch for one board before the host gives up.
        parallel: send the requests of one phase to different ports from parallel threads
            (``None``: when some port is not an in-process ``emu://`` endpoint).
    """

    readback: bool = True
    max_replays: int = 25
    parallel: bool | None = None


@dataclass
class RecoveryStats:
    """What the host had to do to lose nothing (see :meth:`RigBackend.report`).

    Attributes:
        reboots_seen: boot-counter changes noticed (each a board that lost power).
        resyncs: boards found blank after a reboot and configured again.
        lagging: boards found behind in a batch (missed frames, lost accumulators).
        replays: batch replays for one board.
        samples_replayed: samples measured again in replays.
        output_retries: forward phases repeated on an output board before reading it.
        readbacks: READ_BONDS requests before commits.
        late_confirms: UPDATEs found already applied (their first reply was lost).
        commit_refusals: UPDATEs refused because the board lost its accumulator.
        reverts: commits where boards were moved back to replay a lagging board exactly.
        inexact_replays: replays in a network whose other bonds had moved (no readback).
        resumed_steps: interrupted steps finished after a host restart.
    """

    reboots_seen: int = 0
    resyncs: int = 0
    lagging: int = 0
    replays: int = 0
    samples_replayed: int = 0
    output_retries: int = 0
    readbacks: int = 0
    late_confirms: int = 0
    commit_refusals: int = 0
    reverts: int = 0
    inexact_replays: int = 0
    resumed_steps: int = 0

    def as_dict(self) -> dict[str, int]:
        """Plain data for JSON summaries."""
        return asdict(self)


@dataclass
class BoardState:
    """What the host knows of one board from its HELLO replies."""

    address: int
    url: str
    hello: dict[str, Any] = field(default_factory=dict)
    boots: int = -1
    reboots_seen: int = 0


class CommitLog(Protocol):
    """Where :class:`RigBackend` records its commits (:class:`host_sdk.journal.Journal`)."""

    def begin_commit(self, record: dict[str, Any]) -> None:
        """A commit of ``record["board_step"]`` starts; ``record`` holds what a restarted host
        needs to finish it (see :meth:`BatchRecord.to_dict`). Must be durable on return."""
        ...

    def note_revert(self, board_step: int, k_new: dict[str, list[float]]) -> None:
        """Boards are about to be moved back; ``k_new`` is where they must return. Durable."""
        ...

    def end_commit(self, board_step: int) -> None:
        """Every board has applied ``board_step``."""
        ...


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
        transport_factory: ``(url, addresses) -> transport`` used to open each port (default:
            :func:`~host_sdk.transport.open_transport`); fault injection wraps ports here.
        parallel: talk to different ports from parallel threads in :meth:`request_many`
            (``None``: when some port is not an in-process ``emu://`` endpoint).
        first_seq: sequence number of the first frame on the first port (the next ports start
            2**20 further each); default random, so a restarted host never reuses a sequence
            number a board cached. Fixed values make a run byte-for-byte reproducible.
    """

    def __init__(
        self,
        rig: Rig,
        ports: Mapping[int, str] | None = None,
        *,
        timeout: float = 0.5,
        retries: int = 3,
        expected_hash: str | None = None,
        transport_factory: Callable[[str, Sequence[int]], Transport] | None = None,
        parallel: bool | None = None,
        first_seq: int | None = None,
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
        #: port URL -> addresses of the boards on it, in rig order
        self.ports: dict[str, list[int]] = {}
        for address, url in urls.items():
            self.ports.setdefault(url, []).append(address)
        self.links: dict[str, Link] = {}
        opener = transport_factory or (lambda url, _boards: open_transport(url))
        try:
            for index, (url, boards) in enumerate(self.ports.items()):
                transport = opener(url, boards)
                seq = None if first_seq is None else (first_seq + index * 2**20) % 2**32
                self.links[url] = Link(transport, timeout=timeout, retries=retries, name=url, first_seq=seq)
        except BaseException:
            self.close()
            raise
        self.boards: dict[int, BoardState] = {a: BoardState(address=a, url=u) for a, u in urls.items()}
        #: address -> the latest stiffness each board reported (READ_BONDS)
        self.known_k: dict[int, list[float]] = {}
        if parallel is None:
            parallel = any(not _in_process(link.transport) for link in self.links.values())
        self.parallel = bool(parallel) and len(self.links) > 1
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()

    # -- plumbing ---------------------------------------------------------------------------
    def close(self) -> None:
        """Close every link (idempotent)."""
        for link in self.links.values():
            link.close()
        self.links = {}
        if getattr(self, "_pool", None) is not None:
            assert self._pool is not None
            self._pool.shutdown(wait=True)
            self._pool = None

    def __enter__(self) -> RigSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def link_of(self, address: int) -> Link:
        """The link of the port board ``address`` is on."""
        return self.links[self.boards[address].url]

    def alone(self, address: int) -> bool:
        """Whether board ``address`` is the only board on its port."""
        return len(self.ports[self.boards[address].url]) == 1

    def request(self, address: int, command: Command, args: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Send one addressed request and return the board's result map."""
        return self.link_of(address).request(address, int(command), dict(args or {}))

    def request_many(
        self, requests: Sequence[tuple[int, Command, Mapping[str, Any]]]
    ) -> list[dict[str, Any] | SdkError]:
        """Send addressed requests; return each result or the :class:`SdkError` it raised.

        Requests to one port go in order; with :attr:`parallel`, different ports are served by
        parallel threads (boards measure at the same time, as on a real rig).
        """
        out: list[dict[str, Any] | SdkError] = [{} for _ in requests]
        by_port: dict[str, list[int]] = {}
        for i, (address, _command, _args) in enumerate(requests):
            by_port.setdefault(self.boards[address].url, []).append(i)

        def run(indices: list[int]) -> None:
            for i in indices:
                address, command, args = requests[i]
                try:
                    out[i] = self.request(address, command, args)
                except (NodeError, TransportError) as e:
                    out[i] = e

        groups = list(by_port.values())
        if self.parallel and len(groups) > 1:
            with self._pool_lock:
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(max_workers=min(32, len(self.links)))
            assert self._pool is not None
            for future in [self._pool.submit(run, g) for g in groups]:
                future.result()
        else:
            for g in groups:
                run(g)
        return out

    def broadcast(self, command: Command, args: Mapping[str, Any] | None = None,
                  *, urls: Sequence[str] | None = None) -> None:
        """Send one broadcast frame on every port (or on ``urls``): one frame per bus, one per
        USB board."""
        for url in self.links if urls is None else urls:
            self.links[url].broadcast(int(command), dict(args or {}))

    def sample(
        self, args: Mapping[str, Any], targets: Sequence[int] | None = None
    ) -> dict[int, dict[str, Any] | SdkError]:
        """Boards take one SAMPLE measurement; return once all of them have finished.

        The loads must not change while any board is still measuring, so this is a barrier.
        A board alone on its port gets an addressed SAMPLE, whose reply marks the end (and
        confirms the measurement); such ports are served in parallel when :attr:`parallel`. A
        port shared by several boards (a bus) gets one broadcast frame; a bus that is not an
        in-process endpoint then waits ``timeout_ms``, the longest any board may measure.

        Args:
            args: the SAMPLE arguments.
            targets: the boards that must measure (default: every board).

        Returns:
            address -> reply or error, for the boards addressed (not those on a bus).
        """
        boards = list(self.boards) if targets is None else list(targets)
        addressed = [a for a in boards if self.alone(a)]
        buses = list(dict.fromkeys(self.boards[a].url for a in boards if not self.alone(a)))
        wait = 0.0
        for url in buses:
            self.links[url].broadcast(int(Command.SAMPLE), dict(args))
            if not _in_process(self.links[url].transport):
                wait = max(wait, float(args.get("timeout_ms", 1000)) / 1000.0)
        results = self.request_many([(a, Command.SAMPLE, args) for a in addressed])
        if wait:
            time.sleep(wait)
        return dict(zip(addressed, results))

    def measure(self, args: Mapping[str, Any]) -> int:
        """Every board takes one SAMPLE measurement (see :meth:`sample`); return the number of
        boards that reported an unsettled one. An error reply raises."""
        unsettled = 0
        for reply in self.sample(args).values():
            if isinstance(reply, SdkError):
                raise reply
            unsettled += not reply.get("settled", True)
        return unsettled

    def wire_bytes(self) -> int:
        """Bytes sent and received on all links so far."""
        return sum(link.stats.bytes_sent + link.stats.bytes_received for link in self.links.values())

    def link_stats(self) -> LinkStats:
        """The traffic counters of all links, summed."""
        total = LinkStats()
        for link in self.links.values():
            total = total + link.stats
        return total

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

    def tare(self, readings: int = 16, addresses: Sequence[int] | None = None) -> None:
        """Zero the strain channels and displacement sensors (of every board, or of
        ``addresses``) with no load applied anywhere."""
        for spec in self.rig.boards:
            if spec.force:
                self.request(spec.address, Command.SET_LOAD, {"fx": 0.0, "fy": 0.0})
        for spec in self.rig.boards:
            if addresses is None or spec.address in addresses:
                self.request(spec.address, Command.TARE, {"n": readings})

    def read_bonds(self, addresses: Sequence[int] | None = None) -> dict[int, dict[str, Any]]:
        """``READ_BONDS`` of the boards that own bonds (or of ``addresses``)."""
        targets = [s.address for s in self.rig.boards if s.bonds] if addresses is None else list(addresses)
        results = self.request_many([(a, Command.READ_BONDS, {}) for a in targets])
        out: dict[int, dict[str, Any]] = {}
        for address, result in zip(targets, results):
            if isinstance(result, SdkError):
                raise result
            out[address] = result
            self.note_stiffness(address, result)
        return out

    def note_stiffness(self, address: int, bonds: Mapping[str, Any]) -> None:
        """Remember the stiffness a board reported (``READ_BONDS``), to configure it again
        should it come back blank."""
        if list(bonds.get("bonds", [])) == list(self.rig.board(address).bonds):
            self.known_k[address] = [float(x) for x in bonds.get("k", [])]

    def read_stiffness(self) -> NDArray[np.float64]:
        """Ask every board for its bonds' stiffness (diagnostics; traffic grows with bonds)."""
        k = np.full(self.rig.network.n_bonds, np.nan)
        for result in self.read_bonds().values():
            k[list(result["bonds"])] = result["k"]
        return k

    def read_gradients(self) -> NDArray[np.float64]:
        """Per-bond batch-mean gradient (accumulated products / gain / count) as each board holds it."""
        g = np.full(self.rig.network.n_bonds, np.nan)
        for result in self.read_bonds().values():
            g[list(result["bonds"])] = result["grad"]
        return g

    def set_stiffness(self, k: NDArray[np.float64]) -> None:
        """Load a design: every board drives its bonds to ``k`` and restarts its optimiser."""
        k = np.asarray(k, dtype=float)
        for spec in self.rig.boards:
            if spec.bonds:
                self.request(spec.address, Command.SET_STIFFNESS, {"k": [float(k[b]) for b in spec.bonds]})


def _in_process(transport: Transport) -> bool:
    """Whether a transport ends at an in-process endpoint (possibly behind wrappers)."""
    seen = 0
    while seen < 8:
        if isinstance(transport, EmuTransport):
            return True
        inner = getattr(transport, "inner", None)
        if inner is None:
            return False
        transport = inner
        seen += 1
    return False


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


@dataclass
class BatchRecord:
    """Everything the host applied in one batch, so any board can replay it exactly.

    Attributes:
        step: the trainer's step.
        board_step: the step id the boards use.
        forces: ``(B, n_in)`` input force values, N.
        adjoint: ``(B, n_out)`` adjoint forces before the gain, N.
        gains: ``(B,)`` adjoint gain of each sample.
        outputs: ``(B, n_out)`` outputs read in the forward phase, m.
    """

    step: int
    board_step: int
    forces: Array
    adjoint: Array
    gains: Array
    outputs: Array

    @property
    def count(self) -> int:
        """Samples in the batch."""
        return int(self.forces.shape[0])

    def to_dict(self) -> dict[str, Any]:
        """Plain data (floats as Python floats: JSON keeps them exactly)."""
        return {
            "step": self.step,
            "board_step": self.board_step,
            "forces": self.forces.tolist(),
            "adjoint": self.adjoint.tolist(),
            "gains": self.gains.tolist(),
            "outputs": self.outputs.tolist(),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> BatchRecord:
        """Inverse of :meth:`to_dict`.

        Raises:
            ConfigError: a field is missing or has the wrong shape.
        """
        try:
            rec = cls(
                step=int(d["step"]),
                board_step=int(d["board_step"]),
                forces=np.asarray(d["forces"], dtype=np.float64),
                adjoint=np.asarray(d["adjoint"], dtype=np.float64),
                gains=np.asarray(d["gains"], dtype=np.float64),
                outputs=np.asarray(d["outputs"], dtype=np.float64),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ConfigError(f"batch record: {e}") from e
        b = rec.forces.shape[0] if rec.forces.ndim == 2 else -1
        if b < 1 or rec.adjoint.shape[0] != b or rec.gains.shape != (b,) or rec.outputs.shape[0] != b:
            raise ConfigError("batch record: forces, adjoint, gains and outputs disagree in length")
        return rec


class RigBackend:
    """The trainer's backend for a rig of boards that compute their own gradients.

    Args:
        session: an open, handshaken and configured :class:`RigSession`.
        io: where the task's input forces go and which displacements are its outputs.
        optimiser: the per-bond optimiser the boards run (a clip variant: boards clamp to
            their bounds).
        sampling: how boards measure each phase.
        recovery: how hard the host works to lose nothing.
        journal: where commits are recorded (for a restarted host), or None.
        on_batch: called with the trainer's step as each batch starts (fault schedules,
            progress).
        health: a :class:`~host_sdk.health.HealthMonitor` that checks every batch's read-back
            against the digital twin (no extra traffic). A broken bond it names is taken out of
            training at once (:func:`~host_sdk.health.exclude_bond`); if the rest of the
            network is floppy the run stops with :class:`~host_sdk.errors.FloppyNetworkError`.
        step_base: board step id of the trainer's step 0 (default: one past the newest step
            any board has applied). A resumed run passes the value of the run it continues.
    """

    def __init__(
        self,
        session: RigSession,
        io: IOMap,
        *,
        optimiser: OptimiserConfig,
        sampling: SamplingConfig | None = None,
        recovery: RecoveryConfig | None = None,
        journal: CommitLog | None = None,
        on_batch: Callable[[int], None] | None = None,
        step_base: int | None = None,
        health: HealthMonitor | None = None,
    ) -> None:
        self.set_optimiser(optimiser)
        self.session = session
        self.rig = session.rig
        self.io = io
        self.sampling = sampling or SamplingConfig()
        self.recovery = recovery or RecoveryConfig()
        if self.recovery.parallel is not None:
            session.parallel = bool(self.recovery.parallel) and len(session.links) > 1
        self.journal = journal
        self.on_batch = on_batch
        self.health = health
        if health is not None and not self.recovery.readback:
            raise ConfigError("health checks use the read-back: keep RecoveryConfig(readback=True)")
        #: (trainer step, health report) of every checked batch
        self.health_log: list[tuple[int, HealthReport]] = []
        #: bonds taken out of training, in order
        self.exclusions: list[Exclusion] = []
        self.stats = RecoveryStats()
        self.n_bonds = self.rig.network.n_bonds
        self.samples_run = 0
        self.unsettled = 0
        self._input_nodes = self._boards_for(io.inputs, need="force", what="input")
        self._output_nodes = self._boards_for(io.outputs, need="disp", what="output")
        self._boards_for(io.outputs, need="force", what="output (adjoint load)")
        self._load_nodes = sorted({n for n, _ in io.inputs} | {n for n, _ in io.outputs})
        self._bonded = [s.address for s in self.rig.boards if s.bonds]
        outputs = set(self._output_nodes.values())
        # who measures a phase: every board with bonds, and the output boards
        self._samplers = [s.address for s in self.rig.boards if s.bonds or s.address in outputs]
        self._outputs = sorted(outputs)
        self._batch: BatchRecord | None = None
        #: READ_BONDS of every bonded board before the last commit (the last sample's
        #: elongations and the stiffness the batch was measured with), for health checks
        self.last_readback: dict[int, dict[str, Any]] = {}
        self._stage = "idle"
        # Boards refuse a step id they have already applied, and keep the last one across runs
        # and reboots: the trainer's steps 0, 1, ... map to board steps after the newest one.
        self.step_base = session.last_step() + 1 if step_base is None else int(step_base)

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

    @property
    def last_batch(self) -> BatchRecord | None:
        """The loads, adjoint forces, gains and outputs of the latest batch."""
        return self._batch

    # -- reporting --------------------------------------------------------------------------------
    def report(self) -> dict[str, Any]:
        """What happened on the wire and what recovery did: link counters (retries, timeouts,
        CRC errors, stale frames), reboots seen and :class:`RecoveryStats`."""
        return {"link": self.session.link_stats().as_dict(), "recovery": self.stats.as_dict()}

    def report_line(self) -> str:
        """One line for a final summary."""
        link = self.session.link_stats()
        s = self.stats
        return (
            f"recovered: {link.retries} retries ({link.timeouts} timeouts, {link.crc_errors} bad "
            f"frames, {link.stale} stale replies), {s.reboots_seen} reboots seen, {s.lagging} "
            f"boards behind ({s.samples_replayed} samples replayed), {s.late_confirms} late "
            f"confirmations, {s.reverts} reverts, {s.inexact_replays} inexact replays"
        )

    # -- loads and phases ----------------------------------------------------------------------
    def _node_loads(self, dofs: tuple[DOF, ...], values: NDArray[np.float64]) -> dict[int, list[float]]:
        loads = {n: [0.0, 0.0] for n in self._load_nodes}
        for (node, axis), value in zip(dofs, values):
            loads[node][axis] += float(value)
        return loads

    def _apply_loads(self, loads: Mapping[int, list[float]]) -> None:
        requests = []
        for node, (fx, fy) in loads.items():
            address = self.rig.board_at(node).address  # type: ignore[union-attr]
            requests.append((address, Command.SET_LOAD, {"fx": fx, "fy": fy}))
        for result in self.session.request_many(requests):
            if isinstance(result, SdkError):
                raise result

    def _fwd_loads(self, f: Array) -> dict[int, list[float]]:
        return self._node_loads(self.io.inputs, f)

    def _adj_loads(self, f: Array, adj: Array, gain: float) -> dict[int, list[float]]:
        if self.sampling.incremental:
            return self._node_loads(self.io.inputs + self.io.outputs, np.concatenate([f, gain * adj]))
        return self._node_loads(self.io.outputs, gain * adj)

    def _zero_loads(self) -> None:
        self._apply_loads({n: [0.0, 0.0] for n in self._load_nodes})

    def _sample_args(self, phase: protocol.Phase, board_step: int, sample: int, gain: float) -> dict[str, Any]:
        args: dict[str, Any] = {
            "phase": int(phase),
            "step": board_step,
            "sample": sample,
            "n": self.sampling.readings,
            "tol": self.sampling.tol,
            "timeout_ms": self.sampling.timeout_ms,
        }
        if phase == protocol.Phase.ADJ:
            args["gain"] = gain
            args["incremental"] = self.sampling.incremental
        return args

    def _phase(
        self, phase: protocol.Phase, board_step: int, sample: int, gain: float, targets: Sequence[int]
    ) -> dict[int, dict[str, Any] | SdkError]:
        """Have ``targets`` measure a phase. Boards alone on their port get addressed frames
        (their replies come back); ports shared by several boards get one broadcast, and no
        reply. Returns address -> reply or error for the addressed boards."""
        args = self._sample_args(phase, board_step, sample, gain)
        results = self.session.sample(args, targets)
        self.unsettled += sum(1 for r in results.values() if isinstance(r, dict) and not r.get("settled"))
        return results

    def _measure_outputs(self, board_step: int, sample: int, confirmed: set[int]) -> Array:
        """Output displacements of this sample's forward phase.

        An output board whose forward measurement is not confirmed by its own reply (a port
        shared with other boards, a lost frame) measures it again, addressed, before it is
        read (``READ_OUTPUT n = 0`` would otherwise return an older measurement); one that lost
        it since (a reboot) is measured again too.
        """
        y = np.empty(len(self.io.outputs))
        fwd = self._sample_args(protocol.Phase.FWD, board_step, sample, 1.0)
        unsure = [a for a in self._outputs if a not in confirmed]
        for attempt in range(self.recovery.max_replays):
            for address in unsure:
                if attempt or self.session.alone(address):
                    # not a shared port's normal confirmation: something went wrong
                    self.stats.output_retries += 1
                    self._note_trouble(address)
                try:
                    reply = self.session.request(address, Command.SAMPLE, fwd)
                except (NodeError, TransportError):
                    continue
                if reply.get("settled"):
                    confirmed.add(address)
            unsure = [a for a in self._outputs if a not in confirmed]
            if unsure:
                continue
            results = self.session.request_many(
                [(a, Command.READ_OUTPUT, {"n": 0}) for a in self._outputs]
            )
            unsure = [a for a, r in zip(self._outputs, results) if isinstance(r, SdkError)]
            if not unsure:
                by_address = dict(zip(self._outputs, results))
                for i, (node, axis) in enumerate(self.io.outputs):
                    read = by_address[self._output_nodes[node]]
                    assert isinstance(read, dict)
                    y[i] = read["ux" if axis == 0 else "uy"]
                return y
            for address in unsure:
                confirmed.discard(address)
        raise TransportError(
            f"output boards {sorted(unsure)} kept losing the forward phase of sample {sample}"
        )

    def _input_forces(self, inputs: NDArray[np.float64]) -> NDArray[np.float64]:
        return np.asarray(inputs, dtype=float).reshape(len(inputs), -1)

    # -- reboots --------------------------------------------------------------------------------
    def _note_trouble(self, address: int) -> None:
        """A board misbehaved: HELLO it, notice a reboot, and configure it again if it came
        back blank (its flash lost)."""
        state = self.session.boards[address]
        before = state.reboots_seen
        try:
            hello = self.session.hello(address)
        except NodeError:
            raise
        except TransportError:
            return
        blank = not hello.get("configured", False)
        if state.reboots_seen != before or blank:
            # a board whose flash was lost starts its boot counter again: blank says it all
            self.stats.reboots_seen += 1
        if blank:
            self._resync(address)

    def _resync(self, address: int) -> None:
        """Configure a board that came back blank: its bonds at the last stiffness the host
        read (after the last commit if the host read it since, else before it), and a new tare
        (every load off). Its optimiser state is lost with its flash: it starts afresh."""
        spec = self.rig.board(address)
        k = np.full(self.n_bonds, self.rig.k0)
        for b, value in zip(spec.bonds, self.session.known_k.get(address, [])):
            k[b] = value
        self.session.request(address, Command.CONFIGURE, configure_args(self.rig, spec, k))
        self._zero_loads()
        self.session.request(address, Command.TARE, {"n": 16})
        self.session.hello(address)
        self.stats.resyncs += 1

    # -- the batch -------------------------------------------------------------------------------
    def train_batch(
        self,
        step: int,
        inputs: NDArray[np.float64],
        adjoint: AdjointFn,
    ) -> NDArray[np.float64]:
        """Run forward and adjoint phases for every sample of a batch; boards accumulate.

        Boards that fall behind (lost frames, reboots) are replayed as soon as the host sees it.
        """
        if self.on_batch is not None:
            self.on_batch(step)
        forces = self._input_forces(inputs)
        board_step = self.step_base + step
        b = len(forces)
        record = BatchRecord(
            step=step,
            board_step=board_step,
            forces=forces.copy(),
            adjoint=np.zeros((b, len(self.io.outputs))),
            gains=np.ones(b),
            outputs=np.zeros((b, len(self.io.outputs))),
        )
        self._batch = record
        self._stage = "sampling"
        force_max = float(self.rig.force_max)
        for i, f in enumerate(forces):
            self._apply_loads(self._fwd_loads(f))
            fwd = self._phase(protocol.Phase.FWD, board_step, i, 1.0, self._samplers)
            behind = {a for a, r in fwd.items() if isinstance(r, SdkError) or not r.get("settled", False)}
            confirmed = {a for a, r in fwd.items() if a not in behind}
            y = self._measure_outputs(board_step, i, confirmed)
            adj = np.asarray(adjoint(y[None, :], np.array([i])), dtype=float).reshape(-1)
            peak = float(np.max(np.abs(adj))) if adj.size else 0.0
            gain = self.sampling.adjoint_fraction * force_max / peak if peak > 0 else 1.0
            record.outputs[i] = y
            record.adjoint[i] = adj
            record.gains[i] = gain
            self._apply_loads(self._adj_loads(f, adj, gain))
            res = self._phase(protocol.Phase.ADJ, board_step, i, gain, self._samplers)
            for address, r in res.items():
                if isinstance(r, SdkError) or r.get("count") != i + 1:
                    behind.add(address)
            self.samples_run += 1
            if behind:
                self._replay(sorted(behind), upto=i)
        self._zero_loads()
        self._stage = "sampled"
        return record.outputs.copy()

    def _replay(self, boards: Sequence[int], *, upto: int, record: BatchRecord | None = None) -> None:
        """Bring ``boards`` to samples ``0 .. upto`` of the batch: clear their step and measure
        those samples again, in order, with the recorded loads. Nothing else changes in the
        network meanwhile, so each board's products come out as they did the first time."""
        rec = record if record is not None else self._batch
        assert rec is not None
        pending = list(boards)
        self.stats.lagging += len(pending)
        unsettled = 0
        for _attempt in range(self.recovery.max_replays):
            for address in pending:
                self._note_trouble(address)
            discard = self.session.request_many(
                [(a, Command.DISCARD, {"step": rec.board_step}) for a in pending]
            )
            for r in discard:
                if isinstance(r, NodeError):
                    raise r
            active = [a for a, r in zip(pending, discard) if not isinstance(r, SdkError)]
            failed = [a for a, r in zip(pending, discard) if isinstance(r, SdkError)]
            self.stats.replays += len(active)
            for j in range(upto + 1):
                if not active:
                    break
                f = rec.forces[j]
                self._apply_loads(self._fwd_loads(f))
                fwd = self.session.request_many([
                    (a, Command.SAMPLE, self._sample_args(protocol.Phase.FWD, rec.board_step, j, 1.0))
                    for a in active
                ])
                ok = [a for a, r in zip(active, fwd) if isinstance(r, dict) and r.get("settled")]
                unsettled += sum(1 for r in fwd if isinstance(r, dict) and not r.get("settled"))
                failed += [a for a in active if a not in ok]
                active = ok
                if not active:
                    break
                gain = float(rec.gains[j])
                self._apply_loads(self._adj_loads(f, rec.adjoint[j], gain))
                adj = self.session.request_many([
                    (a, Command.SAMPLE, self._sample_args(protocol.Phase.ADJ, rec.board_step, j, gain))
                    for a in active
                ])
                ok = [a for a, r in zip(active, adj) if isinstance(r, dict) and r.get("count") == j + 1]
                unsettled += sum(1 for r in adj if isinstance(r, dict) and not r.get("settled"))
                failed += [a for a in active if a not in ok]
                active = ok
                self.stats.samples_replayed += len(active)
            if not failed:
                return
            pending = sorted(set(failed))
        why = ""
        if unsettled:
            why = f": their measurements do not settle ({unsettled} unsettled; a noisy sensor?)"
        raise TransportError(
            f"boards {pending} kept falling behind in step {rec.board_step} "
            f"after {self.recovery.max_replays} replays{why}"
        )

    def _readback(self, rec: BatchRecord) -> dict[int, list[float]]:
        """Every bonded board's count must be the batch size: replay those that are behind
        (no board has applied the step yet). Returns address -> stiffness before the commit."""
        targets = list(self._bonded)
        k_old: dict[int, list[float]] = {}
        self.last_readback = {}
        for _attempt in range(self.recovery.max_replays):
            results = self.session.request_many([(a, Command.READ_BONDS, {}) for a in targets])
            self.stats.readbacks += len(targets)
            behind = []
            for address, r in zip(targets, results):
                if isinstance(r, NodeError):
                    raise r
                if isinstance(r, dict) and list(r.get("bonds", [])) != list(self.rig.board(address).bonds):
                    # the board lost its configuration (flash gone): configure it again first
                    self._note_trouble(address)
                    behind.append(address)
                elif isinstance(r, SdkError) or r.get("step") != rec.board_step or r.get("count") != rec.count:
                    behind.append(address)
                else:
                    k_old[address] = [float(x) for x in r["k"]]
                    self.last_readback[address] = r
                    self.session.note_stiffness(address, r)
            if not behind:
                return k_old
            self._replay(behind, upto=rec.count - 1, record=rec)
            self._zero_loads()
            targets = behind
        raise TransportError(f"boards {targets} could not be brought up to step {rec.board_step}")

    def _update_args(self, rec: BatchRecord) -> dict[str, Any]:
        opt = self.optimiser
        return {
            "step": rec.board_step,
            "count": rec.count,
            "lr": float(opt.lr),
            "opt": opt.opt_code,
            "b1": float(opt.b1),
            "b2": float(opt.b2),
            "eps": float(opt.eps),
        }

    def _commit(self, rec: BatchRecord, targets: Sequence[int]) -> tuple[list[int], list[int]]:
        """UPDATE ``targets``; return (applied, lost): lost boards no longer hold the batch."""
        args = self._update_args(rec)
        results = self.session.request_many([(a, Command.UPDATE, args) for a in targets])
        applied, lost = [], []
        for address, r in zip(targets, results):
            if isinstance(r, NodeError):
                if r.status != protocol.Status.BAD_STATE:
                    raise r
                self.stats.commit_refusals += 1
                lost.append(address)
            elif isinstance(r, SdkError):
                raise r
            elif r.get("applied"):
                applied.append(address)
            elif int(r.get("step", -1)) == rec.board_step:
                self.stats.late_confirms += 1
                applied.append(address)
            else:
                raise SdkError(
                    f"board {address} reports step {r.get('step')} after UPDATE of step "
                    f"{rec.board_step}: it is ahead of this host (another host trained it?)"
                )
        return applied, lost

    def _set_k(self, ks: Mapping[int, Sequence[float]]) -> None:
        """Move boards' bonds to ``ks`` without touching their optimiser state (CONFIGURE k)."""
        results = self.session.request_many(
            [(a, Command.CONFIGURE, {"k": [float(x) for x in k]}) for a, k in ks.items()]
        )
        for r in results:
            if isinstance(r, SdkError):
                raise r

    def _finish(
        self,
        rec: BatchRecord,
        applied: list[int],
        lost: list[int],
        k_old: Mapping[int, Sequence[float]],
        moved: dict[int, list[float]] | None = None,
    ) -> None:
        """Commit the boards that lost the batch during the commit, exactly if possible.

        ``moved``: boards already moved back to ``k_old`` and where they must return.
        """
        moved = dict(moved or {})
        done = [a for a in applied if a not in moved]
        for _attempt in range(self.recovery.max_replays):
            if not lost:
                break
            if done:
                # boards that applied the step moved their bonds: move them back, so the
                # lagging boards measure the network the batch was measured in
                if all(a in k_old for a in done):
                    current = self.session.read_bonds(done)
                    back = {a: [float(x) for x in current[a]["k"]] for a in done}
                    moved.update(back)
                    if self.journal is not None:
                        self.journal.note_revert(rec.board_step, {str(a): k for a, k in moved.items()})
                    self._set_k({a: k_old[a] for a in back})
                    self.stats.reverts += 1
                else:
                    self.stats.inexact_replays += len(lost)
            self._replay(lost, upto=rec.count - 1, record=rec)
            self._zero_loads()
            done, lost = self._commit(rec, lost)
        if lost:
            raise TransportError(f"boards {lost} could not apply step {rec.board_step}")
        if moved:
            self._set_k(moved)

    def update(self, step: int) -> None:
        """Every board applies its batch-mean gradient once (idempotent by step id).

        Boards behind in the batch are replayed before any board applies it; a board that
        loses the batch during the commit is replayed in the unchanged network (the others
        are moved back meanwhile), so no update is lost, applied twice, or computed from a
        different network.
        """
        rec = self._batch
        if rec is None or rec.step != step or self._stage != "sampled":
            raise SdkError(f"update({step}) without a matching train_batch")
        k_old = self._readback(rec) if self.recovery.readback else {}
        if self.journal is not None:
            record = rec.to_dict()
            record["k_old"] = {str(a): k for a, k in k_old.items()}
            record["count"] = rec.count
            record["update"] = self._update_args(rec)
            self.journal.begin_commit(record)
        self._stage = "commit"
        applied, lost = self._commit(rec, self._bonded)
        self._finish(rec, applied, lost, k_old)
        if self.journal is not None:
            self.journal.end_commit(rec.board_step)
        self._stage = "idle"
        if self.health is not None:
            self._check_health(step)

    def _check_health(self, step: int) -> None:
        """Check the batch against the twin; take a broken bond out of training."""
        assert self.health is not None
        report = self.health.check_backend(self)
        self.health_log.append((step, report))
        for finding in report.findings:
            if finding.kind == "broken_bond" and finding.bond not in self.health.excluded:
                exclusion = exclude_bond(self, finding.bond, self.health)
                self.exclusions.append(exclusion)
                if not exclusion.rigid:
                    raise FloppyNetworkError(
                        f"step {step}: {finding}; {exclusion.message}", exclusion_nodes(exclusion)
                    )

    def resume_step(self, step: int, pending: Mapping[str, Any] | None,
                    reverted: Mapping[str, Sequence[float]] | None = None) -> bool:
        """Finish trainer step ``step`` that a previous host left unfinished.

        Args:
            step: the trainer step that was in progress.
            pending: the commit record of that step from the journal (``begin_commit``), or
                ``None`` if its commit never started.
            reverted: ``note_revert``'s map if the previous host was moving boards back.

        Returns:
            ``True`` if every board has now applied the step (the trainer goes on with the
            next one), ``False`` if no board had applied it: its accumulations were cleared
            and the trainer runs the batch again.
        """
        board_step = self.step_base + step
        hellos = self.session.handshake()
        self.stats.resumed_steps += 1
        if pending is None or int(pending.get("board_step", -1)) != board_step:
            ahead = [a for a in self._bonded if int(hellos[a].get("step", -1)) >= board_step]
            if ahead:
                raise SdkError(
                    f"boards {ahead} applied step {board_step} but the journal has no commit for "
                    "it: the journal does not belong to these boards"
                )
            self._discard(board_step)
            return False
        rec = BatchRecord.from_dict(pending)
        self._batch = rec
        k_old = {int(a): [float(x) for x in k] for a, k in dict(pending.get("k_old", {})).items()}
        moved: dict[int, list[float]] | None = None
        if reverted:
            # the previous host died while boards were moved back: make sure they are, finish
            # the others in that network, then move everyone forward
            moved = {int(a): [float(x) for x in k] for a, k in reverted.items()}
            self._set_k({a: k_old[a] for a in moved})
        done = [a for a in self._bonded if int(hellos[a].get("step", -1)) >= board_step]
        todo = [a for a in self._bonded if a not in done]
        applied, lost = self._commit(rec, todo) if todo else ([], [])
        self._finish(rec, done + applied, lost, k_old, moved)
        if self.journal is not None:
            self.journal.end_commit(board_step)
        self._stage = "idle"
        return True

    def _discard(self, board_step: int) -> None:
        """Clear every board's accumulation of ``board_step``."""
        results = self.session.request_many(
            [(a, Command.DISCARD, {"step": board_step}) for a in self._samplers]
        )
        for r in results:
            if isinstance(r, SdkError):
                raise r

    def evaluate(self, inputs: NDArray[np.float64]) -> NDArray[np.float64]:
        """Forward only: apply each sample's loads and read the output displacements."""
        forces = self._input_forces(inputs)
        outputs = np.empty((len(forces), len(self.io.outputs)))
        args = {"n": self.sampling.readings, "tol": self.sampling.tol, "timeout_ms": self.sampling.timeout_ms}
        for i, f in enumerate(forces):
            self._apply_loads(self._fwd_loads(f))
            results = self.session.request_many([(a, Command.READ_OUTPUT, args) for a in self._outputs])
            by_address: dict[int, dict[str, Any]] = {}
            for address, r in zip(self._outputs, results):
                if isinstance(r, SdkError):
                    raise r
                by_address[address] = r
            for j, (node, axis) in enumerate(self.io.outputs):
                outputs[i, j] = by_address[self._output_nodes[node]]["ux" if axis == 0 else "uy"]
        self._zero_loads()
        return outputs

    def stiffness(self) -> NDArray[np.float64]:
        """Every bond's stiffness as the boards hold it, N/m."""
        return self.session.read_stiffness()

    def set_stiffness(self, k: NDArray[np.float64]) -> None:
        """Load a design: boards drive their bonds to ``k`` and restart their optimisers."""
        self.session.set_stiffness(k)


def exclusion_nodes(exclusion: Exclusion) -> tuple[int, ...]:
    """Nodes of the floppy modes left by an exclusion (empty if the network is rigid)."""
    try:
        exclusion.network.check_rigid()
    except FloppyNetworkError as e:
        return e.nodes
    return ()
