"""The in situ gradient: forward and adjoint solves with one factorisation."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from numpy.typing import ArrayLike

from host_sdk.errors import PhysicsError

from .linalg import DOF, Factor, FloatArray, IntArray, _float_field, _int_array
from .network import Network


def _dof_indices(net: Network, dofs: Sequence[DOF] | ArrayLike, what: str) -> IntArray:
    """Global DOF indices of ``dofs`` given as ``(node, axis)`` pairs or global indices."""
    arr = _int_array(dofs, what)
    if arr.ndim == 2 and arr.shape[1] == 2:
        bad = np.flatnonzero((arr[:, 0] < 0) | (arr[:, 0] >= net.n_nodes))
        if bad.size:
            raise PhysicsError(f"{what}: node index {arr[bad[0], 0]} is outside 0..{net.n_nodes - 1}")
        bad = np.flatnonzero((arr[:, 1] != 0) & (arr[:, 1] != 1))
        if bad.size:
            raise PhysicsError(f"{what}: axis {arr[bad[0], 1]} must be 0 (x) or 1 (y)")
        glob = 2 * arr[:, 0] + arr[:, 1]
    elif arr.ndim == 1:
        bad = np.flatnonzero((arr < 0) | (arr >= 2 * net.n_nodes))
        if bad.size:
            raise PhysicsError(f"{what}: DOF index {arr[bad[0]]} is outside 0..{2 * net.n_nodes - 1}")
        glob = arr
    else:
        raise PhysicsError(f"{what} has shape {arr.shape}, expected (r, 2) (node, axis) pairs or (r,) DOF indices")
    if glob.size == 0:
        raise PhysicsError(f"{what} is empty")
    return glob


def in_situ_gradient(s_fwd: ArrayLike, s_adj: ArrayLike) -> FloatArray:
    """The in situ gradient ``∂L/∂k_b = s_b · s_adj,b``, averaged over a batch.

    Args:
        s_fwd: forward elongations ``(B, m)`` or ``(m,)``, m.
        s_adj: adjoint elongations (under ``f_adj = −∂L/∂u``), same shape, m.

    Returns:
        ``(m,)``, the derivative of the batch-mean loss with respect to each bond stiffness k
        (units of L per N/m).
    """
    a = np.asarray(s_fwd, dtype=np.float64)
    b = np.asarray(s_adj, dtype=np.float64)
    if a.shape != b.shape or a.ndim not in (1, 2):
        raise PhysicsError(f"elongations have shapes {a.shape} and {b.shape}, expected equal (B, m) or (m,)")
    if a.ndim == 2 and a.shape[0] == 0:
        raise PhysicsError("elongations have an empty batch")
    prod = a * b
    return prod if prod.ndim == 1 else prod.mean(axis=0)


def forward_adjoint(
    net: Network,
    k: ArrayLike | None,
    forces: ArrayLike,
    output_dofs: Sequence[DOF] | ArrayLike,
    adjoint_fn: Callable[[FloatArray], ArrayLike],
    *,
    factor: Factor | None = None,
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """One training step's physics: forward solve, adjoint solve, in situ gradient.

    Args:
        net: the network.
        k: bond stiffnesses ``(m,)``, N/m; may be ``None`` when ``factor`` is given (if both
            are given they must match).
        forces: input forces ``(B, n, 2)``, N.
        output_dofs: the read-out DOFs, ``(node, axis)`` pairs (or global DOF indices), all free.
        adjoint_fn: maps outputs ``y`` ``(B, n_out)`` (m) to the adjoint forces ``(B, n_out)``
            (N per unit loss), i.e. ``−∂L_i/∂y_i`` of each sample's loss, applied at the output
            DOFs only (the input forces are removed in the adjoint case).
        factor: a factorisation of ``K(k)`` to reuse; otherwise one is computed here and used
            for both solves.

    Returns:
        ``(y, grad, s_fwd)``: outputs ``(B, n_out)`` in m; ``grad`` ``(m,)`` = batch mean of
        ``s_fwd · s_adj``, the derivative of the batch-mean loss ``mean_i L_i`` with respect to
        k; forward elongations ``(B, m)`` in m.
    """
    f, batched = _float_field(forces, "forces", net.n_nodes)
    if not batched:
        raise PhysicsError(f"forces have shape {f.shape[1:]}, expected (B, {net.n_nodes}, 2)")
    glob = _dof_indices(net, output_dofs, "output_dofs")
    out_free = net._free_index[glob]
    if np.any(out_free < 0):
        bad = int(glob[np.flatnonzero(out_free < 0)[0]])
        raise PhysicsError(f"output DOF ({bad // 2}, {bad % 2}) is on a fixed node")
    fac = net._factor_for(k, factor)
    bsz = f.shape[0]
    rhs = f.reshape(bsz, 2 * net.n_nodes)[:, net.free_dofs].T
    x = fac.solve_free(rhs)  # (n_free, B)
    y = np.ascontiguousarray(x[out_free, :].T)
    returned = adjoint_fn(y.copy())  # errors raised by the loss itself propagate unchanged
    try:
        adj = np.asarray(returned, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise PhysicsError(f"adjoint_fn returned a non-numeric value: {e}") from e
    if adj.shape != y.shape:
        raise PhysicsError(f"adjoint_fn returned shape {adj.shape}, expected {y.shape}")
    if not np.all(np.isfinite(adj)):
        raise PhysicsError("adjoint_fn returned NaN or infinite forces")
    rhs_adj = np.zeros((net.n_free, bsz))
    np.add.at(rhs_adj, out_free, adj.T)
    lam = fac.solve_free(rhs_adj)
    c_free = net._compat_free()
    s_fwd = np.asarray(c_free @ x)  # (m, B)
    s_adj = np.asarray(c_free @ lam)
    grad = np.einsum("mb,mb->m", s_fwd, s_adj) / bsz
    return y, grad, np.ascontiguousarray(s_fwd.T)
