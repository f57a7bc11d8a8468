# HX711 24-bit bridge ADC, bit-banged on two GPIO pins.
#
# Datasheet: Avia Semiconductor, "HX711 24-Bit Analog-to-Digital Converter (ADC)
# for Weigh Scales". The chip has no registers. DOUT stays high while a
# conversion runs and goes low when a result is ready ("Serial Interface").
# Each PD_SCK pulse then shifts one bit out on DOUT, MSB first, 24 bits of
# two's complement. 1 to 3 more pulses choose the input and gain of the NEXT
# conversion (table "Input Channel and Gain Selection"), and the 25th pulse
# pulls DOUT high again.
# PD_SCK high for more than 60 us powers the chip down; PD_SCK low powers it
# up again, reset to channel A, gain 128 ("Reset and Power-Down").
#
# The driver gets its pins and a sleep function in the constructor and imports
# no hardware module, so the host tests run it on simulated pins.

from micropython import const

_DATA_BITS = const(24)
_SIGN_BIT = const(0x800000)
_WRAP = const(0x1000000)
# Output codes at the ends of the input range (datasheet: 800000h for
# inputs below -0.5*AVDD/gain, 7FFFFFh above +0.5*AVDD/gain).
_CODE_MAX = const(0x7FFFFF)
_CODE_MIN = const(-0x800000)
# Total PD_SCK pulses per read, by what the next conversion measures.
_PULSES_A128 = const(25)
_PULSES_B32 = const(26)
_PULSES_A64 = const(27)
# Output settling after power-up, reset, or a gain/channel change: 400 ms at
# 10 SPS and 50 ms at 80 SPS, i.e. 4 output periods at either rate
# ("Electrical Characteristics", output settling time).
_SETTLE_READS = const(4)


class HX711:
    # dout: input pin wired to DOUT; sck: output pin wired to PD_SCK.
    # sleep_ms(ms): wait function (time.sleep_ms on a board).
    # gain: 128 or 64 (channel A) or 32 (channel B).
    # timeout_ms: longest wait for data ready before OSError (10 SPS gives a
    # result every 100 ms, so 1000 ms only trips on a dead or unwired chip).
    # irq_off()/irq_on(state): optional machine.disable_irq/enable_irq, so no
    # interrupt can stretch a PD_SCK high phase past 60 us (a power-down).
    def __init__(self, dout, sck, sleep_ms, gain=128, timeout_ms=1000, irq_off=None, irq_on=None):
        if (irq_off is None) != (irq_on is None):
            raise ValueError("HX711: give both irq_off and irq_on, or neither")
        if not 1 <= timeout_ms <= 60000:
            raise ValueError("HX711: timeout_ms must be 1..60000")
        self._dout = dout
        self._sck = sck
        self._sleep_ms = sleep_ms
        self._timeout_ms = timeout_ms
        self._irq_off = irq_off
        self._irq_on = irq_on
        self._pulses = _PULSES_A128
        self.set_gain(gain)
        sck.value(0)

    def set_gain(self, gain):
        # Takes effect after the next conversion; the results before the new
        # setting has settled are discarded.
        if gain == 128:
            self._pulses = _PULSES_A128
        elif gain == 64:
            self._pulses = _PULSES_A64
        elif gain == 32:
            self._pulses = _PULSES_B32
        else:
            raise ValueError("HX711: gain must be 128, 64 or 32, not %r" % (gain,))
        self.gain = gain
        # The chip state is unknown after construction too (a soft reset of the
        # board does not reset the HX711), so settle in every case.
        self._discard = _SETTLE_READS

    def ready(self):
        return self._dout.value() == 0

    def power_down(self):
        # A rising edge and PD_SCK left high: the chip sleeps after 60 us.
        self._sck.value(0)
        self._sck.value(1)

    def power_up(self):
        # Back to channel A, gain 128: re-select the gain and let it settle.
        self._sck.value(0)
        self._discard = _SETTLE_READS

    def read(self):
        # One settled conversion as a signed int. Raises OSError when DOUT does
        # not signal data ready within timeout_ms, or when the input is outside
        # the range of the chosen gain (the code sticks at a full-scale end).
        while self._discard:
            self._convert()
            self._discard -= 1
        value = self._convert()
        if value == _CODE_MAX or value == _CODE_MIN:
            raise OSError("HX711: input out of range at gain %d (code %d)" % (self.gain, value))
        return value

    def _wait_ready(self):
        waited = 0
        while self._dout.value():
            if waited >= self._timeout_ms:
                raise OSError("HX711: no data ready after %d ms (check DOUT/PD_SCK wiring and power)"
                              % waited)
            self._sleep_ms(1)
            waited += 1

    def _convert(self):
        self._wait_ready()
        state = self._irq_off() if self._irq_off is not None else 0
        value = 0
        # DOUT is valid at most 0.1 us after the rising edge (T2) and held until
        # the next one; PD_SCK high and low each >= 0.2 us (T3, T4, "Serial
        # Interface" timing), which a MicroPython pin write always exceeds.
        for _ in range(_DATA_BITS):
            self._sck.value(1)
            self._sck.value(0)
            value = (value << 1) | self._dout.value()
        for _ in range(self._pulses - _DATA_BITS):
            self._sck.value(1)
            self._sck.value(0)
        if self._irq_on is not None:
            self._irq_on(state)
        if value & _SIGN_BIT:
            value -= _WRAP
        return value
