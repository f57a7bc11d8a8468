# Firmware test cases that run unchanged under CPython and under the MicroPython unix port.
# Under CPython the tests import this module; under MicroPython tests/mp_runner.py runs it:
#     micropython fw_cases.py CASE ARGS...      -> one JSON document on the last line
# Cases: scenario FLASH_DIR RESTART | golden VECTORS.json | fuzz N SEED FLASH_DIR
# Nothing here may use CPython-only syntax or modules.
import binascii
import json
import os
import struct
import sys

try:
    from host_sdk.firmware.mnnfw import commands as C
    from host_sdk.firmware.mnnfw import framing, mpack
    from host_sdk.firmware.mnnfw.compat import f32
    from host_sdk.firmware.mnnfw.server import Server
except ImportError:
    from mnnfw import commands as C
    from mnnfw import framing, mpack
    from mnnfw.compat import f32
    from mnnfw.server import Server


def hexf(values):
    # float32 bits of a sequence of floats, as one hex string (4 bytes each, big-endian)
    out = b""
    for x in values:
        out += struct.pack(">f", x)
    return str(binascii.hexlify(out), "ascii")


def clean_dir(d):
    try:
        os.mkdir(d)
    except OSError:
        pass
    for name in os.listdir(d):
        os.remove(d + "/" + name)


class FakeHal:
    # A board whose readings the test chooses. Each strain channel moves to its level with a
    # transient that halves every `half_ms`; `noise` adds a deterministic +-noise counts.
    # Every reading costs 1 ms of the virtual clock; sleep_ms advances it.
    def __init__(self, flash, n_strain=4, n_act=4, force=True, disp=True):
        self.flash = flash
        self.n_strain = n_strain
        self.n_act = n_act
        self.force = force
        self.disp = disp
        self.t = 0
        self.level = [0] * n_strain
        self.start = [0] * n_strain
        self.t0 = 0
        self.half_ms = 4
        self.noise = 0
        self.rng = 12345
        self.disp_level = [0, 0]
        self.cmds = []
        self.forces = []
        self.clock_stuck = False
        self.fail = None

    def board_id(self):
        return "fake-01"

    def caps(self):
        return {"strain": self.n_strain, "stiffness": self.n_act, "force": self.force, "disp": self.disp}

    def ticks_ms(self):
        return self.t

    def sleep_ms(self, ms):
        if not self.clock_stuck:
            self.t += ms

    def set_levels(self, levels):
        # the channels start moving from where they are now towards the new levels
        for ch in range(self.n_strain):
            self.start[ch] = self._value(ch)
        for ch in range(len(levels)):
            self.level[ch] = levels[ch]
        self.t0 = self.t

    def _value(self, ch):
        d = self.start[ch] - self.level[ch]
        shift = (self.t - self.t0) // self.half_ms
        if shift > 62:
            shift = 62
        if d < 0:
            return self.level[ch] - ((-d) >> shift)
        return self.level[ch] + (d >> shift)

    def read_strain(self, ch):
        if self.fail is not None:
            raise OSError(self.fail)
        v = self._value(ch)
        if not self.clock_stuck:
            self.t += 1
        if self.noise:
            self.rng = (self.rng * 1103515245 + 12345) & 0x7FFFFFFF
            v += self.rng % (2 * self.noise + 1) - self.noise
        return v

    def read_disp(self):
        return self.disp_level[0], self.disp_level[1]

    def set_stiffness_cmd(self, ch, cmd):
        self.cmds.append((ch, cmd))

    def set_force(self, fx, fy):
        self.forces.append((fx, fy))

    def flash_dir(self):
        return self.flash


class Client:
    # drives a Server through its wire interface with the firmware's own codec
    def __init__(self, server, address=0):
        self.server = server
        self.address = address
        self.seq = 100

    def call(self, cmd, args, address=None):
        self.seq += 1
        addr = self.address if address is None else address
        payload = mpack.pack([1, self.seq, addr, cmd, args])
        out = self.server.feed(framing.encode_frame(payload))
        if not out:
            return None
        d = framing.Deframer()
        d.scan(out, 0)
        msg = mpack.unpack(d.mv, d.ready)
        return msg[3], msg[4]


