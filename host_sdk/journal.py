"""The step journal and host checkpoints: a killed host resumes its run to the same result.

A run directory holds three files:

``run.json``
    What the run is (task, seed, epochs, rig and emulator options, the boards' first step id),
    written once when the run starts. ``mnn train --resume DIR`` reads its options from here.
``journal.jsonl``
    One JSON object per line, appended and flushed to disk before the action it announces:
    ``commit`` (a step's UPDATE is about to be sent; the batch's loads, adjoint forces and
    gains and every board's stiffness before it, so any board can be replayed exactly),
    ``revert`` (boards are about to be moved back to that stiffness; where they must return),
    ``committed`` (every board applied the step), ``checkpoint`` (a checkpoint was saved). A
    line torn by a crash is ignored.
``checkpoint.json``
    The trainer's position after the last finished batch (epoch, batch, step, the shuffling
    generator's state, the history so far), replaced atomically.

On resume the host asks every board for its last applied step (HELLO). A step whose commit the
journal announced is finished: boards that applied it are left alone, boards that did not are
sent the UPDATE again, or replayed first if they lost their accumulation (with the other boards
moved back to the stiffness the journal recorded). A step whose commit never started is cleared
on every board and run again. Every UPDATE is thus applied exactly once per board, and a
noiseless rig ends bit for bit where an uninterrupted run ends.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from .coordinator import RigBackend, RigSession
from .errors import ConfigError
from .faults import EmulatedRigControl, FaultInjector, FaultProfile, FaultReport
from .protocol import Command
from .rig import Rig, load_rig
from .rigrun import task_on_rig
from .tasks import get_experiment
from .training import History, Progress, Trainer, TrainerState

__all__ = [
    "Journal",
    "RUN_FILE",
    "JOURNAL_FILE",
    "CHECKPOINT_FILE",
    "train_journaled",
    "RigRunOptions",
    "RigRunResult",
    "run_on_rig",
]

RUN_FILE = "run.json"
JOURNAL_FILE = "journal.jsonl"
CHECKPOINT_FILE = "checkpoint.json"
_MAX_LINE = 1 << 22  # bytes of one journal line (a batch of 1024 samples fits easily)
_MAX_FILE = 1 << 28  # bytes of the journal read back


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _dump(obj: Any, what: str) -> str:
    try:
        return json.dumps(obj, allow_nan=False, separators=(",", ":"), sort_keys=True)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"cannot journal {what}: {e}") from e


class Journal:
    """A run directory: run options, step journal and checkpoint (see the module docstring).

    Args:
        directory: the run directory.
        create: start a new run there (the directory may exist but must hold no run);
            otherwise open an existing run.

    Raises:
        ConfigError: ``create`` and the directory already holds a run, or not ``create`` and
            it holds none (or its files are damaged); the message names the file.
    """

    def __init__(self, directory: str | os.PathLike[str], *, create: bool = False) -> None:
        self.dir = Path(directory)
        self.run_path = self.dir / RUN_FILE
        self.journal_path = self.dir / JOURNAL_FILE
        self.checkpoint_path = self.dir / CHECKPOINT_FILE
        if create:
            if self.run_path.exists() or self.journal_path.exists():
                raise ConfigError(f"{self.dir} already holds a run: continue it with --resume {self.dir}")
            try:
                self.dir.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise ConfigError(f"cannot create run directory {self.dir}: {e.strerror or e}") from e
        elif not self.run_path.is_file():
            raise ConfigError(f"{self.dir} holds no run ({RUN_FILE} is missing)")

    # -- files ------------------------------------------------------------------------------
    def _write_atomic(self, path: Path, text: str) -> None:
        tmp = path.with_suffix(path.suffix + ".tmp")
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError as e:
            raise ConfigError(f"cannot write {path}: {e.strerror or e}") from e
        _fsync_dir(self.dir)

    def _read_json(self, path: Path) -> Any:
        try:
            if path.stat().st_size > _MAX_FILE:
                raise ConfigError(f"{path} is larger than {_MAX_FILE} bytes")
            return json.loads(path.read_text(encoding="utf-8"))
        except OSError as e:
            raise ConfigError(f"cannot read {path}: {e.strerror or e}") from e
        except ValueError as e:
            raise ConfigError(f"{path} is not valid JSON: {e}") from e

    def append(self, event: Mapping[str, Any]) -> None:
        """Append one event and flush it to disk before returning."""
        line = _dump(dict(event), f"event {event.get('event')!r}") + "\n"
        try:
            with open(self.journal_path, "a", encoding="utf-8") as f:
                f.write(line)
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            raise ConfigError(f"cannot append to {self.journal_path}: {e.strerror or e}") from e

    def events(self) -> list[dict[str, Any]]:
        """Every complete event of the journal, in order (a torn last line is skipped)."""
        try:
            size = self.journal_path.stat().st_size
        except FileNotFoundError:
            return []
        except OSError as e:
            raise ConfigError(f"cannot read {self.journal_path}: {e.strerror or e}") from e
        if size > _MAX_FILE:
            raise ConfigError(f"{self.journal_path} is larger than {_MAX_FILE} bytes")
        out: list[dict[str, Any]] = []
        with open(self.journal_path, "rb") as f:
            lines = f.read().split(b"\n")
        for number, raw in enumerate(lines, 1):
            if not raw.strip():
                continue
            last = number == len(lines) or all(not x.strip() for x in lines[number:])
            try:
                if len(raw) > _MAX_LINE:
                    raise ValueError("line too long")
                event = json.loads(raw.decode("utf-8"))
                if not isinstance(event, dict) or not isinstance(event.get("event"), str):
                    raise ValueError("not an event object")
            except (ValueError, UnicodeDecodeError) as e:
                if last:
                    break  # torn by a crash while it was written: it never happened
                raise ConfigError(f"{self.journal_path} line {number} is damaged: {e}") from e
            out.append(event)
        return out

    # -- run options --------------------------------------------------------------------------
    def write_run(self, options: Mapping[str, Any]) -> None:
        """Record what the run is (once, at its start)."""
        self._write_atomic(self.run_path, _dump(dict(options), "the run options") + "\n")

    def run(self) -> dict[str, Any]:
        """The run options written by :meth:`write_run`."""
        data = self._read_json(self.run_path)
        if not isinstance(data, dict):
            raise ConfigError(f"{self.run_path} must hold a JSON object")
        return data

    # -- CommitLog (host_sdk.coordinator) -------------------------------------------------------
    def begin_commit(self, record: dict[str, Any]) -> None:
        """A step's commit starts (see :class:`~host_sdk.coordinator.CommitLog`)."""
        self.append({"event": "commit", **record})

    def note_revert(self, board_step: int, k_new: dict[str, list[float]]) -> None:
        """Boards are about to be moved back; ``k_new`` is where they must return."""
        self.append({"event": "revert", "board_step": int(board_step), "k_new": k_new})

    def end_commit(self, board_step: int) -> None:
        """Every board applied ``board_step``."""
        self.append({"event": "committed", "board_step": int(board_step)})

    def last_commit(self) -> tuple[dict[str, Any] | None, dict[str, list[float]] | None, bool]:
        """The last commit the journal announced, the map of boards being moved back if that
        commit was interrupted while they were, and whether it finished (``committed``)."""
        last: dict[str, Any] | None = None
        revert: dict[str, list[float]] | None = None
        done = False
        for event in self.events():
            kind = event["event"]
            if kind == "commit":
                last, revert, done = event, None, False
            elif last is None or event.get("board_step") != last.get("board_step"):
                continue
            elif kind == "revert":
                revert = dict(revert or {})
                revert.update(event.get("k_new", {}))
            elif kind == "committed":
                done = True
        return last, (None if done else revert), done

    # -- checkpoints ----------------------------------------------------------------------------
    def save_checkpoint(self, state: TrainerState) -> None:
        """Replace the checkpoint with ``state`` (atomically) and note it in the journal."""
        self._write_atomic(self.checkpoint_path, _dump(state.to_dict(), "the checkpoint") + "\n")
        self.append({"event": "checkpoint", "epoch": state.epoch, "batch": state.batch, "step": state.step})

    def checkpoint(self) -> TrainerState | None:
        """The last checkpoint, or ``None`` if the run saved none yet."""
        if not self.checkpoint_path.exists():
            return None
        data = self._read_json(self.checkpoint_path)
        try:
            return TrainerState.from_dict(data)
        except ConfigError as e:
            raise ConfigError(f"{self.checkpoint_path}: {e}") from e


