"""Persistence: a board that loses power mid-run comes back with the same stiffness."""

from __future__ import annotations

import numpy as np

from hil_support import (Hil, board_steps, fig1_backend, fig1_io, fig1_steps, fresh_start, needs,
                         normalised_error, sim_fig1)
from host_sdk import protocol

Cmd = protocol.Command
VICTIM = 13  # paper node 14's board: the output board, with bonds 9 and 26


def test_a_board_killed_mid_run_comes_back_with_its_stiffness(calibrated: Hil) -> None:
    hil = calibrated
    needs(hil.rig, fig1_io(), "the Fig. 1 case")
    victim = hil.rig.board_at(13)
    assert victim is not None and victim.bonds
    with hil.session() as session:
        k0 = fresh_start(session)
        backend = fig1_backend(session)
        fig1_steps(backend, [0, 1])
        held = session.request(victim.address, Cmd.READ_BONDS)
        boots = session.hello(victim.address)["boots"]
        # step 2 is half done (every board has accumulated its sample) when the power goes
        backend.train_batch(2, np.array([[-0.098]]), lambda y, _i: -2.0 * (y + 0.025))
        bonds = list(victim.bonds)

        def servos_sag() -> None:
            if hil.emu is not None:  # unpowered servos do not hold their position
                k = hil.emu.world.stiffness()
                k[bonds] = hil.rig.k_min
                hil.emu.world.set_stiffness(k)

        hil.power_cycle(session, victim.address, servos_sag)
        hello = session.hello(victim.address)
        back = session.request(victim.address, Cmd.READ_BONDS)
        assert hello["boots"] == boots + 1 and hello["step"] == backend.step_base + 1
        assert back["k"] == held["k"] and back["cmd"] == held["cmd"]  # bit for bit, from flash
        assert back["count"] == 0  # the accumulator is not persisted
        if hil.emu is not None:  # the board drove its actuators back at boot
            resolution = (hil.rig.k_max - hil.rig.k_min) / 1000.0
            assert np.max(np.abs(hil.emu.world.stiffness()[bonds] - np.asarray(held["k"]))) < resolution
        backend.update(2)  # the host replays the lost sample on that board, then commits
        assert set(board_steps(session).values()) == {backend.step_base + 2}
        assert backend.stats.lagging >= 1 and backend.stats.replays >= 1
        k3 = session.read_stiffness()
    assert normalised_error(k3 - k0, sim_fig1(hil.rig, k0, 3) - k0) < 0.1
