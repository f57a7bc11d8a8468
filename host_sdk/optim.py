"""Optimisers over bond stiffness within physical bounds.

Two update rules, SGD and Adam, each with one of two ways of keeping ``k`` inside
``[k_min, k_max]``:

* ``project="clip"``: the rule acts on ``k`` itself with the gradient ``g = dL/dk`` (the
  batch-mean in situ gradient), and the result is clipped to the bounds.
  This is what the node firmware runs, formula for formula (see ``docs/protocol.md``, UPDATE):

  - SGD:  ``k <- clip(k - lr * g)``
  - Adam: ``t += 1; m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2; b1t *= b1; b2t *= b2``
    (running products, starting at 1); ``mhat = m / (1 - b1t); vhat = v / (1 - b2t)``;
    ``k <- clip(k - lr * mhat / (sqrt(vhat) + eps))``.

  ``lr`` is then in N/m per step for Adam (its step is about ``lr`` while the gradient's sign is
  steady) and in (N/m)^2 per unit loss for SGD.

* ``project="sigmoid"``: the paper's parametrisation. The rule acts on a latent ``z`` (one per
  bond) with ``k = k_min + (k_max - k_min) / (1 + exp(-beta z))``, so ``k`` never leaves the
  open interval. The gradient the rule sees is taken with respect to ``z``:
  ``dL/dz = dL/dk * dk/dz`` with the chain factor
  ``dk/dz = beta (k - k_min)(k_max - k) / (k_max - k_min)``. (The paper's own scripts omit that
  factor; this module applies it.) ``lr`` is then in units of ``z``.

Everything is deterministic: no randomness, and float64 arithmetic throughout.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.special import expit

from .errors import ConfigError

__all__ = ["OptimiserConfig", "Optimiser", "OPTIMISERS", "PROJECTIONS"]

Array = NDArray[np.float64]

#: Update rules, with the protocol's ``opt`` code of each (UPDATE command).
OPTIMISERS: dict[str, int] = {"sgd": 0, "adam": 1}
#: Ways of keeping the stiffness inside its bounds.
PROJECTIONS: tuple[str, ...] = ("clip", "sigmoid")

# A stiffness exactly at a bound has no finite latent under the sigmoid; it is placed this
# fraction of the range inside the bound instead.
_SIGMOID_EDGE = 1e-12


@dataclass(frozen=True)
class OptimiserConfig:
    """Parameters of an optimiser, small enough to send to every node board.

    Attributes:
        name: ``"adam"`` or ``"sgd"``.
        lr: learning rate (see the module docstring for its unit in each mode).
        b1: Adam's first-moment decay (ignored by SGD).
        b2: Adam's second-moment decay (ignored by SGD).
        eps: Adam's denominator guard, in the units of the gradient (ignored by SGD). Pick it
            well below the task's gradient scale: it sets where Adam's step starts to shrink.
        project: ``"clip"`` (what the boards run) or ``"sigmoid"`` (the paper's latent).
        beta: the sigmoid's steepness (only for ``project="sigmoid"``).
    """

    name: str = "adam"
    lr: float = 1.0
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    project: str = "clip"
    beta: float = 10.0

    def __post_init__(self) -> None:
        if self.name not in OPTIMISERS:
            raise ConfigError(f"unknown optimiser {self.name!r}; choose one of {', '.join(OPTIMISERS)}")
        if self.project not in PROJECTIONS:
            raise ConfigError(f"unknown projection {self.project!r}; choose one of {', '.join(PROJECTIONS)}")
        for field, low, high in (("lr", 0.0, np.inf), ("b1", 0.0, 1.0), ("b2", 0.0, 1.0)):
            value = getattr(self, field)
            if not (np.isfinite(value) and low <= value < high) or (field == "lr" and value <= 0):
                raise ConfigError(f"optimiser {field} must be in ({low}, {high}), got {value!r}")
        if not (np.isfinite(self.eps) and self.eps >= 0):
            raise ConfigError(f"optimiser eps must be finite and >= 0, got {self.eps!r}")
        if not (np.isfinite(self.beta) and self.beta > 0):
            raise ConfigError(f"sigmoid beta must be finite and > 0, got {self.beta!r}")

    @property
    def opt_code(self) -> int:
        """The protocol's ``opt`` code (0 SGD, 1 Adam)."""
        return OPTIMISERS[self.name]

    def with_lr(self, lr: float | None) -> OptimiserConfig:
        """A copy with another learning rate (``None`` keeps this one)."""
        return self if lr is None else replace(self, lr=float(lr))

    def as_dict(self) -> dict[str, float | str]:
        """Plain-data view (for JSON histories and board commands)."""
        return {
            "name": self.name,
            "lr": self.lr,
            "b1": self.b1,
            "b2": self.b2,
            "eps": self.eps,
            "project": self.project,
            "beta": self.beta,
        }


class Optimiser:
    """Stateful optimiser over a stiffness vector ``k`` (N/m), one entry per bond.

    Args:
        config: the update rule and its parameters.
        k0: initial stiffness, shape ``(m,)`` (a scalar is broadcast only if ``n_bonds`` given).
        k_min, k_max: bounds, scalars or ``(m,)``; ``k_min < k_max``.
        n_bonds: number of bonds when ``k0`` is a scalar.

    Raises:
        ConfigError: bad bounds, non-finite ``k0`` or ``k0`` outside the bounds.
    """

    def __init__(
        self,
        config: OptimiserConfig,
        k0: ArrayLike,
        k_min: ArrayLike,
        k_max: ArrayLike,
        *,
        n_bonds: int | None = None,
    ) -> None:
        self.config = config
        k = np.asarray(k0, dtype=np.float64)
        if k.ndim == 0:
            if n_bonds is None:
                raise ConfigError("a scalar initial stiffness needs n_bonds")
            k = np.full(int(n_bonds), float(k))
        if k.ndim != 1 or k.size == 0:
            raise ConfigError(f"initial stiffness must have shape (m,), got {k.shape}")
        self.n_bonds = k.size
        self.k_min = self._bound(k_min, "k_min")
        self.k_max = self._bound(k_max, "k_max")
        if np.any(self.k_min >= self.k_max):
            raise ConfigError("stiffness bounds need k_min < k_max for every bond")
        self._k = np.empty(self.n_bonds)
        self._z = np.empty(self.n_bonds)
        self._m = np.zeros(self.n_bonds)
        self._v = np.zeros(self.n_bonds)
        self.t = 0
        self._b1t = 1.0
        self._b2t = 1.0
        self.reset(k)

    def _bound(self, value: ArrayLike, what: str) -> Array:
        arr = np.asarray(value, dtype=np.float64)
        try:
            arr = np.broadcast_to(arr, (self.n_bonds,)).copy()
        except ValueError as e:
            raise ConfigError(f"{what} of shape {arr.shape} does not fit {self.n_bonds} bonds") from e
        if not np.all(np.isfinite(arr)) or np.any(arr <= 0):
            raise ConfigError(f"{what} must be finite and > 0")
        return arr

    @property
    def k(self) -> Array:
        """Current stiffness (a copy), N/m."""
        return self._k.copy()

    def reset(self, k: ArrayLike) -> None:
        """Set the stiffness to ``k`` and clear the optimiser's state (moments, step count).

        Raises:
            ConfigError: wrong shape, non-finite values or values outside the bounds.
        """
        arr = np.asarray(k, dtype=np.float64)
        if arr.shape != (self.n_bonds,):
            raise ConfigError(f"stiffness must have shape ({self.n_bonds},), got {arr.shape}")
        if not np.all(np.isfinite(arr)):
            raise ConfigError("stiffness contains NaN or infinity")
        span = self.k_max - self.k_min
        slack = 1e-9 * span
        outside = np.flatnonzero((arr < self.k_min - slack) | (arr > self.k_max + slack))
        if outside.size:
            b = int(outside[0])
            raise ConfigError(
                f"stiffness {arr[b]!r} of bond {b} is outside [{self.k_min[b]!r}, {self.k_max[b]!r}] N/m"
            )
        self._k[:] = np.clip(arr, self.k_min, self.k_max)
        if self.config.project == "sigmoid":
            frac = np.clip((self._k - self.k_min) / span, _SIGMOID_EDGE, 1.0 - _SIGMOID_EDGE)
            self._z[:] = -np.log(1.0 / frac - 1.0) / self.config.beta
            self._k[:] = self._from_latent(self._z)
        self._m[:] = 0.0
        self._v[:] = 0.0
        self.t = 0
        self._b1t = 1.0
        self._b2t = 1.0

    def _from_latent(self, z: Array) -> Array:
        return self.k_min + (self.k_max - self.k_min) * expit(self.config.beta * z)

    def chain_factor(self) -> Array:
        """``dk/dz`` of the sigmoid at the current stiffness (ones for ``project="clip"``)."""
        if self.config.project != "sigmoid":
            return np.ones(self.n_bonds)
        span = self.k_max - self.k_min
        return self.config.beta * (self._k - self.k_min) * (self.k_max - self._k) / span

    def step(self, grad: ArrayLike) -> Array:
        """Apply one update with ``grad = dL/dk`` (the batch-mean in situ gradient, ``(m,)``).

        Returns:
            the new stiffness (a copy), N/m.

        Raises:
            ConfigError: wrong shape or non-finite gradient.
        """
        g = np.asarray(grad, dtype=np.float64)
        if g.shape != (self.n_bonds,):
            raise ConfigError(f"gradient must have shape ({self.n_bonds},), got {g.shape}")
        if not np.all(np.isfinite(g)):
            raise ConfigError("gradient contains NaN or infinity")
        cfg = self.config
        if cfg.project == "sigmoid":
            g = g * self.chain_factor()
        self.t += 1
        if cfg.name == "sgd":
            delta = cfg.lr * g
        else:
            self._m = cfg.b1 * self._m + (1.0 - cfg.b1) * g
            self._v = cfg.b2 * self._v + (1.0 - cfg.b2) * g * g
            self._b1t *= cfg.b1
            self._b2t *= cfg.b2
            m_hat = self._m / (1.0 - self._b1t)
            v_hat = self._v / (1.0 - self._b2t)
            delta = cfg.lr * m_hat / (np.sqrt(v_hat) + cfg.eps)
        if cfg.project == "sigmoid":
            self._z = self._z - delta
            self._k = self._from_latent(self._z)
        else:
            self._k = np.clip(self._k - delta, self.k_min, self.k_max)
        return self._k.copy()

    def __repr__(self) -> str:
        return f"Optimiser({self.config!r}, n_bonds={self.n_bonds}, t={self.t})"
