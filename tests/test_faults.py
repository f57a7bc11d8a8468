"""Fault injection, and training that loses nothing under it.

The headline case: Iris in situ on the emulated paper rig (noiseless sensors, settling off so a
measurement depends on the network's state only, not on when a board last looked) under 1 %
dropped bytes, 1 % corrupted bytes and a power cut every 200 requests per board (as frames
arrive, after a board acted on a frame, as an UPDATE arrives and in the middle of a flash
write) ends with the float32 stiffness of the fault-free run, and every board applied every
UPDATE exactly once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from host_sdk import protocol as P
from host_sdk.coordinator import RigBackend, RigSession
from host_sdk.emulator.models import DynamicsSpec
from host_sdk.emulator.rig import EmulatedRig
from host_sdk.errors import ConfigError
from host_sdk.faults import CUTS, FaultInjector, FaultProfile, open_faulty
from host_sdk.rig import load_rig
from host_sdk.tasks import get_task

PAPER = load_rig("paper")
IRIS = get_task("iris")
HEADLINE = "drop=0.01,corrupt=0.01,reboot_every=200"


# -- profiles ------------------------------------------------------------------------------------


def test_profile_round_trip() -> None:
    text = "drop=0.01,corrupt=0.02,dup=0.005,delay=0.1,reboot_every=200,cut=frame+flash,break=9@s3,limit=4:0.2:0.8@f500,seed=7"
    p = FaultProfile.parse(text)
    assert (p.drop, p.corrupt, p.dup, p.delay, p.reboot_every, p.seed) == (0.01, 0.02, 0.005, 0.1, 200, 7)
    assert p.cut == ("frame", "flash")
    assert [(w.kind, w.bond, w.args, w.at_step, w.at_frame) for w in p.world] == [
        ("break", 9, (), 3, None), ("limit", 4, (0.2, 0.8), None, 500)]
    assert FaultProfile.parse(str(p)) == p
    assert FaultProfile.parse("").quiet and not FaultProfile.parse("drop=0.1").quiet
    assert FaultProfile.parse(HEADLINE).cut == CUTS


@pytest.mark.parametrize(
    "text, words",
    [
        ("drop=2", "drop must be a probability in [0, 1]"),
        ("drop=x", "drop must be a probability"),
        ("drop=nan", "drop must be a probability"),
        ("drop=0.1,drop=0.2", "drop given twice"),
        ("loss=0.1", "unknown key 'loss'"),
        ("drop", "is not key=value"),
        ("reboot_every=-1", "reboot_every must be >= 0"),
        ("cut=frame+lightning", "cut must be"),
        ("break=9", "say when"),
        ("break=9@x3", "say when"),
        ("limit=4:0.9:0.1@s1", "need 0 <= LO < HI <= 1"),
        ("noise=3@s1", "expected noise=BOND:X@sSTEP"),
        ("drop=0.6,corrupt=0.6", "must not exceed 1"),
        ("x" * 3000, "characters long"),
    ],
)
def test_profile_errors_are_one_line(text: str, words: str) -> None:
    with pytest.raises(ConfigError, match=".*") as info:
        FaultProfile.parse(text)
    message = str(info.value)
    assert words in message and "\n" not in message


def test_injector_needs_what_it_drives() -> None:
    with pytest.raises(ConfigError, match="reboot_every needs boards"):
        FaultInjector("reboot_every=10")
    with pytest.raises(ConfigError, match="need an emulated world"):
        FaultInjector("break=1@s1")


# -- link faults on a byte pipe ---------------------------------------------------------------------


class Pipe:
    """A transport whose far end echoes each frame back (a board that always answers)."""

    url = "pipe://"

    def __init__(self) -> None:
        self.sent = bytearray()
        self.pending = bytearray()

    def write(self, data: bytes) -> None:
        self.sent += data
        self.pending += data

    def read(self, timeout: float) -> bytes:
        out = bytes(self.pending)
        self.pending.clear()
        return out

    def close(self) -> None:
        pass


def _frames(n: int, size: int = 40) -> list[bytes]:
    rng = np.random.default_rng(5)
    return [bytes(rng.integers(1, 256, size).astype(np.uint8)) + b"\x00" for _ in range(n)]


def test_byte_faults_follow_their_rates_and_the_seed() -> None:
    frames = _frames(2000)
    total = sum(len(f) for f in frames)

    def run(seed: int) -> tuple[bytes, Any]:
        inj = FaultInjector(f"drop=0.05,corrupt=0.03,dup=0.02,seed={seed}")
        pipe = Pipe()
        t = inj.wrap(pipe)
        for f in frames:
            t.write(f)
        return bytes(pipe.sent), inj.report

    sent, rep = run(1)
    again, rep2 = run(1)
    other, _ = run(2)
    assert sent == again and rep == rep2 and sent != other
    assert rep.bytes == total and rep.frames == len(frames)
    # counts within 5 standard deviations of the binomial means
    for count, p in ((rep.dropped, 0.05), (rep.corrupted, 0.03), (rep.duplicated, 0.02)):
        assert abs(count - p * total) < 5 * np.sqrt(total * p * (1 - p))
    assert len(sent) == total - rep.dropped + rep.duplicated


def test_quiet_profile_passes_bytes_unchanged() -> None:
    pipe = Pipe()
    t = FaultInjector("seed=3").wrap(pipe)
    for f in _frames(50):
        t.write(f)
        assert t.read(0.1) == f
    assert pipe.sent == b"".join(_frames(50))


def test_a_delayed_frame_arrives_one_read_late() -> None:
    pipe = Pipe()
    t = FaultInjector("delay=1").wrap(pipe)
    f1, f2 = _frames(2)
    t.write(f1)  # held: nothing reaches the port
    assert pipe.sent == b""
    t.write(f2)  # the held frame goes first, this one right after it
    assert bytes(pipe.sent) == f1 + f2
    assert t.read(0.1) == b""  # every reply is held too ...
    assert t.read(0.1) == f1 + f2  # ... and comes with the next read


class Switches:
    """A BoardControl that records what it is asked to do."""

    synchronous = True

    def __init__(self) -> None:
        self.log: list[tuple[str, int]] = []

    def power_cut(self, address: int) -> None:
        self.log.append(("off", address))

    def power_on(self, address: int) -> None:
        self.log.append(("on", address))

    def flash_dir(self, address: int) -> str | None:
        return None

    def note_rollback(self, address: int) -> None:
        self.log.append(("rollback", address))


def test_power_cuts_come_every_n_requests_and_retries_do_not_count() -> None:
    sw = Switches()
    inj = FaultInjector("reboot_every=5,cut=frame,seed=4", control=sw)
    pipe = Pipe()
    t = inj.wrap(pipe, boards=[7])
    frames = _frames(40)
    for f in frames:
        for _retry in range(3):  # the same frame three times: one request
            t.write(f)
    assert inj.report.total_reboots == 8 == inj.report.reboots[7] == inj.report.cuts["frame"]
    assert sw.log == [("off", 7), ("on", 7)] * 8
    assert inj.report.frames == 120
    # a frame cut off on arrival never reaches the port
    assert len(pipe.sent) == sum(len(f) for f in frames) * 3 - 8 * len(frames[0])


def test_open_faulty_url_wraps_any_transport() -> None:
    t = open_faulty("faulty://loop://?drop=1&seed=2")
    try:
        t.write(b"\x05abcd\x00")
        assert t.read(0.05) == b""
        assert t._port.injector.report.dropped == 6  # type: ignore[attr-defined]
    finally:
        t.close()
    t = open_faulty("faulty://loop://?cut=frame+flash&reboot_every=3", control=Switches())
    assert t._port.profile.cut == ("frame", "flash")  # type: ignore[attr-defined]
    t.close()
    with pytest.raises(ConfigError, match="wraps no inner URL"):
        open_faulty("faulty://?drop=0.1")
    with pytest.raises(ConfigError, match="loop:// takes no options"):  # the inner URL's own
        open_faulty("faulty://loop://?drop=0.1&bogus=1")


# -- world faults -------------------------------------------------------------------------------


def test_world_faults_strike_at_their_step_or_frame() -> None:
    with EmulatedRig(PAPER, noiseless=True) as emu:
        inj = FaultInjector.for_emulator("break=9@s2,stall=4@s2,stick=3@f10,seed=1", emu)
        inj.on_batch(1)
        assert emu.world.broken_bonds() == [] and inj.report.world == []
        inj.on_batch(2)
        assert emu.world.broken_bonds() == [9]
        assert emu.world.actuator(4)._stalled  # the hook's own flag
        inj.count_frames(9)
        assert len(inj.report.world) == 2
        inj.count_frames(1)
        assert inj.report.world == ["break bond 9 at step 2", "stall bond 4 at step 2", "stick bond 3 at frame 10"]
        inj.on_batch(3)  # each strikes once
        assert len(inj.report.world) == 3


# -- the headline: training loses nothing ---------------------------------------------------------


def run_batches(
    profile: str,
    batches: int,
    *,
    rig_name: str = "paper",
    task_name: str = "iris",
    seed: int = 0,
    readback: bool = True,
    check: Callable[[RigBackend, EmulatedRig], None] | None = None,
) -> tuple[np.ndarray, dict[int, int], Any, Any]:
    """Train the first ``batches`` batches of a task (as the trainer orders them) on a
    noiseless emulated rig with ``profile`` injected; return the float32 stiffness, every
    board's count of kept UPDATEs, the fault report and the recovery stats."""
    from host_sdk.coordinator import RecoveryConfig

    rig = PAPER if rig_name == "paper" else load_rig(rig_name)
    task = get_task(task_name)
    io = rig.io[task_name]
    with EmulatedRig(rig, noiseless=True, dynamics=DynamicsSpec(tau_ms=0)) as emu:
        inj = FaultInjector.for_emulator(profile, emu)
        with RigSession(rig, emu.ports, retries=3000, transport_factory=inj.open, first_seq=1 << 24) as s:
            s.handshake()
            s.configure()
            s.tare()
            backend = RigBackend(s, io, optimiser=task.optimiser, on_batch=inj.on_batch,
                                 recovery=RecoveryConfig(readback=readback))
            split = task.split(seed)
            order = np.random.default_rng([seed, 1]).permutation(split.x_train.shape[0])
            for step in range(batches):
                rows = order[step * task.batch_size:(step + 1) * task.batch_size]
                targets = split.y_train[rows]

                def adjoint(y: np.ndarray, idx: np.ndarray, targets: Any = targets) -> np.ndarray:
                    return -task.loss.grad(y, targets[np.asarray(idx)])

                backend.train_batch(step, task.input_forces(split.x_train[rows]), adjoint)
                backend.update(step)
                if check is not None:
                    check(backend, emu)
            k = backend.stiffness().astype(np.float32)
            control = inj.control
            assert control is not None
            return k, control.updates(), inj.report, backend.stats  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def clean() -> dict[int, np.ndarray]:
    """Fault-free float32 stiffness after 1 and 2 batches."""
    out = {}
    for n in (1, 2):
        k, updates, report, stats = run_batches("", n)
        assert updates == {a: n for a in range(14)}
        assert report.total_reboots == 0 and stats.lagging == 0 and stats.replays == 0
        out[n] = k
    return out


