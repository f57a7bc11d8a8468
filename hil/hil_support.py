"""What the hardware-in-the-loop scenarios share: the rig under test and the paper's cases.

:class:`Hil` is the rig under test, whether emulated (MicroPython boards on pseudo-terminals,
started blank and deployed to) or real (a rig file's ports). Scenarios ask it for sessions and
for power cuts; they ask :func:`needs` whether the rig has the hardware a case needs, and skip
with the reason when it does not.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from host_sdk import protocol
from host_sdk.calibrate import CalibrationConfig, CalibrationReport, settle_counts
from host_sdk.coordinator import RigBackend, RigSession
from host_sdk.deploy import DeployResult
from host_sdk.emulator.rig import EmulatedRig
from host_sdk.errors import TransportError
from host_sdk.optim import OptimiserConfig
from host_sdk.physics import IOMap, forward_adjoint, paper_network
from host_sdk.rig import Rig

Cmd = protocol.Command
Array = NDArray[np.float64]

FIG1_FORCE = -0.098  # N: 10 g at paper node 13 (index 12)
FIG1_TARGET = -0.025  # m: loss (u_14y + 0.025)^2 at paper node 14 (index 13)
FIG1_LR = 2.5e7  # SGD step: about 2 N/m on the most sensitive bond
CALIBRATION = CalibrationConfig(readings=8, points=3)  # the suite's calibration: quick, still exact


@dataclass
class Hil:
    """The rig under test.

    Attributes:
        rig: the rig (ports resolved).
        ports: address -> port URL the host opens.
        emu: the emulated rig, or None for real hardware.
        before_deploy: address -> files in the board's flash before the suite deployed
            (emulated rigs only).
        deployed: what the suite's deploy did to each board.
        deploy_seconds: how long that deploy took.
        calibration: the suite's calibration of the rig, once one ran.
    """

    rig: Rig
    ports: dict[int, str]
    emu: EmulatedRig | None = None
    before_deploy: dict[int, list[str]] = field(default_factory=dict)
    deployed: list[DeployResult] = field(default_factory=list)
    deploy_seconds: float = 0.0
    calibration: CalibrationReport | None = None

    @property
    def emulated(self) -> bool:
        return self.emu is not None

    def session(self, **kwargs: Any) -> RigSession:
        """A new session on every board (close it: ports are opened exclusively)."""
        kwargs.setdefault("timeout", 1.0)
        return RigSession(self.rig, self.ports, **kwargs)

    def power_cycle(self, session: RigSession, address: int, between: Callable[[], None] | None = None) -> None:
        """Cut a board's power and bring it back: the emulator kills and restarts its process;
        on real hardware the board is sent REBOOT (a reset: its flash is read again the same
        way). ``between`` runs while the board is off. Returns once the board answers HELLO."""
        if self.emu is not None:
            self.emu.kill_board(address)
            if between is not None:
                between()
            self.emu.restart_board(address)
        else:
            session.request(address, Cmd.REBOOT)
            if between is not None:
                between()
        wait_hello(session, address)


def wait_hello(session: RigSession, address: int, timeout: float = 20.0) -> dict[str, Any]:
    """HELLO a board until it answers (it may be booting)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return session.hello(address)
        except TransportError:
            if time.monotonic() > deadline:
                raise


def is_paper(rig: Rig) -> bool:
    """Whether the rig's network is the paper's 14-node network."""
    net, paper = rig.network, paper_network().network
    return (net.positions.shape == paper.positions.shape and np.allclose(net.positions, paper.positions)
            and np.array_equal(net.bonds, paper.bonds) and np.array_equal(net.fixed, paper.fixed))


def needs(rig: Rig, io: IOMap, what: str) -> None:
    """Skip the calling test unless the rig is the paper network with boards able to serve ``io``."""
    if not is_paper(rig):
        pytest.skip(f"{what} needs the paper's network; rig {rig.name} has another")
    for node, _axis in io.inputs + io.outputs:
        board = rig.board_at(node)
        if board is None or not board.force:
            pytest.skip(f"{what} needs a force actuator at paper node {node + 1}; rig {rig.name} has none")
    for node, _axis in io.outputs:
        board = rig.board_at(node)
        assert board is not None
        if not board.disp:
            pytest.skip(f"{what} needs a displacement sensor at paper node {node + 1}; rig {rig.name} has none")


