# One function per command: check the args (state untouched on any error), act on the node,
# return the result map. `srv` is the mnnfw.server.Server that dispatches.
from array import array

from . import FIRMWARE_VERSION
from .args import (
    as_f32,
    bad,
    check_keys,
    f32_list,
    get_bool,
    get_float,
    get_int,
    get_list,
    int_list,
)
from .commands import (
    ADAM,
    ADJ,
    BAD_STATE,
    CONFIGURE,
    DISCARD,
    FWD,
    HELLO,
    MAX_BONDS,
    MAX_N,
    MAX_PERIOD_MS,
    MAX_SAMPLE,
    MAX_STEP,
    MAX_TABLE,
    MAX_TIMEOUT_MS,
    NOT_CAPABLE,
    PROTO_VERSION,
    READ_BONDS,
    READ_OUTPUT,
    READ_RAW,
    REBOOT,
    REPL,
    SAMPLE,
    SET_ACTUATOR,
    SET_LOAD,
    SET_STIFFNESS,
    SGD,
    STATUS,
    TARE,
    UPDATE,
    CmdError,
)
from .node import CMD_HI, CMD_LO, K_MAX_DEFAULT, K_MIN_DEFAULT

BIG = 3.4028234663852886e38  # float32 max: the bound of plain float args
_NONE = ()


def hello(srv, a):
    check_keys(a, _NONE)
    n = srv.node
    return {
        "proto": PROTO_VERSION,
        "firmware": FIRMWARE_VERSION,
        "firmware_hash": srv.fw_hash,
        "board": srv.board,
        "address": srv.address,
        "node": n.node_id,
        "bonds": n.bonds,
        "caps": n.caps(),
        "boots": srv.boots,
        "step": n.last_step,
        "configured": n.configured,
    }


_CONF = (
    "address",
    "node",
    "bonds",
    "channels",
    "act_channels",
    "gain",
    "k_min",
    "k_max",
    "k",
    "act_table",
    "disp_gain",
)


def _table(t, what):
    # one calibration table: 2..MAX_TABLE points [k, cmd], k strictly increasing -> flat list
    if t is None:
        return None
    if type(t) is not list or len(t) < 2 or len(t) > MAX_TABLE:
        raise bad("%s must be null or 2..%d points [k, cmd]" % (what, MAX_TABLE))
    flat = []
    for j in range(len(t)):
        p = t[j]
        if type(p) is not list or len(p) != 2:
            raise bad("%s[%d] must be [k, cmd]" % (what, j))
        k = as_f32(p[0], what)
        c = as_f32(p[1], what)
        if k < 0.0 or (j and k <= flat[-2]):
            raise bad("%s: k must be >= 0 and strictly increasing" % what)
        flat.append(k)
        flat.append(c)
    return flat


def configure(srv, a):
    check_keys(a, _CONF)
    node = srv.node
    addr = get_int(a, "address", 0, 254, -1)
    nid = get_int(a, "node", 0, 65535, node.node_id)
    bonds = int_list(a, "bonds", -1, 0, 65535)
    fresh = False
    if bonds is None:
        bonds = node.bonds
    else:
        if len(bonds) > MAX_BONDS:
            raise bad("at most %d bonds per board" % MAX_BONDS)
        for i in range(len(bonds)):
            if bonds[i] in bonds[i + 1 :]:
                raise bad("bond %d listed twice" % bonds[i])
        fresh = bonds != node.bonds
    nb = len(bonds)
    # current values, or the defaults of a new bond list
    ch = int_list(a, "channels", nb, 0, 255)
    if ch is None:
        ch = list(range(nb)) if fresh else list(node.ch)
    act = int_list(a, "act_channels", nb, 0, 255)
    if act is None:
        act = list(range(nb)) if fresh else list(node.act)
    gain = f32_list(a, "gain", nb, -BIG, BIG, True)
    lo = f32_list(a, "k_min", nb, 0.0, BIG)
    hi = f32_list(a, "k_max", nb, 0.0, BIG)
    k = f32_list(a, "k", nb, 0.0, BIG)
    tl = get_list(a, "act_table", nb)
    tables = None
    if tl is not None:
        tables = [_table(tl[i], "act_table[%d]" % i) for i in range(nb)]
    dg = f32_list(a, "disp_gain", 2, -BIG, BIG, True)
    if lo is None:
        lo = [K_MIN_DEFAULT] * nb if fresh else list(node.k_min)
    if hi is None:
        hi = [K_MAX_DEFAULT] * nb if fresh else list(node.k_max)
    for i in range(nb):
        if lo[i] > hi[i]:
            raise bad("k_min[%d] = %s > k_max[%d] = %s" % (i, lo[i], i, hi[i]))
        if k is not None and not lo[i] <= k[i] <= hi[i]:
            raise bad("k[%d] = %s outside [%s, %s]" % (i, k[i], lo[i], hi[i]))
    # capabilities
    for i in range(nb):
        if ch[i] >= node.n_strain:
            raise CmdError(NOT_CAPABLE, "strain channel %d: board has %d" % (ch[i], node.n_strain))
        if act[i] >= node.n_act:
            raise CmdError(NOT_CAPABLE, "stiffness channel %d: board has %d" % (act[i], node.n_act))
    if dg is not None and not node.has_disp:
        raise CmdError(NOT_CAPABLE, "board has no displacement sensor")
    # commit
    if fresh:
        node.set_bonds(bonds)
    for i in range(nb):
        node.ch[i] = ch[i]
        node.act[i] = act[i]
        node.k_min[i] = lo[i]
        node.k_max[i] = hi[i]
        if gain is not None:
            node.gain[i] = gain[i]
        if tables is not None:
            node.tables[i] = None if tables[i] is None else array("f", tables[i])
        kk = node.k[i] if k is None else k[i]
        if kk < lo[i]:
            kk = lo[i]
        elif kk > hi[i]:
            kk = hi[i]
        node.k[i] = kk
    if dg is not None:
        node.disp_gain[0] = dg[0]
        node.disp_gain[1] = dg[1]
    node.retune()
    node.node_id = nid
    node.configured = True
    if addr >= 0:
        srv.cfg_address = addr
        srv.address = addr
    node.drive()
    srv.save()
    return {}


