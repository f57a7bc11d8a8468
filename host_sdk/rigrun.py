"""Bring a rig up for training: emulated or real, handshaken, configured and tared.

:class:`RigRunner` is what ``mnn train --backend rig`` and ``mnn demo`` use. It loads a rig
(``paper``, ``lattice:RxC`` or a rig file), starts the emulator when the rig is emulated, opens a
:class:`~host_sdk.coordinator.RigSession`, says HELLO to every board, configures and tares them,
and hands out one :class:`~host_sdk.coordinator.RigBackend` per training stage. One runner serves
every seed of a run: each new backend loads the task's initial stiffness onto the boards, which
also restarts their optimisers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import numpy as np

from .coordinator import RigBackend, RigSession, SamplingConfig
from .protocol import Command
from .errors import ConfigError
from .rig import Rig, load_rig
from .tasks import Task


class RigRunner:
    """An open rig, ready to train.

    Args:
        spec: ``"paper"``, ``"lattice:RxC"`` or the path of a rig file.
        micropython: run emulated boards as MicroPython processes on pseudo-terminals
            (otherwise in this process). Ignored for a rig with real ports.
        noiseless: ideal emulated sensors and actuators.
        seed: seed of the emulated world's noise.
        ports: address -> port URL overrides (e.g. from ``mnn emulate`` or discovery).
        sampling: how boards measure each phase.
        emulator_options: extra keyword arguments for :class:`~host_sdk.emulator.rig.EmulatedRig`.
    """

    def __init__(
        self,
        spec: str | Rig,
        *,
        micropython: bool = False,
        noiseless: bool = False,
        seed: int = 0,
        ports: Mapping[int, str] | None = None,
        sampling: SamplingConfig | None = None,
        emulator_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.rig = spec if isinstance(spec, Rig) else load_rig(spec)
        self.sampling = sampling or SamplingConfig()
        self.emulator = None
        self.session: RigSession | None = None
        self.backends: list[RigBackend] = []
        if not self.rig.emulated or ports:
            self.board_kind = "real boards"
        else:
            self.board_kind = "emulated MicroPython boards" if micropython else "emulated in-process boards"
        try:
            if self.rig.emulated and not ports:
                from .emulator.rig import EmulatedRig

                self.emulator = EmulatedRig(
                    self.rig, micropython=micropython, noiseless=noiseless, seed=seed,
                    **dict(emulator_options or {}),
                )
                ports = self.emulator.ports
            self.session = RigSession(self.rig, ports)
            self.session.handshake()
            self.session.configure()
            self.session.tare()
        except BaseException:
            self.close()
            raise

    def task_for_rig(self, task: Task) -> Task:
        """The task as this rig can run it (see :func:`task_on_rig`)."""
        return task_on_rig(task, self.rig)

    def backend(self, task: Task) -> RigBackend:
        """A fresh backend for one stage: the boards start from the task's initial stiffness."""
        assert self.session is not None
        if task.network.n_bonds != self.rig.network.n_bonds:
            raise ConfigError(
                f"task {task.name} has {task.network.n_bonds} bonds, rig {self.rig.name} has "
                f"{self.rig.network.n_bonds}: cutting bonds on a rig is done physically "
                "(see docs/reliability.md), not by the damage task"
            )
        self.session.set_stiffness(np.full(self.rig.network.n_bonds, float(task.k0)))
        self.session.handshake()
        # A run abandoned mid-batch (Ctrl-C, a crash) leaves samples accumulated for the step
        # after the last applied one; the new backend starts that step afresh.
        self.session.broadcast(Command.DISCARD, {"step": self.session.last_step() + 1})
        backend = RigBackend(self.session, task.io, optimiser=task.optimiser, sampling=self.sampling)
        self.backends.append(backend)
        return backend

    @property
    def samples_run(self) -> int:
        """In situ training samples (forward + adjoint phases) run by this runner's backends."""
        return sum(b.samples_run for b in self.backends)

    def wire_bytes(self) -> int:
        """Bytes on the wire so far, both directions, all ports."""
        return 0 if self.session is None else self.session.wire_bytes()

    def close(self) -> None:
        """Close the links and stop emulated boards (idempotent)."""
        if self.session is not None:
            self.session.close()
            self.session = None
        if self.emulator is not None:
            self.emulator.stop()
            self.emulator = None

    def __enter__(self) -> RigRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def task_on_rig(task: Task, rig: Rig) -> Task:
    """The task as ``rig`` can run it.

    A task on the rig's own network runs unchanged. On another network (a paper task on a
    ``lattice:RxC`` rig) the rig's I/O map of the same name (``iris`` for ``iris``, ``behaviour``
    for ``behaviour-ce``) takes the paper's place, with the rig's stiffness bounds.
    """
    net = rig.network
    if task.network.n_bonds == net.n_bonds and np.array_equal(task.network.bonds, net.bonds):
        return task
    io_name = task.name.split("-")[0]
    if io_name not in rig.io:
        raise ConfigError(
            f"task {task.name} runs on a {task.network.n_bonds}-bond network; rig {rig.name} "
            f"has {net.n_bonds} bonds and no {io_name!r} I/O map"
        )
    return replace(task, network=net, io=rig.io[io_name], k0=rig.k0,
                   k_min=rig.k_min, k_max=rig.k_max, setup=None)
