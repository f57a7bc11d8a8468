"""Health monitoring: compare what the boards sense with the digital twin and with each other.

After every batch the coordinator has read each board's bonds back (``READ_BONDS``: the
stiffness it commands and the elongations of the batch's last sample, both phases). The digital
twin solves the same network with the same stiffness and loads. A healthy rig agrees with it
to within the sensors' noise and calibration; a fault leaves a signature:

* **one reading off, its neighbours fine**: the fault is in that bond's sensor. A sensor that
  reads the same in both phases (an adjoint elongation of exactly zero) is *stuck* (or dead);
  one near full scale is *saturated*; anything else is a *bad* sensor (noise, drift);
* **the readings of a whole neighbourhood off**: the network itself differs from the twin. For
  every bond the twin finds, in closed form (a rank-one update of the stiffness matrix), the
  stiffness that best explains all readings at once; the bond whose change explains them is
  the culprit. Near zero: a *broken bond*. Otherwise an actuator that does not reach its
  command; if it stays put while its command moves, a *stalled actuator*.

Findings name the bond and the board that owns it. :func:`exclude_bond` takes a broken bond out
of training (its board stops moving it) and reports whether the remaining network is still
rigid (:meth:`host_sdk.physics.Network.check_rigid`); training then goes on with the others,
as in the paper's damage experiment.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from . import protocol
from .errors import ConfigError, FloppyNetworkError, PhysicsError
from .physics import IOMap, Network
from .rig import Rig

if TYPE_CHECKING:
    from .coordinator import RigBackend

__all__ = ["Finding", "HealthReport", "HealthMonitor", "Exclusion", "exclude_bond", "BROKEN_BELOW"]

Array = NDArray[np.float64]

BROKEN_BELOW = 0.05
"""A bond whose fitted stiffness is below this fraction of its command counts as broken."""

_STALL_TOL = 0.02  # relative: a fitted stiffness that moved less than this "stayed put"
_SAME = 1e-6  # relative: an adjoint elongation this small is a repeated reading (float32 rounding)
_SATURATED = 0.9  # of the rig's strain_max: a reading beyond it is at full scale


@dataclass(frozen=True)
class Finding:
    """One fault the monitor found.

    Attributes:
        kind: ``broken_bond``, ``stalled_actuator``, ``actuator_mismatch``, ``stuck_sensor``,
            ``saturated_sensor``, ``bad_sensor`` or ``unexplained``.
        bond: the bond (0-based), or -1 for ``unexplained``.
        board: address of the board that owns the bond, or -1.
        detail: one line for people.
        residual: normalised disagreement with the twin this finding accounts for.
        k_fit: the stiffness that explains the readings (mechanical findings), N/m, else NaN.
    """

    kind: str
    bond: int
    board: int
    detail: str
    residual: float
    k_fit: float = float("nan")

    def __str__(self) -> str:
        where = f"bond {self.bond} (board {self.board})" if self.bond >= 0 else "rig"
        return f"{self.kind}: {where}: {self.detail}"


@dataclass
class HealthReport:
    """The outcome of one check.

    Attributes:
        ok: no finding.
        findings: what is wrong.
        residual: largest normalised disagreement between a reading and the twin.
        per_bond: ``(m,)`` normalised disagreement of each bond's reading (NaN: not read).
    """

    ok: bool
    findings: list[Finding] = field(default_factory=list)
    residual: float = 0.0
    per_bond: Array = field(default_factory=lambda: np.zeros(0))

    def summary(self) -> str:
        """One line."""
        if self.ok:
            return f"healthy (largest disagreement with the twin {self.residual:.3g})"
        return "; ".join(str(f) for f in self.findings)


class HealthMonitor:
    """Checks a rig's readings against its digital twin, batch after batch.

    Args:
        rig: the rig (its network, owners of bonds, sensor range).
        io: the task's inputs and outputs (where loads go).
        incremental: the adjoint phase was measured on top of the input loads (the
            coordinator's default), so a board reports the adjoint elongation as a difference.
        tol: normalised disagreement above which a reading is wrong. Readings are normalised
            per phase by the root mean square of the twin's elongations; calibration errors of
            about 1 % and the default sensor noise stay well below the default.
    """

    def __init__(self, rig: Rig, io: IOMap, *, incremental: bool = True, tol: float = 0.1) -> None:
        if not 0.0 < tol < 1.0:
            raise ConfigError(f"health tolerance must be in (0, 1), got {tol!r}")
        self.rig = rig
        self.io = io
        self.network: Network = rig.network
        self.incremental = bool(incremental)
        self.tol = float(tol)
        self.excluded: set[int] = set()
        self.bad_sensors: set[int] = set()
        self._owner = {b: spec.address for spec in rig.boards for b in spec.bonds}
        net = self.network
        self._c = np.asarray(net.compatibility().todense())[:, net.free_dofs]
        self._fitted: dict[int, tuple[float, float]] = {}  # bond -> (fitted k, commanded k)

    # -- inputs -------------------------------------------------------------------------------
    def _forces(self, dofs: Sequence[tuple[int, int]], values: Array) -> Array:
        f = np.zeros((self.network.n_nodes, 2))
        for (node, axis), v in zip(dofs, values):
            f[node, axis] += float(v)
        return f

    def exclude(self, bond: int) -> None:
        """Stop expecting anything of bond ``bond`` (it is broken and out of training)."""
        self.excluded.add(int(bond))

    # -- the check ------------------------------------------------------------------------------
    def check_backend(self, backend: RigBackend) -> HealthReport:
        """Check the latest batch of a :class:`~host_sdk.coordinator.RigBackend` (no traffic:
        it uses the read-back the backend made before its commit)."""
        rec = backend.last_batch
        if rec is None or not backend.last_readback:
            raise ConfigError("no batch read back yet: run a batch with RecoveryConfig(readback=True)")
        last = rec.count - 1
        return self.check(backend.last_readback, rec.forces[last], rec.adjoint[last], float(rec.gains[last]))

    def check(
        self,
        readback: Mapping[int, Mapping[str, Any]],
        forces: Array,
        adjoint: Array,
        gain: float,
    ) -> HealthReport:
        """Compare one sample's readings with the twin.

        Args:
            readback: address -> ``READ_BONDS`` result (``bonds``, ``k``, ``s_fwd``, ``s_adj``).
            forces: ``(n_in,)`` input forces of the sample, N.
            adjoint: ``(n_out,)`` adjoint forces of the sample before the gain, N.
            gain: the adjoint gain applied.
        """
        m = self.network.n_bonds
        k = np.full(m, np.nan)
        meas = np.full((2, m), np.nan)
        for result in readback.values():
            bonds = [int(b) for b in result["bonds"]]
            k[bonds] = result["k"]
            meas[0, bonds] = result["s_fwd"]
            meas[1, bonds] = result["s_adj"]
        if np.any(np.isnan(k)):
            missing = [int(b) for b in np.flatnonzero(np.isnan(k))]
            raise ConfigError(f"health check: no reading of bonds {missing}")
        k_twin = k.copy()
        for b in self.excluded:
            k_twin[b] = k[b] * 1e-3
        f_fwd = self._forces(self.io.inputs, np.asarray(forces, float))
        f_adj = self._forces(self.io.outputs, gain * np.asarray(adjoint, float))
        kmat = self._c.T @ (k_twin[:, None] * self._c)
        try:
            kinv_ct = np.linalg.solve(kmat, self._c.T)  # (n_free, m)
        except np.linalg.LinAlgError as e:
            raise PhysicsError(f"health check: the twin's stiffness matrix is singular: {e}") from e
        g = self._c @ kinv_ct  # (m, m): elongations per unit "bond force"
        free = self.network.free_dofs
        rhs = np.stack([f_fwd.reshape(-1)[free], f_adj.reshape(-1)[free]])  # (2, n_free)
        twin = (self._c @ np.linalg.solve(kmat, rhs.T)).T  # (2, m)
        scale = np.sqrt(np.mean(twin**2, axis=1)) + 1e-12  # per phase
        use = np.ones(m, dtype=bool)
        use[list(self.excluded)] = False
        resid = (meas - twin) / scale[:, None]
        per_bond = np.max(np.abs(resid), axis=0)
        per_bond[~use] = np.nan
        report = HealthReport(ok=True, per_bond=per_bond)
        if self.incremental:
            # a sensor that gives the same counts in both phases reports an adjoint elongation of
            # zero, up to the float32 rounding of the forward one; noise alone never comes that
            # close, so the sensor is stuck however small the signal
            floor = max(1e-3 * float(scale[1]), 1e-9)
            same = np.abs(meas[1]) <= _SAME * np.abs(meas[0]) + 1e-15
            for stuck in np.flatnonzero(use & same & (np.abs(twin[1]) > floor)):
                report.findings.append(self._stuck(int(stuck), meas, per_bond))
                use[stuck] = False
        per_bond_used = np.where(use, per_bond, np.nan)
        worst = float(np.nanmax(per_bond_used)) if use.any() else 0.0
        report.residual = worst
        if worst > self.tol:
            bad = [int(b) for b in np.flatnonzero(use & (per_bond > self.tol))]
            mech = self._mechanical_finding(k, meas, twin, scale, g, use, bad)
            if len(bad) == 1 and not self._moved_neighbours(bad[0], meas, twin, scale, g, use):
                report.findings.append(self._sensor_finding(bad[0], meas, twin, scale, per_bond))
            else:
                report.findings.append(mech)
        report.ok = not report.findings
        return report

    def _stuck(self, b: int, meas: Array, per_bond: Array) -> Finding:
        near = self._neighbours(b)
        agree = float(np.nanmax(per_bond[near])) if near else 0.0
        self.bad_sensors.add(b)
        tail = f"its {len(near)} neighbours agree with the twin (within {agree:.2g})"
        full = self.rig.strain_max
        level = float(np.max(np.abs(meas[:, b])))
        if full is not None and level >= _SATURATED * float(full):
            return Finding("saturated_sensor", b, self._owner.get(b, -1),
                           f"reads full scale ({level:.3g} m) in both phases; " + tail, float(per_bond[b]))
        return Finding("stuck_sensor", b, self._owner.get(b, -1),
                       "reads the same in both phases (adjoint elongation 0) while the twin "
                       "expects a change; " + tail, float(per_bond[b]))

    def _neighbours(self, bond: int) -> list[int]:
        i, j = (int(x) for x in self.network.bonds[bond])
        return [
            b for b, (p, q) in enumerate(self.network.bonds)
            if b != bond and b not in self.excluded and ({int(p), int(q)} & {i, j})
        ]

    def _sensor_finding(self, b: int, meas: Array, twin: Array, scale: Array, per_bond: Array) -> Finding:
        near = self._neighbours(b)
        agree = float(np.nanmax(per_bond[near])) if near else 0.0
        why = f"its reading is off by {per_bond[b]:.3g} while its {len(near)} neighbours agree with the twin (within {agree:.2g})"
        full = self.rig.strain_max
        if full is not None and np.nanmax(np.abs(meas[:, b])) >= _SATURATED * float(full):
            kind = "saturated_sensor"
            why = f"reads full scale ({np.nanmax(np.abs(meas[:, b])):.3g} m); " + why
        else:
            kind = "bad_sensor"
        self.bad_sensors.add(b)
        return Finding(kind, b, self._owner.get(b, -1), why, float(per_bond[b]))

    def _basis(self, b: int, twin: Array, scale: Array, g: Array, use: Array) -> Array:
        """How every reading (normalised) changes per unit of ``t`` when bond ``b`` changes."""
        basis = -(g[:, b][None, :] * twin[:, b][:, None]) / scale[:, None]
        return np.where(use[None, :], basis, 0.0)

    def _moved_neighbours(self, b: int, meas: Array, twin: Array, scale: Array, g: Array, use: Array) -> bool:
        """Whether the other readings moved the way a change of bond ``b``'s stiffness moves
        them (a mechanical fault) rather than staying put (a fault of ``b``'s sensor alone)."""
        r = np.where(use[None, :], (meas - twin) / scale[:, None], 0.0)
        basis = self._basis(b, twin, scale, g, use)
        others = np.ones(r.shape[1], dtype=bool)
        others[b] = False
        # fit the stiffness change on b's own reading, predict the others
        own = basis[:, b]
        denom = float(np.sum(own * own))
        if denom <= 0.0:
            return False
        t = float(np.sum(own * r[:, b])) / denom
        # the readings of the others that this change predicts: present (most of their energy
        # is explained) or absent (the others stay as they were: the sensor alone is wrong)
        pred = t * basis[:, others]
        energy = float(np.sum(pred * pred))
        before = float(np.sum(r[:, others] ** 2))
        after = float(np.sum((r[:, others] - pred) ** 2))
        return energy > 0.0 and after <= before - 0.5 * energy

    def _mechanical_finding(
        self, k: Array, meas: Array, twin: Array, scale: Array, g: Array, use: Array, bad: list[int]
    ) -> Finding:
        # For bond b with stiffness k_b + d: s'(d) = s - g[:, b] * t * s_b, t = d / (1 + d g_bb),
        # the same t in both phases: a linear least-squares fit for t, per candidate bond.
        r = np.where(use[None, :], (meas - twin) / scale[:, None], 0.0)
        best: tuple[float, int, float] = (np.inf, -1, 0.0)
        for b in range(self.network.n_bonds):
            if b in self.excluded:
                continue
            basis = self._basis(b, twin, scale, g, use)
            denom = float(np.sum(basis * basis))
            if denom <= 0.0:
                continue
            t = float(np.sum(basis * r)) / denom
            left = float(np.max(np.abs(r - t * basis)))
            if left < best[0]:
                best = (left, b, t)
        left, b, t = best
        if b < 0 or left > self.tol:
            worst = sorted(bad, key=lambda x: -float(np.max(np.abs(r[:, x]))))[:5]
            return Finding("unexplained", -1, -1,
                           f"readings of bonds {worst} disagree with the twin and no single bond explains them "
                           f"(best fit leaves {left:.3g})", float(np.max(np.abs(r))))
        gbb = float(g[b, b])
        denom = 1.0 - t * gbb
        d = t / denom if denom > 1e-12 else -np.inf
        k_fit = max(0.0, float(k[b] + d)) if np.isfinite(d) else 0.0
        owner = self._owner.get(b, -1)
        fraction = k_fit / float(k[b]) if k[b] > 0 else 0.0
        if fraction < BROKEN_BELOW:
            kind = "broken_bond"
            detail = (f"keeps {fraction:.2%} of its commanded {k[b]:.4g} N/m; this explains every "
                      f"reading to within {left:.2g}")
        else:
            previous = self._fitted.get(b)
            kind = "actuator_mismatch"
            detail = f"has {k_fit:.4g} N/m where {k[b]:.4g} N/m is commanded"
            if previous is not None:
                fit0, cmd0 = previous
                if abs(k_fit - fit0) <= _STALL_TOL * fit0 and abs(k[b] - cmd0) > _STALL_TOL * cmd0:
                    kind = "stalled_actuator"
                    detail = f"stays at {k_fit:.4g} N/m while its command moved from {cmd0:.4g} to {k[b]:.4g} N/m"
            self._fitted[b] = (k_fit, float(k[b]))
        return Finding(kind, b, owner, detail, left, k_fit)


@dataclass(frozen=True)
class Exclusion:
    """What :func:`exclude_bond` did.

    Attributes:
        bond: the bond taken out of training.
        board: the board that owns it (it no longer moves the bond).
        rigid: whether the network without the bond is still rigid.
        message: one line: rigid, or the floppy modes' nodes.
        network: the network without the bond (the twin for the rest of the run).
        kept: indices of the remaining bonds in the old numbering.
    """

    bond: int
    board: int
    rigid: bool
    message: str
    network: Network
    kept: NDArray[np.intp]


def exclude_bond(backend: RigBackend, bond: int, monitor: HealthMonitor | None = None) -> Exclusion:
    """Take a broken bond out of training and report whether the rest of the network is rigid.

    The owning board pins the bond at its present stiffness (its bounds collapse to it, so
    updates leave it alone, and its optimiser state is kept); the monitor stops expecting
    readings of it.

    Raises:
        ConfigError: no board owns ``bond``.
    """
    rig = backend.rig
    owner = next((s for s in rig.boards if bond in s.bonds), None)
    if owner is None:
        raise ConfigError(f"rig {rig.name}: no board owns bond {bond}")
    session = backend.session
    current = session.request(owner.address, protocol.Command.READ_BONDS)
    ks = [float(x) for x in current["k"]]
    lo = [float(rig.k_min)] * len(ks)
    hi = [float(rig.k_max)] * len(ks)
    for i, b in enumerate(owner.bonds):
        if b == bond or (monitor is not None and b in monitor.excluded):
            lo[i] = hi[i] = ks[i]
    session.request(owner.address, protocol.Command.CONFIGURE, {"k_min": lo, "k_max": hi})
    if monitor is not None:
        monitor.exclude(bond)
    gone = sorted({int(bond)} | (monitor.excluded if monitor is not None else set()))
    reduced, kept = rig.network.without_bonds(np.asarray(gone, dtype=np.intp))
    try:
        reduced.check_rigid()
        rigid, message = True, f"without bonds {gone} the network is still rigid"
    except FloppyNetworkError as e:
        rigid, message = False, f"without bonds {gone} the network is floppy: {e}"
    return Exclusion(int(bond), owner.address, rigid, message, reduced, np.asarray(kept, dtype=np.intp))
