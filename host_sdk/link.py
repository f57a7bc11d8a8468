"""The request/reply link over one port: sequence numbers, timeouts, retries, statistics.

A :class:`Link` owns one transport (one port) and is its only reader. The port may carry one
board (a USB board) or several sharing a bus (RS-485): frames carry the board address, and a
broadcast reaches every board on the port in one frame.

Reliability rules (``docs/protocol.md``):

* every request gets the next sequence number of the link (wrapping at 2**32);
* a request that times out is resent with the SAME sequence number, so a board that did execute
  it answers from its reply cache instead of executing it twice;
* a reply is accepted only if it echoes the request's sequence number and comes from the
  addressed board; anything else (a late reply to an earlier request, another board's frame,
  the host's own echo on a half-duplex bus, noise) is ignored and counted;
* an error status raises :class:`~host_sdk.errors.NodeError`; a board silent after every retry
  raises :class:`~host_sdk.errors.TransportError` naming the board and the port.

:attr:`Link.stats` counts frames and bytes both ways, so benchmarks can report bytes on the
wire per training sample.
"""

from __future__ import annotations

import math
import secrets
import threading
import time
from dataclasses import asdict, dataclass, fields
from typing import Any

from . import protocol
from .errors import ConfigError, NodeError, ProtocolError, TransportError
from .transport import Transport

__all__ = ["Link", "LinkStats"]

_SEQ_MOD = 2**32


@dataclass
class LinkStats:
    """Traffic counters of one link (all since the link was opened).

    Attributes:
        requests: addressed requests made (each counted once, however many attempts).
        broadcasts: broadcast frames sent.
        frames_sent: frames written, retries included.
        frames_received: frames received with a valid CRC.
        bytes_sent: bytes written to the port.
        bytes_received: bytes read from the port (noise included).
        retries: requests resent after a timeout.
        timeouts: attempts that got no matching reply in time.
        crc_errors: received frames dropped for a bad CRC or bad COBS.
        oversize: received frames dropped for exceeding ``MAX_FRAME``.
        bad_frames: frames with a valid CRC that were not a valid reply.
        stale: valid replies ignored because of their sequence number or address.
        errors: error replies (raised as NodeError).
    """

    requests: int = 0
    broadcasts: int = 0
    frames_sent: int = 0
    frames_received: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    retries: int = 0
    timeouts: int = 0
    crc_errors: int = 0
    oversize: int = 0
    bad_frames: int = 0
    stale: int = 0
    errors: int = 0

    @property
    def bytes_total(self) -> int:
        """Bytes on the wire in both directions."""
        return self.bytes_sent + self.bytes_received

    def copy(self) -> LinkStats:
        """A snapshot of the counters."""
        return LinkStats(**asdict(self))

    def __sub__(self, other: LinkStats) -> LinkStats:
        """Counters accumulated between snapshot ``other`` and this one."""
        return LinkStats(**{f.name: getattr(self, f.name) - getattr(other, f.name) for f in fields(self)})

    def __add__(self, other: LinkStats) -> LinkStats:
        """Sum of two sets of counters (e.g. over the links of a rig)."""
        return LinkStats(**{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)})

    def as_dict(self) -> dict[str, int]:
        """The counters as a plain dict (for JSON summaries), with ``bytes_total``."""
        out = asdict(self)
        out["bytes_total"] = self.bytes_total
        return out


def _command_name(command: int) -> str:
    try:
        return protocol.Command(command).name
    except ValueError:
        return f"command {command}"


def _status_name(status: int) -> str:
    try:
        return protocol.Status(status).name
    except ValueError:
        return f"status {status}"


