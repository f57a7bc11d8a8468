"""Calibrate a rig: tare, sensor gains from known loads, and every stiffness actuator's curve.

The method (``docs/deploy.md`` has the walk-through):

1. **Zero.** With no load on the network, every board reports the raw counts of its strain
   channels and displacement sensor (``READ_RAW``); these are the zeros of this run.
2. **Known load cases.** Each force actuator at a free node pushes, in turn, with ``load`` =
   ``load_fraction · force_max`` along x and then along y (one load at a time). Every case is
   measured by all boards at once: a broadcast ``READ_RAW`` (settle-checked), then one
   addressed ``READ_RAW n=0`` per board to collect the sums.
3. **Command sweep.** The cases are repeated with every stiffness actuator driven
   (``SET_ACTUATOR``) to each of ``points`` commands spread evenly over its command range, the
   range ends included.
4. **Gains.** At the two ends of the command range the stiffness is the rig's nominal one
   (``k_min`` at the low end, ``k_max`` at the high end of the default map, or the end points of
   the rig's own ``act_table``). The digital twin (:mod:`host_sdk.physics`) gives the true
   elongation of every bond and the true displacement of every sensed node in every case there;
   regressing each channel's raw counts on them (one offset per command level) gives its slope
   in counts per metre, so ``gain = 1 / slope``, and the fit's residual. A channel whose
   readings do not follow the loads (slope not significant, or the loads move it by less than
   half a count) stops the calibration: "no load applied".
5. **Actuator curves.** At every command level, the calibrated elongations ``s_b`` of every
   case (relative to that level's no-load case) must satisfy node equilibrium
   ``Σ_b C_bd s_b k_b = f_d`` at every free degree of freedom ``d``; the cases together give a
   least-squares system for the stiffness ``k_b`` of every bond at that command, with standard
   errors from the residual. The points ``(k, command)`` of each bond, sorted by ``k``, are its
   calibration table (``act_table``); a bond whose stiffness does not change monotonically with
   its command (a stalled or limited actuator) stops the calibration.
6. **Persist.** Loads off; each board gets one ``CONFIGURE`` with its ``gain``, ``act_table``
   and ``disp_gain`` (its stiffness values ``k`` are kept, and it drives them through the new
   tables), then ``TARE`` zeroes every channel and stores the zeros.

Anything that stops the calibration before step 6 turns the loads off and sends every board an
empty ``CONFIGURE`` (which re-drives its actuators to the table command of its unchanged ``k``),
so the boards are left as they were.

The gains and the stiffness share one overall scale that loads alone cannot fix (stiffer bonds
and proportionally more sensitive gauges read the same); the nominal stiffness at the ends of the
command range sets it, so calibrated gains and curves are as accurate as those two stiffness
values.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import scipy.linalg
import scipy.sparse as sp
from numpy.typing import NDArray

from . import protocol
from .coordinator import RigSession, configure_args
from .errors import ConfigError, SdkError
from .rig import BoardSpec, Rig

__all__ = [
    "CalibrationError",
    "CalibrationConfig",
    "GainFit",
    "ActuatorCurve",
    "CalibrationReport",
    "calibrate",
    "calibrated_rig",
    "settle_counts",
    "write_report",
]

Command = protocol.Command
FloatArray = NDArray[np.float64]

DEFAULT_CMD_RANGE = (1000.0, 2000.0)
"""The firmware's default actuator command range (µs), used when the rig gives no table."""


class CalibrationError(SdkError):
    """A calibration could not be completed (no load applied, a stalled actuator, ...)."""


