# Strain channel on the microcontroller's own ADC, with oversampling.
#
# For a bridge behind an instrumentation amplifier (e.g. TI INA333, output
# biased to mid-supply) or a ratiometric Hall sensor across the bond. The
# ADC object is anything with read_u16() -> 0..65535 (machine.ADC): the RP2040
# converts with 12 bits and scales them to 16 (RP2040 datasheet, section
# "ADC and Temperature Sensor"; MicroPython machine.ADC.read_u16).
# Averaging n conversions lowers white noise by sqrt(n); the mean is returned
# in read_u16 units, rounded half up, so one count means the same for any n.
#
# The ADC object comes in through the constructor; no hardware import here.

from micropython import const

_MAX_OVERSAMPLE = const(1024)  # 1024 * 65535 stays below 2**30: a small int


def check_oversample(n):
    if not 1 <= n <= _MAX_OVERSAMPLE:
        raise ValueError("ADC oversample must be 1..%d, not %r" % (_MAX_OVERSAMPLE, n))
    return n


class AdcStrain:
    # adc: object with read_u16(); oversample: conversions averaged per read.
    def __init__(self, adc, oversample=16):
        self._adc = adc
        self._n = check_oversample(oversample)

    def read(self):
        n = self._n
        total = 0
        for _ in range(n):
            total += self._adc.read_u16()
        return (total + n // 2) // n
