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

import importlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.linalg
import scipy.sparse as sp
import scipy.sparse.linalg as spla
from numpy.typing import ArrayLike, NDArray

from host_sdk.errors import FloppyNetworkError, PhysicsError

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

DOF = tuple[int, int]
"""A degree of freedom: ``(node index 0-based, axis 0 = x / 1 = y)``."""

SOLVERS = ("splu", "cholespy", "auto")
"""Names accepted by :meth:`Network.factorize`."""

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]

# Networks with at most this many free DOFs are checked for zero modes with a dense
# eigendecomposition (exact mode count); larger ones with shifted sparse inverse iteration, which
# names the same nodes at the cost of one sparse factorisation (dense LAPACK is slow for
# mid-sized matrices when a multithreaded BLAS competes for busy cores).
DENSE_RIGIDITY_LIMIT = 64
# An eigenvalue of the unit-stiffness matrix below this fraction of the largest diagonal entry
# counts as a zero mode (the floating-point "zero" of a floppy network is about 1e-16 of it).
_FLOPPY_RTOL = 1e-10
# A node moves in a zero mode when its amplitude exceeds this fraction of the largest one.
_MODE_NODE_RTOL = 1e-6


def _freeze(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


def _int_array(value: ArrayLike, what: str) -> IntArray:
    """Convert ``value`` to an int64 array, refusing non-integral entries."""
    arr = np.asarray(value)
    if arr.size == 0:
        return np.zeros(arr.shape, dtype=np.int64)
    if arr.dtype == bool or not (
        np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)
    ):
        raise PhysicsError(f"{what} must hold integer node indices, got dtype {arr.dtype}")
    if np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
            raise PhysicsError(f"{what} must hold integer node indices, got non-integral values")
    return arr.astype(np.int64)