@dataclass(frozen=True)
class CalibrationConfig:
    """How a calibration measures.

    Attributes:
        readings: readings summed per channel and settle round (READ_RAW ``n``).
        tol: settle tolerance of every measurement, m; converted to counts with the nominal
            gain of a 24-bit strain converter spanning the rig's ``strain_max``.
        tol_counts: the settle tolerance in counts, for a rig that states no ``strain_max``
            (overrides ``tol``).
        timeout_ms: longest settle wait of one measurement, ms.
        load_fraction: each known load is this fraction of the rig's ``force_max``.
        points: command levels of the sweep (2 to ``MAX_TABLE``), both range ends included.
        cmd_range: the command range to sweep, µs (default: the rig's ``act_table`` range of
            each bond, else 1000 to 2000).
        min_significance: a channel whose fitted slope is smaller than this many standard
            errors saw no load.
        retries: measurements repeated when a board did not settle.
    """

    readings: int = 16
    tol: float = 1e-7
    tol_counts: float | None = None
    timeout_ms: int = 2000
    load_fraction: float = 0.5
    points: int = 6
    cmd_range: tuple[float, float] | None = None
    min_significance: float = 20.0
    retries: int = 2

    def __post_init__(self) -> None:
        def bad(what: str) -> None:
            raise ConfigError(f"calibration {what}")

        if isinstance(self.readings, bool) or not isinstance(self.readings, int) or not 1 <= self.readings <= protocol.MAX_N:
            bad(f"readings must be an integer 1..{protocol.MAX_N}, got {self.readings!r}")
        if not (math.isfinite(self.tol) and self.tol > 0):
            bad(f"tol must be a positive number of metres, got {self.tol!r}")
        if self.tol_counts is not None and not (math.isfinite(self.tol_counts) and self.tol_counts > 0):
            bad(f"tol_counts must be a positive number of counts, got {self.tol_counts!r}")
        if isinstance(self.timeout_ms, bool) or not isinstance(self.timeout_ms, int) or not 0 < self.timeout_ms <= 60000:
            bad(f"timeout_ms must be an integer 1..60000, got {self.timeout_ms!r}")
        if not (math.isfinite(self.load_fraction) and 0 < self.load_fraction <= 1):
            bad(f"load_fraction must be in (0, 1], got {self.load_fraction!r}")
        if isinstance(self.points, bool) or not isinstance(self.points, int) or not 2 <= self.points <= protocol.MAX_TABLE:
            bad(f"points must be an integer 2..{protocol.MAX_TABLE}, got {self.points!r}")
        if self.cmd_range is not None:
            lo, hi = (float(v) for v in self.cmd_range)
            if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
                bad(f"cmd_range must be two finite commands, low < high, got {self.cmd_range!r}")
        if not (math.isfinite(self.min_significance) and self.min_significance > 0):
            bad(f"min_significance must be positive, got {self.min_significance!r}")
        if isinstance(self.retries, bool) or not isinstance(self.retries, int) or self.retries < 0:
            bad(f"retries must be an integer >= 0, got {self.retries!r}")


@dataclass
class GainFit:
    """The fitted gain of one sensor channel.

    Attributes:
        kind: ``"strain"`` or ``"disp"``.
        address: the board.
        index: the bond (strain) or the node (disp).
        axis: 0 (x) or 1 (y) for a displacement sensor; -1 for a strain channel.
        gain: metres per count (``1 / slope``).
        slope: counts per metre.
        stderr: standard error of the slope, counts per metre.
        significance: ``|slope| / stderr``.
        residual: rms of the fit's residuals, in metres.
        x: the true lengths of the fitted points (twin), m.
        y: the raw counts of the fitted points (mean per reading).
        measured: False for a bond between two pinned nodes, which no load stretches: it gets
            the median gain of the measured channels (its readings still enter the boards'
            settle checks) and nothing is fitted.
    """

    kind: str
    address: int
    index: int
    axis: int
    gain: float
    slope: float
    stderr: float
    significance: float
    residual: float
    x: list[float] = field(default_factory=list, repr=False)
    y: list[float] = field(default_factory=list, repr=False)
    measured: bool = True


@dataclass
class ActuatorCurve:
    """The measured command-to-stiffness curve of one bond's actuator.

    Attributes:
        bond: the bond.
        address: the board that drives it.
        commands: the commands of the sweep, µs.
        stiffness: the stiffness measured at each command, N/m.
        stderr: standard error of each stiffness, N/m.
        table: the calibration table stored on the board, ``[[k, command], ...]`` by rising k.
        measured: False for a bond between two pinned nodes (its stiffness does nothing): it
            keeps the nominal table, and ``stiffness`` holds the nominal values.
    """

    bond: int
    address: int
    commands: list[float]
    stiffness: list[float]
    stderr: list[float]
    table: list[list[float]]
    measured: bool = True


