"""Optimisers: the firmware's update formulas exactly, bounds, the sigmoid chain factor, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest

from host_sdk.errors import ConfigError
from host_sdk.optim import Optimiser, OptimiserConfig

K_MIN, K_MAX = 103.125, 171.875


def _firmware_adam(k: list[float], grads: list[list[float]], lr: float, b1: float, b2: float,
                   eps: float) -> list[float]:
    """The board's Adam-clip update written out bond by bond with scalars (docs/protocol.md)."""
    m = [0.0] * len(k)
    v = [0.0] * len(k)
    b1t = 1.0
    b2t = 1.0
    k = list(k)
    for g in grads:
        b1t *= b1
        b2t *= b2
        for b in range(len(k)):
            m[b] = b1 * m[b] + (1.0 - b1) * g[b]
            v[b] = b2 * v[b] + (1.0 - b2) * g[b] * g[b]
            mhat = m[b] / (1.0 - b1t)
            vhat = v[b] / (1.0 - b2t)
            k[b] = k[b] - lr * mhat / (math.sqrt(vhat) + eps)
            k[b] = min(max(k[b], K_MIN), K_MAX)
    return k


def test_adam_clip_matches_the_firmware_formula_exactly() -> None:
    rng = np.random.default_rng(0)
    k0 = rng.uniform(K_MIN + 5, K_MAX - 5, size=7)
    grads = rng.normal(0, 1e-3, size=(40, 7))
    grads[:, 0] = 1e-3  # one bond driven into its lower bound
    cfg = OptimiserConfig("adam", lr=1.5, b1=0.85, b2=0.99, eps=1e-9)
    opt = Optimiser(cfg, k0, K_MIN, K_MAX)
    for g in grads:
        k = opt.step(g)
    expected = _firmware_adam(k0.tolist(), grads.tolist(), 1.5, 0.85, 0.99, 1e-9)
    assert k.tolist() == pytest.approx(expected, rel=1e-15, abs=0)
    assert k[0] == K_MIN
    assert opt.t == 40


def test_sgd_clip_is_k_minus_lr_g_then_clip() -> None:
    opt = Optimiser(OptimiserConfig("sgd", lr=2e4), np.array([130.0, 150.0, 170.0]), K_MIN, K_MAX)
    k = opt.step(np.array([1e-3, -5e-4, -1e-3]))
    assert k.tolist() == [110.0, 160.0, K_MAX]
    k = opt.step(np.array([1e-3, 0.0, 1e-3]))
    assert k.tolist() == [K_MIN, 160.0, K_MAX - 20.0]


def test_adam_first_step_moves_every_bond_by_lr() -> None:
    # bias correction makes the first step exactly lr * g / (|g| + eps)
    opt = Optimiser(OptimiserConfig("adam", lr=0.5, eps=0.0), 137.5, K_MIN, K_MAX, n_bonds=3)
    k = opt.step(np.array([3e-6, -2.0, 1e-9]))
    np.testing.assert_allclose(k, [137.0, 138.0, 137.0], rtol=0, atol=1e-12)


def test_sigmoid_keeps_k_inside_and_applies_the_chain_factor() -> None:
    beta = 10.0
    cfg = OptimiserConfig("sgd", lr=1e-4, project="sigmoid", beta=beta)
    opt = Optimiser(cfg, np.array([137.5, 110.0, 170.0]), K_MIN, K_MAX)
    k0 = opt.k
    np.testing.assert_allclose(k0, [137.5, 110.0, 170.0], rtol=1e-13)
    # dk/dz from the definition, by central differences on the latent
    z = -np.log((K_MAX - K_MIN) / (k0 - K_MIN) - 1.0) / beta
    h = 1e-6

    def k_of(zz: np.ndarray) -> np.ndarray:
        return K_MIN + (K_MAX - K_MIN) / (1.0 + np.exp(-beta * zz))

    chain_fd = (k_of(z + h) - k_of(z - h)) / (2 * h)
    np.testing.assert_allclose(opt.chain_factor(), chain_fd, rtol=1e-8)
    g = np.array([2.0, -1.0, 0.5])
    k1 = opt.step(g)
    chain = beta * (k0 - K_MIN) * (K_MAX - k0) / (K_MAX - K_MIN)
    np.testing.assert_allclose(k1, k_of(z - 1e-4 * g * chain), rtol=1e-12)
    # a long push approaches the bounds from inside; a huge one saturates (in floating point)
    # at the bound, without overflow
    for _ in range(20):
        k = opt.step(np.array([-20.0, 20.0, -20.0]))
    assert np.all(k > K_MIN) and np.all(k < K_MAX)
    assert K_MAX - k[0] < 0.5 and k[1] - K_MIN < 0.5
    with np.errstate(all="raise"):
        for _ in range(5):
            k = opt.step(np.array([-1e9, 1e9, -1e9]))
    assert k.tolist() == [K_MAX, K_MIN, K_MAX]


