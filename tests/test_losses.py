"""Losses: known values, gradients against central finite differences, zero outputs, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from host_sdk.errors import ConfigError
from host_sdk.losses import MSE, U_FLOOR, BehaviourCE, ProportionCE, SoftmaxCE, make_loss


def _fd_grad(loss, y: np.ndarray, target, h: float) -> np.ndarray:
    """Central differences of per_sample[i] with respect to y[i, j]."""
    g = np.zeros_like(y)
    for i in range(y.shape[0]):
        for j in range(y.shape[1]):
            yp, ym = y.copy(), y.copy()
            yp[i, j] += h
            ym[i, j] -= h
            g[i, j] = (loss.per_sample(yp, target)[i] - loss.per_sample(ym, target)[i]) / (2 * h)
    return g


def _outputs(rng: np.random.Generator, batch: int, n_out: int) -> np.ndarray:
    """Displacement-sized outputs (~1e-4 m) of both signs, kept away from 0."""
    mag = rng.uniform(0.2e-4, 3e-4, size=(batch, n_out))
    return mag * rng.choice([-1.0, 1.0], size=(batch, n_out))


CASES = [
    ("mse", MSE(), lambda rng, y: rng.normal(0, 2e-4, size=y.shape)),
    ("mse-weighted", MSE(weight=3.0), lambda rng, y: rng.normal(0, 2e-4, size=y.shape)),
    ("proportion-ce", ProportionCE(), lambda rng, y: rng.integers(0, y.shape[1], size=y.shape[0])),
    ("softmax-ce-15", SoftmaxCE(15.0), lambda rng, y: rng.integers(0, y.shape[1], size=y.shape[0])),
    ("softmax-ce-2", SoftmaxCE(2.0), lambda rng, y: rng.integers(0, y.shape[1], size=y.shape[0])),
]


@pytest.mark.parametrize("name,loss,make_target", CASES, ids=[c[0] for c in CASES])
def test_gradient_matches_central_differences(name, loss, make_target) -> None:
    rng = np.random.default_rng(7)
    y = _outputs(rng, batch=6, n_out=3)
    target = make_target(rng, y)
    analytic = loss.grad(y, target)
    numeric = _fd_grad(loss, y, target, h=1e-10)
    scale = np.max(np.abs(analytic))
    assert np.max(np.abs(analytic - numeric)) <= 1e-6 * scale


def test_behaviour_gradient_matches_central_differences() -> None:
    rng = np.random.default_rng(3)
    y = -np.abs(_outputs(rng, batch=4, n_out=2))
    loss = BehaviourCE()
    analytic = loss.grad(y, None)
    numeric = _fd_grad(loss, y, None, h=1e-10)
    assert np.max(np.abs(analytic - numeric)) <= 1e-6 * np.max(np.abs(analytic))


def test_known_values() -> None:
    y = np.array([[1e-3, -2e-3], [0.0, 3e-3]])
    t = np.array([[0.0, 0.0], [1e-3, 1e-3]])
    mse = MSE()
    assert mse.per_sample(y, t) == pytest.approx([0.5 * 5e-6, 0.5 * 5e-6], rel=1e-12)
    assert mse.value(y, t) == pytest.approx(2.5e-6, rel=1e-12)
    assert np.allclose(mse.grad(y, t), y - t, rtol=0, atol=0)
    # the paper's uniform behaviour: both outputs -0.5243 mm -> L = ln 2
    beh = BehaviourCE()
    assert beh.value(np.array([[-0.5243e-3, -0.5243e-3]]), None) == pytest.approx(np.log(2), rel=1e-12)
    # trained behaviour: -ln(0.6253 / (0.6253 + 0.4800))
    assert beh.value(np.array([[-0.6253e-3, -0.48e-3]]), None) == pytest.approx(
        -np.log(0.6253 / 1.1053), rel=1e-12)
    prop = ProportionCE()
    assert prop.per_sample(np.array([[1.0, -1.0, 2.0]]), np.array([2])) == pytest.approx([np.log(2.0)])
    soft = SoftmaxCE(c=10.0)
    # equal magnitudes -> uniform softmax -> ln 3 whatever the label
    assert soft.per_sample(np.array([[2e-4, -2e-4, 2e-4]]), np.array([1])) == pytest.approx([np.log(3)])
    # q = (0.5, 0.25, 0.25): L = -10*0.5 + ln(e^5 + 2 e^2.5)
    expected = -5.0 + np.log(np.exp(5.0) + 2 * np.exp(2.5))
    assert soft.per_sample(np.array([[2e-4, 1e-4, -1e-4]]), np.array([0])) == pytest.approx([expected])


def test_value_is_batch_mean_and_grad_rows_are_per_sample() -> None:
    rng = np.random.default_rng(11)
    y = _outputs(rng, 5, 3)
    labels = rng.integers(0, 3, size=5)
    for loss in (ProportionCE(), SoftmaxCE(12.0)):
        assert loss.value(y, labels) == pytest.approx(np.mean(loss.per_sample(y, labels)), rel=1e-14)
        full = loss.grad(y, labels)
        for i in range(5):
            np.testing.assert_allclose(loss.grad(y[i:i + 1], labels[i:i + 1])[0], full[i], rtol=1e-14)


def test_grad_is_invariant_direction_for_scaled_softmax() -> None:
    # softmax CE on normalised |u| does not change when every output is scaled; its gradient
    # scales as 1/s (homogeneous of degree 0)
    rng = np.random.default_rng(5)
    y = _outputs(rng, 3, 3)
    lab = np.array([0, 1, 2])
    loss = SoftmaxCE()
    np.testing.assert_allclose(loss.per_sample(7.0 * y, lab), loss.per_sample(y, lab), rtol=1e-12)
    np.testing.assert_allclose(loss.grad(7.0 * y, lab), loss.grad(y, lab) / 7.0, rtol=1e-12)


def test_zero_outputs_give_finite_values_and_the_documented_subgradient() -> None:
    y = np.array([[0.0, 2e-4, -1e-4], [0.0, 0.0, 0.0]])
    labels = np.array([1, 2])
    for loss in (ProportionCE(), SoftmaxCE()):
        v = loss.per_sample(y, labels)
        g = loss.grad(y, labels)
        assert np.all(np.isfinite(v)) and np.all(np.isfinite(g))
        assert g[0, 0] == 0.0  # d|u|/du taken as 0 at u = 0
        assert np.all(g[1] == 0.0)
    # all-zero outputs: every magnitude is the floor, p is uniform
    assert ProportionCE().per_sample(y, labels)[1] == pytest.approx(np.log(3))
    assert SoftmaxCE().per_sample(y, labels)[1] == pytest.approx(np.log(3))
    # a label on a zero output: finite but large loss (p = U_FLOOR / sum)
    big = ProportionCE().per_sample(np.array([[0.0, 1e-4]]), np.array([0]))[0]
    assert big == pytest.approx(np.log((1e-4 + U_FLOOR) / U_FLOOR), rel=1e-12)


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: MSE().value(np.zeros(3), np.zeros(3)), r"\(B, n_out\).*\(3,\)"),
        (lambda: MSE().value(np.zeros((2, 3)), np.zeros((2, 2))), r"\(2, 2\).*\(2, 3\)"),
        (lambda: MSE().value(np.full((1, 2), np.nan), np.zeros((1, 2))), "NaN"),
        (lambda: MSE().value(np.zeros((1, 2)), None), "target"),
        (lambda: SoftmaxCE().value(np.ones((2, 3)), np.array([0, 3])), "label 3 at sample 1"),
        (lambda: SoftmaxCE().value(np.ones((2, 3)), np.array([0, -1])), "label -1"),
        (lambda: SoftmaxCE().value(np.ones((2, 3)), np.array([0.5, 1.0])), "integers"),
        (lambda: SoftmaxCE().value(np.ones((2, 3)), np.array([0])), r"\(2,\)"),
        (lambda: ProportionCE().value(np.ones((2, 1)), np.array([0, 0])), "n_out >= 2"),
        (lambda: BehaviourCE().value(np.ones((1, 3)), None), "exactly 2"),
        (lambda: SoftmaxCE(c=-1.0), "temperature"),
        (lambda: MSE(weight=np.inf), "weight"),
        (lambda: make_loss("hinge"), "unknown loss"),
        (lambda: make_loss("mse", c=3.0), "bad options"),
    ],
)
def test_bad_input_raises_config_error(call, match) -> None:
    with pytest.raises(ConfigError, match=match):
        call()


def test_make_loss_builds_each_loss() -> None:
    assert isinstance(make_loss("softmax-ce", c=12.0), SoftmaxCE)
    assert make_loss("softmax-ce", c=12.0).c == 12.0
    assert isinstance(make_loss("behaviour-ce"), BehaviourCE)
    assert isinstance(make_loss("proportion-ce"), ProportionCE)
    assert make_loss("mse", weight=2.0).weight == 2.0
    # float labels holding whole numbers are accepted
    assert SoftmaxCE().value(np.array([[1e-4, 2e-4]]), np.array([1.0])) > 0
