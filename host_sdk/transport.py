"""Transports by URL: move bytes to and from a port, and nothing else.

A transport knows nothing of frames or boards; :class:`host_sdk.link.Link` builds the
request/reply protocol on top. Every transport has the same three methods, so the coordinator
cannot tell a USB board from an emulated one:

* ``write(data)`` sends bytes;
* ``read(timeout)`` returns whatever bytes are available, waiting up to ``timeout`` seconds for
  the first one, and ``b""`` when none arrived in time;
* ``close()`` releases the port (idempotent).

URLs understood by :func:`open_transport`:

``serial:///dev/ttyACM0?baud=115200``
    A serial port through pyserial, opened exclusively (one reader per port). A bare device
    path (``/dev/ttyACM0``, ``COM3``) means the same with the default baud rate.
``emu://NAME``
    An in-process endpoint registered with :func:`register_endpoint` (the emulator registers
    its boards or buses here). No operating system involved: ``write`` hands the bytes to
    ``endpoint.feed`` and the bytes it returns are what ``read`` gives back.
``loop://``
    pyserial's loopback: bytes written are read back. For tests.
``spy://<inner url>?log=FILE``
    Wraps any other transport and logs every frame in both directions, one line per frame,
    decoded with :mod:`host_sdk.protocol` when it decodes and in hex otherwise, to ``FILE``
    (appended) or to standard error. Options of the inner URL may share the query:
    ``spy://serial:///dev/ttyACM0?baud=115200&log=traffic.txt``.

Malformed URLs raise :class:`~host_sdk.errors.ConfigError`; ports that cannot be opened, read or
written raise :class:`~host_sdk.errors.TransportError`.
"""

from __future__ import annotations

import importlib
import math
import sys
import threading
import time
from typing import IO, Any, Protocol, runtime_checkable
from urllib.parse import parse_qsl, urlencode

from .errors import ConfigError, TransportError

__all__ = [
    "DEFAULT_BAUD",
    "WRITE_TIMEOUT",
    "Endpoint",
    "Transport",
    "SerialTransport",
    "EmuTransport",
    "SpyTransport",
    "open_transport",
    "check_url",
    "register_endpoint",
    "unregister_endpoint",
    "endpoint_names",
    "describe_frame",
]

DEFAULT_BAUD = 115200
"""Baud rate used when a serial URL gives none (USB-CDC ignores it; RS-485 adapters do not)."""

WRITE_TIMEOUT = 2.0
"""Seconds a serial write may block (a board that stopped reading) before TransportError."""


@runtime_checkable
class Transport(Protocol):
    """A byte pipe to one port. See the module docstring for the semantics."""

    url: str

    def write(self, data: bytes) -> None:
        """Send ``data``; raise TransportError if the port fails."""
        ...

    def read(self, timeout: float) -> bytes:
        """Return the bytes available, waiting up to ``timeout`` s for the first; ``b""`` if none."""
        ...

    def close(self) -> None:
        """Release the port. Closing twice is harmless."""
        ...


class Endpoint(Protocol):
    """What ``emu://NAME`` talks to: a byte-level board or bus living in this process."""

    def feed(self, data: bytes) -> bytes:
        """Consume bytes written by the host; return the bytes the board(s) answer."""
        ...


# ---------------------------------------------------------------------------------------------
# URL parsing


_SCHEMES = ("serial", "emu", "loop", "spy")


def _split(url: str) -> tuple[str, str]:
    """Return ``(scheme, rest)``; a string without ``://`` is a bare serial device path."""
    if not isinstance(url, str) or not url.strip():
        raise ConfigError(f"port URL must be a non-empty string, got {url!r}")
    if "://" not in url:
        return "serial", url
    scheme, rest = url.split("://", 1)
    if scheme not in _SCHEMES:
        raise ConfigError(
            f"unknown port URL scheme {scheme!r} in {url!r}: expected one of "
            + ", ".join(s + "://" for s in _SCHEMES)
            + " or a device path"
        )
    return scheme, rest


def _query(url: str, rest: str) -> tuple[str, dict[str, str]]:
    """Split ``path?query`` into the path and a dict of options (each given at most once)."""
    path, _, query = rest.partition("?")
    options: dict[str, str] = {}
    for key, value in parse_qsl(query, keep_blank_values=True, strict_parsing=False):
        if key in options:
            raise ConfigError(f"option {key!r} given twice in port URL {url!r}")
        options[key] = value
    return path, options


