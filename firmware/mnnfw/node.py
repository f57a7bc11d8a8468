# Node logic: the per-bond state of one board, the settle-and-average measurement, the in situ
# gradient accumulation and the optimiser step. Readings and time come from the HAL; nothing
# here touches a clock or a pin directly.
#
# Numbers: per-bond state lives in array('f') so every interpreter rounds it as a float32 board
# does. Values read from the arrays are combined in the interpreter's float (double on the host
# interpreters) with + - * / and sqrt only, then stored back, so CPython and the MicroPython
# unix port produce the same bits.
from array import array
from math import isfinite, sqrt

from .commands import ADAM, BAD_STATE, MAX_BONDS, MAX_ROUNDS, MAX_SAMPLE, NOT_CAPABLE, CmdError
from .compat import ticks_diff

K_MIN_DEFAULT = 0.0
K_MAX_DEFAULT = 1000.0
CMD_LO = 1000.0  # default actuator map: k_min -> 1000 us servo pulse
CMD_HI = 2000.0  # ... and k_max -> 2000 us
_THR_CAP = 0x20000000  # settle thresholds stay small ints on a 32-bit board


def _floats(n, v):
    return array("f", [v] * n)


def _thr(x):
    # smallest integer >= x (x >= 0), capped
    if x >= _THR_CAP:
        return _THR_CAP
    c = int(x)
    if c < x:
        c += 1
    return c