@dataclass
class CalibrationReport:
    """Everything a calibration measured, fitted and stored.

    Attributes:
        rig: the rig's name.
        config: the settings used.
        load_cases: ``[node, axis, force]`` of every known load case (N).
        strain: one fit per bond (bond order).
        disp: one fit per displacement sensor axis.
        actuators: one curve per bond (bond order).
        residuals: rms equilibrium residual of the stiffness fit at each command level, N.
        zero: address -> the zeros TARE stored (raw counts per owned bond).
        remeasured: measurements repeated because a board had not settled.
    """

    rig: str
    config: CalibrationConfig
    load_cases: list[list[float]]
    strain: list[GainFit]
    disp: list[GainFit]
    actuators: list[ActuatorCurve]
    residuals: list[float]
    zero: dict[int, list[float]] = field(default_factory=dict)
    remeasured: int = 0

    def board_calibration(self, spec: BoardSpec) -> dict[str, Any]:
        """The calibration of one board as a rig file's ``calibration`` table (and CONFIGURE)."""
        gains = {f.index: f.gain for f in self.strain}
        tables = {c.bond: c.table for c in self.actuators}
        out: dict[str, Any] = {}
        if spec.bonds:
            out["gain"] = [gains[b] for b in spec.bonds]
            out["act_table"] = [tables[b] for b in spec.bonds]
        disp = {f.axis: f.gain for f in self.disp if f.address == spec.address}
        if len(disp) == 2:
            out["disp_gain"] = [disp[0], disp[1]]
        return out

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (fitted points included, for plots)."""
        return {
            "rig": self.rig,
            "config": asdict(self.config),
            "load_cases": self.load_cases,
            "strain": [asdict(f) for f in self.strain],
            "disp": [asdict(f) for f in self.disp],
            "actuators": [asdict(c) for c in self.actuators],
            "residuals": self.residuals,
            "zero": {str(a): z for a, z in self.zero.items()},
            "remeasured": self.remeasured,
        }


# ---------------------------------------------------------------------------------------------
# measuring


@dataclass
class _Snapshot:
    """Mean raw counts of every strain channel (by bond) and displacement axis (by node)."""

    strain: FloatArray
    disp: dict[int, FloatArray]


class _Bench:
    """The rig as a calibration sees it: loads, actuator commands, and one-shot measurements."""

    def __init__(self, session: RigSession, config: CalibrationConfig) -> None:
        self.session = session
        self.rig = session.rig
        self.config = config
        self.tol_counts = settle_counts(self.rig, config)
        self.remeasured = 0
        fixed = {int(n) for n in self.rig.network.fixed}
        self.force_boards = [b for b in self.rig.boards if b.force and b.node not in fixed]
        self.read_boards = [b for b in self.rig.boards if b.bonds or b.disp]

    def set_load(self, spec: BoardSpec, fx: float, fy: float) -> None:
        self.session.request(spec.address, Command.SET_LOAD, {"fx": fx, "fy": fy})

    def loads_off(self) -> None:
        for spec in self.force_boards:
            self.set_load(spec, 0.0, 0.0)

    def drive(self, commands: Mapping[int, float]) -> None:
        """Drive every bond's actuator to ``commands[bond]``."""
        for spec in self.rig.boards:
            if spec.bonds:
                self.session.request(spec.address, Command.SET_ACTUATOR, {"cmd": [commands[b] for b in spec.bonds]})

    def measure(self) -> _Snapshot:
        """All boards measure at once (broadcast READ_RAW); then each is asked for its sums."""
        cfg = self.config
        args = {"n": cfg.readings, "tol": self.tol_counts, "timeout_ms": cfg.timeout_ms}
        for attempt in range(cfg.retries + 1):
            self.session.broadcast(Command.READ_RAW, args)
            replies = self.session.request_many([(s.address, Command.READ_RAW, {"n": 0}) for s in self.read_boards])
            strain = np.full(self.rig.n_bonds, np.nan)
            disp: dict[int, FloatArray] = {}
            unsettled = []
            for spec, r in zip(self.read_boards, replies):
                if isinstance(r, SdkError):
                    raise r
                n = int(r["n"])
                if not r.get("settled", False):
                    unsettled.append(spec.address)
                strain[list(spec.bonds)] = np.asarray(r["strain"], dtype=float) / n
                if spec.disp:
                    disp[spec.node] = np.asarray(r["disp"], dtype=float) / n
            if not unsettled:
                return _Snapshot(strain, disp)
            if attempt < cfg.retries:
                self.remeasured += 1
        raise CalibrationError(
            f"boards {', '.join(map(str, unsettled))} did not settle to {self.tol_counts:.4g} counts within "
            f"{cfg.timeout_ms} ms ({cfg.retries + 1} tries): is something still moving?"
        )

    def restore(self) -> None:
        """Loads off and every actuator back on its table command for the (unchanged) k."""
        self.loads_off()
        for spec in self.rig.boards:
            if spec.bonds:
                self.session.request(spec.address, Command.CONFIGURE, {})