def train_journaled(
    trainer_factory: Callable[[TrainerState | None, Callable[[TrainerState], None]], Trainer],
    journal: Journal,
    backend: RigBackend,
    *,
    resume: bool,
    first_step: int = 1,
) -> History:
    """Train with a checkpoint after every batch; on ``resume`` first finish the step a killed
    host left behind.

    Args:
        trainer_factory: ``(resume_state, checkpoint_callback) -> Trainer`` (the caller binds
            task, seed and overrides, which must be the run's own on a resume).
        journal: the run directory.
        backend: the rig backend (a :class:`~host_sdk.coordinator.RigBackend` with this
            journal as its commit log).
        resume: continue the run recorded in ``journal``.
        first_step: the trainer's first step of a new run.

    Returns:
        the run's :class:`~host_sdk.training.History`.
    """
    state: TrainerState | None = None
    if resume:
        state = journal.checkpoint()
        step = state.step if state is not None else first_step
        pending, reverted, _done = journal.last_commit()
        if pending is not None and int(pending.get("step", -1)) != step:
            if int(pending.get("step", -1)) < step:
                pending, reverted = None, None  # an older commit, covered by the checkpoint
            else:
                raise ConfigError(
                    f"{journal.journal_path}: a commit of step {pending.get('step')} is recorded "
                    f"but the checkpoint is at step {step}"
                )
        # finish the step (a commit the journal announced is completed on every board; a step
        # whose commit never started is cleared and run again)
        if backend.resume_step(step, pending, reverted):
            if state is None:
                raise ConfigError(
                    f"{journal.dir}: step {step} was applied but the run saved no checkpoint before it"
                )
            state = state.after_batch()
    trainer = trainer_factory(state, journal.save_checkpoint)
    return trainer.run()



