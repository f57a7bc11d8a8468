"""The in situ gradient s_fwd · s_adj against central finite differences of the loss itself."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

import host_sdk.physics.linalg as linalg
from host_sdk.physics import (
    Network,
    forward_adjoint,
    in_situ_gradient,
    paper_network,
    triangular_lattice,
)

SOLVERS = ["splu", pytest.param("cholespy", marks=pytest.mark.skipif(
    linalg._cholespy() is None, reason="cholespy not installed"))]

# Central differences with Richardson extrapolation over steps h and 2h: truncation error
# O(h⁴). With h = 1e-3 of each stiffness, truncation (~1e-12) and the rounding of the solves
# (~1e-16 · condition number / 1e-3) both stay far below the 1e-6 budget.
REL_STEP = 1e-3
TOLERANCE = 1e-6


class MSEProblem:
    """Batch-mean loss L = mean_i ½‖y_i − t_i‖² with y = u at the output DOFs."""

    def __init__(self, net: Network, forces: np.ndarray, outputs: list[tuple[int, int]],
                 targets: np.ndarray) -> None:
        self.net, self.forces, self.outputs, self.targets = net, forces, outputs, targets

    def loss(self, k: np.ndarray) -> float:
        u = self.net.solve(k, self.forces)
        y = np.stack([u[:, node, axis] for node, axis in self.outputs], axis=1)
        return float(np.mean(0.5 * np.sum((y - self.targets) ** 2, axis=1)))

    def adjoint(self, y: np.ndarray) -> np.ndarray:
        return -(y - self.targets)

    def gradient(self, k: np.ndarray, solver: str = "splu") -> np.ndarray:
        factor = self.net.factorize(k, solver=solver)
        _, grad, _ = forward_adjoint(self.net, None, self.forces, self.outputs, self.adjoint,
                                     factor=factor)
        return grad


def central_difference(loss: Callable[[np.ndarray], float], k: np.ndarray,
                       direction: np.ndarray) -> float:
    """d/dt L(k + t·direction) at t = 0, Richardson-extrapolated central differences."""
    def diff(h: float) -> float:
        return (loss(k + h * direction) - loss(k - h * direction)) / (2.0 * h)
    return (4.0 * diff(REL_STEP) - diff(2.0 * REL_STEP)) / 3.0


def fd_per_bond(loss: Callable[[np.ndarray], float], k: np.ndarray,
                bonds: np.ndarray) -> np.ndarray:
    """Finite-difference ∂L/∂k_b for the listed bonds (step relative to each k_b)."""
    out = np.empty(bonds.size)
    for n, b in enumerate(bonds):
        e = np.zeros_like(k)
        e[b] = k[b]  # step k_b·h: the derivative along e is k_b · ∂L/∂k_b
        out[n] = central_difference(loss, k, e) / k[b]
    return out


def relative_error(grad: np.ndarray, reference: np.ndarray) -> float:
    return float(np.max(np.abs(grad - reference)) / np.max(np.abs(reference)))


def lattice_problem(rows: int, cols: int, seed: int, batch: int = 4) -> tuple[MSEProblem, np.ndarray]:
    """A disordered lattice with random stiffness, random loads on a few nodes, random targets."""
    rng = np.random.default_rng(seed)
    net = triangular_lattice(rows, cols, pinned="top", disorder=0.1, seed=seed)
    k = rng.uniform(50.0, 250.0, net.n_bonds)
    free = np.setdiff1d(np.arange(net.n_nodes), net.fixed)
    picked = rng.choice(free, size=6, replace=False)
    forces = np.zeros((batch, net.n_nodes, 2))
    forces[:, picked[:3], :] = rng.normal(0.0, 0.05, (batch, 3, 2))
    outputs = [(int(node), int(axis)) for node in picked[3:] for axis in (0, 1)]
    targets = rng.normal(0.0, 1e-3, (batch, len(outputs)))
    return MSEProblem(net, forces, outputs, targets), k


# ---- the paper's network --------------------------------------------------------------------------


def test_fig1_gradient_matches_finite_differences() -> None:
    setup = paper_network()
    net, io = setup.network, setup.io["fig1"]
    forces = io.forces([[1.0]], net.n_nodes)
    problem = MSEProblem(net, forces, list(io.outputs), np.full((1, 1), -0.025))
    # Fig. 1's loss is (u_14y + 0.025)²: twice the MSE form above.
    k = np.full(28, setup.k0)
    grad = 2.0 * problem.gradient(k)
    fd = 2.0 * fd_per_bond(problem.loss, k, np.arange(28))
    assert relative_error(grad, fd) <= TOLERANCE
    # The adjoint load of Fig. 1 is −∂L/∂u_14y = −2(u_14y + 0.025): about a 5 g weight, downward.
    y, _, _ = forward_adjoint(net, k, forces, io.outputs, lambda y: -2.0 * (y + 0.025))
    assert -2.0 * (y[0, 0] + 0.025) == pytest.approx(-0.0484, abs=1e-4)


@pytest.mark.parametrize("solver", SOLVERS)
def test_paper_regression_gradient_matches_finite_differences(solver: str) -> None:
    setup = paper_network()
    net, io = setup.network, setup.io["regression"]
    rng = np.random.default_rng(0)
    x = rng.uniform(-0.196, 0.196, (16, 1))
    targets = x * np.array([0.0, 0.016, 0.004, 0.016])
    problem = MSEProblem(net, io.forces(x, net.n_nodes), list(io.outputs), targets)
    k = rng.uniform(setup.k_min, setup.k_max, 28)
    grad = problem.gradient(k, solver)
    fd = fd_per_bond(problem.loss, k, np.arange(28))
    assert relative_error(grad, fd) <= TOLERANCE
    assert np.max(np.abs(grad)) > 0.0


def test_paper_behaviour_gradient_per_bond_with_floor() -> None:
    setup = paper_network()
    net, io = setup.network, setup.io["behaviour"]
    problem = MSEProblem(net, io.forces([[1.0]], 14), list(io.outputs),
                         np.array([[-0.5e-3, -0.6e-3]]))
    k = np.random.default_rng(1).uniform(setup.k_min, setup.k_max, 28)
    grad = problem.gradient(k)
    fd = fd_per_bond(problem.loss, k, np.arange(28))
    floor = 1e-3 * np.max(np.abs(fd))
    per_bond = np.abs(grad - fd) / np.maximum(np.abs(fd), floor)
    assert np.max(per_bond) <= 1e-5


# ---- random triangular lattices ---------------------------------------------------------------------


@pytest.mark.parametrize("rows,cols,seed", [(3, 4, 0), (6, 7, 1), (10, 11, 2)])
def test_lattice_gradient_every_bond(rows: int, cols: int, seed: int) -> None:
    problem, k = lattice_problem(rows, cols, seed)
    grad = problem.gradient(k)
    fd = fd_per_bond(problem.loss, k, np.arange(problem.net.n_bonds))
    assert relative_error(grad, fd) <= TOLERANCE


@pytest.mark.parametrize("seed", [3, 4])
def test_thousand_bond_lattice_gradient_sampled(seed: int) -> None:
    problem, k = lattice_problem(18, 19, seed)
    assert 900 <= problem.net.n_bonds <= 1000
    grad = problem.gradient(k)
    rng = np.random.default_rng(seed)
    bonds = np.concatenate([np.argsort(-np.abs(grad))[:10],
                            rng.choice(problem.net.n_bonds, 30, replace=False)])
    fd = fd_per_bond(problem.loss, k, bonds)
    assert float(np.max(np.abs(grad[bonds] - fd)) / np.max(np.abs(grad))) <= TOLERANCE
    # Directional derivatives test the whole vector at once.
    for _ in range(3):
        d = rng.normal(size=k.size) * k
        fd_dir = central_difference(problem.loss, k, d)
        assert abs(grad @ d - fd_dir) <= TOLERANCE * np.abs(grad * d).sum()


@pytest.mark.slow
@pytest.mark.parametrize("rows,cols,seed", [(14, 15, 5), (18, 19, 6), (18, 19, 7)])
def test_thousand_bond_lattice_gradient_every_bond(rows: int, cols: int, seed: int) -> None:
    problem, k = lattice_problem(rows, cols, seed)
    grad = problem.gradient(k)
    fd = fd_per_bond(problem.loss, k, np.arange(problem.net.n_bonds))
    assert relative_error(grad, fd) <= TOLERANCE


# ---- structure of the in situ gradient -----------------------------------------------------------------


def test_forward_adjoint_equals_two_separate_phases() -> None:
    problem, k = lattice_problem(6, 6, seed=8, batch=5)
    net = problem.net
    y, grad, s_fwd = forward_adjoint(net, k, problem.forces, problem.outputs, problem.adjoint)
    u = net.solve(k, problem.forces)
    np.testing.assert_allclose(s_fwd, net.elongations(u), rtol=1e-12, atol=1e-20)
    np.testing.assert_allclose(y, np.stack([u[:, n, a] for n, a in problem.outputs], 1), rtol=1e-12)
    # Adjoint phase: input forces removed, −∂L/∂y applied at the outputs only.
    f_adj = np.zeros_like(problem.forces)
    adj = problem.adjoint(y)
    for col, (node, axis) in enumerate(problem.outputs):
        f_adj[:, node, axis] = adj[:, col]
    s_adj = net.elongations(net.solve(k, f_adj))
    np.testing.assert_allclose(grad, in_situ_gradient(s_fwd, s_adj), rtol=1e-10, atol=1e-25)
    per_sample = np.array([in_situ_gradient(s_fwd[b], s_adj[b]) for b in range(5)])
    np.testing.assert_allclose(grad, per_sample.mean(axis=0), rtol=1e-12, atol=1e-25)


def test_adjoint_gain_scales_gradient_linearly() -> None:
    problem, k = lattice_problem(5, 5, seed=9)
    net = problem.net
    _, g1, _ = forward_adjoint(net, k, problem.forces, problem.outputs, problem.adjoint)
    _, g50, _ = forward_adjoint(net, k, problem.forces, problem.outputs,
                                lambda y: 50.0 * problem.adjoint(y))
    np.testing.assert_allclose(g50 / 50.0, g1, rtol=1e-12, atol=1e-25)
    dofs = [net.dof(n, a) for n, a in problem.outputs]
    _, g_idx, _ = forward_adjoint(net, k, problem.forces, dofs, problem.adjoint)
    np.testing.assert_array_equal(g_idx, g1)


def test_gradient_step_descends() -> None:
    problem, k = lattice_problem(8, 8, seed=10)
    grad = problem.gradient(k)
    step = 1e-3 * np.max(k) / np.max(np.abs(grad))
    assert problem.loss(k - step * grad) < problem.loss(k) < problem.loss(k + step * grad)


def test_sign_convention_on_single_bond() -> None:
    # One free node on a horizontal bond (plus a vertical one): u = F/k, L = ½(u − t)².
    # ∂L/∂k = (u − t)·(−F/k²); s_fwd = F/k and s_adj = −(u − t)/k give the same.
    net = Network([[0.0, 0.0], [-0.016, 0.0], [0.0, -0.016]], [[1, 0], [2, 0]], [1, 2])
    k = np.array([120.0, 150.0])
    force, target = 0.06, 1e-4
    forces = np.zeros((1, 3, 2))
    forces[0, 0, 0] = force
    _, grad, s = forward_adjoint(net, k, forces, [(0, 0)], lambda y: -(y - target))
    u = force / k[0]
    assert s[0, 0] == pytest.approx(u, rel=1e-14)
    assert grad[0] == pytest.approx((u - target) * (-force / k[0] ** 2), rel=1e-12)
    assert grad[1] == 0.0