def _serial_options(url: str, rest: str) -> tuple[str, int]:
    """Device path and baud rate of a ``serial://`` URL (``rest`` is after the scheme)."""
    device, options = _query(url, rest)
    unknown = sorted(set(options) - {"baud"})
    if unknown:
        raise ConfigError(f"unknown option {unknown[0]!r} in port URL {url!r}: expected baud")
    if not device:
        raise ConfigError(f"port URL {url!r} names no device")
    baud_text = options.get("baud", str(DEFAULT_BAUD))
    try:
        baud = int(baud_text)
    except ValueError:
        baud = 0
    if baud <= 0:
        raise ConfigError(f"baud in port URL {url!r} must be a positive integer, got {baud_text!r}")
    return device, baud


def _spy_options(url: str, rest: str) -> tuple[str, str | None]:
    """Inner URL and log file of a ``spy://`` URL; ``log`` is removed from the shared query."""
    inner, _, query = rest.partition("?")
    log: str | None = None
    kept: list[tuple[str, str]] = []
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key == "log":
            if log is not None:
                raise ConfigError(f"option 'log' given twice in port URL {url!r}")
            if not value:
                raise ConfigError(f"option 'log' in port URL {url!r} names no file")
            log = value
        else:
            kept.append((key, value))
    if kept:
        inner = inner + "?" + urlencode(kept)
    if not inner:
        raise ConfigError(f"port URL {url!r} wraps no inner URL: expected spy://<url>")
    if inner.startswith("spy://"):
        raise ConfigError(f"port URL {url!r} nests spy:// inside spy://")
    return inner, log


def check_url(url: str) -> None:
    """Validate the syntax of a port URL without opening anything.

    Raises:
        ConfigError: unknown scheme, unknown option, bad baud rate, missing device or name.
    """
    scheme, rest = _split(url)
    if scheme == "serial":
        _serial_options(url, rest)
    elif scheme == "emu":
        if not rest:
            raise ConfigError(f"port URL {url!r} names no endpoint: expected emu://NAME")
    elif scheme == "loop":
        _path, options = _query(url, rest)
        if options:
            raise ConfigError(f"port URL {url!r}: loop:// takes no options")
    else:
        inner, _log = _spy_options(url, rest)
        check_url(inner)


# ---------------------------------------------------------------------------------------------
# serial:// and loop:// (pyserial)


def _pyserial() -> Any:
    """pyserial, imported when a serial port is first used."""
    return importlib.import_module("serial")


class SerialTransport:
    """A pyserial port (a real serial device, a pseudo-terminal, or pyserial's ``loop://``).

    Not built directly: use :func:`open_transport`.
    """

    def __init__(self, url: str, port: Any) -> None:
        self.url = url
        self._port = port
        self._timeout: float | None = port.timeout
        self._closed = False

    def _fail(self, action: str, e: BaseException) -> TransportError:
        return TransportError(f"cannot {action} {self.url}: {e}")

    def write(self, data: bytes) -> None:
        """Send all of ``data`` (blocks at most :data:`WRITE_TIMEOUT` seconds)."""
        serial = _pyserial()

        if self._closed:
            raise TransportError(f"port {self.url} is closed")
        try:
            self._port.write(data)
        except serial.SerialTimeoutException as e:
            raise TransportError(
                f"write to {self.url} timed out after {WRITE_TIMEOUT} s (is the board reading?)"
            ) from e
        except (serial.SerialException, OSError) as e:
            raise self._fail("write to", e) from e

    def read(self, timeout: float) -> bytes:
        """Return the bytes available, waiting up to ``timeout`` seconds for the first one."""
        serial = _pyserial()

        if self._closed:
            raise TransportError(f"port {self.url} is closed")
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not math.isfinite(timeout):
            raise ConfigError(f"read timeout must be a finite number of seconds, got {timeout!r}")
        timeout = max(0.0, float(timeout))
        try:
            if timeout != self._timeout:
                # pyserial reconfigures the port on every change: only touch it when needed.
                self._port.timeout = timeout
                self._timeout = timeout
            first = self._port.read(1)
            if not first:
                return b""
            waiting = self._port.in_waiting
            return first + bytes(self._port.read(waiting)) if waiting else bytes(first)
        except (serial.SerialException, OSError) as e:
            raise self._fail("read from", e) from e

    def close(self) -> None:
        """Close the port; harmless if already closed."""
        if not self._closed:
            self._closed = True
            try:
                self._port.close()
            except Exception:  # noqa: BLE001 - a failing close must not mask the caller's error
                pass

    def __repr__(self) -> str:
        return f"SerialTransport({self.url!r})"


