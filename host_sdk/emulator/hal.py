"""The emulated board hardware: one board's wiring into the world, and the CPython HAL.

:class:`BoardWiring` is what a board's connectors reach in the world: its strain channels (each
reads one owned bond's elongation), its stiffness channels (each drives one owned bond), its
force actuator and its displacement sensor (both at the board's node), and the board's virtual
clock. Both kinds of emulated board use it: :class:`EmuHal` calls it directly (in-process
boards), and the world server of :mod:`host_sdk.emulator.mpboards` calls it on behalf of the
MicroPython HAL (``mp/hal_emu.py``), which keeps its clock the same way. The same sequence of
HAL calls therefore gives the same readings under either interpreter.

:class:`EmuHal` implements the HAL method table of docs/architecture.md for the firmware
imported under CPython.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError
from .world import World

if TYPE_CHECKING:
    from ..rig import BoardSpec

__all__ = ["BoardWiring", "EmuHal", "NotWired", "NotCapable", "TICKS_PERIOD", "board_id"]

TICKS_PERIOD = 1 << 30
"""``ticks_ms`` wraps here, as on every MicroPython port."""


class NotWired(ValueError):
    """A HAL call named a channel the board does not have."""


class NotCapable(ValueError):
    """A HAL call needs a part (force actuator, displacement sensor) the board does not have."""


def board_id(address: int) -> str:
    """The board id an emulated board reports: ``emu-<address>``."""
    return f"emu-{address}"


class BoardWiring:
    """One board's sensors and actuators in the world.

    Args:
        world: the world.
        spec: the board's entry of the rig (address, node, owned bonds and their channels,
            whether it has a force actuator and a displacement sensor).

    Channel numbers are the hardware channels of the rig file: ``spec.strain_channels[i]``
    reads bond ``spec.bonds[i]`` and ``spec.stiffness_channels[i]`` drives it.

    Attributes:
        read_ms: virtual ms one sensor reading takes (from the world's dynamics).
        t_ms: the latest board time seen (a restarted board carries on from it).
    """

    def __init__(self, world: World, spec: BoardSpec) -> None:
        self.world = world
        self.spec = spec
        self.address = int(spec.address)
        bonds = [int(b) for b in spec.bonds]
        strain = [int(c) for c in spec.strain_channels]
        stiff = [int(c) for c in spec.stiffness_channels]
        if len(strain) != len(bonds) or len(stiff) != len(bonds):
            raise ConfigError(
                f"board {self.address}: {len(bonds)} bonds but {len(strain)} strain and "
                f"{len(stiff)} stiffness channels"
            )
        for kind, chans in (("strain", strain), ("stiffness", stiff)):
            if len(set(chans)) != len(chans) or any(c < 0 for c in chans):
                raise ConfigError(f"board {self.address}: {kind} channels {chans} repeat or are negative")
        self._strain_index = {c: i for i, c in enumerate(strain)}
        self._stiff_bond = dict(zip(stiff, bonds))
        self.n_strain = max(strain) + 1 if strain else 0
        self.n_stiffness = max(stiff) + 1 if stiff else 0
        self.has_force = bool(spec.force)
        self.has_disp = bool(spec.disp)
        self.node = int(spec.node)
        self.probe = world.probe(bonds, self.node if self.has_disp else None)
        self.read_ms = int(world.dynamics.read_ms)

    @property
    def t_ms(self) -> int:
        """The latest board time this wiring has seen, ms."""
        return self.probe.t_ms

    def note_time(self, t_ms: int) -> None:
        """Record board time ``t_ms`` (so a restarted board's clock carries on from it)."""
        self.probe.t_ms = max(self.probe.t_ms, int(t_ms))

    def caps(self) -> dict[str, Any]:
        """The capability map HELLO reports (see the HAL table)."""
        return {
            "strain": self.n_strain,
            "stiffness": self.n_stiffness,
            "force": self.has_force,
            "disp": self.has_disp,
        }

    def read_strain(self, ch: int, t_ms: int) -> int:
        """Counts of strain channel ``ch`` at board time ``t_ms``.

        Raises:
            ValueError: ``ch`` is not a wired strain channel of this board.
        """
        i = self._strain_index.get(ch)
        if i is None:
            raise NotWired(f"strain channel {ch} is not wired on board {self.address}")
        return self.probe.read_strain(i, t_ms)

    def set_stiffness_cmd(self, ch: int, cmd: float, t_ms: int) -> None:
        """Drive stiffness channel ``ch`` to ``cmd`` µs at board time ``t_ms``.

        Raises:
            ValueError: ``ch`` is not a wired stiffness channel, or ``cmd`` is not finite.
        """
        b = self._stiff_bond.get(ch)
        if b is None:
            raise NotWired(f"stiffness channel {ch} is not wired on board {self.address}")
        self.note_time(t_ms)
        try:
            self.world.set_stiffness_cmd(b, cmd)
        except ConfigError as e:
            raise ValueError(str(e)) from e

    def set_force(self, fx: float, fy: float, t_ms: int) -> None:
        """Set the force actuator at the board's node to ``(fx, fy)`` N at board time ``t_ms``.

        Raises:
            ValueError: the board has no force actuator, or a component is not finite.
        """
        if not self.has_force:
            raise NotCapable(f"board {self.address} has no force actuator")
        self.note_time(t_ms)
        try:
            self.world.set_force(self.node, fx, fy)
        except ConfigError as e:
            raise ValueError(str(e)) from e

    def read_disp(self, t_ms: int) -> tuple[int, int]:
        """Counts (x, y) of the displacement sensor at board time ``t_ms``.

        Raises:
            ValueError: the board has no displacement sensor.
        """
        if not self.has_disp:
            raise NotCapable(f"board {self.address} has no displacement sensor")
        return self.probe.read_disp(t_ms)


class EmuHal:
    """The HAL of an in-process emulated board (the method table of docs/architecture.md).

    Args:
        wiring: the board's wiring into the world.
        flash_dir: the directory that plays the board's flash.

    The clock is virtual: :meth:`sleep_ms` advances it and returns at once, and every sensor
    reading advances it by ``wiring.read_ms``. It starts where the wiring's last board time left
    off, so a board rebuilt after a reset keeps a monotonic clock. The serial methods
    :meth:`read` / :meth:`write` are not used by in-process boards (their bytes arrive through
    ``Server.feed``); they read nothing and discard what is written.
    """

    def __init__(self, wiring: BoardWiring, flash_dir: str) -> None:
        self.wiring = wiring
        self._flash_dir = str(flash_dir)
        self._t = wiring.t_ms
        self.reset_requested = False

    def board_id(self) -> str:
        """``emu-<address>``."""
        return board_id(self.wiring.address)

    def caps(self) -> dict[str, Any]:
        """Channel counts and capabilities of the board."""
        return self.wiring.caps()

    def ticks_ms(self) -> int:
        """The virtual clock, ms, wrapping at 2**30 like MicroPython's."""
        return self._t % TICKS_PERIOD

    def sleep_ms(self, ms: int) -> None:
        """Advance the virtual clock by ``ms`` (negative counts as 0)."""
        if ms > 0:
            self._t += int(ms)

    def read_strain(self, ch: int) -> int:
        """One reading of strain channel ``ch``, signed 24-bit counts."""
        self._t += self.wiring.read_ms
        return self.wiring.read_strain(int(ch), self._t)

    def set_stiffness_cmd(self, ch: int, cmd: float) -> None:
        """Drive stiffness channel ``ch`` to ``cmd`` µs."""
        self.wiring.set_stiffness_cmd(int(ch), float(cmd), self._t)

    def set_force(self, fx: float, fy: float) -> None:
        """Set this node's force actuator, N."""
        self.wiring.set_force(float(fx), float(fy), self._t)

    def read_disp(self) -> tuple[int, int]:
        """One reading of the displacement sensor, counts (x, y)."""
        self._t += self.wiring.read_ms
        return self.wiring.read_disp(self._t)

    def read(self, buf: Any) -> int:
        """In-process boards receive bytes through ``Server.feed``: nothing to read here."""
        return 0

    def write(self, data: bytes) -> None:
        """In-process boards answer through ``Server.feed``: nothing is written here."""
        return None

    def flash_dir(self) -> str:
        """The directory holding this board's persistent records."""
        return self._flash_dir

    def reset(self) -> None:
        """Ask for a reset; the in-process board reboots once the current reply is out."""
        self.reset_requested = True

    def __repr__(self) -> str:
        return f"EmuHal(address={self.wiring.address}, flash={os.path.basename(self._flash_dir)!r})"
