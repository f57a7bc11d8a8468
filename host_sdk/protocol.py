"""Host side of the node wire protocol: the command table, framing and message codec.

Pure: no I/O and no pyserial. A frame on the wire is ``COBS(payload ‖ CRC32(payload))``
followed by one ``0x00``; a payload is a msgpack array ``[version, seq, address, command,
args]`` (request) or ``[version, seq, address, status, result]`` (reply). The numbers mirror
``firmware/mnnfw/commands.py`` and ``docs/protocol.md``; ``tests/test_command_table.py`` checks
the mirror.

Maps are written with their keys in sorted order and every float as float32, so a message has
exactly one encoding, the same bytes the firmware's own codec produces.
"""

from __future__ import annotations

import binascii
import math
import struct
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

import msgpack  # type: ignore[import-untyped]

from host_sdk.errors import NodeError, ProtocolError

PROTO_VERSION = 1
"""Protocol version carried in every message."""
BROADCAST = 255
"""Address of a request for every board on a bus; broadcasts get no reply."""
MAX_FRAME = 1024
"""Largest payload + CRC32 in bytes, before COBS."""
MAX_PAYLOAD = MAX_FRAME - 4
"""Largest msgpack payload in bytes."""
MAX_SEQ = 0xFFFFFFFF
"""Largest sequence number."""
MAX_DEPTH = 6
"""Deepest nesting of msgpack containers the firmware decodes."""
MAX_ITEMS = 255
"""Most elements of one msgpack array or map the firmware decodes."""
MAX_BONDS = 16
"""Most bonds one board owns."""
MAX_TABLE = 8
"""Most points of one stiffness-to-actuator calibration table."""
MAX_N = 64
"""Most readings averaged per channel in TARE, SAMPLE and READ_OUTPUT."""
MAX_SAMPLE = 1024
"""Sample indices within one step run from 0 to ``MAX_SAMPLE - 1``."""
MAX_STEP = 0x7FFFFFFF
"""Largest step id."""

_FLT_MAX = 3.4028234663852886e38


class Command(IntEnum):
    """Request command codes."""

    HELLO = 1
    CONFIGURE = 2
    TARE = 3
    SET_LOAD = 4
    SAMPLE = 5
    READ_OUTPUT = 6
    READ_BONDS = 7
    UPDATE = 8
    SET_STIFFNESS = 9
    STATUS = 10
    REPL = 11
    DISCARD = 12
    REBOOT = 13
    READ_RAW = 14
    SET_ACTUATOR = 15


class Status(IntEnum):
    """Reply status codes (0 = success)."""

    OK = 0
    BAD_VERSION = 1
    UNKNOWN_COMMAND = 2
    BAD_ARGS = 3
    BAD_STATE = 4
    NOT_CAPABLE = 5
    HW_ERROR = 6
    INTERNAL = 7


class Phase(IntEnum):
    """SAMPLE phases."""

    FWD = 0
    ADJ = 1


class Optimizer(IntEnum):
    """UPDATE optimisers."""

    SGD = 0
    ADAM = 1


@dataclass(frozen=True)
class Request:
    """A decoded request message."""

    seq: int
    address: int
    command: int
    args: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Reply:
    """A decoded reply message.

    Attributes:
        seq: echo of the request's sequence number.
        address: the replying board's address.
        status: a :class:`Status` (a plain ``int`` for codes this host does not know).
        result: the result map when ``status`` is OK, else the one-line error message.
    """

    seq: int
    address: int
    status: int
    result: Any

    @property
    def ok(self) -> bool:
        """True when the board reports success."""
        return self.status == Status.OK

    def check(self) -> dict[str, Any]:
        """Return the result map, or raise :class:`NodeError` for an error reply."""
        if self.ok:
            result: dict[str, Any] = self.result
            return result
        try:
            name = Status(self.status).name
        except ValueError:
            name = f"status {self.status}"
        raise NodeError(
            f"board {self.address}: {name}: {self.result}",
            status=int(self.status),
            address=self.address,
        )


# -- framing -------------------------------------------------------------------------------


