"""Node logic: tare, phases, accumulation, SGD/Adam, clamping, persistence.

The training scenario of ``fw_cases.py`` runs under CPython and under MicroPython; both must
match an independent reference (float32 storage, double arithmetic, the formulas of
docs/protocol.md) bit for bit.
"""

from __future__ import annotations

import math
import struct
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fw_cases as fc
from fw_cases import C, Client, FakeHal
from host_sdk.firmware.mnnfw.server import Server
from mp_runner import run_case


def f32(x: float) -> float:
    return float(struct.unpack("<f", struct.pack("<f", x))[0])


def hexf(values: list[float]) -> str:
    return b"".join(struct.pack(">f", x) for x in values).hex()


def reference() -> dict[str, Any]:
    """The scenario's expected numbers, computed from the documented formulas."""
    n = fc.N_BONDS
    g = [f32(x) for x in fc.GAIN]
    z = [float(v) for v in fc.Z]
    k = [f32(x) for x in fc.K0]
    lo = [f32(x) for x in fc.K_MIN]
    hi = [f32(x) for x in fc.K_MAX]
    b1, b2, eps = (f32(x) for x in fc.ADAM_B)
    m = [0.0] * n
    v = [0.0] * n
    b1t = b2t = 1.0
    t = 0
    acc = [0.0] * n
    count = 0
    adj: list[list[str]] = []
    upd: list[dict[str, Any]] = []
    for s in fc.STEPS:
        if s[0] == "sample":
            _, step, smp, df, da, alpha, inc = s
            a = f32(alpha)
            sf = [f32(g[i] * ((fc.Z[i] + df[i]) - z[i])) for i in range(n)]
            sa = []
            for i in range(n):
                e = g[i] * ((fc.Z[i] + da[i]) - z[i])
                sa.append(f32(e - sf[i]) if inc else f32(e))
            acc = [f32(acc[i] + sf[i] * sa[i] / a) for i in range(n)]
            count += 1
            adj.append([hexf(sf), hexf(sa), hexf(acc)])
        elif s[0] == "update":
            _, step, cnt, lr, opt = s
            assert cnt == count
            lr = f32(lr)
            if opt == C.ADAM:
                t += 1
                b1t = f32(b1t * b1)
                b2t = f32(b2t * b2)
            for i in range(n):
                gi = acc[i] / count
                if opt == C.ADAM:
                    mi = b1 * m[i] + (1.0 - b1) * gi
                    vi = b2 * v[i] + (1.0 - b2) * gi * gi
                    m[i], v[i] = f32(mi), f32(vi)
                    new = k[i] - lr * (mi / (1.0 - b1t)) / (math.sqrt(vi / (1.0 - b2t)) + eps)
                else:
                    new = k[i] - lr * gi
                k[i] = f32(min(max(new, lo[i]), hi[i]))
            acc = [0.0] * n
            count = 0
            upd.append({"k": hexf(k), "m": hexf(m), "v": hexf(v), "opt": hexf([b1t, b2t]), "t": t})
    return {"adj": adj, "update": upd}


def digest(log: list[Any]) -> dict[str, Any]:
    """The scenario transcript's numbers in the shape of :func:`reference`."""
    fwd = [e[6] for e in log if e[0] == "fwd"]
    adj = [[fwd[j], e[6], e[7]] for j, e in enumerate(x for x in log if x[0] == "adj")]
    upd = [{key: e[4][key] for key in ("k", "m", "v", "opt", "t")} for e in log if e[0] == "update"]
    return {"adj": adj, "update": upd}


@pytest.fixture(scope="module")
def cpython_log(tmp_path_factory: pytest.TempPathFactory) -> list[Any]:
    return fc.scenario(str(tmp_path_factory.mktemp("flash")), True)


def test_scenario_matches_reference_bit_for_bit(cpython_log: list[Any]) -> None:
    assert digest(cpython_log) == reference()


