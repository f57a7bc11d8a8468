"""Throughput and traffic of the in situ loop: simulation vs emulated rigs.

Prints, for Iris on the paper rig: training samples per second and host CPU time per sample on
the simulation backend, the in-process emulated rig and the MicroPython emulated rig; the same
for a ``lattice:20x20`` rig; and bytes on the wire per training sample (phases only, and the
per-batch UPDATE traffic separately) for ``lattice:4x4`` and ``lattice:20x20``.

    python bench/bench_rig.py [--batches N] [--skip-micropython] [--skip-lattice]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from host_sdk.rigrun import RigRunner
from host_sdk.tasks import get_task
from host_sdk.training import sim_backend


def _batches(task, n_batches: int, batch: int = 16):
    split = task.split(0)
    for i in range(n_batches):
        rows = np.arange(i * batch, (i + 1) * batch) % len(split.x_train)
        labels = split.y_train[rows]
        yield task.input_forces(split.x_train[rows]), (
            lambda y, idx, labels=labels: -task.loss.grad(y, labels[np.asarray(idx)]))


def run_backend(backend, task, n_batches: int) -> dict[str, float]:
    """Time n training batches (phases + update) on a backend."""
    wall0, cpu0 = time.perf_counter(), time.process_time()
    samples = 0
    for step, (inputs, adjoint) in enumerate(_batches(task, n_batches)):
        backend.train_batch(step, inputs, adjoint)
        backend.update(step)
        samples += len(inputs)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    return {"samples_per_s": samples / wall, "cpu_ms_per_sample": 1e3 * cpu / samples}


def rig_case(spec: str, n_batches: int, *, micropython: bool = False) -> dict[str, float]:
    with RigRunner(spec, micropython=micropython) as runner:
        task = runner.task_for_rig(get_task("iris"))
        return run_backend(runner.backend(task), task, n_batches)


def traffic(spec: str) -> tuple[float, float, int]:
    """Bytes per training sample in the phases, bytes of one batch's UPDATE round, boards."""
    with RigRunner(spec, noiseless=True) as runner:
        task = runner.task_for_rig(get_task("iris"))
        backend = runner.backend(task)
        (inputs, adjoint), = list(_batches(task, 1))
        b0 = runner.wire_bytes()
        backend.train_batch(0, inputs, adjoint)
        b1 = runner.wire_bytes()
        backend.update(0)
        b2 = runner.wire_bytes()
        return (b1 - b0) / len(inputs), b2 - b1, len(runner.rig.boards)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=6, help="training batches of 16 per case")
    parser.add_argument("--skip-micropython", action="store_true")
    parser.add_argument("--skip-lattice", action="store_true")
    args = parser.parse_args()

    task = get_task("iris")
    rows = [("paper", "simulation", run_backend(sim_backend(task), task, 50 * args.batches))]
    rows.append(("paper", "in-process rig", rig_case("paper", args.batches)))
    if not args.skip_micropython:
        rows.append(("paper", "MicroPython rig", rig_case("paper", args.batches, micropython=True)))
    if not args.skip_lattice:
        lattice = RigRunner("lattice:20x20", noiseless=True)
        lattice_task = lattice.task_for_rig(task)
        lattice.close()
        rows.append(("lattice:20x20", "simulation", run_backend(sim_backend(lattice_task), lattice_task, 5 * args.batches)))
        rows.append(("lattice:20x20", "in-process rig", rig_case("lattice:20x20", max(1, args.batches // 2))))
    print("Iris training throughput (batch 16, forward + adjoint + update; default sensor noise)")
    print(f"{'rig':<15}{'backend':<18}{'samples/s':>12}{'host CPU ms/sample':>20}")
    sim_cost = {}
    for rig, backend, r in rows:
        if backend == "simulation":
            sim_cost[rig] = r["cpu_ms_per_sample"]
        ratio = r["cpu_ms_per_sample"] / sim_cost[rig]
        print(f"{rig:<15}{backend:<18}{r['samples_per_s']:>12.1f}{r['cpu_ms_per_sample']:>20.3f}"
              f"   ({ratio:.0f}x simulation CPU)")
    print()
    print("Bytes on the wire per training sample (phases only; UPDATE is per batch)")
    print(f"{'rig':<15}{'boards':>8}{'bytes/sample':>14}{'UPDATE bytes/batch':>20}")
    for spec in ("lattice:4x4", "lattice:20x20", "paper"):
        per_sample, update, boards = traffic(spec)
        print(f"{spec:<15}{boards:>8}{per_sample:>14.1f}{update:>20}")


if __name__ == "__main__":
    main()