# -- the training scenario --------------------------------------------------------------------
# Counts: tare levels Z, per sample the forward and adjoint level offsets from Z.
N_BONDS = 3
GAIN = [2.0e-7, 5.0e-7, 1.0e-6]  # m per count
K_MIN = [100.0, 100.0, 100.0]
K_MAX = [200.0, 180.0, 190.0]
K0 = [150.0, 140.0, 160.0]
TABLE2 = [[100.0, 900.0], [150.0, 1400.0], [190.0, 2100.0]]
Z = [1200, -3400, 560]
DISP_Z = [100, -50]
DISP_GAIN = [1.0e-6, 2.0e-6]
N = 4
TOL = 1.0e-9
STEPS = [
    # ("sample", step, sample, forward offsets, adjoint offsets, alpha, incremental)
    ("sample", 0, 0, [3000, -1500, 700], [-800, 2500, 90], 0.5, False),
    ("sample", 0, 1, [-1200, 900, 4000], [300, -700, 1500], 0.5, True),
    ("update", 0, 2, 20000.0, C.SGD),
    ("sample", 1, 0, [2500, 2500, -2500], [1000, -1000, 500], 0.25, False),
    ("sample", 1, 1, [400, -3000, 1700], [-2000, 100, 800], 0.25, True),
    ("update", 1, 2, 2.0, C.ADAM),
    ("restart",),
    ("sample", 2, 0, [5000, 4000, 3000], [6000, 5000, -4000], 1.0, False),
    ("update", 2, 1, 2.0, C.ADAM),
    ("sample", 3, 0, [5000, 4000, 3000], [6000, 5000, -4000], 1.0, False),
    ("update", 3, 1, 1.0e9, C.SGD),
]
ADAM_B = (0.9, 0.999, 1.0e-8)


def _configure_args():
    return {
        "bonds": [4, 9, 17],
        "node": 5,
        "gain": GAIN,
        "k_min": K_MIN,
        "k_max": K_MAX,
        "k": K0,
        "act_table": [None, None, TABLE2],
        "disp_gain": DISP_GAIN,
    }


def node_state(node):
    return {
        "k": hexf(node.k),
        "m": hexf(node.m),
        "v": hexf(node.v),
        "opt": hexf(node.opt),
        "t": node.t,
        "cmd": hexf(node.cmd),
        "step": node.last_step,
    }


def scenario(flash, restart):
    # run STEPS; with restart=False the ("restart",) step is skipped. Returns a transcript.
    clean_dir(flash)
    hal = FakeHal(flash)
    srv = Server(hal)
    cl = Client(srv)
    log = []
    st, r = cl.call(C.CONFIGURE, _configure_args())
    log.append(["configure", st])
    hal.set_levels(Z)
    hal.disp_level = DISP_Z
    hal.t += 1000
    st, r = cl.call(C.TARE, {"n": 8})
    log.append(["tare", st, hexf(r["zero"]), hexf(r["disp_zero"])])
    for s in STEPS:
        if s[0] == "restart":
            if restart:
                hal = FakeHal(flash)
                hal.set_levels(Z)
                hal.t += 1000
                srv = Server(hal)
                cl = Client(srv)
                st, r = cl.call(C.HELLO, {})
                log.append(["restart", st, r["boots"], r["step"], node_state(srv.node)])
            continue
        if s[0] == "sample":
            _, step, smp, df, da, alpha, inc = s
            hal.set_levels([Z[i] + df[i] for i in range(N_BONDS)])
            hal.disp_level = [DISP_Z[0] + 17 * (smp + 1), DISP_Z[1] - 5]
            st, r = cl.call(C.SAMPLE, {"phase": C.FWD, "step": step, "sample": smp, "n": N, "tol": TOL})
            log.append(["fwd", step, smp, st, r["settled"], r["ms"], hexf(srv.node.s_fwd)])
            st, r = cl.call(C.READ_OUTPUT, {"n": 0})
            log.append(["out", st, hexf([r["ux"], r["uy"]])])
            hal.set_levels([Z[i] + da[i] for i in range(N_BONDS)])
            args = {"phase": C.ADJ, "step": step, "sample": smp, "n": N, "tol": TOL, "gain": alpha, "incremental": inc}
            st, r = cl.call(C.SAMPLE, args)
            log.append(["adj", step, smp, st, r["settled"], r["count"], hexf(srv.node.s_adj), hexf(srv.node.acc)])
        elif s[0] == "update":
            _, step, count, lr, opt = s
            st, rb = cl.call(C.READ_BONDS, {})
            log.append(["bonds", st, rb["count"], hexf(rb["grad"]), hexf(rb["k"])])
            args = {"step": step, "count": count, "lr": lr, "opt": opt}
            if opt == C.ADAM:
                args["b1"] = ADAM_B[0]
                args["b2"] = ADAM_B[1]
                args["eps"] = ADAM_B[2]
            st, r = cl.call(C.UPDATE, args)
            log.append(["update", step, st, r["applied"], node_state(srv.node)])
            # the same UPDATE again (new seq, and the same seq) changes nothing
            before = node_state(srv.node)
            st2, r2 = cl.call(C.UPDATE, args)
            cl.seq -= 1
            st3, r3 = cl.call(C.UPDATE, args)
            log.append(["again", st2, r2["applied"], st3, r3["applied"], node_state(srv.node) == before])
    log.append(["cmds", [[c, hexf([x])] for c, x in hal.cmds[-N_BONDS:]]])
    return log


