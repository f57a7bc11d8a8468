"""Handshake: every board answers HELLO with this host's protocol and firmware hash."""

from __future__ import annotations

import pytest

from hil_support import Hil
from host_sdk import protocol
from host_sdk.errors import NodeError
from host_sdk.fwinfo import firmware_hash


def test_every_board_answers_with_this_firmware(hil: Hil) -> None:
    with hil.session() as session:
        hellos = session.handshake()
    assert sorted(hellos) == sorted(b.address for b in hil.rig.boards)
    for spec in hil.rig.boards:
        hello = hellos[spec.address]
        assert (hello["proto"], hello["firmware_hash"], hello["address"]) == (
            protocol.PROTO_VERSION, firmware_hash(), spec.address)
        caps = hello["caps"]
        assert (caps["force"], caps["disp"]) == (spec.force, spec.disp)
        assert caps["strain"] > max(spec.strain_channels, default=-1)
        assert caps["stiffness"] > max(spec.stiffness_channels, default=-1)
    ids = [h["board"] for h in hellos.values()]
    assert len(set(ids)) == len(ids)  # every board has its own identity
    if hil.emu is not None:
        assert ids == [f"emu-{a}" for a in sorted(hellos)]


def test_a_board_with_other_firmware_is_refused(hil: Hil) -> None:
    with hil.session(expected_hash="0123456789abcdef") as session:
        first = min(b.address for b in hil.rig.boards)
        with pytest.raises(NodeError, match=rf"^board {first} on .* runs firmware {firmware_hash()}, "
                                            r"expected 0123456789abcdef: run `mnn deploy`$"):
            session.handshake()
