"""Physics core: closed-form cases, the paper's numbers, equilibrium, floppy detection, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
from cases import Case, FloppyCase, floppy_cases, rigid_cases

import host_sdk.physics.linalg as linalg
import host_sdk.physics.network as network_module
from host_sdk.errors import FloppyNetworkError, PhysicsError
from host_sdk.physics import (
    Factor,
    IOMap,
    Network,
    forward_adjoint,
    in_situ_gradient,
    paper_network,
    triangular_lattice,
    validate_stiffness,
)

SOLVERS = ["splu", pytest.param("cholespy", marks=pytest.mark.skipif(
    linalg._cholespy() is None, reason="cholespy not installed"))]


def _random_lattice(rows: int, cols: int, seed: int) -> tuple[Network, np.ndarray]:
    net = triangular_lattice(rows, cols, disorder=0.1, seed=seed)
    k = np.random.default_rng(seed).uniform(50.0, 250.0, net.n_bonds)
    return net, k


# ---- closed-form catalogue ---------------------------------------------------------------------


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("case", rigid_cases(), ids=lambda c: c.name)
def test_catalogue_displacements_and_elongations(case: Case, solver: str) -> None:
    factor = case.network.factorize(case.k, solver=solver)
    u = case.network.solve(None, case.forces, factor=factor)
    assert u.shape == case.forces.shape
    if case.u is not None:
        np.testing.assert_allclose(u, case.u, rtol=1e-9, atol=case.atol)
    if case.s is not None:
        np.testing.assert_allclose(case.network.elongations(u), case.s, rtol=1e-9, atol=case.atol)
    for (node, axis), expected in case.checks.items():
        assert abs(u[node, axis] - expected) <= case.atol, (node, axis, u[node, axis])


def test_paper_uniform_response_in_mm() -> None:
    setup = paper_network()
    k = np.full(28, setup.k0)
    u = setup.network.solve(k, setup.io["behaviour"].forces([1.0], 14))
    assert round(u[12, 1] * 1e3, 4) == -0.5243
    assert round(u[13, 1] * 1e3, 4) == -0.5243
    u1 = setup.network.solve(k, setup.io["fig1"].forces([1.0], 14))
    assert round(u1[13, 1] * 1e3, 3) == -0.805


def test_chain_is_linear_in_force_and_compliance_adds() -> None:
    case = [c for c in rigid_cases() if c.name == "chain"][0]
    u1 = case.network.solve(case.k, case.forces)
    u3 = case.network.solve(case.k, 3.0 * case.forces)
    np.testing.assert_allclose(u3, 3.0 * u1, rtol=1e-12, atol=0)
    n = 5
    tip = u1[n, 0] / case.forces[n, 0]
    assert tip == pytest.approx(float(np.sum(1.0 / case.k[:n])), rel=1e-12)


# ---- the paper's network ------------------------------------------------------------------------


def test_paper_geometry() -> None:
    setup = paper_network()
    net = setup.network
    assert (net.n_nodes, net.n_bonds, net.n_free) == (14, 28, 24)
    assert net.fixed.tolist() == [0, 4]
    np.testing.assert_allclose(net.lengths, 0.016, rtol=1e-5)
    np.testing.assert_allclose(net.positions[10], (-0.032, -0.0277128))
    assert net.bonds[0].tolist() == [0, 1] and net.bonds[-1].tolist() == [11, 13]
    net.check_rigid()
    # Bounds follow k = Y t w / L with Y = 0.55 MPa, t = 2 mm, L = 16 mm, w = 1.5/2.5/2 mm.
    for w_mm, k in ((1.5, setup.k_min), (2.5, setup.k_max), (2.0, setup.k0)):
        assert k == pytest.approx(0.55e6 * 2e-3 * w_mm * 1e-3 / 16e-3, rel=1e-12)


def test_paper_node_numbering_and_io_maps() -> None:
    setup = paper_network()
    assert setup.paper_node(1) == 0 and setup.paper_node(11) == 10 and setup.paper_node(14) == 13
    for bad in (0, 15, -1):
        with pytest.raises(PhysicsError, match=str(bad)):
            setup.paper_node(bad)
    io = setup.io
    assert io["fig1"] == IOMap(((12, 1),), (-0.098,), ((13, 1),))
    assert io["behaviour"] == IOMap(((10, 1),), (-0.049,), ((12, 1), (13, 1)))
    assert io["regression"] == IOMap(((10, 1),), (1.0,), ((12, 0), (12, 1), (13, 0), (13, 1)))
    assert io["iris"] == IOMap(((13, 1), (11, 1), (12, 1), (9, 1)), (-0.049,) * 4,
                               ((7, 0), (1, 0), (2, 0)))


def test_iomap_forces() -> None:
    io = paper_network().io["iris"]
    f = io.forces([[1.0, 0.5, 0.0, 0.25], [0.0, 0.0, 1.0, 0.0]], 14)
    assert f.shape == (2, 14, 2)
    expected = np.zeros((2, 14, 2))
    expected[0, 13, 1], expected[0, 11, 1], expected[0, 9, 1] = -0.049, -0.0245, -0.01225
    expected[1, 12, 1] = -0.049
    np.testing.assert_allclose(f, expected, rtol=0, atol=1e-15)
    assert io.forces([1.0, 0.0, 0.0, 0.0], 14).shape == (14, 2)
    with pytest.raises(PhysicsError, match=r"\(3,\)"):
        io.forces([1.0, 2.0, 3.0], 14)
    with pytest.raises(PhysicsError, match="2 input scales"):
        IOMap(((0, 0),), (1.0, 2.0), ((1, 0),))


# ---- equilibrium, batching, solvers --------------------------------------------------------------


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("rows,cols,pinned", [(5, 6, "top"), (8, 5, "left"), (7, 9, "corners")])
def test_lattice_equilibrium(rows: int, cols: int, pinned: str, solver: str) -> None:
    net = triangular_lattice(rows, cols, pinned=pinned, disorder=0.1, seed=rows)
    k = np.random.default_rng(cols).uniform(50.0, 250.0, net.n_bonds)
    f = np.random.default_rng(1).normal(0.0, 0.05, (3, net.n_nodes, 2))
    u = net.solve(None, f, factor=net.factorize(k, solver=solver))
    # Bond tensions k s balance the applied force at every free node.
    s = net.elongations(u)
    c = net.compatibility()
    internal = (c.T @ (k[:, None] * s.T)).T.reshape(3, net.n_nodes, 2)
    free = np.setdiff1d(np.arange(net.n_nodes), net.fixed)
    np.testing.assert_allclose(internal[:, free], f[:, free], rtol=0, atol=1e-12)
    assert np.all(u[:, net.fixed] == 0.0)


def test_batched_solve_equals_per_sample_and_ignores_fixed_loads() -> None:
    net, k = _random_lattice(6, 7, seed=3)
    f = np.random.default_rng(4).normal(0.0, 0.05, (5, net.n_nodes, 2))
    u = net.solve(k, f)
    for b in range(5):
        np.testing.assert_allclose(u[b], net.solve(k, f[b]), rtol=1e-12, atol=1e-18)
    g = f.copy()
    g[:, net.fixed] += 7.0
    np.testing.assert_array_equal(net.solve(k, g), u)
    s = net.elongations(u)
    assert s.shape == (5, net.n_bonds)
    np.testing.assert_allclose(s[2], net.elongations(u[2]), rtol=1e-13, atol=1e-20)


def test_splu_and_cholespy_agree() -> None:
    pytest.importorskip("cholespy")
    net, k = _random_lattice(12, 13, seed=5)
    f = np.random.default_rng(6).normal(0.0, 0.05, (4, net.n_nodes, 2))
    u1 = net.solve(None, f, factor=net.factorize(k, solver="splu"))
    u2 = net.solve(None, f, factor=net.factorize(k, solver="cholespy"))
    np.testing.assert_allclose(u2, u1, rtol=1e-9, atol=1e-12 * np.abs(u1).max())
    assert net.factorize(k, solver="auto").solver == "cholespy"


def test_stiffness_matrix_matches_dense_definition() -> None:
    net, k = _random_lattice(4, 5, seed=7)
    kmat = net.stiffness_matrix(k)
    assert isinstance(kmat, sp.csc_matrix) and kmat.shape == (net.n_free, net.n_free)
    c = net.compatibility().toarray()[:, net.free_dofs]
    np.testing.assert_allclose(kmat.toarray(), c.T @ np.diag(k) @ c, rtol=1e-13, atol=1e-10)
    dense = kmat.toarray()
    np.testing.assert_array_equal(dense, dense.T)


def test_compatibility_and_rigid_motions() -> None:
    net = triangular_lattice(4, 4, disorder=0.05, seed=2)
    c = net.compatibility()
    assert c.shape == (net.n_bonds, 2 * net.n_nodes)
    u = np.random.default_rng(0).normal(size=(net.n_nodes, 2))
    np.testing.assert_allclose(net.elongations(u), c @ u.reshape(-1), rtol=1e-13)
    # Translations and infinitesimal rotations stretch no bond.
    shift = np.tile([0.3, -0.2], (net.n_nodes, 1))
    rot = np.stack([-net.positions[:, 1], net.positions[:, 0]], axis=1)
    np.testing.assert_allclose(net.elongations(np.stack([shift, rot])), 0.0, atol=1e-16)
    assert net.dof(3, 1) == 7
    with pytest.raises(PhysicsError, match="16"):
        net.dof(16, 0)
    with pytest.raises(PhysicsError, match="axis 2"):
        net.dof(0, 2)


@pytest.mark.parametrize("solver", SOLVERS)
def test_factor_solve_free_and_reuse_checks(solver: str) -> None:
    setup = paper_network()
    net, k = setup.network, np.full(28, setup.k0)
    fac = net.factorize(k, solver=solver)
    assert isinstance(fac, Factor) and fac.n_free == 24 and fac.solver == solver
    rhs = np.random.default_rng(0).normal(size=(24, 3))
    x = fac.solve_free(rhs)
    np.testing.assert_allclose(net.stiffness_matrix(k) @ x, rhs, atol=1e-12)
    np.testing.assert_allclose(fac.solve_free(rhs[:, 1]), x[:, 1], rtol=1e-13)
    with pytest.raises(PhysicsError, match=r"\(23,\)"):
        fac.solve_free(np.zeros(23))
    other = triangular_lattice(3, 3)
    with pytest.raises(PhysicsError, match="different network"):
        other.solve(None, np.zeros((9, 2)), factor=fac)
    np.testing.assert_array_equal(net.solve(k, np.ones((14, 2)), factor=fac),
                                  net.solve(None, np.ones((14, 2)), factor=fac))
    with pytest.raises(PhysicsError, match="different stiffness vector"):
        net.solve(k * 1.01, np.zeros((14, 2)), factor=fac)
    with pytest.raises(PhysicsError, match="stiffness vector k or a factor"):
        net.solve(None, np.zeros((14, 2)))
    with pytest.raises(PhysicsError, match="unknown solver 'lu'"):
        net.factorize(k, solver="lu")


# ---- builders -----------------------------------------------------------------------------------


@pytest.mark.parametrize("pinned", ["top", "bottom", "left", "sides", "corners"])
def test_triangular_lattice_shapes_and_rigidity(pinned: str) -> None:
    rows, cols = 5, 6
    net = triangular_lattice(rows, cols, a=0.02, pinned=pinned)
    assert net.n_nodes == rows * cols
    assert net.n_bonds == 3 * rows * cols - 2 * rows - 2 * cols + 1
    np.testing.assert_allclose(net.lengths, 0.02, rtol=1e-12)
    expected_fixed = {
        "top": list(range(cols)),
        "bottom": list(range((rows - 1) * cols, rows * cols)),
        "left": [r * cols for r in range(rows)],
        "sides": sorted([r * cols for r in range(rows)] + [r * cols + cols - 1 for r in range(rows)]),
        "corners": [0, cols - 1],
    }[pinned]
    assert net.fixed.tolist() == expected_fixed
    net.check_rigid()


def test_triangular_lattice_disorder_is_seeded() -> None:
    a = triangular_lattice(4, 4, disorder=0.1, seed=9)
    b = triangular_lattice(4, 4, disorder=0.1, seed=9)
    c = triangular_lattice(4, 4, disorder=0.1, seed=10)
    np.testing.assert_array_equal(a.positions, b.positions)
    assert not np.allclose(a.positions, c.positions)
    assert 0.05 < np.std(a.lengths / 0.016 - 1.0) < 0.3


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(rows=1, cols=4), "rows"),
        (dict(rows=3, cols=0), "cols"),
        (dict(rows=3, cols=3, pinned="middle"), "middle"),
        (dict(rows=3, cols=3, disorder=0.5), "disorder"),
        (dict(rows=3, cols=3, a=-1.0), "lattice constant"),
    ],
)
def test_triangular_lattice_rejects_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        triangular_lattice(**kwargs)


def test_without_bonds() -> None:
    net = paper_network().network
    cut, kept = net.without_bonds([0, 27])
    assert cut.n_bonds == 26 and kept.tolist() == list(range(1, 27))
    np.testing.assert_array_equal(cut.bonds, net.bonds[kept])
    cut2, kept2 = net.without_bonds([[1, 0], [11, 13]])  # node pairs, either order
    np.testing.assert_array_equal(kept2, kept)
    assert net.n_bonds == 28  # the original is untouched
    with pytest.raises(PhysicsError, match="28"):
        net.without_bonds([28])
    with pytest.raises(PhysicsError, match="nodes 0 and 13"):
        net.without_bonds([[0, 13]])
    with pytest.raises(PhysicsError, match="bond 3 is listed more than once"):
        net.without_bonds([3, 3])
    with pytest.raises(PhysicsError, match="every bond"):
        net.without_bonds(np.arange(28))


# ---- floppy networks ----------------------------------------------------------------------------


@pytest.mark.parametrize("dense", [True, False], ids=["dense", "sparse"])
@pytest.mark.parametrize("case", floppy_cases(), ids=lambda c: c.name)
def test_floppy_networks_name_the_moving_nodes(
    case: FloppyCase, dense: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(network_module, "DENSE_RIGIDITY_LIMIT", 10**6 if dense else 0)
    net = Network(case.network.positions, case.network.bonds, case.network.fixed, name=case.name)
    with pytest.raises(FloppyNetworkError) as info:
        net.check_rigid()
    assert info.value.nodes == case.nodes
    assert "floppy" in str(info.value) and str(case.nodes[0]) in str(info.value)
    k = np.full(net.n_bonds, 100.0)
    with pytest.raises(FloppyNetworkError) as info2:
        net.solve(k, np.zeros((net.n_nodes, 2)))
    assert info2.value.nodes == case.nodes
    with pytest.raises(FloppyNetworkError):
        net.check_rigid(k)


@pytest.mark.parametrize("solver", SOLVERS)
def test_singular_matrix_rejected_by_factor(solver: str) -> None:
    # A bare, exactly singular matrix (no network check in front): the backend must refuse it.
    lone = sp.csc_matrix(np.array([[1.0, -1.0], [-1.0, 1.0]]))
    with pytest.raises(FloppyNetworkError, match="2 free DOFs"):
        Factor(lone, solver=solver)


def test_sparse_rigidity_check_passes_rigid_lattice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(network_module, "DENSE_RIGIDITY_LIMIT", 0)
    net = triangular_lattice(25, 25, pinned="corners", disorder=0.1, seed=1)
    net.check_rigid()
    net.check_rigid(np.random.default_rng(0).uniform(50, 250, net.n_bonds))


# ---- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "k,match",
    [
        (np.full(27, 137.5), r"\(27,\)"),
        (np.full((28, 1), 137.5), r"\(28, 1\)"),
        (np.where(np.arange(28) == 5, np.nan, 137.5), "bond 5"),
        (np.where(np.arange(28) == 7, -1.0, 137.5), "bond 7"),
        (np.where(np.arange(28) == 9, 0.0, 137.5), "bond 9"),
        (np.where(np.arange(28) == 2, np.inf, 137.5), "bond 2"),
        (["a"] * 28, "numeric"),
    ],
)
def test_bad_stiffness(k: object, match: str) -> None:
    net = paper_network().network
    with pytest.raises(ValueError, match=match):
        net.solve(k, np.zeros((14, 2)))
    with pytest.raises(PhysicsError, match=match):
        validate_stiffness(k, 28)


def test_validate_stiffness_copies() -> None:
    k = np.full(3, 2.0)
    out = validate_stiffness(k, 3)
    out[0] = 5.0
    assert k[0] == 2.0


@pytest.mark.parametrize(
    "positions,bonds,fixed,match",
    [
        ([[0, 0, 0], [1, 0, 0]], [[0, 1]], [0], r"\(2, 3\)"),
        ([[0, 0]], [[0, 0]], [], r"\(1, 2\)"),
        ([[0, 0], [np.nan, 1]], [[0, 1]], [0], "node 1"),
        ([[0, 0], [1, 0]], [[0, 2]], [0], "bond 0 .*0..1"),
        ([[0, 0], [1, 0], [0, 1]], [[0, 1], [1, -1]], [0], "bond 1"),
        ([[0, 0], [1, 0], [0, 1]], [[0, 1], [2, 2]], [0], "bond 1 joins node 2 to itself"),
        ([[0, 0], [1, 0], [0, 1]], [[0, 1], [1, 2], [1, 0]], [0], "bond 2 .*duplicates bond 0"),
        ([[0, 0], [0, 0], [0, 1]], [[0, 1], [1, 2]], [0], "bond 0 .*zero length"),
        ([[0, 0], [1, 0]], [[0, 1, 1]], [0], r"\(1, 3\)"),
        ([[0, 0], [1, 0]], [], [0], r"\(0,\)"),
        ([[0, 0], [1, 0]], [[0.5, 1]], [0], "integer"),
        ([[0, 0], [1, 0]], [[0, 1]], [5], "fixed node index 5"),
        ([[0, 0], [1, 0]], [[0, 1]], [0, 0], "fixed node 0 is listed more than once"),
        ([[0, 0], [1, 0]], [[0, 1]], [[0]], r"\(1, 1\)"),
        ([[0, 0], [1, 0]], [[0, 1]], [0, 1], "no free"),
    ],
)
def test_bad_network(positions: object, bonds: object, fixed: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Network(positions, bonds, fixed)


def test_bad_forces_and_displacements() -> None:
    net = paper_network().network
    k = np.full(28, 137.5)
    with pytest.raises(PhysicsError, match=r"\(13, 2\)"):
        net.solve(k, np.zeros((13, 2)))
    with pytest.raises(PhysicsError, match=r"\(2, 14, 3\)"):
        net.solve(k, np.zeros((2, 14, 3)))
    f = np.zeros((14, 2))
    f[3, 1] = np.nan
    with pytest.raises(PhysicsError, match="NaN"):
        net.solve(k, f)
    with pytest.raises(PhysicsError, match=r"\(28,\)"):
        net.elongations(np.zeros(28))


def test_forward_adjoint_rejects_bad_input() -> None:
    setup = paper_network()
    net, k = setup.network, np.full(28, setup.k0)
    f = setup.io["behaviour"].forces([[1.0]], 14)
    ok = lambda y: -y  # noqa: E731
    with pytest.raises(PhysicsError, match=r"output DOF \(0, 1\) is on a fixed node"):
        forward_adjoint(net, k, f, [(0, 1)], ok)
    with pytest.raises(PhysicsError, match="node index 14"):
        forward_adjoint(net, k, f, [(14, 0)], ok)
    with pytest.raises(PhysicsError, match=r"\(1, 3\)"):
        forward_adjoint(net, k, f, [(12, 1)], lambda y: np.zeros((1, 3)))
    with pytest.raises(PhysicsError, match="NaN"):
        forward_adjoint(net, k, f, [(12, 1)], lambda y: y * np.nan)
    with pytest.raises(PhysicsError, match="non-numeric"):
        forward_adjoint(net, k, f, [(12, 1)], lambda y: [["x"]])

    class LossFailure(ValueError):
        pass

    def failing(y: np.ndarray) -> np.ndarray:
        raise LossFailure("target missing")

    with pytest.raises(LossFailure, match="target missing"):
        forward_adjoint(net, k, f, [(12, 1)], failing)
    with pytest.raises(PhysicsError, match=r"\(B, 14, 2\)"):
        forward_adjoint(net, k, f[0], [(12, 1)], ok)
    with pytest.raises(PhysicsError, match="shapes"):
        in_situ_gradient(np.zeros((2, 3)), np.zeros((2, 4)))


def test_inputs_are_not_mutated_and_network_is_read_only() -> None:
    pos = np.array([[0.0, 0.0], [1.0, 0.0], [0.5, math.sqrt(3) / 2]])
    bonds = np.array([[0, 1], [0, 2], [1, 2]])
    net = Network(pos, bonds, [0, 1])
    pos[2, 0] = 9.0
    bonds[0] = (1, 2)
    assert net.positions[2, 0] == 0.5 and net.bonds[0].tolist() == [0, 1]
    with pytest.raises(ValueError):
        net.positions[0, 0] = 1.0
    k = np.array([1.0, 2.0, 3.0])
    f = np.zeros((3, 2))
    f[2] = (0.1, 0.2)
    k0, f0 = k.copy(), f.copy()
    forward_adjoint(net, k, f[None], [(2, 0)], lambda y: -y)
    np.testing.assert_array_equal(k, k0)
    np.testing.assert_array_equal(f, f0)
