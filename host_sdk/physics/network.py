"""The :class:`Network`: geometry, validation, assembly of K, solves and zero-mode detection."""

from __future__ import annotations

import numpy as np
import scipy.linalg
import scipy.sparse as sp
import scipy.sparse.linalg as spla
from numpy.typing import ArrayLike

from host_sdk.errors import FloppyNetworkError, PhysicsError

from .linalg import (
    SOLVERS,
    Factor,
    FloatArray,
    IntArray,
    _float_field,
    _freeze,
    _int_array,
    validate_stiffness,
)

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
