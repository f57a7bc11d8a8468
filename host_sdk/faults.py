"""Fault injection for the reliability campaign: noisy links, power cuts, damaged hardware.

A :class:`FaultProfile` says what goes wrong and how often; it is parsed from the text that
``--faults`` takes::

    drop=0.01,corrupt=0.01,dup=0.005,delay=0.01,reboot_every=200,cut=frame+flash,seed=3

=================  ===========================================================================
key                meaning
=================  ===========================================================================
``drop``           probability that a byte on the wire is lost (each byte, both directions)
``corrupt``        probability that a byte is replaced by another value
``dup``            probability that a byte arrives twice
``delay``          probability that a whole frame arrives late: after the host has given up
                   waiting for it (so the host retries and then sees both)
``reboot_every``   a board on the port loses power every N requests the host makes of the port
                   (the first cut at a random one among the first N). Retries do not count: at
                   2 % bad bytes a SAMPLE frame needs 6 to 10 attempts, and counting them
                   would cut an input board's power more often than it can hold one batch
``cut``            where a power cut strikes, ``+``-separated, chosen at random per cut:
                   ``frame`` (as a frame arrives: it is lost), ``reply`` (after the board acted
                   on a frame, before its reply leaves), ``update`` (as the board's next UPDATE
                   arrives), ``flash`` (during the board's next flash write: the record on
                   flash is then the old one, the old one beside a torn temporary file, or the
                   new one). Default: all four.
``seed``           seeds every random choice (a profile and a seed give the same faults)
``break``          ``break=B@sN``: bond B breaks at trainer step N (``@fN``: after N frames)
``stall``          ``stall=B@sN``: bond B's stiffness actuator stops moving
``limit``          ``limit=B:LO:HI@sN``: it reaches only the fraction [LO, HI] of its range
``stick``          ``stick=B@sN``: bond B's strain sensor repeats one reading forever
``saturate``       ``saturate=B@sN``: bond B's strain sensor reads full scale
``noise``          ``noise=B:COUNTS@sN``: bond B's strain sensor gets COUNTS rms of noise
=================  ===========================================================================

Link faults and power cuts act on a port: :meth:`FaultInjector.wrap` puts a
:class:`FaultyTransport` around any transport the host opens (so they work on every URL:
``emu://``, ``serial://``, ``spy://``; :func:`open_faulty` also accepts
``faulty://<url>?drop=...``), and :meth:`FaultInjector.wrap_endpoint` puts a
:class:`FaultyEndpoint` in front of an in-process bus, for an emulator that serves other
processes. Power cuts need a :class:`BoardControl` that can switch the boards of an emulated rig
off and on (:class:`EmulatedRigControl`). Sensor, actuator and bond faults act on the emulated
world at the step or frame the profile names (:meth:`FaultInjector.on_batch`).

Everything injected is counted in :attr:`FaultInjector.report` (:class:`FaultReport`).
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import parse_qsl

import msgpack
import numpy as np

from . import protocol
from .errors import ConfigError, ProtocolError
from .transport import Endpoint, Transport, open_transport

if TYPE_CHECKING:
    from .emulator.rig import EmulatedRig
    from .emulator.world import World

__all__ = [
    "CUTS",
    "WORLD_FAULTS",
    "WorldFault",
    "FaultProfile",
    "FaultReport",
    "BoardControl",
    "EmulatedRigControl",
    "LateControl",
    "FaultInjector",
    "FaultyTransport",
    "FaultyEndpoint",
    "open_faulty",
]

CUTS = ("frame", "reply", "update", "flash")
"""Where a power cut may strike (see the module docstring)."""

WORLD_FAULTS = {
    # kind: number of numeric arguments after the bond
    "break": 0,
    "stall": 0,
    "limit": 2,
    "stick": 0,
    "saturate": 0,
    "noise": 1,
}
"""Sensor, actuator and bond faults a profile may schedule, with their argument counts."""

_RATE_KEYS = ("drop", "corrupt", "dup", "delay")
_STATE_FILES = ("state.mp", "state.tmp")
_MAX_PROFILE = 2000  # characters of a profile text


@dataclass(frozen=True)
class WorldFault:
    """One scheduled fault of the emulated world.

    Attributes:
        kind: one of :data:`WORLD_FAULTS`.
        bond: the bond it strikes (0-based).
        args: numeric arguments (``limit``: lo, hi; ``noise``: counts rms).
        at_step: trainer step at whose start it strikes, or None.
        at_frame: number of frames (all ports) after which it strikes, or None.
    """

    kind: str
    bond: int
    args: tuple[float, ...] = ()
    at_step: int | None = None
    at_frame: int | None = None

    def __str__(self) -> str:
        body = ":".join([str(self.bond)] + [f"{a:g}" for a in self.args])
        when = f"s{self.at_step}" if self.at_step is not None else f"f{self.at_frame}"
        return f"{self.kind}={body}@{when}"

    def apply(self, world: World) -> None:
        """Make the fault happen in ``world``."""
        b = self.bond
        if self.kind == "break":
            world.break_bond(b)
        elif self.kind == "stall":
            world.stall_actuator(b)
        elif self.kind == "limit":
            world.limit_actuator(b, self.args[0], self.args[1])
        elif self.kind == "stick":
            world.stick_sensor(b)
        elif self.kind == "saturate":
            world.strain_channel(b).saturate(1)
        elif self.kind == "noise":
            world.strain_channel(b).set_noise(self.args[0])
        else:  # pragma: no cover - parse() admits only known kinds
            raise ConfigError(f"unknown world fault {self.kind!r}")


def _fail(text: str, why: str) -> ConfigError:
    return ConfigError(f"fault profile {text!r}: {why}")


def _parse_rate(text: str, key: str, value: str) -> float:
    try:
        rate = float(value)
    except ValueError:
        raise _fail(text, f"{key} must be a probability, got {value!r}") from None
    if not (math.isfinite(rate) and 0.0 <= rate <= 1.0):
        raise _fail(text, f"{key} must be a probability in [0, 1], got {value!r}")
    return rate


def _parse_int(text: str, key: str, value: str, lo: int) -> int:
    try:
        number = int(value)
    except ValueError:
        raise _fail(text, f"{key} must be an integer, got {value!r}") from None
    if number < lo:
        raise _fail(text, f"{key} must be >= {lo}, got {number}")
    return number


def _parse_world(text: str, kind: str, value: str) -> WorldFault:
    body, at, when = value.partition("@")
    if not at or len(when) < 2 or when[0] not in "sf":
        raise _fail(text, f"{kind}={value}: say when, as @sSTEP (trainer step) or @fFRAMES")
    moment = _parse_int(text, f"{kind} time", when[1:], 0)
    parts = body.split(":")
    want = WORLD_FAULTS[kind]
    if len(parts) != 1 + want:
        shape = ":".join(["BOND"] + ["X"] * want)
        raise _fail(text, f"{kind}={value}: expected {kind}={shape}@sSTEP")
    bond = _parse_int(text, f"{kind} bond", parts[0], 0)
    args: list[float] = []
    for part in parts[1:]:
        try:
            x = float(part)
        except ValueError:
            raise _fail(text, f"{kind}={value}: {part!r} is not a number") from None
        if not math.isfinite(x):
            raise _fail(text, f"{kind}={value}: {part!r} is not finite")
        args.append(x)
    if kind == "limit" and not 0.0 <= args[0] < args[1] <= 1.0:
        raise _fail(text, f"{kind}={value}: need 0 <= LO < HI <= 1")
    if kind == "noise" and args[0] < 0:
        raise _fail(text, f"{kind}={value}: noise must be >= 0 counts")
    step = moment if when[0] == "s" else None
    frame = moment if when[0] == "f" else None
    return WorldFault(kind, bond, tuple(args), step, frame)


@dataclass(frozen=True)
class FaultProfile:
    """What goes wrong, how often (see the module docstring for the keys).

    Build one with :meth:`parse`; ``str(profile)`` gives the canonical text back.
    """

    drop: float = 0.0
    corrupt: float = 0.0
    dup: float = 0.0
    delay: float = 0.0
    reboot_every: int = 0
    cut: tuple[str, ...] = CUTS
    seed: int = 0
    world: tuple[WorldFault, ...] = ()

    @classmethod
    def parse(cls, text: str) -> FaultProfile:
        """Parse ``key=value,key=value,...``; an empty text is the fault-free profile.

        Raises:
            ConfigError: an unknown key, a repeated key, or a value out of range (one line).
        """
        if not isinstance(text, str):
            raise ConfigError(f"fault profile must be a string, got {type(text).__name__}")
        if len(text) > _MAX_PROFILE:
            raise ConfigError(f"fault profile is {len(text)} characters long (at most {_MAX_PROFILE})")
        values: dict[str, Any] = {}
        world: list[WorldFault] = []
        for item in text.replace(" ", "").split(","):
            if not item:
                continue
            key, eq, value = item.partition("=")
            if not eq or not value:
                raise _fail(text, f"{item!r} is not key=value")
            if key in WORLD_FAULTS:
                world.append(_parse_world(text, key, value))
                continue
            if key in values:
                raise _fail(text, f"{key} given twice")
            if key in _RATE_KEYS:
                values[key] = _parse_rate(text, key, value)
            elif key == "reboot_every":
                values[key] = _parse_int(text, key, value, 0)
            elif key == "seed":
                values[key] = _parse_int(text, key, value, 0)
            elif key == "cut":
                cuts = tuple(dict.fromkeys(value.split("+")))
                bad = [c for c in cuts if c not in CUTS]
                if bad or not cuts:
                    raise _fail(text, f"cut must be {'+'.join(CUTS)} or a part of it, got {value!r}")
                values[key] = cuts
            else:
                known = ", ".join(_RATE_KEYS + ("reboot_every", "cut", "seed") + tuple(WORLD_FAULTS))
                raise _fail(text, f"unknown key {key!r} (known: {known})")
        if sum(values.get(k, 0.0) for k in ("drop", "corrupt", "dup")) > 1.0:
            raise _fail(text, "drop + corrupt + dup must not exceed 1")
        return cls(world=tuple(world), **values)

    def __str__(self) -> str:
        parts = [f"{k}={getattr(self, k):g}" for k in _RATE_KEYS if getattr(self, k)]
        if self.reboot_every:
            parts.append(f"reboot_every={self.reboot_every}")
            if self.cut != CUTS:
                parts.append("cut=" + "+".join(self.cut))
        parts += [str(w) for w in self.world]
        parts.append(f"seed={self.seed}")
        return ",".join(parts)

    @property
    def link_faults(self) -> bool:
        """Whether bytes or frames are disturbed on the wire."""
        return any(getattr(self, k) > 0 for k in _RATE_KEYS)

    @property
    def quiet(self) -> bool:
        """Whether this profile injects nothing at all."""
        return not self.link_faults and not self.reboot_every and not self.world


@dataclass
class FaultReport:
    """What was injected so far.

    Attributes:
        frames: frames the host sent through faulty ports (attempts, retries included).
        bytes: bytes that crossed faulty ports, both directions, before faults.
        dropped, corrupted, duplicated: bytes lost, altered, doubled.
        delayed: frames held back past the host's reply deadline.
        reboots: address -> power cuts of that board.
        cuts: kind -> power cuts of that kind (``frame``, ``reply``, ``update``, ``flash-old``,
            ``flash-torn``, ``flash-new``).
        world: descriptions of the world faults applied, with when.
    """

    frames: int = 0
    bytes: int = 0
    dropped: int = 0
    corrupted: int = 0
    duplicated: int = 0
    delayed: int = 0
    reboots: dict[int, int] = field(default_factory=dict)
    cuts: dict[str, int] = field(default_factory=dict)
    world: list[str] = field(default_factory=list)

    @property
    def total_reboots(self) -> int:
        """Power cuts of every board."""
        return sum(self.reboots.values())

    def as_dict(self) -> dict[str, Any]:
        """Plain data for JSON summaries."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["reboots"] = {str(a): n for a, n in sorted(self.reboots.items())}
        out["cuts"] = dict(sorted(self.cuts.items()))
        out["world"] = list(self.world)
        out["total_reboots"] = self.total_reboots
        return out

    def summary(self) -> str:
        """One line: what was injected."""
        cuts = ", ".join(f"{k} {v}" for k, v in sorted(self.cuts.items())) or "none"
        text = (
            f"injected: {self.frames} frames, {self.bytes} bytes; dropped {self.dropped}, "
            f"corrupted {self.corrupted}, duplicated {self.duplicated} bytes; "
            f"delayed {self.delayed} frames; {self.total_reboots} power cuts ({cuts})"
        )
        if self.world:
            text += "; world: " + ", ".join(self.world)
        return text


