"""Sensor and actuator models of an emulated rig.

A model turns a physical quantity into what a board's hardware reports (sensors) or a board's
command into a physical quantity (actuators). Every model is deterministic given its random
generator; the world (:mod:`host_sdk.emulator.world`) gives each channel its own generators so
the order in which boards read their channels never changes what a channel reports.

Specifications (frozen dataclasses, documented defaults, a ``noiseless`` / ``ideal`` variant):

* :class:`AdcSpec`: one kind of length sensor (m) read as signed integer counts.
* :class:`SensorSpec`: the strain channels and the displacement sensors of a rig.
* :class:`ActuatorSpec`: the stiffness actuators (servo pulse in µs -> N/m) and the force
  actuators (N).
* :class:`DynamicsSpec`: how the network approaches equilibrium in virtual time.

Channels (mutable, one per physical channel, with fault hooks):

* :class:`AdcChannel`: counts = clip(round(length / true_gain + offset + noise)).
* :class:`StiffnessActuator`: command -> quantised, saturated pulse -> stiffness on a true curve.
* :class:`ForceActuator`: requested force -> saturated, quantised force.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from ..errors import ConfigError

__all__ = [
    "AdcSpec",
    "SensorSpec",
    "ActuatorSpec",
    "DynamicsSpec",
    "AdcChannel",
    "StiffnessActuator",
    "ForceActuator",
]


_NOISE_BLOCK = 256


def _finite(name: str, value: float, *, positive: bool = False, nonneg: bool = False) -> float:
    """Return ``value`` as float or raise ConfigError naming the field."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(x):
        raise ConfigError(f"{name} must be finite, got {value!r}")
    if positive and x <= 0:
        raise ConfigError(f"{name} must be > 0, got {value!r}")
    if nonneg and x < 0:
        raise ConfigError(f"{name} must be >= 0, got {value!r}")
    return x


@dataclass(frozen=True)
class AdcSpec:
    """A length sensor read through a signed ``bits``-wide ADC.

    A channel built from this spec reports
    ``counts = clip(round(length / true_gain + offset + noise * N(0, 1)))``, clipped to
    ``[-2**(bits-1), 2**(bits-1) - 1]``, where ``true_gain = gain * (1 + gain_error * N(0, 1))``
    and ``offset = offset_std * N(0, 1)`` are drawn once per channel. A board that assumes the
    nominal ``gain`` therefore sees elongations off by the channel's gain error until it is
    calibrated.

    Attributes:
        gain: nominal metres per count (what an uncalibrated board assumes).
        gain_error: relative standard deviation of each channel's true gain around ``gain``.
        offset_std: standard deviation of each channel's zero offset, counts (removed by tare).
        noise: standard deviation of the Gaussian noise of one reading, counts.
        bits: ADC width including the sign bit (HX711: 24).
    """

    gain: float
    gain_error: float = 0.0
    offset_std: float = 0.0
    noise: float = 0.0
    bits: int = 24

    def __post_init__(self) -> None:
        _finite("gain", self.gain, positive=True)
        _finite("gain_error", self.gain_error, nonneg=True)
        if self.gain_error >= 0.2:
            raise ConfigError(f"gain_error must be < 0.2 (relative), got {self.gain_error!r}")
        _finite("offset_std", self.offset_std, nonneg=True)
        _finite("noise", self.noise, nonneg=True)
        if not isinstance(self.bits, int) or not 2 <= self.bits <= 32:
            raise ConfigError(f"bits must be an integer in [2, 32], got {self.bits!r}")

    @property
    def full_scale(self) -> float:
        """Largest length (m) the nominal gain can report before the counts clip."""
        return float(self.gain * (2 ** (self.bits - 1) - 1))

    def noiseless(self) -> AdcSpec:
        """The same ADC with exact gain, no offset and no noise (still integer counts)."""
        return replace(self, gain_error=0.0, offset_std=0.0, noise=0.0)


def _default_strain() -> AdcSpec:
    # HX711 (24-bit) behind a strain-gauge bridge on each bond, ranged so that +-2.1 mm of
    # elongation spans the converter: 0.25 nm per count. Noise of the whole chain referred to
    # elongation: 50 nm rms per reading (about 3 microstrain on a 16 mm bond, typical of a
    # gauge read by an HX711). Bridge imbalance gives offsets of order 1e5 counts (tare removes
    # them); gauge factor and bonding spread the true gains by 1 % (calibration recovers them).
    return AdcSpec(gain=2.5e-10, gain_error=0.01, offset_std=1.0e5, noise=200.0, bits=24)


