"""A catalogue of small named networks with answers known in closed form.

Each :class:`Case` holds a network, a stiffness vector, one load and the displacements and
elongations that load must produce. Each :class:`FloppyCase` holds a network with zero modes and
the 0-based nodes that move in them. Tests and benchmarks import from here; nothing here
computes an answer with the code under test.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from host_sdk.physics import Network, paper_network, triangular_lattice

SQRT3 = math.sqrt(3.0)


@dataclass(frozen=True)
class Case:
    """A rigid network, a load and its exact response.

    Attributes:
        name: short identifier used as the pytest id.
        network: the network.
        k: stiffness ``(m,)``, N/m.
        forces: load ``(n, 2)``, N.
        u: expected displacements ``(n, 2)``, m; ``None`` when only ``checks`` are known.
        s: expected elongations ``(m,)``, m; ``None`` when unknown.
        checks: expected displacement at single DOFs, ``{(node, axis): metres}``.
        atol: absolute tolerance on displacements and elongations, m.
    """

    name: str
    network: Network
    k: np.ndarray
    forces: np.ndarray
    u: np.ndarray | None
    s: np.ndarray | None
    checks: dict[tuple[int, int], float]
    atol: float


@dataclass(frozen=True)
class FloppyCase:
    """A network with zero-energy modes and the nodes that move in them (0-based, sorted)."""

    name: str
    network: Network
    nodes: tuple[int, ...]


def single_bond() -> Case:
    """One free node held by a horizontal and a vertical bond to two pinned nodes.

    Node 0 at the origin, pinned node 1 at (−L, 0), pinned node 2 at (0, −L). Bond 0 (1→0)
    points along +x, bond 1 (2→0) along +y, so a force (Fx, Fy) on node 0 stretches each bond
    on its own: ``u = (Fx/k0, Fy/k1)``, ``s = (Fx/k0, Fy/k1)``.
    """
    length = 0.016
    net = Network([[0.0, 0.0], [-length, 0.0], [0.0, -length]], [[1, 0], [2, 0]], [1, 2],
                  name="single bond")
    k = np.array([120.0, 150.0])
    fx, fy = 0.03, -0.045
    forces = np.zeros((3, 2))
    forces[0] = (fx, fy)
    u = np.zeros((3, 2))
    u[0] = (fx / k[0], fy / k[1])
    s = np.array([fx / k[0], fy / k[1]])
    return Case("single_bond", net, k, forces, u, s, {}, 1e-15)


def chain(n_springs: int = 5) -> Case:
    """Springs in series along x, each chain node also held in y by a vertical bond.

    Chain nodes 0..N at (i·L, 0), node 0 pinned; rail nodes N+1..2N pinned at (i·L, −L), rail
    node N+i joined to chain node i. A force F along +x at node N is carried by the chain alone
    (the vertical bonds are perpendicular): every series spring carries F, so
    ``s_j = F / k_j`` and ``u_i,x = F · Σ_{j<i} 1/k_j``; the rail bonds do not stretch.
    """
    length = 0.01
    n = n_springs
    chain_xy = [(i * length, 0.0) for i in range(n + 1)]
    rail_xy = [(i * length, -length) for i in range(1, n + 1)]
    series = [(i, i + 1) for i in range(n)]
    rails = [(n + i, i) for i in range(1, n + 1)]
    fixed = [0] + [n + i for i in range(1, n + 1)]
    net = Network(chain_xy + rail_xy, series + rails, fixed, name=f"chain of {n}")
    k_series = np.linspace(80.0, 200.0, n)
    k = np.concatenate([k_series, np.full(n, 137.5)])
    force = 0.07
    forces = np.zeros((2 * n + 1, 2))
    forces[n, 0] = force
    u = np.zeros((2 * n + 1, 2))
    u[1 : n + 1, 0] = force * np.cumsum(1.0 / k_series)
    s = np.concatenate([force / k_series, np.zeros(n)])
    return Case("chain", net, k, forces, u, s, {}, 1e-15)


def triangle() -> Case:
    """An equilateral triangle standing on its pinned base, loaded at the free apex.

    Nodes 0 (0, 0) and 1 (a, 0) pinned, apex 2 (a/2, a√3/2). Bond 1 (0→2) has direction
    e1 = (1/2, √3/2), bond 2 (1→2) e2 = (−1/2, √3/2). The apex is statically determinate:
    tensions t1 e1 + t2 e2 = F give t1 = Fx + Fy/√3, t2 = Fy/√3 − Fx; s_i = t_i / k_i; and
    e_i · u = s_i gives u_x = s1 − s2, u_y = (s1 + s2)/√3. The base bond 0 does not stretch.
    """
    a = 0.016
    net = Network([[0.0, 0.0], [a, 0.0], [a / 2, a * SQRT3 / 2]], [[0, 1], [0, 2], [1, 2]], [0, 1],
                  name="triangle")
    k = np.array([137.5, 110.0, 165.0])
    fx, fy = 0.02, -0.049
    forces = np.zeros((3, 2))
    forces[2] = (fx, fy)
    forces[0] = (5.0, 5.0)  # on a pinned node: taken by the support, no effect
    t1, t2 = fx + fy / SQRT3, fy / SQRT3 - fx
    s1, s2 = t1 / k[1], t2 / k[2]
    u = np.zeros((3, 2))
    u[2] = (s1 - s2, (s1 + s2) / SQRT3)
    s = np.array([0.0, s1, s2])
    return Case("triangle", net, k, forces, u, s, {}, 1e-15)


def paper_behaviour() -> Case:
    """The paper's uniform network (k = 137.5 N/m), 5 g (0.049 N) down at paper node 11.

    The paper reports u_y = −0.5243 mm at paper nodes 13 and 14 (indices 12 and 13). Tolerance
    1e-4 mm.
    """
    setup = paper_network()
    net = setup.network
    forces = np.zeros((net.n_nodes, 2))
    forces[setup.paper_node(11), 1] = -0.049
    checks = {(setup.paper_node(13), 1): -0.5243e-3, (setup.paper_node(14), 1): -0.5243e-3}
    k = np.full(net.n_bonds, setup.k0)
    return Case("paper_behaviour", net, k, forces, None, None, checks, 1e-7)


def paper_fig1() -> Case:
    """The paper's Fig. 1 load: 10 g (0.098 N) down at paper node 13; u_14y = −0.805 mm."""
    setup = paper_network()
    net = setup.network
    forces = np.zeros((net.n_nodes, 2))
    forces[setup.paper_node(13), 1] = -0.098
    checks = {(setup.paper_node(14), 1): -0.805e-3}
    k = np.full(net.n_bonds, setup.k0)
    return Case("paper_fig1", net, k, forces, None, None, checks, 0.5e-6)


