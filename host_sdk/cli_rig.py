"""``mnn deploy``, ``mnn rig discover`` and ``mnn calibrate``: thin commands over the library.

:func:`add_parser` registers all three on the ``mnn`` command line (or use
:func:`add_deploy_parser`, :func:`add_rig_parser`, :func:`add_calibrate_parser` one by one).
Each parser's ``func`` takes the parsed arguments and returns the exit status; errors are raised
as :class:`~host_sdk.errors.SdkError` for the CLI's one error boundary.

Ports of boards can be given three ways: the rig file's ``port`` / ``usb_serial``; ``--port
ADDR=URL`` (repeatable; a bare ``--port URL`` when one board is concerned); or ``--ports JSON``,
the line ``mnn emulate`` prints (``{"boards": {"3": "/dev/pts/5", ...}}``) or a plain
``{"3": "/dev/pts/5"}`` map.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

from .errors import ConfigError, TransportError
from .rig import Rig, load_rig, rig_to_toml

__all__ = [
    "add_parser",
    "add_deploy_parser",
    "add_rig_parser",
    "add_calibrate_parser",
    "parse_ports",
]


def parse_ports(port_args: Sequence[str] | None, ports_json: str | None = None,
                *, single: int | None = None) -> dict[int, str]:
    """Board address -> port URL from ``--port`` and ``--ports`` arguments.

    Args:
        port_args: ``ADDR=URL`` items, or a bare ``URL`` meaning board ``single``.
        ports_json: a JSON object, either ``{"boards": {addr: path}}`` (what ``mnn emulate``
            prints) or ``{addr: path}``.
        single: the board a bare URL belongs to (None: a bare URL is an error).

    Raises:
        ConfigError: malformed items, or a bare URL when it is not clear which board it is for.
    """
    out: dict[int, str] = {}
    if ports_json:
        try:
            doc = json.loads(ports_json)
        except ValueError as e:
            raise ConfigError(f"--ports is not valid JSON: {e}") from e
        table = doc.get("boards", doc) if isinstance(doc, dict) else None
        if not isinstance(table, dict):
            raise ConfigError('--ports expects {"boards": {"ADDR": "PORT", ...}} or {"ADDR": "PORT", ...}')
        for key, value in table.items():
            try:
                address = int(key)
            except ValueError as e:
                raise ConfigError(f"--ports: board address {key!r} is not an integer") from e
            if not isinstance(value, str) or not value:
                raise ConfigError(f"--ports: board {address} has no port string")
            out[address] = value
    for item in port_args or ():
        head, sep, tail = item.partition("=")
        if sep and head.strip().isdigit():
            out[int(head)] = tail
        elif single is not None:
            out[single] = item
        else:
            raise ConfigError(
                f"--port {item!r}: say which board it is for (--port ADDR=URL), or select one board"
            )
    return out


def _add_port_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", action="append", metavar="ADDR=URL",
                        help="the port of board ADDR (repeatable); a bare URL when one board is concerned")
    parser.add_argument("--ports", metavar="JSON",
                        help='board ports as JSON: what mnn emulate prints, or {"ADDR": "PORT", ...}')


def _say(stream: TextIO) -> Any:
    def say(*parts: Any) -> None:
        print(*parts, file=stream, flush=True)

    return say


# ---------------------------------------------------------------------------------------------
# mnn deploy


def _cmd_deploy(args: argparse.Namespace) -> int:
    from .deploy import deploy, failures, format_table

    rig = load_rig(args.rig)
    boards = args.board or None
    single = boards[0] if boards and len(boards) == 1 else (rig.boards[0].address if len(rig.boards) == 1 else None)
    ports = parse_ports(args.port, args.ports, single=single)
    say = _say(sys.stderr)
    results = deploy(rig, boards=boards, ports=ports, dry_run=args.dry_run, jobs=args.jobs,
                     timeout=args.timeout, progress=lambda a, m: say(f"board {a}: {m}"))
    print(format_table(results))
    bad = failures(results)
    if bad:
        more = f" (and {len(bad) - 1} more boards)" if len(bad) > 1 else ""
        raise TransportError(bad[0] + more)
    return 0


def add_deploy_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``mnn deploy``."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "deploy", help="put the firmware and each board's configuration on the boards",
        description="Copy the firmware, board.cfg and fw.hash to every board of a rig with mpremote "
                    "(only files whose hash differs), verify them on the board, restart the boards "
                    "and check that HELLO reports the new firmware hash.")
    parser.add_argument("--rig", required=True, help="paper, lattice:RxC or a rig file")
    parser.add_argument("--board", type=int, action="append", metavar="ADDR",
                        help="deploy only this board (repeatable; default: every board)")
    _add_port_options(parser)
    parser.add_argument("--dry-run", action="store_true", help="list what would be copied, change nothing")
    parser.add_argument("--jobs", type=int, default=4, help="boards deployed at the same time (default 4)")
    parser.add_argument("--timeout", type=float, default=60.0,
                        help="seconds one mpremote run may take (default 60)")
    parser.set_defaults(func=_cmd_deploy)
    return parser


# ---------------------------------------------------------------------------------------------
# mnn rig discover


def _cmd_discover(args: argparse.Namespace) -> int:
    from .discover import discover, format_table, write_skeleton

    extra = list(args.port or [])
    extra += list(parse_ports(None, args.ports).values())
    say = _say(sys.stderr)
    found = discover(extra, system=not args.no_system, timeout=args.timeout, progress=say)
    print(format_table(found))
    if args.write:
        rig = write_skeleton(found, args.write, args.template)
        say(f"wrote {args.write}: {len(rig.boards)} boards, tasks {', '.join(rig.io) or 'none'}")
    return 0


def _cmd_rig_without_subcommand(args: argparse.Namespace) -> int:
    raise ConfigError("rig: a subcommand is required: discover")


def add_rig_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``mnn rig`` with its ``discover`` subcommand."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "rig", help="rig utilities (discover)", description="Rig utilities.")
    parser.set_defaults(func=_cmd_rig_without_subcommand)
    sub = parser.add_subparsers(title="rig commands", metavar="COMMAND")
    disc: argparse.ArgumentParser = sub.add_parser(
        "discover", help="find the boards on the serial ports",
        description="Say HELLO on every serial port (and on the ports given) and print the boards "
                    "found: port, USB serial number, address, firmware hash, owned bonds.")
    disc.add_argument("--port", action="append", metavar="URL", help="another port to sweep (repeatable)")
    disc.add_argument("--ports", metavar="JSON", help="more ports as JSON (what mnn emulate prints)")
    disc.add_argument("--no-system", action="store_true", help="sweep only the ports given")
    disc.add_argument("--timeout", type=float, default=0.5, help="seconds of silence that end a port's sweep")
    disc.add_argument("--write", metavar="FILE", help="write a rig-file skeleton of the boards found")
    disc.add_argument("--template", default="paper",
                      help="rig whose network, limits and tasks the skeleton uses (default paper)")
    disc.set_defaults(func=_cmd_discover)
    return parser


# ---------------------------------------------------------------------------------------------
# mnn calibrate


@contextmanager
def _session_for(rig: Rig, ports: dict[int, str], seed: int, timeout: float) -> Iterator[Any]:
    """A session on the rig; an emulated rig whose boards have no real port gets in-process
    boards for the duration of the command."""
    from .coordinator import RigSession

    emulated = rig.emulated and any(
        b.address not in ports and (b.port or "").startswith("emu://") for b in rig.boards
    )
    if not emulated:
        with RigSession(rig, ports, timeout=timeout) as session:
            yield session
        return
    from .emulator.rig import EmulatedRig

    with EmulatedRig(rig, seed=seed) as emu:
        merged = {**emu.ports, **ports}
        with RigSession(rig, merged, timeout=timeout) as session:
            yield session


def _cmd_calibrate(args: argparse.Namespace) -> int:
    from .calibrate import CalibrationConfig, calibrate, calibrated_rig, write_report

    rig = load_rig(args.rig)
    ports = parse_ports(args.port, args.ports)
    config = CalibrationConfig(readings=args.readings, points=args.points, load_fraction=args.load_fraction)
    say = _say(sys.stderr)
    if not args.timeout > 0:
        raise ConfigError(f"--timeout must be a positive number of seconds, got {args.timeout}")
    with _session_for(rig, ports, args.seed, args.timeout) as session:
        report = calibrate(session, config, progress=say)
    worst_gain = max(f.residual for f in report.strain + report.disp)
    worst_k = max(max(c.stderr) for c in report.actuators)
    print(f"calibrated {len(report.strain)} strain channels, {len(report.disp)} displacement axes and "
          f"{len(report.actuators)} actuators of {rig.name}: worst gain-fit residual {worst_gain:.3g} m, "
          f"worst stiffness standard error {worst_k:.3g} N/m")
    if args.out:
        for path in write_report(report, args.out):
            print(path)
    if args.write_rig:
        target = Path(args.write_rig)
        try:
            target.write_text(rig_to_toml(calibrated_rig(rig, report)), encoding="utf-8")
        except OSError as e:
            raise ConfigError(f"cannot write rig file {target}: {e}") from e
        print(target)
    return 0


def add_calibrate_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``mnn calibrate``."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "calibrate", help="tare, fit sensor gains and measure actuator curves",
        description="Apply known loads with the rig's force actuators, fit every strain channel's and "
                    "displacement sensor's gain against the digital twin, measure every stiffness "
                    "actuator's command-to-stiffness curve, and store gains, tables and zeros on the "
                    "boards. An emulated rig without ports is calibrated in-process (a demonstration).")
    parser.add_argument("--rig", required=True, help="paper, lattice:RxC or a rig file")
    _add_port_options(parser)
    parser.add_argument("--out", metavar="DIR", help="write calibration.json and PNG curves to DIR")
    parser.add_argument("--write-rig", metavar="FILE", help="write the rig with its calibration tables to FILE")
    parser.add_argument("--readings", type=int, default=16, help="readings per channel and measurement (default 16)")
    parser.add_argument("--points", type=int, default=6, help="command levels of the actuator sweep (2-8, default 6)")
    parser.add_argument("--load-fraction", type=float, default=0.5,
                        help="known load as a fraction of force_max (default 0.5)")
    parser.add_argument("--timeout", type=float, default=2.0,
                        help="seconds to wait for a board's reply, per attempt (default 2; a measurement "
                             "of --readings readings per channel must fit, with an HX711 at 10 or 80 samples/s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of an in-process emulated rig (default 0)")
    parser.set_defaults(func=_cmd_calibrate)
    return parser


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``deploy``, ``rig`` (with ``discover``) and ``calibrate``; return the ``rig`` parser."""
    add_deploy_parser(subparsers)
    rig = add_rig_parser(subparsers)
    add_calibrate_parser(subparsers)
    return rig
