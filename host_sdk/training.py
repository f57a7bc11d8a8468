"""One trainer for every backend: the Backend protocol, the simulation backend, the trainer.

The trainer owns the data, the batching, the loss and the history; a backend owns "the physical
network". The host computes losses and adjoint forces; the backend turns input forces into
outputs, adjoint forces into accumulated gradients, and gradients into stiffness updates::

    trainer                                  backend
    -------                                  -------
    inputs (B, n_in), N  ------------------> forward: outputs y (B, n_out), m
    adjoint(y, idx) = -dL_i/dy_i  <--------- (asks per sample or per batch)
                          -----------------> adjoint phase, accumulate s_fwd * s_adj
    update(step)  -------------------------> k <- optimiser(batch-mean gradient), once

:class:`SimBackend` does this with :func:`host_sdk.physics.forward_adjoint` (one factorisation
per batch). A rig backend walks the batch sample by sample over the protocol.

Nothing here prints: progress goes through a callback.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np
from numpy.typing import ArrayLike, NDArray

from .errors import ConfigError, FloppyNetworkError
from .optim import Optimiser, OptimiserConfig
from .physics import Factor, IOMap, Network, forward_adjoint, validate_stiffness
from .tasks import Experiment, Stage, Task, get_experiment

__all__ = [
    "AdjointFn",
    "Backend",
    "TunableBackend",
    "BackendFactory",
    "SimBackend",
    "Progress",
    "StageHistory",
    "History",
    "Trainer",
    "TrainerState",
    "Summary",
    "sim_backend",
    "run_experiment",
    "run_seeds",
    "summarise",
]

Array = NDArray[np.float64]
#: ``adjoint(y (b, n_out), idx (b,)) -> adjoint forces (b, n_out) = -dL_i/dy_i``, N.
AdjointFn = Callable[[Array, NDArray[np.intp]], Array]


@runtime_checkable
class Backend(Protocol):
    """Something physical (or simulated) that trains: see the module docstring."""

    n_bonds: int

    def train_batch(self, step: int, inputs: Array, adjoint: AdjointFn) -> Array:
        """Forward and adjoint phases of a batch; accumulate the gradient of ``step``.

        Args:
            step: the update this batch belongs to (increasing over a run).
            inputs: ``(B, n_in)`` input force values, N (features already scaled).
            adjoint: called with outputs ``(b, n_out)`` and their row indices ``(b,)`` in
                ``inputs``; returns the adjoint forces ``(b, n_out)``. A simulation calls it
                once with the whole batch, a rig once per sample (``b = 1``).

        Returns:
            outputs ``(B, n_out)``, m.
        """
        ...

    def update(self, step: int) -> None:
        """Apply the accumulated (batch-mean) gradient of ``step`` exactly once."""
        ...

    def evaluate(self, inputs: Array) -> Array:
        """Forward only: ``(B, n_in)`` input forces, N -> ``(B, n_out)`` outputs, m."""
        ...

    def stiffness(self) -> Array:
        """Current stiffness ``(m,)``, N/m."""
        ...

    def set_stiffness(self, k: Array) -> None:
        """Set every bond's stiffness ``(m,)``, N/m."""
        ...


@runtime_checkable
class TunableBackend(Backend, Protocol):
    """A backend whose optimiser can be changed (needed for the trainer's ``lr`` override)."""

    @property
    def optimiser_config(self) -> OptimiserConfig:
        """The optimiser the backend applies on :meth:`update`."""
        ...

    def set_optimiser(self, config: OptimiserConfig) -> None:
        """Use another optimiser from now on (its state starts fresh)."""
        ...


#: Builds a backend for a task (its network, IO map, bounds and default optimiser).
BackendFactory = Callable[[Task], Backend]


