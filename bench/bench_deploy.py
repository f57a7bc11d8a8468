"""Speed of deploy, calibration and the hardware-in-the-loop suite on the emulated paper rig.

Prints:
  * time to deploy the firmware to one emulated MicroPython board from blank flash, and to
    deploy it again with no change (probe, hash listing, restart and handshake; nothing copied);
  * time to deploy all 14 boards of the paper rig from blank, with 4 and with 8 boards at a time;
  * time of one calibration of the paper rig (in-process boards and MicroPython boards, the
    settings the suite uses and the defaults);
  * with ``--hil``: wall time of the full HIL suite (``pytest hil``) on the emulated rig.

Every figure is the median of ``--repeat`` runs, wall clock, on whatever else loads the machine.

Usage: python bench/bench_deploy.py [--repeat N] [--hil]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from host_sdk.calibrate import CalibrationConfig, calibrate
from host_sdk.coordinator import RigSession
from host_sdk.deploy import DeployResult, deploy, failures
from host_sdk.emulator.rig import EmulatedRig
from host_sdk.rig import load_rig

ROOT = Path(__file__).resolve().parents[1]
PAPER = load_rig("paper")
HIL_CALIBRATION = CalibrationConfig(readings=8, points=3)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=3, help="runs per figure (median; default 3)")
    p.add_argument("--hil", action="store_true", help="also time the full HIL suite (about 2 minutes)")
    return p.parse_args(argv)


def median(fn: Callable[[], float], repeat: int) -> float:
    return statistics.median(fn() for _ in range(repeat))


def _checked(results: list[DeployResult]) -> None:
    bad = failures(results)
    if bad:
        raise SystemExit("deploy failed: " + "; ".join(bad))


def one_board() -> tuple[float, float]:
    """(seconds from blank, seconds with no change) for board 13 of a blank paper rig."""
    with EmulatedRig(PAPER, micropython=True, blank=True) as emu:
        ports = {13: emu.ports[13]}
        t = time.perf_counter()
        _checked(deploy(PAPER, boards=[13], ports=ports))
        blank = time.perf_counter() - t
        t = time.perf_counter()
        results = deploy(PAPER, boards=[13], ports=ports)
        again = time.perf_counter() - t
        _checked(results)
        assert results[0].copied == []
    return blank, again


def whole_rig(jobs: int) -> float:
    with EmulatedRig(PAPER, micropython=True, blank=True) as emu:
        t = time.perf_counter()
        _checked(deploy(PAPER, ports=emu.ports, jobs=jobs))
        return time.perf_counter() - t


def calibration(micropython: bool, config: CalibrationConfig) -> float:
    with EmulatedRig(PAPER, micropython=micropython) as emu, RigSession(PAPER, emu.ports, timeout=1.0) as s:
        s.handshake()
        t = time.perf_counter()
        calibrate(s, config)
        return time.perf_counter() - t


def hil_suite() -> float:
    t = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "hil"],
                          cwd=ROOT, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - t
    if done.returncode != 0:
        raise SystemExit("the HIL suite failed:\n" + done.stdout[-3000:])
    return elapsed


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    r = max(1, args.repeat)
    print("deploy benchmark (wall clock, median of %d; other load on the machine shows here)" % r)
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs")
    print()
    runs = [one_board() for _ in range(r)]
    print(f"deploy one emulated board from blank         {statistics.median(x[0] for x in runs):6.2f} s")
    print(f"deploy it again, nothing to copy             {statistics.median(x[1] for x in runs):6.2f} s")
    for jobs in (4, 8):
        print(f"deploy 14 blank boards, {jobs} at a time         {median(lambda: whole_rig(jobs), r):6.2f} s")
    print()
    for mp, label in ((False, "in-process"), (True, "MicroPython")):
        print(f"calibrate the paper rig, {label:11s} boards, suite settings (3 levels, 8 readings) "
              f"{median(lambda: calibration(mp, HIL_CALIBRATION), r):6.2f} s")
        print(f"calibrate the paper rig, {label:11s} boards, defaults (6 levels, 16 readings)    "
              f"{median(lambda: calibration(mp, CalibrationConfig()), r):6.2f} s")
    if args.hil:
        print()
        print(f"full HIL suite (pytest hil, emulated paper rig, blank boards)  {hil_suite():6.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