def crc32(data: bytes) -> int:
    """The ZIP CRC32 of ``data`` (what the frames carry, little-endian)."""
    return binascii.crc32(data) & 0xFFFFFFFF


def cobs_encode(data: bytes) -> bytes:
    """Consistent-overhead byte stuffing of ``data`` (no trailing delimiter).

    Canonical form: a run of 254 non-zero bytes at the very end gets no extra code byte.
    """
    out = bytearray()
    n = len(data)
    start = 0
    while True:
        limit = min(n, start + 254)
        z = data.find(0, start, limit)
        if z >= 0:
            out.append(z - start + 1)
            out += data[start:z]
            start = z + 1
            if start == n:
                out.append(1)
                break
        else:
            out.append(limit - start + 1)
            out += data[start:limit]
            start = limit
            if start == n:
                break
    return bytes(out)


def cobs_decode(data: bytes) -> bytes:
    """Inverse of :func:`cobs_encode`; raises :class:`ProtocolError` on invalid block codes."""
    out = bytearray()
    i = 0
    n = len(data)
    while i < n:
        code = data[i]
        if code == 0:
            raise ProtocolError("COBS: zero byte inside a frame")
        end = i + code
        if end > n:
            raise ProtocolError("COBS: block runs past the end of the frame")
        out += data[i + 1 : end]
        i = end
        if code != 0xFF and i < n:
            out.append(0)
    return bytes(out)


def encode_frame(payload: bytes) -> bytes:
    """Wire bytes of one frame: ``COBS(payload ‖ CRC32 LE)`` and a ``0x00`` delimiter.

    Raises:
        ProtocolError: the payload is empty, or it plus the CRC exceeds :data:`MAX_FRAME`.
    """
    if len(payload) + 4 > MAX_FRAME:
        raise ProtocolError(
            f"frame too large: {len(payload)} + 4 CRC bytes > MAX_FRAME = {MAX_FRAME}"
        )
    if not payload:
        raise ProtocolError("a frame carries at least one payload byte")
    body = bytes(payload) + crc32(payload).to_bytes(4, "little")
    return cobs_encode(body) + b"\x00"


def decode_frame(frame: bytes) -> bytes:
    """Payload of one frame's bytes (delimiter optional); raises :class:`ProtocolError`."""
    if frame.endswith(b"\x00"):
        frame = frame[:-1]
    body = cobs_decode(frame)
    if len(body) > MAX_FRAME:
        raise ProtocolError(f"frame too large: {len(body)} > MAX_FRAME = {MAX_FRAME}")
    if len(body) < 5:
        raise ProtocolError(f"frame too short: {len(body)} bytes")
    payload, tail = body[:-4], body[-4:]
    if crc32(payload) != int.from_bytes(tail, "little"):
        raise ProtocolError("frame CRC mismatch")
    return payload


class Deframer:
    """Incremental receiver: ``feed(bytes)`` returns the payloads of the frames completed.

    Damaged frames (bad COBS, bad CRC, too short) are dropped and counted in ``crc_errors``;
    frames longer than :data:`MAX_FRAME` are dropped and counted in ``oversize``. The receiver
    resynchronises at the next ``0x00``. Runs of ``0x00`` (empty frames) are ignored.
    """

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self.max_frame = max_frame
        self._max_encoded = max_frame + max_frame // 254 + 1
        self._buf = bytearray()
        self._over = False
        self.frames = 0
        self.crc_errors = 0
        self.oversize = 0

    def feed(self, data: bytes) -> list[bytes]:
        """Consume ``data``; return the payloads of every complete, valid frame in it."""
        out: list[bytes] = []
        view = bytes(data)
        start = 0
        while start < len(view):
            z = view.find(0, start)
            chunk = view[start : len(view) if z < 0 else z]
            if not self._over:
                if len(self._buf) + len(chunk) > self._max_encoded:
                    self._over = True
                    self._buf.clear()
                else:
                    self._buf += chunk
            if z < 0:
                break
            start = z + 1
            if self._over:
                self.oversize += 1
                self._over = False
                continue
            if not self._buf:
                continue
            encoded = bytes(self._buf)
            self._buf.clear()
            payload = self._finish(encoded)
            if payload is not None:
                out.append(payload)
        return out

    def _finish(self, encoded: bytes) -> bytes | None:
        try:
            body = cobs_decode(encoded)
        except ProtocolError:
            self.crc_errors += 1
            return None
        if len(body) > self.max_frame:
            self.oversize += 1
            return None
        if len(body) < 5 or crc32(body[:-4]) != int.from_bytes(body[-4:], "little"):
            self.crc_errors += 1
            return None
        self.frames += 1
        return body[:-4]


