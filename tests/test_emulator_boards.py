"""In-process emulated boards: the real firmware under CPython on the emulated world."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from host_sdk import protocol
from host_sdk.emulator.models import ActuatorSpec
from host_sdk.emulator.rig import EmulatedRig, configure_args, sensors_for
from host_sdk.errors import ConfigError, TransportError
from host_sdk.fwinfo import firmware_hash
from host_sdk.link import Link
from host_sdk.physics import in_situ_gradient
from host_sdk.rig import load_rig
from host_sdk.transport import endpoint_names, open_transport

C = protocol.Command
PAPER = load_rig("paper")
IN13 = 12  # paper node 13 (0-based), the Fig. 1 load
OUT14 = 13  # paper node 14, the Fig. 1 output
F_FIG1 = -0.098


class Boards:
    """One link per port of an emulated rig; requests by board address."""

    def __init__(self, emu: EmulatedRig) -> None:
        self.emu = emu
        self.links: dict[str, Link] = {}
        for url in dict.fromkeys(emu.ports.values()):
            self.links[url] = Link(open_transport(url), timeout=2.0, retries=1, first_seq=1)

    def __call__(self, address: int, command: int, args: dict[str, Any] | None = None) -> Any:
        return self.links[self.emu.ports[address]].request(address, command, args or {})

    def close(self) -> None:
        for link in self.links.values():
            link.close()


@pytest.fixture
def paper() -> Iterator[tuple[EmulatedRig, Boards]]:
    emu = EmulatedRig(PAPER, noiseless=True)
    boards = Boards(emu)
    try:
        yield emu, boards
    finally:
        boards.close()
        emu.stop()


def _sample(boards: Boards, rig: Any, phase: int, step: int, sample: int, **extra: Any) -> None:
    args = {"phase": phase, "step": step, "sample": sample, "n": 4, "tol": 1e-10, "timeout_ms": 5000}
    args.update(extra)
    for spec in rig.boards:
        result = boards(spec.address, C.SAMPLE, args)
        assert result["settled"] is True


def _bonds(boards: Boards, rig: Any, key: str) -> np.ndarray:
    out = np.full(rig.n_bonds, np.nan)
    for spec in rig.boards:
        result = boards(spec.address, C.READ_BONDS)
        out[list(result["bonds"])] = result[key]
    return out


def test_hello_reports_the_emulated_board(paper: tuple[EmulatedRig, Boards]) -> None:
    emu, boards = paper
    hello = boards(OUT14, C.HELLO)
    assert hello["board"] == "emu-13"
    assert hello["address"] == 13 and hello["node"] == 13
    assert hello["firmware_hash"] == firmware_hash()
    assert hello["caps"] == {"strain": 2, "stiffness": 2, "force": True, "disp": True}
    assert hello["configured"] is True
    assert hello["bonds"] == list(PAPER.board(13).bonds)
    assert boards(0, C.HELLO)["caps"] == {"strain": 2, "stiffness": 2, "force": False, "disp": False}
    assert emu.ports[5] == "emu://paper/5"
    with open(os.path.join(emu.flash_dirs[5], "fw.hash"), encoding="utf-8") as f:
        assert f.read().strip() == firmware_hash()


def test_sampled_elongations_and_gradient_equal_the_physics(paper: tuple[EmulatedRig, Boards]) -> None:
    emu, boards = paper
    for spec in PAPER.boards:
        boards(spec.address, C.TARE, {"n": 4})
    boards(IN13, C.SET_LOAD, {"fx": 0.0, "fy": F_FIG1})
    _sample(boards, PAPER, 0, 0, 0)
    out = boards(OUT14, C.READ_OUTPUT, {"n": 4})
    f = np.zeros((PAPER.network.n_nodes, 2))
    f[IN13, 1] = F_FIG1
    u = PAPER.network.solve(np.full(PAPER.n_bonds, PAPER.k0), f)
    s_fwd = PAPER.network.elongations(u)
    assert out["uy"] == pytest.approx(-0.805e-3, abs=1e-6)
    assert out["uy"] == pytest.approx(u[OUT14, 1], rel=1e-6)
    got_fwd = _bonds(boards, PAPER, "s_fwd")
    np.testing.assert_allclose(got_fwd, s_fwd, rtol=1e-6, atol=2e-9)
    # adjoint: input removed, 0.049 N up at the output node, measured with gain 0.5
    alpha = 0.5
    boards(IN13, C.SET_LOAD, {"fx": 0.0, "fy": 0.0})
    boards(OUT14, C.SET_LOAD, {"fx": 0.0, "fy": 0.049})
    _sample(boards, PAPER, 1, 0, 0, gain=alpha, incremental=False)
    fa = np.zeros_like(f)
    fa[OUT14, 1] = 0.049
    s_adj = PAPER.network.elongations(PAPER.network.solve(np.full(PAPER.n_bonds, PAPER.k0), fa))
    np.testing.assert_allclose(_bonds(boards, PAPER, "s_adj"), s_adj, rtol=1e-6, atol=2e-9)
    grad = _bonds(boards, PAPER, "grad")
    expected = in_situ_gradient(s_fwd, s_adj) / alpha
    np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-12)
    assert np.dot(grad, expected) / np.linalg.norm(grad) / np.linalg.norm(expected) > 0.99999


def test_set_stiffness_moves_the_world_through_the_actuator_model() -> None:
    # default (non-ideal) actuators: 1 us command steps
    with EmulatedRig(PAPER, seed=2) as emu:
        boards = Boards(emu)
        try:
            boards(3, C.SET_STIFFNESS, {"k": [120.0, 160.1234]})
            k = emu.world.stiffness()
            spec = emu.actuators
            for bond, want in zip(PAPER.board(3).bonds, (120.0, 160.1234)):
                cmd = 1000.0 + 1000.0 * (np.float32(want) - spec.k_min) / (spec.k_max - spec.k_min)
                assert k[bond] == spec.stiffness_of(round(cmd))
                assert abs(k[bond] - want) <= 0.5 * (spec.k_max - spec.k_min) / 1000 + 1e-9
        finally:
            boards.close()


def test_reboot_keeps_stiffness_and_counts_the_boot(paper: tuple[EmulatedRig, Boards]) -> None:
    emu, boards = paper
    boards(7, C.SET_STIFFNESS, {"k": [111.5, 150.25]})
    before = boards(7, C.HELLO)["boots"]
    assert boards(7, C.REBOOT) == {}
    assert boards(7, C.HELLO)["boots"] == before + 1
    assert boards(7, C.READ_BONDS)["k"] == [111.5, 150.25]
    emu.kill_board(7)
    assert not emu.board_running(7)
    with pytest.raises(TransportError, match="board 7"):
        boards(7, C.HELLO)
    emu.restart_board(7)
    assert boards(7, C.HELLO)["boots"] == before + 2
    assert boards(7, C.READ_BONDS)["k"] == [111.5, 150.25]
    np.testing.assert_allclose(emu.world.stiffness()[list(PAPER.board(7).bonds)], [111.5, 150.25])


def test_a_board_at_its_repl_is_silent_until_restarted(paper: tuple[EmulatedRig, Boards]) -> None:
    emu, boards = paper
    assert boards(4, C.REPL) == {}
    assert emu.inproc[4].state == "repl"
    with pytest.raises(TransportError):
        boards(4, C.HELLO)
    emu.restart_board(4)
    assert boards(4, C.HELLO)["address"] == 4


def test_shared_bus_reaches_every_board_and_broadcasts_get_no_reply() -> None:
    rig = load_rig("lattice:3x4")
    with EmulatedRig(rig, noiseless=True) as emu:
        urls = set(emu.ports.values())
        assert urls == {"emu://lattice-3x4"}
        bus = emu._buses[rig.boards[0].port]  # type: ignore[index]
        reply = bus.feed(protocol.encode_request(7, 255, C.SET_STIFFNESS, {"k": []}))
        assert reply == b""
        frames = protocol.Deframer().feed(bus.feed(protocol.encode_request(8, 2, C.HELLO, {})))
        assert [protocol.decode_reply(p).address for p in frames] == [2]
        statuses = [emu.inproc[a].server.stats["frames"] for a in emu.addresses]  # type: ignore[union-attr]
        assert all(n >= 2 for n in statuses)  # provisioning HELLOs + the broadcast


def test_configure_args_carry_the_nominal_calibration() -> None:
    args = configure_args(PAPER, 13)
    sens = sensors_for(PAPER)
    assert args["bonds"] == list(PAPER.board(13).bonds)
    assert args["channels"] == [0, 1] and args["act_channels"] == [0, 1]
    assert args["gain"] == [sens.strain.gain] * 2
    assert sens.strain.gain == pytest.approx(PAPER.strain_max / (2**23 - 1))  # type: ignore[operator]
    assert args["disp_gain"] == [sens.disp.gain] * 2
    assert args["k"] == [PAPER.k0] * 2
    assert args["act_table"] == [[[PAPER.k_min, 1000.0], [PAPER.k_max, 2000.0]]] * 2
    assert "disp_gain" not in configure_args(PAPER, 0)


def test_noisy_rigs_are_reproducible_from_the_seed() -> None:
    got = []
    for _ in range(2):
        with EmulatedRig(PAPER, seed=9) as emu:
            boards = Boards(emu)
            try:
                boards(IN13, C.SET_LOAD, {"fx": 0.0, "fy": F_FIG1})
                _sample(boards, PAPER, 0, 0, 0, tol=1e-6)
                got.append(_bonds(boards, PAPER, "s_fwd"))
            finally:
                boards.close()
    np.testing.assert_array_equal(got[0], got[1])
    assert not np.array_equal(got[0], np.round(got[0], 12))  # noise and gain errors are there


def test_two_live_rigs_get_distinct_endpoints_and_stop_releases_them() -> None:
    with EmulatedRig(PAPER) as a, EmulatedRig(PAPER) as b:
        assert a.ports[0] == "emu://paper/0"
        assert b.ports[0] == "emu://paper/0~2"
    assert not [n for n in endpoint_names() if n.startswith("paper/")]


def test_bad_options_are_refused() -> None:
    with pytest.raises(ConfigError, match="blank boards need --micropython"):
        EmulatedRig(PAPER, blank=True)
    with pytest.raises(ConfigError, match="no board has address 99"):
        configure_args(PAPER, 99)
    with pytest.raises(ConfigError, match="rig must be"):
        EmulatedRig("")
    with pytest.raises(ConfigError, match="curvature"):
        ActuatorSpec(curvature=2.0)


def test_a_kept_flash_directory_carries_boards_across_emulator_runs(tmp_path: Any) -> None:
    flash = str(tmp_path / "flash")
    with EmulatedRig(PAPER, noiseless=True, flash_dir=flash) as emu:
        boards = Boards(emu)
        try:
            boards(2, C.SET_STIFFNESS, {"k": [105.0, 165.5]})
            boots = boards(2, C.HELLO)["boots"]
        finally:
            boards.close()
    assert os.path.isdir(os.path.join(flash, "board-2"))  # kept after stop
    with EmulatedRig(PAPER, noiseless=True, flash_dir=flash) as emu:
        boards = Boards(emu)
        try:
            assert boards(2, C.HELLO)["boots"] == boots + 1
            assert boards(2, C.READ_BONDS)["k"] == [105.0, 165.5]  # not re-provisioned to k0
            bonds = list(PAPER.board(2).bonds)
            np.testing.assert_allclose(emu.world.stiffness()[bonds], [105.0, 165.5])
        finally:
            boards.close()


def test_stop_leaks_no_descriptors_threads_or_names() -> None:
    import gc
    import threading

    def fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    EmulatedRig(PAPER, pty=True).stop()
    gc.collect()
    before = (fds(), threading.active_count())
    for kw in ({}, {"pty": True}):
        emu = EmulatedRig(PAPER, **kw)  # type: ignore[arg-type]
        assert len(emu.ports) == 14
        emu.stop()
        emu.stop()  # idempotent
    gc.collect()
    assert (fds(), threading.active_count()) == before
    assert not [n for n in endpoint_names() if n.startswith("paper/")]
