"""Builders: the paper's network with its task wiring, and triangular lattices of any size."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike

from host_sdk.errors import PhysicsError

from .linalg import DOF, FloatArray
from .network import Network


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
