# A minimal msgpack codec: nil, bool, int, float32/64, str, bin, array, map.
# pack() writes the smallest encoding of each value (as the msgpack reference packers do),
# every float as float32, and map keys in sorted order, so the bytes are canonical and the
# same on every interpreter. unpack() checks every length against the bytes left, bounds
# nesting and container sizes, and rejects ext types and reserved bytes.
import struct
from array import array

from .compat import pack_f32
from .commands import MAX_DEPTH, MAX_ITEMS


class DecodeError(ValueError):
    pass


def pack(obj):
    out = bytearray()
    _pack(out, obj, 0)
    return out


def _head(out, n, small_tag, small_max, t8, t16, t32):
    # a length header: fix form, or 8/16/32-bit (t8 = 0 where msgpack has no 8-bit form)
    if n <= small_max:
        out.append(small_tag | n)
    elif t8 and n < 0x100:
        out.append(t8)
        out.append(n)
    elif n < 0x10000:
        out.append(t16)
        out.extend(struct.pack(">H", n))
    else:
        out.append(t32)
        out.extend(struct.pack(">I", n))


def _pack(out, obj, depth):
    t = type(obj)
    if obj is None:
        out.append(0xC0)
    elif obj is True:
        out.append(0xC3)
    elif obj is False:
        out.append(0xC2)
    elif t is int:
        _pack_int(out, obj)
    elif t is float:
        out.append(0xCA)
        out.extend(pack_f32(obj))
    elif t is str:
        b = obj.encode()
        _head(out, len(b), 0xA0, 31, 0xD9, 0xDA, 0xDB)
        out.extend(b)
    elif t is bytes or t is bytearray or t is memoryview:
        n = len(obj)
        if n < 0x100:
            out.append(0xC4)
            out.append(n)
        elif n < 0x10000:
            out.append(0xC5)
            out.extend(struct.pack(">H", n))
        else:
            out.append(0xC6)
            out.extend(struct.pack(">I", n))
        out.extend(obj)
    elif depth >= MAX_DEPTH:
        raise ValueError("nesting too deep")
    elif t is list or t is tuple or t is array:
        _head(out, len(obj), 0x90, 15, 0, 0xDC, 0xDD)
        for x in obj:
            _pack(out, x, depth + 1)
    elif t is dict:
        _head(out, len(obj), 0x80, 15, 0, 0xDE, 0xDF)
        for k in sorted(obj):
            _pack(out, k, depth + 1)
            _pack(out, obj[k], depth + 1)
    else:
        raise ValueError("cannot pack %r" % (obj,))


def _pack_int(out, v):
    if v >= 0:
        if v < 0x80:
            out.append(v)
        elif v < 0x100:
            out.append(0xCC)
            out.append(v)
        elif v < 0x10000:
            out.append(0xCD)
            out.extend(struct.pack(">H", v))
        elif v < 0x100000000:
            out.append(0xCE)
            out.extend(struct.pack(">I", v))
        elif v < 0x10000000000000000:
            out.append(0xCF)
            out.extend(struct.pack(">Q", v))
        else:
            raise ValueError("int too large")
    elif v >= -32:
        out.append(v & 0xFF)
    elif v >= -0x80:
        out.append(0xD0)
        out.append(v & 0xFF)
    elif v >= -0x8000:
        out.append(0xD1)
        out.extend(struct.pack(">h", v))
    elif v >= -0x80000000:
        out.append(0xD2)
        out.extend(struct.pack(">i", v))
    elif v >= -0x8000000000000000:
        out.append(0xD3)
        out.extend(struct.pack(">q", v))
    else:
        raise ValueError("int too large")


def unpack(buf, n=-1):
    # decode exactly one object from buf[:n] (n = -1: all of buf); raise DecodeError if the
    # bytes are not one complete, supported msgpack value
    u = _Unpacker(buf, len(buf) if n < 0 else n)
    obj = u.obj(0)
    if u.i != u.n:
        raise DecodeError("trailing bytes")
    return obj


class _Unpacker:
    def __init__(self, buf, n):
        self.b = buf
        self.mv = memoryview(buf)
        self.n = n
        self.i = 0

    def take(self, k):
        # advance over k bytes; return their start index
        i = self.i
        if k > self.n - i:
            raise DecodeError("truncated")
        self.i = i + k
        return i

    def uint(self, k):
        i = self.take(k)
        b = self.b
        v = 0
        for j in range(i, i + k):
            v = (v << 8) | b[j]
        return v

    def sint(self, k):
        v = self.uint(k)
        if v >> (8 * k - 1):
            v -= 1 << (8 * k)
        return v

    def raw(self, k):
        i = self.take(k)
        return bytes(self.mv[i : i + k])

    def text(self, k):
        i = self.take(k)
        try:
            return str(self.mv[i : i + k], "utf-8")
        except ValueError:
            # UnicodeError / UnicodeDecodeError are ValueErrors on both interpreters
            raise DecodeError("invalid utf-8")

    def obj(self, depth):
        c = self.b[self.take(1)]
        if c < 0x80:
            return c
        if c >= 0xE0:
            return c - 0x100
        if c < 0x90:
            return self.map(c & 0x0F, depth)
        if c < 0xA0:
            return self.seq(c & 0x0F, depth)
        if c < 0xC0:
            return self.text(c & 0x1F)
        if c == 0xC0:
            return None
        if c == 0xC2:
            return False
        if c == 0xC3:
            return True
        if c == 0xCA:
            i = self.take(4)
            return struct.unpack_from(">f", self.b, i)[0]
        if c == 0xCB:
            i = self.take(8)
            return struct.unpack_from(">d", self.b, i)[0]
        if 0xCC <= c <= 0xCF:
            return self.uint(1 << (c - 0xCC))
        if 0xD0 <= c <= 0xD3:
            return self.sint(1 << (c - 0xD0))
        if 0xC4 <= c <= 0xC6:
            return self.raw(self.uint(1 << (c - 0xC4)))
        if 0xD9 <= c <= 0xDB:
            return self.text(self.uint(1 << (c - 0xD9)))
        if c == 0xDC or c == 0xDD:
            return self.seq(self.uint(2 if c == 0xDC else 4), depth)
        if c == 0xDE or c == 0xDF:
            return self.map(self.uint(2 if c == 0xDE else 4), depth)
        # 0xC1 (never used) and the ext types 0xC7-0xC9, 0xD4-0xD8
        raise DecodeError("unsupported type 0x%02x" % c)

    def count(self, k, depth, per):
        # bound a container before building it: depth, items, and one byte per element
        if depth >= MAX_DEPTH:
            raise DecodeError("nesting too deep")
        if k > MAX_ITEMS:
            raise DecodeError("container too large")
        if k * per > self.n - self.i:
            raise DecodeError("truncated")

    def seq(self, k, depth):
        self.count(k, depth, 1)
        out = []
        for _ in range(k):
            out.append(self.obj(depth + 1))
        return out

    def map(self, k, depth):
        self.count(k, depth, 2)
        out = {}
        for _ in range(k):
            key = self.obj(depth + 1)
            t = type(key)
            if t is not str and t is not int:
                raise DecodeError("map key must be str or int")
            if key in out:
                raise DecodeError("duplicate map key")
            out[key] = self.obj(depth + 1)
        return out
