# Board HAL: the one module of the firmware that imports `machine`.
#
# Hal(**hal_args) builds the drivers named in the board's board.cfg "hal_args"
# and offers the methods of the HAL table in docs/architecture.md. Written for
# an RP2040 board (Raspberry Pi Pico); the machine API it uses (Pin, PWM, ADC,
# UART, unique_id, reset) is the same on an ESP32, with other pin numbers.
# The wiring and the meaning of every key are in docs/hardware.md.
#
# Errors: ValueError for a bad argument, a bad configuration or a part the
# board does not have (as the emulator's HAL); OSError for a hardware fault
# (a sensor that does not answer or saturates, a stuck bus). One line each.

import binascii
import select
import sys
import time

import machine
from micropython import const

from mnnfw.adcstrain import AdcStrain
from mnnfw.dispsensor import DispSensor
from mnnfw.forceact import Coil, ForceActuator
from mnnfw.hx711 import HX711
from mnnfw.rs485 import Rs485
from mnnfw.servo import Servo

_SERVO_HZ = const(50)
_COIL_HZ = const(20000)
_RP2_PWM_SLICES = const(8)

# Default hal_args: the standard pin map of a node board (docs/hardware.md).
# "force", "disp" and "bus" are off unless given; `true` selects these pins.
STRAIN = ({"type": "hx711", "dout": 2, "sck": 3}, {"type": "hx711", "dout": 4, "sck": 5})
STIFFNESS = ({"pin": 10}, {"pin": 11})
FORCE = {"x": (16, 17), "y": (18, 19), "sleep": 20, "full_n": (0.25, 0.25), "max_n": 0.2,
         "freq": _COIL_HZ}
# "atten": None keeps the port's ADC default (RP2040: 0..3.3 V); an ESP32 needs
# 3 (ADC.ATTN_11DB) for a 0..3.3 V signal.
DISP = {"x": 26, "y": 27, "oversample": 16, "atten": None}
ADC_STRAIN = {"type": "adc", "pin": 28, "oversample": 16, "atten": None}
HX711_ARGS = {"type": "hx711", "dout": None, "sck": None, "gain": 128, "timeout_ms": 1000}
SERVO_ARGS = {"pin": None, "min_us": 1000, "max_us": 2000}
BUS = {"uart": 0, "tx": 0, "rx": 1, "de": 22, "baud": 115200}


def _merge(defaults, given, what):
    # defaults updated by the dict `given`; unknown keys are an error.
    if given is True:
        given = {}
    if not isinstance(given, dict):
        raise ValueError("hal_args: %s must be an object or true, not %r" % (what, given))
    out = dict(defaults)
    for key in given:
        if key not in defaults:
            raise ValueError("hal_args: unknown key %r in %s" % (key, what))
        out[key] = given[key]
    return out


class _Pins:
    # Hands out GPIO numbers once each and, on an RP2040, checks that PWM
    # outputs sharing a slice (GPn -> slice (n >> 1) & 7) want one frequency.
    def __init__(self, rp2):
        self._used = {}
        self._slices = {}
        self._rp2 = rp2

    def take(self, pin, what):
        if not isinstance(pin, int) or isinstance(pin, bool) or pin < 0:
            raise ValueError("hal_args: %s pin must be a GPIO number, not %r" % (what, pin))
        if pin in self._used:
            raise ValueError("hal_args: GPIO %d used by both %s and %s" % (pin, self._used[pin], what))
        self._used[pin] = what
        return machine.Pin(pin)

    def pwm(self, pin, freq, what):
        p = self.take(pin, what)
        if self._rp2:
            s = (pin >> 1) % _RP2_PWM_SLICES
            other = self._slices.get(s)
            if other is not None and other[1] != freq:
                raise ValueError("hal_args: %s (GPIO %d) shares PWM slice %d with GPIO %d at %d Hz"
                                 % (what, pin, s, other[0], other[1]))
            self._slices[s] = (pin, freq)
        return machine.PWM(p)


class _Usb:
    # USB-CDC byte stream through the REPL's stdin/stdout, non-blocking read.
    def __init__(self):
        self._in = sys.stdin.buffer
        self._out = sys.stdout.buffer
        self._poll = select.poll()
        self._poll.register(sys.stdin, select.POLLIN)
        self._one = bytearray(1)

    def read(self, buf):
        n = 0
        size = len(buf)
        while n < size:
            ready = False
            for _ in self._poll.ipoll(0):
                ready = True
            if not ready:
                break
            if not self._in.readinto(self._one):
                break
            buf[n] = self._one[0]
            n += 1
        return n

    def write(self, data):
        self._out.write(data)


