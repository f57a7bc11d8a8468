"""Validation helpers, the stiffness check and the reusable factorisation of K (:class:`Factor`)."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla
from numpy.typing import ArrayLike, NDArray

from host_sdk.errors import FloppyNetworkError, PhysicsError

if TYPE_CHECKING:
    from .network import Network

DOF = tuple[int, int]
"""A degree of freedom: ``(node index 0-based, axis 0 = x / 1 = y)``."""

SOLVERS = ("splu", "cholespy", "auto")
"""Names accepted by :meth:`Network.factorize`."""
FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]


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
