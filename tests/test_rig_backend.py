"""The in situ loop on emulated rigs: boards running the firmware against the digital twin."""

from __future__ import annotations

import os

import numpy as np
import pytest

from host_sdk import protocol
from host_sdk.coordinator import RigSession
from host_sdk.emulator.rig import EmulatedRig
from host_sdk.errors import NodeError, TransportError
from host_sdk.physics import forward_adjoint
from host_sdk.rig import load_rig
from host_sdk.rigrun import RigRunner
from host_sdk.tasks import get_task
from host_sdk.training import Trainer, sim_backend


def _train(backend, task, seed, epochs):
    return Trainer(task, backend, seed=seed, epochs=epochs).run()


def _batch_gradient(runner: RigRunner, task, rows: int = 16):
    """Boards' batch-mean gradient after one batch (no update), and the digital twin's."""
    backend = runner.backend(task)
    split = task.split(0)
    x, labels = split.x_train[:rows], split.y_train[:rows]
    inputs = task.input_forces(x)

    def adjoint(y, idx):
        return -task.loss.grad(y, labels[np.asarray(idx)])

    backend.train_batch(0, inputs, adjoint)
    boards = runner.session.read_gradients()
    k = np.full(task.network.n_bonds, task.k0)
    forces = task.io.forces(inputs, task.network.n_nodes)
    dofs = [task.network.dof(n, a) for n, a in task.io.outputs]
    _, twin, _ = forward_adjoint(task.network, k, forces, dofs, lambda y: -task.loss.grad(y, labels))
    return boards, twin


def _cosine(a, b):
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_noiseless_rig_matches_simulation_on_iris() -> None:
    task = get_task("iris")
    with RigRunner("paper", noiseless=True) as runner:
        rig = _train(runner.backend(task), task, seed=0, epochs=3)
    sim = _train(sim_backend(task), task, seed=0, epochs=3)
    assert np.max(np.abs(rig.k - sim.k) / sim.k) < 1e-3
    n_test = len(task.split(0).x_test)
    assert abs(rig.final()["test_accuracy"] - sim.final()["test_accuracy"]) <= 1 / n_test + 1e-12
    assert abs(rig.final()["train_accuracy"] - sim.final()["train_accuracy"]) <= 1 / 105 + 1e-12


def test_noiseless_rig_matches_simulation_on_behaviour() -> None:
    # trained to convergence (the task stops once an epoch changes k by <= 1e-8 relative):
    # the paper's result, every bond at a bound, u_13y = -0.6253 mm and u_14y = -0.4800 mm
    task = get_task("behaviour-ce")
    with RigRunner("paper", noiseless=True) as runner:
        rig = _train(runner.backend(task), task, seed=0, epochs=None)
    sim = _train(sim_backend(task), task, seed=0, epochs=None)
    assert rig.stages[-1].converged and sim.stages[-1].converged
    assert np.max(np.abs(rig.k - sim.k) / sim.k) < 1e-3
    at_bound = np.isclose(rig.k, task.k_min, rtol=1e-6) | np.isclose(rig.k, task.k_max, rtol=1e-6)
    assert at_bound.all()
    u13, u14 = np.asarray(rig.stages[-1].test_outputs[0]) * 1e3
    assert abs(u13 - -0.6253) < 1e-3 and abs(u14 - -0.4800) < 1e-3


def test_board_gradients_match_digital_twin_noiseless() -> None:
    task = get_task("iris")
    with RigRunner("paper", noiseless=True) as runner:
        boards, twin = _batch_gradient(runner, task)
    assert _cosine(boards, twin) >= 0.9999
    assert np.linalg.norm(boards - twin) / np.linalg.norm(twin) < 1e-3


def test_board_gradients_with_default_noise_within_paper_precision() -> None:
    task = get_task("iris")
    with RigRunner("paper", seed=3) as runner:
        boards, twin = _batch_gradient(runner, task)
    assert np.linalg.norm(boards - twin) / np.linalg.norm(twin) < 0.1


def _train_batch_bytes(spec: str) -> tuple[float, int]:
    """Bytes on the wire per training sample (phases only) and the number of boards."""
    with RigRunner(spec, noiseless=True) as runner:
        task = runner.task_for_rig(get_task("iris"))
        backend = runner.backend(task)
        split = task.split(0)
        inputs = task.input_forces(split.x_train[:8])
        labels = split.y_train[:8]
        before = runner.wire_bytes()
        backend.train_batch(0, inputs, lambda y, idx: -task.loss.grad(y, labels[np.asarray(idx)]))
        return (runner.wire_bytes() - before) / len(inputs), len(runner.rig.boards)


