"""Health monitoring: faults of sensors, actuators and bonds, found by board and bond, within a
batch; a broken bond taken out of training, the rigidity of what is left, and retraining."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytest

from host_sdk.coordinator import RigBackend, RigSession
from host_sdk.protocol import Command
from host_sdk.emulator.models import DynamicsSpec
from host_sdk.emulator.rig import EmulatedRig
from host_sdk.errors import ConfigError, FloppyNetworkError, TransportError
from host_sdk.health import HealthMonitor, exclude_bond
from host_sdk.rig import load_rig
from host_sdk.tasks import get_task
from host_sdk.training import Trainer, sim_backend

PAPER = load_rig("paper")
IRIS = get_task("iris")
OWNER = {b: s.address for s in PAPER.boards for b in s.bonds}


@contextmanager
def rig(noiseless: bool = True, seed: int = 0, **backend_options: Any) -> Iterator[tuple[EmulatedRig, RigBackend]]:
    dynamics = DynamicsSpec(tau_ms=0) if noiseless else None
    with EmulatedRig(PAPER, noiseless=noiseless, seed=seed, dynamics=dynamics) as emu:
        with RigSession(PAPER, emu.ports) as s:
            s.handshake()
            s.configure()
            s.tare()
            yield emu, RigBackend(s, IRIS.io, optimiser=IRIS.optimiser, **backend_options)


def batch(backend: RigBackend, step: int, size: int = 8) -> None:
    split = IRIS.split(0)
    rows = (np.arange(size) + step * size) % split.x_train.shape[0]
    targets = split.y_train[rows]
    backend.train_batch(step, IRIS.input_forces(split.x_train[rows]),
                        lambda y, idx: -IRIS.loss.grad(y, targets[np.asarray(idx)]))
    backend.update(step)


def test_a_healthy_rig_agrees_with_its_twin() -> None:
    with rig() as (emu, backend):
        monitor = HealthMonitor(PAPER, IRIS.io)
        for step in range(2):
            batch(backend, step)
            report = monitor.check_backend(backend)
            assert report.ok and report.findings == []
            assert report.residual < 1e-3  # noiseless: quantisation and float32 only
            assert report.per_bond.shape == (28,)


def test_default_noise_raises_no_false_alarm_and_still_finds_a_break() -> None:
    with rig(noiseless=False, seed=4) as (emu, backend):
        monitor = HealthMonitor(PAPER, IRIS.io)
        for step in range(3):
            batch(backend, step)
            report = monitor.check_backend(backend)
            assert report.ok, report.summary()
            assert 1e-3 < report.residual < 0.08  # calibration errors and noise, well under tol
        emu.world.break_bond(20)
        batch(backend, 3)
        report = monitor.check_backend(backend)
        assert [(f.kind, f.bond, f.board) for f in report.findings] == [("broken_bond", 20, OWNER[20])]


@pytest.mark.parametrize("bond", [7, 20, 26])
def test_a_broken_bond_is_named_within_one_batch(bond: int) -> None:
    with rig() as (emu, backend):
        monitor = HealthMonitor(PAPER, IRIS.io)
        batch(backend, 0)
        assert monitor.check_backend(backend).ok
        emu.world.break_bond(bond)  # breaks between two batches: the next one shows it
        batch(backend, 1)
        report = monitor.check_backend(backend)
        assert not report.ok and len(report.findings) == 1
        f = report.findings[0]
        assert (f.kind, f.bond, f.board) == ("broken_bond", bond, OWNER[bond])
        k_cmd = backend.last_readback[OWNER[bond]]["k"][PAPER.board(OWNER[bond]).bonds.index(bond)]
        assert f.k_fit == pytest.approx(1e-3 * k_cmd, rel=0.05)  # the world keeps 0.1 %
        assert f"bond {bond} (board {OWNER[bond]})" in str(f)


def test_excluding_a_bond_freezes_it_and_reports_rigidity() -> None:
    with rig() as (emu, backend):
        monitor = HealthMonitor(PAPER, IRIS.io)
        batch(backend, 0)
        emu.world.break_bond(9)
        batch(backend, 1)
        ex = exclude_bond(backend, 9, monitor)
        assert ex.rigid and ex.board == OWNER[9] and "still rigid" in ex.message
        assert ex.network.n_bonds == 27 and 9 not in ex.kept
        k9 = backend.stiffness()[9]
        for step in (2, 3):
            batch(backend, step)
            assert monitor.check_backend(backend).ok  # the twin now expects the bond broken
        k = backend.stiffness()
        assert k[9] == k9  # pinned: its board no longer moves it
        # node 13 (0-based) has three bonds, 9, 26 and 27: without two of them it dangles
        ex2 = exclude_bond(backend, 26, monitor)
        assert not ex2.rigid and "floppy" in ex2.message and "13" in ex2.message
        with pytest.raises(ConfigError, match="no board owns bond 99"):
            exclude_bond(backend, 99, monitor)


def test_a_stuck_sensor_is_told_from_a_broken_bond() -> None:
    with rig() as (emu, backend):
        monitor = HealthMonitor(PAPER, IRIS.io)
        batch(backend, 0)
        emu.world.stick_sensor(3)
        batch(backend, 1)
        report = monitor.check_backend(backend)
        assert [(f.kind, f.bond, f.board) for f in report.findings] == [("stuck_sensor", 3, OWNER[3])]
        assert "neighbours agree with the twin" in report.findings[0].detail


def test_a_saturated_sensor_is_named() -> None:
    with rig() as (emu, backend):
        monitor = HealthMonitor(PAPER, IRIS.io)
        emu.world.strain_channel(5).saturate(1)
        batch(backend, 0)
        report = monitor.check_backend(backend)
        assert [(f.kind, f.bond, f.board) for f in report.findings] == [("saturated_sensor", 5, OWNER[5])]


def test_a_sensor_too_noisy_to_settle_stops_the_run_naming_its_board() -> None:
    with rig() as (emu, backend):
        emu.world.strain_channel(12).set_noise(2e6)  # counts rms: about 0.5 mm per reading
        with pytest.raises(TransportError, match=r"boards \[1\].*do not settle"):
            batch(backend, 0)
        assert backend.unsettled > 0


def test_an_offset_sensor_is_a_bad_sensor() -> None:
    with rig() as (emu, backend):
        monitor = HealthMonitor(PAPER, IRIS.io)
        batch(backend, 0)
        emu.world.strain_channel(12).stick(200_000)  # a constant reading far from the truth
        batch(backend, 1)
        report = monitor.check_backend(backend)
        assert [(f.kind, f.bond, f.board) for f in report.findings] == [("stuck_sensor", 12, OWNER[12])]


def test_a_miscalibrated_sensor_is_a_bad_sensor() -> None:
    with rig() as (emu, backend):
        monitor = HealthMonitor(PAPER, IRIS.io)
        owner = PAPER.board(OWNER[16])
        gains = [emu.sensors.strain.gain * (1.3 if b == 16 else 1.0) for b in owner.bonds]
        backend.session.request(owner.address, Command.CONFIGURE, {"gain": gains})
        batch(backend, 0)
        report = monitor.check_backend(backend)
        assert [(f.kind, f.bond, f.board) for f in report.findings] == [("bad_sensor", 16, OWNER[16])]
        others = np.delete(report.per_bond, 16)
        assert report.per_bond[16] > 0.1 and np.nanmax(others) < 0.01


def test_a_stalled_actuator_stays_put_while_its_command_moves() -> None:
    with rig() as (emu, backend):
        monitor = HealthMonitor(PAPER, IRIS.io)
        emu.world.stall_actuator(14)  # stuck at 137.5 N/m
        backend.set_stiffness(np.full(28, PAPER.k_max))
        batch(backend, 0)
        first = monitor.check_backend(backend).findings
        assert [(f.kind, f.bond, f.board) for f in first] == [("actuator_mismatch", 14, OWNER[14])]
        assert first[0].k_fit == pytest.approx(137.5, rel=0.01)
        backend.set_stiffness(np.full(28, PAPER.k_min))
        batch(backend, 1)
        second = monitor.check_backend(backend).findings
        assert [(f.kind, f.bond) for f in second] == [("stalled_actuator", 14)]
        assert "stays at 137" in second[0].detail


def test_an_actuator_that_reaches_part_of_its_range() -> None:
    with rig() as (emu, backend):
        monitor = HealthMonitor(PAPER, IRIS.io)
        emu.world.limit_actuator(18, 0.0, 0.2)  # reaches 103.1 .. 116.9 N/m only
        backend.set_stiffness(np.full(28, PAPER.k_max))
        batch(backend, 0)
        (f,) = monitor.check_backend(backend).findings
        assert (f.kind, f.bond) == ("actuator_mismatch", 18)
        assert f.k_fit == pytest.approx(PAPER.k_min + 0.2 * (PAPER.k_max - PAPER.k_min), rel=0.01)


def test_the_backend_excludes_a_broken_bond_by_itself() -> None:
    monitor = HealthMonitor(PAPER, IRIS.io)
    with rig(health=monitor) as (emu, backend):
        batch(backend, 0)
        emu.world.break_bond(7)
        batch(backend, 1)
        assert [ex.bond for ex in backend.exclusions] == [7] and backend.exclusions[0].rigid
        assert [s for s, r in backend.health_log if not r.ok] == [1]
        batch(backend, 2)
        assert backend.health_log[-1][1].ok
        # a second break that leaves a node with one bond stops the run with one clear line
        emu.world.break_bond(26)
        batch(backend, 3)
        emu.world.break_bond(27)
        with pytest.raises(FloppyNetworkError, match="floppy") as info:
            batch(backend, 4)
        assert "broken_bond: bond 27" in str(info.value) and 13 in info.value.nodes


def pretrained() -> np.ndarray:
    backend = sim_backend(IRIS)
    Trainer(IRIS, backend, seed=0, epochs=20).run()
    return backend.stiffness()


def test_damage_live_detect_exclude_retrain() -> None:
    """The paper's damage experiment, live: a trained classifier loses a bond mid-run; the
    next check names it, the bond leaves training, and retraining restores the accuracy."""
    k0 = pretrained()
    monitor = HealthMonitor(PAPER, IRIS.io)
    with rig(health=monitor) as (emu, backend):
        backend.set_stiffness(k0)
        split = IRIS.split(0)
        forces = IRIS.input_forces(split.x_test)

        def accuracy() -> float:
            return IRIS.score(backend.evaluate(forces), split.y_test)

        before = accuracy()
        assert before >= 0.9
        emu.world.break_bond(7)
        damaged = accuracy()
        assert damaged < 0.7  # the paper: 0.516 after its damage
        history = Trainer(IRIS, backend, seed=0, epochs=2, first_step=1).run()
        assert [ex.bond for ex in backend.exclusions] == [7]
        assert backend.health_log[0][0] == 1 and not backend.health_log[0][1].ok  # found in the first batch
        assert all(r.ok for _, r in backend.health_log[1:])
        after = history.final()["test_accuracy"]
        assert after >= 0.84
