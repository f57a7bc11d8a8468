"""Deploy: what goes on a board, the board-side snippets, and mpremote into blank emulated boards."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
import time
import tty
from pathlib import Path
from typing import Any

import pytest

from host_sdk import deploy as D
from host_sdk import protocol
from host_sdk.emulator.rig import EmulatedRig, hal_emu_path, write_flash
from host_sdk.errors import ConfigError, TransportError
from host_sdk.fwinfo import firmware_dir, firmware_files, firmware_hash
from host_sdk.link import Link
from host_sdk.rig import BoardSpec, load_rig, rig_to_toml
from host_sdk.transport import open_transport
from mp_runner import micropython

PAPER = load_rig("paper")


# -- what goes on a board ------------------------------------------------------------------------


def test_board_files_of_an_emulated_board() -> None:
    spec = PAPER.board(13)
    files = D.board_files(PAPER, spec)
    paths = [f.path for f in files]
    root = firmware_dir()
    expected = [p.relative_to(root).as_posix() for p in firmware_files()]
    assert paths == expected + ["hal_emu.py", "board.cfg", "fw.hash"]
    assert "main.py" in paths and "mnnfw/node.py" in paths and "__init__.py" not in paths
    data = {f.path: f.data for f in files}
    assert json.loads(data["board.cfg"]) == {"address": 13, "hal": "hal_emu", "hal_args": {}}
    assert data["fw.hash"] == (firmware_hash() + "\n").encode()
    assert data["hal_emu.py"] == Path(hal_emu_path()).read_bytes()
    assert data["mnnfw/node.py"] == (root / "mnnfw" / "node.py").read_bytes()
    assert files[0].sha256 == hashlib.sha256(files[0].data).hexdigest()


def test_board_files_match_what_the_emulator_writes(tmp_path: Path) -> None:
    # an emulated board the emulator provisioned needs nothing from a deploy
    write_flash(str(tmp_path), 13, firmware=True)
    for f in D.board_files(PAPER, PAPER.board(13)):
        assert (tmp_path / f.path).read_bytes() == f.data, f.path


def test_board_files_of_a_real_board(tmp_path: Path) -> None:
    text = rig_to_toml(PAPER).replace("emulated = true", "emulated = false")
    text = text.replace('port = "emu://paper/4"', 'port = "serial:///dev/ttyACM4"\nhal_args = { disp = true, strain = [{ dout = 2, sck = 3 }] }', 1)
    path = tmp_path / "real.toml"
    path.write_text(text)
    rig = load_rig(str(path))
    files = {f.path: f.data for f in D.board_files(rig, rig.board(4))}
    assert "hal_emu.py" not in files
    assert json.loads(files["board.cfg"]) == {
        "address": 4, "hal": "hal_board", "hal_args": {"disp": True, "strain": [{"dout": 2, "sck": 3}]}}


@pytest.mark.parametrize(
    ("url", "device"),
    [("serial:///dev/ttyACM0?baud=9600", "/dev/ttyACM0"), ("/dev/pts/7", "/dev/pts/7"), ("COM3", "COM3"),
     ("spy://serial:///dev/ttyUSB1?log=x.txt", "/dev/ttyUSB1")],
)
def test_device_of(url: str, device: str) -> None:
    assert D.device_of(url) == device


@pytest.mark.parametrize(("url", "match"), [("emu://paper/3", "in-process emulated board"),
                                            ("loop://", "not a serial port"), ("ftp://x", "scheme")])
def test_device_of_refuses(url: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        D.device_of(url)


def test_the_table() -> None:
    rows = [D.DeployResult(3, "serial:///dev/pts/5", ["a", "b"], ["c"], "0123456789abcdef", True, "deployed"),
            D.DeployResult(11, "serial:///dev/pts/12", message="failed: copying did not finish in 5 s")]
    assert D.format_table(rows).splitlines() == [
        "board  port                  copied  skipped  firmware hash     result",
        "3      serial:///dev/pts/5   2       1        0123456789abcdef  deployed",
        "11     serial:///dev/pts/12  0       0        -                 failed: copying did not finish in 5 s",
    ]
    assert D.failures(rows) == ["board 11 on serial:///dev/pts/12: failed: copying did not finish in 5 s"]


# -- the snippets the board runs, under the real interpreter ---------------------------------------


def _run_on_board(flash: Path, snippet: str) -> dict[str, Any]:
    exe = micropython()
    if exe is None:
        pytest.skip("the micropython unix interpreter is not installed")
    done = subprocess.run([exe, "-c", snippet], cwd=flash, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    line = [ln for ln in done.stdout.splitlines() if ln.startswith("MNN-DEPLOY ")][-1]
    value: dict[str, Any] = json.loads(line[len("MNN-DEPLOY "):])
    return value


@pytest.mark.micropython
def test_hash_snippet(tmp_path: Path) -> None:
    (tmp_path / "mnnfw").mkdir()
    (tmp_path / "mnnfw" / "a.py").write_bytes(b"x" * 1300)
    (tmp_path / "empty").write_bytes(b"")
    out = _run_on_board(tmp_path, D._hash_snippet(["mnnfw/a.py", "missing.py", "empty"]))
    assert out == {"platform": "linux", "hashes": [hashlib.sha256(b"x" * 1300).hexdigest(), None,
                                                   hashlib.sha256(b"").hexdigest()]}


def _files() -> list[D.BoardFile]:
    return [D.BoardFile("main.py", b"new main\n"), D.BoardFile("mnnfw/node.py", b"new node\n")]


@pytest.mark.micropython
def test_commit_snippet_renames_only_when_every_file_checks(tmp_path: Path) -> None:
    (tmp_path / "mnnfw").mkdir()
    (tmp_path / "main.py").write_bytes(b"old main\n")
    (tmp_path / "mnnfw" / "node.py").write_bytes(b"old node\n")
    (tmp_path / "mnnfw" / "gone.py").write_bytes(b"a module the firmware dropped\n")
    (tmp_path / "board.cfg.new").write_bytes(b"left by a vanished deploy\n")
    (tmp_path / "state.mp").write_bytes(b"records stay\n")
    files = _files()
    paths = ["main.py", "mnnfw/node.py", "board.cfg"]
    # one temporary file arrived damaged: nothing is replaced, the temporaries are removed
    (tmp_path / "main.py.new").write_bytes(b"new main\n")
    (tmp_path / "mnnfw" / "node.py.new").write_bytes(b"new nodE\n")
    out = _run_on_board(tmp_path, D._commit_snippet(files, paths, ["mnnfw/node.py"]))
    assert out["bad"] == ["mnnfw/node.py"]
    assert (tmp_path / "main.py").read_bytes() == b"old main\n"
    assert (tmp_path / "mnnfw" / "node.py").read_bytes() == b"old node\n"
    assert not (tmp_path / "main.py.new").exists() and not (tmp_path / "mnnfw" / "node.py.new").exists()
    # both arrive intact: renamed into place, stale module and leftovers removed, records kept
    (tmp_path / "main.py.new").write_bytes(b"new main\n")
    (tmp_path / "mnnfw" / "node.py.new").write_bytes(b"new node\n")
    out = _run_on_board(tmp_path, D._commit_snippet(files, paths, ["mnnfw/node.py"]))
    assert out == {"bad": [], "final": [f.sha256 for f in files]}
    assert (tmp_path / "main.py").read_bytes() == b"new main\n"
    assert sorted(os.listdir(tmp_path)) == ["main.py", "mnnfw", "state.mp"]
    assert os.listdir(tmp_path / "mnnfw") == ["node.py"]


@pytest.mark.micropython
def test_prepare_snippet_makes_directories(tmp_path: Path) -> None:
    snippet = D._prepare_snippet(["mnnfw", "mnnfw"]) + "print('MNN-DEPLOY {}')\n"
    assert _run_on_board(tmp_path, snippet) == {}
    assert (tmp_path / "mnnfw").is_dir()


# -- end to end: mpremote into emulated MicroPython boards ------------------------------------------


def _hello(url: str, address: int) -> dict[str, Any]:
    link = Link(open_transport(url), timeout=2.0, retries=2)
    try:
        return link.request(address, protocol.Command.HELLO)
    finally:
        link.close()


def _flash_matches(flash: str, files: list[D.BoardFile]) -> list[str]:
    """Paths whose content in the flash directory differs from what deploy sends."""
    wrong = []
    for f in files:
        p = os.path.join(flash, f.path)
        if not os.path.isfile(p) or Path(p).read_bytes() != f.data:
            wrong.append(f.path)
    return wrong


@pytest.fixture(scope="module")
def blank_rig() -> Any:
    with EmulatedRig(PAPER, micropython=True, blank=True) as emu:
        yield emu


@pytest.mark.micropython
def test_deploy_from_blank_then_nothing_then_a_corrupted_file(blank_rig: EmulatedRig) -> None:
    emu, a = blank_rig, 5
    files = D.board_files(PAPER, PAPER.board(a))
    lines: list[tuple[int, str]] = []
    assert os.listdir(emu.flash_dirs[a]) == []
    [r] = D.deploy(PAPER, boards=[a], ports={a: emu.ports[a]}, progress=lambda b, m: lines.append((b, m)))
    assert (r.ok, r.message, r.firmware_hash) == (True, "deployed", firmware_hash())
    assert r.copied == [f.path for f in files] and r.skipped == []
    assert _flash_matches(emu.flash_dirs[a], files) == []
    assert not [n for n in os.listdir(emu.flash_dirs[a]) if n.endswith(".new")]
    assert lines[0] == (a, f"found REPL on {emu.paths[a]}") and lines[-1] == (a, "deployed")
    hello = _hello(emu.ports[a], a)
    assert hello["firmware_hash"] == firmware_hash() and hello["board"] == f"emu-{a}"

    # twice in a row: the second run copies nothing
    [r] = D.deploy(PAPER, boards=[a], ports={a: emu.ports[a]})
    assert (r.ok, r.message, r.copied, len(r.skipped)) == (True, "up to date", [], len(files))

    # a corrupted file is found by its hash; a dry run reports it and leaves it
    node = os.path.join(emu.flash_dirs[a], "mnnfw", "node.py")
    good = Path(node).read_bytes()
    Path(node).write_bytes(good[:-10] + b"# damaged\n")
    [r] = D.deploy(PAPER, boards=[a], ports={a: emu.ports[a]}, dry_run=True)
    assert (r.ok, r.copied, r.message) == (True, ["mnnfw/node.py"], "dry run: mnnfw/node.py")
    assert Path(node).read_bytes() != good
    assert _hello(emu.ports[a], a)["firmware_hash"] == firmware_hash()  # running again
    [r] = D.deploy(PAPER, boards=[a], ports={a: emu.ports[a]})
    assert (r.ok, r.copied, r.message) == (True, ["mnnfw/node.py"], "deployed")
    assert Path(node).read_bytes() == good


@pytest.mark.micropython
def test_a_board_that_vanishes_mid_copy_keeps_its_old_firmware(blank_rig: EmulatedRig) -> None:
    emu, a = blank_rig, 8
    flash = emu.flash_dirs[a]
    write_flash(flash, a, firmware=True, fw_hash="0123456789abcdef")
    for f in D.board_files(PAPER, PAPER.board(a)):
        if f.path.endswith(".py"):
            with open(os.path.join(flash, f.path), "ab") as out:
                out.write(b"# the previous release\n")
    emu.restart_board(a)
    assert _hello(emu.ports[a], a)["firmware_hash"] == "0123456789abcdef"
    old = {name: Path(flash, name).read_bytes() for name in ("main.py", "board.cfg", "fw.hash", "mnnfw/node.py")}
    results: list[D.DeployResult] = []
    worker = threading.Thread(target=lambda: results.extend(
        D.deploy(PAPER, boards=[a], ports={a: emu.ports[a]}, timeout=5.0)))
    worker.start()
    deadline = time.monotonic() + 30
    while not any(n.endswith(".new") for n in os.listdir(flash)) and time.monotonic() < deadline:
        time.sleep(0.002)
    emu.kill_board(a)  # power cut in the middle of the copy
    worker.join(60)
    [r] = results
    assert not r.ok and r.message.startswith("failed: copying")
    assert {name: Path(flash, name).read_bytes() for name in old} == old
    emu.restart_board(a)
    assert _hello(emu.ports[a], a)["firmware_hash"] == "0123456789abcdef"  # the old firmware runs
    [r] = D.deploy(PAPER, boards=[a], ports={a: emu.ports[a]})
    assert r.ok and r.firmware_hash == firmware_hash()
    assert not [n for n in os.listdir(flash) + os.listdir(os.path.join(flash, "mnnfw")) if n.endswith(".new")]


# -- bad input: one line, nothing changed ----------------------------------------------------------


def _fake_board(argv: list[str]) -> tuple[subprocess.Popen[bytes], str, list[int]]:
    """A pseudo-terminal whose other end is ``argv`` (not MicroPython)."""
    master, slave = os.openpty()
    tty.setraw(slave)
    proc = subprocess.Popen(argv, stdin=master, stdout=master, stderr=subprocess.DEVNULL)
    return proc, os.ttyname(slave), [master, slave]


@pytest.mark.micropython
@pytest.mark.parametrize("argv", [["cat"], [sys.executable, "-c",
                                            "import os,time\nwhile 1:\n os.write(1, os.urandom(64)); time.sleep(0.01)"]],
                         ids=["echo", "garbage"])
def test_a_board_without_micropython_stops_the_deploy(blank_rig: EmulatedRig, argv: list[str]) -> None:
    emu = blank_rig
    proc, device, fds = _fake_board(argv)
    try:
        with pytest.raises(TransportError) as info:
            D.deploy(PAPER, boards=[12, 4], ports={12: emu.ports[12], 4: "serial://" + device})
        assert str(info.value) == (f"board 4 on {device}: neither the firmware nor a MicroPython REPL "
                                   "answers (is MicroPython on the board?)")
        assert os.listdir(emu.flash_dirs[12]) == []  # the good board was not touched
    finally:
        proc.kill()
        proc.wait()
        for fd in fds:
            os.close(fd)


def test_a_port_that_does_not_exist() -> None:
    with pytest.raises(TransportError, match=r"^port /dev/ttyACM97 does not exist \(is the board plugged in\?\)$"):
        D.deploy(PAPER, boards=[3], ports={3: "/dev/ttyACM97"})


def test_a_board_that_is_not_connected(tmp_path: Path) -> None:
    text = rig_to_toml(PAPER).replace('port = "emu://paper/6"', 'usb_serial = "E6614C311B4F2B90"', 1)
    path = tmp_path / "rig.toml"
    path.write_text(text)
    with pytest.raises(TransportError, match=r"board\[6\] \(address 6, node 6\) with USB serial "
                                             r"'E6614C311B4F2B90' is not connected"):
        D.deploy(str(path), boards=[6])


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"boards": [3]}, ConfigError, "in-process emulated board, which cannot be deployed"),
        ({"boards": [3], "ports": {99: "/dev/pts/1"}}, ConfigError, "no board has address 99"),
        ({"boards": [3], "ports": {3: "ftp://x"}}, ConfigError, "unknown port URL scheme"),
        ({"boards": [3, 4], "ports": {3: "/dev/pts/1", 4: "serial:///dev/pts/1"}}, ConfigError,
         "boards 3, 4 share the port /dev/pts/1"),
        ({"boards": [99]}, ConfigError, "no board has address 99"),
        ({"jobs": 0}, ConfigError, "jobs must be an integer >= 1"),
    ],
)
def test_bad_arguments(kwargs: dict[str, Any], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        D.deploy(PAPER, **kwargs)


# -- the command line ------------------------------------------------------------------------------


def _mnn(argv: list[str]) -> int:
    import argparse

    from host_sdk.cli_rig import add_parser

    parser = argparse.ArgumentParser(prog="mnn")
    add_parser(parser.add_subparsers())
    args = parser.parse_args(argv)
    return int(args.func(args))


def test_parse_ports() -> None:
    from host_sdk.cli_rig import parse_ports

    assert parse_ports(["3=/dev/pts/4", "12=serial:///dev/ttyACM0?baud=9600"]) == {
        3: "/dev/pts/4", 12: "serial:///dev/ttyACM0?baud=9600"}
    assert parse_ports(["serial:///dev/x?baud=9600"], single=5) == {5: "serial:///dev/x?baud=9600"}
    assert parse_ports(None, '{"boards": {"0": "/dev/pts/3", "1": "/dev/pts/4"}}', single=None) == {
        0: "/dev/pts/3", 1: "/dev/pts/4"}
    assert parse_ports(["1=/dev/pts/9"], '{"1": "/dev/pts/4"}') == {1: "/dev/pts/9"}
    for args, match in (((["/dev/pts/4"], None), "say which board it is for"),
                        ((None, "{"), "not valid JSON"), ((None, '{"x": "/dev/a"}'), "not an integer"),
                        ((None, "[1]"), "expects"), ((None, '{"3": 4}'), "has no port string")):
        with pytest.raises(ConfigError, match=match):
            parse_ports(*args)


@pytest.mark.micropython
def test_mnn_deploy_dry_run_on_a_blank_board(blank_rig: EmulatedRig, capsys: Any) -> None:
    emu, a = blank_rig, 10
    ports = json.dumps({"boards": {str(b): p for b, p in emu.paths.items()}})
    assert _mnn(["deploy", "--rig", "paper", "--ports", ports, "--board", str(a), "--dry-run"]) == 0
    out, err = capsys.readouterr()
    rows = out.splitlines()
    assert rows[0].split() == ["board", "port", "copied", "skipped", "firmware", "hash", "result"]
    assert rows[1].split()[:5] == [str(a), emu.paths[a], "22", "0", "-"]
    assert "dry run: hal_board.py, main.py, mnnfw/__init__.py" in rows[1] and rows[1].endswith("board.cfg, fw.hash")
    assert err.splitlines()[0] == f"board {a}: found REPL on {emu.paths[a]}"
    assert os.listdir(emu.flash_dirs[a]) == []  # a dry run changes nothing


def test_mnn_deploy_bad_port() -> None:
    with pytest.raises(TransportError, match="port /dev/ttyACM97 does not exist"):
        _mnn(["deploy", "--rig", "paper", "--board", "3", "--port", "/dev/ttyACM97"])
