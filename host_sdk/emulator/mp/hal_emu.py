# HAL of an emulated node board, for the MicroPython unix port.
#
# The emulator copies this file into each emulated board's flash; board.cfg names it
# ("hal": "hal_emu") and main.py builds Hal(**hal_args). The serial stream is the process's
# stdin/stdout, which the emulator connects to the master side of a pseudo-terminal. Sensors and
# actuators live in the emulator's world, reached over a loopback TCP socket with fixed-size
# binary messages (floats as IEEE doubles, so they cross bit for bit):
#
#   request  <BBqdd  op, channel (HELLO: board address), board time ms, a, b     26 bytes
#   reply    <Bqqqq  status, v0, v1, v2, v3                                      33 bytes
#
# HELLO replies v0 strain channels, v1 stiffness channels, v2 flags (bit 0 force actuator,
# bit 1 displacement sensor, bits 8.. ms per reading), v3 the board time to start from.
# The clock is virtual: sleep_ms advances it, each reading advances it by the reading time.
# RESET asks the emulator to kill this process and start it again from its flash (the unix
# port has no machine.reset, and under `micropython -i` SystemExit only reaches the REPL).
import os
import select
import socket
import struct
import sys
import time

from micropython import const

_OP_HELLO = const(0)
_OP_STRAIN = const(1)
_OP_STIFFNESS = const(2)
_OP_FORCE = const(3)
_OP_DISP = const(4)
_OP_RESET = const(5)
_REQ = "<BBqdd"
_REP = "<Bqqqq"
_REQ_SIZE = const(26)
_REP_SIZE = const(33)
_TICKS_MASK = const(0x3FFFFFFF)
# reply status -> message (0 is ok)
_ERRORS = {
    1: "channel not wired",
    2: "not capable",
    3: "bad value",
    4: "bad request",
}


class Hal:
    # port: TCP port of the world server; address: this board's address. Both default to the
    # environment the emulator starts the process with (MNN_EMU_WORLD, MNN_EMU_BOARD), so a
    # deployed board.cfg needs no run-time values. poll_ms: longest wait of read() for a byte.
    # Other keys (a real board's pin map, when a rig's hal_args are deployed as they are) mean
    # nothing to an emulated board and are ignored.
    def __init__(self, port=None, address=None, host="127.0.0.1", poll_ms=100, **hardware):
        if port is None:
            port = os.getenv("MNN_EMU_WORLD")
        if address is None:
            address = os.getenv("MNN_EMU_BOARD")
        if port is None or address is None:
            raise OSError("hal_emu: no world server (MNN_EMU_WORLD / MNN_EMU_BOARD unset)")
        self._address = int(address)
        self._req = bytearray(_REQ_SIZE)
        self._rep = bytearray(_REP_SIZE)
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.connect(socket.getaddrinfo(host, int(port))[0][-1])
        self._t = 0
        v = self._call(_OP_HELLO, self._address, 0.0, 0.0)
        self._caps = {
            "strain": v[1],
            "stiffness": v[2],
            "force": bool(v[3] & 1),
            "disp": bool(v[3] & 2),
        }
        self._read_ms = v[3] >> 8
        self._t = v[4]
        self._poll_ms = poll_ms
        self._in = sys.stdin.buffer
        self._out = sys.stdout.buffer
        self._poll = select.poll()
        self._poll.register(sys.stdin, select.POLLIN)
        self._flash = os.getcwd()

    def _call(self, op, ch, a, b):
        # one request, one reply; raise on an error status
        struct.pack_into(_REQ, self._req, 0, op, ch, self._t, a, b)
        self._sock.write(self._req)
        got = 0
        mv = memoryview(self._rep)
        while got < _REP_SIZE:
            n = self._sock.readinto(mv[got:])
            if not n:
                raise OSError("hal_emu: world server closed the connection")
            got += n
        v = struct.unpack(_REP, self._rep)
        if v[0]:
            raise ValueError("hal_emu: " + _ERRORS.get(v[0], "error %d" % v[0]))
        return v

    def board_id(self):
        return "emu-%d" % self._address

    def caps(self):
        return dict(self._caps)

    def ticks_ms(self):
        return self._t & _TICKS_MASK

    def sleep_ms(self, ms):
        if ms > 0:
            self._t += int(ms)

    def read_strain(self, ch):
        self._t += self._read_ms
        return self._call(_OP_STRAIN, ch, 0.0, 0.0)[1]

    def set_stiffness_cmd(self, ch, cmd):
        self._call(_OP_STIFFNESS, ch, float(cmd), 0.0)

    def set_force(self, fx, fy):
        self._call(_OP_FORCE, 0, float(fx), float(fy))

    def read_disp(self):
        self._t += self._read_ms
        v = self._call(_OP_DISP, 0, 0.0, 0.0)
        return v[1], v[2]

    def read(self, buf):
        # bytes from the serial stream into buf: wait up to poll_ms for the first one, then take
        # what is already there (one byte per read: a blocking stream read would wait to fill)
        n = 0
        size = len(buf)
        mv = memoryview(buf)
        wait = self._poll_ms
        while n < size:
            ev = self._poll.poll(wait)
            if not ev:
                break
            if not ev[0][1] & select.POLLIN:
                # the terminal hung up: nothing will come, do not spin
                time.sleep_ms(self._poll_ms)
                break
            if not self._in.readinto(mv[n : n + 1]):
                break
            n += 1
            wait = 0
        return n

    def write(self, data):
        self._out.write(data)

    def flash_dir(self):
        return self._flash

    def reset(self):
        # the emulator restarts this process; wait for it (the reply is already on the wire)
        self._call(_OP_RESET, 0, 0.0, 0.0)
        while True:
            time.sleep_ms(1000)