def test_scenario_replies(cpython_log: list[Any]) -> None:
    # every command answered OK, every sample settled, every repeated UPDATE ignored
    assert all(e[1] == C.OK for e in cpython_log if e[0] in ("configure",))
    assert all(e[3] == C.OK and e[4] is True for e in cpython_log if e[0] in ("fwd", "adj"))
    again = [e for e in cpython_log if e[0] == "again"]
    assert len(again) == 4
    assert all(e == ["again", C.OK, False, C.OK, False, True] for e in again)
    # tare: zero = the resting counts
    tare = next(e for e in cpython_log if e[0] == "tare")
    assert tare[2] == hexf([float(x) for x in fc.Z])
    assert tare[3] == hexf([float(x) for x in fc.DISP_Z])
    # READ_OUTPUT n=0 gives the sampled displacement: disp_gain * (counts - zero)
    outs = [e[2] for e in cpython_log if e[0] == "out"]
    assert outs[0] == hexf([f32(f32(fc.DISP_GAIN[0]) * 17.0), f32(f32(fc.DISP_GAIN[1]) * -5.0)])


def test_clamping_at_bounds_and_actuator_commands(cpython_log: list[Any]) -> None:
    # the last SGD step has lr = 1e9: every bond ends on a bound; commands follow the map
    last = [e for e in cpython_log if e[0] == "update"][-1][4]
    k = struct.unpack(">3f", bytes.fromhex(last["k"]))
    assert k == (100.0, 100.0, 190.0)
    cmds = struct.unpack(">3f", bytes.fromhex(last["cmd"]))
    # bonds 0 and 1: default map k_min -> 1000 us; bond 2: its table's last point
    assert cmds == (1000.0, 1000.0, 2100.0)


def test_restart_gives_the_same_bits_as_an_uninterrupted_run(
    cpython_log: list[Any], tmp_path: Path
) -> None:
    straight = fc.scenario(str(tmp_path), False)
    a = [e[4] for e in cpython_log if e[0] == "update"]
    b = [e[4] for e in straight if e[0] == "update"]
    assert a == b
    restart = next(e for e in cpython_log if e[0] == "restart")
    assert restart[1:4] == [C.OK, 2, 1]  # boots 2, last applied step 1
    assert restart[4] == a[1]  # state after reboot = state before it


@pytest.mark.micropython
def test_scenario_identical_under_micropython(cpython_log: list[Any], tmp_path: Path) -> None:
    mp_log = run_case("scenario", str(tmp_path), "1")
    assert mp_log == cpython_log


# -- unit cases on a fake board -------------------------------------------------------------


def board(tmp_path: Path, **kw: Any) -> tuple[FakeHal, Server, Client]:
    hal = FakeHal(str(tmp_path), **kw)
    hal.set_levels(fc.Z)
    hal.disp_level = list(fc.DISP_Z)
    srv = Server(hal)
    cl = Client(srv)
    assert cl.call(C.CONFIGURE, fc._configure_args())[0] == C.OK
    hal.t += 1000
    assert cl.call(C.TARE, {"n": 4})[0] == C.OK
    return hal, srv, cl


def fwd(cl: Client, step: int, smp: int, **kw: Any) -> Any:
    return cl.call(C.SAMPLE, {"phase": C.FWD, "step": step, "sample": smp, "tol": 1e-9, **kw})


def adj(cl: Client, step: int, smp: int, **kw: Any) -> Any:
    return cl.call(C.SAMPLE, {"phase": C.ADJ, "step": step, "sample": smp, "tol": 1e-9, **kw})


def test_settle_waits_for_the_transient(tmp_path: Path) -> None:
    hal, srv, cl = board(tmp_path)
    hal.set_levels([fc.Z[0] + 40000, fc.Z[1], fc.Z[2]])
    st, r = fwd(cl, 0, 0, n=2, period_ms=3)
    assert st == C.OK and r["settled"] is True
    # 40000 counts halve every 4 ms: exact only after 16 halvings (64 ms)
    assert r["ms"] >= 64
    assert srv.node.s_fwd[0] == f32(f32(fc.GAIN[0]) * 40000.0)


def test_noise_times_out_and_adj_is_refused(tmp_path: Path) -> None:
    hal, srv, cl = board(tmp_path)
    hal.noise = 50
    st, r = fwd(cl, 0, 0, timeout_ms=200)
    assert st == C.OK and r["settled"] is False and r["ms"] >= 200
    assert srv.stats["unsettled"] == 1
    st, msg = adj(cl, 0, 0)
    assert st == C.BAD_STATE and "FWD" in msg
    assert srv.stats["orphans"] == 1 and srv.node.count == 0


