"""Training speed on the simulation backend.

Prints the wall time of one 100-epoch Iris run on the paper network (best and median of several
runs), where a training step's time goes (factorisation, forward + adjoint solves, loss,
optimiser), and the wall time of every task's default run.

    python bench/bench_training.py            # everything (the 5000-epoch tasks take a while)
    python bench/bench_training.py --quick    # Iris run and step breakdown only
    python bench/bench_training.py --compare  # also: defaults vs the paper's sigmoid optimiser
"""

from __future__ import annotations

import os

# One BLAS thread, as in the tests: the solves here are tiny, and a multi-threaded BLAS slows
# them down many times over when another process holds a core. Set before numpy is imported.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from dataclasses import replace  # noqa: E402
from typing import Callable  # noqa: E402

import numpy as np  # noqa: E402

from host_sdk.losses import ProportionCE  # noqa: E402
from host_sdk.optim import OptimiserConfig  # noqa: E402
from host_sdk.physics import forward_adjoint  # noqa: E402
from host_sdk.tasks import (EXPERIMENT_NAMES, Experiment, Stage, Task, get_experiment,  # noqa: E402
                            get_task, paper_optimiser)
from host_sdk.training import Backend, run_experiment, run_seeds, sim_backend  # noqa: E402


def _per_call(fn: Callable[[], object], repeat: int) -> float:
    """Best-of-5 mean time per call, seconds."""
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(repeat):
            fn()
        best = min(best, (time.perf_counter() - t0) / repeat)
    return best


def bench_iris(runs: int) -> None:
    run_experiment("iris", 0, epochs=2)  # warm-up (imports, caches)
    print("iris, paper network, 100 epochs (700 steps of batch 16 + 101 evaluations of 150 samples):")
    for solver in ("splu", "cholespy"):
        def factory(t: Task, solver: str = solver) -> Backend:
            return sim_backend(t, solver=solver)

        times = []
        for seed in range(runs):
            t0 = time.perf_counter()
            run_experiment("iris", seed, factory)
            times.append(time.perf_counter() - t0)
        print(f"  solver {solver:8s}: wall time best {min(times):.3f} s, "
              f"median {statistics.median(times):.3f} s over {runs} runs")

    task = get_task("iris")
    split = task.split(0)
    x = task.input_forces(split.x_train[:16])
    t = split.y_train[:16]
    backend = sim_backend(task)
    net, k = task.network, backend.stiffness()
    forces = backend._forces(x)
    outputs = tuple(task.io.outputs)
    factor = net.factorize(k)

    def adjoint(y: np.ndarray) -> np.ndarray:
        return -task.loss.grad(y, t)

    y = forward_adjoint(net, None, forces, outputs, adjoint, factor=factor)[0]
    parts = {
        "factorisation": _per_call(lambda: net.factorize(k), 300),
        "forward + adjoint solves": _per_call(
            lambda: forward_adjoint(net, None, forces, outputs, adjoint, factor=factor), 300),
        "loss gradient (inside the adjoint)": _per_call(lambda: task.loss.grad(y, t), 1000),
        "optimiser update": _per_call(lambda: backend._opt.step(np.zeros(net.n_bonds)), 1000),
    }
    counter = [0]

    def one_step() -> None:
        counter[0] += 1
        backend.train_batch(counter[0], x, lambda yy, idx: -task.loss.grad(yy, t[idx]))
        backend.update(counter[0])

    step = _per_call(one_step, 300)
    print(f"  one training step (train_batch + update, batch 16): {step * 1e6:.0f} us, of which")
    for name, secs in parts.items():
        print(f"    {name:36s} {secs * 1e6:7.0f} us")


def bench_tasks() -> None:
    print("every task, default settings, seed 0:")
    print(f"  {'task':18s} {'epochs':>16s} {'steps':>7s} {'wall s':>8s} {'ms/step':>8s}  result")
    for name in EXPERIMENT_NAMES:
        exp = get_experiment(name)
        t0 = time.perf_counter()
        history = run_experiment(exp, 0)
        wall = time.perf_counter() - t0
        epochs = "+".join(str(s.epoch[-1]) for s in history.stages)
        steps = sum(s.steps for s in history.stages)
        final = history.final()
        metric = history.metric
        result = f"test {metric.replace('_', ' ')} {final[f'test_{metric}']:.4f}"
        print(f"  {name:18s} {epochs:>16s} {steps:>7d} {wall:8.2f} {wall / steps * 1e3:8.3f}  {result}")


def bench_compare() -> None:
    """The default clip optimiser against the paper's sigmoid configuration."""
    print("defaults vs the paper's optimiser (Adam on the sigmoid latent, chain factor applied):")
    iris = get_task("iris")
    rows = [
        ("iris, softmax CE c=15, Adam-clip (default)", iris, None),
        ("iris, paper CE, Adam-clip", replace(iris, loss=ProportionCE()), None),
        ("iris, softmax CE c=15, paper sigmoid", iris, paper_optimiser("iris")),
        ("iris, paper CE, paper sigmoid", replace(iris, loss=ProportionCE()), paper_optimiser("iris")),
    ]
    for label, task, opt in rows:
        t0 = time.perf_counter()

        def seeded(t: Task, seed: int, opt: OptimiserConfig | None = opt) -> Backend:
            return sim_backend(t, optimiser=opt)

        summary = run_seeds(Experiment(task.name, "", (Stage(task),)), range(10), seeded)
        wall = time.perf_counter() - t0
        m, sd = summary.mean, summary.std
        print(f"  {label:44s} 10 seeds: test {m['test_accuracy']:.4f} +- {sd['test_accuracy']:.4f}, "
              f"train {m['train_accuracy']:.4f}, loss {m['loss']:.4f} ({wall:.1f} s)")
    for label, opt in (("behaviour-ce, Adam-clip (default)", None),
                       ("behaviour-ce, paper sigmoid", paper_optimiser("behaviour-ce"))):
        def factory(t: Task, opt: OptimiserConfig | None = opt) -> Backend:
            return sim_backend(t, optimiser=opt)

        history = run_experiment("behaviour-ce", 0, factory)
        u13, u14 = (v * 1e3 for v in history.stages[0].test_outputs[0])
        print(f"  {label:44s} {history.stages[0].steps} steps to converge: "
              f"u13y {u13:.4f} mm, u14y {u14:.4f} mm")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="only the Iris run and step breakdown")
    parser.add_argument("--compare", action="store_true",
                        help="also compare the default optimisers with the paper's sigmoid one")
    parser.add_argument("--runs", type=int, default=5, help="Iris runs to time (default 5)")
    args = parser.parse_args()
    bench_iris(args.runs)
    if not args.quick:
        bench_tasks()
    if args.compare:
        bench_compare()


if __name__ == "__main__":
    main()