def _open_serial(url: str, rest: str) -> SerialTransport:
    serial = _pyserial()

    device, baud = _serial_options(url, rest)
    try:
        port = serial.Serial(
            device, baudrate=baud, timeout=0.1, write_timeout=WRITE_TIMEOUT, exclusive=True
        )
    except (serial.SerialException, OSError, ValueError) as e:
        reason = str(e).strip() or type(e).__name__
        raise TransportError(f"cannot open serial port {device}: {reason}") from e
    return SerialTransport(url, port)


def _open_loop(url: str) -> SerialTransport:
    serial = _pyserial()

    check_url(url)
    port = serial.serial_for_url("loop://", timeout=0.1)
    return SerialTransport(url, port)


# ---------------------------------------------------------------------------------------------
# emu:// (in-process endpoints)


_registry: dict[str, Endpoint] = {}
_open_names: set[str] = set()
_registry_lock = threading.Lock()


def register_endpoint(name: str, endpoint: Endpoint) -> None:
    """Make ``endpoint`` reachable as ``emu://name``.

    Raises:
        ConfigError: the name is empty, or another endpoint is registered under it.
    """
    if not isinstance(name, str) or not name or "?" in name:
        raise ConfigError(f"endpoint name must be a non-empty string without '?', got {name!r}")
    if not callable(getattr(endpoint, "feed", None)):
        raise ConfigError(f"endpoint for emu://{name} has no feed(data) -> bytes method")
    with _registry_lock:
        current = _registry.get(name)
        if current is not None and current is not endpoint:
            raise ConfigError(f"emu://{name} is already registered")
        _registry[name] = endpoint


def unregister_endpoint(name: str) -> None:
    """Forget ``emu://name`` (harmless if it is not registered). Open transports keep working."""
    with _registry_lock:
        _registry.pop(name, None)


def endpoint_names() -> list[str]:
    """The registered ``emu://`` names, sorted."""
    with _registry_lock:
        return sorted(_registry)


class EmuTransport:
    """A transport to an in-process endpoint. Not built directly: use :func:`open_transport`.

    ``write`` runs the endpoint synchronously and queues its answer; ``read`` returns the queued
    bytes at once, or ``b""`` without waiting (nothing can arrive later: the endpoint has
    already answered everything it will answer).
    """

    def __init__(self, url: str, name: str, endpoint: Endpoint) -> None:
        self.url = url
        self.name = name
        self._endpoint = endpoint
        self._pending = bytearray()
        self._closed = False

    def write(self, data: bytes) -> None:
        """Hand ``data`` to the endpoint and queue its reply bytes."""
        if self._closed:
            raise TransportError(f"port {self.url} is closed")
        reply = self._endpoint.feed(bytes(data))
        if reply:
            self._pending += reply

    def read(self, timeout: float) -> bytes:
        """Return the queued reply bytes, or ``b""`` at once when there are none."""
        if self._closed:
            raise TransportError(f"port {self.url} is closed")
        data = bytes(self._pending)
        self._pending.clear()
        return data

    def close(self) -> None:
        """Release the name so it can be opened again; harmless if already closed."""
        if not self._closed:
            self._closed = True
            with _registry_lock:
                _open_names.discard(self.name)

    def __repr__(self) -> str:
        return f"EmuTransport({self.url!r})"


def _open_emu(url: str, rest: str) -> EmuTransport:
    check_url(url)
    name = rest
    with _registry_lock:
        endpoint = _registry.get(name)
        if endpoint is None:
            known = ", ".join(sorted(_registry)) or "none"
            raise TransportError(f"no emulated endpoint emu://{name} (known: {known})")
        if name in _open_names:
            raise TransportError(f"emu://{name} is already open (one reader per port)")
        _open_names.add(name)
    return EmuTransport(url, name, endpoint)


# ---------------------------------------------------------------------------------------------
# spy://


