"""The hardware-in-the-loop suite: ``pytest hil [--rig FILE]``.

Without ``--rig`` (or with an emulated rig such as ``--rig paper``) the suite starts the rig's
boards as MicroPython processes with blank flash and deploys the firmware into them first, so
every run exercises the whole chain: deploy, handshake, calibration, training. With a rig file
that names real ports (or USB serial numbers) the same scenarios run against the hardware;
scenarios that need hardware the rig lacks skip with the reason.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

import pytest

from hil_support import CALIBRATION, Hil
from host_sdk.calibrate import calibrate
from host_sdk.deploy import deploy, failures
from host_sdk.emulator.rig import EmulatedRig
from host_sdk.rig import load_rig, resolve_ports


def pytest_addoption(parser: Any) -> None:
    group = parser.getgroup("hil", "hardware-in-the-loop suite (hil/)")
    group.addoption(
        "--rig", default=None, metavar="FILE",
        help="rig to test: a rig file naming real ports, or an emulated rig (default: the bundled "
             "paper rig, emulated with blank MicroPython boards)",
    )


def _deploy(hil: Hil) -> Hil:
    start = time.monotonic()
    hil.deployed = deploy(hil.rig, ports=hil.ports, jobs=8)
    hil.deploy_seconds = time.monotonic() - start
    bad = failures(hil.deployed)
    if bad:
        pytest.fail("deploy failed: " + "; ".join(bad), pytrace=False)
    return hil


@pytest.fixture(scope="session")
def hil(request: Any) -> Iterator[Hil]:
    """The rig under test, with the firmware freshly deployed to every board."""
    spec = request.config.getoption("--rig") or "paper"
    rig = load_rig(spec)
    if rig.emulated:
        with EmulatedRig(rig, micropython=True, blank=True, seed=0) as emu:
            before = {a: sorted(os.listdir(d)) for a, d in emu.flash_dirs.items()}
            yield _deploy(Hil(rig, dict(emu.ports), emu, before))
    else:
        rig = resolve_ports(rig)
        yield _deploy(Hil(rig, {b.address: str(b.port) for b in rig.boards}))


@pytest.fixture
def calibrated(hil: Hil) -> Hil:
    """The rig under test, calibrated (by the calibration scenario, or here if it has not run):
    scenarios that train need boards that know their gains."""
    if hil.calibration is None and any(b.force for b in hil.rig.boards):
        with hil.session() as session:
            hil.calibration = calibrate(session, CALIBRATION)
    return hil
