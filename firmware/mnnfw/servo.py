# Hobby servo on one PWM output: the stiffness actuator of a bond.
#
# A servo reads the width of a pulse repeated every 20 ms (50 Hz): about
# 1000 us at one end of its travel and 2000 us at the other (Hitec and
# TowerPro servo data sheets; "standard" servo pulse, 1.5 ms = centre).
# The driver turns a pulse width into a 16-bit duty (machine.PWM.duty_u16)
# and clamps it to the range this servo may use, so a wrong command can never
# drive the linkage into its end stops.
#
# It gets a PWM object in the constructor and imports no hardware module.

from micropython import const

_FREQ_HZ = const(50)
_DUTY_FULL = const(65535)
# Pulse widths are rounded to 0.1 us before the integer duty arithmetic, so a
# float32 board and a float64 host compute the same duty.
_TENTHS = const(10)


class Servo:
    # pwm: PWM object on the servo's signal pin.
    # min_us/max_us: safe pulse range of this servo and linkage (inclusive).
    # freq: frame rate in Hz (50 for analog servos; digital ones accept more).
    def __init__(self, pwm, min_us=1000, max_us=2000, freq=_FREQ_HZ):
        if not 20 <= freq <= 400:
            raise ValueError("servo: freq must be 20..400 Hz, not %r" % (freq,))
        period_us = 1000000 // freq
        if not 0 < min_us < max_us < period_us:
            raise ValueError("servo: need 0 < min_us < max_us < %d us, got %r..%r"
                             % (period_us, min_us, max_us))
        self._pwm = pwm
        self._period_us = period_us
        self.min_us = min_us
        self.max_us = max_us
        self.pulse_us = 0
        pwm.freq(freq)
        # No pulses until the first command: the servo stays limp at boot.
        pwm.duty_u16(0)

    def duty_for(self, us):
        # 16-bit duty for a pulse width in us (clamped), rounded half up.
        us = self.clamp(us)
        tenths = int(us * _TENTHS + 0.5)
        span = self._period_us * _TENTHS
        return (tenths * _DUTY_FULL + span // 2) // span

    def clamp(self, us):
        if us - us != 0:
            raise ValueError("servo: pulse width must be finite, not %r" % (us,))
        if us < self.min_us:
            return self.min_us
        if us > self.max_us:
            return self.max_us
        return us

    def write_us(self, us):
        # Drive the servo; returns the pulse width actually applied.
        duty = self.duty_for(us)
        self._pwm.duty_u16(duty)
        self.pulse_us = self.clamp(us)
        return self.pulse_us

    def off(self):
        # Stop the pulses: the servo no longer holds its position.
        self._pwm.duty_u16(0)
        self.pulse_us = 0