def rigid_cases() -> list[Case]:
    """Every rigid case of the catalogue."""
    return [single_bond(), chain(), triangle(), paper_behaviour(), paper_fig1()]


def floppy_cases() -> list[FloppyCase]:
    """Networks with zero modes, each with the nodes that move in them."""
    a = 0.016
    tri_xy = [[0.0, 0.0], [a, 0.0], [a / 2, a * SQRT3 / 2]]
    cases = [
        # A triangle pinned at one vertex rotates about it: nodes 1 and 2 move.
        FloppyCase("triangle_one_pin", Network(tri_xy, [[0, 1], [0, 2], [1, 2]], [0]), (1, 2)),
        # A straight two-bond chain between pinned ends: the middle node moves sideways.
        FloppyCase(
            "collinear_middle",
            Network([[0.0, 0.0], [a, 0.0], [2 * a, 0.0]], [[0, 1], [1, 2]], [0, 2]),
            (1,),
        ),
    ]
    paper = paper_network().network
    # Paper node 14 hanging from node 13 alone (bonds 11-14 and 12-14 cut): it swings.
    hang, _ = paper.without_bonds(np.array([[11, 14], [12, 14]]) - 1)
    cases.append(FloppyCase("paper_node14_hanging", hang, (13,)))
    # Paper nodes 13 and 14 cut loose (all four bonds to row 10-12 removed): a free rigid body.
    loose, _ = paper.without_bonds(np.array([[10, 13], [11, 13], [11, 14], [12, 14]]) - 1)
    cases.append(FloppyCase("paper_13_14_detached", loose, (12, 13)))
    # Every bond of paper node 10 removed: an isolated free node.
    iso, _ = paper.without_bonds(np.array([[6, 10], [7, 10], [10, 11], [10, 13]]) - 1)
    cases.append(FloppyCase("paper_node10_isolated", iso, (9,)))
    # A lattice whose bottom-right corner node keeps a single bond: it swings about it.
    lat = triangular_lattice(6, 7, pinned="top")
    corner = lat.n_nodes - 1
    corner_bonds = np.flatnonzero(np.any(lat.bonds == corner, axis=1))
    cut, _ = lat.without_bonds(corner_bonds[:1])
    cases.append(FloppyCase("lattice_corner_hanging", cut, (corner,)))
    return cases