def test_iris_batches_are_bit_exact_under_link_faults_and_power_cuts(clean: dict[int, np.ndarray]) -> None:
    k, updates, report, stats = run_batches(HEADLINE + ",seed=42", 2)
    assert k.dtype == np.float32 and np.array_equal(k, clean[2])
    assert not np.array_equal(clean[1], clean[2])  # the second batch did move the bonds
    assert updates == {a: 2 for a in range(14)}  # every UPDATE applied once, none lost
    # the faults really happened, every kind of them
    assert report.dropped > 1000 and report.corrupted > 1000
    assert report.total_reboots >= 10
    for kind in ("frame", "reply", "update", "flash-old", "flash-torn", "flash-new"):
        assert report.cuts.get(kind, 0) >= 1, report.cuts
    # ... and recovery dealt with them
    assert stats.lagging >= 5 and stats.samples_replayed > 0 and stats.commit_refusals >= 1
    assert stats.reverts >= 1 and stats.late_confirms >= 1 and stats.inexact_replays == 0


def test_a_bus_rig_is_bit_exact_too() -> None:
    # one port, 16 boards: a lost broadcast shows only in the read-back count
    base, up0, _, _ = run_batches("", 1, rig_name="lattice:4x4")
    k, updates, report, stats = run_batches("drop=0.001,corrupt=0.001,reboot_every=150,seed=1", 1,
                                           rig_name="lattice:4x4")
    assert np.array_equal(k, base)
    assert updates == up0 == {a: 1 for a in updates}
    assert report.total_reboots >= 5 and stats.lagging >= 1 and stats.readbacks > 16