def validate_stiffness(k: ArrayLike, n_bonds: int) -> FloatArray:
    """Check a stiffness vector and return it as a new float64 array.

    Args:
        k: bond stiffnesses, shape ``(n_bonds,)``, N/m.
        n_bonds: the number of bonds of the network.

    Returns:
        A float64 copy of ``k``, shape ``(n_bonds,)``.

    Raises:
        PhysicsError: wrong shape, non-numeric, non-finite or non-positive entries (the message
            names the shape or the first offending bond index).
    """
    try:
        arr = np.array(k, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise PhysicsError(f"stiffness must be numeric: {e}") from e
    if arr.shape != (n_bonds,):
        raise PhysicsError(f"stiffness has shape {arr.shape}, expected ({n_bonds},)")
    bad = np.flatnonzero(~np.isfinite(arr))
    if bad.size:
        raise PhysicsError(f"stiffness of bond {bad[0]} is {arr[bad[0]]} (must be finite)")
    bad = np.flatnonzero(arr <= 0.0)
    if bad.size:
        raise PhysicsError(f"stiffness of bond {bad[0]} is {arr[bad[0]]} N/m (must be > 0)")
    return arr


def _float_field(values: ArrayLike, what: str, n_nodes: int) -> tuple[FloatArray, bool]:
    """Validate a force/displacement field; return it as ``(B, n, 2)`` and whether it was batched."""
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise PhysicsError(f"{what} must be numeric: {e}") from e
    if arr.ndim == 2 and arr.shape == (n_nodes, 2):
        batched = False
        arr = arr[None]
    elif arr.ndim == 3 and arr.shape[1:] == (n_nodes, 2):
        batched = True
    else:
        raise PhysicsError(
            f"{what} has shape {arr.shape}, expected ({n_nodes}, 2) or (B, {n_nodes}, 2)"
        )
    if not np.all(np.isfinite(arr)):
        raise PhysicsError(f"{what} contains NaN or infinite values")
    return arr, batched


class Factor:
    """A reusable factorisation of a stiffness matrix on the free DOFs.

    One factor serves every right-hand side of a batch and the adjoint solves (K is symmetric).
    Build it with :meth:`Network.factorize`; construct directly only for a matrix you assembled.

    Attributes:
        n_free: size of the matrix.
        solver: the backend actually used, ``"splu"`` or ``"cholespy"``.
        network: the network the matrix belongs to (``None`` if built from a bare matrix).
        k: the stiffness vector the matrix was assembled from (``None`` if unknown).
    """

    def __init__(
        self,
        matrix: sp.spmatrix | sp.sparray,
        *,
        solver: str = "splu",
        network: Network | None = None,
        k: FloatArray | None = None,
    ) -> None:
        if solver not in SOLVERS:
            raise PhysicsError(f"unknown solver {solver!r}; choose one of {', '.join(SOLVERS)}")
        if solver == "auto":
            solver = "cholespy" if _cholespy() is not None else "splu"
        if isinstance(matrix, sp.csc_matrix) and matrix.dtype == np.float64:
            a = matrix
        else:
            a = sp.csc_matrix(matrix, dtype=np.float64)
        if a.ndim != 2 or a.shape[0] != a.shape[1]:
            raise PhysicsError(f"stiffness matrix has shape {a.shape}, expected square")
        self.n_free: int = int(a.shape[0])
        self.solver: str = solver
        self.network = network
        self.k = k
        self._lu: Any = None
        self._chol: Any = None
        if solver == "splu":
            try:
                self._lu = spla.splu(
                    a,
                    permc_spec="MMD_AT_PLUS_A",
                    diag_pivot_thresh=0.0,
                    options=dict(SymmetricMode=True),
                )
            except RuntimeError as e:
                raise FloppyNetworkError(
                    f"stiffness matrix ({self.n_free} free DOFs) is singular: {e}"
                ) from e
        else:
            mod = _cholespy()
            if mod is None:
                raise PhysicsError("solver 'cholespy' requested but the cholespy package is not installed")
            if not a.has_sorted_indices:
                a = a.sorted_indices()
            try:
                self._chol = mod.CholeskySolverD(
                    self.n_free,
                    np.ascontiguousarray(a.indptr, dtype=np.int32),
                    np.ascontiguousarray(a.indices, dtype=np.int32),
                    np.ascontiguousarray(a.data, dtype=np.float64),
                    mod.MatrixType.CSC,
                )
            except ValueError as e:
                raise FloppyNetworkError(
                    f"stiffness matrix ({self.n_free} free DOFs) is not positive definite: {e}"
                ) from e

    def solve_free(self, rhs: ArrayLike) -> FloatArray:
        """Solve ``K x = rhs`` on the free DOFs.

        Args:
            rhs: shape ``(n_free,)`` or ``(n_free, B)``, N.

        Returns:
            New array of the same shape, m.

        Raises:
            PhysicsError: wrong shape or non-finite right-hand side.
            FloppyNetworkError: the solution is not finite (numerically singular K).
        """
        b = np.asarray(rhs, dtype=np.float64)
        if b.ndim not in (1, 2) or b.shape[0] != self.n_free:
            raise PhysicsError(
                f"right-hand side has shape {b.shape}, expected ({self.n_free},) or ({self.n_free}, B)"
            )
        if not np.all(np.isfinite(b)):
            raise PhysicsError("right-hand side contains NaN or infinite values")
        if b.size == 0:
            return np.zeros(b.shape)
        if self._lu is not None:
            x = np.asarray(self._lu.solve(np.asfortranarray(b)), dtype=np.float64)
        else:
            b = np.ascontiguousarray(b)
            x = np.empty_like(b)
            self._chol.solve(b, x)
        if not np.all(np.isfinite(x)):
            raise FloppyNetworkError(
                f"solution is not finite: stiffness matrix ({self.n_free} free DOFs) is numerically singular"
            )
        return x


def _cholespy() -> Any:
    """The cholespy module, or ``None`` when it is not installed."""
    try:
        return importlib.import_module("cholespy")
    except ImportError:
        return None


class Network:
    """A 2D network of nodes joined by linear central-force springs.

    Args:
        positions: node coordinates, shape ``(n, 2)``, m.
        bonds: node index pairs ``(i, j)``, shape ``(m, 2)``, 0-based.
        fixed: indices of nodes pinned in x and y, shape ``(p,)``.
        name: a label for messages and figures.

    Raises:
        PhysicsError: bad shapes, non-finite positions, self-bonds, duplicate bonds (in either
            order), node indices out of range, zero-length bonds, repeated fixed nodes, or no
            free node. The message names the shape or the offending index.

    The arrays are copied and made read-only; the object is immutable after construction.
    """

    def __init__(
        self,
        positions: ArrayLike,
        bonds: ArrayLike,
        fixed: ArrayLike = (),
        *,
        name: str = "",
    ) -> None:
        try:
            pos = np.array(positions, dtype=np.float64)
        except (TypeError, ValueError) as e:
            raise PhysicsError(f"positions must be numeric: {e}") from e
        if pos.ndim != 2 or pos.shape[1] != 2 or pos.shape[0] < 2:
            raise PhysicsError(f"positions have shape {pos.shape}, expected (n, 2) with n >= 2")
        bad_rows = np.flatnonzero(~np.all(np.isfinite(pos), axis=1))
        if bad_rows.size:
            raise PhysicsError(f"position of node {bad_rows[0]} is not finite: {pos[bad_rows[0]]}")
        n = pos.shape[0]

        b = _int_array(bonds, "bonds")
        if b.ndim != 2 or b.shape[1] != 2 or b.shape[0] < 1:
            raise PhysicsError(f"bonds have shape {b.shape}, expected (m, 2) with m >= 1")
        out = np.flatnonzero(np.any((b < 0) | (b >= n), axis=1))
        if out.size:
            raise PhysicsError(
                f"bond {out[0]} {tuple(int(v) for v in b[out[0]])} has a node index outside 0..{n - 1}"
            )
        selfb = np.flatnonzero(b[:, 0] == b[:, 1])
        if selfb.size:
            raise PhysicsError(f"bond {selfb[0]} joins node {b[selfb[0], 0]} to itself")
        key = np.minimum(b[:, 0], b[:, 1]) * n + np.maximum(b[:, 0], b[:, 1])
        order = np.argsort(key, kind="stable")
        dup = np.flatnonzero(key[order][1:] == key[order][:-1])
        if dup.size:
            first, second = sorted((int(order[dup[0]]), int(order[dup[0] + 1])))
            raise PhysicsError(
                f"bond {second} {tuple(int(v) for v in b[second])} duplicates bond {first}"
            )
        vec = pos[b[:, 1]] - pos[b[:, 0]]
        lengths = np.hypot(vec[:, 0], vec[:, 1])
        scale = float(np.max(np.abs(pos))) or 1.0
        zero = np.flatnonzero(lengths <= 1e-12 * scale)
        if zero.size:
            raise PhysicsError(
                f"bond {zero[0]} {tuple(int(v) for v in b[zero[0]])} has zero length"
            )

        f = _int_array(fixed, "fixed")
        if f.ndim != 1:
            raise PhysicsError(f"fixed has shape {f.shape}, expected (p,)")
        outf = np.flatnonzero((f < 0) | (f >= n))
        if outf.size:
            raise PhysicsError(f"fixed node index {f[outf[0]]} is outside 0..{n - 1}")
        uf, counts = np.unique(f, return_counts=True)
        if np.any(counts > 1):
            raise PhysicsError(f"fixed node {uf[counts > 1][0]} is listed more than once")
        if uf.size == n:
            raise PhysicsError(f"all {n} nodes are fixed: the network has no free degree of freedom")

        self.name: str = str(name)
        self.positions: FloatArray = _freeze(pos)
        self.bonds: IntArray = _freeze(b)
        self.fixed: IntArray = _freeze(f.copy())
        self.n_nodes: int = n
        self.n_bonds: int = int(b.shape[0])
        self.lengths: FloatArray = _freeze(lengths)
        self.directions: FloatArray = _freeze(vec / lengths[:, None])
        is_free = np.ones(2 * n, dtype=bool)
        is_free[2 * uf] = False
        is_free[2 * uf + 1] = False
        self.free_dofs: IntArray = _freeze(np.flatnonzero(is_free).astype(np.int64))
        self.n_free: int = int(self.free_dofs.size)
        free_index = np.full(2 * n, -1, dtype=np.int64)
        free_index[self.free_dofs] = np.arange(self.n_free)
        self._free_index = _freeze(free_index)
        self._c: sp.csr_matrix | None = None
        self._c_free: sp.csr_matrix | None = None
        self._pattern: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int] | None = None
        self._zero_mode_nodes: tuple[int, ...] | None = None
        self._rigid_message: str = ""

    def __repr__(self) -> str:
        label = f" {self.name!r}" if self.name else ""
        return (
            f"<Network{label}: {self.n_nodes} nodes, {self.n_bonds} bonds, "
            f"{self.fixed.size} fixed, {self.n_free} free DOFs>"
        )

    # ---- geometry -------------------------------------------------------------------------

    def dof(self, node: int, axis: int) -> int:
        """Global DOF index ``2 * node + axis`` of ``(node, axis)``, checked against the network."""
        if not isinstance(node, (int, np.integer)) or not 0 <= int(node) < self.n_nodes:
            raise PhysicsError(f"node index {node!r} is outside 0..{self.n_nodes - 1}")
        if axis not in (0, 1):
            raise PhysicsError(f"axis {axis!r} must be 0 (x) or 1 (y)")
        return 2 * int(node) + int(axis)

    def _bond_dofs(self) -> tuple[IntArray, FloatArray]:
        """Per bond, the 4 global DOFs (u_ix, u_iy, u_jx, u_jy) and their coefficients in C."""
        i, j = self.bonds[:, 0], self.bonds[:, 1]
        dofs = np.stack([2 * i, 2 * i + 1, 2 * j, 2 * j + 1], axis=1)
        e = self.directions
        coef = np.concatenate([-e, e], axis=1)
        return dofs, coef

    def compatibility(self) -> sp.csr_matrix:
        """The compatibility matrix ``C``, shape ``(m, 2n)``: ``s = C @ u.reshape(2n)``."""
        if self._c is None:
            dofs, coef = self._bond_dofs()
            rows = np.repeat(np.arange(self.n_bonds), 4)
            self._c = sp.csr_matrix(
                (coef.ravel(), (rows, dofs.ravel())), shape=(self.n_bonds, 2 * self.n_nodes)
            )
        return self._c.copy()

    def _compat_free(self) -> sp.csr_matrix:
        """``C`` restricted to the free DOFs, shape ``(m, n_free)`` (cached, not copied)."""
        if self._c_free is None:
            dofs, coef = self._bond_dofs()
            fi = self._free_index[dofs]
            keep = fi >= 0
            rows = np.broadcast_to(np.arange(self.n_bonds)[:, None], fi.shape)
            self._c_free = sp.csr_matrix(
                (coef[keep], (rows[keep], fi[keep])), shape=(self.n_bonds, self.n_free)
            )
        return self._c_free

    # ---- assembly and factorisation -------------------------------------------------------

    def _stiffness_pattern(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
        """CSC pattern of K and, per bond, where its 16 local entries land in K.data."""
        if self._pattern is None:
            dofs, coef = self._bond_dofs()
            fi = self._free_index[dofs]  # (m, 4), -1 on fixed DOFs
            rows = np.repeat(fi, 4, axis=1)  # (m, 16): row index of entry (a, b) is fi[a]
            cols = np.tile(fi, (1, 4))  # column index of entry (a, b) is fi[b]
            vals = np.repeat(coef, 4, axis=1) * np.tile(coef, (1, 4))
            valid = (rows >= 0) & (cols >= 0)
            nf = self.n_free
            keys = cols[valid] * nf + rows[valid]  # column-major order = CSC order
            uniq, inv = np.unique(keys, return_inverse=True)
            nnz = int(uniq.size)
            slot = np.full(rows.shape, nnz, dtype=np.int64)
            slot[valid] = inv.ravel()
            indices = (uniq % nf).astype(np.int32)
            counts = np.bincount(uniq // nf, minlength=nf)
            indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
            vals = np.where(valid, vals, 0.0)
            self._pattern = (indptr, indices, slot, vals, nnz)
        return self._pattern

    def stiffness_matrix(self, k: ArrayLike) -> sp.csc_matrix:
        """Assemble ``K(k) = Cᵀ diag(k) C`` on the free DOFs.

        Args:
            k: bond stiffnesses, shape ``(m,)``, N/m (finite, > 0).

        Returns:
            Symmetric CSC matrix, shape ``(n_free, n_free)``, N/m, sorted indices.
        """
        kk = validate_stiffness(k, self.n_bonds)
        return self._assemble(kk, share_pattern=False)

    def _assemble(self, kk: FloatArray, *, share_pattern: bool = True) -> sp.csc_matrix:
        """Assemble K from a validated stiffness vector; the index arrays are shared with the
        cached pattern unless ``share_pattern`` is false (matrices handed to callers)."""
        indptr, indices, slot, vals, nnz = self._stiffness_pattern()
        data = np.bincount(slot.ravel(), weights=(vals * kk[:, None]).ravel(), minlength=nnz + 1)
        if not share_pattern:
            indices, indptr = indices.copy(), indptr.copy()
        mat = sp.csc_matrix((data[:nnz], indices, indptr), shape=(self.n_free, self.n_free), copy=False)
        mat.has_sorted_indices = True
        return mat

    def factorize(self, k: ArrayLike, *, solver: str = "splu") -> Factor:
        """Factorise ``K(k)`` once for any number of forward and adjoint solves.

        Args:
            k: bond stiffnesses, shape ``(m,)``, N/m.
            solver: ``"splu"`` (SuperLU, symmetric mode), ``"cholespy"`` (CHOLMOD via cholespy)
                or ``"auto"`` (cholespy when installed, else splu).

        Raises:
            PhysicsError: bad stiffness or unknown solver.
            FloppyNetworkError: the network has zero modes (``.nodes`` names the moving nodes).
        """
        kk = validate_stiffness(k, self.n_bonds)
        if solver not in SOLVERS:
            raise PhysicsError(f"unknown solver {solver!r}; choose one of {', '.join(SOLVERS)}")
        self.check_rigid()
        return Factor(self._assemble(kk), solver=solver, network=self, k=_freeze(kk))

    def check_rigid(self, k: ArrayLike | None = None) -> None:
        """Raise if the stiffness matrix is singular (the network has zero-energy modes).

        With ``k=None`` the check is structural (unit stiffness; since every stiffness is
        positive, ``K(k)`` is singular exactly when ``K(1)`` is) and its result is cached. With
        ``k`` given, ``K(k)`` itself is examined (this also catches a numerically singular
        matrix caused by extreme stiffness ratios).

        Networks with at most ``DENSE_RIGIDITY_LIMIT`` free DOFs use a dense
        eigendecomposition; larger ones use inverse iteration on ``K + σI`` (σ = 1e-10 of the
        largest diagonal entry) from a random start, whose limit spans the zero modes.

        Raises:
            FloppyNetworkError: ``.nodes`` lists, sorted, the 0-based indices of the nodes that
                move in the zero modes.
        """
        if k is None:
            if self._zero_mode_nodes is None:
                nodes, msg = self._zero_modes(np.ones(self.n_bonds))
                self._zero_mode_nodes, self._rigid_message = nodes, msg
            nodes, msg = self._zero_mode_nodes, self._rigid_message
        else:
            nodes, msg = self._zero_modes(validate_stiffness(k, self.n_bonds))
        if msg:
            raise FloppyNetworkError(msg, nodes)

    def _zero_modes(self, kk: FloatArray) -> tuple[tuple[int, ...], str]:
        """Nodes moving in the zero modes of K(kk) and a message ('' when rigid)."""
        mat = self._assemble(kk)
        diag = mat.diagonal()
        scale = float(diag.max()) if diag.size else 0.0
        free_nodes = self.free_dofs // 2
        if scale <= 0.0:
            nodes = tuple(int(v) for v in np.unique(free_nodes))
            return nodes, self._floppy_message(nodes, self.n_free)
        if self.n_free <= DENSE_RIGIDITY_LIMIT:
            w, v = scipy.linalg.eigh(mat.toarray())
            zero = w < _FLOPPY_RTOL * max(float(w[-1]), scale)
            if not np.any(zero):
                return (), ""
            amp = np.sqrt(np.sum(v[:, zero] ** 2, axis=1))
            n_modes = int(np.count_nonzero(zero))
        else:
            sigma = 1e-10 * scale
            shifted = (mat + sigma * sp.identity(self.n_free, format="csc")).tocsc()
            lu = spla.splu(shifted, permc_spec="MMD_AT_PLUS_A", diag_pivot_thresh=0.0,
                           options=dict(SymmetricMode=True))
            x = np.random.default_rng(12345).standard_normal(self.n_free)
            for _ in range(3):
                x = lu.solve(x)
                x /= np.linalg.norm(x)
            rayleigh = float(x @ (mat @ x))
            if rayleigh >= _FLOPPY_RTOL * scale:
                return (), ""
            amp = np.abs(x)
            n_modes = 0
        node_amp = np.zeros(self.n_nodes)
        np.maximum.at(node_amp, free_nodes, amp)
        moving = np.flatnonzero(node_amp > _MODE_NODE_RTOL * node_amp.max())
        nodes = tuple(int(v) for v in moving)
        return nodes, self._floppy_message(nodes, n_modes)

    def _floppy_message(self, nodes: tuple[int, ...], n_modes: int) -> str:
        label = f"network {self.name!r}" if self.name else "network"
        count = f"{n_modes} zero mode(s)" if n_modes else "zero mode(s)"
        shown = ", ".join(str(v) for v in nodes[:20]) + (", ..." if len(nodes) > 20 else "")
        return (
            f"{label} is floppy: stiffness matrix is singular with {count}; "
            f"{len(nodes)} node(s) move freely (0-based): {shown}"
        )

    # ---- solves ---------------------------------------------------------------------------

    def solve(self, k: ArrayLike | None, forces: ArrayLike, *, factor: Factor | None = None) -> FloatArray:
        """Static displacements under the given forces.

        Args:
            k: bond stiffnesses ``(m,)``, N/m; may be ``None`` when ``factor`` is given (if both
                are given, ``k`` must be the vector the factor was computed for).
            forces: ``(n, 2)`` or ``(B, n, 2)``, N. Forces on fixed nodes are ignored (the
                supports take them).
            factor: a factorisation of this network's K from :meth:`factorize`, to reuse.

        Returns:
            Displacements of the same shape as ``forces``, m; zero on fixed nodes.
        """
        f, batched = _float_field(forces, "forces", self.n_nodes)
        fac = self._factor_for(k, factor)
        bsz = f.shape[0]
        rhs = f.reshape(bsz, 2 * self.n_nodes)[:, self.free_dofs].T
        x = fac.solve_free(rhs)
        flat = np.zeros((bsz, 2 * self.n_nodes))
        flat[:, self.free_dofs] = x.T
        u = flat.reshape(bsz, self.n_nodes, 2)
        return u if batched else u[0]

    def _factor_for(self, k: ArrayLike | None, factor: Factor | None) -> Factor:
        if factor is None:
            if k is None:
                raise PhysicsError("either a stiffness vector k or a factor is required")
            return self.factorize(k)
        if not isinstance(factor, Factor):
            raise PhysicsError(f"factor must be a Factor, got {type(factor).__name__}")
        if factor.network is not self:
            raise PhysicsError("factor was computed for a different network")
        if k is not None and factor.k is not None:
            kk = validate_stiffness(k, self.n_bonds)
            if not np.array_equal(kk, factor.k):
                raise PhysicsError("factor was computed for a different stiffness vector k")
        return factor

    def elongations(self, displacements: ArrayLike) -> FloatArray:
        """Bond elongations ``s_b = e_b · (u_j − u_i)``.

        Args:
            displacements: ``(n, 2)`` or ``(B, n, 2)``, m.

        Returns:
            ``(m,)`` or ``(B, m)``, m (positive = stretched).
        """
        u, batched = _float_field(displacements, "displacements", self.n_nodes)
        bsz = u.shape[0]
        if self._c is None:
            self.compatibility()
        assert self._c is not None
        s = np.asarray(self._c @ u.reshape(bsz, 2 * self.n_nodes).T).T
        return s if batched else s[0]

    def elongations_free(self, x: ArrayLike) -> FloatArray:
        """Elongations from free-DOF displacements ``x`` ``(n_free,)`` or ``(n_free, B)``.

        Returns ``(m,)`` or ``(B, m)``; the fast path used by :func:`forward_adjoint`.
        """
        arr = np.asarray(x, dtype=np.float64)
        if arr.ndim not in (1, 2) or arr.shape[0] != self.n_free:
            raise PhysicsError(
                f"free displacements have shape {arr.shape}, expected ({self.n_free},) or ({self.n_free}, B)"
            )
        s = np.asarray(self._compat_free() @ arr)
        return s if s.ndim == 1 else np.ascontiguousarray(s.T)

    # ---- editing --------------------------------------------------------------------------

    def without_bonds(self, bonds_to_remove: ArrayLike) -> tuple[Network, IntArray]:
        """A copy of the network with some bonds removed.

        Args:
            bonds_to_remove: bond indices ``(r,)``, or node pairs ``(r, 2)`` in either order.

        Returns:
            ``(network, kept)``: the new network (not checked for rigidity: call
            :meth:`check_rigid`) and the indices of the kept bonds in the old numbering, so
            ``k_new = k_old[kept]``.

        Raises:
            PhysicsError: unknown or repeated bond, or every bond removed.
        """
        req = _int_array(bonds_to_remove, "bonds_to_remove")
        if req.ndim == 2 and req.shape[1] == 2:
            n = self.n_nodes
            lookup = {
                int(a) * n + int(b): idx
                for idx, (a, b) in enumerate(np.sort(self.bonds, axis=1))
            }
            idx_list = []
            for a, b in req:
                key = int(min(a, b)) * n + int(max(a, b))
                if key not in lookup:
                    raise PhysicsError(f"there is no bond between nodes {int(a)} and {int(b)}")
                idx_list.append(lookup[key])
            idx = np.array(idx_list, dtype=np.int64)
        elif req.ndim == 1:
            idx = req
            out = np.flatnonzero((idx < 0) | (idx >= self.n_bonds))
            if out.size:
                raise PhysicsError(f"bond index {idx[out[0]]} is outside 0..{self.n_bonds - 1}")
        else:
            raise PhysicsError(
                f"bonds_to_remove has shape {req.shape}, expected (r,) bond indices or (r, 2) node pairs"
            )
        uniq, counts = np.unique(idx, return_counts=True)
        if np.any(counts > 1):
            raise PhysicsError(f"bond {uniq[counts > 1][0]} is listed more than once")
        keep = np.ones(self.n_bonds, dtype=bool)
        keep[idx] = False
        kept = np.flatnonzero(keep).astype(np.int64)
        if kept.size == 0:
            raise PhysicsError("cannot remove every bond of the network")
        name = f"{self.name} minus {idx.size} bond(s)" if self.name else ""
        return Network(self.positions, self.bonds[kept], self.fixed, name=name), kept


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
    try:
        adj = np.asarray(adjoint_fn(y.copy()), dtype=np.float64)
    except (TypeError, ValueError) as e:
        if isinstance(e, PhysicsError):
            raise
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


# ---- builders ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class IOMap:
    """One task's inputs and outputs on a network (0-based node indices).

    Attributes:
        inputs: DOFs where input forces are applied.
        input_scale: force (N) per unit feature value at each input, signed (a downward 5 g
            weight per unit feature is ``-0.049``).
        outputs: DOFs whose displacements are read out.
    """

    inputs: tuple[DOF, ...]
    input_scale: tuple[float, ...]
    outputs: tuple[DOF, ...]

    def __post_init__(self) -> None:
        if len(self.inputs) != len(self.input_scale):
            raise PhysicsError(
                f"IOMap has {len(self.inputs)} inputs but {len(self.input_scale)} input scales"
            )
        if not self.outputs:
            raise PhysicsError("IOMap has no outputs")

    def forces(self, values: ArrayLike, n_nodes: int) -> FloatArray:
        """Force fields for feature values.

        Args:
            values: ``(B, n_in)`` feature values (or ``(n_in,)`` for one sample).
            n_nodes: number of nodes of the network.

        Returns:
            ``(B, n, 2)`` (or ``(n, 2)``) forces in N: ``values[:, i] * input_scale[i]`` at
            ``inputs[i]``; inputs sharing a DOF add up.
        """
        v = np.asarray(values, dtype=np.float64)
        single = v.ndim == 1
        if single:
            v = v[None]
        n_in = len(self.inputs)
        if v.ndim != 2 or v.shape[1] != n_in:
            raise PhysicsError(f"input values have shape {np.shape(values)}, expected (B, {n_in}) or ({n_in},)")
        if not np.all(np.isfinite(v)):
            raise PhysicsError("input values contain NaN or infinite values")
        flat = np.zeros((v.shape[0], 2 * n_nodes))
        for col, ((node, axis), scale) in enumerate(zip(self.inputs, self.input_scale)):
            if not 0 <= node < n_nodes:
                raise PhysicsError(f"input node {node} is outside 0..{n_nodes - 1}")
            flat[:, 2 * node + axis] += v[:, col] * scale
        out = flat.reshape(-1, n_nodes, 2)
        return out[0] if single else out


@dataclass(frozen=True)
class PaperSetup:
    """The network and task wiring of Li & Mao (2024), in SI units and 0-based indices.

    The paper numbers nodes 1..14; index = paper number − 1 (see :meth:`paper_node`).

    Attributes:
        network: 14 nodes, 28 bonds, lattice constant 16 mm; paper nodes 1 and 5 pinned.
        io: task wiring: ``"fig1"`` (0.098 N down at paper node 13, output u_y of 14),
            ``"behaviour"`` (0.049 N down at 11; outputs u_y of 13 and 14), ``"regression"``
            (feature X in N applied in +y at 11; outputs u_x, u_y of 13 then 14), ``"iris"``
            (four features, each divided by its dataset maximum by the caller, as down forces
            of up to 0.049 N at paper nodes 14, 12, 13, 10; outputs u_x of 8, 2, 3).
        k_min, k_max: stiffness bounds, N/m (bond width 1.5 and 2.5 mm).
        k0: initial stiffness of every bond, N/m (width 2 mm).
    """

    network: Network
    io: dict[str, IOMap] = field(default_factory=dict, hash=False)
    k_min: float = 103.125
    k_max: float = 171.875
    k0: float = 137.5

    def paper_node(self, paper_number: int) -> int:
        """0-based index of the paper's 1-based node number."""
        if not isinstance(paper_number, (int, np.integer)) or not 1 <= paper_number <= self.network.n_nodes:
            raise PhysicsError(f"paper node number {paper_number!r} is outside 1..{self.network.n_nodes}")
        return int(paper_number) - 1


# Paper node coordinates in mm, nodes 1..14 (PAPER.md, from the authors' data).
_PAPER_XY_MM = (
    (0.0, 0.0), (-16.0, 0.0), (-32.0, 0.0), (-48.0, 0.0), (-64.0, 0.0),
    (-8.0, -13.8564), (-24.0, -13.8564), (-40.0, -13.8564), (-56.0, -13.8564),
    (-16.0, -27.7128), (-32.0, -27.7128), (-48.0, -27.7128),
    (-24.0, -41.5692), (-40.0, -41.5692),
)
# Bonds as 1-based paper node pairs, in the paper's order.
_PAPER_BONDS = (
    (1, 2), (2, 3), (3, 4), (4, 5), (6, 7), (7, 8), (8, 9), (10, 11), (11, 12), (13, 14),
    (1, 6), (2, 6), (2, 7), (3, 7), (3, 8), (4, 8), (4, 9), (5, 9), (6, 10), (7, 10),
    (7, 11), (8, 11), (8, 12), (9, 12), (10, 13), (11, 13), (11, 14), (12, 14),
)
_PAPER_FIXED = (1, 5)
_FIVE_GRAMS_N = 0.049  # weight of 5 g, N, as the paper rounds it


def paper_network() -> PaperSetup:
    """The paper's 14-node, 28-bond network with its bounds and the wiring of every task.

    Coordinates are the paper's (mm converted to m, x right, y up); bond ``b`` is the paper's
    b-th listed pair. Paper node ``p`` is index ``p − 1``.
    """
    pos = np.array(_PAPER_XY_MM) * 1e-3
    bonds = np.array(_PAPER_BONDS) - 1
    fixed = np.array(_PAPER_FIXED) - 1
    net = Network(pos, bonds, fixed, name="paper")

    def p(num: int, axis: int) -> DOF:
        return (num - 1, axis)

    io = {
        "fig1": IOMap(inputs=(p(13, 1),), input_scale=(-2 * _FIVE_GRAMS_N,), outputs=(p(14, 1),)),
        "behaviour": IOMap(
            inputs=(p(11, 1),), input_scale=(-_FIVE_GRAMS_N,), outputs=(p(13, 1), p(14, 1))
        ),
        "regression": IOMap(
            inputs=(p(11, 1),),
            input_scale=(1.0,),
            outputs=(p(13, 0), p(13, 1), p(14, 0), p(14, 1)),
        ),
        "iris": IOMap(
            inputs=(p(14, 1), p(12, 1), p(13, 1), p(10, 1)),
            input_scale=(-_FIVE_GRAMS_N,) * 4,
            outputs=(p(8, 0), p(2, 0), p(3, 0)),
        ),
    }
    return PaperSetup(network=net, io=io)


_PINNED_CHOICES = ("top", "bottom", "left", "sides", "corners")


def triangular_lattice(
    rows: int,
    cols: int,
    *,
    a: float = 0.016,
    pinned: str = "top",
    disorder: float = 0.0,
    seed: int | None = None,
) -> Network:
    """A ``rows × cols`` patch of a triangular lattice.

    Row ``r`` lies at ``y = −r·a·√3/2``; odd rows are shifted by ``a/2`` in x. Every node is
    joined to its horizontal neighbours and to its two nearest neighbours in the next row, so
    the patch is fully triangulated (``3·rows·cols − 2·rows − 2·cols + 1`` bonds) and rigid once
    two or more nodes are pinned.

    Args:
        rows, cols: nodes per column and per row, each >= 2.
        a: lattice constant (bond length without disorder), m.
        pinned: which nodes are fixed: ``"top"`` (row 0), ``"bottom"`` (last row), ``"left"``
            (first node of every row), ``"sides"`` (first and last node of every row) or
            ``"corners"`` (the two ends of the top row, as in the paper's network).
        disorder: standard deviation of Gaussian noise added to every coordinate, as a
            fraction of ``a`` (must be < 0.25 so bonds keep their length scale).
        seed: seed of the noise generator.
    """
    for label, v in (("rows", rows), ("cols", cols)):
        if not isinstance(v, (int, np.integer)) or v < 2:
            raise PhysicsError(f"{label} must be an integer >= 2, got {v!r}")
    if not (isinstance(a, (int, float)) and math.isfinite(a) and a > 0):
        raise PhysicsError(f"lattice constant a must be a positive finite number, got {a!r}")
    if pinned not in _PINNED_CHOICES:
        raise PhysicsError(f"pinned must be one of {', '.join(_PINNED_CHOICES)}, got {pinned!r}")
    if not (isinstance(disorder, (int, float)) and 0.0 <= disorder < 0.25):
        raise PhysicsError(f"disorder must be in [0, 0.25), got {disorder!r}")
    rows, cols = int(rows), int(cols)
    r, c = np.divmod(np.arange(rows * cols), cols)
    x = (c + 0.5 * (r % 2)) * a
    y = -r * a * math.sqrt(3.0) / 2.0
    pos = np.stack([x, y], axis=1)
    if disorder > 0.0:
        pos = pos + np.random.default_rng(seed).normal(0.0, disorder * a, size=pos.shape)

    def node(rr: np.ndarray, cc: np.ndarray) -> np.ndarray:
        return rr * cols + cc

    bonds = []
    rr, cc = np.meshgrid(np.arange(rows), np.arange(cols - 1), indexing="ij")
    bonds.append(np.stack([node(rr, cc), node(rr, cc + 1)], axis=-1).reshape(-1, 2))
    for parity, shifts in ((0, (-1, 0)), (1, (0, 1))):
        top = np.arange(parity, rows - 1, 2)
        for dc in shifts:
            rr, cc = np.meshgrid(top, np.arange(cols), indexing="ij")
            ok = (cc + dc >= 0) & (cc + dc < cols)
            pair = np.stack([node(rr, cc), node(rr + 1, cc + dc)], axis=-1)
            bonds.append(pair[ok])
    b = np.concatenate(bonds)
    order = np.lexsort((b[:, 1], b[:, 0]))
    b = b[order]

    if pinned == "top":
        fixed = np.arange(cols)
    elif pinned == "bottom":
        fixed = node(np.full(cols, rows - 1), np.arange(cols))
    elif pinned == "left":
        fixed = node(np.arange(rows), np.zeros(rows, dtype=int))
    elif pinned == "sides":
        fixed = np.concatenate(
            [node(np.arange(rows), np.zeros(rows, dtype=int)),
             node(np.arange(rows), np.full(rows, cols - 1))]
        )
    else:
        fixed = np.array([0, cols - 1])
    name = f"triangular {rows}x{cols}"
    return Network(pos, b, np.sort(fixed), name=name)
