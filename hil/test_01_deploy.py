"""Deploy to boards that start empty; deploy again and nothing is copied."""

from __future__ import annotations

import os
from pathlib import Path

from hil_support import Hil
from host_sdk.deploy import board_files, deploy
from host_sdk.fwinfo import firmware_hash


def test_deploy_into_empty_boards(hil: Hil) -> None:
    assert [r.address for r in hil.deployed] == [b.address for b in hil.rig.boards]
    assert all(r.ok and r.firmware_hash == firmware_hash() for r in hil.deployed)
    if hil.emu is None:
        return  # real boards are not empty: what had to be copied was, and the hash checks out
    assert all(listing == [] for listing in hil.before_deploy.values())
    for r in hil.deployed:
        files = board_files(hil.rig, hil.rig.board(r.address))
        assert (r.copied, r.skipped, r.message) == ([f.path for f in files], [], "deployed")
        flash = hil.emu.flash_dirs[r.address]
        assert all(Path(flash, f.path).read_bytes() == f.data for f in files)
        assert not [n for n in os.listdir(flash) if n.endswith(".new")]


def test_a_second_deploy_copies_nothing(hil: Hil) -> None:
    results = deploy(hil.rig, ports=hil.ports, jobs=8)
    assert [(r.copied, r.ok, r.message, r.firmware_hash) for r in results] == (
        [([], True, "up to date", firmware_hash())] * len(hil.rig.boards))
    assert all(len(r.skipped) == len(board_files(hil.rig, hil.rig.board(r.address))) for r in results)
