"""The ``mnn`` command line: thin commands over the library, one error boundary.

Commands register themselves through ``add_parser(subparsers)`` functions listed in
:func:`_registrars`; each sets ``func`` (``args -> exit status``) on its parser. :func:`main`
is the only place that turns errors into output: any :class:`~host_sdk.errors.SdkError` or bad
argument becomes one line ``mnn: message`` on stderr and exit status 2; Ctrl-C exits with 130.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Callable, NoReturn, Sequence, TextIO

# The network solves are small; a multi-threaded BLAS spinning on every core only slows them
# (and the emulated boards sharing those cores). Must be set before numpy loads its BLAS.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from . import __version__
from .errors import ConfigError, SdkError
from .tasks import EXPERIMENT_NAMES, Experiment, Task, get_experiment
from .training import Backend, History, Progress, Summary, run_seeds, sim_backend

__all__ = ["main", "build_parser", "make_backend", "parse_seeds", "BACKENDS"]

#: Backends ``mnn train --backend`` accepts: the exact simulation, or a rig of boards (emulated
#: or real) that compute their own gradients.
BACKENDS: tuple[str, ...] = ("sim", "rig")
_MAX_SEEDS = 1000
_SHORT = {"accuracy": "acc", "relative_error": "rel.err"}


class _UsageError(Exception):
    """A bad command line (raised instead of argparse's print-and-exit)."""


class _Parser(argparse.ArgumentParser):
    """ArgumentParser whose errors reach :func:`main`'s boundary instead of exiting."""

    def error(self, message: str) -> NoReturn:
        command = self.prog.removeprefix("mnn").strip()
        raise _UsageError(f"{command}: {message}" if command else message)


def parse_seeds(text: str) -> list[int]:
    """Parse ``"0-9"``, ``"3"`` or ``"0,2,5-7"`` into a list of distinct seeds, in order.

    Raises:
        ConfigError: malformed text, a descending range, a negative seed or too many seeds.
    """
    seeds: list[int] = []
    for part in text.split(","):
        part = part.strip()
        lo_text, sep, hi_text = part.partition("-")
        try:
            lo = int(lo_text)
            hi = int(hi_text) if sep else lo
        except ValueError as e:
            raise ConfigError(f"bad seed list {text!r}: use forms like 0-9, 3 or 0,2,5-7") from e
        if lo < 0 or hi < lo:
            raise ConfigError(f"bad seed range {part!r}: seeds are >= 0 and ranges ascend")
        if hi - lo + 1 > _MAX_SEEDS:
            raise ConfigError(f"seed range {part!r} holds more than {_MAX_SEEDS} seeds")
        seeds.extend(s for s in range(lo, hi + 1) if s not in seeds)
        if len(seeds) > _MAX_SEEDS:
            raise ConfigError(f"more than {_MAX_SEEDS} seeds")
    return seeds


def _nonnegative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from e
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value}")
    return value