@dataclass
class RigRunOptions:
    """What a journaled (or fault-injected) training run on a rig is; stored in ``run.json``.

    Attributes:
        task: task name (a single-stage task: ``iris``, ``behaviour``, ``regression``, ``fig1``).
        seed: the run's seed (split and shuffling).
        epochs, lr, batch_size: overrides of the task's values (None: the task's).
        rig: ``paper``, ``lattice:RxC`` or a rig file.
        micropython, noiseless: emulated rigs: board processes, ideal sensors and actuators.
        tau_ms: emulated rigs: settling time constant (None: the emulator's default; 0: readings
            jump to equilibrium, so a measurement depends only on the network's state, which a
            run must have to be reproduced bit for bit across a restart).
        emulator_seed: seed of the emulated sensors.
        flash_dir: emulated rigs: where the boards keep their flash (a journaled run defaults to
            ``DIR/flash``, so a resumed host finds the boards' state).
        faults: a fault profile (:mod:`host_sdk.faults`), empty for none.
        retries: link retries per request (None: 3, or 3000 with link faults on in-process boards).
    """

    task: str
    seed: int = 0
    epochs: int | None = None
    lr: float | None = None
    batch_size: int | None = None
    rig: str = "paper"
    micropython: bool = False
    noiseless: bool = False
    tau_ms: float | None = None
    emulator_seed: int = 0
    flash_dir: str | None = None
    faults: str = ""
    retries: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain data for ``run.json``."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RigRunOptions:
        """Inverse of :meth:`to_dict`.

        Raises:
            ConfigError: unknown or missing fields.
        """
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"run options: unknown fields {unknown}")
        try:
            return cls(**dict(data))
        except TypeError as e:
            raise ConfigError(f"run options: {e}") from e


