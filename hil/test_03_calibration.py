"""Tare and calibration: gains from known loads, actuator curves, stored on the boards."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hil_support import CALIBRATION, Hil
from host_sdk import protocol
from host_sdk.calibrate import calibrate, write_report

Cmd = protocol.Command


def test_tare_and_calibration(hil: Hil, tmp_path: Path) -> None:
    if not any(b.force for b in hil.rig.boards):
        pytest.skip(f"calibration needs known loads: rig {hil.rig.name} has no force actuator")
    with hil.session() as session:
        report = calibrate(session, CALIBRATION)
        hil.calibration = report
        # tared: with no load every displacement sensor reads zero (within its noise)
        for spec in hil.rig.boards:
            if spec.disp:
                out = session.request(spec.address, Cmd.READ_OUTPUT, {"n": 16})
                assert abs(out["ux"]) < 2e-7 and abs(out["uy"]) < 2e-7
    assert sorted(report.zero) == sorted(b.address for b in hil.rig.boards)
    measured = [f for f in report.strain if f.measured]  # not bonds between two pinned nodes
    assert min(f.significance for f in measured + report.disp) > 100
    assert max(f.residual for f in measured) < 1e-7  # m
    paths = write_report(report, tmp_path)
    assert [p.name for p in paths][:2] == ["calibration.json", "strain_gains.png"]
    if hil.emu is None:
        return
    world, actuators = hil.emu.world, hil.emu.actuators
    # the emulator's true gains within 1 %, its actuator curves within one command step
    gains = [f.gain / world.strain_channel(f.index).true_gain - 1 for f in measured]
    assert np.max(np.abs(gains)) < 0.01
    disp = [f.gain / world.disp_channels(f.index)[f.axis].true_gain - 1 for f in report.disp]
    assert np.max(np.abs(disp)) < 0.01
    resolution = actuators.cmd_resolution * (hil.rig.k_max - hil.rig.k_min) / (actuators.cmd_max - actuators.cmd_min)
    worst = max(abs(k - actuators.stiffness_of(c))
                for cv in report.actuators if cv.measured for k, c in zip(cv.stiffness, cv.commands))
    assert worst < resolution