# -- golden vectors ---------------------------------------------------------------------------


def from_json(v):
    # tagged JSON -> value: {"$f32": "8 hex"} is a float32, {"$bin": "hex"} bytes
    t = type(v)
    if t is dict:
        if "$f32" in v:
            return struct.unpack(">f", binascii.unhexlify(v["$f32"]))[0]
        if "$bin" in v:
            return binascii.unhexlify(v["$bin"])
        out = {}
        for k in v:
            out[k] = from_json(v[k])
        return out
    if t is list:
        return [from_json(x) for x in v]
    return v


def same(a, b):
    # equal values of equal types; floats compared by their bits (NaN, -0.0)
    if type(a) is not type(b):
        return False
    t = type(a)
    if t is float:
        return struct.pack(">d", a) == struct.pack(">d", b)
    if t is list:
        return len(a) == len(b) and all(same(a[i], b[i]) for i in range(len(a)))
    if t is dict:
        if len(a) != len(b):
            return False
        for k in a:
            if k not in b or not same(a[k], b[k]):
                return False
        return True
    return a == b


def vector_message(vec):
    if vec["kind"] == "request":
        return [1, vec["seq"], vec["address"], vec["command"], from_json(vec["args"])]
    return [1, vec["seq"], vec["address"], vec["status"], from_json(vec["result"])]


def check_vector(vec):
    wire = binascii.unhexlify(vec["wire"])
    d = framing.Deframer()
    i = 0
    payloads = []
    while i < len(wire):
        i = d.scan(wire, i)
        if d.ready >= 0:
            payloads.append(bytes(d.buf[: d.ready]))
    if vec["kind"] == "bad":
        want = vec["expect"]
        got = {"frames": len(payloads), "crc_errors": d.crc_errors, "oversize": d.oversize}
        return "ok" if got == want else "deframer counted %r, want %r" % (got, want)
    msg = vector_message(vec)
    enc = bytes(framing.encode_frame(mpack.pack(msg)))
    if enc != wire:
        return "encode gives %s" % str(binascii.hexlify(enc), "ascii")
    if len(payloads) != 1:
        return "deframer gave %d payloads" % len(payloads)
    back = mpack.unpack(payloads[0])
    if not same(back, msg):
        return "decode gives %r" % (back,)
    return "ok"


def golden(path):
    with open(path) as f:
        doc = json.load(f)
    return [[v["name"], check_vector(v)] for v in doc["vectors"]]


# -- fuzzing ------------------------------------------------------------------------------------


class Rng:
    # xorshift32: the same stream on every interpreter
    def __init__(self, seed):
        self.s = (seed & 0xFFFFFFFF) or 1

    def next(self):
        s = self.s
        s ^= (s << 13) & 0xFFFFFFFF
        s ^= s >> 17
        s ^= (s << 5) & 0xFFFFFFFF
        self.s = s
        return s

    def below(self, n):
        return self.next() % n

    def bytes(self, n):
        return bytes([self.next() & 0xFF for _ in range(n)])


_KEYS = ("phase", "step", "sample", "n", "tol", "k", "lr", "bonds", "gain", "k_min", "k_max",
         "fx", "fy", "count", "opt", "address", "act_table", "timeout_ms", "incremental", "eps", "zz")