def test_stuck_clock_cannot_hang_a_sample(tmp_path: Path) -> None:
    hal, srv, cl = board(tmp_path)
    hal.noise = 50
    hal.clock_stuck = True
    reads = 0
    orig = hal.read_strain

    def counting(ch: int) -> int:
        nonlocal reads
        reads += 1
        return orig(ch)

    hal.read_strain = counting  # type: ignore[method-assign]
    st, r = fwd(cl, 0, 0, n=2, timeout_ms=100, period_ms=5)
    assert st == C.OK and r["settled"] is False and r["ms"] == 0
    # at most timeout/period + 2 rounds of n readings per bond
    assert reads == (100 // 5 + 2) * 2 * fc.N_BONDS


def test_adj_bookkeeping(tmp_path: Path) -> None:
    hal, srv, cl = board(tmp_path)
    assert adj(cl, 0, 0)[0] == C.BAD_STATE  # no FWD at all
    assert fwd(cl, 0, 0)[1]["settled"]
    assert adj(cl, 0, 1)[0] == C.BAD_STATE  # other sample
    assert adj(cl, 1, 0)[0] == C.BAD_STATE  # other step
    hal.set_levels([fc.Z[0] + 1000, fc.Z[1] + 1000, fc.Z[2] + 1000])
    st, r = adj(cl, 0, 0)
    assert st == C.OK and r["count"] == 1
    acc = list(srv.node.acc)
    assert adj(cl, 0, 0)[0] == C.BAD_STATE  # the FWD was consumed
    assert fwd(cl, 0, 0)[0] == C.BAD_STATE  # sample 0 of step 0 already accumulated
    assert list(srv.node.acc) == acc and srv.node.count == 1
    assert srv.stats["orphans"] == 4
    # UPDATE must name the right count; the state stays as it was otherwise
    k = list(srv.node.k)
    st, msg = cl.call(C.UPDATE, {"step": 0, "count": 2, "lr": 1.0})
    assert st == C.BAD_STATE and "1 samples" in msg
    assert list(srv.node.k) == k
    assert cl.call(C.DISCARD, {"step": 0}) == (C.OK, {})
    assert srv.node.count == 0 and list(srv.node.acc) == [0.0] * 3
    assert cl.call(C.UPDATE, {"step": 0, "count": 1, "lr": 1.0})[0] == C.BAD_STATE


def test_unsettled_adj_keeps_the_fwd(tmp_path: Path) -> None:
    hal, srv, cl = board(tmp_path)
    assert fwd(cl, 0, 0)[1]["settled"]
    hal.noise = 80
    st, r = adj(cl, 0, 0, timeout_ms=50)
    assert st == C.OK and r["settled"] is False and r["count"] == 0
    hal.noise = 0
    hal.t += 1000
    st, r = adj(cl, 0, 0)
    assert st == C.OK and r["settled"] is True and r["count"] == 1


def test_new_step_clears_an_abandoned_accumulation(tmp_path: Path) -> None:
    hal, srv, cl = board(tmp_path)
    hal.set_levels([fc.Z[0] + 500, fc.Z[1], fc.Z[2]])
    hal.t += 1000
    assert fwd(cl, 5, 0)[1]["settled"] and adj(cl, 5, 0)[1]["count"] == 1
    assert fwd(cl, 6, 0)[1]["settled"]
    assert srv.node.count == 0 and srv.node.acc_step == 6
    # a step at or before the last applied one is refused
    assert adj(cl, 6, 0)[1]["count"] == 1
    assert cl.call(C.UPDATE, {"step": 6, "count": 1, "lr": 0.0})[1]["applied"] is True
    st, msg = fwd(cl, 6, 1)
    assert st == C.BAD_STATE and "already applied" in msg


def test_broadcast_sample_is_silent_but_counts(tmp_path: Path) -> None:
    hal, srv, cl = board(tmp_path)
    assert fwd(cl, 0, 0) is not None
    out = cl.call(C.SAMPLE, {"phase": C.ADJ, "step": 0, "sample": 0, "tol": 1e-9}, address=C.BROADCAST)
    assert out is None
    assert srv.node.count == 1


def test_set_stiffness_resets_adam_and_drives(tmp_path: Path) -> None:
    hal, srv, cl = board(tmp_path)
    srv.node.m[0] = 1.0
    srv.node.t = 3
    hal.cmds.clear()
    assert cl.call(C.SET_STIFFNESS, {"k": [100.0, 180.0, 150.0]}) == (C.OK, {})
    assert list(srv.node.k) == [100.0, 180.0, 150.0]
    assert srv.node.t == 0 and list(srv.node.m) == [0.0] * 3
    # default map on bonds 0/1 (bounds 100..200 and 100..180); table of bond 2 at a knot
    assert hal.cmds == [(0, 1000.0), (1, 2000.0), (2, 1400.0)]


def test_tare_and_read_output(tmp_path: Path) -> None:
    hal, srv, cl = board(tmp_path)
    hal.disp_level = [130, -10]
    st, r = cl.call(C.READ_OUTPUT, {"n": 3})
    assert st == C.OK
    assert r["ux"] == f32(f32(fc.DISP_GAIN[0]) * 30.0)
    assert r["uy"] == f32(f32(fc.DISP_GAIN[1]) * 40.0)
    assert r["settled"] is True
    # settling read: rounds of n readings until steady, then n = 0 repeats that value
    hal.disp_level = [160, 0]
    st, r = cl.call(C.READ_OUTPUT, {"n": 2, "tol": 1e-9, "timeout_ms": 100})
    assert st == C.OK and r["settled"] is True
    assert r["ux"] == f32(f32(fc.DISP_GAIN[0]) * 60.0) and r["uy"] == f32(f32(fc.DISP_GAIN[1]) * 50.0)
    assert cl.call(C.READ_OUTPUT, {"n": 0})[1] == r
    assert cl.call(C.READ_OUTPUT, {"n": 0, "tol": 1e-9})[0] == C.BAD_ARGS
    fresh = Server(FakeHal(str(tmp_path / "x")))
    assert Client(fresh).call(C.READ_OUTPUT, {})[0] == C.BAD_STATE  # nothing sampled yet
    nodisp = Server(FakeHal(str(tmp_path / "y"), disp=False))
    assert Client(nodisp).call(C.READ_OUTPUT, {"n": 1})[0] == C.NOT_CAPABLE


tables = st.lists(
    st.tuples(st.floats(0, 1e4, width=32), st.floats(-1e4, 1e4, width=32)),
    min_size=2,
    max_size=8,
    unique_by=lambda p: p[0],
).map(lambda pts: sorted(pts))


@settings(max_examples=100, deadline=None)
@given(table=tables, ks=st.lists(st.floats(0, 2e4, width=32), min_size=1, max_size=8))
def test_actuator_command_stays_in_the_table_range(
    table: list[tuple[float, float]], ks: list[float]
) -> None:
    hal = FakeHal("", n_strain=1, n_act=1)
    from host_sdk.firmware.mnnfw.node import Node

    node = Node(hal)
    node.set_bonds([0])
    node.k_min[0], node.k_max[0] = 0.0, 2e4
    from array import array

    node.tables[0] = array("f", [x for p in table for x in p])
    cmds = [c for _, c in table]
    for k in ks:
        node.k[0] = k
        c = node.act_cmd(0)
        assert min(cmds) <= c <= max(cmds)
    for kk, cc in table:  # exact at the knots
        node.k[0] = kk
        assert node.act_cmd(0) == cc


def test_default_actuator_map(tmp_path: Path) -> None:
    from host_sdk.firmware.mnnfw.node import Node

    node = Node(FakeHal(str(tmp_path), n_strain=1, n_act=1))
    node.set_bonds([0])
    node.k_min[0], node.k_max[0] = 100.0, 200.0
    for k, want in ((100.0, 1000.0), (150.0, 1500.0), (200.0, 2000.0), (125.0, 1250.0)):
        node.k[0] = k
        assert node.act_cmd(0) == want
    node.k_max[0] = 100.0  # a fixed bond: k_min == k_max
    node.k[0] = 100.0
    assert node.act_cmd(0) == 1000.0