ADC_FULL_SCALE = 2**23 - 1
"""Largest count of a 24-bit signed converter (HX711): ``strain_max`` spans it."""


def settle_counts(rig: Rig, config: CalibrationConfig) -> float:
    """The settle tolerance in counts: ``tol_counts``, else ``tol`` over the nominal strain gain.

    Raises:
        ConfigError: neither ``tol_counts`` nor the rig's ``strain_max`` is given.
    """
    if config.tol_counts is not None:
        return float(config.tol_counts)
    if rig.strain_max is None:
        raise ConfigError(
            f"rig {rig.name} states no strain_max, so the settle tolerance cannot be put in counts: "
            "give it in counts (tol_counts)"
        )
    return float(config.tol) / (float(rig.strain_max) / ADC_FULL_SCALE)


def _command_ranges(rig: Rig, config: CalibrationConfig) -> tuple[dict[int, tuple[float, float]], dict[int, tuple[float, float]]]:
    """Per bond: the command range swept, and the nominal stiffness at its two ends."""
    cmd: dict[int, tuple[float, float]] = {}
    ref: dict[int, tuple[float, float]] = {}
    for spec in rig.boards:
        tables = spec.calibration.get("act_table")
        for i, b in enumerate(spec.bonds):
            table = tables[i] if tables is not None else None
            if table:
                pts = sorted((float(c), float(k)) for k, c in table)
                lo, hi = pts[0], pts[-1]
                cmd[b] = (lo[0], hi[0])
                ref[b] = (lo[1], hi[1])
            else:
                cmd[b] = DEFAULT_CMD_RANGE
                ref[b] = (rig.k_min, rig.k_max)
            if config.cmd_range is not None:
                if cmd[b] != DEFAULT_CMD_RANGE and table:
                    raise ConfigError(
                        f"bond {b} has an act_table in the rig: its command range comes from it, "
                        "not from cmd_range"
                    )
                cmd[b] = (float(config.cmd_range[0]), float(config.cmd_range[1]))
    return cmd, ref


# ---------------------------------------------------------------------------------------------
# fitting


def _fit_line(x: FloatArray, y: FloatArray, groups: NDArray[np.int64]) -> tuple[float, float, float]:
    """Least squares ``y = slope · x + offset[group]``: (slope, its standard error, rms residual)."""
    n_groups = int(groups.max()) + 1
    design = np.zeros((x.size, 1 + n_groups))
    design[:, 0] = x
    design[np.arange(x.size), 1 + groups] = 1.0
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    resid = y - design @ coef
    dof = max(x.size - design.shape[1], 1)
    sigma2 = float(resid @ resid) / dof
    cov = sigma2 * np.linalg.pinv(design.T @ design)
    return float(coef[0]), float(math.sqrt(max(cov[0, 0], 0.0))), float(math.sqrt(float(resid @ resid) / x.size))


def _gain_fit(kind: str, address: int, index: int, axis: int, x: FloatArray, y: FloatArray,
              groups: NDArray[np.int64], config: CalibrationConfig, what: str) -> GainFit:
    slope, stderr, resid = _fit_line(x, y, groups)
    spread = float(np.sqrt(np.mean((x - x.mean()) ** 2)))
    significance = abs(slope) / stderr if stderr > 0 else (math.inf if slope != 0 else 0.0)
    if slope == 0 or abs(slope) * spread < 0.5 or significance < config.min_significance:
        raise CalibrationError(
            f"no load applied: {what} did not change under the known loads (slope {slope:.3g} "
            f"± {stderr:.2g} counts/m): check the force actuators and the sensor's wiring"
        )
    gain = 1.0 / slope
    return GainFit(kind, address, index, axis, gain, slope, stderr, significance, resid * abs(gain),
                   x.tolist(), y.tolist())


