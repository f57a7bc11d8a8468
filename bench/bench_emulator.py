"""Speed of the emulated rig: protocol round trips, world solves, sensor reads, start-up.

Prints, for the bundled rigs:
  * HELLO and READ_BONDS round trips per second through an in-process ``emu://`` endpoint, and
    through a MicroPython board on a pseudo-terminal (pyserial, as a USB board is opened);
  * world cost per training sample on the paper network and on ``lattice:20x20``: one
    equilibrium solve per load state with the factor reused, and one factorisation per
    stiffness state (a batch of 16 samples has 2 load states per sample, one stiffness state);
  * the cost of one sensor reading through the in-process HAL, and through the MicroPython
    HAL's world server (measured inside the micropython process);
  * start-up time of the paper rig (14 boards) in-process and as MicroPython processes, until
    every board has answered HELLO and been configured.

Usage: python bench/bench_emulator.py [--budget SECONDS] [--no-micropython]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import numpy as np

from host_sdk import protocol
from host_sdk.emulator.hal import BoardWiring, EmuHal
from host_sdk.emulator.mpboards import ENV_BOARD, ENV_WORLD, WorldServer, find_micropython
from host_sdk.emulator.rig import EmulatedRig, hal_emu_path
from host_sdk.emulator.world import World
from host_sdk.link import Link
from host_sdk.rig import load_rig
from host_sdk.transport import open_transport

C = protocol.Command


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget", type=float, default=2.0, help="seconds per measurement (default 2)")
    p.add_argument("--no-micropython", action="store_true", help="skip the MicroPython figures")
    return p.parse_args(argv)


def rate(fn: Callable[[], object], budget: float) -> float:
    """Calls per second of ``fn`` over about ``budget`` seconds."""
    fn()
    n = 0
    start = time.perf_counter()
    while True:
        fn()
        n += 1
        elapsed = time.perf_counter() - start
        if elapsed >= budget:
            return n / elapsed


def median_time(fn: Callable[[], object], budget: float, max_runs: int = 50) -> float:
    """Median seconds of ``fn`` over as many runs as fit in ``budget``."""
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < max_runs and (not times or time.perf_counter() - start < budget):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def round_trips(emu: EmulatedRig, address: int, budget: float) -> tuple[float, float]:
    link = Link(open_transport(emu.ports[address]), timeout=3.0, retries=1)
    try:
        hello = rate(lambda: link.request(address, C.HELLO), budget)
        bonds = rate(lambda: link.request(address, C.READ_BONDS), budget)
    finally:
        link.close()
    return hello, bonds


def world_per_sample(spec: str, budget: float) -> tuple[int, float, float]:
    """(bonds, seconds per load-state solve, seconds per factorisation) of a rig's world."""
    rig = load_rig(spec)
    world = World(rig.network, rig.k0, actuators=None)
    inputs = [n for n, _ in rig.io["iris"].inputs]
    rng = np.random.default_rng(0)

    def one_load_state() -> None:
        for node in inputs:
            world.set_force(node, 0.0, -0.049 * float(rng.random()))
        world.elongations()

    def one_stiffness_state() -> None:
        world.set_stiffness_cmd(int(rng.integers(rig.n_bonds)), 1000.0 + 1000.0 * float(rng.random()))
        world.set_force(inputs[0], 0.0, -0.049 * float(rng.random()))
        world.elongations()

    solve = median_time(one_load_state, budget)
    factor = median_time(one_stiffness_state, budget) - solve
    return rig.n_bonds, solve, factor


def inproc_read_cost(budget: float) -> float:
    rig = load_rig("paper")
    world = World(rig.network, rig.k0)
    hal = EmuHal(BoardWiring(world, rig.board(12)), "/")
    hal.set_force(0.0, -0.098)
    n = 1000
    return 1.0 / rate(lambda: [hal.read_strain(0) for _ in range(n)], budget) / n


_MP_READS = """
import time, hal_emu
h = hal_emu.Hal()
h.set_force(0.0, -0.098)
n = 3000
t = time.ticks_us()
for i in range(n):
    h.read_strain(0)
print(time.ticks_diff(time.ticks_us(), t) / n)
"""


def mp_read_cost() -> float:
    """Microseconds of one read_strain of the MicroPython HAL (round trip to the world server)."""
    rig = load_rig("paper")
    world = World(rig.network, rig.k0)
    server = WorldServer({12: BoardWiring(world, rig.board(12))})
    server.start()
    try:
        env = dict(os.environ, MICROPYPATH=os.path.dirname(hal_emu_path()))
        env[ENV_WORLD] = str(server.port)
        env[ENV_BOARD] = "12"
        done = subprocess.run(
            [find_micropython(), "-c", _MP_READS], env=env, capture_output=True, text=True, timeout=120
        )
        if done.returncode != 0:
            raise RuntimeError(done.stderr.strip())
        return float(done.stdout.strip().splitlines()[-1])
    finally:
        server.stop()


def startup(budget: float, micropython: bool) -> float:
    def once() -> None:
        EmulatedRig("paper", micropython=micropython).stop()

    return median_time(once, budget, max_runs=5)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    b = args.budget
    print("emulator benchmark (wall clock; other load on the machine shows in these figures)")
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs")
    print()
    with EmulatedRig("paper") as emu:
        hello, bonds = round_trips(emu, 13, b)
    print(f"in-process emu:// endpoint  HELLO {hello:8.0f} round trips/s   READ_BONDS {bonds:8.0f}/s")
    if not args.no_micropython:
        with EmulatedRig("paper", micropython=True) as emu:
            hello, bonds = round_trips(emu, 13, b)
        print(f"MicroPython board on a pty  HELLO {hello:8.0f} round trips/s   READ_BONDS {bonds:8.0f}/s")
    print()
    print("world per training sample (2 load states per sample; 1 factorisation per batch):")
    for spec in ("paper", "lattice:20x20"):
        m, solve, factor = world_per_sample(spec, b)
        print(
            f"  {spec:14s} {m:5d} bonds  solve per load state {solve * 1e6:8.1f} us"
            f"   factorisation per stiffness state {factor * 1e6:8.1f} us"
            f"   per sample (batch 16) {(2 * solve + factor / 16) * 1e6:8.1f} us"
        )
    print()
    print(f"one sensor reading, in-process HAL     {inproc_read_cost(b) * 1e6:8.2f} us")
    if not args.no_micropython:
        print(f"one sensor reading, MicroPython HAL    {mp_read_cost():8.2f} us (TCP round trip)")
    print()
    print(f"start-up, paper rig, 14 in-process boards      {startup(b, False):6.2f} s")
    if not args.no_micropython:
        print(f"start-up, paper rig, 14 MicroPython boards     {startup(b, True):6.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