# -- messages ------------------------------------------------------------------------------


def _canonical(obj: Any, depth: int = 0) -> Any:
    """Plain msgpack-able copy of ``obj``: sorted maps, lists, float32-range floats."""
    if depth > 32:
        raise ProtocolError("message nested too deeply")
    if obj is None or isinstance(obj, (bool, str, bytes)):
        return obj
    if isinstance(obj, int):
        if not -(2**63) <= obj < 2**64:
            raise ProtocolError(f"integer {obj} does not fit msgpack")
        return int(obj)
    if isinstance(obj, float):
        if math.isfinite(obj) and abs(obj) > _FLT_MAX:
            # round as the firmware does (a C cast): past the float32 range means +-inf
            return _round_f32(obj)
        return float(obj)
    if isinstance(obj, (bytearray, memoryview)):
        return bytes(obj)
    if isinstance(obj, dict):
        items = []
        for k, v in obj.items():
            if not isinstance(k, (str, int)) or isinstance(k, bool):
                raise ProtocolError(f"map key {k!r} is not a string or integer")
            items.append((k, _canonical(v, depth + 1)))
        try:
            items.sort(key=lambda kv: kv[0])
        except TypeError as e:
            raise ProtocolError("map keys mix strings and integers") from e
        return dict(items)
    if isinstance(obj, (list, tuple)):
        return [_canonical(x, depth + 1) for x in obj]
    tolist = getattr(obj, "tolist", None)  # numpy scalars and arrays
    if callable(tolist):
        return _canonical(tolist(), depth + 1)
    raise ProtocolError(f"cannot encode a {type(obj).__name__} in a message")


def _round_f32(x: float) -> float:
    try:
        return float(struct.unpack(">f", struct.pack(">f", x))[0])
    except OverflowError:
        return math.copysign(math.inf, x)


def pack(obj: Any) -> bytes:
    """Canonical msgpack bytes of ``obj`` (sorted map keys, float32 floats)."""
    plain = _canonical(obj)
    _check_plain(plain)
    try:
        data: bytes = msgpack.packb(plain, use_bin_type=True, use_single_float=True)
    except (TypeError, ValueError, OverflowError) as e:
        raise ProtocolError(f"cannot encode message: {e}") from e
    return data


def _reject_ext(code: int, data: bytes) -> Any:
    raise ProtocolError(f"msgpack ext type {code} is not allowed")


def _check_plain(obj: Any, depth: int = 0) -> None:
    """Apply the firmware's limits: plain types, nesting and container sizes."""
    if obj is None or isinstance(obj, (bool, int, float, str, bytes)):
        return
    if isinstance(obj, (list, dict)):
        if depth >= MAX_DEPTH:
            raise ProtocolError(f"message nested deeper than {MAX_DEPTH} containers")
        if len(obj) > MAX_ITEMS:
            raise ProtocolError(f"container of {len(obj)} items > MAX_ITEMS = {MAX_ITEMS}")
    if isinstance(obj, list):
        for x in obj:
            _check_plain(x, depth + 1)
        return
    if isinstance(obj, dict):
        for k, v in obj.items():
            _check_plain(v, depth + 1)
        return
    raise ProtocolError(f"unsupported msgpack value of type {type(obj).__name__}")


