# Every MicroPython/CPython difference of the firmware lives in this module. The other modules
# import these names and never probe the interpreter themselves, so the code that runs on a
# board is the code that the host tests run.
import os
import struct
from array import array

try:
    from micropython import const, kbd_intr

    MICROPYTHON = True
except ImportError:
    MICROPYTHON = False

    def const(x):
        # CPython: the compile-time constant marker is the identity
        return x

    def kbd_intr(ch):
        # CPython: Ctrl-C belongs to the host terminal; nothing to switch
        return None


try:
    from binascii import crc32
except ImportError:
    # A port built without binascii.crc32: the same ZIP checksum, bit by bit
    def crc32(data, crc=0):
        crc = ~crc & 0xFFFFFFFF
        for b in data:
            crc ^= b
            for _ in range(8):
                crc = (crc >> 1) ^ (0xEDB88320 & -(crc & 1))
        return ~crc & 0xFFFFFFFF


# MicroPython's tick counters wrap at 2**30 on every port; the host clocks follow the same rule
_TICKS_PERIOD = const(0x40000000)
_TICKS_HALF = const(0x20000000)


try:
    from time import ticks_ms as _ticks_ms
except ImportError:
    from time import monotonic as _monotonic

    def _ticks_ms():
        return int(_monotonic() * 1000) & (_TICKS_PERIOD - 1)


def ticks_ms():
    # a wrapping millisecond counter (only bench and HAL code use it; the logic asks the HAL)
    return _ticks_ms()


def ticks_diff(a, b):
    # signed difference a - b of two wrapping tick values (valid for |a - b| < 2**29 ms)
    return ((a - b + _TICKS_HALF) & (_TICKS_PERIOD - 1)) - _TICKS_HALF


_F32 = array("f", [0.0])
_INF_BE = b"\x7f\x80\x00\x00"
_NINF_BE = b"\xff\x80\x00\x00"


def f32(x):
    # round a float to the nearest float32, as a float32 board stores it (overflow -> inf)
    _F32[0] = x
    return _F32[0]


def pack_f32(x):
    # 4 big-endian bytes of x rounded to float32; CPython's struct refuses values that round
    # to infinity where MicroPython (a C cast) gives +-inf: give inf on both
    try:
        return struct.pack(">f", x)
    except OverflowError:
        return _NINF_BE if x < 0 else _INF_BE


def rename(src, dst):
    # replace dst by src; POSIX and littlefs replace atomically, FAT refuses an existing dst
    try:
        os.rename(src, dst)
    except OSError:
        remove(dst)
        os.rename(src, dst)


def remove(path):
    # delete a file if it exists
    try:
        os.remove(path)
    except OSError:
        pass


def fsync(f):
    # push a written file to the medium before it is renamed into place
    f.flush()
    if not MICROPYTHON:
        os.fsync(f.fileno())