class BoardControl(Protocol):
    """Power switches of an emulated rig's boards, for power cuts.

    ``synchronous`` is true when a board has fully handled a frame by the time the transport's
    ``write`` returns (in-process boards): cuts can then be placed exactly. Otherwise (board
    processes) a cut after a frame lands a short random time after it was written.
    """

    synchronous: bool

    def power_cut(self, address: int) -> None:
        """Switch the board off (it hears nothing)."""
        ...

    def power_on(self, address: int) -> None:
        """Boot the board from its flash."""
        ...

    def flash_dir(self, address: int) -> str | None:
        """The board's flash directory (for cuts during a flash write), or None."""
        ...

    def note_rollback(self, address: int) -> None:
        """A flash cut undid the board's last write (an applied UPDATE did not persist)."""
        ...


class EmulatedRigControl:
    """:class:`BoardControl` for an :class:`~host_sdk.emulator.rig.EmulatedRig`.

    For in-process boards it also keeps a ledger of UPDATEs each board applied *and kept*
    across power cuts (:meth:`updates`): the firmware's own ``updates`` counter starts from
    zero at every boot.
    """

    def __init__(self, emu: EmulatedRig) -> None:
        self.emu = emu
        self.synchronous = not emu.micropython
        self._kept: dict[int, int] = {a: 0 for a in emu.addresses}
        self._lock = threading.Lock()

    def _live_updates(self, address: int) -> int:
        board = self.emu.inproc.get(address)
        server = board.server if board is not None else None
        return int(server.node.updates) if server is not None else 0

    def power_cut(self, address: int) -> None:
        """Cut the board's power (its RAM, accumulator and reply cache are lost)."""
        with self._lock:
            if self.synchronous:
                self._kept[address] += self._live_updates(address)
            self.emu.kill_board(address)

    def power_on(self, address: int) -> None:
        """Boot the board from its flash."""
        self.emu.restart_board(address)

    def flash_dir(self, address: int) -> str | None:
        """The board's flash directory."""
        return self.emu.flash_dirs.get(address)

    def note_rollback(self, address: int) -> None:
        """The last UPDATE the board applied was lost with its flash write."""
        with self._lock:
            self._kept[address] -= 1

    def updates(self) -> dict[int, int]:
        """Address -> UPDATEs applied and kept since the rig started (in-process boards)."""
        if not self.synchronous:
            raise ConfigError("the update ledger needs in-process boards")
        with self._lock:
            return {a: self._kept[a] + self._live_updates(a) for a in self.emu.addresses}