class Node:
    def __init__(self, hal):
        self.hal = hal
        c = hal.caps()
        self.n_strain = int(c.get("strain", 0))
        self.n_act = int(c.get("stiffness", 0))
        self.has_force = bool(c.get("force", False))
        self.has_disp = bool(c.get("disp", False))
        self.nd = 2 if self.has_disp else 0
        self.node_id = -1
        self.configured = False
        # optimiser: Adam step count and the running products b1**t, b2**t
        self.t = 0
        self.opt = _floats(2, 1.0)
        self.last_step = -1
        # displacement sensor calibration (m per count), tare, and the raw sums of the last
        # SAMPLE (converted only when READ_OUTPUT asks, so sampling allocates no floats for it)
        self.disp_gain = _floats(2, 1.0)
        self.disp_zero = _floats(2, 0.0)
        self.u_sum = array("i", [0, 0])
        self.u_n = 0
        self.seen = bytearray(MAX_SAMPLE // 8)
        self.unsettled = 0
        self.orphans = 0
        self.updates = 0
        self.settled = False
        self.ms = 0
        self.set_bonds([])

    # -- state ---------------------------------------------------------------------------

    def caps(self):
        return {
            "strain": self.n_strain,
            "stiffness": self.n_act,
            "force": self.has_force,
            "disp": self.has_disp,
        }

    def set_bonds(self, bonds):
        # own these bond ids; every per-bond value returns to its default
        nb = len(bonds)
        self.nb = nb
        self.bonds = list(bonds)
        self.ch = array("B", range(nb))
        self.act = array("B", range(nb))
        self.gain = _floats(nb, 1.0)
        self.zero = _floats(nb, 0.0)
        self.k_min = _floats(nb, K_MIN_DEFAULT)
        self.k_max = _floats(nb, K_MAX_DEFAULT)
        self.k = _floats(nb, K_MIN_DEFAULT)
        self.m = _floats(nb, 0.0)
        self.v = _floats(nb, 0.0)
        self.s_fwd = _floats(nb, 0.0)
        self.s_adj = _floats(nb, 0.0)
        self.acc = _floats(nb, 0.0)
        self.cmd = _floats(nb, 0.0)
        self.tables = [None] * nb
        # integer work arrays: one slot per bond, then the two displacement axes
        w = nb + 2
        self.cur = array("i", [0] * w)
        self.prev = array("i", [0] * w)
        self.thr = array("i", [0] * w)
        self.retune()
        self.reset_opt()
        self.clear_acc(self.last_step)

    def retune(self):
        # forget the settle thresholds (after the gains change)
        self.thr_n = 0
        self.thr_tol = 0.0

    def reset_opt(self):
        self.t = 0
        self.opt[0] = 1.0
        self.opt[1] = 1.0
        for i in range(self.nb):
            self.m[i] = 0.0
            self.v[i] = 0.0

    def clear_acc(self, step):
        # forget the gradient accumulated so far; the next samples belong to `step`
        self.acc_step = step
        self.count = 0
        self.fwd_step = -1
        self.fwd_sample = -1
        for i in range(self.nb):
            self.acc[i] = 0.0
        s = self.seen
        for i in range(len(s)):
            s[i] = 0

    # -- measurement ---------------------------------------------------------------------

    def _read(self, s, n, lo=0):
        # sum n readings of the strain channels from bond lo on (lo = nb: none) and of the
        # displacement axes into s
        hal = self.hal
        ch = self.ch
        nb = self.nb
        w = nb + self.nd
        for i in range(lo, w):
            s[i] = 0
        for _ in range(n):
            for i in range(lo, nb):
                s[i] += hal.read_strain(ch[i])
            if w > nb:
                x, y = hal.read_disp()
                s[nb] += x
                s[nb + 1] += y

    def measure(self, n, tol, timeout_ms, period_ms, lo=0):
        # Rounds of n readings per channel until two successive round means differ by less
        # than tol metres on every channel (settled) or timeout_ms has passed (not settled).
        # The last round's sums stay in self.cur. lo = nb measures the displacement sensor alone.
        nb = self.nb
        thr = self.thr
        if n != self.thr_n or tol != self.thr_tol:
            # |mean - prev mean| * |gain| < tol  <=>  |sum - prev sum| < tol * n / |gain|
            for i in range(nb):
                thr[i] = _thr(tol * n / abs(self.gain[i]))
            for j in range(self.nd):
                thr[nb + j] = _thr(tol * n / abs(self.disp_gain[j]))
            self.thr_n = n
            self.thr_tol = tol
        self.settled = self.settle(n, thr, timeout_ms, period_ms, lo)
        if self.nd:
            cur = self.cur
            self.u_sum[0] = cur[nb]
            self.u_sum[1] = cur[nb + 1]
            self.u_n = n

    def settle(self, n, thr, timeout_ms, period_ms, lo=0):
        # Rounds of n readings per channel (from bond lo on) until two successive rounds' sums
        # differ by less than thr[i] counts on every channel, or timeout_ms passes. The round
        # count is bounded too, so a stuck clock cannot hang the board. The last round's sums
        # end in self.cur, the time taken in self.ms; returns whether they settled.
        hal = self.hal
        w = self.nb + self.nd
        rounds = timeout_ms // (period_ms if period_ms > 0 else 1) + 2
        if rounds > MAX_ROUNDS:
            rounds = MAX_ROUNDS
        cur = self.cur
        prev = self.prev
        t0 = hal.ticks_ms()
        settled = False
        r = 0
        while True:
            self._read(cur, n, lo)
            r += 1
            if r > 1:
                settled = True
                for i in range(lo, w):
                    d = cur[i] - prev[i]
                    if d < 0:
                        d = -d
                    if d >= thr[i]:
                        settled = False
                        break
                if settled:
                    break
            if r >= rounds or ticks_diff(hal.ticks_ms(), t0) >= timeout_ms:
                break
            cur, prev = prev, cur
            if period_ms > 0:
                hal.sleep_ms(period_ms)
        self.cur = cur
        self.prev = prev
        self.ms = ticks_diff(hal.ticks_ms(), t0)
        if not settled:
            self.unsettled += 1
        return settled

    def tare(self, n):
        # zero = mean raw reading of every channel, with no load applied
        s = self.cur
        self._read(s, n)
        nb = self.nb
        for i in range(nb):
            self.zero[i] = s[i] / n
        for j in range(self.nd):
            self.disp_zero[j] = s[nb + j] / n

    def read_output(self, n, tol, timeout_ms, period_ms):
        # node displacement (m): the last settled measurement (n = 0), n fresh readings
        # (tol = 0), or n readings per round once they have settled to tol
        if not self.has_disp:
            raise CmdError(NOT_CAPABLE, "board has no displacement sensor")
        if n and tol > 0.0:
            self.measure(n, tol, timeout_ms, period_ms, self.nb)
            n = 0
        if n == 0:
            n = self.u_n
            if not n:
                raise CmdError(BAD_STATE, "no SAMPLE yet: ask for n >= 1 readings")
            sx = self.u_sum[0]
            sy = self.u_sum[1]
        else:
            sx = 0
            sy = 0
            for _ in range(n):
                x, y = self.hal.read_disp()
                sx += x
                sy += y
        g = self.disp_gain
        z = self.disp_zero
        return g[0] * (sx / n - z[0]), g[1] * (sy / n - z[1])

    # -- phases --------------------------------------------------------------------------

    def sample_fwd(self, step, sample, n, tol, timeout_ms, period_ms):
        if step <= self.last_step:
            raise CmdError(BAD_STATE, "step %d already applied (last %d)" % (step, self.last_step))
        if step == self.acc_step and self.seen[sample >> 3] & (1 << (sample & 7)):
            raise CmdError(BAD_STATE, "sample %d of step %d already accumulated" % (sample, step))
        if step != self.acc_step:
            self.clear_acc(step)
        self.fwd_sample = -1
        self.measure(n, tol, timeout_ms, period_ms)
        s = self.cur
        for i in range(self.nb):
            self.s_fwd[i] = self.gain[i] * (s[i] / n - self.zero[i])
        if self.settled:
            self.fwd_step = step
            self.fwd_sample = sample

    def sample_adj(self, step, sample, n, tol, timeout_ms, period_ms, alpha, incremental):
        if step != self.fwd_step or sample != self.fwd_sample or self.fwd_sample < 0:
            self.orphans += 1
            raise CmdError(BAD_STATE, "ADJ without a settled FWD for step %d sample %d" % (step, sample))
        self.measure(n, tol, timeout_ms, period_ms)
        s = self.cur
        nb = self.nb
        settled = self.settled
        s_fwd = self.s_fwd
        s_adj = self.s_adj
        acc = self.acc
        for i in range(nb):
            e = self.gain[i] * (s[i] / n - self.zero[i])
            sf = s_fwd[i]
            if incremental:
                e = e - sf
            s_adj[i] = e
            if settled:
                acc[i] = acc[i] + sf * s_adj[i] / alpha
        if not settled:
            # the FWD stays valid: the host may repeat the ADJ
            return
        self.count += 1
        self.seen[sample >> 3] |= 1 << (sample & 7)
        self.fwd_sample = -1

    # -- update and actuators ------------------------------------------------------------

    def update(self, step, count, lr, opt, b1, b2, eps):
        # apply the mean accumulated gradient once per step; False if step was already applied
        if step <= self.last_step:
            return False
        have = self.count if self.acc_step == step else 0
        if have != count:
            raise CmdError(BAD_STATE, "step %d has %d samples, UPDATE says %d" % (step, have, count))
        k = self.k
        if opt == ADAM:
            self.t += 1
            o = self.opt
            o[0] = o[0] * b1
            o[1] = o[1] * b2
            c1 = 1.0 - o[0]
            c2 = 1.0 - o[1]
        for i in range(self.nb):
            g = self.acc[i] / count
            if not isfinite(g):
                continue
            old = k[i]
            if opt == ADAM:
                mi = b1 * self.m[i] + (1.0 - b1) * g
                vi = b2 * self.v[i] + (1.0 - b2) * g * g
                self.m[i] = mi
                self.v[i] = vi
                mhat = mi / c1
                vhat = vi / c2
                new = old - lr * mhat / (sqrt(vhat) + eps)
            else:
                new = old - lr * g
            if new != new:
                new = old
            lo = self.k_min[i]
            hi = self.k_max[i]
            if new < lo:
                new = lo
            elif new > hi:
                new = hi
            k[i] = new
        self.last_step = step
        self.updates += 1
        self.clear_acc(step)
        self.drive()
        return True

    def act_cmd(self, i):
        # actuator command for bond i: piecewise-linear table, clamped to the table's range
        k = self.k[i]
        t = self.tables[i]
        if t is None:
            lo = self.k_min[i]
            hi = self.k_max[i]
            c = CMD_LO
            if hi > lo:
                c = CMD_LO + (CMD_HI - CMD_LO) * (k - lo) / (hi - lo)
            c_lo = CMD_LO
            c_hi = CMD_HI
        else:
            m = len(t)
            if k <= t[0]:
                c = t[1]
            elif k >= t[m - 2]:
                c = t[m - 1]
            else:
                j = 2
                while t[j] < k:
                    j += 2
                if t[j] == k:
                    c = t[j + 1]
                else:
                    ka = t[j - 2]
                    ca = t[j - 1]
                    c = ca + (t[j + 1] - ca) * (k - ka) / (t[j] - ka)
            c_lo = t[1]
            c_hi = t[1]
            for j in range(3, m, 2):
                if t[j] < c_lo:
                    c_lo = t[j]
                if t[j] > c_hi:
                    c_hi = t[j]
        if not c >= c_lo:
            c = c_lo
        elif c > c_hi:
            c = c_hi
        return c

    def drive(self):
        # send every owned bond's command to its stiffness actuator
        hal = self.hal
        for i in range(self.nb):
            self.cmd[i] = self.act_cmd(i)
            hal.set_stiffness_cmd(self.act[i], self.cmd[i])

    # -- persistence ---------------------------------------------------------------------

    def record(self):
        # everything that must survive a power cut (the accumulator does not: a reboot
        # mid-step shows in the boot counter and the host repeats the step)
        return {
            "node": self.node_id,
            "configured": self.configured,
            "bonds": self.bonds,
            "ch": list(self.ch),
            "act": list(self.act),
            "gain": self.gain,
            "zero": self.zero,
            "k_min": self.k_min,
            "k_max": self.k_max,
            "k": self.k,
            "m": self.m,
            "v": self.v,
            "tables": self.tables,
            "t": self.t,
            "opt": self.opt,
            "step": self.last_step,
            "disp_gain": self.disp_gain,
            "disp_zero": self.disp_zero,
        }

    def restore(self, r):
        # load a record written by record(); raise ValueError if it does not fit
        bonds = r["bonds"]
        if type(bonds) is not list or len(bonds) > MAX_BONDS:
            raise ValueError("bonds")
        self.set_bonds(bonds)
        nb = self.nb
        for name in ("gain", "zero", "k_min", "k_max", "k", "m", "v"):
            _load(getattr(self, name), r[name], nb)
        _load(self.opt, r["opt"], 2)
        _load(self.disp_gain, r["disp_gain"], 2)
        _load(self.disp_zero, r["disp_zero"], 2)
        for name in ("ch", "act"):
            src = r[name]
            if type(src) is not list or len(src) != nb:
                raise ValueError(name)
            dst = getattr(self, name)
            for i in range(nb):
                x = _int(src[i])
                if x < 0 or x > 255:
                    raise ValueError(name)
                dst[i] = x
        tables = r["tables"]
        if type(tables) is not list or len(tables) != nb:
            raise ValueError("tables")
        for i in range(nb):
            t = tables[i]
            if t is not None:
                if type(t) is not list or len(t) < 4 or len(t) % 2:
                    raise ValueError("table")
                self.tables[i] = array("f", t)
        self.t = _int(r["t"])
        self.last_step = _int(r["step"])
        self.node_id = _int(r["node"])
        self.configured = r["configured"] is True
        self.clear_acc(self.last_step)


def _load(dst, src, n):
    if type(src) is not list or len(src) != n:
        raise ValueError("length")
    for i in range(n):
        x = src[i]
        if type(x) is not float:
            raise ValueError("float")
        dst[i] = x


def _int(x):
    if type(x) is not int:
        raise ValueError("int")
    return x