@pytest.mark.slow
@pytest.mark.parametrize("profile", [HEADLINE + ",seed=1", HEADLINE + ",dup=0.005,delay=0.01,seed=7"])
def test_iris_epoch_is_bit_exact_under_faults(profile: str) -> None:
    base, _, _, _ = run_batches("", 7)
    k, updates, report, stats = run_batches(profile, 7)
    assert np.array_equal(k, base)
    assert updates == {a: 7 for a in range(14)}
    assert report.total_reboots >= 30 and stats.inexact_replays == 0


def test_boot_counters_count_the_power_cuts_and_recovery_notices_them(clean: dict[int, np.ndarray]) -> None:
    boots: dict[str, dict[int, int]] = {}

    def look(backend: RigBackend, emu: EmulatedRig) -> None:
        hellos = backend.session.handshake()
        boots.setdefault("first", {a: int(h["boots"]) for a, h in hellos.items()})
        boots["last"] = {a: int(h["boots"]) for a, h in hellos.items()}

    run_batches("", 1, check=look)
    before = dict(boots["last"])
    boots.clear()
    # an input board needs about 80 requests per batch of 16: a cut every 120 leaves it room
    k, updates, report, stats = run_batches("reboot_every=120,cut=frame,seed=2", 1, check=look)
    assert np.array_equal(k, clean[1]) and updates == {a: 1 for a in range(14)}
    assert report.total_reboots >= 7
    for a in range(14):
        assert boots["last"][a] - before[a] == report.reboots.get(a, 0)
    assert 1 <= stats.reboots_seen <= report.total_reboots and stats.lagging >= 1