def rand_value(r, depth):
    c = r.below(12 if depth < 3 else 8)
    if c == 0:
        return None
    if c == 1:
        return r.below(2) == 1
    if c == 2:
        return r.below(300) - 20
    if c == 3:
        return r.next() - 0x80000000
    if c == 4:
        return struct.unpack(">f", r.bytes(4))[0]
    if c == 5:
        return [0.0, -1.0, 1.0e30, float("inf"), float("-inf"), float("nan"), 150.0][r.below(7)]
    if c == 6:
        return _KEYS[r.below(len(_KEYS))]
    if c == 7:
        return r.bytes(r.below(6))
    if c < 10:
        return [rand_value(r, depth + 1) for _ in range(r.below(5))]
    d = {}
    for _ in range(r.below(5)):
        d[_KEYS[r.below(len(_KEYS))]] = rand_value(r, depth + 1)
    return d


def rand_frame(r, good, addr):
    kind = r.below(6)
    if kind == 0:
        # random bytes, sometimes with delimiters
        return r.bytes(1 + r.below(40))
    if kind == 1:
        # a good frame with one byte changed
        f = bytearray(good)
        f[r.below(len(f) - 1)] ^= 1 + r.below(255)
        return bytes(f)
    if kind == 2:
        # a truncated good frame, then its delimiter
        return good[: 1 + r.below(len(good) - 1)] + b"\x00"
    if kind == 3:
        # a valid frame with a random message
        try:
            return bytes(framing.encode_frame(mpack.pack(rand_value(r, 0))))
        except ValueError:
            return b"\x00"
    # a valid frame with a well-formed request to this board (wherever a random CONFIGURE
    # moved it) and random args
    ver = 1 if r.below(8) else r.below(4)
    cmd = r.below(15)
    args = rand_value(r, 1) if r.below(8) == 0 else {}
    if type(args) is dict:
        for _ in range(r.below(5)):
            args[_KEYS[r.below(len(_KEYS))]] = rand_value(r, 2)
    if cmd in (C.REPL, C.REBOOT):
        cmd = C.STATUS
    try:
        return bytes(framing.encode_frame(mpack.pack([ver, r.next(), addr, cmd, args])))
    except ValueError:
        return b"\x00"


def _state(srv):
    # everything a request could change, as one comparable value
    n = srv.node
    raw = b""
    for a in (n.k, n.k_min, n.k_max, n.gain, n.zero, n.acc, n.m, n.v, n.opt, n.ch, n.act, n.disp_gain):
        raw += bytes(a)
    return (raw, repr(n.bonds), repr(n.tables), n.count, n.acc_step, n.last_step, n.node_id, srv.address)


def fuzz(count, seed, flash):
    # count random frames at one configured board. After each: an error reply or a drop must
    # leave the state unchanged; the next good request is always answered.
    clean_dir(flash)
    hal = FakeHal(flash)
    hal.set_levels(Z)
    srv = Server(hal)
    cl = Client(srv)
    cl.call(C.CONFIGURE, _configure_args())
    r = Rng(seed)
    good = bytes(framing.encode_frame(mpack.pack([1, 7, 0, C.STATUS, {}])))
    stats = {"frames": 0, "replies": 0, "ok": 0, "errors": 0, "dropped": 0, "changed_on_error": 0, "unserved": 0}
    for _ in range(count):
        before = _state(srv)
        data = rand_frame(r, good, srv.address)
        out = srv.feed(data) + srv.feed(b"\x00")
        stats["frames"] += 1
        d = framing.Deframer()
        i = 0
        statuses = []
        while i < len(out):
            i = d.scan(out, i)
            if d.ready >= 0:
                statuses.append(mpack.unpack(d.mv, d.ready)[3])
        if statuses:
            stats["replies"] += 1
        if C.OK in statuses:
            stats["ok"] += 1
        elif statuses:
            stats["errors"] += 1
        else:
            stats["dropped"] += 1
        if C.OK not in statuses and _state(srv) != before:
            stats["changed_on_error"] += 1
        if srv.want_repl or srv.want_reboot:
            srv.want_repl = srv.want_reboot = False
        # a small request that changes nothing, with a fresh seq so no cached reply can answer
        cl.address = srv.address
        res = cl.call(C.READ_OUTPUT, {"n": 1})
        if res is None or res[0] != C.OK:
            stats["unserved"] += 1
    stats["counters"] = srv.stats
    return stats


def main(argv):
    case = argv[1]
    if case == "scenario":
        out = scenario(argv[2], argv[3] == "1")
    elif case == "golden":
        out = golden(argv[2])
    elif case == "fuzz":
        out = fuzz(int(argv[2]), int(argv[3]), argv[4])
    else:
        raise SystemExit("unknown case " + case)
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv)