class LateControl:
    """A :class:`BoardControl` attached after the fact: an emulator that puts the injector in
    front of its boards while it starts (``EmulatedRig(endpoint_wrapper=...)``) can only hand
    out its power switches once it has started. Power cuts due before :meth:`attach` wait."""

    def __init__(self) -> None:
        self.target: BoardControl | None = None
        self.synchronous = True

    def attach(self, control: BoardControl) -> None:
        """Use ``control`` from now on."""
        self.target = control
        self.synchronous = control.synchronous

    def _control(self) -> BoardControl:
        if self.target is None:
            raise ConfigError("the boards' power switches are not attached yet")
        return self.target

    def power_cut(self, address: int) -> None:
        """Switch the board off."""
        self._control().power_cut(address)

    def power_on(self, address: int) -> None:
        """Boot the board from its flash."""
        self._control().power_on(address)

    def flash_dir(self, address: int) -> str | None:
        """The board's flash directory."""
        return self._control().flash_dir(address)

    def note_rollback(self, address: int) -> None:
        """A flash cut undid an applied UPDATE."""
        self._control().note_rollback(address)


def _read_files(d: str) -> dict[str, bytes | None]:
    out: dict[str, bytes | None] = {}
    for name in _STATE_FILES:
        try:
            with open(os.path.join(d, name), "rb") as f:
                out[name] = f.read()
        except OSError:
            out[name] = None
    return out


