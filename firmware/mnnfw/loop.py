# The serving loop: the only place that moves serial bytes. Ctrl-C is disabled while frames are
# served (a 0x03 byte inside a frame must not interrupt the board) and restored on the way out.
from .compat import kbd_intr

_CHUNK = 256


def run(hal, server):
    buf = bytearray(_CHUNK)
    mv = memoryview(buf)
    kbd_intr(-1)
    try:
        while True:
            n = hal.read(buf)
            if not n:
                continue
            out = server.feed(mv[:n])
            if out:
                hal.write(out)
            if server.want_repl:
                return
            if server.want_reboot:
                hal.reset()
                return
    finally:
        kbd_intr(3)