class _FrameSplitter:
    """Cut one direction of a byte stream at ``0x00`` delimiters."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        frames: list[bytes] = []
        self._buffer += data
        while True:
            end = self._buffer.find(0)
            if end < 0:
                return frames
            frames.append(bytes(self._buffer[: end + 1]))
            del self._buffer[: end + 1]

    def rest(self) -> bytes:
        data = bytes(self._buffer)
        self._buffer.clear()
        return data


def describe_frame(frame: bytes, *, outgoing: bool) -> str:
    """One-line description of a delimited frame as sent (``outgoing``) or received by the host.

    Requests and replies that decode are shown as ``REQ seq=.. addr=.. COMMAND {args}`` and
    ``REP seq=.. addr=.. STATUS {result}``; anything else as hex with the reason it did not
    decode.
    """
    from . import protocol
    from .errors import ProtocolError

    body = frame[:-1] if frame.endswith(b"\x00") else frame
    try:
        payload = protocol.decode_frame(body)
        if outgoing:
            request = protocol.decode_request(payload)
            return (
                f"REQ seq={request.seq} addr={request.address} "
                f"{_command_name(request.command)} {_show_value(request.args)}"
            )
        reply = protocol.decode_reply(payload)
        return (
            f"REP seq={reply.seq} addr={reply.address} "
            f"{_status_name(reply.status)} {_show_value(reply.result)}"
        )
    except ProtocolError as e:
        return f"RAW {frame.hex()} ({e})"


def _show_value(value: Any) -> str:
    """Like repr, but floats that are float32 values (all floats on the wire) print shortest."""
    if isinstance(value, float):
        import numpy as np

        single = np.float32(value)
        return str(single) if float(single) == value else repr(value)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k!r}: {_show_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_show_value(v) for v in value) + "]"
    return repr(value)


def _command_name(code: int) -> str:
    from .protocol import Command

    try:
        return Command(code).name
    except ValueError:
        return f"COMMAND_{code}"


def _status_name(code: int) -> str:
    from .protocol import Status

    try:
        return Status(code).name
    except ValueError:
        return f"STATUS_{code}"


class SpyTransport:
    """Wrap a transport and log every frame both ways. Not built directly: use
    :func:`open_transport` with a ``spy://`` URL."""

    def __init__(self, url: str, inner: Transport, log: IO[str], owns_log: bool) -> None:
        self.url = url
        self.inner = inner
        self._log = log
        self._owns_log = owns_log
        self._t0 = time.monotonic()
        self._out = _FrameSplitter()
        self._in = _FrameSplitter()
        self._closed = False
        self._line(f"# spy on {inner.url}")

    def _line(self, text: str) -> None:
        try:
            self._log.write(text + "\n")
            self._log.flush()
        except (OSError, ValueError):
            pass  # a log that cannot be written never breaks the traffic it watches

    def _emit(self, frames: list[bytes], outgoing: bool) -> None:
        arrow = "->" if outgoing else "<-"
        for frame in frames:
            elapsed = time.monotonic() - self._t0
            self._line(f"{elapsed:12.6f} {arrow} {describe_frame(frame, outgoing=outgoing)}")

    def write(self, data: bytes) -> None:
        """Log the frames completed by ``data``, then send it."""
        self._emit(self._out.feed(data), outgoing=True)
        self.inner.write(data)

    def read(self, timeout: float) -> bytes:
        """Read from the inner transport and log the frames completed by what arrived."""
        data = self.inner.read(timeout)
        if data:
            self._emit(self._in.feed(data), outgoing=False)
        return data

    def close(self) -> None:
        """Log any unterminated bytes, close the inner transport and the log file."""
        if self._closed:
            return
        self._closed = True
        try:
            self.inner.close()
        finally:
            for rest, arrow in ((self._out.rest(), "->"), (self._in.rest(), "<-")):
                if rest:
                    elapsed = time.monotonic() - self._t0
                    self._line(f"{elapsed:12.6f} {arrow} PARTIAL {rest.hex()}")
            if self._owns_log:
                self._log.close()

    def __repr__(self) -> str:
        return f"SpyTransport({self.url!r})"


def _open_spy(url: str, rest: str) -> SpyTransport:
    inner_url, log_path = _spy_options(url, rest)
    check_url(inner_url)
    log: IO[str]
    if log_path is None:
        log, owns = sys.stderr, False
    else:
        try:
            log = open(log_path, "a", encoding="utf-8")  # noqa: SIM115 - closed by the transport
        except OSError as e:
            raise TransportError(f"cannot open spy log {log_path}: {e.strerror or e}") from e
        owns = True
    try:
        inner = open_transport(inner_url)
    except BaseException:
        if owns:
            log.close()
        raise
    return SpyTransport(url, inner, log, owns)


# ---------------------------------------------------------------------------------------------


def open_transport(url: str) -> Transport:
    """Open the port named by ``url`` (see the module docstring for the URL forms).

    Raises:
        ConfigError: the URL is malformed.
        TransportError: the port cannot be opened (missing device, busy port, unknown
            ``emu://`` name).
    """
    scheme, rest = _split(url)
    if scheme == "serial":
        return _open_serial(url, rest)
    if scheme == "emu":
        return _open_emu(url, rest)
    if scheme == "loop":
        return _open_loop(url)
    return _open_spy(url, rest)
