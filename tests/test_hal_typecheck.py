"""Type check of the board HAL and its drivers against the MicroPython rp2 stubs.

``micropython-rp2-stubs`` ships the board's modules (``machine``, ``micropython``, ``time``,
``select`` ...) as top-level ``.pyi`` files and depends on ``micropython-stdlib-stubs``, a
reduced typeshed ``stdlib``. mypy treats stdlib modules specially, so the two are arranged as
one custom typeshed (``stdlib/`` with the board modules added and listed in ``VERSIONS``) and
mypy runs with ``--custom-typeshed-dir`` and ``firmware/mypy.ini``. The check covers only the
board side: ``hal_board.py`` and the driver modules it imports.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIRMWARE = ROOT / "firmware"
CONFIG = FIRMWARE / "mypy.ini"
BOARD_FILES = [
    "hal_board.py",
    "mnnfw/hx711.py",
    "mnnfw/servo.py",
    "mnnfw/adcstrain.py",
    "mnnfw/dispsensor.py",
    "mnnfw/forceact.py",
    "mnnfw/rs485.py",
]


def _files(dist: metadata.Distribution) -> list[tuple[str, Path]]:
    """(path inside the distribution, installed path) of its stub files."""
    out = []
    for f in dist.files or ():
        rel = str(f)
        if rel.endswith((".pyi", "VERSIONS")) and ".dist-info" not in rel:
            out.append((rel, Path(str(dist.locate_file(f)))))
    return out


def build_typeshed(dest: Path) -> Path:
    """Arrange the installed MicroPython stubs as a typeshed under ``dest``; return it.

    Raises:
        metadata.PackageNotFoundError: a stub distribution is not installed.
    """
    board = metadata.distribution("micropython-rp2-stubs")
    stdlib = metadata.distribution("micropython-stdlib-stubs")
    lib = dest / "stdlib"
    for rel, src in _files(stdlib):
        head, _, rest = rel.partition("/")
        if head == "stdlib":
            target = lib / rest
        elif head == "stubs":
            target = dest / rel
        else:  # helper packages such as _mpy_shed belong next to the stdlib modules
            target = lib / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, target)
    for rel, src in _files(board):  # the board's own modules win over the reduced stdlib
        target = lib / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, target)
    versions = lib / "VERSIONS"
    text = versions.read_text()
    listed = {line.split(":")[0].strip() for line in text.splitlines() if ":" in line and line[0] != "#"}
    tops = sorted({p.stem if p.is_file() else p.name for p in lib.iterdir() if p.is_dir() or p.suffix == ".pyi"})
    extra = [f"{name}: 3.0-\n" for name in tops if name not in listed]
    versions.write_text(text.rstrip("\n") + "\n" + "".join(extra))
    return dest


@pytest.fixture(scope="module")
def typeshed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if importlib.util.find_spec("mypy") is None:
        pytest.skip("mypy is not installed")
    try:
        return build_typeshed(tmp_path_factory.mktemp("typeshed"))
    except metadata.PackageNotFoundError as e:
        pytest.skip(f"MicroPython stubs not installed ({e}): pip install micropython-rp2-stubs")


def run_mypy(typeshed: Path, files: list[str], cache: Path) -> subprocess.CompletedProcess[str]:
    cmd = [
        sys.executable, "-m", "mypy",
        "--config-file", str(CONFIG),
        "--custom-typeshed-dir", str(typeshed),
        "--cache-dir", str(cache),
        *files,
    ]  # fmt: skip
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_board_hal_and_drivers_typecheck_clean(typeshed: Path, tmp_path: Path) -> None:
    files = [str(Path("firmware") / f) for f in BOARD_FILES]
    out = run_mypy(typeshed, files, tmp_path / "cache")
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"Success: no issues found in {len(BOARD_FILES)} source files" in out.stdout


def test_stubs_catch_wrong_board_calls(typeshed: Path, tmp_path: Path) -> None:
    # The same invocation on wrong code must fail: the stubs, not a silent Any, are in use.
    bad = tmp_path / "bad_board.py"
    bad.write_text(
        "import time\n"
        "import machine\n"
        "from micropython import const\n"
        "_N = const(3)\n"
        "pwm = machine.PWM(machine.Pin(_N))\n"
        "pwm.duty_u16('half')\n"
        "time.ticks_msec()\n"
        "machine.ADC(26).read_u12()\n"
    )
    out = run_mypy(typeshed, [str(bad)], tmp_path / "cache")
    assert out.returncode == 1, out.stdout + out.stderr
    found = sorted(set(re.findall(r"bad_board\.py:(\d+): error: .*\[([a-z-]+)\]", out.stdout)))
    assert found == [("6", "call-overload"), ("7", "attr-defined"), ("8", "attr-defined")], out.stdout


def test_checked_files_cover_the_board_side() -> None:
    # Every driver module hal_board imports is in the checked list, and nothing else in the
    # firmware imports `machine`.
    hal = (FIRMWARE / "hal_board.py").read_text()
    imported = {f"mnnfw/{m}.py" for m in re.findall(r"^from mnnfw\.(\w+) import", hal, re.M)}
    assert imported == set(BOARD_FILES) - {"hal_board.py"}
    imports_machine = re.compile(r"^\s*(import machine|from machine import)", re.M)
    offenders = [
        str(p.relative_to(FIRMWARE))
        for p in sorted(FIRMWARE.rglob("*.py"))
        if p.name != "hal_board.py" and imports_machine.search(p.read_text())
    ]
    assert offenders == []
