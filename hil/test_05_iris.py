"""One Iris epoch in situ: the boards train, and move their bonds as the simulation does."""

from __future__ import annotations

import numpy as np

from hil_support import Hil, board_steps, fresh_start, needs, normalised_error
from host_sdk.coordinator import RigBackend
from host_sdk.tasks import get_task
from host_sdk.training import Trainer, sim_backend


def test_one_iris_epoch_in_situ(calibrated: Hil) -> None:
    hil = calibrated
    task = get_task("iris")
    needs(hil.rig, task.io, "Iris")
    with hil.session() as session:
        k0 = fresh_start(session)
        before = board_steps(session)
        backend = RigBackend(session, task.io, optimiser=task.optimiser)
        history = Trainer(task, backend, seed=0, epochs=1, first_step=0).run()
        k_rig = session.read_stiffness()
        after = board_steps(session)
    steps = history.stages[0].steps
    assert steps == 7  # 105 training samples in batches of 16
    bonded = [b.address for b in hil.rig.boards if b.bonds]
    assert {after[a] for a in bonded} == {backend.step_base + steps - 1}
    assert all(before[a] < backend.step_base for a in bonded)
    sim = sim_backend(task)
    sim_history = Trainer(task, sim, seed=0, epochs=1).run()
    k_sim = sim.stiffness()
    np.testing.assert_array_equal(k0, np.full(task.network.n_bonds, task.k0))
    assert np.count_nonzero(k_rig != k0) == task.network.n_bonds  # every bond trained
    # the emulated rig lands within 0.2 % of the simulation's steps (Adam's first steps are
    # nearly sign steps, so the boards' gradient errors barely show); allow 5 %
    assert normalised_error(k_rig - k0, k_sim - k0) < 0.05
    stage, sim_stage = history.stages[0], sim_history.stages[0]
    assert np.isfinite(stage.loss).all() and abs(stage.loss[-1] - sim_stage.loss[-1]) < 0.02
    assert abs(stage.train[-1] - sim_stage.train[-1]) <= 0.05