def _write_files(d: str, files: dict[str, bytes | None]) -> None:
    for name, data in files.items():
        path = os.path.join(d, name)
        if data is None:
            try:
                os.remove(path)
            except FileNotFoundError:
                pass
        else:
            with open(path, "wb") as f:
                f.write(data)


def _record_step(data: bytes | None) -> int | None:
    """The last applied step stored in a board's record file (``None``: no usable record)."""
    if not data or len(data) < 5:
        return None
    try:
        record = msgpack.unpackb(data[:-4], raw=False, strict_map_key=False, ext_hook=_no_ext)
        return int(record["node"]["step"])
    except (ValueError, TypeError, KeyError, msgpack.UnpackException):
        return None


def _no_ext(code: int, data: bytes) -> Any:
    raise ValueError(f"ext type {code} in a board record")


def _is_update(frame: bytes) -> bool:
    """Whether a delimited request frame is an UPDATE (frames that do not decode are not)."""
    body = frame[:-1] if frame.endswith(b"\x00") else frame
    try:
        return protocol.decode_request(protocol.decode_frame(body)).command == protocol.Command.UPDATE
    except ProtocolError:
        return False


class _Port:
    """The faults of one port: byte mangling, delays, the power-cut schedule. Shared by
    :class:`FaultyTransport` (host side) and :class:`FaultyEndpoint` (emulator side)."""

    def __init__(self, injector: FaultInjector, boards: Sequence[int]) -> None:
        self.injector = injector
        self.profile = injector.profile
        self.boards = sorted(int(b) for b in boards)
        key = self.boards[0] if self.boards else 0
        self.rng = np.random.default_rng([self.profile.seed, 1, key])
        every = self.profile.reboot_every
        self.frames = 0
        self.last = b""
        self.next_cut = int(self.rng.integers(1, every + 1)) if every else 0
        self.armed: dict[int, str] = {}  # address -> "update" / "flash", waiting for its moment

    def mangle(self, data: bytes) -> bytes:
        """Drop, corrupt and duplicate bytes of ``data`` at the profile's rates."""
        p = self.profile
        report = self.injector.report
        n = len(data)
        with self.injector.lock:
            report.bytes += n
        if not n or not (p.drop or p.corrupt or p.dup):
            return data
        u = self.rng.random(n)
        flips = self.rng.integers(1, 256, n)
        out = bytearray()
        dropped = corrupted = duplicated = 0
        a, b, c = p.drop, p.drop + p.corrupt, p.drop + p.corrupt + p.dup
        for i, byte in enumerate(data):
            x = u[i]
            if x < a:
                dropped += 1
            elif x < b:
                out.append(byte ^ int(flips[i]))
                corrupted += 1
            elif x < c:
                out.append(byte)
                out.append(byte)
                duplicated += 1
            else:
                out.append(byte)
        with self.injector.lock:
            report.dropped += dropped
            report.corrupted += corrupted
            report.duplicated += duplicated
        return bytes(out)

    def delayed(self) -> bool:
        """Whether the next frame is held back past the host's deadline."""
        if self.profile.delay and self.rng.random() < self.profile.delay:
            with self.injector.lock:
                self.injector.report.delayed += 1
            return True
        return False

    def tick(self, data: bytes) -> tuple[int, str] | None:
        """Count the frames of ``data`` sent to this port; return (address, cut) when a power
        cut is due. A frame identical to the previous one (a retry) does not advance the
        schedule: cuts come every N requests, whatever the link's error rate."""
        frames = data.count(0)
        if frames <= 0:
            return None
        self.injector.count_frames(frames)
        if data == self.last:
            return None
        self.last = data
        self.frames += frames
        every = self.profile.reboot_every
        control = self.injector.control
        if not every or control is None or not self.boards or self.frames < self.next_cut:
            return None
        if isinstance(control, LateControl) and control.target is None:
            return None  # the emulator is still starting: the cut comes at the next request
        self.next_cut += every
        address = self.boards[int(self.rng.integers(len(self.boards)))]
        cut = self.profile.cut[int(self.rng.integers(len(self.profile.cut)))]
        return address, cut

    def cut(self, address: int, kind: str) -> None:
        """Cut a board's power and boot it again; count it."""
        control = self.injector.control
        assert control is not None
        control.power_cut(address)
        self.injector.note_cut(address, kind)
        control.power_on(address)

    def flash_outcome(self, address: int, before: dict[str, bytes | None]) -> str:
        """After a frame that rewrote the board's record, leave on flash what a power cut at
        a random point of the write leaves; return ``flash-old``, ``flash-torn`` or
        ``flash-new``."""
        control = self.injector.control
        assert control is not None
        d = control.flash_dir(address)
        assert d is not None
        after = _read_files(d)
        new = after.get("state.mp")
        choice = int(self.rng.integers(3))
        if choice == 2 or new is None:
            return "flash-new"
        if choice == 0:
            # cut after the temporary file was complete, before the rename
            _write_files(d, {"state.mp": before.get("state.mp"), "state.tmp": new})
            kind = "flash-old"
        else:
            # cut while the temporary file was being written
            torn = new[: int(self.rng.integers(0, len(new)))]
            _write_files(d, {"state.mp": before.get("state.mp"), "state.tmp": torn})
            kind = "flash-torn"
        if _record_step(new) != _record_step(before.get("state.mp")):
            control.note_rollback(address)  # the write that was undone applied an UPDATE
        return kind