def _stiffness_fit(net: Any, cases: Sequence[tuple[int, int, float]], s: FloatArray,
                   active: Sequence[int]) -> tuple[FloatArray, FloatArray, float]:
    """Least-squares stiffness of the ``active`` bonds from calibrated elongations ``s``
    (cases, len(active)): node equilibrium ``Σ_b C_bd s_b k_b = f_d`` at every free DOF of every
    case (the other bonds join two pinned nodes and enter no free DOF's balance).

    Returns (k, standard errors, rms residual in N), over the active bonds.
    """
    c_free = sp.csr_matrix(net.compatibility())[list(active)][:, net.free_dofs]  # (active, n_free)
    ct = sp.csr_matrix(c_free.T)
    blocks = []
    rhs = []
    index = {int(d): i for i, d in enumerate(net.free_dofs)}
    for (node, axis, force), sc in zip(cases, s):
        blocks.append(ct @ sp.diags(sc))
        f = np.zeros(net.n_free)
        f[index[2 * node + axis]] = force
        rhs.append(f)
    a = sp.vstack(blocks).tocsr()
    b = np.concatenate(rhs)
    normal = (a.T @ a).toarray()
    m = normal.shape[0]
    try:
        chol = scipy.linalg.cho_factor(normal)
    except np.linalg.LinAlgError as e:
        diag = np.diag(normal)
        blind = [int(active[int(i)]) for i in np.flatnonzero(diag <= 1e-12 * max(float(diag.max()), 1e-300))]
        which = f"bonds {blind}" if blind else "some bonds"
        raise CalibrationError(
            f"the load cases do not determine the stiffness of {which}: no case stretches them "
            "(add force actuators nearer to them)"
        ) from e
    k = scipy.linalg.cho_solve(chol, a.T @ b)
    resid = b - a @ k
    dof = max(a.shape[0] - m, 1)
    sigma2 = float(resid @ resid) / dof
    cov_diag = np.diag(scipy.linalg.cho_solve(chol, np.eye(m)))
    return k, np.sqrt(np.maximum(sigma2 * cov_diag, 0.0)), float(math.sqrt(float(resid @ resid) / resid.size))


def _table(bond: int, address: int, commands: Sequence[float], ks: Sequence[float], errs: Sequence[float],
           nominal_step: float) -> list[list[float]]:
    """The calibration table of one bond: its points sorted by stiffness.

    Every step between successive commands must change the stiffness the same way, by more than
    four standard errors and more than 1 % of the nominal step; otherwise the actuator is stalled
    or limited over part of its range and no table can map stiffness to command.
    """
    dk = np.diff(np.asarray(ks, dtype=float))
    se = np.hypot(np.asarray(errs[:-1], dtype=float), np.asarray(errs[1:], dtype=float))
    floor = np.maximum(4.0 * se, 0.01 * abs(nominal_step))
    same_sign = bool(np.all(dk > 0) or np.all(dk < 0))
    if not same_sign or np.any(np.abs(dk) <= floor):
        shown = ", ".join(f"{k:.4g}" for k in ks)
        raise CalibrationError(
            f"the actuator of bond {bond} (board {address}) does not change the stiffness "
            f"monotonically with its command: k = [{shown}] N/m at commands "
            f"[{', '.join(f'{c:g}' for c in commands)}] (stalled or limited?)"
        )
    return [[float(k), float(c)] for k, c in sorted(zip(ks, commands))]


def _fit_tables_in_frames(rig: Rig, spec: BoardSpec, args: dict[str, Any]) -> dict[str, Any]:
    """Thin the tables (keeping their end points) until the CONFIGURE fits one frame."""
    while True:
        try:
            protocol.encode_request(0, spec.address, Command.CONFIGURE, args)
            return args
        except SdkError:
            tables = args["act_table"]
            if max(len(t) for t in tables) <= 2:
                raise
            args = dict(args)
            args["act_table"] = [t if len(t) <= 2 else t[:-2] + t[-1:] for t in tables]


# ---------------------------------------------------------------------------------------------
# the whole calibration