@dataclass
class RigRunResult:
    """The outcome of :func:`run_on_rig`.

    Attributes:
        history: the training history (final stiffness in ``history.k``).
        faults: what was injected (None without a profile).
        recovery: link counters and recovery statistics (``RigBackend.report()``).
        summary: one line on faults and recovery.
        updates: address -> UPDATEs each board applied and kept during the run (from the
            emulator's ledger across power cuts, else from the boards' STATUS counters).
    """

    history: History
    faults: FaultReport | None
    recovery: dict[str, Any]
    summary: str
    updates: dict[int, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON."""
        return {
            "final": self.history.final(),
            "k": [float(x) for x in self.history.k],
            "faults": None if self.faults is None else self.faults.as_dict(),
            "recovery": self.recovery,
            "summary": self.summary,
            "updates": {str(a): n for a, n in sorted(self.updates.items())},
        }


def _needs_emulator(rig: Rig) -> bool:
    """An emulated rig whose ports are not given (or are in-process names) is started here; a
    rig file naming serial ports (real boards, or ``mnn emulate``'s terminals) is opened."""
    return bool(rig.emulated) and any(not b.port or b.port.startswith("emu://") for b in rig.boards)


def run_on_rig(
    options: RigRunOptions | None = None,
    *,
    journal_dir: str | os.PathLike[str] | None = None,
    resume: bool = False,
    progress: Callable[[Progress], None] | None = None,
) -> RigRunResult:
    """Train one task on a rig, with an optional fault profile and journal.

    Args:
        options: the run (ignored on ``resume``: the journal's own options are used).
        journal_dir: the run directory; every commit is journaled and a checkpoint is saved
            after every batch.
        resume: continue the killed run recorded in ``journal_dir``.
        progress: called after every epoch.

    Raises:
        ConfigError: bad options, a directory that holds a run already (new run) or none
            (resume), a task with several stages.
    """
    from .emulator.models import DynamicsSpec
    from .emulator.rig import EmulatedRig

    journal: Journal | None = None
    step_base: int | None = None
    if resume:
        if journal_dir is None:
            raise ConfigError("resume needs the run directory")
        journal = Journal(journal_dir)
        run = journal.run()
        opts = RigRunOptions.from_dict(run.get("options", {}))
        step_base = int(run["step_base"]) if "step_base" in run else None
    else:
        if options is None:
            raise ConfigError("run_on_rig needs options for a new run")
        opts = options
        if journal_dir is not None:
            journal = Journal(journal_dir, create=True)
    experiment = get_experiment(opts.task)
    if len(experiment.stages) != 1:
        raise ConfigError(f"task {opts.task} has {len(experiment.stages)} stages; a rig run takes one")
    rig = load_rig(opts.rig)
    task = task_on_rig(experiment.stages[0].task, rig)
    profile = FaultProfile.parse(opts.faults)
    with ExitStack() as stack:
        emu = None
        ports = None
        if _needs_emulator(rig):
            flash = opts.flash_dir
            if flash is None and journal is not None:
                flash = str(journal.dir / "flash")
            dynamics = None if opts.tau_ms is None else DynamicsSpec(tau_ms=float(opts.tau_ms))
            emu = stack.enter_context(EmulatedRig(
                rig, micropython=opts.micropython, noiseless=opts.noiseless, seed=opts.emulator_seed,
                flash_dir=flash, dynamics=dynamics))
            ports = emu.ports
        injector: FaultInjector | None = None
        factory = None
        if not profile.quiet:
            injector = FaultInjector.for_emulator(profile, emu) if emu is not None else FaultInjector(profile)
            factory = injector.open
        retries = opts.retries
        if retries is None:
            retries = 3000 if (profile.link_faults or profile.reboot_every) and (emu is None or not emu.micropython) else 3
            if emu is not None and emu.micropython and (profile.link_faults or profile.reboot_every):
                retries = 60
        session = stack.enter_context(RigSession(rig, ports, retries=retries, transport_factory=factory))
        session.handshake()
        if not resume:
            session.configure(np.full(rig.n_bonds, float(task.k0)))
            session.tare()
            session.handshake()
        config = task.optimiser.with_lr(opts.lr)
        backend = RigBackend(
            session, task.io, optimiser=config, journal=journal,
            on_batch=injector.on_batch if injector is not None else None, step_base=step_base,
        )
        if journal is not None and not resume:
            journal.write_run({"options": opts.to_dict(), "step_base": backend.step_base})

        def make_trainer(state: TrainerState | None, checkpoint: Callable[[TrainerState], None] | None) -> Trainer:
            return Trainer(task, backend, seed=opts.seed, epochs=opts.epochs, batch_size=opts.batch_size,
                           progress=progress, checkpoint=checkpoint, resume=state)

        if journal is not None:
            history = train_journaled(make_trainer, journal, backend, resume=resume)
        else:
            history = make_trainer(None, None).run()
        line = backend.report_line()
        if injector is not None:
            line = injector.report.summary() + "; " + line
        control = injector.control if injector is not None else None
        if isinstance(control, EmulatedRigControl) and control.synchronous:
            updates = control.updates()
        else:
            updates = {s.address: int(session.request(s.address, Command.STATUS)["updates"])
                       for s in rig.boards if s.bonds}
        return RigRunResult(history, None if injector is None else injector.report, backend.report(), line,
                            updates)
