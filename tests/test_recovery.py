"""A killed host resumes its run to the same result: the step journal, checkpoints, resume.

The headline case runs ``mnn train --backend rig --journal DIR`` in a subprocess against boards
served by a separate ``mnn emulate`` process (so they outlive the host), kills it with SIGKILL at
a random point and resumes it with ``mnn train --resume DIR``: the final stiffness is bit for
bit that of an uninterrupted run. In-process cases kill the host at chosen points, including in
the middle of a commit, with the boards losing power too (their flash survives).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import host_sdk.journal as J
from host_sdk import protocol as P
from host_sdk.errors import ConfigError
from host_sdk.journal import Journal, RigRunOptions, run_on_rig
from host_sdk.rig import load_rig, rig_to_toml
from host_sdk.training import StageHistory, TrainerState

ROOT = Path(__file__).resolve().parents[1]
# The paper's behaviour task: one sample per batch, so a run of 8 epochs is 8 commits and
# 8 evaluations, which keeps killing and resuming hosts quick. Settling is off (tau 0): a
# measurement then depends only on the network's state, so the result must be bit-exact.
OPTIONS = RigRunOptions(task="behaviour-ce", epochs=8, noiseless=True, tau_ms=0.0)
IRIS = RigRunOptions(task="iris", epochs=1, noiseless=True, tau_ms=0.0)


@pytest.fixture(scope="module")
def reference() -> Any:
    """The uninterrupted run."""
    return run_on_rig(OPTIONS)


# -- the journal file --------------------------------------------------------------------------------


def test_journal_events_survive_a_torn_last_line(tmp_path: Path) -> None:
    j = Journal(tmp_path / "run", create=True)
    j.write_run({"options": {"task": "iris"}})
    j.begin_commit({"step": 1, "board_step": 5, "forces": [[0.5]]})
    j.end_commit(5)
    with open(j.journal_path, "a", encoding="utf-8") as f:
        f.write('{"event": "commit", "step": 2, "boa')  # the host died mid-write
    events = Journal(tmp_path / "run").events()
    assert [e["event"] for e in events] == ["commit", "committed"]
    last, revert, done = j.last_commit()
    assert last is not None and last["board_step"] == 5 and revert is None and done


def test_a_damaged_journal_line_is_an_error_naming_the_line(tmp_path: Path) -> None:
    j = Journal(tmp_path, create=True)
    j.write_run({})
    j.end_commit(1)
    with open(j.journal_path, "a", encoding="utf-8") as f:
        f.write("garbage\n")
    j.end_commit(2)
    with pytest.raises(ConfigError, match="line 2 is damaged"):
        j.events()


def test_last_commit_reports_an_interrupted_revert(tmp_path: Path) -> None:
    j = Journal(tmp_path, create=True)
    j.begin_commit({"step": 3, "board_step": 9})
    j.note_revert(9, {"4": [120.0, 130.5]})
    j.note_revert(9, {"6": [110.25, 111.0]})
    last, revert, done = j.last_commit()
    assert last is not None and last["step"] == 3 and not done
    assert revert == {"4": [120.0, 130.5], "6": [110.25, 111.0]}


def test_run_directories_are_not_confused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="holds no run"):
        Journal(tmp_path)
    j = Journal(tmp_path, create=True)
    j.write_run({"options": {}})
    with pytest.raises(ConfigError, match="already holds a run: continue it with --resume"):
        Journal(tmp_path, create=True)


def test_checkpoints_keep_every_float_exactly(tmp_path: Path) -> None:
    j = Journal(tmp_path, create=True)
    hist = StageHistory(task="iris", metric="accuracy", epoch=[0, 1], loss=[1 / 3, 2 / 7],
                        removed_bonds=[(9, 10)], steps=4)
    rng = np.random.default_rng([0, 1])
    rng.permutation(10)
    state = TrainerState(2, 1, 6, rng.bit_generator.state, hist, [137.5 + 1e-9, 103.125])
    j.save_checkpoint(state)
    back = j.checkpoint()
    assert back == state and back is not None
    assert back.after_batch().step == 7 and back.after_batch().history.steps == 5
    with open(j.checkpoint_path, "w", encoding="utf-8") as f:
        f.write('{"epoch": 1}')
    with pytest.raises(ConfigError, match="checkpoint"):
        j.checkpoint()


# -- killing the host in-process at chosen points --------------------------------------------------


class HostCrash(BaseException):
    """The host process dies (not an error anything may catch)."""


class Crasher:
    """Wraps every port; the host dies at the ``n``-th frame of ``command`` (any frame if None),
    before writing it or just after the board handled it."""

    def __init__(self, n: int, command: int | None, after: bool) -> None:
        self.n, self.command, self.after = n, command, after
        self.seen = 0

    def wrap(self, inner: Any) -> Any:
        crasher = self

        class Wrapped:
            url = inner.url

            def write(self, data: bytes) -> None:
                if crasher.command is None or _command(data) == crasher.command:
                    crasher.seen += 1
                    if crasher.seen == crasher.n:
                        if crasher.after:
                            inner.write(data)
                        raise HostCrash()
                inner.write(data)

            def read(self, timeout: float) -> bytes:
                return inner.read(timeout)

            def close(self) -> None:
                inner.close()

        return Wrapped()


def _command(frame: bytes) -> int | None:
    try:
        return P.decode_request(P.decode_frame(frame[:-1])).command
    except Exception:  # noqa: BLE001 - anything that is not a request
        return None


def crash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, crasher: Crasher,
          options: RigRunOptions = OPTIONS) -> Path:
    """Start a journaled run whose host dies where ``crasher`` says; return the run directory."""
    from host_sdk.transport import open_transport

    real = J.RigSession

    def session(*args: Any, **kwargs: Any) -> Any:
        factory = kwargs.pop("transport_factory", None)

        def opener(url: str, boards: Any) -> Any:
            inner = factory(url, boards) if factory is not None else open_transport(url)
            return crasher.wrap(inner)

        return real(*args, transport_factory=opener, **kwargs)

    run = tmp_path / "run"
    with monkeypatch.context() as m:
        m.setattr(J, "RigSession", session)
        with pytest.raises(HostCrash):
            run_on_rig(options, journal_dir=run)
    return run


@pytest.mark.parametrize(
    "n, command, after, what",
    [
        (17, P.Command.UPDATE, True, "mid-commit: 3 of 14 boards applied step 2"),
        (28, P.Command.UPDATE, True, "after every board applied step 2, before the checkpoint"),
        (16, P.Command.CONFIGURE, False, "while moving boards back"),
    ],
)
def test_host_killed_in_process_resumes_bit_exact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reference: Any, n: int, command: int, after: bool, what: str
) -> None:
    # the boards lose power with the host (in-process), their flash survives
    options = OPTIONS
    if command == P.Command.CONFIGURE:
        # boards are moved back when one loses its batch during a commit: power cuts strike
        # UPDATEs, and the host dies as it moves the third board back (the session's own 14
        # CONFIGUREs come first)
        options = replace(OPTIONS, faults="reboot_every=30,cut=update,seed=0")
    run = crash(tmp_path, monkeypatch, Crasher(n, command, after), options)
    events = [e["event"] for e in Journal(run).events()]
    result = run_on_rig(journal_dir=run, resume=True)
    assert np.array_equal(np.float32(result.history.k), np.float32(reference.history.k)), what
    assert result.history.final() == reference.history.final()
    assert result.history.stages[0].steps == 8
    if command == P.Command.CONFIGURE:
        assert events[-1] == "revert"
    else:
        assert events[-1] == "commit"
    assert result.recovery["recovery"]["resumed_steps"] == 1


def test_resume_refuses_boards_that_are_ahead_of_the_journal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = crash(tmp_path, monkeypatch, Crasher(20, P.Command.UPDATE, True))
    # lose the journal's record of the commits: the boards' steps no longer match it
    lines = (run / J.JOURNAL_FILE).read_text(encoding="utf-8").splitlines()
    kept = [line for line in lines if '"event":"commit' not in line]
    (run / J.JOURNAL_FILE).write_text("\n".join(kept) + "\n", encoding="utf-8")
    with pytest.raises(Exception, match="journal does not belong to these boards"):
        run_on_rig(journal_dir=run, resume=True)


# -- the host process killed for real --------------------------------------------------------------


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _emulate(micropython: bool) -> tuple[subprocess.Popen[str], dict[int, str]]:
    cmd = [sys.executable, "-m", "host_sdk.emulator.cli", "--rig", "paper", "--noiseless", "--tau-ms", "0"]
    if micropython:
        cmd.append("--micropython")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=_env(), cwd=ROOT)
    assert proc.stdout is not None
    line = json.loads(proc.stdout.readline())
    return proc, {int(a): p for a, p in line["boards"].items()}


def _rig_file(tmp_path: Path, paths: dict[int, str]) -> Path:
    rig = load_rig("paper")
    boards = tuple(replace(b, port="serial://" + paths[b.address]) for b in rig.boards)
    path = tmp_path / "ptys.toml"
    path.write_text(rig_to_toml(replace(rig, boards=boards)), encoding="utf-8")
    return path


def _commits(journal: Path) -> int:
    try:
        text = journal.read_text(encoding="utf-8")
    except FileNotFoundError:
        return 0
    return text.count('"event":"commit"')


def kill_and_resume(tmp_path: Path, options: RigRunOptions, micropython: bool) -> tuple[dict[str, Any], int, float]:
    """Run ``mnn train`` against ``mnn emulate`` boards, SIGKILL it after a random number of
    commits (plus a random delay), resume it with ``mnn train --resume``; return its JSON."""
    rng = np.random.default_rng(int(time.time() * 1000) % 2**32)  # another kill point every run
    epochs = int(options.epochs or 1)
    kill_at = int(rng.integers(1, 7))  # commits seen before the kill
    delay = float(rng.uniform(0.0, 0.05))
    emulator, paths = _emulate(micropython)
    try:
        rig_file = _rig_file(tmp_path, paths)
        run = tmp_path / "run"
        cmd = [sys.executable, "-m", "host_sdk.cli", "train", "--task", options.task, "--backend", "rig",
               "--rig", str(rig_file), "--epochs", str(epochs), "--journal", str(run), "--json"]
        host = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=_env(), cwd=ROOT)
        deadline = time.monotonic() + 300
        while _commits(run / J.JOURNAL_FILE) < kill_at and host.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
        time.sleep(delay)
        host.send_signal(signal.SIGKILL)
        host.communicate()
        assert host.returncode == -signal.SIGKILL, "the host finished before it could be killed"
        resumed = subprocess.run([sys.executable, "-m", "host_sdk.cli", "train", "--resume", str(run), "--json"],
                                 capture_output=True, text=True, env=_env(), cwd=ROOT, timeout=600)
        assert resumed.returncode == 0, resumed.stderr
        return json.loads(resumed.stdout), kill_at, delay
    finally:
        emulator.send_signal(signal.SIGTERM)
        emulator.communicate(timeout=60)


def test_killed_host_process_resumes_to_the_same_result(tmp_path: Path, reference: Any) -> None:
    out, kill_at, delay = kill_and_resume(tmp_path, OPTIONS, micropython=False)
    assert np.array_equal(np.float32(out["k"]), np.float32(reference.history.k)), (kill_at, delay)
    assert out["final"] == reference.history.final()


@pytest.mark.slow
@pytest.mark.parametrize("micropython", [False, pytest.param(True, marks=pytest.mark.micropython)])
def test_killed_iris_host_resumes_to_the_same_result(tmp_path: Path, micropython: bool) -> None:
    ref = run_on_rig(IRIS)
    out, kill_at, delay = kill_and_resume(tmp_path, IRIS, micropython)
    assert np.array_equal(np.float32(out["k"]), np.float32(ref.history.k)), (kill_at, delay)
    assert out["final"] == ref.history.final()
