"""The physical world of an emulated rig: the network, its actuators and its sensors.

:class:`World` holds the state a real rig would have: the stiffness each bond actually has
(what its actuator reached), the load on each node (what its force actuator applies), and the
static equilibrium under them, computed by :mod:`host_sdk.physics`. The equilibrium is cached
and recomputed lazily: one factorisation per stiffness state, one back-substitution per load
state, so a training batch (stiffness fixed, loads changing twice per sample) costs one
factorisation and two cheap solves per sample.

Boards see the world through a :class:`Probe` (one per board): it maps the board's sensor reads
to the world's sensor models and adds the approach to equilibrium in the board's own virtual
time. After any change of the world (a load or a stiffness), the probe's quantities relax from
where they were to the new equilibrium as ``exp(-t / tau)``, with ``t`` counted on the board's
clock from the board's first reading after the change. Counting from the board's own first
look keeps every board deterministic whatever order boards run in (MicroPython boards run in
parallel processes), while still making a board that reads too early see a moving value.

Fault hooks (issue 6): :meth:`World.break_bond`, :meth:`World.stall_actuator`,
:meth:`World.limit_actuator`, :meth:`World.stick_sensor`, and the channel objects returned by
:meth:`World.strain_channel` / :meth:`World.disp_channels` (stick, saturate, noise).

Thread safety: every public method takes the world's lock; a world may serve in-process boards
and the MicroPython world server at the same time.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike, NDArray

from ..errors import ConfigError, PhysicsError
from ..physics import Factor, Network
from .models import (
    ActuatorSpec,
    AdcChannel,
    DynamicsSpec,
    ForceActuator,
    SensorSpec,
    StiffnessActuator,
)

__all__ = ["World", "Probe", "BROKEN_FRACTION"]

FloatArray = NDArray[np.float64]

BROKEN_FRACTION = 1e-3
"""Default fraction of its stiffness a broken bond keeps (near zero, yet K stays invertible)."""

# Kinds of random streams, so channels of different kinds never share one.
_STREAM_STRAIN = 1
_STREAM_DISP = 2


class World:
    """A spring network with actuators and sensors, at static equilibrium (lazily solved).

    Args:
        network: the physical network (:class:`host_sdk.physics.Network`).
        k_init: stiffness of every bond before any command, N/m: a scalar or shape ``(m,)``.
        sensors: sensor models (default: :class:`SensorSpec` defaults, see docs/emulator.md).
        actuators: actuator models and ranges (default: the paper's bounds).
        dynamics: settling in virtual time (default: :class:`DynamicsSpec` defaults).
        seed: seeds every channel's own random stream (gain and offset draws, noise).
        solver: factorisation backend passed to :meth:`Network.factorize`.

    Raises:
        ConfigError: bad stiffness vector or seed.

    Attributes:
        factorizations: number of stiffness factorisations so far.
        solves: number of equilibrium solves so far.
        version: increases at every change of loads or actual stiffness.
    """

    def __init__(
        self,
        network: Network,
        k_init: ArrayLike,
        *,
        sensors: SensorSpec | None = None,
        actuators: ActuatorSpec | None = None,
        dynamics: DynamicsSpec | None = None,
        seed: int = 0,
        solver: str = "splu",
    ) -> None:
        if not isinstance(network, Network):
            raise ConfigError(f"network must be a physics.Network, got {type(network).__name__}")
        if not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
        m = network.n_bonds
        try:
            k = np.broadcast_to(np.asarray(k_init, dtype=np.float64), (m,)).copy()
        except ValueError as e:
            raise ConfigError(
                f"k_init has shape {np.shape(k_init)}, expected a scalar or ({m},)"
            ) from e
        if not np.all(np.isfinite(k)) or np.any(k <= 0):
            raise ConfigError("k_init must be finite and > 0 for every bond")
        self.network = network
        self.sensors = sensors if sensors is not None else SensorSpec()
        self.actuators = actuators if actuators is not None else ActuatorSpec()
        self.dynamics = dynamics if dynamics is not None else DynamicsSpec()
        self.seed = int(seed)
        self.solver = solver
        self._lock = threading.RLock()
        self._actuators = [StiffnessActuator(self.actuators, float(v)) for v in k]
        self._broken = np.ones(m)
        self._k = k
        self._loads = np.zeros((network.n_nodes, 2))
        self._force: dict[int, ForceActuator] = {}
        self._strain: list[AdcChannel | None] = [None] * m
        self._disp: dict[int, tuple[AdcChannel, AdcChannel]] = {}
        self._k_version = 0
        self._load_version = 0
        self.version = 0
        self._factor: Factor | None = None
        self._factor_version = -1
        self._u = np.zeros((network.n_nodes, 2))
        self._s = np.zeros(m)
        self._eq_key = (0, 0)
        self.factorizations = 0
        self.solves = 0

    # ---- checks ---------------------------------------------------------------------------

    def _bond(self, bond: int) -> int:
        if not isinstance(bond, (int, np.integer)) or not 0 <= bond < self.network.n_bonds:
            raise ConfigError(f"bond index {bond!r} is outside 0..{self.network.n_bonds - 1}")
        return int(bond)

    def _node(self, node: int) -> int:
        if not isinstance(node, (int, np.integer)) or not 0 <= node < self.network.n_nodes:
            raise ConfigError(f"node index {node!r} is outside 0..{self.network.n_nodes - 1}")
        return int(node)

    # ---- state ----------------------------------------------------------------------------

    def _touch_k(self) -> None:
        self._k_version += 1
        self.version += 1

    def _touch_loads(self) -> None:
        self._load_version += 1
        self.version += 1

    def stiffness(self) -> FloatArray:
        """The stiffness every bond actually has now, ``(m,)`` N/m (a copy)."""
        with self._lock:
            return self._k.copy()

    def loads(self) -> FloatArray:
        """The load on every node now, ``(n, 2)`` N (a copy; loads on pinned nodes do nothing)."""
        with self._lock:
            return self._loads.copy()

    def set_stiffness_cmd(self, bond: int, cmd: float) -> float:
        """Drive bond ``bond``'s actuator to ``cmd`` µs; return the stiffness it has now (N/m)."""
        with self._lock:
            b = self._bond(bond)
            k = self._actuators[b].command(cmd) * self._broken[b]
            if k != self._k[b]:
                self._k[b] = k
                self._touch_k()
            return float(k)

    def set_force(self, node: int, fx: float, fy: float) -> tuple[float, float]:
        """Set the force actuator at ``node`` to ``(fx, fy)`` N; return the force applied."""
        with self._lock:
            n = self._node(node)
            act = self._force.get(n)
            if act is None:
                act = self._force[n] = ForceActuator(self.actuators)
            applied = act.command(fx, fy)
            if applied[0] != self._loads[n, 0] or applied[1] != self._loads[n, 1]:
                self._loads[n] = applied
                self._touch_loads()
            return applied

    def set_stiffness(self, k: ArrayLike) -> None:
        """Place every bond at stiffness ``k`` directly (no actuator involved), ``(m,)`` N/m.

        For tests and for faults; boards move bonds with :meth:`set_stiffness_cmd`.
        """
        with self._lock:
            m = self.network.n_bonds
            kk = np.broadcast_to(np.asarray(k, dtype=np.float64), (m,))
            if not np.all(np.isfinite(kk)) or np.any(kk <= 0):
                raise ConfigError("stiffness must be finite and > 0 for every bond")
            for b in range(m):
                self._actuators[b].k = float(kk[b])
            new = kk * self._broken
            if not np.array_equal(new, self._k):
                self._k = new.copy()
                self._touch_k()

    def _equilibrium(self) -> None:
        key = (self._k_version, self._load_version)
        if key == self._eq_key:
            return
        if not np.any(self._loads):
            self._u = np.zeros((self.network.n_nodes, 2))
            self._s = np.zeros(self.network.n_bonds)
        else:
            if self._factor_version != self._k_version:
                try:
                    self._factor = self.network.factorize(self._k, solver=self.solver)
                except PhysicsError:
                    self._factor = None
                    raise
                self._factor_version = self._k_version
                self.factorizations += 1
            # straight to the factor: the world's own arrays need no validation per solve
            net = self.network
            assert self._factor is not None
            x = self._factor.solve_free(self._loads.reshape(-1)[net.free_dofs])
            u = np.zeros(2 * net.n_nodes)
            u[net.free_dofs] = x
            self._u = u.reshape(net.n_nodes, 2)
            self._s = net.elongations_free(x)
            self.solves += 1
        self._eq_key = key

    def displacements(self) -> FloatArray:
        """Equilibrium displacement of every node, ``(n, 2)`` m (a copy)."""
        with self._lock:
            self._equilibrium()
            return self._u.copy()

    def elongations(self) -> FloatArray:
        """Equilibrium elongation of every bond, ``(m,)`` m (a copy)."""
        with self._lock:
            self._equilibrium()
            return self._s.copy()

    # ---- sensors --------------------------------------------------------------------------

    def strain_channel(self, bond: int) -> AdcChannel:
        """The sensor model of bond ``bond``'s strain channel (created on first use)."""
        with self._lock:
            b = self._bond(bond)
            ch = self._strain[b]
            if ch is None:
                rng = np.random.default_rng([self.seed, _STREAM_STRAIN, b])
                ch = self._strain[b] = AdcChannel(self.sensors.strain, rng)
            return ch

    def disp_channels(self, node: int) -> tuple[AdcChannel, AdcChannel]:
        """The sensor models of the x and y axes of the displacement sensor at ``node``."""
        with self._lock:
            n = self._node(node)
            pair = self._disp.get(n)
            if pair is None:
                pair = (
                    AdcChannel(self.sensors.disp, np.random.default_rng([self.seed, _STREAM_DISP, n, 0])),
                    AdcChannel(self.sensors.disp, np.random.default_rng([self.seed, _STREAM_DISP, n, 1])),
                )
                self._disp[n] = pair
            return pair

    def strain_counts(self, bond: int, elongation: float) -> int:
        """What bond ``bond``'s strain channel reports for ``elongation`` m (one reading)."""
        return self.strain_channel(bond).counts(float(elongation))

    def disp_counts(self, node: int, ux: float, uy: float) -> tuple[int, int]:
        """What the displacement sensor at ``node`` reports for ``(ux, uy)`` m (one reading)."""
        cx, cy = self.disp_channels(node)
        return cx.counts(float(ux)), cy.counts(float(uy))

    def probe(self, bonds: Sequence[int], node: int | None = None) -> Probe:
        """A board's view: strain channels on ``bonds``, displacement sensor at ``node``."""
        return Probe(self, bonds, node)

    # ---- faults ---------------------------------------------------------------------------

    def break_bond(self, bond: int, fraction: float = BROKEN_FRACTION) -> None:
        """Fault: bond ``bond`` breaks and keeps only ``fraction`` of its stiffness."""
        with self._lock:
            b = self._bond(bond)
            if not 0.0 < fraction < 1.0:
                raise ConfigError(f"broken-bond fraction must be in (0, 1), got {fraction!r}")
            self._broken[b] = fraction
            self._k[b] = self._actuators[b].k * fraction
            self._touch_k()

    def repair_bond(self, bond: int) -> None:
        """Undo :meth:`break_bond`: the bond has its actuator's stiffness again."""
        with self._lock:
            b = self._bond(bond)
            self._broken[b] = 1.0
            self._k[b] = self._actuators[b].k
            self._touch_k()

    def broken_bonds(self) -> list[int]:
        """Indices of the bonds broken now."""
        with self._lock:
            return [int(b) for b in np.flatnonzero(self._broken < 1.0)]

    def actuator(self, bond: int) -> StiffnessActuator:
        """The actuator model of bond ``bond`` (for faults: stall, limit)."""
        with self._lock:
            return self._actuators[self._bond(bond)]

    def stall_actuator(self, bond: int) -> None:
        """Fault: bond ``bond``'s actuator stops moving (commands are ignored)."""
        self.actuator(bond).stall()

    def limit_actuator(self, bond: int, lo: float, hi: float) -> None:
        """Fault: bond ``bond``'s actuator reaches only the fraction ``[lo, hi]`` of its range."""
        self.actuator(bond).limit(lo, hi)

    def stick_sensor(self, bond: int, counts: int | None = None) -> None:
        """Fault: bond ``bond``'s strain channel reports ``counts`` (None: its next reading)
        forever."""
        self.strain_channel(bond).stick(counts)

    def clear_faults(self) -> None:
        """Repair every bond, actuator and sensor channel."""
        with self._lock:
            for b in self.broken_bonds():
                self.repair_bond(b)
            for act in self._actuators:
                act.clear_faults()
            for ch in self._strain:
                if ch is not None:
                    ch.clear_faults()
            for pair in self._disp.values():
                for ch in pair:
                    ch.clear_faults()


class Probe:
    """One board's sensors in the world, with settling in the board's virtual time.

    Args:
        world: the world.
        bonds: the bonds whose strain channels the board reads, in channel order.
        node: the node of the board's displacement sensor, or ``None``.

    Times are the board's clock in integer ms. :attr:`t_ms` remembers the latest time seen,
    so a board that restarts can carry on from it.
    """

    def __init__(self, world: World, bonds: Sequence[int], node: int | None = None) -> None:
        self.world = world
        self.bonds = tuple(world._bond(b) for b in bonds)
        self.node = None if node is None else world._node(node)
        self.t_ms = 0
        # Settling state: the world version followed, the board time of the first look after
        # it changed, and per quantity (strains of the bonds, then ux, uy of the node) where
        # it started from and where it is going. Plain floats: boards read one at a time.
        n = len(self.bonds) + (2 if self.node is not None else 0)
        self._version = 0
        self._t0 = 0
        self._start = [0.0] * n
        self._target = [0.0] * n
        self._tau = float(world.dynamics.tau_ms)
        self._wt = -1  # board time of the latest look, and the settling weight then
        self._w = 0.0
        self._strain = [world.strain_channel(b) for b in self.bonds]
        self._disp = world.disp_channels(self.node) if self.node is not None else None

    def _follow(self, t: int) -> float:
        """Catch up with the world at board time ``t``; return the settling weight.

        The caller holds the world's lock.
        """
        if t > self.t_ms:
            self.t_ms = t
        world = self.world
        if self._version != world.version:
            w = self._w if t == self._wt else self._weight(t)
            start = [g + (s - g) * w for s, g in zip(self._start, self._target)]
            world._equilibrium()
            target = [float(world._s[b]) for b in self.bonds]
            if self.node is not None:
                target += [float(world._u[self.node, 0]), float(world._u[self.node, 1])]
            self._start, self._target = start, target
            self._t0 = t
            self._wt = -1
            self._version = world.version
        if t != self._wt:
            self._w = self._weight(t)
            self._wt = t
        return self._w

    def _weight(self, t: int) -> float:
        if self._tau <= 0.0:
            return 0.0
        return math.exp(-max(0, t - self._t0) / self._tau)

    def _value(self, i: int, w: float) -> float:
        g = self._target[i]
        return g if w == 0.0 else g + (self._start[i] - g) * w

    def values(self, t_ms: int) -> FloatArray:
        """The true quantities at board time ``t_ms``: strains of :attr:`bonds`, then ux, uy."""
        with self.world._lock:
            w = self._follow(int(t_ms))
            return np.array([self._value(i, w) for i in range(len(self._target))])

    def read_strain(self, i: int, t_ms: int) -> int:
        """Counts of the board's ``i``-th strain channel at board time ``t_ms``."""
        if not 0 <= i < len(self.bonds):
            raise ConfigError(f"strain channel {i} is outside 0..{len(self.bonds) - 1}")
        with self.world._lock:
            w = self._follow(int(t_ms))
            return self._strain[i].counts(self._value(i, w))

    def read_disp(self, t_ms: int) -> tuple[int, int]:
        """Counts of the board's displacement sensor (x, y) at board time ``t_ms``."""
        if self.node is None:
            raise ConfigError("this board has no displacement sensor")
        assert self._disp is not None
        with self.world._lock:
            w = self._follow(int(t_ms))
            n = len(self._target)
            cx, cy = self._disp
            return cx.counts(self._value(n - 2, w)), cy.counts(self._value(n - 1, w))
