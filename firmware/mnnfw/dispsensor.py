# 2-axis displacement sensor of a node: two analog channels, x and y.
#
# The reference build uses two ratiometric linear Hall sensors (TI DRV5055,
# output = VCC/2 + sensitivity * B, datasheet section "Magnetic Response")
# facing a magnet on the node; linear potentiometers work the same way.
# The firmware gets raw counts; the metres-per-count gain and the zero come
# from calibration (CONFIGURE disp_gain, TARE disp_zero).
# The two axes are sampled alternately so both means cover the same time
# window. Counts are read_u16 units (0..65535), averaged and rounded half up.
#
# The two ADC objects come in through the constructor; no hardware import.

from .adcstrain import check_oversample


class DispSensor:
    # adc_x, adc_y: objects with read_u16(); oversample: conversions per axis.
    def __init__(self, adc_x, adc_y, oversample=16):
        self._x = adc_x
        self._y = adc_y
        self._n = check_oversample(oversample)

    def read(self):
        n = self._n
        sx = 0
        sy = 0
        for _ in range(n):
            sx += self._x.read_u16()
            sy += self._y.read_u16()
        half = n // 2
        return (sx + half) // n, (sy + half) // n