def _finite_float(text: str, *, allow_zero: bool) -> float:
    try:
        value = float(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from e
    if not np.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise argparse.ArgumentTypeError(f"expected a finite number {bound}, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    return _finite_float(text, allow_zero=False)


def _nonnegative_float(text: str) -> float:
    return _finite_float(text, allow_zero=True)


def make_backend(args: argparse.Namespace, task: Task, seed: int) -> Backend:
    """The backend named by ``args.backend`` for one stage of one seed's run.

    ``args.lr`` (if set) overrides the task's learning rate.
    """
    if args.backend == "sim":
        return sim_backend(task, lr=args.lr)
    if args.backend == "rig":
        backend = args.rig_runner.backend(task)
        if args.lr is not None:
            backend.set_optimiser(backend.optimiser_config.with_lr(args.lr))
        return backend
    raise ConfigError(f"unknown backend {args.backend!r}; choose one of {', '.join(BACKENDS)}")


def _total_epochs(experiment: Experiment, epochs: int | None) -> int:
    if epochs is not None:
        return epochs * len(experiment.stages)
    return sum(s.task.epochs if s.epochs is None else s.epochs for s in experiment.stages)


def _run(args: argparse.Namespace, experiment: Experiment, seeds: list[int]) -> Summary:
    """Train every seed with a progress bar on stderr (hidden when stderr is not a terminal)."""
    from tqdm import tqdm

    per_seed = _total_epochs(experiment, args.epochs)
    with tqdm(total=per_seed * len(seeds), desc=experiment.name, unit="epoch", file=sys.stderr,
              disable=None, leave=False, dynamic_ncols=True) as bar:
        done = {"seed": -1, "count": 0}

        def progress(seed: int, p: Progress) -> None:
            if seed != done["seed"]:
                if done["seed"] >= 0:
                    bar.update(per_seed - done["count"])
                done["seed"], done["count"] = seed, 0
            bar.update(1)
            done["count"] += 1
            bar.set_postfix(seed=seed, stage=p.task, loss=f"{p.loss:.4g}", test=f"{p.test:.4g}",
                            refresh=False)

        return run_seeds(experiment, seeds, lambda task, seed: make_backend(args, task, seed),
                         epochs=args.epochs, batch_size=None, progress=progress)


def _outputs_mm(history: History) -> list[float] | None:
    """The outputs of a single-sample task (behaviour), mm."""
    outs = history.stages[-1].test_outputs
    return [round(v * 1e3, 6) for v in outs[0]] if len(outs) == 1 else None


def _report(summary: Summary, experiment: Experiment) -> dict[str, Any]:
    data = summary.to_dict()
    data["description"] = experiment.description
    data["stages"] = [s.task.name for s in experiment.stages]
    for entry, history in zip(data["per_seed"], summary.histories):
        outputs = _outputs_mm(history)
        if outputs is not None:
            entry["outputs_mm"] = outputs
        entry["stages"] = [
            {"task": s.task, "metric": s.metric, f"test_{s.metric}_start": s.test[0],
             f"test_{s.metric}": s.test[-1], "epochs": s.epoch[-1], "converged": s.converged,
             "removed_bonds": [list(p) for p in s.removed_bonds]}
            for s in history.stages
        ]
    return data


def _print_table(summary: Summary, experiment: Experiment, stream: TextIO) -> None:
    keys = [k for k in summary.mean if k != "relative_error"]  # = test_relative_error
    stream.write(f"{experiment.name}: {experiment.description}\n")
    widths = [max(len(k), 10) for k in keys]
    stream.write("seed  " + "  ".join(k.rjust(w) for k, w in zip(keys, widths)) + "\n")
    for h in summary.histories:
        final = h.final()
        row = "  ".join(f"{final[k]:.4g}".rjust(w) for k, w in zip(keys, widths))
        outputs = _outputs_mm(h)
        extra = f"  outputs {', '.join(f'{v:.4f}' for v in outputs)} mm" if outputs else ""
        stages = h.stages
        if len(stages) > 1:
            extra += "  test " + " -> ".join(
                f"{s.task} {_SHORT[s.metric]} {s.test[0]:.3g}->{s.test[-1]:.3g}" for s in stages)
        stream.write(f"{h.seed:>4}  {row}{extra}\n")
    mean = "  ".join(f"{summary.mean[k]:.4g}".rjust(w) for k, w in zip(keys, widths))
    std = "  ".join(f"{summary.std[k]:.2g}".rjust(w) for k, w in zip(keys, widths))
    stream.write(f"mean  {mean}\n std  {std}\n")


def _write_outputs(out: Path, summary: Summary, experiment: Experiment, report: dict[str, Any]) -> list[Path]:
    from .plots import save_figures

    try:
        out.mkdir(parents=True, exist_ok=True)
        written = [out / "history.json"]
        doc = {"summary": report, "histories": [h.to_dict() for h in summary.histories]}
        written[0].write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
        for h in summary.histories:
            path = out / f"stiffness-seed{h.seed}.json"
            path.write_text(json.dumps({"bonds": np.asarray(h.bonds).tolist(),
                                        "k": np.asarray(h.k).tolist()}) + "\n", encoding="utf-8")
            written.append(path)
        written.extend(save_figures(out, experiment, summary.histories))
    except OSError as e:
        raise ConfigError(f"cannot write results to {out}: {e.strerror or e}") from e
    return written


def _open_rig(args: argparse.Namespace, stack: ExitStack) -> None:
    """Bring the rig of ``--rig`` up when training on a rig (sets ``args.rig_runner``)."""
    args.rig_runner = None
    if args.backend != "rig":
        return
    from .rigrun import RigRunner

    args.rig_runner = stack.enter_context(
        RigRunner(args.rig, micropython=args.micropython, noiseless=args.noiseless))


def _train_and_report(args: argparse.Namespace, task_name: str, out: str | None) -> int:
    experiment = get_experiment(task_name)
    seeds = parse_seeds(args.seeds)
    with ExitStack() as stack:
        _open_rig(args, stack)
        bytes0 = 0 if args.rig_runner is None else args.rig_runner.wire_bytes()
        t0 = time.perf_counter()
        summary = _run(args, experiment, seeds)
        elapsed = time.perf_counter() - t0
        report = _report(summary, experiment)
        if args.rig_runner is not None:
            report["rig"] = _rig_figures(args.rig_runner, summary, elapsed, bytes0)
    written = _write_outputs(Path(out), summary, experiment, report) if out else []
    if args.json:
        if written:
            report["files"] = [str(p) for p in written]
        sys.stdout.write(json.dumps(report) + "\n")
    else:
        _print_table(summary, experiment, sys.stdout)
        if "rig" in report:
            r = report["rig"]
            sys.stdout.write(
                f"rig {r['rig']} ({r['boards']} boards, {r['board_kind']}): "
                f"{r['samples']} in situ samples, {r['samples_per_second']:.1f} samples/s, "
                f"{r['bytes_per_sample']:.0f} bytes on the wire per sample\n")
        if written:
            sys.stdout.write(f"wrote {len(written)} files to {out}\n")
    return 0


def _rig_figures(runner: Any, summary: Summary, elapsed: float, bytes0: int) -> dict[str, Any]:
    """Throughput and traffic of a rig run, per in situ training sample (forward + adjoint).

    Time and traffic include the per-epoch evaluation of the whole data set, so they are what a
    user waits for, not the bare phase cost (``bench/bench_rig.py`` separates the two).
    """
    n = int(runner.samples_run)
    traffic = runner.wire_bytes() - bytes0
    return {
        "rig": runner.rig.name,
        "boards": len(runner.rig.boards),
        "board_kind": runner.board_kind,
        "samples": n,
        "seconds": elapsed,
        "samples_per_second": n / elapsed if elapsed > 0 else 0.0,
        "bytes_on_wire": traffic,
        "bytes_per_sample": traffic / n if n else 0.0,
    }


def _add_training_options(parser: argparse.ArgumentParser, seeds: str, backend: str = "sim") -> None:
    parser.add_argument("--backend", choices=BACKENDS, default=backend,
                        help=f"where training happens: sim (the exact simulation) or rig (boards "
                             f"computing their own gradients; default: {backend})")
    parser.add_argument("--rig", default="paper", metavar="RIG",
                        help="with --backend rig: paper, lattice:RxC or a rig file (default: paper, "
                             "emulated)")
    parser.add_argument("--micropython", action="store_true",
                        help="emulated rig: run each board as a MicroPython process on a pty")
    parser.add_argument("--noiseless", action="store_true",
                        help="emulated rig: ideal sensors and actuators")
    parser.add_argument("--seeds", default=seeds, metavar="LIST",
                        help=f"one independent run per seed: 0-9, 3 or 0,2,5-7 (default: {seeds})")
    parser.add_argument("--epochs", type=_nonnegative_int, metavar="N",
                        help="epochs of every stage (default: the task's)")
    parser.add_argument("--lr", type=_positive_float, metavar="X",
                        help="learning rate of every stage (Adam: N/m per step; default: the task's)")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def _cmd_train(args: argparse.Namespace) -> int:
    if args.faults or args.journal or args.resume:
        return _train_reliable(args)
    if args.task is None:
        raise _UsageError("train: the following arguments are required: --task (or --resume DIR)")
    return _train_and_report(args, args.task, args.out)


def _train_reliable(args: argparse.Namespace) -> int:
    """``mnn train`` on a rig with a fault profile and/or a journal (docs/reliability.md)."""
    from .journal import RigRunOptions, run_on_rig

    if args.resume:
        if args.journal or args.faults or args.task:
            raise _UsageError("train: --resume DIR continues a run with its own options; give no "
                              "--task, --faults or --journal")
        result = run_on_rig(journal_dir=args.resume, resume=True)
    else:
        if args.backend != "rig":
            raise _UsageError("train: --faults and --journal need --backend rig")
        if args.task is None:
            raise _UsageError("train: the following arguments are required: --task")
        seeds = parse_seeds(args.seeds)
        if len(seeds) != 1:
            raise _UsageError("train: a journaled or fault-injected run takes one seed")
        options = RigRunOptions(task=args.task, seed=seeds[0], epochs=args.epochs, lr=args.lr,
                                rig=args.rig, micropython=args.micropython, noiseless=args.noiseless,
                                tau_ms=args.tau_ms, faults=args.faults or "")
        result = run_on_rig(options, journal_dir=args.journal)
    if args.json:
        sys.stdout.write(json.dumps(result.to_dict()) + "\n")
    else:
        final = result.history.final()
        sys.stdout.write(", ".join(f"{k} {v:.4g}" for k, v in final.items()) + "\n")
        sys.stdout.write(result.summary + "\n")
    return 0


def add_train_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``mnn train``."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "train", help="train one of the paper's tasks",
        description="Train a task of the paper, once per seed, and report mean and spread.")
    parser.add_argument("--task", choices=EXPERIMENT_NAMES, help="what to learn (required unless --resume)")
    _add_training_options(parser, seeds="0")
    parser.add_argument("--faults", metavar="PROFILE",
                        help="with --backend rig: inject faults, e.g. drop=0.01,corrupt=0.01,"
                             "reboot_every=200 (keys in docs/reliability.md); reports what was injected")
    parser.add_argument("--journal", metavar="DIR",
                        help="with --backend rig: journal every step and checkpoint after every batch "
                             "in DIR, so a killed run can be resumed")
    parser.add_argument("--resume", metavar="DIR",
                        help="continue the killed run journaled in DIR, to the same result")
    parser.add_argument("--tau-ms", type=_nonnegative_float, metavar="MS",
                        help="emulated rig: settling time constant (0: instant, so a run is "
                             "reproducible bit for bit; default: the emulator's)")
    parser.add_argument("--out", metavar="DIR",
                        help="write history.json, stiffness-seed<S>.json and PNG figures to DIR")
    parser.set_defaults(func=_cmd_train)
    return parser


def _cmd_demo(args: argparse.Namespace) -> int:
    return _train_and_report(args, "iris", args.out)


#: Epochs of ``mnn demo`` on a rig: the simulation reaches a mean test accuracy of 0.949 over
#: seeds 0-9 after 20 epochs (0.951 after 50), at a fifth of the paper's 100-epoch cost.
DEMO_EPOCHS = 20


def add_demo_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``mnn demo``."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "demo", help="train Iris in situ on the emulated paper rig and write figures",
        description="Train the paper's Iris classifier in situ: every board of the emulated paper "
                    "rig runs the node firmware and computes its own bonds' gradients. Prints a "
                    "summary (accuracy, samples per second, bytes on the wire per sample) and "
                    "writes figures (default ./mnn-demo/).")
    _add_training_options(parser, seeds="1", backend="rig")
    parser.set_defaults(epochs=DEMO_EPOCHS)
    parser.add_argument("--out", metavar="DIR", default="mnn-demo",
                        help="where to write results and figures (default: mnn-demo)")
    parser.set_defaults(func=_cmd_demo)
    return parser


def _registrars() -> list[Callable[[Any], argparse.ArgumentParser]]:
    """Every subcommand's ``add_parser``; new commands are added to this list."""
    from .cli_rig import add_parser as add_rig_parsers
    from .emulator.cli import add_parser as add_emulate_parser

    return [
        add_train_parser,
        add_demo_parser,
        add_emulate_parser,
        add_rig_parsers,
    ]


def build_parser() -> argparse.ArgumentParser:
    """The ``mnn`` argument parser with every registered subcommand."""
    parser = _Parser(prog="mnn", description="In situ training of mechanical neural networks.")
    parser.add_argument("--version", action="version", version=f"mnn {__version__}")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    for register in _registrars():
        register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``mnn``; return the exit status (0 ok, 2 error, 130 interrupted)."""
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        func = getattr(args, "func", None)
        if func is None:
            raise _UsageError("a command is required (try mnn --help)")
        return int(func(args) or 0)
    except _UsageError as e:
        print(f"mnn: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    except SdkError as e:
        message = " ".join(str(e).split()) or type(e).__name__
        print(f"mnn: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mnn: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
