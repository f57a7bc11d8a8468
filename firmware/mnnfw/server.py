# The protocol core, with no I/O of its own: feed() takes any chunk of wire bytes and returns
# the bytes of the reply frames. Bad frames are counted and dropped, bad requests get an error
# reply, and the next good request is always served.
from . import mpack
from .commands import (
    BAD_ARGS,
    BAD_VERSION,
    BROADCAST,
    HW_ERROR,
    INTERNAL,
    MAX_FRAME,
    MAX_SEQ,
    OK,
    PROTO_VERSION,
    UNKNOWN_COMMAND,
    CmdError,
)
from .framing import Deframer, encode_frame
from .handlers import HANDLERS, NOT_BROADCAST
from .node import Node
from .store import Store

FW_HASH_FILE = "fw.hash"
_MSG_MAX = 100  # characters of an error message


def _one_line(e):
    s = "%s: %s" % (type(e).__name__, e)
    s = s.replace("\n", " ")
    return s[:_MSG_MAX]


class Server:
    def __init__(self, hal, fw_hash=None, address=0):
        # address: used until CONFIGURE stores one (main.py passes board.cfg's address)
        self.hal = hal
        self.board = str(hal.board_id())
        self.store = Store(hal.flash_dir())
        self.deframer = Deframer()
        self.want_repl = False
        self.want_reboot = False
        self.cfg_address = -1
        self.boots = 0
        self.bad_frames = 0
        self.frames = 0
        self.errors = 0
        self.retries = 0
        self.store_errors = 0
        self._seq = -1
        self._crc = -1
        self._reply = b""
        self.node = Node(hal)
        rec = self.store.load()
        if rec is not None:
            try:
                self._restore(rec)
            except (ValueError, TypeError, KeyError, OverflowError):
                # a record this firmware cannot use: start blank, and say so in STATUS
                self.node = Node(hal)
                self.cfg_address = -1
                self.store_errors += 1
        self.address = self.cfg_address if self.cfg_address >= 0 else address
        self.boots += 1
        if fw_hash is None:
            fw_hash = self.store.read_text(FW_HASH_FILE, 64) or "dev"
        self.fw_hash = fw_hash
        try:
            self.save()
        except OSError:
            self.store_errors += 1
        self.node.drive()

    # -- persistence ---------------------------------------------------------------------

    def _restore(self, rec):
        if rec["fmt"] != 1:
            raise ValueError("record format")
        self.node.restore(rec["node"])
        b = rec["boots"]
        a = rec["address"]
        if type(b) is not int or type(a) is not int or not -1 <= a <= 254:
            raise ValueError("record header")
        self.boots = b
        self.cfg_address = a

    def save(self):
        self.store.save(
            {"fmt": 1, "boots": self.boots, "address": self.cfg_address, "node": self.node.record()}
        )

    # -- counters ------------------------------------------------------------------------

    @property
    def stats(self):
        d = self.deframer
        n = self.node
        return {
            "frames": self.frames,
            "crc_errors": d.crc_errors,
            "oversize": d.oversize,
            "bad_frames": self.bad_frames,
            "errors": self.errors,
            "updates": n.updates,
            "unsettled": n.unsettled,
            "orphans": n.orphans,
            "retries": self.retries,
            "store_errors": self.store_errors,
            "boots": self.boots,
            "step": n.last_step,
        }

    # -- bytes in, bytes out -------------------------------------------------------------

    def feed(self, data):
        out = b""
        df = self.deframer
        i = 0
        n = len(data)
        while i < n:
            i = df.scan(data, i)
            if df.ready >= 0:
                r = self._frame(df.ready)
                if r:
                    out = r if not out else out + r
        return out

    def _frame(self, length):
        # one CRC-checked payload -> reply frame bytes, or None
        df = self.deframer
        try:
            msg = mpack.unpack(df.mv, length)
        except Exception:
            self.bad_frames += 1
            return None
        if type(msg) is not list or len(msg) != 5:
            self.bad_frames += 1
            return None
        ver = msg[0]
        seq = msg[1]
        addr = msg[2]
        cmd = msg[3]
        if (
            type(ver) is not int
            or type(seq) is not int
            or type(addr) is not int
            or type(cmd) is not int
            or seq < 0
            or seq > MAX_SEQ
            or addr < 0
            or addr > BROADCAST
        ):
            self.bad_frames += 1
            return None
        bcast = addr == BROADCAST
        if not bcast and addr != self.address:
            return None
        self.frames += 1
        crc = df.crc
        if not bcast and seq == self._seq and crc == self._crc:
            self.retries += 1
            return self._reply
        status, result = self._dispatch(ver, cmd, msg[4], bcast)
        if status != OK:
            self.errors += 1
        if bcast:
            return None
        reply = self._encode(seq, addr, status, result)
        self._seq = seq
        self._crc = crc
        self._reply = reply
        return reply

    def _dispatch(self, ver, cmd, args, bcast):
        if ver != PROTO_VERSION:
            return BAD_VERSION, "protocol version %d not supported (board speaks %d)" % (
                ver,
                PROTO_VERSION,
            )
        h = HANDLERS.get(cmd)
        if h is None:
            return UNKNOWN_COMMAND, "unknown command %d" % cmd
        if type(args) is not dict:
            return BAD_ARGS, "args must be a map"
        if bcast and cmd in NOT_BROADCAST:
            return BAD_ARGS, "command %d cannot be broadcast" % cmd
        try:
            return OK, h(self, args)
        except CmdError as e:
            return e.status, e.msg
        except (OSError, OverflowError) as e:
            return HW_ERROR, _one_line(e)
        except Exception as e:
            return INTERNAL, _one_line(e)

    def _encode(self, seq, addr, status, result):
        try:
            p = mpack.pack([PROTO_VERSION, seq, addr, status, result])
            if len(p) + 4 > MAX_FRAME:
                raise ValueError("reply too large")
        except Exception as e:
            p = mpack.pack([PROTO_VERSION, seq, addr, INTERNAL, _one_line(e)])
        return bytes(encode_frame(p))