class SimBackend:
    """The simulation backend: exact linear physics, one factorisation per batch.

    Args:
        network: the network.
        io: input and output degrees of freedom.
        k0: initial stiffness, scalar or ``(m,)``, N/m.
        k_min, k_max: bounds, N/m.
        optimiser: the update rule applied by :meth:`update`.
        solver: factorisation used by the physics (``"splu"``, ``"cholespy"``, ``"auto"``).

    The gradient accumulated by :meth:`train_batch` is ``dL/dk`` of the batch-mean loss, where
    the per-sample loss is whatever ``adjoint`` differentiates.
    """

    def __init__(
        self,
        network: Network,
        io: IOMap,
        *,
        k0: ArrayLike,
        k_min: float,
        k_max: float,
        optimiser: OptimiserConfig,
        solver: str = "splu",
    ) -> None:
        self.network = network
        self.io = io
        self.n_bonds = int(network.n_bonds)
        self.k_min = float(k_min)
        self.k_max = float(k_max)
        self.solver = solver
        n = int(network.n_nodes)
        for what, dofs in (("input", io.inputs), ("output", io.outputs)):
            for node, axis in dofs:
                if not (0 <= int(node) < n) or int(axis) not in (0, 1):
                    raise ConfigError(f"{what} dof ({node}, {axis}) is not on a {n}-node network")
        self._in_dofs = np.array([2 * int(nd) + int(ax) for nd, ax in io.inputs], dtype=np.intp)
        self._in_unique = np.unique(self._in_dofs).size == self._in_dofs.size
        self._out_flat = np.array([2 * int(nd) + int(ax) for nd, ax in io.outputs], dtype=np.intp)
        self._out_dofs = tuple((int(nd), int(ax)) for nd, ax in io.outputs)
        k_start = np.broadcast_to(np.asarray(k0, dtype=np.float64), (self.n_bonds,)).copy()
        self._opt = Optimiser(optimiser, k_start, self.k_min, self.k_max)
        self._grad_sum = np.zeros(self.n_bonds)
        self._count = 0
        self._pending_step: int | None = None
        self._last_applied: int | None = None
        self._factor: Factor | None = None
        #: The batch-mean gradient ``dL/dk`` applied by the latest :meth:`update`.
        self.last_gradient: Array | None = None

    # -- Backend -----------------------------------------------------------------------------
    def _forces(self, inputs: ArrayLike) -> Array:
        x = np.asarray(inputs, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self._in_dofs.size:
            raise ConfigError(f"inputs must have shape (B, {self._in_dofs.size}), got {x.shape}")
        if not np.all(np.isfinite(x)):
            raise ConfigError(f"inputs of shape {x.shape} contain NaN or infinity")
        flat = np.zeros((x.shape[0], 2 * int(self.network.n_nodes)))
        if self._in_unique:
            flat[:, self._in_dofs] = x
        else:
            for col, dof in enumerate(self._in_dofs):
                flat[:, dof] += x[:, col]
        return flat.reshape(x.shape[0], -1, 2)

    def _current_factor(self) -> Factor:
        """The factorisation of ``K(k)`` for the current stiffness (kept until ``k`` changes)."""
        if self._factor is None:
            self._factor = self.network.factorize(self._opt.k, solver=self.solver)
        return self._factor

    def train_batch(self, step: int, inputs: Array, adjoint: AdjointFn) -> Array:
        """See :meth:`Backend.train_batch`. Batches of one step accumulate until :meth:`update`."""
        if self._pending_step is not None and self._pending_step != step:
            raise ConfigError(
                f"step {self._pending_step} has an unapplied gradient; update or discard it first"
            )
        forces = self._forces(inputs)
        rows = np.arange(forces.shape[0])

        def adjoint_all(y: Array) -> Array:
            return np.asarray(adjoint(y, rows), dtype=np.float64)

        factor = self._current_factor()
        y, grad, _ = forward_adjoint(self.network, None, forces, self._out_dofs, adjoint_all,
                                     factor=factor)
        self._grad_sum += grad * forces.shape[0]
        self._count += forces.shape[0]
        self._pending_step = step
        return np.asarray(y)

    def update(self, step: int) -> None:
        """Apply the batch-mean gradient of ``step``; a repeated or older step changes nothing."""
        if self._last_applied is not None and step <= self._last_applied:
            return
        if self._pending_step != step or self._count == 0:
            raise ConfigError(f"no gradient accumulated for step {step}")
        self.last_gradient = self._grad_sum / self._count
        self._opt.step(self.last_gradient)
        self._factor = None
        self._last_applied = step
        self.discard()

    def discard(self) -> None:
        """Drop an accumulated, not yet applied gradient."""
        self._grad_sum[:] = 0.0
        self._count = 0
        self._pending_step = None

    def evaluate(self, inputs: Array) -> Array:
        """Forward only: ``(B, n_in)`` N -> ``(B, n_out)`` m, one factorisation."""
        forces = self._forces(inputs)
        factor = self._current_factor()
        u = np.asarray(self.network.solve(None, forces, factor=factor))
        return u.reshape(forces.shape[0], -1)[:, self._out_flat]

    def stiffness(self) -> Array:
        """Current stiffness ``(m,)``, N/m (a copy)."""
        return self._opt.k

    def set_stiffness(self, k: Array) -> None:
        """Set the stiffness (within the bounds); the optimiser's state starts fresh."""
        arr = validate_stiffness(k, self.n_bonds)
        self._opt.reset(arr)
        self._factor = None

    # -- TunableBackend ----------------------------------------------------------------------
    @property
    def optimiser_config(self) -> OptimiserConfig:
        """The optimiser applied on :meth:`update`."""
        return self._opt.config

    def set_optimiser(self, config: OptimiserConfig) -> None:
        """Use another optimiser from the current stiffness on (fresh state)."""
        self._opt = Optimiser(config, self._opt.k, self.k_min, self.k_max)

    def __repr__(self) -> str:
        return f"SimBackend({self.network.n_nodes} nodes, {self.n_bonds} bonds, {self._opt.config!r})"


def sim_backend(task: Task, *, lr: float | None = None, optimiser: OptimiserConfig | None = None,
                solver: str = "splu") -> SimBackend:
    """A :class:`SimBackend` for a task: its network, IO map, bounds, ``k0`` and optimiser.

    ``optimiser`` replaces the task's default; ``lr`` then overrides its learning rate.
    """
    config = (optimiser or task.optimiser).with_lr(lr)
    return SimBackend(task.network, task.io, k0=task.k0, k_min=task.k_min, k_max=task.k_max,
                      optimiser=config, solver=solver)


@dataclass(frozen=True)
class Progress:
    """What the trainer reports after each epoch (to the ``progress`` callback)."""

    stage: int
    task: str
    epoch: int
    epochs: int
    loss: float
    metric: str
    train: float
    test: float


@dataclass
class StageHistory:
    """Per-epoch record of one stage; entry 0 is the state before the stage's first update.

    Attributes:
        task: the stage's task name.
        metric: ``"accuracy"`` or ``"relative_error"``.
        epoch: epoch numbers ``0..E``.
        loss: mean training loss after each epoch (evaluated over the whole training set).
        test_loss: mean test loss after each epoch.
        train, test: the metric on the training and test sets after each epoch.
        removed_bonds: node pairs (0-based) cut before this stage.
        steps: number of updates applied in the stage.
        converged: the stage stopped early on the task's ``k_tol``.
        test_outputs: test-set outputs ``(N_test, n_out)`` at the end of the stage, m.
    """

    task: str
    metric: str
    epoch: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    test_loss: list[float] = field(default_factory=list)
    train: list[float] = field(default_factory=list)
    test: list[float] = field(default_factory=list)
    removed_bonds: list[tuple[int, int]] = field(default_factory=list)
    steps: int = 0
    converged: bool = False
    test_outputs: list[list[float]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Plain-data view for JSON."""
        return {
            "task": self.task,
            "metric": self.metric,
            "epoch": list(self.epoch),
            "loss": list(self.loss),
            "test_loss": list(self.test_loss),
            f"train_{self.metric}": list(self.train),
            f"test_{self.metric}": list(self.test),
            "removed_bonds": [list(p) for p in self.removed_bonds],
            "steps": self.steps,
            "converged": self.converged,
            "test_outputs": self.test_outputs,
        }


@dataclass
class History:
    """A whole run (one seed): its stages and the final network and stiffness.

    Attributes:
        task: experiment name.
        seed: the seed of the split and the shuffling.
        stages: one :class:`StageHistory` per stage.
        bonds: ``(m, 2)`` 0-based node pairs of the final network.
        k: final stiffness ``(m,)``, N/m.
        optimiser: the optimiser parameters of the last stage.
    """

    task: str
    seed: int
    stages: list[StageHistory]
    bonds: NDArray[np.intp]
    k: Array
    optimiser: dict[str, float | str] = field(default_factory=dict)

    @property
    def metric(self) -> str:
        """Metric of the last stage."""
        return self.stages[-1].metric

    def final(self) -> dict[str, float]:
        """Final figures of the last stage: ``loss``, ``test_loss`` and the metric on both sets.

        For ``relative_error`` tasks ``relative_error`` (= the test value) is included too.
        """
        last = self.stages[-1]
        out = {
            "loss": last.loss[-1],
            "test_loss": last.test_loss[-1],
            f"train_{last.metric}": last.train[-1],
            f"test_{last.metric}": last.test[-1],
        }
        if last.metric == "relative_error":
            out["relative_error"] = last.test[-1]
        return out

    def to_dict(self) -> dict[str, Any]:
        """Plain-data view for JSON."""
        return {
            "task": self.task,
            "seed": self.seed,
            "final": self.final(),
            "optimiser": dict(self.optimiser),
            "stages": [s.to_dict() for s in self.stages],
            "bonds": np.asarray(self.bonds).tolist(),
            "k": np.asarray(self.k).tolist(),
        }


@dataclass
class TrainerState:
    """Where a :class:`Trainer` is in its stage, for checkpoints (see :mod:`host_sdk.journal`).

    Attributes:
        epoch: the epoch in progress (1-based).
        batch: batches of that epoch already applied.
        step: number of the next update.
        rng: state of the shuffling generator at the start of ``epoch``, before it drew the
            epoch's permutation (``numpy`` bit-generator state).
        history: the stage's record so far.
        k_before: stiffness at the start of ``epoch`` (for the ``k_tol`` stop); None makes a
            resumed trainer read it from the backend.
    """

    epoch: int
    batch: int
    step: int
    rng: Mapping[str, Any]
    history: StageHistory
    k_before: list[float] | None = None

    def after_batch(self) -> TrainerState:
        """The state one batch later (a batch a restarted host found already applied)."""
        hist = StageHistory(**{**asdict(self.history), "steps": self.history.steps + 1})
        return replace(self, batch=self.batch + 1, step=self.step + 1, history=hist)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON keeps every float exactly)."""
        return {
            "epoch": self.epoch,
            "batch": self.batch,
            "step": self.step,
            "rng": self.rng,
            "history": asdict(self.history),
            "k_before": self.k_before,
        }

    @classmethod
    def from_dict(cls, data: Any) -> TrainerState:
        """Inverse of :meth:`to_dict`.

        Raises:
            ConfigError: missing or mistyped fields.
        """
        try:
            h = dict(data["history"])
            h["removed_bonds"] = [tuple(p) for p in h.get("removed_bonds", [])]
            state = cls(
                epoch=int(data["epoch"]),
                batch=int(data["batch"]),
                step=int(data["step"]),
                rng=dict(data["rng"]),
                history=StageHistory(**h),
                k_before=None if data.get("k_before") is None else [float(x) for x in data["k_before"]],
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ConfigError(f"trainer checkpoint: {e}") from e
        if state.epoch < 1 or state.batch < 0:
            raise ConfigError(f"trainer checkpoint: epoch {state.epoch}, batch {state.batch} out of range")
        return state


class Trainer:
    """Trains one task on one backend.

    Args:
        task: what to learn (data, split, loss, metric, batch size, epochs).
        backend: where the physics happens.
        seed: seeds the task's split and the shuffling of each epoch.
        epochs: overrides ``task.epochs``.
        lr: overrides the backend optimiser's learning rate (needs a :class:`TunableBackend`).
        batch_size: overrides ``task.batch_size``.
        progress: called after every epoch with a :class:`Progress`.
        first_step: number of the first update (steps must keep increasing on a rig whose
            boards remember the last applied step).
        stage: stage index reported to ``progress``.
        checkpoint: called with a :class:`TrainerState` as every epoch starts and after every
            batch (a journal saves it).
        resume: continue from this state (a checkpoint of the same task, seed and overrides)
            instead of starting the stage.

    Raises:
        ConfigError: bad overrides, or ``lr`` for a backend that cannot change its optimiser.
    """

    def __init__(
        self,
        task: Task,
        backend: Backend,
        *,
        seed: int,
        epochs: int | None = None,
        lr: float | None = None,
        batch_size: int | None = None,
        progress: Callable[[Progress], None] | None = None,
        first_step: int = 1,
        stage: int = 0,
        checkpoint: Callable[[TrainerState], None] | None = None,
        resume: TrainerState | None = None,
    ) -> None:
        if backend.n_bonds != task.network.n_bonds:
            raise ConfigError(
                f"backend has {backend.n_bonds} bonds, task {task.name} has {task.network.n_bonds}"
            )
        if epochs is not None and (int(epochs) != epochs or epochs < 0):
            raise ConfigError(f"epochs must be an integer >= 0, got {epochs!r}")
        if batch_size is not None and (int(batch_size) != batch_size or batch_size < 1):
            raise ConfigError(f"batch size must be an integer >= 1, got {batch_size!r}")
        if lr is not None:
            if not isinstance(backend, TunableBackend):
                raise ConfigError(f"backend {type(backend).__name__} cannot change its learning rate")
            backend.set_optimiser(backend.optimiser_config.with_lr(lr))
        self.task = task
        self.backend = backend
        self.seed = int(seed)
        self.epochs = task.epochs if epochs is None else int(epochs)
        self.batch_size = task.batch_size if batch_size is None else int(batch_size)
        self.progress = progress
        self.first_step = int(first_step)
        self.stage = int(stage)
        self.checkpoint = checkpoint
        self.resume = resume
        #: Number of the next update (after :meth:`run`, one past the last applied).
        self.next_step = self.first_step if resume is None else resume.step

    def _evaluate(self, history: StageHistory, epoch: int, f_all: Array, y_train: NDArray[np.generic],
                  y_test: NDArray[np.generic]) -> None:
        task = self.task
        n_train = y_train.shape[0]
        y_all = self.backend.evaluate(f_all)
        y_tr, y_te = y_all[:n_train], y_all[n_train:]
        history.epoch.append(epoch)
        history.loss.append(task.loss.value(y_tr, y_train))
        history.test_loss.append(task.loss.value(y_te, y_test))
        history.train.append(task.score(y_tr, y_train))
        history.test.append(task.score(y_te, y_test))
        history.test_outputs = np.asarray(y_te).tolist()

    def run_stage(self) -> StageHistory:
        """Train for the configured epochs and return this stage's per-epoch record."""
        task = self.task
        split = task.split(self.seed)
        rng = np.random.default_rng([self.seed, 1])
        f_train = task.input_forces(split.x_train)
        f_all = np.concatenate([f_train, task.input_forces(split.x_test)])
        n = split.x_train.shape[0]
        state = self.resume
        if state is None:
            hist = StageHistory(task=task.name, metric=task.metric)
            self._evaluate(hist, 0, f_all, split.y_train, split.y_test)
            first_epoch, skip, step, k_start = 1, 0, self.first_step, None
        else:
            hist = state.history
            rng.bit_generator.state = state.rng
            first_epoch, skip, step, k_start = state.epoch, state.batch, state.step, state.k_before
        for epoch in range(first_epoch, self.epochs + 1):
            rng_state = rng.bit_generator.state
            resumed = epoch == first_epoch and k_start is not None
            k_before = np.asarray(k_start, dtype=np.float64) if resumed else self.backend.stiffness()
            if self.checkpoint is not None and not resumed:
                self.checkpoint(TrainerState(epoch, 0, step, rng_state, hist, [float(x) for x in k_before]))
            order = rng.permutation(n)
            for index, start in enumerate(range(0, n, self.batch_size)):
                if epoch == first_epoch and index < skip:
                    continue
                rows = order[start:start + self.batch_size]
                inputs = f_train[rows]
                targets = split.y_train[rows]

                def adjoint(y: Array, idx: NDArray[np.intp], targets: NDArray[np.generic] = targets) -> Array:
                    return -task.loss.grad(y, targets[np.asarray(idx)])

                self.backend.train_batch(step, inputs, adjoint)
                self.backend.update(step)
                step += 1
                hist.steps += 1
                if self.checkpoint is not None:
                    self.checkpoint(TrainerState(epoch, index + 1, step, rng_state, hist,
                                                 [float(x) for x in k_before]))
            self._evaluate(hist, epoch, f_all, split.y_train, split.y_test)
            if self.progress is not None:
                self.progress(Progress(self.stage, task.name, epoch, self.epochs, hist.loss[-1],
                                       task.metric, hist.train[-1], hist.test[-1]))
            if task.k_tol is not None:
                k_after = self.backend.stiffness()
                change = np.linalg.norm(k_after - k_before) / np.linalg.norm(k_before)
                if change <= task.k_tol:
                    hist.converged = True
                    break
        self.next_step = step
        return hist

    def run(self) -> History:
        """Train and return the :class:`History` (one stage)."""
        stage = self.run_stage()
        opt = getattr(self.backend, "optimiser_config", None)
        return History(
            task=self.task.name, seed=self.seed, stages=[stage],
            bonds=np.asarray(self.task.network.bonds).copy(), k=self.backend.stiffness(),
            optimiser=opt.as_dict() if isinstance(opt, OptimiserConfig) else {},
        )


def run_experiment(
    experiment: Experiment | str,
    seed: int,
    make_backend: BackendFactory = sim_backend,
    *,
    epochs: int | None = None,
    lr: float | None = None,
    batch_size: int | None = None,
    progress: Callable[[Progress], None] | None = None,
) -> History:
    """Run every stage of an experiment for one seed, carrying the stiffness between stages.

    Each stage gets a fresh backend from ``make_backend`` (its task may have another IO map, or
    a network with bonds cut), starts from the previous stage's stiffness and continues the
    step count. Before a stage with ``remove_bonds`` the cut network is checked for rigidity.

    ``epochs``, ``lr`` and ``batch_size`` override every stage's value.

    Raises:
        FloppyNetworkError: a cut leaves the network floppy (the message names the bonds and
            the nodes of the zero modes).
    """
    exp = get_experiment(experiment) if isinstance(experiment, str) else experiment
    stages: list[StageHistory] = []
    k_prev: Array | None = None
    network: Network | None = None
    step = 1
    backend: Backend | None = None
    task: Task | None = None
    for index, stage in enumerate(exp.stages):
        task = stage.task if network is None else stage.task.with_network(network)
        removed: list[tuple[int, int]] = []
        if stage.remove_bonds:
            task, removed, kept = _cut(task, stage.remove_bonds)
            if k_prev is not None:
                k_prev = k_prev[kept]
        network = task.network
        backend = make_backend(task)
        if k_prev is not None:
            backend.set_stiffness(np.clip(k_prev, task.k_min, task.k_max))
        trainer = Trainer(task, backend, seed=seed, epochs=_stage_epochs(stage, epochs), lr=lr,
                          batch_size=batch_size, progress=progress, first_step=step, stage=index)
        hist = trainer.run_stage()
        hist.removed_bonds = removed
        stages.append(hist)
        step = trainer.next_step
        k_prev = backend.stiffness()
    assert backend is not None and task is not None
    opt = getattr(backend, "optimiser_config", None)
    return History(task=exp.name, seed=int(seed), stages=stages,
                   bonds=np.asarray(task.network.bonds).copy(), k=backend.stiffness(),
                   optimiser=opt.as_dict() if isinstance(opt, OptimiserConfig) else {})


def _stage_epochs(stage: Stage, override: int | None) -> int | None:
    return override if override is not None else stage.epochs


def _cut(task: Task, remove: Sequence[int]) -> tuple[Task, list[tuple[int, int]], NDArray[np.intp]]:
    """Cut bonds from the task's network and check the rest is rigid."""
    net = task.network
    bonds = np.asarray(net.bonds)
    pairs = [(int(bonds[b, 0]), int(bonds[b, 1])) for b in remove]
    reduced, kept = net.without_bonds(np.asarray(remove, dtype=np.intp))
    try:
        reduced.check_rigid()
    except FloppyNetworkError as e:
        names = ", ".join(f"{i}-{j}" for i, j in pairs)
        raise FloppyNetworkError(
            f"cutting bonds {names} (0-based nodes) makes the network floppy: {e}", e.nodes
        ) from e
    return task.with_network(reduced), pairs, np.asarray(kept, dtype=np.intp)


@dataclass
class Summary:
    """Several seeds of one experiment: the histories and mean / spread of the final figures."""

    task: str
    seeds: list[int]
    histories: list[History]
    mean: dict[str, float]
    std: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        """The CLI's ``--json`` object: task, seeds, per-seed and mean / std final figures."""
        return {
            "task": self.task,
            "seeds": list(self.seeds),
            "metric": self.histories[0].metric if self.histories else "",
            "per_seed": [{"seed": h.seed, **h.final()} for h in self.histories],
            "mean": dict(self.mean),
            "std": dict(self.std),
            **self.mean,
        }


def summarise(task: str, histories: Sequence[History]) -> Summary:
    """Mean and standard deviation (population) over seeds of every final figure."""
    if not histories:
        raise ConfigError("nothing to summarise: no runs")
    finals = [h.final() for h in histories]
    keys = list(finals[0])
    mean = {k: float(np.mean([f[k] for f in finals])) for k in keys}
    std = {k: float(np.std([f[k] for f in finals])) for k in keys}
    return Summary(task, [h.seed for h in histories], list(histories), mean, std)


def run_seeds(
    experiment: Experiment | str,
    seeds: Sequence[int],
    make_backend: Callable[[Task, int], Backend] | None = None,
    *,
    epochs: int | None = None,
    lr: float | None = None,
    batch_size: int | None = None,
    progress: Callable[[int, Progress], None] | None = None,
) -> Summary:
    """Run an experiment once per seed (independent splits, shuffles and backends).

    Args:
        make_backend: ``(task, seed) -> backend``; the simulation backend by default.
        progress: called with ``(seed, Progress)`` after every epoch.
    """
    exp = get_experiment(experiment) if isinstance(experiment, str) else experiment
    if not seeds:
        raise ConfigError("no seeds given")
    histories = []
    for seed in seeds:
        factory: BackendFactory
        if make_backend is None:
            factory = sim_backend
        else:
            factory = _bind_seed(make_backend, seed)
        report = None if progress is None else _bind_progress(progress, seed)
        histories.append(run_experiment(exp, seed, factory, epochs=epochs, lr=lr,
                                        batch_size=batch_size, progress=report))
    return summarise(exp.name, histories)


def _bind_seed(make_backend: Callable[[Task, int], Backend], seed: int) -> BackendFactory:
    return lambda task: make_backend(task, seed)


def _bind_progress(progress: Callable[[int, Progress], None], seed: int) -> Callable[[Progress], None]:
    return lambda p: progress(seed, p)