def calibrate(
    session: RigSession,
    config: CalibrationConfig | None = None,
    *,
    progress: Callable[[str], None] | None = None,
) -> CalibrationReport:
    """Calibrate every board of an open session's rig and store the results on the boards.

    Boards that HELLO reports unconfigured (or configured for other bonds) are first configured
    from the rig (at ``k0``). See the module docstring for the method.

    Args:
        session: an open session (handshaken or not).
        config: measurement settings.
        progress: called with one line per stage.

    Returns:
        The report (also what :func:`write_report` writes).

    Raises:
        CalibrationError: no load applied, a board that does not settle, load cases that do not
            determine a bond's stiffness, a non-monotonic actuator. The boards are left as they
            were.
        ConfigError: the rig has no force actuator at a free node, or bad settings.
        SdkError: a board failed to answer (transport or node errors).
    """
    cfg = config or CalibrationConfig()
    rig = session.rig
    say = progress or (lambda _text: None)
    bench = _Bench(session, cfg)
    if not bench.force_boards:
        raise ConfigError(f"rig {rig.name}: calibration needs known loads, but no board has a force actuator at a free node")
    hellos = session.handshake()
    for spec in rig.boards:
        hello = hellos[spec.address]
        if not hello.get("configured") or hello.get("bonds") != list(spec.bonds) or hello.get("node") != spec.node:
            say(f"board {spec.address}: configuring for the rig")
            session.request(spec.address, Command.CONFIGURE,
                            configure_args(rig, spec, np.full(rig.n_bonds, rig.k0)))
    cmd_range, ref = _command_ranges(rig, cfg)
    load = float(round(cfg.load_fraction * rig.force_max, 6))
    cases: list[tuple[int, int, float]] = [(s.node, axis, load) for s in bench.force_boards for axis in (0, 1)]
    levels = [
        {b: lo + (hi - lo) * j / (cfg.points - 1) for b, (lo, hi) in cmd_range.items()}
        for j in range(cfg.points)
    ]
    try:
        snaps = _sweep(bench, levels, cases, say)
        report = _fit(rig, cfg, cases, levels, ref, snaps)
    except BaseException:
        say("stopped: restoring the boards")
        try:
            bench.restore()
        except SdkError as e:
            say(f"could not restore every board: {e}")
        raise
    report.remeasured = bench.remeasured
    say("storing gains and tables, then taring")
    bench.loads_off()
    for spec in rig.boards:
        args = report.board_calibration(spec)
        if args:
            session.request(spec.address, Command.CONFIGURE, _fit_tables_in_frames(rig, spec, args))
    report.zero = _tare(bench)
    return report


def _tare(bench: _Bench) -> dict[int, list[float]]:
    """TARE every board once the network has settled with no load, and check each zero against
    the settled readings (a board that tared while something still moved is tared again)."""
    session, cfg = bench.session, bench.config
    zeros: dict[int, list[float]] = {}
    pending = [s for s in bench.rig.boards]
    for _attempt in range(cfg.retries + 1):
        settled = bench.measure()
        for spec in pending:
            r = session.request(spec.address, Command.TARE, {"n": cfg.readings})
            zeros[spec.address] = [float(z) for z in r.get("zero", [])]
        pending = [
            s for s in pending
            if s.bonds and np.max(np.abs(np.asarray(zeros[s.address]) - settled.strain[list(s.bonds)]))
            > 2.0 * bench.tol_counts
        ]
        if not pending:
            return zeros
    raise CalibrationError(
        f"boards {', '.join(str(s.address) for s in pending)}: the zero kept moving while taring"
    )


def _sweep(bench: _Bench, levels: Sequence[Mapping[int, float]], cases: Sequence[tuple[int, int, float]],
           say: Callable[[str], None]) -> list[list[_Snapshot]]:
    """Snapshots [level][case], case 0 with no load, then one per known load case."""
    at_node = {s.node: s for s in bench.force_boards}
    out: list[list[_Snapshot]] = []
    bench.loads_off()
    for j, commands in enumerate(levels):
        say(f"command level {j + 1}/{len(levels)}: {len(cases)} load cases")
        bench.drive(commands)
        row = [bench.measure()]
        for node, axis, force in cases:
            spec = at_node[node]
            bench.set_load(spec, force if axis == 0 else 0.0, force if axis == 1 else 0.0)
            row.append(bench.measure())
            bench.set_load(spec, 0.0, 0.0)
        out.append(row)
    return out