def _default_disp() -> AdcSpec:
    # A 2-axis displacement sensor (optical or LVDT) on a 24-bit converter: 1 nm per count
    # (+-8.4 mm span), 50 nm rms noise per reading, 0.5 % gain spread.
    return AdcSpec(gain=1.0e-9, gain_error=0.005, offset_std=2.0e4, noise=50.0, bits=24)


@dataclass(frozen=True)
class SensorSpec:
    """The sensors of a rig: one strain channel per bond, one displacement sensor per I/O node.

    Attributes:
        strain: the strain channels (elongation of the owned bond, m -> counts).
        disp: each axis of a displacement sensor (node displacement, m -> counts).
    """

    strain: AdcSpec = field(default_factory=_default_strain)
    disp: AdcSpec = field(default_factory=_default_disp)

    def noiseless(self) -> SensorSpec:
        """Exact gains, no offsets, no noise; counts are still integers with the same LSB."""
        return SensorSpec(strain=self.strain.noiseless(), disp=self.disp.noiseless())


@dataclass(frozen=True)
class ActuatorSpec:
    """The actuators of a rig.

    A stiffness actuator is a servo moving a clamp along a leaf spring: a pulse of ``cmd`` µs is
    quantised to ``cmd_resolution``, saturated to ``[cmd_min, cmd_max]``, and gives the
    stiffness ``k_min + (k_max - k_min) * (x + curvature * x * (1 - x))`` with
    ``x = (cmd - cmd_min) / (cmd_max - cmd_min)``. A force actuator saturates each component to
    ``[-force_max, force_max]`` and quantises it to ``force_resolution``.

    Attributes:
        k_min, k_max: stiffness at the ends of the command range, N/m.
        cmd_min, cmd_max: command range, µs (hobby servo: 1000 ... 2000).
        cmd_resolution: command step, µs; 0 means continuous.
        curvature: bow of the true curve (0 linear; |curvature| < 1 keeps it monotonic).
        force_max: largest force per axis of a force actuator, N.
        force_resolution: force step, N; 0 means continuous.
    """

    k_min: float = 103.125
    k_max: float = 171.875
    cmd_min: float = 1000.0
    cmd_max: float = 2000.0
    cmd_resolution: float = 1.0
    curvature: float = 0.0
    force_max: float = 0.1
    force_resolution: float = 1.0e-5

    def __post_init__(self) -> None:
        _finite("k_min", self.k_min, positive=True)
        _finite("k_max", self.k_max, positive=True)
        if self.k_max <= self.k_min:
            raise ConfigError(f"k_max ({self.k_max}) must exceed k_min ({self.k_min})")
        _finite("cmd_min", self.cmd_min)
        _finite("cmd_max", self.cmd_max)
        if self.cmd_max <= self.cmd_min:
            raise ConfigError(f"cmd_max ({self.cmd_max}) must exceed cmd_min ({self.cmd_min})")
        _finite("cmd_resolution", self.cmd_resolution, nonneg=True)
        c = _finite("curvature", self.curvature)
        if abs(c) >= 1.0:
            raise ConfigError(f"curvature must be in (-1, 1) to keep the curve monotonic, got {c}")
        _finite("force_max", self.force_max, positive=True)
        _finite("force_resolution", self.force_resolution, nonneg=True)

    def ideal(self) -> ActuatorSpec:
        """Continuous commands and forces on a linear curve (ranges and saturation kept)."""
        return replace(self, cmd_resolution=0.0, curvature=0.0, force_resolution=0.0)

    def stiffness_of(self, cmd: float) -> float:
        """The true stiffness (N/m) of a healthy actuator at command ``cmd`` (µs)."""
        x = (self.saturate_cmd(self.quantise_cmd(cmd)) - self.cmd_min) / (
            self.cmd_max - self.cmd_min
        )
        return self.k_min + (self.k_max - self.k_min) * (x + self.curvature * x * (1.0 - x))

    def quantise_cmd(self, cmd: float) -> float:
        """``cmd`` rounded to the nearest step of ``cmd_resolution`` counted from ``cmd_min``."""
        step = self.cmd_resolution
        if step == 0.0:
            return float(cmd)
        return self.cmd_min + step * math.floor((float(cmd) - self.cmd_min) / step + 0.5)

    def saturate_cmd(self, cmd: float) -> float:
        """``cmd`` clamped to ``[cmd_min, cmd_max]``."""
        return min(max(float(cmd), self.cmd_min), self.cmd_max)

    def nominal_cmd(self, k: float) -> float:
        """The command a board should send for stiffness ``k`` on the nominal (linear) curve."""
        x = (float(k) - self.k_min) / (self.k_max - self.k_min)
        return self.cmd_min + x * (self.cmd_max - self.cmd_min)

    def act_table(self, points: int = 2) -> list[list[float]]:
        """Nominal calibration table ``[[k, cmd], ...]``, ``points`` evenly spaced in k."""
        if points < 2:
            raise ConfigError(f"an actuator table needs at least 2 points, got {points}")
        ks = np.linspace(self.k_min, self.k_max, points)
        return [[float(k), float(self.nominal_cmd(k))] for k in ks]

    def quantise_force(self, f: float) -> float:
        """One force component saturated to ``+-force_max`` and quantised to the resolution."""
        x = min(max(float(f), -self.force_max), self.force_max)
        step = self.force_resolution
        if step == 0.0:
            return x
        q = step * math.floor(x / step + 0.5)
        return min(max(q, -self.force_max), self.force_max)


