"""Pseudo-terminals: how emulated boards look like USB serial ports to the host.

:class:`Pty` is one raw-mode terminal whose two ends this process holds open for its whole life,
so the host may open and close the slave path (``/dev/pts/N``) at will and a board behind the
master may restart without the port disappearing. :class:`PtyBridge` serves in-process endpoints
(anything with ``feed(data) -> bytes``) on terminals, for ``mnn emulate`` without MicroPython.
:class:`PtyClient` lets the emulator itself talk to a board on a terminal (readiness checks and
provisioning) through the host's protocol codec.
"""

from __future__ import annotations

import os
import selectors
import socket
import threading
import time
import tty
from collections.abc import Mapping
from typing import Any

from .. import protocol
from ..errors import ProtocolError, TransportError
from ..transport import Endpoint

__all__ = ["Pty", "PtyBridge", "PtyClient"]

_PENDING_MAX = 1 << 16  # reply bytes kept for a host that does not read (then dropped)


class Pty:
    """A pseudo-terminal in raw mode whose both ends this process keeps open.

    Attributes:
        master: the master fd (a board's side).
        slave: an fd of the slave side, held so the terminal never hangs up.
        path: the slave's device path, which the host opens.
    """

    def __init__(self) -> None:
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        self.path = os.ttyname(self.slave)

    def close(self) -> None:
        """Close both ends (idempotent)."""
        for fd in (self.master, self.slave):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.master = self.slave = -1


class PtyBridge:
    """Serve in-process endpoints on pseudo-terminals, from one background thread.

    Args:
        endpoints: a key (any label) -> endpoint; each gets its own terminal.

    Attributes:
        ptys: key -> its terminal; ``ptys[key].path`` is what the host opens.
    """

    def __init__(self, endpoints: Mapping[Any, Endpoint]) -> None:
        self._endpoints = dict(endpoints)
        self.ptys: dict[Any, Pty] = {}
        try:
            for key in self._endpoints:
                self.ptys[key] = Pty()
        except OSError:
            for p in self.ptys.values():
                p.close()
            raise
        self._sel = selectors.DefaultSelector()
        self._pending: dict[int, bytearray] = {}
        self._wake_r, self._wake_w = socket.socketpair()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="mnn-pty-bridge", daemon=True)

    def start(self) -> None:
        """Start serving."""
        for key, p in self.ptys.items():
            os.set_blocking(p.master, False)
            self._pending[p.master] = bytearray()
            self._sel.register(p.master, selectors.EVENT_READ, key)
        self._sel.register(self._wake_r, selectors.EVENT_READ, None)
        self._thread.start()

    def _run(self) -> None:
        while not self._stopping:
            for sk, events in self._sel.select(timeout=1.0):
                if sk.data is None:
                    return
                fd = int(sk.fd)
                if events & selectors.EVENT_READ:
                    try:
                        data = os.read(fd, 4096)
                    except (BlockingIOError, InterruptedError):
                        data = None
                    except OSError:
                        data = b""
                    if data:
                        reply = self._endpoints[sk.data].feed(data)
                        if reply:
                            pending = self._pending[fd]
                            pending += reply
                            if len(pending) > _PENDING_MAX:
                                del pending[: len(pending) - _PENDING_MAX]
                self._flush(fd, sk.data)

    def _flush(self, fd: int, key: Any) -> None:
        pending = self._pending[fd]
        while pending:
            try:
                n = os.write(fd, pending)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                pending.clear()
                break
            del pending[:n]
        want = selectors.EVENT_READ | (selectors.EVENT_WRITE if pending else 0)
        self._sel.modify(fd, want, key)

    def stop(self) -> None:
        """Stop serving, join the thread and close every terminal (idempotent)."""
        if self._stopping:
            return
        self._stopping = True
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass
        if self._thread.is_alive():
            self._thread.join(timeout=5.0)
        self._sel.close()
        self._wake_r.close()
        self._wake_w.close()
        for p in self.ptys.values():
            p.close()


class PtyClient:
    """The emulator's own requests to a board on a terminal, through the slave fd it holds.

    Args:
        pty: the board's terminal.
        name: a label for errors.
        seq0: first sequence number (chosen far from the host's).
    """

    def __init__(self, pty: Pty, name: str, seq0: int = 0xFFFFFF00) -> None:
        self.pty = pty
        self.name = name
        self.seq = seq0
        self._deframer = protocol.Deframer()

    def drain(self) -> bytes:
        """Discard whatever is waiting to be read from the board; return it."""
        got = bytearray()
        fd = self.pty.slave
        while _readable(fd, 0.0):
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            got += chunk
        self._deframer = protocol.Deframer()
        return bytes(got)

    def request(
        self, address: int, command: int, args: dict[str, Any] | None = None, *, timeout: float = 5.0
    ) -> dict[str, Any]:
        """Send one request and return the result map of the reply.

        Raises:
            TransportError: no reply within ``timeout`` seconds.
            NodeError: the board answered with an error status.
        """
        self.seq = (self.seq + 1) & 0xFFFFFFFF
        seq = self.seq
        frame = protocol.encode_request(seq, address, command, args or {})
        fd = self.pty.slave
        view = memoryview(frame)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not _readable(fd, left):
                raise TransportError(f"{self.name}: no reply within {timeout:g} s")
            data = os.read(fd, 4096)
            for payload in self._deframer.feed(data):
                try:
                    reply = protocol.decode_reply(payload)
                except ProtocolError:
                    continue
                if reply.seq == seq:
                    return reply.check()


def _readable(fd: int, timeout: float) -> bool:
    sel = selectors.DefaultSelector()
    try:
        sel.register(fd, selectors.EVENT_READ)
        return bool(sel.select(timeout))
    finally:
        sel.close()
