"""Cost of one training step of the physics core on large triangular lattices.

A step is what the simulation backend does per mini-batch: assemble K(k), factorise it once,
solve the forward loads of the whole batch (B right-hand sides), solve the adjoint loads with the
same factor, and form the in situ gradient, all through ``host_sdk.physics.forward_adjoint``.

For each lattice (about 1k, 10k, 100k and 1M bonds) and each solver this prints:
  * the median wall time of a step (batch 16 by default),
  * the shares of assembly, factorisation and the two multi-right-hand-side solves in it,
  * the step time over (one factorisation + two batch solves), and whether it stays within 1.5x,
  * the time of solving every sample separately with ``scipy.sparse.linalg.spsolve`` (forward
    and adjoint: 2·B calls; estimated from a few calls on the large lattices) and the speed-up.

Usage: python bench/bench_physics.py [--max-bonds N] [--solvers splu,cholespy] [--batch 16]
       [--blas-threads N]
The one-off structural rigidity check of each network is timed and printed separately.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from collections.abc import Callable

SIZES = (1_000, 10_000, 100_000, 1_000_000)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--max-bonds", type=float, default=2e6,
                   help="skip lattices with more bonds than this (default: run all four sizes)")
    p.add_argument("--solvers", default="splu,cholespy",
                   help="comma-separated solvers to time (splu, cholespy)")
    p.add_argument("--batch", type=int, default=16, help="samples per step (default 16)")
    p.add_argument("--budget", type=float, default=3.0,
                   help="seconds of repeated timing per measurement (default 3)")
    p.add_argument("--blas-threads", type=int, default=None,
                   help="set OPENBLAS/OMP/MKL thread counts before numpy loads")
    args = p.parse_args(argv)
    if args.batch < 1:
        p.error("--batch must be >= 1")
    return args


def timed(fn: Callable[[], object], budget: float, max_runs: int = 25) -> float:
    """Median wall time of ``fn`` over as many runs as fit in ``budget`` seconds (at least 1)."""
    times = []
    start = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if len(times) >= max_runs or time.perf_counter() - start + times[-1] > budget:
            break
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.blas_threads is not None:
        for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = str(args.blas_threads)

    import numpy as np
    import scipy.sparse.linalg as spla

    from host_sdk.physics import Factor, forward_adjoint, triangular_lattice

    solvers = [s.strip() for s in args.solvers.split(",") if s.strip()]
    for s in solvers:
        if s not in ("splu", "cholespy"):
            print(f"bench_physics: unknown solver {s!r}", file=sys.stderr)
            return 2
    bsz = args.batch
    load = os.getloadavg()
    print(f"# physics step benchmark: batch {bsz}, {os.cpu_count()} CPUs, "
          f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, "
          f"BLAS threads {os.environ.get('OPENBLAS_NUM_THREADS', 'default')}")
    header = (f"{'bonds':>9} {'free DOFs':>9} {'solver':>8} {'step s':>8} {'asm %':>6} "
              f"{'fact %':>6} {'solve %':>7} {'F+2S s':>8} {'step/(F+2S)':>11} {'<=1.5x':>6} "
              f"{'spsolve s':>10} {'speed-up':>8} {'runs':>4}")
    print(header)
    for target in SIZES:
        if target > args.max_bonds:
            continue
        side = max(2, round(math.sqrt(target / 3.0)))
        t0 = time.perf_counter()
        net = triangular_lattice(side, side, pinned="top")
        t_build = time.perf_counter() - t0
        t0 = time.perf_counter()
        net.check_rigid()
        t_rigid = time.perf_counter() - t0
        print(f"# {net.name}: {net.n_bonds} bonds, built in {t_build:.3f} s, "
              f"one-off rigidity check {t_rigid:.3f} s", flush=True)

        rng = np.random.default_rng(0)
        k = rng.uniform(103.125, 171.875, net.n_bonds)
        bottom = np.arange((side - 1) * side, side * side)
        inputs = bottom[np.linspace(0, side - 1, 4).round().astype(int)]
        outputs = [(int(n), axis) for n in bottom[[side // 3, (2 * side) // 3]] for axis in (0, 1)]
        forces = np.zeros((bsz, net.n_nodes, 2))
        forces[:, inputs, 1] = -0.049 * rng.uniform(0.0, 1.0, (bsz, inputs.size))
        targets = rng.normal(0.0, 1e-3, (bsz, len(outputs)))

        def adjoint(y: np.ndarray) -> np.ndarray:
            return -(y - targets)

        kmat = net.stiffness_matrix(k)
        rhs = forces.reshape(bsz, -1)[:, net.free_dofs].T.copy()
        t_asm = timed(lambda: net.stiffness_matrix(k), args.budget)

        # Per-sample baseline: spsolve (default options) for each forward and adjoint sample.
        sp_runs = bsz if net.n_bonds <= 20_000 else (2 if net.n_bonds <= 200_000 else 1)
        sp_times = []
        for col in range(sp_runs):
            t0 = time.perf_counter()
            spla.spsolve(kmat, rhs[:, col % bsz])
            sp_times.append(time.perf_counter() - t0)
        t_spsolve = t_asm + 2 * bsz * statistics.median(sp_times)
        est = "" if sp_runs == bsz else "~"

        for solver in solvers:

            def step() -> None:
                forward_adjoint(net, None, forces, outputs, adjoint,
                                factor=net.factorize(k, solver=solver))

            step()  # warm-up: caches, imports
            # Interleave the parts and the whole in every repetition so that a change in the
            # machine's load affects both sides of the ratio alike.
            fact_t, solve_t, step_t, ratio_t = [], [], [], []
            start = time.perf_counter()
            while True:
                t0 = time.perf_counter()
                fac = Factor(kmat, solver=solver)
                t1 = time.perf_counter()
                fac.solve_free(rhs)
                fac.solve_free(rhs)
                t2 = time.perf_counter()
                del fac
                step()
                t3 = time.perf_counter()
                fact_t.append(t1 - t0)
                solve_t.append((t2 - t1) / 2.0)
                step_t.append(t3 - t2)
                ratio_t.append((t3 - t2) / (t2 - t0))
                elapsed = time.perf_counter() - start
                if len(step_t) >= 25 or elapsed + (t3 - t0) > args.budget:
                    break
            t_fact = statistics.median(fact_t)
            t_solve = statistics.median(solve_t)
            t_step = statistics.median(step_t)
            core = t_fact + 2.0 * t_solve
            ratio = statistics.median(ratio_t)
            print(f"{net.n_bonds:>9} {net.n_free:>9} {solver:>8} {t_step:>8.4f} "
                  f"{100 * t_asm / t_step:>6.1f} {100 * t_fact / t_step:>6.1f} "
                  f"{100 * 2 * t_solve / t_step:>7.1f} {core:>8.4f} {ratio:>11.2f} "
                  f"{'yes' if ratio <= 1.5 else 'NO':>6} {est + format(t_spsolve, '.3f'):>10} "
                  f"{t_spsolve / t_step:>8.1f} {len(step_t):>4}", flush=True)
    print("# step = forward_adjoint with a fresh factorisation (assembly included); F+2S = one "
          "factorisation + two batch solves measured alone, interleaved with the steps; "
          "step/(F+2S) = median of per-run ratios; spsolve = assembly + 2*batch per-sample "
          "spsolve calls ('~' = estimated from a few calls); times are medians")
    return 0


if __name__ == "__main__":
    sys.exit(main())
