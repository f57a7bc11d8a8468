# Half-duplex RS-485 link on a UART plus one direction pin.
#
# Transceivers such as the MAX3485 or THVD1500 have a driver enable (DE,
# active high) and a receiver enable (/RE, active low); tied together on one
# GPIO they give "high = transmit, low = receive" (MAX3485 data sheet,
# function tables). The board keeps the bus released except while it sends a
# reply, and releases it only once the UART has shifted out the last stop bit
# (machine.UART.txdone), else the end of the frame would be cut off.
#
# The UART and pin objects come in through the constructor.

from micropython import const

_BITS_PER_CHAR = const(10)  # start + 8 data + stop
_SLACK_CHARS = const(8)  # waiting beyond len(data) + 8 character times is a fault


class Rs485:
    # uart: UART opened at `baud` with timeout=0; de: output pin to DE and /RE.
    # sleep_us(us): wait function (time.sleep_us on a board).
    def __init__(self, uart, de, sleep_us, baud):
        if not 1200 <= baud <= 4000000:
            raise ValueError("RS-485: baud must be 1200..4000000, not %r" % (baud,))
        self._uart = uart
        self._de = de
        self._sleep_us = sleep_us
        # One character time in us, rounded up.
        self.char_us = (_BITS_PER_CHAR * 1000000 + baud - 1) // baud
        de.value(0)

    def read(self, buf):
        # Copy the bytes already received (at most len(buf)); never waits.
        n = self._uart.any()
        if not n:
            return 0
        if n > len(buf):
            n = len(buf)
        got = self._uart.readinto(buf, n)
        return got or 0

    def write(self, data):
        self._de.value(1)
        self._uart.write(data)
        done = False
        for _ in range(len(data) + _SLACK_CHARS):
            if self._uart.txdone():
                done = True
                break
            self._sleep_us(self.char_us)
        if not done:
            done = self._uart.txdone()
        self._de.value(0)
        if not done:
            raise OSError("RS-485: transmitter still busy after %d bytes" % len(data))