class Link:
    """Requests and replies over one port, for the boards on it.

    Args:
        transport: the open port (the link becomes its only reader and closes it).
        timeout: seconds to wait for a reply, per attempt.
        retries: resends after a timeout (so up to ``1 + retries`` attempts per request).
        name: a label for messages (defaults to the transport's URL).
        first_seq: sequence number of the first frame. By default a random number in
            ``[2**24, 2**31)``, so a restarted host never reuses the sequence number a board
            last cached, and every sequence number of a run has the same encoded length.

    Raises:
        ConfigError: ``timeout`` not a positive finite number, ``retries`` negative,
            ``first_seq`` outside ``0 .. 2**32 - 1``.

    Thread-safe: concurrent calls are serialised (one request in flight per port).
    """

    def __init__(
        self,
        transport: Transport,
        *,
        timeout: float = 0.5,
        retries: int = 3,
        name: str = "",
        first_seq: int | None = None,
    ) -> None:
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not (
            math.isfinite(timeout) and timeout > 0
        ):
            raise ConfigError(f"link timeout must be a positive number of seconds, got {timeout!r}")
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ConfigError(f"link retries must be an integer >= 0, got {retries!r}")
        if first_seq is None:
            first_seq = 2**24 + secrets.randbelow(2**31 - 2**24)
        elif isinstance(first_seq, bool) or not isinstance(first_seq, int) or not 0 <= first_seq < _SEQ_MOD:
            raise ConfigError(f"first_seq must be an integer 0..{_SEQ_MOD - 1}, got {first_seq!r}")
        self.transport = transport
        self.url: str = transport.url
        self.name = name or transport.url
        self.timeout = float(timeout)
        self.retries = retries
        self.stats = LinkStats()
        self._seq = first_seq
        self._deframer = protocol.Deframer()
        self._lock = threading.Lock()
        self._closed = False

    # -- public API ----------------------------------------------------------------------------

    @property
    def next_seq(self) -> int:
        """The sequence number the next request or broadcast will carry."""
        return self._seq

    def request(self, address: int, command: int, args: dict[str, Any] | None = None) -> dict[str, Any]:
        """Send a request to one board and return its result map.

        Args:
            address: the board's address, 0..254.
            command: a :class:`~host_sdk.protocol.Command`.
            args: the argument map.

        Raises:
            NodeError: the board answered with an error status (``status``, ``address`` and the
                board's message are in the exception).
            TransportError: no valid reply after every attempt, or the port failed.
            ProtocolError: the request cannot be encoded (a local error: bad args).
            ConfigError: ``address`` is not 0..254.
        """
        if isinstance(address, bool) or not isinstance(address, int) or not 0 <= address < protocol.BROADCAST:
            raise ConfigError(
                f"board address must be 0..{protocol.BROADCAST - 1}, got {address!r} "
                "(use broadcast() to reach every board)"
            )
        with self._lock:
            self._check_open()
            seq = self._take_seq()
            frame = protocol.encode_request(seq, address, command, args or {})
            self.stats.requests += 1
            for attempt in range(1 + self.retries):
                if attempt:
                    self.stats.retries += 1
                self._write(frame)
                reply = self._await(seq, address)
                if reply is None:
                    self.stats.timeouts += 1
                    continue
                if not reply.ok:
                    self.stats.errors += 1
                    raise NodeError(
                        f"board {address} on {self.name}: {_command_name(command)}: "
                        f"{_status_name(reply.status)}: {reply.result}",
                        status=int(reply.status),
                        address=address,
                    )
                return reply.result  # type: ignore[no-any-return]
            raise TransportError(
                f"board {address} on {self.name} did not answer {_command_name(command)} "
                f"(seq {seq}) after {1 + self.retries} attempts of {self.timeout:g} s"
            )

    def broadcast(self, command: int, args: dict[str, Any] | None = None) -> None:
        """Send one frame to every board on the port; no reply is expected.

        Raises:
            TransportError: the port failed.
            ProtocolError: the request cannot be encoded.
        """
        with self._lock:
            self._check_open()
            seq = self._take_seq()
            frame = protocol.encode_request(seq, protocol.BROADCAST, command, args or {})
            self.stats.broadcasts += 1
            self._write(frame)

    def close(self) -> None:
        """Close the port (idempotent)."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self.transport.close()

    def __enter__(self) -> Link:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Link({self.name!r}, timeout={self.timeout:g}, retries={self.retries})"

    # -- internals -----------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise TransportError(f"link {self.name} is closed")

    def _take_seq(self) -> int:
        seq = self._seq
        self._seq = (seq + 1) % _SEQ_MOD
        return seq

    def _write(self, frame: bytes) -> None:
        self.transport.write(frame)
        self.stats.frames_sent += 1
        self.stats.bytes_sent += len(frame)

    def _await(self, seq: int, address: int) -> protocol.Reply | None:
        """Read until the reply to (seq, address) arrives or the attempt's timeout passes."""
        deadline = time.monotonic() + self.timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            data = self.transport.read(remaining)
            if not data:
                return None
            self.stats.bytes_received += len(data)
            found: protocol.Reply | None = None
            for payload in self._deframer.feed(data):
                self.stats.frames_received += 1
                try:
                    reply = protocol.decode_reply(payload)
                except ProtocolError:
                    self.stats.bad_frames += 1
                    continue
                if found is None and reply.seq == seq and reply.address == address:
                    found = reply
                else:
                    self.stats.stale += 1
            self.stats.crc_errors = self._deframer.crc_errors
            self.stats.oversize = self._deframer.oversize
            if found is not None:
                return found