class FaultyTransport:
    """A transport with faults injected between the host and the port.

    Not built directly: use :meth:`FaultInjector.wrap` or :func:`open_faulty`.
    """

    def __init__(self, inner: Transport, port: _Port) -> None:
        self.inner = inner
        self.url = inner.url
        self._port = port
        self._held_out = b""  # a request frame held back (sent before the next one)
        self._held_in = b""  # reply frames held back (returned by the next read)
        self._inbox = bytearray()  # bytes read but not yet cut into frames
        self._extra = b""  # bytes read from the inner transport during a cut
        self._closed = False

    # -- writing ---------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        """Send ``data`` with the profile's faults; may cut a board's power on the way."""
        port = self._port
        data = bytes(data)
        frames = data.count(0)
        due = port.tick(data)
        out = port.mangle(data)
        if self._held_out:
            out, self._held_out = self._held_out + out, b""
        elif frames and port.delayed():
            self._held_out = out
            return
        control = port.injector.control
        address: int | None = None
        kind = ""
        if due is not None:
            address, kind = due
            if kind in ("update", "flash"):
                port.armed[address] = kind
                address = None
        if address is None:
            for a, armed in list(port.armed.items()):
                if armed == "update" and _is_update(data):
                    address, kind = a, "update"
                elif armed == "flash":
                    address, kind = a, "flash"
        if address is None or control is None:
            self.inner.write(out)
            return
        if kind in ("frame", "update"):
            port.armed.pop(address, None)
            control.power_cut(address)
            port.injector.note_cut(address, kind)
            control.power_on(address)
            return  # the frame reached a board without power
        if kind == "reply":
            self._write_then_cut(out, address, "reply")
            return
        # flash: the cut strikes the first write of the board's record after it was armed
        if not control.synchronous:
            if _is_update(data):
                port.armed.pop(address, None)
                self._write_then_cut(out, address, "flash")
            else:
                self.inner.write(out)
            return
        d = control.flash_dir(address)
        before = _read_files(d) if d else {}
        self._extra += self.inner.read(0.0)
        self.inner.write(out)
        after = _read_files(d) if d else {}
        if after.get("state.mp") == before.get("state.mp"):
            return  # no flash write in this frame: stay armed
        self.inner.read(0.0)  # the reply dies with the board
        port.armed.pop(address, None)
        control.power_cut(address)
        port.injector.note_cut(address, port.flash_outcome(address, before))
        control.power_on(address)

    def _write_then_cut(self, out: bytes, address: int, kind: str) -> None:
        port = self._port
        control = port.injector.control
        assert control is not None
        if control.synchronous:
            self._extra += self.inner.read(0.0)
            self.inner.write(out)
            self.inner.read(0.0)  # the reply dies with the board
        else:
            self.inner.write(out)
            time.sleep(float(port.rng.uniform(0.0, 0.02)))
        control.power_cut(address)
        port.injector.note_cut(address, kind)
        control.power_on(address)

    # -- reading ---------------------------------------------------------------------------

    def read(self, timeout: float) -> bytes:
        """Bytes from the port with the profile's faults; a delayed frame comes one read late."""
        port = self._port
        data = self._extra + self.inner.read(timeout)
        self._extra = b""
        held, self._held_in = self._held_in, b""
        if not data:
            return held
        self._inbox += data
        end = self._inbox.rfind(0)
        if end < 0:
            return held
        complete = bytes(self._inbox[: end + 1])
        del self._inbox[: end + 1]
        out = bytearray()
        for piece in complete.split(b"\x00")[:-1]:
            frame = piece + b"\x00"
            mangled = port.mangle(frame)
            if port.delayed():
                self._held_in += mangled
            else:
                out += mangled
        return held + bytes(out)

    def close(self) -> None:
        """Close the inner transport (idempotent)."""
        if not self._closed:
            self._closed = True
            self.inner.close()

    def __repr__(self) -> str:
        return f"FaultyTransport({self.url!r}, {self._port.profile})"


