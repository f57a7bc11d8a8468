"""Figures for docs/reliability.md: every fault tried, its rate, and what training made of it.

    python bench/bench_reliability.py                 # every row (about 10 minutes)
    python bench/bench_reliability.py --rows headline,crash
    python bench/bench_reliability.py --list

Training rows run Iris in situ for one epoch (7 batches of 16) on the emulated paper rig with
in-process boards, noiseless sensors and settling off (``tau_ms = 0``, so a measurement depends
only on the network's state), and compare the final float32 stiffness with the fault-free run
bit for bit. ``updates`` is the number of UPDATEs each board applied and kept (the emulator's
ledger across power cuts): it must equal the number of batches on every board.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from host_sdk.coordinator import RecoveryConfig, RigBackend, RigSession  # noqa: E402
from host_sdk.emulator.models import DynamicsSpec  # noqa: E402
from host_sdk.emulator.rig import EmulatedRig  # noqa: E402
from host_sdk.faults import FaultInjector  # noqa: E402
from host_sdk.health import HealthMonitor  # noqa: E402
from host_sdk.journal import RigRunOptions, run_on_rig  # noqa: E402
from host_sdk.rig import load_rig, rig_to_toml  # noqa: E402
from host_sdk.tasks import get_task  # noqa: E402
from host_sdk.training import Trainer, sim_backend  # noqa: E402

IRIS = RigRunOptions(task="iris", epochs=1, noiseless=True, tau_ms=0.0)
HEADLINE = "drop=0.01,corrupt=0.01,reboot_every=200"
_REFERENCE: dict[str, Any] = {}


def reference(options: RigRunOptions = IRIS) -> Any:
    key = json.dumps(options.to_dict(), sort_keys=True)
    if key not in _REFERENCE:
        t0 = time.perf_counter()
        result = run_on_rig(options)
        _REFERENCE[key] = (result, time.perf_counter() - t0)
    return _REFERENCE[key]


def training_row(profile: str, options: RigRunOptions = IRIS) -> dict[str, Any]:
    ref, ref_s = reference(replace(options, faults=""))
    t0 = time.perf_counter()
    result = run_on_rig(replace(options, faults=profile))
    seconds = time.perf_counter() - t0
    k, k_ref = np.float32(result.history.k), np.float32(ref.history.k)
    link, rec = result.recovery["link"], result.recovery["recovery"]
    faults = result.faults.as_dict() if result.faults is not None else {}
    batches = result.history.stages[0].steps
    return {
        "bit_exact": bool(np.array_equal(k, k_ref)),
        "max_rel_diff": float(np.max(np.abs(k.astype(float) - k_ref.astype(float)) / k_ref)),
        "updates_ok": all(n == batches for n in result.updates.values()),
        "batches": batches,
        "dropped": faults.get("dropped", 0),
        "corrupted": faults.get("corrupted", 0),
        "duplicated": faults.get("duplicated", 0),
        "delayed": faults.get("delayed", 0),
        "power_cuts": faults.get("total_reboots", 0),
        "cuts": faults.get("cuts", {}),
        "retries": link["retries"],
        "bad_frames": link["crc_errors"] + link["bad_frames"],
        "boards_behind": rec["lagging"],
        "samples_replayed": rec["samples_replayed"],
        "reverts": rec["reverts"],
        "late_confirms": rec["late_confirms"],
        "inexact_replays": rec["inexact_replays"],
        "seconds": round(seconds, 1),
        "fault_free_seconds": round(ref_s, 1),
        "bytes_vs_fault_free": round(link["bytes_total"] / max(1, ref.recovery["link"]["bytes_total"]), 2),
    }


def row_clean() -> dict[str, Any]:
    return training_row("seed=0")


def row_drop() -> dict[str, Any]:
    return training_row("drop=0.01,seed=1")


def row_corrupt() -> dict[str, Any]:
    return training_row("corrupt=0.01,seed=1")


def row_dup() -> dict[str, Any]:
    return training_row("dup=0.005,seed=1")


def row_delay() -> dict[str, Any]:
    return training_row("delay=0.05,seed=1")


def row_cuts() -> dict[str, Any]:
    return training_row("reboot_every=100,seed=1")


def row_flash() -> dict[str, Any]:
    return training_row("reboot_every=50,cut=flash,seed=1")


def row_headline() -> dict[str, Any]:
    return training_row(HEADLINE + ",seed=1")


def row_everything() -> dict[str, Any]:
    return training_row(HEADLINE + ",dup=0.005,delay=0.01,seed=7")


def row_bus() -> dict[str, Any]:
    return training_row("drop=0.002,corrupt=0.002,reboot_every=150,seed=1", replace(IRIS, rig="lattice:4x4"))


def row_settling() -> dict[str, Any]:
    """The headline profile with the emulator's default settling (tau 4 ms): a measurement then
    depends on when the board last looked, so a replayed sample differs in its last digits."""
    return training_row(HEADLINE + ",seed=1", replace(IRIS, tau_ms=None))


def row_no_readback() -> dict[str, Any]:
    """Without the read-back before each commit, a board that loses its batch in the commit
    window is replayed in a network whose other bonds have moved: not exact."""
    task = get_task("iris")
    rig = load_rig("paper")
    out: dict[str, Any] = {}
    for readback in (True, False):
        with EmulatedRig(rig, noiseless=True, dynamics=DynamicsSpec(tau_ms=0)) as emu:
            inj = FaultInjector.for_emulator("reboot_every=150,cut=update,seed=3", emu)
            with RigSession(rig, emu.ports, retries=100, transport_factory=inj.open, first_seq=1 << 24) as s:
                s.handshake()
                s.configure()
                s.tare()
                backend = RigBackend(s, task.io, optimiser=task.optimiser, recovery=RecoveryConfig(readback=readback))
                Trainer(task, backend, seed=0, epochs=1).run()
                out[readback] = (backend.stiffness().astype(np.float32), backend.stats)
    ref = np.float32(reference()[0].history.k)
    return {
        "readback_bit_exact": bool(np.array_equal(out[True][0], ref)),
        "readback_reverts": out[True][1].reverts,
        "no_readback_bit_exact": bool(np.array_equal(out[False][0], ref)),
        "no_readback_inexact_replays": out[False][1].inexact_replays,
        "no_readback_max_rel_diff": float(np.max(np.abs(out[False][0] - ref) / ref)),
    }


def _kill_and_resume(workdir: Path, kill_at: int, delay: float, epochs: int) -> bool:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    emu = subprocess.Popen([sys.executable, "-m", "host_sdk.emulator.cli", "--rig", "paper", "--noiseless",
                            "--tau-ms", "0"], stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    try:
        assert emu.stdout is not None
        paths = {int(a): p for a, p in json.loads(emu.stdout.readline())["boards"].items()}
        rig = load_rig("paper")
        boards = tuple(replace(b, port="serial://" + paths[b.address]) for b in rig.boards)
        rig_file = workdir / "ptys.toml"
        rig_file.write_text(rig_to_toml(replace(rig, boards=boards)), encoding="utf-8")
        run = workdir / "run"
        host = subprocess.Popen([sys.executable, "-m", "host_sdk.cli", "train", "--task", "behaviour-ce",
                                 "--backend", "rig", "--rig", str(rig_file), "--epochs", str(epochs),
                                 "--journal", str(run), "--json"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=ROOT)
        journal = run / "journal.jsonl"
        while host.poll() is None:
            text = journal.read_text(encoding="utf-8") if journal.exists() else ""
            if text.count('"event":"commit"') >= kill_at:
                break
            time.sleep(0.002)
        time.sleep(delay)
        host.send_signal(signal.SIGKILL)
        host.wait()
        out = subprocess.run([sys.executable, "-m", "host_sdk.cli", "train", "--resume", str(run), "--json"],
                             capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
        if out.returncode != 0:
            return False
        k = np.float32(json.loads(out.stdout)["k"])
    finally:
        emu.send_signal(signal.SIGTERM)
        emu.communicate(timeout=60)
    ref = np.float32(reference(RigRunOptions(task="behaviour-ce", epochs=epochs, noiseless=True, tau_ms=0.0))[0].history.k)
    return bool(np.array_equal(k, ref))


def row_crash(trials: int = 8) -> dict[str, Any]:
    """SIGKILL a host process (``mnn train --journal``) at a random point against ``mnn emulate``
    boards, resume with ``mnn train --resume``; count identical results."""
    rng = np.random.default_rng(2024)
    identical = 0
    for _ in range(trials):
        work = Path(tempfile.mkdtemp(prefix="mnn-crash-"))
        try:
            identical += _kill_and_resume(work, int(rng.integers(1, 12)), float(rng.uniform(0, 0.05)), 12)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return {"trials": trials, "identical": identical}


def row_damage() -> dict[str, Any]:
    """A bond of a trained classifier breaks mid-run: found, excluded, retrained."""
    task = get_task("iris")
    sim = sim_backend(task)
    Trainer(task, sim, seed=0, epochs=20).run()
    rig = load_rig("paper")
    monitor = HealthMonitor(rig, task.io)
    out: dict[str, Any] = {}
    with EmulatedRig(rig, noiseless=False, seed=1) as emu, RigSession(rig, emu.ports) as s:
        s.handshake()
        s.configure()
        s.tare()
        backend = RigBackend(s, task.io, optimiser=task.optimiser, health=monitor)
        backend.set_stiffness(sim.stiffness())
        split = task.split(0)
        forces = task.input_forces(split.x_test)
        out["test_accuracy_trained"] = task.score(backend.evaluate(forces), split.y_test)
        emu.world.break_bond(7)
        out["test_accuracy_damaged"] = task.score(backend.evaluate(forces), split.y_test)
        history = Trainer(task, backend, seed=0, epochs=3).run()
        bad = [(step, str(r.findings[0])) for step, r in backend.health_log if not r.ok]
        out["found_at_step"] = bad[0][0] if bad else None
        out["finding"] = bad[0][1] if bad else None
        out["excluded"] = [e.bond for e in backend.exclusions]
        out["rigid"] = [e.rigid for e in backend.exclusions]
        out["test_accuracy_per_epoch"] = [round(x, 3) for x in history.stages[0].test]
        out["test_accuracy_retrained"] = history.final()["test_accuracy"]
    return out


def row_sensors() -> dict[str, Any]:
    """Each sensor and actuator fault of the emulator, and what the health check calls it."""
    task = get_task("iris")
    rig = load_rig("paper")
    split = task.split(0)
    cases: dict[str, Callable[[EmulatedRig, RigBackend], None]] = {
        "break bond 20": lambda emu, be: emu.world.break_bond(20),
        "stick sensor of bond 3": lambda emu, be: emu.world.stick_sensor(3),
        "saturate sensor of bond 5": lambda emu, be: emu.world.strain_channel(5).saturate(1),
        "stall actuator of bond 14, command k_max": lambda emu, be: (emu.world.stall_actuator(14),
                                                                      be.set_stiffness(np.full(28, rig.k_max))),
        "limit actuator of bond 18 to 20 %, command k_max": lambda emu, be: (
            emu.world.limit_actuator(18, 0.0, 0.2), be.set_stiffness(np.full(28, rig.k_max))),
    }
    out: dict[str, Any] = {}
    for name, fault in cases.items():
        for noiseless in (True, False):
            with EmulatedRig(rig, noiseless=noiseless, seed=2) as emu, RigSession(rig, emu.ports) as s:
                s.handshake()
                s.configure()
                s.tare()
                backend = RigBackend(s, task.io, optimiser=task.optimiser)
                monitor = HealthMonitor(rig, task.io)
                fault(emu, backend)
                rows = np.arange(16)
                targets = split.y_train[rows]
                backend.train_batch(1, task.input_forces(split.x_train[rows]),
                                    lambda y, idx: -task.loss.grad(y, targets[np.asarray(idx)]))
                backend.update(1)
                report = monitor.check_backend(backend)
                out[f"{name} ({'noiseless' if noiseless else 'default noise'})"] = report.summary()
    return out


def row_fuzz(frames_per_board: int = 720) -> dict[str, Any]:
    """Hostile frames at every MicroPython board of the paper rig (tests/test_hostile.py)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from test_hostile import fuzz_boards  # the test suite's own generator and state check

    t0 = time.perf_counter()
    totals = fuzz_boards(frames_per_board, seed=5)
    return {"frames": frames_per_board * 14, "state_changes": 0, "crashes": 0,
            "board_counters": totals, "seconds": round(time.perf_counter() - t0, 1)}


ROWS: dict[str, Callable[[], dict[str, Any]]] = {
    "clean": row_clean,
    "drop": row_drop,
    "corrupt": row_corrupt,
    "dup": row_dup,
    "delay": row_delay,
    "cuts": row_cuts,
    "flash": row_flash,
    "headline": row_headline,
    "everything": row_everything,
    "bus": row_bus,
    "settling": row_settling,
    "no-readback": row_no_readback,
    "crash": row_crash,
    "damage": row_damage,
    "sensors": row_sensors,
    "fuzz": row_fuzz,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default=",".join(ROWS), help="comma-separated rows (default: all)")
    parser.add_argument("--list", action="store_true", help="list the rows and exit")
    args = parser.parse_args()
    if args.list:
        for name, fn in ROWS.items():
            print(f"{name:12s} {(fn.__doc__ or '').strip().splitlines()[0] if fn.__doc__ else ''}")
        return
    for name in args.rows.split(","):
        if name not in ROWS:
            raise SystemExit(f"unknown row {name!r}; --list shows them")
        figures = ROWS[name]()
        print(json.dumps({"row": name, **figures}, default=str))
        sys.stdout.flush()


if __name__ == "__main__":
    main()