@pytest.mark.parametrize("large_spec", [
    "lattice:9x9",
    pytest.param("lattice:20x20", marks=pytest.mark.slow),
])
def test_traffic_per_sample_does_not_grow_with_the_network(large_spec: str) -> None:
    small, n_small = _train_batch_bytes("lattice:4x4")
    large, n_large = _train_batch_bytes(large_spec)
    assert n_large > 4 * n_small
    assert small == large


@pytest.mark.micropython
def test_micropython_rig_epoch_is_bit_identical_to_in_process() -> None:
    task = get_task("iris")
    k = {}
    for micropython in (False, True):
        with RigRunner("paper", noiseless=True, micropython=micropython) as runner:
            k[micropython] = _train(runner.backend(task), task, seed=0, epochs=1).k.astype(np.float32)
    assert np.array_equal(k[False].view(np.uint32), k[True].view(np.uint32))


def test_unknown_port_is_one_clear_error() -> None:
    rig = load_rig("paper")
    ports = {b.address: f"serial:///dev/mnn-no-such-port-{b.address}" for b in rig.boards}
    with pytest.raises(TransportError, match="mnn-no-such-port-0"):
        RigSession(rig, ports)


def test_silent_board_is_named_with_its_port() -> None:
    rig = load_rig("paper")
    master, slave = os.openpty()
    try:
        with EmulatedRig(rig, noiseless=True) as emu:
            ports = dict(emu.ports)
            ports[5] = f"serial://{os.ttyname(slave)}"
            with RigSession(rig, ports, timeout=0.05, retries=1) as session:
                with pytest.raises(TransportError) as err:
                    session.handshake()
        message = str(err.value)
        assert "5" in message and os.ttyname(slave) in message
        assert "\n" not in message
    finally:
        os.close(master)
        os.close(slave)


def test_board_with_other_firmware_is_refused() -> None:
    rig = load_rig("paper")
    with EmulatedRig(rig, noiseless=True) as emu:
        with RigSession(rig, emu.ports, expected_hash="0123456789abcdef") as session:
            with pytest.raises(NodeError, match="expected 0123456789abcdef"):
                session.handshake()


def test_interrupt_mid_batch_keeps_last_applied_stiffness() -> None:
    task = get_task("iris")
    with RigRunner("paper", noiseless=True) as runner:
        backend = runner.backend(task)
        split = task.split(0)
        labels = split.y_train
        grad = lambda y, idx: -task.loss.grad(y, labels[np.asarray(idx)])  # noqa: E731
        backend.train_batch(0, task.input_forces(split.x_train[:4]), grad)
        backend.update(0)
        k_applied = backend.stiffness()

        def interrupted(y, idx):
            if idx[0] == 2:
                raise KeyboardInterrupt
            return grad(y, idx)

        with pytest.raises(KeyboardInterrupt):
            backend.train_batch(1, task.input_forces(split.x_train[4:8]), interrupted)
        # the boards kept the stiffness of the last applied step
        assert np.array_equal(backend.stiffness(), k_applied)
        updates = runner.session.request(0, protocol.Command.STATUS)["updates"]
        # a new run on the same boards starts the abandoned step afresh and trains normally
        again = runner.backend(task)
        again.train_batch(0, task.input_forces(split.x_train[4:8]), grad)
        again.update(0)
        assert runner.session.request(0, protocol.Command.STATUS)["updates"] == updates + 1
        assert not np.array_equal(again.stiffness(), np.full(task.network.n_bonds, task.k0))


@pytest.mark.slow
def test_iris_in_situ_with_default_noise_reaches_093_over_ten_seeds() -> None:
    task = get_task("iris")
    accuracies = []
    with RigRunner("paper") as runner:
        for seed in range(10):
            accuracies.append(_train(runner.backend(task), task, seed=seed, epochs=100).final()["test_accuracy"])
    assert np.mean(accuracies) >= 0.93


@pytest.mark.slow
def test_noiseless_rig_matches_simulation_on_full_iris_run() -> None:
    task = get_task("iris")
    with RigRunner("paper", noiseless=True) as runner:
        rig = _train(runner.backend(task), task, seed=0, epochs=100)
    sim = _train(sim_backend(task), task, seed=0, epochs=100)
    assert np.max(np.abs(rig.k - sim.k) / sim.k) < 1e-3
    assert abs(rig.final()["test_accuracy"] - sim.final()["test_accuracy"]) <= 1 / 45 + 1e-12