class FaultyEndpoint:
    """An in-process endpoint (``feed(data) -> bytes``) with faults on both directions.

    Used by an emulator that serves its boards to other processes (``mnn emulate --faults``):
    the host there cannot be wrapped, so the faults sit in front of the boards.
    """

    def __init__(self, inner: Endpoint, port: _Port) -> None:
        self.inner = inner
        self._port = port
        self._held = b""
        self._lock = threading.Lock()

    def feed(self, data: bytes) -> bytes:
        """Pass the host's bytes to the boards with faults; return their replies with faults."""
        with self._lock:
            port = self._port
            due = port.tick(bytes(data))
            held, self._held = self._held, b""
            if due is not None:
                address, kind = due
                control = port.injector.control
                assert control is not None
                if kind in ("frame", "update"):
                    control.power_cut(address)
                    port.injector.note_cut(address, kind)
                    control.power_on(address)
                    return held
                d = control.flash_dir(address) if kind == "flash" else None
                before = _read_files(d) if d else {}
                self.inner.feed(port.mangle(bytes(data)))
                if d is not None and _read_files(d).get("state.mp") != before.get("state.mp"):
                    kind = port.flash_outcome(address, before)
                control.power_cut(address)
                port.injector.note_cut(address, kind if kind != "flash" else "reply")
                control.power_on(address)
                return held
            reply = self.inner.feed(port.mangle(bytes(data)))
            if not reply:
                return held
            out = port.mangle(reply)
            if port.delayed():
                self._held = out
                return held
            return held + out


