"""MicroPython emulated boards: micropython processes on pseudo-terminals, opened with pyserial."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from typing import Any

import numpy as np
import pytest
import serial

from host_sdk import protocol
from host_sdk.emulator.rig import EmulatedRig, write_flash
from host_sdk.fwinfo import firmware_hash
from host_sdk.link import Link
from host_sdk.rig import load_rig
from host_sdk.transport import open_transport

pytestmark = pytest.mark.micropython

C = protocol.Command
PAPER = load_rig("paper")
IN13, OUT14 = 12, 13
MPREMOTE = os.path.join(os.path.dirname(sys.executable), "mpremote")


class Boards:
    """One link per port of an emulated rig; requests by board address."""

    def __init__(self, emu: EmulatedRig) -> None:
        self.emu = emu
        self.links = {
            url: Link(open_transport(url), timeout=3.0, retries=1, first_seq=1)
            for url in dict.fromkeys(emu.ports.values())
        }

    def __call__(self, address: int, command: int, args: dict[str, Any] | None = None) -> Any:
        return self.links[self.emu.ports[address]].request(address, command, args or {})

    def close(self) -> None:
        for link in self.links.values():
            link.close()


def _wait_for(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)


def test_a_micropython_board_answers_hello_through_pyserial() -> None:
    with EmulatedRig(PAPER, micropython=True, noiseless=True) as emu:
        path = emu.paths[OUT14]
        assert path.startswith("/dev/pts/") and emu.ports[OUT14] == "serial://" + path
        with serial.Serial(path, timeout=3.0) as port:
            port.write(protocol.encode_request(41, OUT14, C.HELLO))
            frames: list[bytes] = []
            deframer = protocol.Deframer()
            while not frames:
                chunk = port.read(1)
                assert chunk, "no reply from the MicroPython board"
                frames = deframer.feed(chunk + port.read(port.in_waiting))
        reply = protocol.decode_reply(frames[0])
        assert (reply.seq, reply.address, reply.status) == (41, OUT14, 0)
        assert reply.result["board"] == "emu-13"
        assert reply.result["firmware_hash"] == firmware_hash()
        assert reply.result["caps"] == {"strain": 2, "stiffness": 2, "force": True, "disp": True}
        assert reply.result["configured"] is True


def _session(emu: EmulatedRig) -> list[Any]:
    """A fixed sequence of commands (tare, forward, adjoint, update, forward); every reply."""
    boards = Boards(emu)
    out: list[Any] = []
    try:
        for a in emu.addresses:
            out.append(boards(a, C.TARE, {"n": 4}))
        for step in range(2):
            boards(IN13, C.SET_LOAD, {"fx": 0.0, "fy": -0.098 + 0.01 * step})
            boards(OUT14, C.SET_LOAD, {"fx": 0.0, "fy": 0.0})
            fwd = {"phase": 0, "step": step, "sample": 0, "n": 4, "tol": 1e-7, "timeout_ms": 3000}
            out += [boards(a, C.SAMPLE, fwd) for a in emu.addresses]
            out.append(boards(OUT14, C.READ_OUTPUT, {"n": 0}))
            boards(OUT14, C.SET_LOAD, {"fx": 0.01, "fy": 0.03})
            adj = dict(fwd, phase=1, gain=0.4, incremental=True)
            out += [boards(a, C.SAMPLE, adj) for a in emu.addresses]
            out += [boards(a, C.READ_BONDS) for a in emu.addresses]
            upd = {"step": step, "count": 1, "lr": 1e7, "opt": 0}
            out += [boards(a, C.UPDATE, upd) for a in emu.addresses]
        out += [boards(a, C.READ_BONDS) for a in emu.addresses]
    finally:
        boards.close()
    out.append(emu.world.stiffness().tolist())
    return out


@pytest.mark.parametrize("noiseless", [True, False], ids=["noiseless", "default-noise"])
def test_micropython_and_in_process_boards_agree_bit_for_bit(noiseless: bool) -> None:
    with EmulatedRig(PAPER, noiseless=noiseless, seed=4) as emu:
        inproc = _session(emu)
    with EmulatedRig(PAPER, noiseless=noiseless, seed=4, micropython=True) as emu:
        mp = _session(emu)
    assert mp == inproc
    k_before = np.full(PAPER.n_bonds, PAPER.k0)
    assert not np.allclose(np.array(mp[-1]), k_before)  # the updates moved the bonds


def test_reboot_and_power_cut_keep_stiffness() -> None:
    with EmulatedRig(PAPER, micropython=True, noiseless=True) as emu:
        boards = Boards(emu)
        try:
            boards(6, C.SET_STIFFNESS, {"k": [104.25, 170.5]})
            boots = boards(6, C.HELLO)["boots"]
            starts = emu.processes[6].starts
            assert boards(6, C.REBOOT) == {}
            _wait_for(lambda: emu.processes[6].starts == starts + 1)
            assert boards(6, C.HELLO)["boots"] == boots + 1
            assert boards(6, C.READ_BONDS)["k"] == [104.25, 170.5]
            emu.kill_board(6)
            assert not emu.board_running(6)
            time.sleep(0.1)
            assert not emu.board_running(6)  # a killed board stays down
            emu.restart_board(6)
            assert boards(6, C.HELLO)["boots"] == boots + 2
            assert boards(6, C.READ_BONDS)["k"] == [104.25, 170.5]
            bonds = list(PAPER.board(6).bonds)
            np.testing.assert_allclose(emu.world.stiffness()[bonds], [104.25, 170.5])
        finally:
            boards.close()


def test_blank_board_takes_a_deploy_through_mpremote_and_boots_it(tmp_path: Any) -> None:
    stage = tmp_path / "stage"
    write_flash(str(stage), 9, firmware=True)
    with EmulatedRig(PAPER, micropython=True, blank=True, flash_dir=str(tmp_path / "flash")) as emu:
        path = emu.paths[9]
        assert os.listdir(emu.flash_dirs[9]) == []
        copy: list[str] = ["mkdir", ":mnnfw", "+"]
        for root, _dirs, files in os.walk(stage):
            for name in sorted(files):
                rel = os.path.relpath(os.path.join(root, name), stage)
                copy += ["cp", os.path.join(root, name), ":" + rel, "+"]
        done = subprocess.run(
            [MPREMOTE, "connect", path, "resume", *copy[:-1]],
            capture_output=True, text=True, timeout=60,
        )
        assert done.returncode == 0, done.stderr
        assert sorted(os.listdir(emu.flash_dirs[9])) == sorted(os.listdir(stage))
        starts = emu.processes[9].starts
        with serial.Serial(path, timeout=3.0) as port:
            port.write(b"\r\x03\x03\x04")  # Ctrl-D at the REPL: the unix port exits, the board restarts
        _wait_for(lambda: emu.processes[9].starts == starts + 1)
        assert emu.processes[9].command()[-1] == "main.py"
        link = Link(open_transport("serial://" + path), timeout=3.0, retries=2, first_seq=1)
        try:
            hello = link.request(9, C.HELLO)
        finally:
            link.close()
        assert hello["board"] == "emu-9" and hello["firmware_hash"] == firmware_hash()
        assert hello["configured"] is False  # blank boards are deployed to, not configured


def test_stop_kills_every_process_and_closes_every_descriptor() -> None:
    before = len(os.listdir("/proc/self/fd"))
    emu = EmulatedRig(PAPER, micropython=True)
    pids = [p.proc.pid for p in emu.processes.values() if p.proc is not None]
    assert len(pids) == 14 and all(emu.board_running(a) for a in emu.addresses)
    emu.stop()
    assert len(os.listdir("/proc/self/fd")) == before
    assert not any(os.path.exists(p) for p in emu.paths.values())
    for pid in pids:
        with pytest.raises(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # already reaped by stop()


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", encoding="ascii") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry))
    return found


def test_mnn_emulate_prints_the_ports_and_stops_cleanly_on_sigterm() -> None:
    cmd = [sys.executable, "-m", "host_sdk.emulator.cli", "--rig", "paper", "--micropython", "--noiseless"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        boards = json.loads(line)["boards"]
        assert sorted(boards, key=int) == [str(b.address) for b in PAPER.boards]
        link = Link(open_transport(boards["13"]), timeout=3.0, retries=1, first_seq=1)
        try:
            assert link.request(13, C.HELLO)["board"] == "emu-13"
        finally:
            link.close()
        children = _children(proc.pid)
        assert len(children) == len(PAPER.boards)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert out == ""
    assert not [p for p in children if os.path.exists(f"/proc/{p}")]
    assert not any(os.path.exists(p) for p in boards.values())
