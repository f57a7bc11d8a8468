"""The emulator's world: physics, sensor and actuator models, settling, faults."""

from __future__ import annotations

import math

import numpy as np
import pytest

from host_sdk.emulator.models import (
    ActuatorSpec,
    AdcChannel,
    AdcSpec,
    DynamicsSpec,
    SensorSpec,
    StiffnessActuator,
)
from host_sdk.emulator.world import World
from host_sdk.errors import ConfigError
from host_sdk.physics import Network, paper_network

PAPER = paper_network()
NODE13 = PAPER.paper_node(13)
NODE14 = PAPER.paper_node(14)


def _world(**kw: object) -> World:
    kw.setdefault("sensors", SensorSpec().noiseless())
    return World(PAPER.network, PAPER.k0, **kw)  # type: ignore[arg-type]


def test_equilibrium_is_the_physics_solve() -> None:
    k = np.linspace(110.0, 160.0, PAPER.network.n_bonds)
    w = _world()
    w.set_stiffness(k)
    w.set_force(NODE13, 0.01, -0.098)
    w.set_force(NODE14, -0.02, 0.0)
    f = np.zeros((PAPER.network.n_nodes, 2))
    f[NODE13] = (0.01, -0.098)
    f[NODE14] = (-0.02, 0.0)
    u = PAPER.network.solve(k, f)
    np.testing.assert_array_equal(w.displacements(), u)
    np.testing.assert_array_equal(w.elongations(), PAPER.network.elongations(u))


def test_fig1_output_matches_the_paper() -> None:
    w = _world()
    w.set_force(NODE13, 0.0, -0.098)
    assert w.displacements()[NODE14, 1] == pytest.approx(-0.805e-3, abs=0.001e-3)


def test_noiseless_counts_times_gain_is_the_elongation_within_one_lsb() -> None:
    w = _world(dynamics=DynamicsSpec(tau_ms=0.0))
    w.set_force(NODE13, 0.0, -0.098)
    bonds = list(range(PAPER.network.n_bonds))
    probe = w.probe(bonds, node=NODE14)
    s = w.elongations()
    gain = w.sensors.strain.gain
    for i, b in enumerate(bonds):
        counts = probe.read_strain(i, 0)
        assert isinstance(counts, int)
        assert abs(counts * gain - s[b]) <= 0.5 * gain
    cx, cy = probe.read_disp(0)
    u = w.displacements()[NODE14]
    dg = w.sensors.disp.gain
    assert abs(cx * dg - u[0]) <= 0.5 * dg and abs(cy * dg - u[1]) <= 0.5 * dg


def test_one_factorisation_per_stiffness_state() -> None:
    w = _world()
    for i in range(20):
        w.set_force(NODE13, 0.0, -0.001 * (i + 1))
        w.elongations()
    assert (w.factorizations, w.solves) == (1, 20)
    w.elongations()  # nothing changed: cached
    assert w.solves == 20
    w.set_stiffness_cmd(3, 1800.0)
    w.set_force(NODE14, 0.0, -0.01)
    w.elongations()
    assert (w.factorizations, w.solves) == (2, 21)


def test_adc_channel_formula_gain_offset_noise_and_clipping() -> None:
    spec = AdcSpec(gain=1e-9, gain_error=0.02, offset_std=1000.0, noise=0.0, bits=24)
    rng = np.random.default_rng(7)
    draws = np.random.default_rng(7).standard_normal(2)
    ch = AdcChannel(spec, rng)
    assert ch.true_gain == pytest.approx(1e-9 * (1 + 0.02 * draws[0]), rel=1e-15)
    assert ch.offset == pytest.approx(1000.0 * draws[1], rel=1e-15)
    length = 3.0e-4
    assert ch.counts(length) == math.floor(length / ch.true_gain + ch.offset + 0.5)
    assert ch.counts(1.0) == 2**23 - 1  # 1 m is far beyond +-8.4 mm: clipped
    assert ch.counts(-1.0) == -(2**23)
    assert ch.counts(float("inf")) == 2**23 - 1