def test_flash_cuts_leave_the_old_or_the_new_record(clean: dict[int, np.ndarray]) -> None:
    # Every board's first flash write after its cut is armed is an UPDATE: the board comes
    # back with the old record (then it is replayed and commits) or the new one (UPDATE then
    # answers applied: false); either way each board applies the step exactly once.
    k, updates, report, stats = run_batches("reboot_every=40,cut=flash,seed=3", 1)
    assert np.array_equal(k, clean[1]) and updates == {a: 1 for a in range(14)}
    assert report.cuts.get("flash-new", 0) >= 1
    assert report.cuts.get("flash-old", 0) + report.cuts.get("flash-torn", 0) >= 1
    assert stats.late_confirms >= 1 and stats.reverts >= 1


def test_world_fault_profile_reaches_the_rig() -> None:
    seen: list[list[int]] = []

    def look(backend: RigBackend, emu: EmulatedRig) -> None:
        seen.append(emu.world.broken_bonds())

    run_batches("break=9@s0,seed=0", 1, check=look)
    assert seen == [[9]]


def test_protocol_frames_stay_within_bounds_under_faults() -> None:
    # sanity of the wrapper: a frame the host writes is never longer than the protocol allows
    # once mangled (duplicated bytes may lengthen it; the receiver then drops it as oversize)
    pipe = Pipe()
    t = FaultInjector("dup=1").wrap(pipe)
    frame = P.encode_request(1, 3, P.Command.HELLO, {})
    t.write(frame)
    assert len(pipe.sent) == 2 * len(frame)
    assert P.Deframer().feed(bytes(pipe.sent)) == []