class Hal:
    # strain: list of channels, each {"type": "hx711", "dout", "sck", "gain",
    #   "timeout_ms"} or {"type": "adc", "pin", "oversample"}.
    # stiffness: list of servos {"pin", "min_us", "max_us"}.
    # force, disp, bus: objects (or true for the standard pins), or null.
    # flash_dir: where the firmware keeps its records.
    def __init__(self, strain=STRAIN, stiffness=STIFFNESS, force=None, disp=None, bus=None,
                 flash_dir="/"):
        if not isinstance(flash_dir, str) or not flash_dir.startswith("/"):
            raise ValueError("hal_args: flash_dir must be an absolute path, not %r" % (flash_dir,))
        pins = _Pins(sys.platform == "rp2")
        self._flash_dir = flash_dir
        self._strain = [self._make_strain(pins, i, c)
                        for i, c in enumerate(_as_list(strain, "strain"))]
        self._servos = [self._make_servo(pins, i, c)
                        for i, c in enumerate(_as_list(stiffness, "stiffness"))]
        self._force = None
        if force is not None and force is not False:
            self._force = self._make_force(pins, _merge(FORCE, force, "force"))
        self._disp = None
        if disp is not None and disp is not False:
            self._disp = self._make_disp(pins, _merge(DISP, disp, "disp"))
        self._link = None
        if bus is not None and bus is not False and bus != "usb":
            self._link = self._make_bus(pins, _merge(BUS, bus, "bus"))

    # ---- construction ------------------------------------------------------

    def _make_strain(self, pins, i, cfg):
        what = "strain[%d]" % i
        if not isinstance(cfg, dict):
            raise ValueError("hal_args: %s must be an object, not %r" % (what, cfg))
        kind = cfg.get("type", "hx711")
        if kind == "hx711":
            c = _merge(HX711_ARGS, cfg, what)
            dout = pins.take(c["dout"], what + " dout")
            dout.init(machine.Pin.IN)
            sck = pins.take(c["sck"], what + " sck")
            sck.init(machine.Pin.OUT, value=0)
            return HX711(dout, sck, time.sleep_ms, c["gain"], c["timeout_ms"],
                         machine.disable_irq, machine.enable_irq)
        if kind == "adc":
            c = _merge(ADC_STRAIN, cfg, what)
            return AdcStrain(_adc(pins.take(c["pin"], what), c["atten"]), c["oversample"])
        raise ValueError("hal_args: %s type must be \"hx711\" or \"adc\", not %r" % (what, kind))

    def _make_servo(self, pins, i, cfg):
        what = "stiffness[%d]" % i
        c = _merge(SERVO_ARGS, cfg, what)
        return Servo(pins.pwm(c["pin"], _SERVO_HZ, what), c["min_us"], c["max_us"], _SERVO_HZ)

    def _make_force(self, pins, c):
        coils = []
        for axis in ("x", "y"):
            pair = c[axis]
            if not isinstance(pair, (list, tuple)) or len(pair) != 2:
                raise ValueError("hal_args: force %s must be [IN1, IN2] pins, not %r" % (axis, pair))
            what = "force " + axis
            in1 = pins.pwm(pair[0], c["freq"], what + " IN1")
            in2 = pins.pwm(pair[1], c["freq"], what + " IN2")
            coils.append(Coil(in1, in2, c["freq"]))
        full = c["full_n"]
        if not isinstance(full, (list, tuple)) or len(full) != 2:
            raise ValueError("hal_args: force full_n must be [x, y] in N, not %r" % (full,))
        act = ForceActuator(coils[0], coils[1], full[0], full[1], c["max_n"])
        if c["sleep"] is not None:
            # DRV8833 nSLEEP high enables the bridge; the coils start braked.
            pins.take(c["sleep"], "force sleep").init(machine.Pin.OUT, value=1)
        return act

    def _make_disp(self, pins, c):
        adc_x = _adc(pins.take(c["x"], "disp x"), c["atten"])
        adc_y = _adc(pins.take(c["y"], "disp y"), c["atten"])
        return DispSensor(adc_x, adc_y, c["oversample"])

    def _make_bus(self, pins, c):
        tx = pins.take(c["tx"], "bus tx")
        rx = pins.take(c["rx"], "bus rx")
        de = pins.take(c["de"], "bus de")
        de.init(machine.Pin.OUT, value=0)
        uart = machine.UART(c["uart"], c["baud"], tx=tx, rx=rx, timeout=0, timeout_char=0)
        return Rs485(uart, de, time.sleep_us, c["baud"])

    # ---- the HAL methods ---------------------------------------------------

    def board_id(self):
        return binascii.hexlify(machine.unique_id()).decode()

    def caps(self):
        return {"strain": len(self._strain), "stiffness": len(self._servos),
                "force": self._force is not None, "disp": self._disp is not None}

    def ticks_ms(self):
        # MicroPython's tick counter: wraps at 2**30 ms (12.4 days), like the
        # emulator's; the firmware compares ticks with ticks_diff only.
        return time.ticks_ms()

    def sleep_ms(self, ms):
        time.sleep_ms(ms)

    def read_strain(self, ch):
        return self._strain[_check_ch(ch, len(self._strain), "strain")].read()

    def set_stiffness_cmd(self, ch, cmd):
        # cmd: servo pulse width in us, clamped to that servo's min_us..max_us.
        self._servos[_check_ch(ch, len(self._servos), "stiffness")].write_us(cmd)

    def set_force(self, fx, fy):
        if self._force is None:
            raise ValueError("this board has no force actuator")
        self._force.set(fx, fy)

    def read_disp(self):
        if self._disp is None:
            raise ValueError("this board has no displacement sensor")
        return self._disp.read()

    def read(self, buf):
        if self._link is None:
            self._link = _Usb()
        return self._link.read(buf)

    def write(self, data):
        if self._link is None:
            self._link = _Usb()
        self._link.write(data)

    def flash_dir(self):
        return self._flash_dir

    def reset(self):
        machine.reset()


def _adc(pin, atten):
    if atten is None:
        return machine.ADC(pin)
    return machine.ADC(pin, atten=atten)


def _as_list(value, what):
    if value is None:
        return ()
    if not isinstance(value, (list, tuple)):
        raise ValueError("hal_args: %s must be a list, not %r" % (what, value))
    return value


def _check_ch(ch, n, what):
    if not isinstance(ch, int) or not 0 <= ch < n:
        raise ValueError("%s channel %r out of range (this board has %d)" % (what, ch, n))
    return ch