class FaultInjector:
    """Injects the faults of a profile into the ports, boards and world of a rig.

    Args:
        profile: what to inject (a :class:`FaultProfile` or its text).
        control: power switches of the rig's boards (needed for ``reboot_every``).
        world: the emulated world (needed for sensor, actuator and bond faults).

    Attributes:
        report: what was injected so far.
    """

    def __init__(
        self,
        profile: FaultProfile | str,
        *,
        control: BoardControl | None = None,
        world: World | None = None,
    ) -> None:
        self.profile = FaultProfile.parse(profile) if isinstance(profile, str) else profile
        if self.profile.reboot_every and control is None:
            raise ConfigError("reboot_every needs boards the injector can switch off (an emulated rig)")
        if self.profile.world and world is None and not isinstance(control, LateControl):
            raise ConfigError("sensor, actuator and bond faults need an emulated world")
        self.control = control
        self.world = world
        self.report = FaultReport()
        self.lock = threading.Lock()
        self._pending = list(self.profile.world)
        self.step: int | None = None

    @classmethod
    def for_emulator(cls, profile: FaultProfile | str, emu: EmulatedRig) -> FaultInjector:
        """An injector whose power cuts and world faults act on an emulated rig."""
        return cls(profile, control=EmulatedRigControl(emu), world=emu.world)

    # -- ports -----------------------------------------------------------------------------

    def wrap(self, transport: Transport, boards: Sequence[int] = ()) -> FaultyTransport:
        """Put the profile's link faults (and the power cuts of ``boards``) on a transport."""
        return FaultyTransport(transport, _Port(self, boards))

    def open(self, url: str, boards: Sequence[int] = ()) -> FaultyTransport:
        """Open ``url`` with :func:`~host_sdk.transport.open_transport` and wrap it."""
        return self.wrap(open_transport(url), boards)

    def wrap_endpoint(self, endpoint: Endpoint, boards: Sequence[int] = ()) -> FaultyEndpoint:
        """Put the profile's faults in front of an in-process endpoint serving ``boards``."""
        return FaultyEndpoint(endpoint, _Port(self, boards))

    def transport_factory(self, boards_of: Callable[[str], Sequence[int]]) -> Callable[[str], Transport]:
        """A function ``url -> transport`` that opens and wraps, for
        :class:`~host_sdk.coordinator.RigSession` (``boards_of(url)``: the boards on it)."""
        return lambda url: self.open(url, boards_of(url))

    # -- bookkeeping -----------------------------------------------------------------------

    def count_frames(self, n: int) -> None:
        """Count frames sent through any port; apply world faults that fall due."""
        with self.lock:
            self.report.frames += n
            total = self.report.frames
        due = [w for w in self._pending if w.at_frame is not None and w.at_frame <= total]
        for w in due:
            self._apply(w, f"frame {total}")

    def note_cut(self, address: int, kind: str) -> None:
        """Count a power cut of board ``address``."""
        with self.lock:
            self.report.reboots[address] = self.report.reboots.get(address, 0) + 1
            self.report.cuts[kind] = self.report.cuts.get(kind, 0) + 1

    def on_batch(self, step: int) -> None:
        """Called by the coordinator as trainer step ``step`` starts: apply world faults due."""
        self.step = int(step)
        due = [w for w in self._pending if w.at_step is not None and w.at_step <= step]
        for w in due:
            self._apply(w, f"step {step}")

    def _apply(self, fault: WorldFault, when: str) -> None:
        with self.lock:
            if fault not in self._pending:
                return
            self._pending.remove(fault)
        if self.world is None:
            raise ConfigError(f"world fault {fault} is due but no emulated world is attached")
        fault.apply(self.world)
        with self.lock:
            self.report.world.append(f"{fault.kind} bond {fault.bond} at {when}")