def _fit(rig: Rig, cfg: CalibrationConfig, cases: Sequence[tuple[int, int, float]],
         levels: Sequence[Mapping[int, float]], ref: Mapping[int, tuple[float, float]],
         snaps: Sequence[Sequence[_Snapshot]]) -> CalibrationReport:
    net = rig.network
    m = rig.n_bonds
    n_cases = len(cases) + 1
    forces = np.zeros((n_cases, net.n_nodes, 2))
    for c, (node, axis, force) in enumerate(cases, start=1):
        forces[c, node, axis] = force
    ends = (0, len(levels) - 1)
    twin_s = []
    twin_u = []
    for e, j in enumerate(ends):
        k_ref = np.array([ref[b][e] for b in range(m)])
        u = net.solve(k_ref, forces)
        twin_u.append(u)
        twin_s.append(net.elongations(u))
    groups = np.repeat(np.arange(len(ends)), n_cases)
    owner = {b: spec for spec in rig.boards for b in spec.bonds}
    fixed = {int(n) for n in net.fixed}
    pinned = {b for b, (i, j) in enumerate(net.bonds) if int(i) in fixed and int(j) in fixed}
    active = [b for b in range(m) if b not in pinned]
    for b in active:
        if max(float(np.max(np.abs(t[:, b]))) for t in twin_s) < 1e-15:
            i, j = (int(v) for v in net.bonds[b])
            raise CalibrationError(
                f"the known loads do not stretch bond {b} (nodes {i}-{j}), so its gain and stiffness "
                "cannot be measured: the rig needs a force actuator that loads it"
            )
    raw_ends = np.array([[snaps[j][c].strain for c in range(n_cases)] for j in ends])  # (2, cases, m)
    if all(np.ptp(raw_ends[:, :, b]) < 1.0 for b in active):
        raise CalibrationError(
            f"no load applied: none of the {len(active)} strain channels changed under the known loads "
            "(are the force actuators connected and powered?)"
        )
    fits: dict[int, GainFit] = {}
    for b in active:
        spec = owner[b]
        ch = spec.strain_channels[list(spec.bonds).index(b)]
        x = np.concatenate([twin_s[e][:, b] for e in range(len(ends))])
        y = raw_ends[:, :, b].reshape(-1)
        fits[b] = _gain_fit("strain", spec.address, b, -1, x, y, groups, cfg,
                            f"bond {b} (board {spec.address}, strain channel {ch})")
    typical = float(np.median([f.gain for f in fits.values()]))
    for b in sorted(pinned):
        fits[b] = GainFit("strain", owner[b].address, b, -1, typical, 1.0 / typical, 0.0, 0.0, 0.0, measured=False)
    strain = [fits[b] for b in range(m)]
    disp: list[GainFit] = []
    for spec in rig.boards:
        if not spec.disp:
            continue
        for axis in (0, 1):
            x = np.concatenate([twin_u[e][:, spec.node, axis] for e in range(len(ends))])
            y = np.array([[snaps[j][c].disp[spec.node][axis] for c in range(n_cases)] for j in ends]).reshape(-1)
            disp.append(_gain_fit("disp", spec.address, spec.node, axis, x, y, groups, cfg,
                                  f"the displacement sensor of board {spec.address} ({'xy'[axis]})"))
    gains = np.array([fits[b].gain for b in active])
    k_levels = np.zeros((len(levels), m))
    k_err = np.zeros((len(levels), m))
    residuals = []
    for j in range(len(levels)):
        raw = np.array([snaps[j][c].strain[active] for c in range(n_cases)])
        s = gains * (raw[1:] - raw[0])
        k_levels[j, active], k_err[j, active], res = _stiffness_fit(net, cases, s, active)
        residuals.append(res)
    curves = []
    for b in range(m):
        spec = owner[b]
        commands = [float(levels[j][b]) for j in range(len(levels))]
        step = (ref[b][1] - ref[b][0]) / (len(levels) - 1)
        if b in pinned:
            nominal = [ref[b][0] + step * j for j in range(len(levels))]
            table = [[ref[b][0], commands[0]], [ref[b][1], commands[-1]]]
            curves.append(ActuatorCurve(b, spec.address, commands, nominal, [0.0] * len(levels), table,
                                        measured=False))
            continue
        ks = k_levels[:, b].tolist()
        errs = k_err[:, b].tolist()
        curves.append(ActuatorCurve(b, spec.address, commands, ks, errs,
                                    _table(b, spec.address, commands, ks, errs, step)))
    return CalibrationReport(
        rig=rig.name, config=cfg, load_cases=[[float(n), float(a), float(f)] for n, a, f in cases],
        strain=strain, disp=disp, actuators=curves, residuals=residuals,
    )


