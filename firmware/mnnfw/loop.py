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
            try:
                n = hal.read(buf)
            except OSError:
                # a serial hiccup (USB re-enumeration): the host retries what was lost
                continue
            if not n:
                continue
            try:
                out = server.feed(mv[:n])
            except MemoryError:
                # out of heap in the middle of a frame: that frame is lost, the host retries it
                continue
            if out:
                try:
                    hal.write(out)
                except OSError:
                    pass
            if server.want_repl:
                return
            if server.want_reboot:
                hal.reset()
                return
    finally:
        kbd_intr(3)
