# Force actuator of a node: one voice coil per axis (x, y), each driven by one
# channel of an H-bridge (TI DRV8833) from two PWM outputs.
#
# A voice coil's force is proportional to its current (Lorentz force, F = Kf*I)
# and changes sign with it. DRV8833 truth table, per bridge channel:
# IN1=1 IN2=0 forward, IN1=0 IN2=1 reverse, IN1=1 IN2=1 brake (slow decay),
# IN1=0 IN2=0 coast (fast decay). Driving "forward for a fraction d of each
# period, brake for the rest" (slow-decay PWM) keeps the coil current nearly
# constant within a period when the PWM period is short against the coil's
# L/R, so the mean current, and the force, are linear in d: F = full_n * d.
# full_n (force at 100 % duty) comes from calibration per axis; max_n is the
# safety limit, and a request beyond it is refused, never clipped silently.
#
# The PWM objects come in through the constructor; no hardware import here.

from micropython import const

_DUTY_FULL = const(65535)
_PWM_HZ = const(20000)  # above hearing; DRV8833 accepts PWM up to 250 kHz


class Coil:
    # One bridge channel: pwm_a on xIN1, pwm_b on xIN2.
    def __init__(self, pwm_a, pwm_b, freq=_PWM_HZ):
        self._a = pwm_a
        self._b = pwm_b
        pwm_a.freq(freq)
        pwm_b.freq(freq)
        self.drive(0)

    def levels(self, d):
        # (IN1 duty, IN2 duty) for a signed drive fraction d in [-1, 1].
        on = int(abs(d) * _DUTY_FULL + 0.5)
        if d >= 0:
            return _DUTY_FULL, _DUTY_FULL - on
        return _DUTY_FULL - on, _DUTY_FULL

    def drive(self, d):
        a, b = self.levels(d)
        self._a.duty_u16(a)
        self._b.duty_u16(b)

    def coast(self):
        # Both inputs low: bridge outputs off, the coil is free.
        self._a.duty_u16(0)
        self._b.duty_u16(0)


class ForceActuator:
    # coil_x, coil_y: Coil objects; full_x/full_y: force in N at 100 % duty of
    # that axis (> 0; swap the coil leads if the sign is wrong);
    # max_n: largest force magnitude per axis this node may apply, <= full.
    def __init__(self, coil_x, coil_y, full_x, full_y, max_n):
        if not (full_x > 0 and full_y > 0):
            raise ValueError("force actuator: full-duty forces must be > 0 N")
        if not 0 < max_n <= min(full_x, full_y):
            raise ValueError("force actuator: need 0 < max_n <= full-duty force, got %r" % (max_n,))
        self._x = coil_x
        self._y = coil_y
        self._full_x = full_x
        self._full_y = full_y
        self.max_n = max_n
        self.fx = 0.0
        self.fy = 0.0

    def check(self, f):
        if f - f != 0:
            raise ValueError("force must be finite, not %r" % (f,))
        if f > self.max_n or f < -self.max_n:
            raise ValueError("force %.4g N beyond the actuator limit of %.4g N" % (f, self.max_n))

    def set(self, fx, fy):
        # Both axes are checked before either coil changes.
        self.check(fx)
        self.check(fy)
        self._x.drive(fx / self._full_x)
        self._y.drive(fy / self._full_y)
        self.fx = fx
        self.fy = fy

    def off(self):
        self._x.coast()
        self._y.coast()
        self.fx = 0.0
        self.fy = 0.0