def tare(srv, a):
    check_keys(a, ("n",))
    n = get_int(a, "n", 1, MAX_N, 16)
    node = srv.node
    node.tare(n)
    srv.save()
    r = {"zero": node.zero}
    if node.has_disp:
        r["disp_zero"] = node.disp_zero
    return r


def set_load(srv, a):
    check_keys(a, ("fx", "fy"))
    fx = get_float(a, "fx", -BIG, BIG)
    fy = get_float(a, "fy", -BIG, BIG)
    if not srv.node.has_force:
        raise CmdError(NOT_CAPABLE, "board has no force actuator")
    srv.hal.set_force(fx, fy)
    return {}


_SAMPLE = ("phase", "step", "sample", "n", "tol", "timeout_ms", "period_ms", "gain", "incremental")


def sample(srv, a):
    check_keys(a, _SAMPLE)
    phase = get_int(a, "phase", FWD, ADJ)
    step = get_int(a, "step", 0, MAX_STEP)
    smp = get_int(a, "sample", 0, MAX_SAMPLE - 1)
    n = get_int(a, "n", 1, MAX_N, 4)
    tol = get_float(a, "tol", 0.0, BIG, 1e-6)
    if tol <= 0.0:
        raise bad("tol must be > 0")
    timeout = get_int(a, "timeout_ms", 0, MAX_TIMEOUT_MS, 1000)
    period = get_int(a, "period_ms", 0, MAX_PERIOD_MS, 5)
    alpha = get_float(a, "gain", 0.0, BIG, 1.0)
    if alpha <= 0.0:
        raise bad("gain must be > 0")
    inc = get_bool(a, "incremental", False)
    node = srv.node
    if phase == FWD:
        node.sample_fwd(step, smp, n, tol, timeout, period)
    else:
        node.sample_adj(step, smp, n, tol, timeout, period, alpha, inc)
    return {"settled": node.settled, "ms": node.ms, "count": node.count}


def read_output(srv, a):
    check_keys(a, ("n", "tol", "timeout_ms", "period_ms"))
    n = get_int(a, "n", 0, MAX_N, 0)
    tol = get_float(a, "tol", 0.0, BIG, 0.0)
    timeout = get_int(a, "timeout_ms", 0, MAX_TIMEOUT_MS, 1000)
    period = get_int(a, "period_ms", 0, MAX_PERIOD_MS, 5)
    if tol > 0.0 and n == 0:
        raise bad("settling (tol > 0) needs n >= 1")
    node = srv.node
    ux, uy = node.read_output(n, tol, timeout, period)
    return {"ux": ux, "uy": uy, "settled": node.settled if n == 0 or tol > 0.0 else True}


def read_bonds(srv, a):
    check_keys(a, _NONE)
    node = srv.node
    c = node.count
    grad = [node.acc[i] / c if c else 0.0 for i in range(node.nb)]
    return {
        "bonds": node.bonds,
        "k": node.k,
        "s_fwd": node.s_fwd,
        "s_adj": node.s_adj,
        "grad": grad,
        "count": c,
        "cmd": node.cmd,
        "step": node.acc_step,
    }


_UPDATE = ("step", "count", "lr", "opt", "b1", "b2", "eps")


def update(srv, a):
    check_keys(a, _UPDATE)
    step = get_int(a, "step", 0, MAX_STEP)
    count = get_int(a, "count", 1, MAX_SAMPLE)
    lr = get_float(a, "lr", 0.0, BIG)
    opt = get_int(a, "opt", SGD, ADAM, SGD)
    b1 = get_float(a, "b1", 0.0, 1.0, 0.9)
    b2 = get_float(a, "b2", 0.0, 1.0, 0.999)
    eps = get_float(a, "eps", 0.0, BIG, 1e-8)
    if b1 >= 1.0 or b2 >= 1.0 or eps <= 0.0:
        raise bad("need 0 <= b1, b2 < 1 and eps > 0")
    node = srv.node
    applied = node.update(step, count, lr, opt, b1, b2, eps)
    if applied:
        srv.save()
    return {"step": node.last_step, "applied": applied}


