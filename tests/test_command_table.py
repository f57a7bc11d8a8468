"""One command table: firmware constants, host enums and docs/protocol.md must agree."""

from __future__ import annotations

import re
from pathlib import Path

from host_sdk import protocol as P
from host_sdk.firmware.mnnfw import commands as C

DOC = (Path(__file__).resolve().parents[1] / "docs" / "protocol.md").read_text()


def section(title: str) -> str:
    m = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", DOC, re.S | re.M)
    assert m, f"docs/protocol.md has no '## {title}' section"
    return m.group(1)


def code_rows(text: str) -> dict[str, int]:
    return {name: int(code) for code, name in re.findall(r"^\| (\d+) \| ([A-Z_]+) \|", text, re.M)}


def test_commands_mirror() -> None:
    fw = dict(C.COMMANDS)
    assert fw == {c.name: c.value for c in P.Command}
    assert fw == code_rows(section("Commands"))
    for name, code in fw.items():
        assert getattr(C, name) == code


def test_statuses_mirror() -> None:
    fw = dict(C.STATUSES)
    assert fw == {s.name: s.value for s in P.Status}
    assert fw == code_rows(section("Status codes"))


def test_phases_and_optimizers_mirror() -> None:
    assert dict(C.PHASES) == {p.name: p.value for p in P.Phase}
    assert dict(C.OPTIMIZERS) == {o.name: o.value for o in P.Optimizer}


def test_limits_mirror() -> None:
    doc = {n: int(v.replace(",", "").replace("_", ""), 0)
           for n, v in re.findall(r"^\| `(MAX_[A-Z_]+)` \| ([0-9x,_A-Fa-f]+) \|", section("Limits"), re.M)}
    names = ["MAX_FRAME", "MAX_DEPTH", "MAX_ITEMS", "MAX_BONDS", "MAX_TABLE", "MAX_N", "MAX_SAMPLE",
             "MAX_STEP", "MAX_SEQ"]
    for name in names:
        assert getattr(C, name) == getattr(P, name) == doc[name], name
    for name in ("MAX_TIMEOUT_MS", "MAX_PERIOD_MS", "MAX_ROUNDS"):
        assert getattr(C, name) == doc[name], name
    assert C.PROTO_VERSION == P.PROTO_VERSION == 1
    assert C.BROADCAST == P.BROADCAST == 255