def test_adc_noise_has_the_specified_spread_and_is_reproducible() -> None:
    spec = AdcSpec(gain=1e-9, noise=50.0)
    a = AdcChannel(spec, np.random.default_rng(3))
    b = AdcChannel(spec, np.random.default_rng(3))
    xs = np.array([a.counts(1e-5) for _ in range(4000)])
    ys = np.array([b.counts(1e-5) for _ in range(4000)])
    np.testing.assert_array_equal(xs, ys)
    assert xs.mean() == pytest.approx(1e4, abs=3.0)  # 50 / sqrt(4000) = 0.8 counts
    assert xs.std() == pytest.approx(50.0, rel=0.05)


def test_default_sensors_differ_from_nominal_and_noiseless_is_exact() -> None:
    w = World(PAPER.network, PAPER.k0, seed=5)
    gains = np.array([w.strain_channel(b).true_gain for b in range(PAPER.network.n_bonds)])
    nominal = w.sensors.strain.gain
    assert 0.002 < np.std(gains / nominal - 1) < 0.03
    wn = _world(seed=5)
    assert all(wn.strain_channel(b).true_gain == nominal for b in range(28))
    assert all(wn.strain_channel(b).offset == 0.0 for b in range(28))


def test_channels_have_independent_streams_whatever_the_read_order() -> None:
    w1 = World(PAPER.network, PAPER.k0, seed=11)
    w2 = World(PAPER.network, PAPER.k0, seed=11)
    first = [w1.strain_counts(0, 1e-4) for _ in range(5)]
    second = [w1.strain_counts(1, 1e-4) for _ in range(5)]
    inter = [(w2.strain_counts(1, 1e-4), w2.strain_counts(0, 1e-4)) for _ in range(5)]
    assert first == [b for _, b in inter]
    assert second == [a for a, _ in inter]
    assert len(set(first)) > 1  # noisy by default


def test_stiffness_actuator_curve_resolution_and_saturation() -> None:
    spec = ActuatorSpec()
    act = StiffnessActuator(spec, 137.5)
    assert act.command(1000.0) == spec.k_min
    assert act.command(2000.0) == spec.k_max
    assert act.command(1500.0) == pytest.approx(137.5, rel=1e-15)
    step = (spec.k_max - spec.k_min) / 1000.0
    assert act.command(1500.4) == pytest.approx(137.5, rel=1e-15)
    assert act.command(1500.6) == pytest.approx(137.5 + step, rel=1e-12)
    assert act.command(2500.0) == spec.k_max
    assert act.command(-3.0) == spec.k_min
    ideal = StiffnessActuator(spec.ideal(), 137.5)
    assert ideal.command(1500.4) == pytest.approx(137.5 + 0.4 * step, rel=1e-12)
    bowed = ActuatorSpec(curvature=0.1)
    assert bowed.stiffness_of(1500.0) == pytest.approx(
        spec.k_min + (spec.k_max - spec.k_min) * (0.5 + 0.1 * 0.25), rel=1e-15
    )
    assert spec.act_table(3) == [[103.125, 1000.0], [137.5, 1500.0], [171.875, 2000.0]]


def test_force_actuator_resolution_and_range() -> None:
    w = _world(actuators=ActuatorSpec(force_max=0.1, force_resolution=1e-4))
    fx, fy = w.set_force(NODE13, 0.01234, -0.5)
    assert fx == pytest.approx(0.0123, rel=1e-12) and fy == -0.1
    np.testing.assert_allclose(w.loads()[NODE13], [0.0123, -0.1], rtol=1e-12)
    wi = _world(actuators=ActuatorSpec().ideal())
    assert wi.set_force(NODE13, 0.012345678, 0.0) == (0.012345678, 0.0)