def set_stiffness(srv, a):
    check_keys(a, ("k",))
    node = srv.node
    k = f32_list(a, "k", node.nb, 0.0, BIG)
    if k is None:
        raise bad("missing arg 'k'")
    for i in range(node.nb):
        if not node.k_min[i] <= k[i] <= node.k_max[i]:
            raise bad("k[%d] = %s outside [%s, %s]" % (i, k[i], node.k_min[i], node.k_max[i]))
    for i in range(node.nb):
        node.k[i] = k[i]
    node.reset_opt()
    node.drive()
    srv.save()
    return {}


def status(srv, a):
    check_keys(a, _NONE)
    return srv.stats


def repl(srv, a):
    check_keys(a, _NONE)
    srv.want_repl = True
    return {}


def discard(srv, a):
    check_keys(a, ("step",))
    step = get_int(a, "step", 0, MAX_STEP)
    node = srv.node
    if step == node.acc_step:
        node.clear_acc(step)
    return {}


def reboot(srv, a):
    check_keys(a, _NONE)
    srv.want_reboot = True
    return {}


# -- calibration ------------------------------------------------------------------------------


def read_raw(srv, a):
    # raw counts of every owned strain channel and the displacement sensor, summed over n
    # readings (exact integers; mean = sum / n). n = 0 returns the last READ_RAW measurement.
    check_keys(a, ("n", "tol", "timeout_ms", "period_ms"))
    n = get_int(a, "n", 0, MAX_N, 16)
    tol = get_float(a, "tol", 0.0, BIG, 0.0)
    timeout = get_int(a, "timeout_ms", 0, MAX_TIMEOUT_MS, 1000)
    period = get_int(a, "period_ms", 0, MAX_PERIOD_MS, 5)
    if n == 0:
        if tol > 0.0:
            raise bad("settling (tol > 0) needs n >= 1")
        last = getattr(srv, "raw_last", None)
        if last is None:
            raise CmdError(BAD_STATE, "no READ_RAW measurement yet: ask for n >= 1 readings")
        return last
    node = srv.node
    if tol > 0.0:
        # settle on counts, not metres: calibration cannot rely on the gains it is measuring
        settled = node.settle(n, [tol * n] * (node.nb + node.nd), timeout, period)
        s = node.cur
    else:
        s = node.cur
        node._read(s, n)
        settled = True
    nb = node.nb
    r = {"strain": [s[i] for i in range(nb)], "n": n, "settled": settled}
    if node.has_disp:
        r["disp"] = [s[nb], s[nb + 1]]
    srv.raw_last = r
    return r


def _cmd_range(node, i):
    # the smallest and largest command bond i's actuator may get: its table's, or the default
    t = node.tables[i]
    if t is None:
        return CMD_LO, CMD_HI
    lo = t[1]
    hi = t[1]
    for j in range(3, len(t), 2):
        if t[j] < lo:
            lo = t[j]
        if t[j] > hi:
            hi = t[j]
    return lo, hi


def set_actuator(srv, a):
    # drive each owned bond's stiffness actuator to a raw command (calibration sweeps); k is
    # unchanged and nothing is persisted: the next CONFIGURE, SET_STIFFNESS, UPDATE or boot
    # drives the table's command for k again
    check_keys(a, ("cmd",))
    node = srv.node
    c = f32_list(a, "cmd", node.nb, -BIG, BIG)
    if c is None:
        raise bad("missing arg 'cmd'")
    for i in range(node.nb):
        lo, hi = _cmd_range(node, i)
        if not lo <= c[i] <= hi:
            raise bad("cmd[%d] = %s outside the actuator range [%s, %s]" % (i, c[i], lo, hi))
    hal = srv.hal
    for i in range(node.nb):
        node.cmd[i] = c[i]
        hal.set_stiffness_cmd(node.act[i], node.cmd[i])
    return {}


HANDLERS = {
    HELLO: hello,
    CONFIGURE: configure,
    TARE: tare,
    SET_LOAD: set_load,
    SAMPLE: sample,
    READ_OUTPUT: read_output,
    READ_BONDS: read_bonds,
    UPDATE: update,
    SET_STIFFNESS: set_stiffness,
    STATUS: status,
    REPL: repl,
    DISCARD: discard,
    REBOOT: reboot,
    READ_RAW: read_raw,
    SET_ACTUATOR: set_actuator,
}

# commands that name one board's own data: refused when broadcast
NOT_BROADCAST = (CONFIGURE, SET_STIFFNESS, REPL, SET_ACTUATOR)
