"""Losses over the network's outputs, with their gradients.

Every loss works on a batch of outputs ``y`` of shape ``(B, n_out)`` (displacements in m) and
offers:

* ``per_sample(y, target) -> (B,)``: the loss of each sample;
* ``value(y, target) -> float``: the batch mean of ``per_sample``;
* ``grad(y, target) -> (B, n_out)``: ``d per_sample[i] / d y[i]``, row by row.

The adjoint force applied at the output degrees of freedom for sample ``i`` is ``-grad[i]``.
Reading the loss as an energy in J makes that force a force in N; any other unit of ``L`` simply
scales the adjoint and, linearly, ``dL/dk``. The batch gradient with respect to stiffness is the
batch mean of the per-sample in situ products, which is exactly ``d value / d k``.

Targets:

* :class:`MSE` takes target displacements, ``(B, n_out)`` or broadcastable ``(n_out,)``, in m.
* :class:`ProportionCE` and :class:`SoftmaxCE` take integer class labels ``(B,)``.
* :class:`BehaviourCE` ignores its target (``None`` is fine): it always favours output 0.

Magnitudes ``|u|`` enter the cross-entropies through ``a = max(|u|, U_FLOOR)``: a displacement
smaller than ``U_FLOOR`` (1e-15 m, far below anything a sensor or the solver resolves) counts as
``U_FLOOR``. This keeps every value and gradient finite when an output is exactly 0. The gradient
uses the subgradient ``d a / d u = sign(u)`` for ``|u| > U_FLOOR`` and ``0`` otherwise (in
particular 0 at ``u = 0``).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np
from numpy.typing import ArrayLike, NDArray

from .errors import ConfigError

__all__ = [
    "U_FLOOR",
    "Loss",
    "MSE",
    "ProportionCE",
    "BehaviourCE",
    "SoftmaxCE",
    "make_loss",
]

#: Smallest output magnitude the cross-entropies distinguish from zero (m).
U_FLOOR = 1e-15

Array = NDArray[np.float64]


@runtime_checkable
class Loss(Protocol):
    """What the trainer needs from a loss (see the module docstring for shapes and units)."""

    name: str

    def per_sample(self, y: ArrayLike, target: ArrayLike | None) -> Array:
        """Loss of each sample, ``(B,)``."""
        ...

    def value(self, y: ArrayLike, target: ArrayLike | None) -> float:
        """Batch mean of :meth:`per_sample`."""
        ...

    def grad(self, y: ArrayLike, target: ArrayLike | None) -> Array:
        """``d per_sample[i] / d y[i]``, shape ``(B, n_out)``; the adjoint force is its negative."""
        ...


def _outputs(y: ArrayLike, min_outputs: int = 1) -> Array:
    """Validate a batch of outputs: finite, shape ``(B, n_out)`` with ``n_out >= min_outputs``."""
    arr = np.asarray(y, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] < min_outputs:
        raise ConfigError(
            f"outputs must have shape (B, n_out) with n_out >= {min_outputs}, got {arr.shape}"
        )
    if not np.isfinite(arr).all():
        raise ConfigError(f"outputs of shape {arr.shape} contain NaN or infinity")
    return arr


def _labels(target: ArrayLike | None, batch: int, n_classes: int) -> NDArray[np.intp]:
    """Validate integer class labels ``(B,)`` in ``[0, n_classes)``."""
    if target is None:
        raise ConfigError("a classification loss needs class labels, got None")
    arr = np.asarray(target)
    if arr.shape != (batch,):
        raise ConfigError(f"class labels must have shape ({batch},), got {arr.shape}")
    if arr.dtype.kind not in "iu":
        as_float = arr.astype(np.float64) if arr.dtype.kind in "fb" else np.full(arr.shape, np.nan)
        if not np.all(np.isfinite(as_float)) or np.any(as_float != np.round(as_float)):
            raise ConfigError(f"class labels must be integers, got dtype {arr.dtype}")
    labels = arr if arr.dtype == np.intp else arr.astype(np.intp)
    if batch and (labels.min() < 0 or labels.max() >= n_classes):
        b = int(np.flatnonzero((labels < 0) | (labels >= n_classes))[0])
        raise ConfigError(f"class label {int(labels[b])} at sample {b} is outside 0..{n_classes - 1}")
    return labels


def _magnitudes(y: Array) -> tuple[Array, Array]:
    """``a = max(|y|, U_FLOOR)`` and its subgradient ``da/dy`` (see the module docstring)."""
    mag = np.abs(y)
    return np.maximum(mag, U_FLOOR), np.sign(y) * (mag > U_FLOOR)


class MSE:
    """Half squared error to target displacements: ``L_i = 0.5 * ||y_i - t_i||^2`` (m^2).

    This is the paper's regression loss (per sample ½‖u − y‖²). Its gradient is ``y_i - t_i``, so
    the adjoint force is ``t_i - y_i`` (numerically in N when the loss is read as N·m).

    Args:
        weight: scalar factor on the loss (and the gradient); 1 by default.
    """

    name = "mse"

    def __init__(self, weight: float = 1.0) -> None:
        if not np.isfinite(weight) or weight <= 0:
            raise ConfigError(f"MSE weight must be finite and > 0, got {weight!r}")
        self.weight = float(weight)

    def _pair(self, y: ArrayLike, target: ArrayLike | None) -> tuple[Array, Array]:
        out = _outputs(y)
        if target is None:
            raise ConfigError("MSE needs target displacements, got None")
        tgt = np.asarray(target, dtype=np.float64)
        try:
            tgt = np.broadcast_to(tgt, out.shape)
        except ValueError as e:
            raise ConfigError(
                f"MSE targets of shape {np.shape(target)} do not match outputs {out.shape}"
            ) from e
        if not np.all(np.isfinite(tgt)):
            raise ConfigError("MSE targets contain NaN or infinity")
        return out, tgt

    def per_sample(self, y: ArrayLike, target: ArrayLike | None) -> Array:
        """``0.5 * weight * ||y_i - t_i||^2`` for each sample."""
        out, tgt = self._pair(y, target)
        return 0.5 * self.weight * np.sum((out - tgt) ** 2, axis=1)

    def value(self, y: ArrayLike, target: ArrayLike | None) -> float:
        """Batch mean of :meth:`per_sample`."""
        return float(np.mean(self.per_sample(y, target)))

    def grad(self, y: ArrayLike, target: ArrayLike | None) -> Array:
        """``weight * (y_i - t_i)``."""
        out, tgt = self._pair(y, target)
        return self.weight * (out - tgt)

    def __repr__(self) -> str:
        return f"MSE(weight={self.weight!r})"


class ProportionCE:
    """The paper's classification cross-entropy on proportions of output magnitudes.

    ``p_j = a_j / sum_l a_l`` with ``a = max(|y|, U_FLOOR)`` and ``L_i = -ln p_{t_i}``. Its
    gradient is ``dL/da_j = 1/S - [j = t]/a_t`` (``S = sum a``) times ``sign(y_j)``.
    """

    name = "proportion-ce"

    def _parts(self, y: ArrayLike, target: ArrayLike | None) -> tuple[Array, Array, Array, NDArray[np.intp]]:
        out = _outputs(y, min_outputs=2)
        labels = _labels(target, out.shape[0], out.shape[1])
        a, da = _magnitudes(out)
        return out, a, da, labels

    def per_sample(self, y: ArrayLike, target: ArrayLike | None) -> Array:
        """``-ln(a_t / sum a)`` for each sample."""
        _, a, _, labels = self._parts(y, target)
        rows = np.arange(a.shape[0])
        return np.log(np.sum(a, axis=1)) - np.log(a[rows, labels])

    def value(self, y: ArrayLike, target: ArrayLike | None) -> float:
        """Batch mean of :meth:`per_sample`."""
        return float(np.mean(self.per_sample(y, target)))

    def grad(self, y: ArrayLike, target: ArrayLike | None) -> Array:
        """``d L_i / d y_i``, shape ``(B, n_out)``."""
        _, a, da, labels = self._parts(y, target)
        rows = np.arange(a.shape[0])
        g = np.repeat(1.0 / np.sum(a, axis=1, keepdims=True), a.shape[1], axis=1)
        g[rows, labels] -= 1.0 / a[rows, labels]
        return g * da

    def __repr__(self) -> str:
        return "ProportionCE()"


class BehaviourCE(ProportionCE):
    """The paper's behaviour loss ``L = -ln(|u_0| / (|u_0| + |u_1|))`` on two outputs.

    For the paper's task output 0 is ``u_13y`` and output 1 is ``u_14y``: minimising ``L`` makes
    node 13 move more than node 14. It is :class:`ProportionCE` with every label 0, so any target
    passed in is ignored.
    """

    name = "behaviour-ce"

    def _parts(self, y: ArrayLike, target: ArrayLike | None) -> tuple[Array, Array, Array, NDArray[np.intp]]:
        out = _outputs(y, min_outputs=2)
        if out.shape[1] != 2:
            raise ConfigError(f"the behaviour loss takes exactly 2 outputs, got shape {out.shape}")
        return super()._parts(out, np.zeros(out.shape[0], dtype=np.intp))

    def __repr__(self) -> str:
        return "BehaviourCE()"


class SoftmaxCE:
    """Softmax cross-entropy over temperature-scaled normalised output magnitudes.

    ``q_j = a_j / sum_l a_l`` (``a = max(|y|, U_FLOOR)``), ``z = c * q``, ``p = softmax(z)`` and
    ``L_i = -ln p_{t_i}``. The normalisation makes the loss independent of the load's overall
    size; the temperature ``c`` sets how sharply the largest output must win. Gradient:
    ``dL/dq = c (p - e_t)``, ``dL/da_j = (dL/dq_j - sum_l dL/dq_l q_l) / S``, times ``sign(y_j)``.

    Args:
        c: temperature scale in (0, 500] (the Iris task uses 15); the bound keeps
            ``exp(c (q - 1))`` clear of underflow.
    """

    name = "softmax-ce"

    def __init__(self, c: float = 15.0) -> None:
        if not (np.isfinite(c) and 0 < c <= 500):
            raise ConfigError(f"softmax temperature c must be in (0, 500], got {c!r}")
        self.c = float(c)

    def _forward(self, y: ArrayLike, target: ArrayLike | None) -> tuple[Array, Array, Array, Array, Array, NDArray[np.intp]]:
        """``q``, ``S``, ``da/dy``, ``exp(c q - c)``, its row sums, labels.

        Since ``0 <= q <= 1``, shifting ``c q`` by ``c`` keeps every exponent in ``[-c, 0]``.
        """
        out = _outputs(y, min_outputs=2)
        labels = _labels(target, out.shape[0], out.shape[1])
        a, da = _magnitudes(out)
        s = np.sum(a, axis=1, keepdims=True)
        q = a / s
        e = np.exp(self.c * (q - 1.0))
        return q, s, da, e, np.sum(e, axis=1, keepdims=True), labels

    def per_sample(self, y: ArrayLike, target: ArrayLike | None) -> Array:
        """``-ln softmax(c q)_t`` for each sample."""
        q, _, _, _, norm, labels = self._forward(y, target)
        return np.log(norm[:, 0]) - self.c * (q[np.arange(q.shape[0]), labels] - 1.0)

    def value(self, y: ArrayLike, target: ArrayLike | None) -> float:
        """Batch mean of :meth:`per_sample`."""
        return float(np.mean(self.per_sample(y, target)))

    def grad(self, y: ArrayLike, target: ArrayLike | None) -> Array:
        """``d L_i / d y_i``, shape ``(B, n_out)``."""
        q, s, da, e, norm, labels = self._forward(y, target)
        g_q = (self.c / norm) * e
        g_q[np.arange(q.shape[0]), labels] -= self.c
        g_a = (g_q - np.sum(g_q * q, axis=1, keepdims=True)) / s
        return g_a * da

    def __repr__(self) -> str:
        return f"SoftmaxCE(c={self.c!r})"


def make_loss(name: str, **options: float) -> Loss:
    """Build a loss by name: ``mse``, ``proportion-ce``, ``behaviour-ce`` or ``softmax-ce``.

    Keyword options go to the constructor (``weight`` for MSE, ``c`` for softmax-ce).
    """
    table: dict[str, type] = {
        MSE.name: MSE,
        ProportionCE.name: ProportionCE,
        BehaviourCE.name: BehaviourCE,
        SoftmaxCE.name: SoftmaxCE,
    }
    if name not in table:
        raise ConfigError(f"unknown loss {name!r}; choose one of {', '.join(sorted(table))}")
    try:
        loss: Loss = table[name](**options)
    except TypeError as e:
        raise ConfigError(f"bad options for loss {name!r}: {e}") from e
    return loss