# ---------------------------------------------------------------------------------------------
# results


def calibrated_rig(rig: Rig, report: CalibrationReport) -> Rig:
    """A copy of ``rig`` whose boards carry the report's calibration (gain, act_table, disp_gain),
    so :func:`~host_sdk.rig.rig_to_toml` writes a rig file that configures calibrated boards."""
    boards = []
    for spec in rig.boards:
        cal = dict(spec.calibration)
        cal.update(report.board_calibration(spec))
        boards.append(replace(spec, calibration=cal))
    return replace(rig, boards=tuple(boards))


def _fit_offsets(f: GainFit) -> FloatArray:
    """The counts of a fit's points with each level's fitted offset removed."""
    x = np.asarray(f.x)
    y = np.asarray(f.y)
    per = x.size // 2
    groups = np.repeat(np.arange(2), per) if per * 2 == x.size else np.zeros(x.size, dtype=np.int64)
    out = np.empty_like(y)
    for g in np.unique(groups):
        sel = groups == g
        out[sel] = y[sel] - np.mean(y[sel] - f.slope * x[sel])
    return out


def write_report(report: CalibrationReport, out_dir: str | Path) -> list[Path]:
    """Write ``calibration.json`` and a PNG per kind of curve into ``out_dir``.

    ``strain_gains.png``: every strain channel's points, converted with its fitted gain, against
    the twin's elongation (all on the identity line when the fit is good) and their residuals;
    ``disp_gains.png`` likewise for the displacement sensors; ``actuators.png``: every bond's
    measured stiffness against the command (with standard errors) and the stored tables.

    Returns:
        The paths written.

    Raises:
        ConfigError: the directory cannot be created or written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        paths = [out / "calibration.json"]
        paths[0].write_text(json.dumps(report.to_dict(), indent=1) + "\n", encoding="utf-8")
        for name, fits, label in (("strain_gains.png", [f for f in report.strain if f.measured], "elongation"),
                                  ("disp_gains.png", report.disp, "displacement")):
            if not fits:
                continue
            fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6), sharex=True,
                                              gridspec_kw={"height_ratios": [2, 1]})
            for f in fits:
                x = np.asarray(f.x) * 1e3
                measured = _fit_offsets(f) * f.gain * 1e3
                tag = f"bond {f.index}" if f.kind == "strain" else f"node {f.index} {'xy'[f.axis]}"
                top.plot(x, measured, ".", ms=3, label=tag)
                bottom.plot(x, (measured - x) * 1e6, ".", ms=3)
            lim = [min(min(f.x) for f in fits) * 1e3, max(max(f.x) for f in fits) * 1e3]
            top.plot(lim, lim, "k-", lw=0.6)
            top.set_ylabel(f"measured {label} (fitted gain), mm")
            top.set_title(f"{report.rig}: {len(fits)} {name.split('_')[0]} channels, counts x gain vs twin")
            if len(fits) <= 12:
                top.legend(fontsize=6, ncol=2)
            bottom.set_ylabel("residual, nm")
            bottom.set_xlabel(f"true {label} (digital twin), mm")
            fig.subplots_adjust(left=0.13, right=0.98, bottom=0.09, top=0.94, hspace=0.08)
            fig.savefig(out / name, dpi=90)
            plt.close(fig)
            paths.append(out / name)
        fig, ax = plt.subplots(figsize=(7, 5))
        for c in (c for c in report.actuators if c.measured):
            line = ax.errorbar(c.commands, c.stiffness, yerr=c.stderr, fmt="o", ms=2.5, lw=0.6)
            t = np.asarray(c.table)
            ax.plot(t[:, 1], t[:, 0], "-", lw=0.5, color=line[0].get_color())
        ax.set_xlabel("actuator command, µs")
        ax.set_ylabel("stiffness, N/m")
        ax.set_title(f"{report.rig}: {len(report.actuators)} stiffness actuators (points: measured, lines: stored tables)",
                     fontsize=9)
        fig.subplots_adjust(left=0.12, right=0.98, bottom=0.1, top=0.93)
        fig.savefig(out / "actuators.png", dpi=90)
        plt.close(fig)
        paths.append(out / "actuators.png")
    except OSError as e:
        raise ConfigError(f"cannot write the calibration report to {out}: {e}") from e
    return paths
