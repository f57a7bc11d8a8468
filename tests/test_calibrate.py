"""Calibration on the emulated paper rig: true gains and actuator curves recovered, bad cases refused."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from host_sdk import calibrate as Cal
from host_sdk import protocol
from host_sdk.coordinator import RigSession
from host_sdk.emulator.models import ActuatorSpec
from host_sdk.emulator.rig import EmulatedRig
from host_sdk.errors import ConfigError
from host_sdk.rig import load_rig, rig_to_toml

Cmd = protocol.Command
PAPER = load_rig("paper")
CURVED = ActuatorSpec(curvature=0.3)  # a servo-and-leaf-spring curve that bows away from linear
DK_PER_US = (PAPER.k_max - PAPER.k_min) / 1000.0  # N/m per µs on the nominal map


def _flash(emu: EmulatedRig) -> dict[int, bytes]:
    return {a: Path(d, "state.mp").read_bytes() for a, d in emu.flash_dirs.items()}


def _actual_vs_believed(emu: EmulatedRig, session: RigSession) -> float:
    """Largest |stiffness a bond really has - what its board believes|, N/m."""
    return float(np.max(np.abs(emu.world.stiffness() - session.read_stiffness())))


def _fig1_elongation_error(emu: EmulatedRig, session: RigSession, step: int) -> float:
    """Largest relative error of the boards' elongations under 10 g at node 13 vs the world's,
    over the bonds stretched by at least a tenth of the most stretched one."""
    session.request(12, Cmd.SET_LOAD, {"fx": 0.0, "fy": -0.098})
    session.broadcast(Cmd.SAMPLE, {"phase": 0, "step": step, "sample": 0, "n": 16, "tol": 1e-7})
    s = np.full(PAPER.n_bonds, np.nan)
    for spec in PAPER.boards:
        r = session.request(spec.address, Cmd.READ_BONDS)
        s[list(spec.bonds)] = r["s_fwd"]
    truth = emu.world.elongations()
    session.request(12, Cmd.SET_LOAD, {"fx": 0.0, "fy": 0.0})
    big = np.abs(truth) > 0.1 * np.max(np.abs(truth))
    return float(np.max(np.abs(s[big] / truth[big] - 1)))


def test_calibration_recovers_the_true_gains_and_curves(tmp_path: Path) -> None:
    with EmulatedRig(PAPER, seed=3, actuators=CURVED) as emu, RigSession(PAPER, emu.ports) as session:
        session.handshake()
        session.tare()
        assert _actual_vs_believed(emu, session) > 4.0  # the nominal map is 5 N/m off mid-range
        assert _fig1_elongation_error(emu, session, 0) > 0.01  # nominal gains: off by the 1 % spread
        lines: list[str] = []
        report = Cal.calibrate(session, Cal.CalibrationConfig(points=4), progress=lines.append)
        assert lines[0] == "command level 1/4: 16 load cases" and lines[-1] == "storing gains and tables, then taring"
        world = emu.world
        # every strain channel's gain within 1 % of the truth (in fact within 1e-4)
        strain_err = [abs(f.gain / world.strain_channel(f.index).true_gain - 1) for f in report.strain]
        assert [f.index for f in report.strain] == list(range(PAPER.n_bonds))
        assert max(strain_err) < 1e-2 and max(strain_err) < 2e-4
        disp_err = [abs(f.gain / world.disp_channels(f.index)[f.axis].true_gain - 1) for f in report.disp]
        assert len(disp_err) == 2 * sum(b.disp for b in PAPER.boards) and max(disp_err) < 2e-4
        # every actuator's stiffness at every swept command within the actuator's resolution
        assert [c.commands for c in report.actuators] == [[1000.0, 1000.0 + 1000 / 3, 1000.0 + 2000 / 3, 2000.0]] * 28
        worst = max(abs(k - emu.actuators.stiffness_of(cmd))
                    for c in report.actuators for k, cmd in zip(c.stiffness, c.commands))
        assert worst < emu.actuators.cmd_resolution * DK_PER_US
        assert max(max(c.stderr) for c in report.actuators) < 0.5 * DK_PER_US
        # stored on the boards: the tables put each bond near the stiffness its board believes
        # (between 4 table points the bow of the true curve leaves up to (1/3)^2 / 8 * 2 * 0.3
        # * 68.75 = 0.57 N/m)...
        assert _actual_vs_believed(emu, session) < 0.6
        # ...and gains and zeros make the boards' elongations match the world's
        assert _fig1_elongation_error(emu, session, 1) < 1e-3
        assert sorted(report.zero) == list(range(14)) and all(len(report.zero[b.address]) == 2 for b in PAPER.boards)
    # the calibration goes into a rig file that configures calibrated boards
    rig = Cal.calibrated_rig(PAPER, report)
    text = tmp_path / "calibrated.toml"
    text.write_text(rig_to_toml(rig))
    again = load_rig(str(text))
    assert again.board(13).calibration["act_table"][1] == report.actuators[26].table
    assert again.board(13).calibration["disp_gain"] == [f.gain for f in report.disp if f.address == 13]


def test_calibration_on_noiseless_boards_is_exact() -> None:
    with EmulatedRig(PAPER, noiseless=True) as emu, RigSession(PAPER, emu.ports) as session:
        report = Cal.calibrate(session, Cal.CalibrationConfig(points=3))
        nominal = emu.sensors.strain.gain
        assert max(abs(f.gain / nominal - 1) for f in report.strain) < 1e-6
        assert max(abs(k - emu.actuators.stiffness_of(c))
                   for cv in report.actuators for k, c in zip(cv.stiffness, cv.commands)) < 1e-3


def test_unconfigured_boards_are_configured_first() -> None:
    with EmulatedRig(PAPER, noiseless=True, configure=False) as emu, RigSession(PAPER, emu.ports) as session:
        assert not session.hello(4)["configured"]
        lines: list[str] = []
        Cal.calibrate(session, Cal.CalibrationConfig(points=2, readings=1), progress=lines.append)
        assert lines[:14] == [f"board {a}: configuring for the rig" for a in range(14)]
        hello = session.hello(4)
        assert hello["configured"] and hello["bonds"] == list(PAPER.board(4).bonds)


@pytest.mark.parametrize(("noiseless", "message"), [
    (True, "no load applied: none of the 28 strain channels changed under the known loads "
           "(are the force actuators connected and powered?)"),
    (False, r"no load applied: bond 0 \(board 0, strain channel 0\) did not change under the known loads"),
])
def test_no_load_applied_is_refused_and_leaves_the_boards(monkeypatch: Any, noiseless: bool, message: str) -> None:
    with EmulatedRig(PAPER, noiseless=noiseless, seed=1) as emu, RigSession(PAPER, emu.ports) as session:
        monkeypatch.setattr(emu.world, "set_force", lambda node, fx, fy: (0.0, 0.0))  # actuators unplugged
        flash = _flash(emu)
        k_world = emu.world.stiffness()
        bonds = {s.address: session.request(s.address, Cmd.READ_BONDS) for s in PAPER.boards}
        with pytest.raises(Cal.CalibrationError, match=message if not noiseless else None) as info:
            Cal.calibrate(session, Cal.CalibrationConfig(points=2, readings=2))
        if noiseless:
            assert str(info.value) == message
        assert _flash(emu) == flash
        np.testing.assert_array_equal(emu.world.stiffness(), k_world)  # actuators driven back
        assert {s.address: session.request(s.address, Cmd.READ_BONDS) for s in PAPER.boards} == bonds


@pytest.mark.parametrize("fault", ["stall", "limit"])
def test_a_stalled_or_limited_actuator_is_refused(fault: str) -> None:
    with EmulatedRig(PAPER, noiseless=True) as emu, RigSession(PAPER, emu.ports) as session:
        if fault == "stall":
            emu.world.stall_actuator(9)
        else:
            emu.world.limit_actuator(9, 0.0, 0.4)  # stuck from 1400 µs up
        flash = _flash(emu)
        with pytest.raises(Cal.CalibrationError, match=r"^the actuator of bond 9 \(board 13\) does not change "
                                                         r"the stiffness monotonically with its command"):
            Cal.calibrate(session, Cal.CalibrationConfig(points=3, readings=1))
        assert _flash(emu) == flash


def test_command_ranges_follow_the_rig_tables(tmp_path: Path) -> None:
    text = rig_to_toml(PAPER).replace(
        "stiffness_channels = [0, 1]\nforce = true\ndisp = true\n",
        "stiffness_channels = [0, 1]\nforce = true\ndisp = true\ncalibration = { act_table = "
        "[[[100.0, 1100.0], [180.0, 1900.0]], [[100.0, 1100.0], [140.0, 1500.0], [180.0, 1900.0]]] }\n", 1)
    path = tmp_path / "tables.toml"
    path.write_text(text)
    rig = load_rig(str(path))
    cmd, ref = Cal._command_ranges(rig, Cal.CalibrationConfig())
    first = rig.boards[1].bonds  # board 1 is the first with force and disp
    assert cmd[first[0]] == (1100.0, 1900.0) and ref[first[0]] == (100.0, 180.0)
    assert cmd[0] == (1000.0, 2000.0) and ref[0] == (PAPER.k_min, PAPER.k_max)
    cmd, _ = Cal._command_ranges(PAPER, Cal.CalibrationConfig(cmd_range=(1200.0, 1800.0)))
    assert set(cmd.values()) == {(1200.0, 1800.0)}
    with pytest.raises(ConfigError, match="its command range comes from it"):
        Cal._command_ranges(rig, Cal.CalibrationConfig(cmd_range=(1200.0, 1800.0)))


def test_settle_tolerance_in_counts() -> None:
    assert Cal.settle_counts(PAPER, Cal.CalibrationConfig(tol=2e-7)) == pytest.approx(2e-7 / (0.002 / (2**23 - 1)))
    assert Cal.settle_counts(PAPER, Cal.CalibrationConfig(tol_counts=55.0)) == 55.0
    from dataclasses import replace

    with pytest.raises(ConfigError, match="states no strain_max"):
        Cal.settle_counts(replace(PAPER, strain_max=None), Cal.CalibrationConfig())


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"readings": 0}, "readings must be an integer 1..64"),
    ({"points": 9}, "points must be an integer 2..8"),
    ({"load_fraction": 1.5}, "load_fraction"),
    ({"cmd_range": (2000.0, 1000.0)}, "cmd_range"),
    ({"tol": float("nan")}, "tol must be"),
    ({"tol_counts": -1.0}, "tol_counts"),
    ({"timeout_ms": 0}, "timeout_ms"),
])
def test_bad_settings(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        Cal.CalibrationConfig(**kwargs)


def test_frames_fit_with_many_bonds() -> None:
    # 16 bonds with 8-point tables do not fit one CONFIGURE: interior points are dropped
    spec = PAPER.board(0)
    table = [[100.0 + i, 1000.0 + 100 * i] for i in range(8)]
    args = {"gain": [2.5e-10] * 16, "act_table": [table] * 16}
    fitted = Cal._fit_tables_in_frames(PAPER, spec, args)
    assert len(protocol.encode_request(0, 0, Cmd.CONFIGURE, fitted)) <= protocol.MAX_FRAME + 8
    points = len(fitted["act_table"][0])
    assert 2 <= points < 8 and fitted["act_table"][0][0] == table[0] and fitted["act_table"][0][-1] == table[-1]


def test_mnn_calibrate_on_the_emulated_rig(tmp_path: Path, capsys: Any) -> None:
    import argparse

    from host_sdk.cli_rig import add_parser

    parser = argparse.ArgumentParser(prog="mnn")
    add_parser(parser.add_subparsers())
    out_dir, rig_file = tmp_path / "cal", tmp_path / "calibrated.toml"
    args = parser.parse_args(["calibrate", "--rig", "paper", "--points", "2", "--readings", "4",
                              "--out", str(out_dir), "--write-rig", str(rig_file)])
    assert args.func(args) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert lines[0].startswith("calibrated 28 strain channels, 10 displacement axes and 28 actuators of paper")
    assert lines[1:] == [str(out_dir / n) for n in ("calibration.json", "strain_gains.png", "disp_gains.png",
                                                    "actuators.png")] + [str(rig_file)]
    assert "command level 2/2: 16 load cases" in err.splitlines()
    rig = load_rig(str(rig_file))
    assert all(len(b.calibration["act_table"]) == len(b.bonds) for b in rig.boards)
    assert all((out_dir / n).stat().st_size > 1000 for n in ("strain_gains.png", "disp_gains.png", "actuators.png"))
    doc = json.loads((out_dir / "calibration.json").read_text())
    assert len(doc["strain"]) == 28 and len(doc["actuators"]) == 28 and len(doc["load_cases"]) == 16
    assert rig.board(13).calibration["gain"] == [f["gain"] for f in doc["strain"] if f["index"] in (9, 26)]
    with pytest.raises(ConfigError, match="points must be an integer 2..8"):
        parser_args = parser.parse_args(["calibrate", "--rig", "paper", "--points", "9"])
        parser_args.func(parser_args)


def test_bonds_between_pinned_nodes_are_left_unmeasured() -> None:
    rig = load_rig("lattice:3x4")  # its top row is pinned: bonds 0-1, 1-2, 2-3 never stretch
    fixed = set(int(n) for n in rig.network.fixed)
    pinned = [b for b, (i, j) in enumerate(rig.network.bonds) if i in fixed and j in fixed]
    assert len(pinned) == 3
    with EmulatedRig(rig, seed=2) as emu, RigSession(rig, emu.ports) as session:
        report = Cal.calibrate(session, Cal.CalibrationConfig(points=2, readings=4))
        world = emu.world
        measured = [f for f in report.strain if f.measured]
        assert [f.index for f in report.strain if not f.measured] == pinned
        assert max(abs(f.gain / world.strain_channel(f.index).true_gain - 1) for f in measured) < 1e-3
        median = float(np.median([f.gain for f in measured]))
        assert all(report.strain[b].gain == median for b in pinned)
        for b in pinned:
            assert not report.actuators[b].measured
            assert report.actuators[b].table == [[rig.k_min, 1000.0], [rig.k_max, 2000.0]]
        assert max(abs(k - emu.actuators.stiffness_of(c)) for cv in report.actuators if cv.measured
                   for k, c in zip(cv.stiffness, cv.commands)) < DK_PER_US