def test_settling_starts_at_the_old_value_and_relaxes_with_tau() -> None:
    w = _world(dynamics=DynamicsSpec(tau_ms=10.0, read_ms=1))
    probe = w.probe([9], node=NODE14)
    assert probe.values(0).tolist() == [0.0, 0.0, 0.0]
    w.set_force(NODE13, 0.0, -0.098)
    target = np.concatenate([w.elongations()[[9]], w.displacements()[NODE14]])
    np.testing.assert_array_equal(probe.values(100), 0.0 * target)  # first look: still at rest
    np.testing.assert_allclose(probe.values(110), target * (1 - math.exp(-1.0)), rtol=1e-12)
    np.testing.assert_allclose(probe.values(130), target * (1 - math.exp(-3.0)), rtol=1e-12)
    np.testing.assert_array_equal(probe.values(2000), target)  # settled exactly
    w.set_force(NODE13, 0.0, 0.0)
    np.testing.assert_array_equal(probe.values(2005), target)  # unloading starts from there
    np.testing.assert_allclose(probe.values(2015), target * math.exp(-1.0), rtol=1e-12)


def test_no_settling_when_tau_is_zero() -> None:
    w = _world(dynamics=DynamicsSpec(tau_ms=0.0))
    probe = w.probe([9])
    w.set_force(NODE13, 0.0, -0.098)
    assert probe.values(0)[0] == w.elongations()[9]


def test_broken_bond_keeps_a_fraction_and_changes_the_equilibrium() -> None:
    w = _world()
    w.set_force(NODE13, 0.0, -0.098)
    before = w.elongations()
    w.break_bond(9, 1e-3)
    assert w.stiffness()[9] == pytest.approx(PAPER.k0 * 1e-3)
    assert w.broken_bonds() == [9]
    assert w.set_stiffness_cmd(9, 2000.0) == pytest.approx(PAPER.k_max * 1e-3)
    after = w.elongations()
    assert abs(after[9]) > 5 * abs(before[9])
    w.repair_bond(9)
    assert w.stiffness()[9] == PAPER.k_max


def test_stalled_actuator_and_stuck_sensor() -> None:
    w = _world()
    w.set_stiffness_cmd(2, 1200.0)
    k2 = w.stiffness()[2]
    w.stall_actuator(2)
    w.set_stiffness_cmd(2, 1900.0)
    assert w.stiffness()[2] == k2
    w.limit_actuator(3, 0.0, 0.5)
    assert w.set_stiffness_cmd(3, 2000.0) == pytest.approx(137.5)
    w.stick_sensor(4, 1234)
    assert [w.strain_counts(4, x) for x in (0.0, 1e-4, -1e-4)] == [1234] * 3
    w.clear_faults()
    assert w.strain_counts(4, 1e-4) == 400000
    assert w.set_stiffness_cmd(2, 2000.0) == PAPER.k_max


def test_bad_input_is_refused_with_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="k_init has shape"):
        World(PAPER.network, np.ones(3))
    with pytest.raises(ConfigError, match="k_init must be finite"):
        World(PAPER.network, -1.0)
    w = _world()
    with pytest.raises(ConfigError, match="bond index 28"):
        w.set_stiffness_cmd(28, 1500.0)
    with pytest.raises(ConfigError, match="node index -1"):
        w.set_force(-1, 0.0, 0.0)
    with pytest.raises(ConfigError, match="fx must be finite"):
        w.set_force(3, float("nan"), 0.0)
    with pytest.raises(ConfigError, match="gain must be > 0"):
        AdcSpec(gain=0.0)
    with pytest.raises(ConfigError, match="curvature"):
        ActuatorSpec(curvature=1.5)


def test_a_triangle_has_the_analytic_answer() -> None:
    # Equilateral triangle, base pinned, apex pulled up by F: each inclined bond carries
    # F / (2 sin 60) and stretches by that over k.
    net = Network([[0.0, 0.0], [1.0, 0.0], [0.5, math.sqrt(3) / 2]], [[0, 1], [1, 2], [0, 2]], [0, 1])
    w = World(net, 100.0, sensors=SensorSpec().noiseless())
    w.set_force(2, 0.0, 0.01)
    s = w.elongations()
    expected = 0.01 / (2 * math.sin(math.pi / 3)) / 100.0
    np.testing.assert_allclose(s, [0.0, expected, expected], rtol=1e-12, atol=1e-18)