@dataclass(frozen=True)
class DynamicsSpec:
    """How the emulated network settles, in each board's virtual time.

    After any change of loads or stiffness, every sensed quantity approaches its new equilibrium
    as ``target + (start - target) * exp(-t / tau_ms)``, where ``t`` is counted on the clock of
    the board that reads it, from its first reading after the change (see
    :mod:`host_sdk.emulator.world`). Each reading advances the reading board's clock by
    ``read_ms`` (an HX711 at 80 samples/s blocks 12.5 ms; the default is faster so emulation
    stays quick while settle logic still has something to wait for).

    Attributes:
        tau_ms: time constant, virtual ms; 0 switches settling off (readings jump to equilibrium).
        read_ms: virtual ms one sensor reading takes (strain or displacement).
    """

    tau_ms: float = 4.0
    read_ms: int = 1

    def __post_init__(self) -> None:
        _finite("tau_ms", self.tau_ms, nonneg=True)
        if not isinstance(self.read_ms, int) or self.read_ms < 0:
            raise ConfigError(f"read_ms must be a non-negative integer, got {self.read_ms!r}")


class AdcChannel:
    """One sensor channel: a length (m) in, signed integer counts out.

    Args:
        spec: the kind of sensor.
        rng: this channel's own generator: the gain and offset are its first two draws, the
            reading noise the rest of its stream.

    Fault hooks: :meth:`stick`, :meth:`saturate`, :meth:`set_noise`, :meth:`clear_faults`.
    """

    def __init__(self, spec: AdcSpec, rng: np.random.Generator) -> None:
        self.spec = spec
        self.true_gain = float(spec.gain * (1.0 + spec.gain_error * rng.standard_normal()))
        self.offset = float(spec.offset_std * rng.standard_normal())
        self.noise = float(spec.noise)
        self._noise_rng = rng
        self._normals: list[float] = []  # the stream's next draws, taken in blocks
        self._next = 0
        self._hi = 2 ** (spec.bits - 1) - 1
        self._lo = -(2 ** (spec.bits - 1))
        self._stuck: int | None = None
        self._stick_next = False
        self._saturated = 0
        self._last: int = 0

    @property
    def limits(self) -> tuple[int, int]:
        """The smallest and largest count the ADC can report."""
        return self._lo, self._hi

    def counts(self, length: float) -> int:
        """The reading for ``length`` metres (one noise draw when the channel is noisy)."""
        x: float = length / self.true_gain + self.offset
        if self.noise > 0.0:
            if self._next >= len(self._normals):
                # a block of draws is the same sequence as as many single draws
                self._normals = self._noise_rng.standard_normal(_NOISE_BLOCK).tolist()
                self._next = 0
            x += self.noise * float(self._normals[self._next])
            self._next += 1
        c: int
        if x != x or x in (math.inf, -math.inf):
            c = self._hi if x > 0 else self._lo
        else:
            c = math.floor(x + 0.5)
            c = self._lo if c < self._lo else self._hi if c > self._hi else c
        if self._saturated:
            c = self._hi if self._saturated > 0 else self._lo
        if self._stick_next:
            self._stick_next = False
            self._stuck = c
        if self._stuck is not None:
            c = self._stuck
        self._last = c
        return c

    def length(self, counts: int) -> float:
        """The length (m) that ideal, noise-free counts would mean with the true gain."""
        return (counts - self.offset) * self.true_gain

    def stick(self, counts: int | None = None) -> None:
        """Fault: report ``counts`` forever, or (None) freeze at the next reading."""
        if counts is None:
            self._stuck = None
            self._stick_next = True
        else:
            self._stuck = int(min(max(int(counts), self._lo), self._hi))
            self._stick_next = False

    def saturate(self, sign: int = 1) -> None:
        """Fault: report the full-scale count (``sign`` > 0) or the most negative one."""
        self._saturated = 1 if sign > 0 else -1

    def set_noise(self, noise: float) -> None:
        """Fault (or repair): change the noise of one reading to ``noise`` counts rms."""
        self.noise = _finite("noise", noise, nonneg=True)

    def clear_faults(self) -> None:
        """Undo :meth:`stick`, :meth:`saturate` and :meth:`set_noise`."""
        self._stuck = None
        self._stick_next = False
        self._saturated = 0
        self.noise = float(self.spec.noise)


