"""In-process boards: the firmware imported under CPython, on an emulator HAL bound to the world.

An :class:`InProcessBoard` boots the way ``firmware/main.py`` boots a board: it reads
``board.cfg`` from its flash directory, builds the HAL and a ``mnnfw.server.Server`` with the
configured address (the server reads ``fw.hash`` from the flash itself), and from then on
passes every byte it is fed to the server. A REBOOT builds a fresh server on a fresh HAL from
the same flash (records, boot counter and the board's clock carry over); a REPL command leaves
the board silent until it is restarted, as a real board sitting at its REPL ignores frames.

A :class:`Bus` is an endpoint for ``emu://NAME`` (see :mod:`host_sdk.transport`): it passes
the bytes it is fed to every board on it, in address order, and returns their replies, as boards
sharing one RS-485 pair would hear and answer. A rig with one port per board has one bus per
board.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Sequence
from typing import Any

from ..errors import ConfigError
from ..firmware.mnnfw.server import Server
from .hal import BoardWiring, EmuHal

__all__ = ["InProcessBoard", "Bus", "BOARD_CFG"]

BOARD_CFG = "board.cfg"
"""Name of a board's boot configuration file in its flash (JSON, read by ``main.py``)."""


class InProcessBoard:
    """One emulated board running the firmware under CPython.

    Args:
        wiring: the board's wiring into the world.
        flash_dir: the board's flash directory (must hold ``board.cfg``).

    Attributes:
        state: ``"running"``, ``"repl"`` (left the protocol loop) or ``"off"`` (killed).
        server: the firmware's protocol server of the current boot.
        starts: number of boots since this object was built.
    """

    def __init__(self, wiring: BoardWiring, flash_dir: str) -> None:
        self.wiring = wiring
        self.address = wiring.address
        self.flash_dir = str(flash_dir)
        self.state = "off"
        self.starts = 0
        self.server: Server | None = None
        self.hal: EmuHal | None = None
        self._lock = threading.Lock()
        self.boot()

    def _config(self) -> dict[str, Any]:
        path = os.path.join(self.flash_dir, BOARD_CFG)
        try:
            with open(path, encoding="utf-8") as f:
                cfg = json.load(f)
        except OSError as e:
            raise ConfigError(f"board {self.address}: cannot read {path}: {e.strerror or e}") from e
        except ValueError as e:
            raise ConfigError(f"board {self.address}: {path} is not valid JSON: {e}") from e
        if not isinstance(cfg, dict):
            raise ConfigError(f"board {self.address}: {path} must hold a JSON object")
        return cfg

    def boot(self) -> None:
        """Start the board from its flash, as a power-up does."""
        cfg = self._config()
        address = cfg.get("address", 0)
        if not isinstance(address, int) or not 0 <= address <= 254:
            raise ConfigError(f"board {self.address}: board.cfg address must be 0..254, got {address!r}")
        with self._lock:
            self.hal = EmuHal(self.wiring, self.flash_dir)
            self.server = Server(self.hal, address=address)
            self.state = "running"
            self.starts += 1

    def kill(self) -> None:
        """Cut the board's power: it answers nothing until :meth:`boot`."""
        with self._lock:
            self.state = "off"
            self.server = None
            self.hal = None

    def feed(self, data: bytes) -> bytes:
        """Pass wire bytes to the firmware; return its reply bytes.

        A board that asked to reboot is rebooted after its reply (the reply is on the wire
        before the reset); a board at its REPL or switched off answers nothing.
        """
        with self._lock:
            server = self.server
            if self.state != "running" or server is None:
                return b""
            out = server.feed(data)
            if server.want_repl:
                self.state = "repl"
        if self.state == "running" and server.want_reboot:
            self.boot()
        return bytes(out) if out else b""


class Bus:
    """The endpoint of one port: every board on it hears every byte.

    Args:
        boards: the boards on this port.

    Boards answer in address order; a broadcast gets no reply from anyone.
    """

    def __init__(self, boards: Sequence[InProcessBoard]) -> None:
        self.boards = sorted(boards, key=lambda b: b.address)
        self._lock = threading.Lock()
        self.bytes_in = 0
        self.bytes_out = 0

    def feed(self, data: bytes) -> bytes:
        """Hand ``data`` to every board on the port; return their replies, concatenated."""
        with self._lock:
            self.bytes_in += len(data)
            out = b"".join(board.feed(data) for board in self.boards)
            self.bytes_out += len(out)
            return out
