# Frames on the wire: COBS(payload + CRC32(payload) little-endian) followed by one 0x00 byte.
# The deframer works in one preallocated buffer and decodes COBS in place, so receiving a frame
# allocates nothing but the small memoryview handed to the caller.
from .compat import crc32
from .commands import MAX_FRAME

# COBS adds one code byte per 254 data bytes, plus one
MAX_ENCODED = MAX_FRAME + MAX_FRAME // 254 + 1


def cobs_encode(data):
    # canonical COBS: a run of 254 non-zero bytes at the very end gets no trailing code byte
    out = bytearray(1)
    ci = 0
    code = 1
    for b in data:
        if code == 0xFF:
            out[ci] = 0xFF
            ci = len(out)
            out.append(0)
            code = 1
        if b == 0:
            out[ci] = code
            ci = len(out)
            out.append(0)
            code = 1
        else:
            out.append(b)
            code += 1
    out[ci] = code
    return out


def cobs_decode(buf, n):
    # decode buf[:n] in place; return the decoded length, or -1 if the block codes are invalid
    i = 0
    o = 0
    while i < n:
        code = buf[i]
        if code == 0:
            return -1
        i += 1
        end = i + code - 1
        if end > n:
            return -1
        while i < end:
            buf[o] = buf[i]
            o += 1
            i += 1
        if code != 0xFF and i < n:
            buf[o] = 0
            o += 1
    return o


def encode_frame(payload):
    # the bytes of one frame (payload must leave room for the CRC within MAX_FRAME)
    if len(payload) + 4 > MAX_FRAME:
        raise ValueError("frame too large")
    c = crc32(payload) & 0xFFFFFFFF
    body = bytearray(payload)
    body.append(c & 0xFF)
    body.append((c >> 8) & 0xFF)
    body.append((c >> 16) & 0xFF)
    body.append(c >> 24)
    out = cobs_encode(body)
    out.append(0)
    return out


class Deframer:
    # Incremental receiver. scan() consumes bytes up to the end of one frame; after it,
    # `ready` is the payload length of a complete, CRC-checked frame (payload in buf[:ready],
    # valid until the next scan, its CRC in `crc`) or -1.
    def __init__(self):
        self.buf = bytearray(MAX_ENCODED)
        self.mv = memoryview(self.buf)
        self.n = 0
        self.over = False
        self.ready = -1
        self.crc = -1
        self.frames = 0
        self.crc_errors = 0
        self.oversize = 0

    def scan(self, data, i):
        # consume data from index i; return the index after the last byte consumed
        self.ready = -1
        buf = self.buf
        n = self.n
        end = len(data)
        while i < end:
            b = data[i]
            i += 1
            if b != 0:
                if n < MAX_ENCODED:
                    buf[n] = b
                    n += 1
                else:
                    self.over = True
                continue
            # a delimiter: finish the frame collected so far
            if self.over:
                self.oversize += 1
                self.over = False
                n = 0
                continue
            if n == 0:
                # empty frames (a run of 0x00) only resynchronise
                continue
            self.n = 0
            self._finish(n)
            return i
        self.n = n
        return i

    def _finish(self, n):
        m = cobs_decode(self.buf, n)
        if m < 5:
            self.crc_errors += 1
            return
        if m > MAX_FRAME:
            self.oversize += 1
            return
        buf = self.buf
        p = m - 4
        got = buf[p] | (buf[p + 1] << 8) | (buf[p + 2] << 16) | (buf[p + 3] << 24)
        if crc32(self.mv[:p]) & 0xFFFFFFFF != got:
            self.crc_errors += 1
            return
        self.frames += 1
        self.crc = got
        self.ready = p
