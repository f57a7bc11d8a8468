"""``mnn emulate``: serve an emulated rig on pseudo-terminals until interrupted.

:func:`add_parser` registers the subcommand on the ``mnn`` command line; :func:`run` is what it
does. The command prints one JSON line, ``{"boards": {"<address>": "<serial port path>", ...}}``,
then serves until SIGINT (Ctrl-C) or SIGTERM, and stops every board before it exits. Run alone
as ``python -m host_sdk.emulator.cli --rig paper``.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType
from typing import Any, TextIO

from ..errors import ConfigError, SdkError
from .rig import EmulatedRig

__all__ = ["add_parser", "run", "main"]


def _configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--rig",
        default="paper",
        help="rig to emulate: paper, lattice:RxC or a rig file (default: paper)",
    )
    parser.add_argument(
        "--micropython",
        action="store_true",
        help="run every board as a micropython process (default: the firmware in this process)",
    )
    parser.add_argument(
        "--noiseless",
        action="store_true",
        help="exact sensors (no noise, offsets or gain errors) and ideal actuators",
    )
    parser.add_argument(
        "--flash-dir",
        metavar="DIR",
        help="keep each board's flash in DIR/board-<address> (default: a temporary directory)",
    )
    parser.add_argument(
        "--blank",
        action="store_true",
        help="with --micropython: start boards with empty flash at the REPL, for mnn deploy",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the sensor models (default: 0)")
    parser.add_argument(
        "--faults",
        metavar="PROFILE",
        help="in-process boards: inject link faults, power cuts and world faults, e.g. "
        "drop=0.01,corrupt=0.01,reboot_every=200 (docs/reliability.md); a JSON line "
        '{"faults": ...} reports what was injected when the emulator stops',
    )
    parser.add_argument(
        "--tau-ms",
        type=float,
        metavar="MS",
        help="settling time constant of the world (0: instant; default: the emulator's)",
    )


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``emulate`` on an ``argparse`` subparsers object; return its parser.

    The parser's ``func`` default is :func:`run` (call ``args.func(args)``).
    """
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "emulate",
        help="serve an emulated rig on pseudo-terminals until interrupted",
        description=(
            "Start an emulated rig whose boards run the real firmware, print "
            '{"boards": {"<address>": "<serial port path>", ...}} on one line, and serve '
            "until Ctrl-C or SIGTERM."
        ),
    )
    _configure(parser)
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace, *, out: TextIO | None = None) -> int:
    """Serve the rig described by ``args`` until SIGINT or SIGTERM; return the exit status.

    Raises:
        SdkError: the rig cannot be loaded or a board does not come up (one-line message).
    """
    stream = sys.stdout if out is None else out
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {
        sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        injector, wrapper = _fault_injector(args)
        dynamics = None
        if getattr(args, "tau_ms", None) is not None:
            from .models import DynamicsSpec

            dynamics = DynamicsSpec(tau_ms=float(args.tau_ms))
        emu = EmulatedRig(
            args.rig,
            micropython=args.micropython,
            noiseless=args.noiseless,
            flash_dir=args.flash_dir,
            blank=args.blank,
            seed=args.seed,
            pty=True,
            dynamics=dynamics,
            endpoint_wrapper=wrapper,
        )
        try:
            if injector is not None:
                from ..faults import EmulatedRigControl, LateControl

                assert isinstance(injector.control, LateControl)
                injector.control.attach(EmulatedRigControl(emu))
                injector.world = emu.world
            boards = {str(a): emu.paths[a] for a in emu.addresses}
            stream.write(json.dumps({"boards": boards}) + "\n")
            stream.flush()
            while not stop.wait(0.25):
                pass
        finally:
            emu.stop()
            if injector is not None:
                stream.write(json.dumps({"faults": injector.report.as_dict()}) + "\n")
                stream.flush()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def _fault_injector(args: argparse.Namespace) -> tuple[Any, Any]:
    """The injector of ``--faults`` and the endpoint wrapper that puts it before the boards."""
    text = getattr(args, "faults", None)
    if not text:
        return None, None
    from ..faults import FaultInjector, FaultProfile, LateControl

    profile = FaultProfile.parse(text)
    if args.micropython:
        raise ConfigError(
            "mnn emulate --faults needs in-process boards: for MicroPython boards the host injects "
            "faults (mnn train --backend rig --micropython --faults ...)"
        )
    if any(w.at_step is not None for w in profile.world):
        raise ConfigError("mnn emulate sees no trainer steps: schedule world faults by frames (@fN)")
    injector = FaultInjector(profile, control=LateControl(), world=None)
    return injector, injector.wrap_endpoint


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m host_sdk.emulator.cli``: errors become one ``mnn:`` line."""
    parser = argparse.ArgumentParser(prog="mnn emulate", description="Serve an emulated rig.")
    _configure(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except SdkError as e:
        print(f"mnn: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
