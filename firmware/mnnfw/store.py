# Persistence: one msgpack record (floats as binary float32) followed by its CRC32, written to
# a temporary file, flushed, then renamed over the old one. A power cut leaves either the old
# or the new record; a damaged main file falls back to the temporary one.
from . import mpack
from .compat import crc32, fsync, rename

STATE = "state.mp"
TMP = "state.tmp"


def join(d, name):
    if d == "" or d.endswith("/"):
        return d + name
    return d + "/" + name


class Store:
    def __init__(self, d):
        self.dir = d
        self.path = join(d, STATE)
        self.tmp = join(d, TMP)

    def load(self):
        # the last saved record (a dict), or None if there is none or it is damaged
        for p in (self.path, self.tmp):
            r = self._read(p)
            if r is not None:
                return r
        return None

    def _read(self, path):
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError:
            return None
        n = len(data) - 4
        if n < 1:
            return None
        crc = data[n] | (data[n + 1] << 8) | (data[n + 2] << 16) | (data[n + 3] << 24)
        mv = memoryview(data)
        if crc32(mv[:n]) & 0xFFFFFFFF != crc:
            return None
        try:
            r = mpack.unpack(mv, n)
        except ValueError:
            return None
        return r if type(r) is dict else None

    def save(self, record):
        data = mpack.pack(record)
        c = crc32(data) & 0xFFFFFFFF
        data.append(c & 0xFF)
        data.append((c >> 8) & 0xFF)
        data.append((c >> 16) & 0xFF)
        data.append(c >> 24)
        with open(self.tmp, "wb") as f:
            f.write(data)
            fsync(f)
        rename(self.tmp, self.path)

    def read_text(self, name, limit):
        # first line of a small text file in the store's directory, or None
        try:
            with open(join(self.dir, name), "rb") as f:
                data = f.read(limit)
        except OSError:
            return None
        try:
            s = str(data, "utf-8").strip()
        except ValueError:
            return None
        return s.split("\n")[0] if s else None