def unpack(payload: bytes) -> Any:
    """Decode one msgpack value; raises :class:`ProtocolError` for anything unsupported."""
    try:
        obj = msgpack.unpackb(
            bytes(payload),
            raw=False,
            use_list=True,
            strict_map_key=False,
            ext_hook=_reject_ext,
        )
    except ProtocolError:
        raise
    except Exception as e:  # msgpack raises several unrelated types for bad bytes
        raise ProtocolError(f"bad msgpack payload: {e}") from e
    _check_plain(obj)
    return obj


def _check_uint(value: Any, what: str, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= hi:
        raise ProtocolError(f"{what} must be an integer in [0, {hi}], got {value!r}")
    return int(value)


def _message(payload: bytes, kind: str) -> list[Any]:
    msg = unpack(payload)
    if not isinstance(msg, list) or len(msg) != 5:
        raise ProtocolError(f"{kind} must be a 5-element msgpack array")
    if msg[0] != PROTO_VERSION or isinstance(msg[0], bool):
        raise ProtocolError(f"{kind} has protocol version {msg[0]!r}, expected {PROTO_VERSION}")
    return msg


def encode_request(seq: int, address: int, command: int, args: dict[str, Any] | None = None) -> bytes:
    """Wire bytes (a whole frame) of one request.

    Args:
        seq: sequence number, 0 to 2**32 - 1 (a retry reuses it).
        address: board address 0-254, or :data:`BROADCAST`.
        command: a :class:`Command` (or any integer, to test a board's error path).
        args: the argument map (string keys); numpy scalars and arrays are accepted.

    Raises:
        ProtocolError: a field is out of range, a value cannot be encoded, or the frame
            exceeds :data:`MAX_FRAME`.
    """
    seq = _check_uint(seq, "seq", MAX_SEQ)
    address = _check_uint(address, "address", BROADCAST)
    command = _check_uint(command, "command", 0xFFFFFFFF)
    if args is None:
        args = {}
    if not isinstance(args, dict) or not all(isinstance(k, str) for k in args):
        raise ProtocolError("args must be a map with string keys")
    return encode_frame(pack([PROTO_VERSION, seq, address, command, args]))


def decode_request(payload: bytes) -> Request:
    """Decode a request payload (as the boards do); raises :class:`ProtocolError`."""
    msg = _message(payload, "request")
    seq = _check_uint(msg[1], "seq", MAX_SEQ)
    address = _check_uint(msg[2], "address", BROADCAST)
    command = _check_uint(msg[3], "command", 0xFFFFFFFF)
    args = msg[4]
    if not isinstance(args, dict) or not all(isinstance(k, str) for k in args):
        raise ProtocolError("request args must be a map with string keys")
    return Request(seq, address, command, args)


def encode_reply(seq: int, address: int, status: int, result: Any) -> bytes:
    """Wire bytes (a whole frame) of one reply, as a board sends it.

    ``result`` is the result map for :attr:`Status.OK`, else the one-line error message.
    """
    seq = _check_uint(seq, "seq", MAX_SEQ)
    address = _check_uint(address, "address", BROADCAST - 1)
    status = _check_uint(status, "status", 0x7F)
    if status == Status.OK and not isinstance(result, dict):
        raise ProtocolError("an OK reply carries a result map")
    if status != Status.OK and not isinstance(result, str):
        raise ProtocolError("an error reply carries a message string")
    return encode_frame(pack([PROTO_VERSION, seq, address, status, result]))


def decode_reply(payload: bytes) -> Reply:
    """Decode a reply payload; raises :class:`ProtocolError` if it is not a valid reply."""
    msg = _message(payload, "reply")
    seq = _check_uint(msg[1], "seq", MAX_SEQ)
    address = _check_uint(msg[2], "address", BROADCAST - 1)
    code = _check_uint(msg[3], "status", 0x7F)
    status: int
    try:
        status = Status(code)
    except ValueError:
        status = code
    result = msg[4]
    if code == Status.OK:
        if not isinstance(result, dict):
            raise ProtocolError("OK reply without a result map")
    elif not isinstance(result, str):
        raise ProtocolError("error reply without a message string")
    return Reply(seq, address, status, result)