def open_faulty(url: str, *, control: BoardControl | None = None, boards: Sequence[int] = ()) -> Transport:
    """Open ``faulty://<inner url>?<profile keys>`` (or any plain URL, unchanged).

    The profile's keys share the query with the inner URL's own options, e.g.
    ``faulty://serial:///dev/ttyACM0?baud=115200&drop=0.01&seed=2``. Returns the wrapped
    transport; its injector is ``transport._port.injector``.

    Raises:
        ConfigError: a malformed URL or profile.
        TransportError: the inner port cannot be opened.
    """
    if not url.startswith("faulty://"):
        return open_transport(url)
    rest = url[len("faulty://") :]
    inner, _, query = rest.partition("?")
    keys = set(_RATE_KEYS) | {"reboot_every", "cut", "seed"} | set(WORLD_FAULTS)
    mine: list[str] = []
    kept: list[str] = []
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key in keys:
            mine.append(f"{key}={value.replace(' ', '+')}")  # a query's '+' decodes to ' '
        else:
            kept.append(f"{key}={value}")
    if not inner:
        raise ConfigError(f"port URL {url!r} wraps no inner URL: expected faulty://<url>?drop=...")
    if kept:
        inner += "?" + "&".join(kept)
    injector = FaultInjector(",".join(mine), control=control)
    return injector.open(inner, boards)