def fig1_io() -> IOMap:
    """The Fig. 1 case: 10 g down at paper node 13, output u_y of paper node 14."""
    return IOMap(inputs=((12, 1),), input_scale=(FIG1_FORCE,), outputs=((13, 1),))


def fig1_adjoint(y: Array, _idx: Any = None) -> Array:
    """Adjoint force of the loss (u_14y + 0.025)^2: -dL/du."""
    return -2.0 * (np.asarray(y, dtype=float) - FIG1_TARGET)


def twin_fig1(rig: Rig, k: Array) -> tuple[float, Array]:
    """The digital twin's output u_14y (m) and per-bond gradient at stiffness ``k``."""
    f = np.zeros((1, rig.network.n_nodes, 2))
    f[0, 12, 1] = FIG1_FORCE
    y, grad, _s = forward_adjoint(rig.network, k, f, [(13, 1)], fig1_adjoint)
    return float(y[0, 0]), grad


def fig1_backend(session: RigSession, lr: float = FIG1_LR) -> RigBackend:
    """A rig backend for the Fig. 1 case with plain SGD (boards clamp to their bounds)."""
    return RigBackend(session, fig1_io(), optimiser=OptimiserConfig("sgd", lr=lr))


def fig1_steps(backend: RigBackend, steps: Sequence[int]) -> None:
    """Run Fig. 1 training steps (one sample per batch) on the rig."""
    for step in steps:
        backend.train_batch(step, np.array([[FIG1_FORCE]]), fig1_adjoint)
        backend.update(step)


def sim_fig1(rig: Rig, k: Array, steps: int, lr: float = FIG1_LR) -> Array:
    """The same SGD steps in the digital twin, from stiffness ``k``."""
    kk = np.array(k, dtype=float)
    for _ in range(steps):
        _y, grad = twin_fig1(rig, kk)
        kk = np.clip(kk - lr * grad, rig.k_min, rig.k_max)
    return kk


def normalised_error(a: Array, b: Array) -> float:
    """||a - b|| / ||b||."""
    return float(np.linalg.norm(np.asarray(a) - np.asarray(b)) / np.linalg.norm(b))


def cosine(a: Array, b: Array) -> float:
    """Cosine similarity of two vectors."""
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def fresh_start(session: RigSession) -> Array:
    """Handshake, configure every board for the rig at ``k0`` (calibration kept), tare.

    Returns the stiffness the boards report.
    """
    session.handshake()
    session.configure()
    settle(session)
    session.tare()
    return session.read_stiffness()


def settle(session: RigSession) -> None:
    """Loads off, then one settle-checked measurement on every board, so nothing still moves."""
    for spec in session.rig.boards:
        if spec.force:
            session.request(spec.address, Cmd.SET_LOAD, {"fx": 0.0, "fy": 0.0})
    rig = session.rig
    tol = settle_counts(rig, CalibrationConfig()) if rig.strain_max is not None else 400.0
    session.broadcast(Cmd.READ_RAW, {"n": 4, "tol": tol, "timeout_ms": 2000})
    for spec in session.rig.boards:
        session.request(spec.address, Cmd.READ_RAW, {"n": 0})


class DroppingTransport:
    """A transport whose link can be cut (the cable pulled): every write and read then fails."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.url: str = inner.url
        self.cut_after: int | None = None  # writes still allowed before the link drops
        self.writes = 0

    @property
    def dropped(self) -> bool:
        return self.cut_after is not None and self.writes >= self.cut_after

    def write(self, data: bytes) -> None:
        if self.dropped:
            raise TransportError(f"{self.url}: the link dropped")
        self.writes += 1
        self.inner.write(data)

    def read(self, timeout: float) -> bytes:
        if self.dropped:
            raise TransportError(f"{self.url}: the link dropped")
        data: bytes = self.inner.read(timeout)
        return data

    def close(self) -> None:
        self.inner.close()


def board_steps(session: RigSession) -> dict[int, int]:
    """The last applied step of every board (HELLO)."""
    return {a: int(h["step"]) for a, h in session.handshake().items()}


__all__ = [
    "CALIBRATION", "Hil", "wait_hello", "is_paper", "needs", "fig1_io", "fig1_adjoint", "twin_fig1",
    "fig1_backend", "fig1_steps", "sim_fig1", "normalised_error", "cosine", "fresh_start", "settle",
    "DroppingTransport", "board_steps",
]
