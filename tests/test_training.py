"""The simulation backend, the trainer and the paper's tasks (fast checks; reproductions are slow)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from host_sdk.errors import ConfigError, FloppyNetworkError
from host_sdk.optim import Optimiser, OptimiserConfig
from host_sdk.physics import Network
from host_sdk.tasks import Experiment, Stage, bond_indices, get_experiment, get_task
from host_sdk.training import (
    Backend,
    Progress,
    SimBackend,
    Trainer,
    TunableBackend,
    run_experiment,
    run_seeds,
    sim_backend,
    summarise,
)

MM = 1e-3


def _staged(name: str, epochs: tuple[int, ...]) -> Experiment:
    exp = get_experiment(name)
    return replace(exp, stages=tuple(replace(s, epochs=n) for s, n in zip(exp.stages, epochs)))


class PerSampleBackend:
    """A rig-like backend: walks the batch sample by sample and asks for one adjoint at a time.

    It solves each sample on its own (no shared factorisation) and accumulates the per-sample
    products itself, as the boards do, so it checks the trainer's seam independently of
    :class:`SimBackend`.
    """

    def __init__(self, task, config: OptimiserConfig) -> None:
        self.net = task.network
        self.io = task.io
        self.n_bonds = task.network.n_bonds
        self.opt = Optimiser(config, task.k0, task.k_min, task.k_max, n_bonds=self.n_bonds)
        self.acc = np.zeros(self.n_bonds)
        self.count = 0
        self.adjoint_calls: list[int] = []

    def _field(self, values: np.ndarray, dofs) -> np.ndarray:
        f = np.zeros((self.net.n_nodes, 2))
        for v, (node, axis) in zip(values, dofs):
            f[node, axis] += v
        return f

    def _read(self, u: np.ndarray) -> np.ndarray:
        return np.array([u[node, axis] for node, axis in self.io.outputs])

    def train_batch(self, step, inputs, adjoint):
        outs = []
        for i, row in enumerate(inputs):
            u = self.net.solve(self.opt.k, self._field(row, self.io.inputs))
            y = self._read(u)[None, :]
            f_adj = adjoint(y, np.array([i]))
            self.adjoint_calls.append(len(f_adj))
            lam = self.net.solve(self.opt.k, self._field(f_adj[0], self.io.outputs))
            self.acc += self.net.elongations(u) * self.net.elongations(lam)
            self.count += 1
            outs.append(y[0])
        return np.array(outs)

    def update(self, step):
        self.opt.step(self.acc / self.count)
        self.acc[:] = 0.0
        self.count = 0

    def evaluate(self, inputs):
        return np.array([self._read(self.net.solve(self.opt.k, self._field(r, self.io.inputs)))
                         for r in inputs])

    def stiffness(self):
        return self.opt.k

    def set_stiffness(self, k):
        self.opt.reset(k)


def _batch_loss(task, k: np.ndarray, x: np.ndarray, t: np.ndarray) -> float:
    backend = sim_backend(task)
    backend.set_stiffness(k)
    return task.loss.value(backend.evaluate(task.input_forces(x)), t)


@pytest.mark.parametrize("name", ["iris", "regression", "behaviour-ce", "behaviour-mse"])
def test_accumulated_gradient_is_dL_dk_by_central_differences(name: str) -> None:
    task = get_task(name)
    split = task.split(0)
    x, t = split.x_train[:16], split.y_train[:16]
    rng = np.random.default_rng(4)
    k = rng.uniform(task.k_min, task.k_max, size=task.network.n_bonds)
    backend = sim_backend(task, optimiser=OptimiserConfig("sgd", lr=1e-12))
    backend.set_stiffness(k)
    backend.train_batch(1, task.input_forces(x), lambda y, idx: -task.loss.grad(y, t[idx]))
    backend.update(1)
    analytic = backend.last_gradient
    numeric = np.zeros_like(k)
    h = 1e-4
    for b in range(k.size):
        kp, km = k.copy(), k.copy()
        kp[b] += h
        km[b] -= h
        numeric[b] = (_batch_loss(task, kp, x, t) - _batch_loss(task, km, x, t)) / (2 * h)
    assert np.max(np.abs(analytic - numeric)) <= 1e-6 * np.max(np.abs(analytic))


def test_update_applies_once_per_step_and_batches_of_a_step_accumulate() -> None:
    task = get_task("iris")
    x = task.input_forces(task.features[:10])
    t = task.targets[:10]

    def adj(y, idx, t=t):
        return -task.loss.grad(y, t[idx])

    whole = sim_backend(task, optimiser=OptimiserConfig("sgd", lr=100.0))
    whole.train_batch(5, x, adj)
    whole.update(5)
    parts = sim_backend(task, optimiser=OptimiserConfig("sgd", lr=100.0))
    parts.train_batch(5, x[:4], lambda y, idx: -task.loss.grad(y, t[:4][idx]))
    parts.train_batch(5, x[4:], lambda y, idx: -task.loss.grad(y, t[4:][idx]))
    parts.update(5)
    np.testing.assert_allclose(parts.last_gradient, whole.last_gradient, rtol=1e-12)
    np.testing.assert_allclose(parts.stiffness(), whole.stiffness(), rtol=1e-14)
    k_after = whole.stiffness()
    whole.update(5)  # a repeated step changes nothing
    assert whole.stiffness().tolist() == k_after.tolist()
    np.testing.assert_allclose(k_after, task.k0 - 100.0 * whole.last_gradient, rtol=1e-14)
    with pytest.raises(ConfigError, match="no gradient accumulated for step 6"):
        whole.update(6)
    whole.train_batch(7, x, adj)
    with pytest.raises(ConfigError, match="step 7 has an unapplied gradient"):
        whole.train_batch(8, x, adj)
    whole.discard()
    whole.train_batch(8, x, adj)


def test_sim_backend_rejects_bad_input() -> None:
    task = get_task("iris")
    backend = sim_backend(task)
    with pytest.raises(ConfigError, match=r"\(B, 4\).*\(2, 3\)"):
        backend.evaluate(np.zeros((2, 3)))
    with pytest.raises(ConfigError, match="NaN"):
        backend.evaluate(np.full((1, 4), np.nan))
    with pytest.raises(ValueError, match="28"):
        backend.set_stiffness(np.full(27, 137.5))
    with pytest.raises(ValueError):
        backend.set_stiffness(np.full(28, -1.0))
    with pytest.raises(ConfigError, match="outside"):
        backend.set_stiffness(np.full(28, 500.0))
    with pytest.raises(ConfigError, match=r"output dof \(14, 0\)"):
        SimBackend(task.network, replace(task.io, outputs=((14, 0),)), k0=137.5, k_min=100.0,
                   k_max=200.0, optimiser=task.optimiser)
    assert isinstance(backend, Backend) and isinstance(backend, TunableBackend)


def test_behaviour_ce_reaches_the_paper_outputs_with_every_bond_at_a_bound() -> None:
    task = get_task("behaviour-ce")
    backend = sim_backend(task)
    history = Trainer(task, backend, seed=0).run()
    u13, u14 = history.stages[0].test_outputs[0]
    assert u13 == pytest.approx(-0.6253 * MM, abs=0.001 * MM)
    assert u14 == pytest.approx(-0.4800 * MM, abs=0.001 * MM)
    k = history.k
    assert np.all((k == task.k_min) | (k == task.k_max))
    assert history.stages[0].converged
    assert history.final()["loss"] == pytest.approx(-np.log(0.6253 / (0.6253 + 0.4800)), abs=2e-4)


def test_behaviour_mse_reaches_its_reachable_target() -> None:
    task = get_task("behaviour-mse")
    history = Trainer(task, sim_backend(task), seed=0).run()
    y = np.array(history.stages[0].test_outputs[0])
    np.testing.assert_allclose(y / MM, [-0.5, -0.6], atol=1e-4)
    assert history.final()["relative_error"] < 1e-4


def test_iris_two_seeds_fast_check() -> None:
    # measured: seed 0 test 0.933 / train 0.962, seed 1 test 0.978 / train 0.943
    summary = run_seeds("iris", [0, 1])
    assert summary.mean["test_accuracy"] >= 0.95
    assert summary.mean["train_accuracy"] >= 0.94
    assert summary.mean["loss"] < 0.26
    assert summary.std["test_accuracy"] > 0  # two different splits


def test_regression_reaches_the_best_reachable_error_fast() -> None:
    history = run_experiment("regression", 0, epochs=100)
    assert history.final()["relative_error"] == pytest.approx(0.1395, rel=0.01)
    scaled = run_experiment("regression-scaled", 0, epochs=200)
    assert scaled.final()["relative_error"] <= 0.01


def test_switch_returns_to_iris_fast() -> None:
    history = run_experiment(_staged("switch", (100, 200, 100)), 1)
    iris1, reg, iris2 = history.stages
    assert [s.task for s in history.stages] == ["iris", "regression-scaled", "iris"]
    assert reg.test[-1] <= 0.01
    assert iris2.test[0] < 0.5  # regression wiped the classifier out ...
    assert iris2.test[-1] >= 0.95  # ... and 100 epochs bring it back
    assert iris1.steps == iris2.steps == 700 and reg.steps == 200 * 5


def test_damage_cut_is_rigid_and_retraining_recovers() -> None:
    history = run_experiment("damage", 1)
    before, after = history.stages
    assert [tuple(p) for p in after.removed_bonds] == [(9, 10), (10, 13)]
    assert len(history.k) == len(history.bonds) == 26
    assert after.test[0] < 0.7  # measured 0.533 right after the cut
    assert after.test[-1] >= 0.84  # measured 0.978


def test_floppy_cut_is_reported_with_its_nodes() -> None:
    iris = get_task("iris")
    # paper node 13 keeps one bond (13-14) after losing 10-13 and 11-13
    cut = bond_indices(iris.network, ((9, 12), (10, 12)))
    exp = Experiment("cut", "", (Stage(iris, epochs=1), Stage(iris, epochs=1, remove_bonds=cut)))
    with pytest.raises(FloppyNetworkError, match="cutting bonds 9-12, 10-12") as info:
        run_experiment(exp, 0)
    assert 12 in info.value.nodes


def test_trainer_is_deterministic_and_reports_progress() -> None:
    task = get_task("iris")
    seen: list[Progress] = []
    a = Trainer(task, sim_backend(task), seed=5, epochs=3, progress=seen.append).run()
    b = Trainer(task, sim_backend(task), seed=5, epochs=3).run()
    c = Trainer(task, sim_backend(task), seed=6, epochs=3).run()
    assert a.k.tolist() == b.k.tolist() and a.stages[0].loss == b.stages[0].loss
    assert a.k.tolist() != c.k.tolist()
    assert [p.epoch for p in seen] == [1, 2, 3]
    assert seen[-1].loss == a.stages[0].loss[-1] and seen[-1].test == a.stages[0].test[-1]
    assert a.stages[0].epoch == [0, 1, 2, 3] and a.stages[0].steps == 3 * 7


def test_per_sample_backend_trains_exactly_like_the_simulation() -> None:
    task = get_task("iris")
    config = OptimiserConfig("adam", lr=1.0, eps=1e-12)
    rig = PerSampleBackend(task, config)
    sim = sim_backend(task, optimiser=config)
    h_rig = Trainer(task, rig, seed=2, epochs=2, batch_size=8).run()
    h_sim = Trainer(task, sim, seed=2, epochs=2, batch_size=8).run()
    assert set(rig.adjoint_calls) == {1}
    np.testing.assert_allclose(h_rig.k, h_sim.k, rtol=1e-9)
    np.testing.assert_allclose(h_rig.stages[0].loss, h_sim.stages[0].loss, rtol=1e-9)
    with pytest.raises(ConfigError, match="cannot change its learning rate"):
        Trainer(task, rig, seed=0, lr=0.1)


def test_trainer_overrides_and_checks() -> None:
    task = get_task("iris")
    backend = sim_backend(task)
    Trainer(task, backend, seed=0, lr=0.25)
    assert backend.optimiser_config.lr == 0.25
    with pytest.raises(ConfigError, match="batch size"):
        Trainer(task, backend, seed=0, batch_size=0)
    with pytest.raises(ConfigError, match="epochs"):
        Trainer(task, backend, seed=0, epochs=-1)
    small = Network([[0, 0], [1, 0], [0, 1]], [[0, 1], [1, 2], [0, 2]], fixed=[0, 1])
    with pytest.raises(ConfigError, match="backend has 28 bonds, task iris has 3"):
        Trainer(task.with_network(small), backend, seed=0)


def test_summary_of_seeds() -> None:
    hs = [run_experiment("behaviour-mse", s, epochs=5) for s in (0, 1)]
    s = summarise("behaviour-mse", hs)
    assert s.seeds == [0, 1]
    assert s.mean["loss"] == pytest.approx(np.mean([h.final()["loss"] for h in hs]))
    d = s.to_dict()
    assert d["task"] == "behaviour-mse" and d["relative_error"] == s.mean["relative_error"]
    assert [e["seed"] for e in d["per_seed"]] == [0, 1]
    with pytest.raises(ConfigError, match="no runs"):
        summarise("x", [])


# ---- reproductions of the paper (slow) ---------------------------------------------------------


@pytest.mark.slow
def test_iris_ten_seeds_mean_test_accuracy() -> None:
    summary = run_seeds("iris", range(10))
    # measured: test 0.9511, train 0.9543, loss 0.226
    assert summary.mean["test_accuracy"] >= 0.95
    assert summary.mean["train_accuracy"] >= 0.95
    assert summary.mean["loss"] < 0.24


@pytest.mark.slow
def test_regression_full_runs() -> None:
    for seed in range(3):
        assert run_experiment("regression", seed).final()["relative_error"] == pytest.approx(0.1395, rel=0.01)
        assert run_experiment("regression-scaled", seed).final()["relative_error"] <= 0.01


@pytest.mark.slow
def test_switch_ten_seeds() -> None:
    summary = run_seeds("switch", range(10))
    assert summary.mean["test_accuracy"] >= 0.95
    for h in summary.histories:
        assert h.stages[1].test[-1] <= 0.01


@pytest.mark.slow
def test_damage_ten_seeds() -> None:
    summary = run_seeds("damage", range(10))
    after_cut = np.mean([h.stages[1].test[0] for h in summary.histories])
    assert after_cut < 0.7
    assert summary.mean["test_accuracy"] >= 0.84