class StiffnessActuator:
    """One bond's stiffness actuator.

    Args:
        spec: the actuator specification (range, resolution, curve).
        k_init: the bond's stiffness before the first command, N/m.

    Fault hooks: :meth:`stall` (commands are ignored), :meth:`limit` (only part of the command
    range is reachable), :meth:`clear_faults`.
    """

    def __init__(self, spec: ActuatorSpec, k_init: float) -> None:
        self.spec = spec
        self.k = float(k_init)
        self.cmd: float | None = None
        self.commands = 0
        self._stalled = False
        self._range = (spec.cmd_min, spec.cmd_max)

    def command(self, cmd: float) -> float:
        """Drive the actuator to ``cmd`` µs; return the stiffness it now has (N/m)."""
        c = _finite("stiffness command", cmd)
        self.commands += 1
        if self._stalled:
            return self.k
        q = self.spec.saturate_cmd(self.spec.quantise_cmd(c))
        q = min(max(q, self._range[0]), self._range[1])
        self.cmd = q
        self.k = self.spec.stiffness_of(q)
        return self.k

    def stall(self) -> None:
        """Fault: the actuator stops moving; it keeps its present stiffness."""
        self._stalled = True

    def limit(self, lo: float, hi: float) -> None:
        """Fault: only the fraction ``[lo, hi]`` (0 ... 1) of the command range is reachable."""
        a = _finite("lo", lo)
        b = _finite("hi", hi)
        if not 0.0 <= a < b <= 1.0:
            raise ConfigError(f"actuator limit needs 0 <= lo < hi <= 1, got lo={lo}, hi={hi}")
        span = self.spec.cmd_max - self.spec.cmd_min
        self._range = (self.spec.cmd_min + a * span, self.spec.cmd_min + b * span)

    def clear_faults(self) -> None:
        """Undo :meth:`stall` and :meth:`limit` (the next command moves it again)."""
        self._stalled = False
        self._range = (self.spec.cmd_min, self.spec.cmd_max)


class ForceActuator:
    """One node's force actuator (two axes).

    Args:
        spec: the actuator specification (``force_max``, ``force_resolution``).
    """

    def __init__(self, spec: ActuatorSpec) -> None:
        self.spec = spec
        self.force = (0.0, 0.0)
        self.commands = 0

    def command(self, fx: float, fy: float) -> tuple[float, float]:
        """Request ``(fx, fy)`` N; return the force actually applied."""
        x = _finite("fx", fx)
        y = _finite("fy", fy)
        self.commands += 1
        self.force = (self.spec.quantise_force(x), self.spec.quantise_force(y))
        return self.force
