"""Linear elastic spring networks: assembly, factorisation, solves and the in situ gradient.

A network is a set of nodes in the plane joined by central-force springs (bonds). Some nodes are
pinned in x and y. Under small displacements the free degrees of freedom obey

    K(k) u = f,    K(k) = Cᵀ diag(k) C,    s = C u,

where ``C`` maps node displacements to bond elongations, ``s_b = e_b · (u_j − u_i)`` with ``e_b``
the unit vector from node ``i`` to node ``j`` of bond ``b``. The derivative of any loss ``L(u)``
with respect to a bond stiffness is the product of that bond's elongations in two load cases,
``∂L/∂k_b = s_b · s_adj,b``, where the adjoint case applies ``f_adj = −∂L/∂u`` (Li & Mao,
Nat. Commun. 15:10528, 2024). This module is pure: no printing, files, logging or serial I/O.

Units are SI throughout: positions and displacements in m, forces in N, stiffness in N/m.
A field on the network (forces or displacements) has shape ``(n, 2)`` or ``(B, n, 2)``.
Node and bond indices are 0-based. A degree of freedom (DOF) is written ``(node, axis)`` with
axis 0 = x and 1 = y; its global index is ``2 * node + axis``.

Numbering of the paper's network: the paper numbers its 14 nodes from 1, the code from 0, so
paper node ``p`` is index ``p − 1`` (paper node 11 is index 10). ``PaperSetup.paper_node(p)``
does the conversion; every ``IOMap`` of :func:`paper_network` already holds 0-based indices.
"""

from __future__ import annotations

from .builders import IOMap, PaperSetup, paper_network, triangular_lattice
from .gradient import forward_adjoint, in_situ_gradient
from .linalg import DOF, SOLVERS, Factor, validate_stiffness
from .network import Network

__all__ = [
    "DOF",
    "Network",
    "Factor",
    "IOMap",
    "PaperSetup",
    "validate_stiffness",
    "in_situ_gradient",
    "forward_adjoint",
    "paper_network",
    "triangular_lattice",
    "SOLVERS",
]