def test_sigmoid_from_a_bound_has_a_finite_latent() -> None:
    opt = Optimiser(OptimiserConfig("adam", lr=0.1, project="sigmoid", beta=5.0),
                    np.array([K_MIN, K_MAX]), K_MIN, K_MAX)
    assert np.all(np.isfinite(opt.k))
    np.testing.assert_allclose(opt.k, [K_MIN, K_MAX], rtol=1e-9)
    assert np.all(np.isfinite(opt.step(np.array([1.0, -1.0]))))


def test_reset_clears_state_and_runs_are_deterministic() -> None:
    cfg = OptimiserConfig("adam", lr=1.0, eps=1e-12)
    grads = np.random.default_rng(1).normal(size=(10, 4))
    a = Optimiser(cfg, 137.5, K_MIN, K_MAX, n_bonds=4)
    b = Optimiser(cfg, 137.5, K_MIN, K_MAX, n_bonds=4)
    for g in grads:
        ka, kb = a.step(g), b.step(g)
    assert ka.tolist() == kb.tolist()
    a.reset(np.full(4, 137.5))
    assert a.t == 0
    fresh = Optimiser(cfg, 137.5, K_MIN, K_MAX, n_bonds=4)
    assert a.step(grads[0]).tolist() == fresh.step(grads[0]).tolist()


def test_config_codes_and_copies() -> None:
    cfg = OptimiserConfig("sgd", lr=3.0)
    assert cfg.opt_code == 0 and OptimiserConfig("adam").opt_code == 1
    assert cfg.with_lr(None) is cfg
    assert cfg.with_lr(0.5).lr == 0.5 and cfg.lr == 3.0
    assert cfg.as_dict() == {"name": "sgd", "lr": 3.0, "b1": 0.9, "b2": 0.999, "eps": 1e-8,
                             "project": "clip", "beta": 10.0}


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: OptimiserConfig("rmsprop"), "unknown optimiser"),
        (lambda: OptimiserConfig(project="tanh"), "unknown projection"),
        (lambda: OptimiserConfig(lr=0.0), "lr"),
        (lambda: OptimiserConfig(lr=float("nan")), "lr"),
        (lambda: OptimiserConfig(b1=1.0), "b1"),
        (lambda: OptimiserConfig(eps=-1.0), "eps"),
        (lambda: OptimiserConfig(beta=0.0), "beta"),
        (lambda: Optimiser(OptimiserConfig(), 137.5, K_MIN, K_MAX), "n_bonds"),
        (lambda: Optimiser(OptimiserConfig(), np.ones((2, 2)), K_MIN, K_MAX), r"\(2, 2\)"),
        (lambda: Optimiser(OptimiserConfig(), [137.5, 200.0], K_MIN, K_MAX), "bond 1"),
        (lambda: Optimiser(OptimiserConfig(), [137.5, np.nan], K_MIN, K_MAX), "NaN"),
        (lambda: Optimiser(OptimiserConfig(), [137.5], 150.0, 120.0), "k_min < k_max"),
        (lambda: Optimiser(OptimiserConfig(), [137.5], [1.0, 2.0], K_MAX), "does not fit"),
        (lambda: Optimiser(OptimiserConfig(), [137.5, 137.5], K_MIN, K_MAX).step([1.0]), r"\(2,\)"),
        (lambda: Optimiser(OptimiserConfig(), [137.5], K_MIN, K_MAX).step([np.inf]), "NaN or infinity"),
    ],
)
def test_bad_input_raises_config_error(make, match) -> None:
    with pytest.raises(ConfigError, match=match):
        make()