def test_a_board_that_comes_back_blank_is_configured_again() -> None:
    # Its flash is gone (both records lost): it boots blank, owning no bonds, and would
    # happily count samples. The read-back sees the wrong bonds, HELLO says unconfigured, and
    # the host configures it (its last read-back stiffness, a new tare) and replays it.
    task = IRIS
    with EmulatedRig(PAPER, noiseless=True, dynamics=DynamicsSpec(tau_ms=0)) as emu:
        with RigSession(PAPER, emu.ports) as s:
            s.handshake()
            s.configure()
            s.tare()
            backend = RigBackend(s, PAPER.io["iris"], optimiser=task.optimiser)
            split = task.split(0)
            for step in range(2):
                rows = np.arange(step * 8, step * 8 + 8)
                targets = split.y_train[rows]
                if step == 1:
                    k_before = backend.stiffness()
                    emu.kill_board(5)
                    for name in ("state.mp", "state.tmp"):
                        path = f"{emu.flash_dirs[5]}/{name}"
                        if __import__("os").path.exists(path):
                            __import__("os").remove(path)
                    emu.restart_board(5)
                backend.train_batch(step, task.input_forces(split.x_train[rows]),
                                    lambda y, idx, t=targets: -task.loss.grad(y, t[np.asarray(idx)]))
                backend.update(step)
            assert backend.stats.resyncs == 1 and backend.stats.reboots_seen == 1
            hello = s.hello(5)
            assert hello["configured"] and hello["bonds"] == list(PAPER.board(5).bonds)
            k = backend.stiffness()
            assert np.all(np.isfinite(k))
            # the board restarted from the stiffness it had, then applied step 1 with a fresh
            # optimiser: its bonds moved, by no more than one Adam step (lr) each
            for b in PAPER.board(5).bonds:
                assert 0 < abs(k[b] - k_before[b]) <= task.optimiser.lr * 1.001


def test_faults_in_front_of_the_boards_as_mnn_emulate_puts_them(clean: dict[int, np.ndarray]) -> None:
    # The emulator's side: FaultyEndpoint before each port's boards, power switches attached
    # once the rig has started (LateControl); the host sees a plain, noisy port.
    from host_sdk.faults import EmulatedRigControl, LateControl

    late = LateControl()
    inj = FaultInjector("drop=0.005,corrupt=0.005,reboot_every=120,seed=5", control=late)
    with EmulatedRig(PAPER, noiseless=True, dynamics=DynamicsSpec(tau_ms=0), endpoint_wrapper=inj.wrap_endpoint) as emu:
        late.attach(EmulatedRigControl(emu))
        with RigSession(PAPER, emu.ports, retries=3000, first_seq=1 << 24) as s:
            s.handshake()
            s.configure()
            s.tare()
            backend = RigBackend(s, PAPER.io["iris"], optimiser=IRIS.optimiser)
            split = IRIS.split(0)
            rows = np.random.default_rng([0, 1]).permutation(split.x_train.shape[0])[:IRIS.batch_size]
            targets = split.y_train[rows]
            backend.train_batch(0, IRIS.input_forces(split.x_train[rows]),
                                lambda y, idx: -IRIS.loss.grad(y, targets[np.asarray(idx)]))
            backend.update(0)
            k = backend.stiffness().astype(np.float32)
        assert late.target is not None and late.target.updates() == {a: 1 for a in range(14)}  # type: ignore[attr-defined]
    assert np.array_equal(k, clean[1])
    assert inj.report.dropped > 100 and inj.report.total_reboots >= 5
