"""Put the node firmware and each board's configuration on its board, with mpremote.

What a board holds after a deploy (paths relative to its flash root):

* the firmware: ``main.py``, ``hal_board.py`` and ``mnnfw/*.py`` (:func:`host_sdk.fwinfo.firmware_files`);
* ``board.cfg``: ``{"address": N, "hal": "hal_board", "hal_args": {...}}`` from the rig's board
  entry. On an emulated rig (``emulated = true``) the HAL is the emulator's ``hal_emu`` and
  ``hal_emu.py`` is deployed too;
* ``fw.hash``: the firmware hash (:func:`host_sdk.fwinfo.firmware_hash`) that HELLO reports.

How one board is deployed (:func:`deploy`):

1. *Probe* (every board first, before any is touched): the port must exist, and the board must
   answer HELLO (its firmware runs) or show a MicroPython prompt (a blank board, or one left at
   the REPL). Anything else stops the deploy with one line and no board changed.
2. A running firmware is sent the protocol's REPL command, so it leaves its loop and mpremote
   reaches the REPL. mpremote always runs as ``python -m mpremote connect <device> resume ...``:
   ``resume`` skips mpremote's soft reset, which would end the unix interpreter of an emulated
   board and is not needed on a real one.
3. A snippet exec'd on the board hashes every target file (``hashlib.sha256``); only files
   whose hash differs from the host's are copied.
4. Changed files are copied to temporary names (``<path>.new``). A second snippet hashes each
   temporary file, and only when every one matches renames them over the old files, then hashes
   the final files again for the host to check. A board that vanishes mid-copy keeps its old
   files (at worst a few ``.new`` files, removed by the next deploy); so does one whose copy
   arrives damaged. Modules under ``mnnfw/`` that the firmware no longer has are removed.
5. The board restarts: Ctrl-D at the REPL on an emulated board (the unix interpreter exits and
   the emulator boots the deployed ``main.py``), ``machine.reset()`` on a real one. The host
   then says HELLO until the board answers and checks that it reports the new firmware hash.

``dry_run`` stops after step 3, reports what would be copied, and restarts a board whose
firmware it stopped, so the board is left as it was.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import protocol
from .discover import hello_sweep
from .errors import ConfigError, SdkError, TransportError
from .fwinfo import firmware_dir, firmware_files, firmware_hash
from .link import Link
from .rig import BoardSpec, Rig, load_rig, resolve_ports
from .transport import Transport, check_url, open_transport

__all__ = [
    "BOARD_CFG",
    "FW_HASH_FILE",
    "TMP_SUFFIX",
    "BoardFile",
    "DeployResult",
    "board_config",
    "board_files",
    "device_of",
    "deploy",
    "failures",
    "format_table",
]

BOARD_CFG = "board.cfg"
"""The board's configuration file, read by ``main.py`` at boot."""
FW_HASH_FILE = "fw.hash"
"""The firmware-hash stamp, read by the firmware for HELLO."""
TMP_SUFFIX = ".new"
"""Suffix of the temporary names files are copied to before the rename."""

_EMU_HAL = "hal_emu"
_BOARD_HAL = "hal_board"
_PROMPT = b">>> "
_MARK = "MNN-DEPLOY "
_Progress = Callable[[int, str], None]


# ---------------------------------------------------------------------------------------------
# what goes on a board


@dataclass(frozen=True)
class BoardFile:
    """One file of a board's flash.

    Attributes:
        path: POSIX path relative to the board's flash root (``mnnfw/node.py``).
        data: the content.
    """

    path: str
    data: bytes

    @property
    def sha256(self) -> str:
        """Hex SHA-256 of the content (what the board's hash snippet computes)."""
        return hashlib.sha256(self.data).hexdigest()


def board_config(rig: Rig, spec: BoardSpec) -> dict[str, Any]:
    """The ``board.cfg`` content of one board: address, HAL module and HAL arguments."""
    hal = _EMU_HAL if rig.emulated else _BOARD_HAL
    return {"address": int(spec.address), "hal": hal, "hal_args": dict(spec.hal_args)}


def _hal_emu_file() -> Path:
    return Path(__file__).resolve().parent / "emulator" / "mp" / (_EMU_HAL + ".py")


def board_files(rig: Rig, spec: BoardSpec) -> list[BoardFile]:
    """Every file a deploy puts on one board of ``rig``, in copy order (``fw.hash`` last)."""
    root = firmware_dir()
    files = [BoardFile(p.relative_to(root).as_posix(), p.read_bytes()) for p in firmware_files()]
    if rig.emulated:
        files.append(BoardFile(_EMU_HAL + ".py", _hal_emu_file().read_bytes()))
    cfg = json.dumps(board_config(rig, spec), sort_keys=True) + "\n"
    files.append(BoardFile(BOARD_CFG, cfg.encode("utf-8")))
    files.append(BoardFile(FW_HASH_FILE, (firmware_hash() + "\n").encode("ascii")))
    return files


def device_of(url: str) -> str:
    """The serial device behind a port URL (mpremote needs a device, not a URL).

    Raises:
        ConfigError: the URL is malformed, or names no serial device (``emu://``: an in-process
            board has no REPL to deploy to; ``loop://``).
    """
    check_url(url)
    if "://" not in url:
        return url
    scheme, _, rest = url.partition("://")
    if scheme == "spy":
        return device_of(rest.split("?", 1)[0])
    if scheme == "serial":
        return rest.split("?", 1)[0]
    if scheme == "emu":
        raise ConfigError(
            f"{url} is an in-process emulated board, which cannot be deployed to: start "
            "MicroPython boards (mnn emulate --micropython --blank) and give their ports with --port"
        )
    raise ConfigError(f"{url} is not a serial port: deploy needs one (serial://<device>)")


# ---------------------------------------------------------------------------------------------
# results


@dataclass
class DeployResult:
    """What happened to one board.

    Attributes:
        address: the board's address.
        port: the port URL.
        copied: paths copied (or, in a dry run, that would be).
        skipped: paths already up to date.
        firmware_hash: the hash HELLO reported after the restart (None if it did not answer).
        ok: the board runs the new firmware (dry run: the board was reached).
        message: ``"deployed"``, ``"up to date"``, ``"dry run"`` or the one-line error.
    """

    address: int
    port: str
    copied: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    firmware_hash: str | None = None
    ok: bool = False
    message: str = ""

    def as_dict(self) -> dict[str, Any]:
        """A plain dict (for JSON)."""
        return {
            "address": self.address,
            "port": self.port,
            "copied": list(self.copied),
            "skipped": list(self.skipped),
            "firmware_hash": self.firmware_hash,
            "ok": self.ok,
            "message": self.message,
        }


def format_table(results: Sequence[DeployResult]) -> str:
    """The final table: board, port, files copied / skipped, firmware hash, result."""
    rows = [("board", "port", "copied", "skipped", "firmware hash", "result")]
    for r in results:
        rows.append((str(r.address), r.port, str(len(r.copied)), str(len(r.skipped)),
                     r.firmware_hash or "-", r.message))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join(
        ("  ".join(c.ljust(w) for c, w in zip(row[:-1], widths)) + "  " + row[-1]).rstrip()
        for row in rows
    )


# ---------------------------------------------------------------------------------------------
# the board's side: snippets exec'd through mpremote


def _hash_function() -> str:
    return (
        "def _h(p):\n"
        " try:\n"
        "  f=open(p,'rb')\n"
        " except OSError:\n"
        "  return None\n"
        " s=hashlib.sha256()\n"
        " while 1:\n"
        "  b=f.read(512)\n"
        "  if not b:\n"
        "   break\n"
        "  s.update(b)\n"
        " f.close()\n"
        " return binascii.hexlify(s.digest()).decode()\n"
    )


def _hash_snippet(paths: Sequence[str]) -> str:
    """Print the platform and the SHA-256 of each path (None when missing), on one marked line."""
    return (
        "import sys,hashlib,binascii,json\n"
        + _hash_function()
        + f"print('{_MARK}'+json.dumps({{'platform':sys.platform,'hashes':[_h(p) for p in {json.dumps(list(paths))}]}}))\n"
    )


def _prepare_snippet(dirs: Sequence[str]) -> str:
    """Create the directories the files go to."""
    return (
        "import os\n"
        f"for d in {json.dumps(list(dirs))}:\n"
        " try:\n"
        "  os.mkdir(d)\n"
        " except OSError:\n"
        "  pass\n"
    )


def _commit_snippet(files: Sequence[BoardFile], all_paths: Sequence[str], keep_modules: Sequence[str]) -> str:
    """Check every temporary file's hash; only if all match, rename them into place, remove
    stale modules and leftover temporary files, and print the final files' hashes."""
    table = [[f.path + TMP_SUFFIX, f.path, f.sha256] for f in files]
    leftovers = [p + TMP_SUFFIX for p in all_paths]
    return (
        "import os,hashlib,binascii,json\n"
        + _hash_function()
        + f"F={json.dumps(table)}\n"
        "bad=[f for t,f,e in F if _h(t)!=e]\n"
        "if bad:\n"
        " for t,f,e in F:\n"
        "  try:\n"
        "   os.remove(t)\n"
        "  except OSError:\n"
        "   pass\n"
        "else:\n"
        " for t,f,e in F:\n"
        "  try:\n"
        "   os.rename(t,f)\n"
        "  except OSError:\n"
        "   try:\n"
        "    os.remove(f)\n"
        "   except OSError:\n"
        "    pass\n"
        "   os.rename(t,f)\n"
        f" K={json.dumps(list(keep_modules))}\n"
        " try:\n"
        "  names=os.listdir('mnnfw')\n"
        " except OSError:\n"
        "  names=[]\n"
        " for n in names:\n"
        "  p='mnnfw/'+n\n"
        f"  if (n.endswith('.py') and p not in K) or n.endswith('{TMP_SUFFIX}'):\n"
        "   os.remove(p)\n"
        f" for p in {json.dumps(leftovers)}:\n"
        "  try:\n"
        "   os.remove(p)\n"
        "  except OSError:\n"
        "   pass\n"
        f"print('{_MARK}'+json.dumps({{'bad':bad,'final':[_h(f) for t,f,e in F]}}))\n"
    )


# ---------------------------------------------------------------------------------------------
# the host's side: serial probing, mpremote, restart, handshake


@dataclass
class _Probe:
    """How a board was found: running its firmware (``hello``) or at the REPL."""

    state: str  # "firmware" or "repl"
    address: int
    hello: dict[str, Any] = field(default_factory=dict)


class _Failure(Exception):
    """One board's deploy failed (the message is the table's result column)."""


def _open(url: str, device: str) -> Transport:
    if device.startswith("/") and not os.path.exists(device):
        raise TransportError(f"port {device} does not exist (is the board plugged in?)")
    return open_transport(url if url.startswith("serial://") else "serial://" + device)


def _read_for(transport: Transport, seconds: float, until: bytes | None = None) -> bytes:
    """Bytes read for ``seconds`` (or until ``until`` appears)."""
    out = b""
    deadline = time.monotonic() + seconds
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return out
        out += transport.read(min(remaining, 0.05))
        if until is not None and until in out:
            return out


def _repl_prompt(transport: Transport, wait: float) -> bool:
    """Whether a MicroPython REPL answers: Ctrl-C twice (stop anything), Ctrl-B (leave the raw
    REPL), then look for the ``>>>`` prompt."""
    transport.write(b"\r\x03\x03\x02")
    return _PROMPT in _read_for(transport, wait, _PROMPT)


def _probe(url: str, device: str, address: int, *, prompt_wait: float = 0.6) -> _Probe:
    """Find out what runs on a board without changing it (see the module docstring, step 1).

    Raises:
        TransportError: the port does not exist or cannot be opened, or neither the firmware
            nor a MicroPython REPL answers.
    """
    transport = _open(url, device)
    try:
        found = hello_sweep(transport, [address], timeout=0.3)
        if address in found:
            return _Probe("firmware", address, found[address])
        if _repl_prompt(transport, prompt_wait):
            return _Probe("repl", address)
        found = hello_sweep(transport, timeout=0.5)
        if found:
            other = min(found)
            return _Probe("firmware", other, found[other])
        if _repl_prompt(transport, 3 * prompt_wait):
            return _Probe("repl", address)
    finally:
        transport.close()
    raise TransportError(
        f"board {address} on {device}: neither the firmware nor a MicroPython REPL answers "
        "(is MicroPython on the board?)"
    )


def _stop_firmware(url: str, device: str, probe: _Probe) -> None:
    """Send the protocol's REPL command and wait for the REPL prompt."""
    transport = _open(url, device)
    link = Link(transport, timeout=1.0, retries=2, name=device)
    try:
        link.request(probe.address, protocol.Command.REPL)
        if not _repl_prompt(transport, 3.0):
            raise _Failure("the firmware left its loop but no REPL prompt followed")
    except SdkError as e:
        raise _Failure(f"cannot stop the running firmware: {e}") from e
    finally:
        link.close()


class _Mpremote:
    """``python -m mpremote connect <device> resume ...`` for one board."""

    def __init__(self, device: str, timeout: float) -> None:
        self.device = device
        self.timeout = timeout

    def run(self, *commands: str, what: str) -> str:
        """Run chained mpremote commands; return standard output.

        Raises:
            _Failure: mpremote failed or did not finish in time (its last error line is quoted).
        """
        argv = [sys.executable, "-m", "mpremote", "connect", self.device, "resume", *commands]
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=self.timeout, check=False)
        except subprocess.TimeoutExpired as e:
            raise _Failure(f"{what} did not finish in {self.timeout:g} s (board vanished?)") from e
        if done.returncode != 0:
            lines = [ln.strip() for ln in (done.stderr + done.stdout).splitlines() if ln.strip()]
            last = lines[-1] if lines else f"exit status {done.returncode}"
            raise _Failure(f"{what} failed: mpremote: {last}")
        return done.stdout

    def marked(self, *commands: str, what: str) -> dict[str, Any]:
        """Run commands whose last one prints a marked JSON line; return that line's value."""
        out = self.run(*commands, what=what)
        for line in reversed(out.splitlines()):
            if line.startswith(_MARK):
                try:
                    value: dict[str, Any] = json.loads(line[len(_MARK):])
                except ValueError as e:
                    raise _Failure(f"{what}: the board printed a damaged result ({e})") from e
                return value
        raise _Failure(f"{what}: the board printed no result (got {out.strip()[-80:]!r})")


def _restart(url: str, device: str, platform: str) -> None:
    """Restart a board at its friendly REPL into its (new) main.py."""
    transport = _open(url, device)
    try:
        if platform == "linux":
            # the unix port (an emulated board): Ctrl-D ends it and the emulator boots main.py
            transport.write(b"\r\x03\x03\x04")
        else:
            transport.write(b"\r\x03\x03import machine; machine.reset()\r")
    except SdkError as e:
        transport.close()
        raise _Failure(f"cannot restart the board: {e}") from e
    try:
        _read_for(transport, 0.05)  # let the bytes leave before the port closes
    except SdkError:
        pass  # a real board's USB device goes away as it resets
    finally:
        transport.close()


def _handshake(url: str, device: str, address: int, boot_timeout: float) -> dict[str, Any]:
    """Say HELLO until the restarted board answers (reopening the port: a real board's USB
    device disappears while it resets)."""
    deadline = time.monotonic() + boot_timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            link = Link(_open(url, device), timeout=0.5, retries=0, name=device)
        except SdkError as e:
            last = str(e)
            time.sleep(0.2)
            continue
        try:
            return link.request(address, protocol.Command.HELLO)
        except SdkError as e:
            last = str(e)
        finally:
            link.close()
    raise _Failure(f"no HELLO from address {address} within {boot_timeout:g} s of the restart ({last})")


# ---------------------------------------------------------------------------------------------
# one board


def _deploy_board(
    rig: Rig,
    spec: BoardSpec,
    url: str,
    probe: _Probe,
    *,
    dry_run: bool,
    timeout: float,
    boot_timeout: float,
    say: Callable[[str], None],
) -> DeployResult:
    device = device_of(url)
    result = DeployResult(spec.address, url)
    files = board_files(rig, spec)
    paths = [f.path for f in files]
    mp = _Mpremote(device, timeout)
    running = probe.state == "firmware"
    if running:
        say(f"stopping firmware {probe.hello.get('firmware_hash', '?')} (REPL command)")
        _stop_firmware(url, device, probe)
    say("hashing the files on the board")
    listing = mp.marked("exec", _hash_snippet(paths), what="hashing the board's files")
    platform = str(listing.get("platform", ""))
    remote = list(listing.get("hashes", []))
    if len(remote) != len(files):
        raise _Failure(f"the board hashed {len(remote)} files, expected {len(files)}")
    changed = [f for f, h in zip(files, remote) if h != f.sha256]
    result.copied = [f.path for f in changed]
    result.skipped = [f.path for f, h in zip(files, remote) if h == f.sha256]
    if dry_run:
        if running:
            _restart(url, device, platform)
            result.firmware_hash = str(_handshake(url, device, probe.address, boot_timeout).get("firmware_hash"))
        result.ok = True
        result.message = "dry run: " + (", ".join(result.copied) if changed else "nothing to copy")
        return result
    if changed:
        say(f"copying {len(changed)} of {len(files)} files")
        dirs = sorted({p.rsplit("/", 1)[0] for p in result.copied if "/" in p})
        keep = [p for p in paths if p.startswith("mnnfw/")]
        with tempfile.TemporaryDirectory(prefix="mnn-deploy-") as stage:
            commands: list[str] = ["exec", _prepare_snippet(dirs)]
            for i, f in enumerate(changed):
                local = os.path.join(stage, f"{i:03d}")
                with open(local, "wb") as out:
                    out.write(f.data)
                commands += ["+", "cp", local, ":" + f.path + TMP_SUFFIX]
            commands += ["+", "exec", _commit_snippet(changed, paths, keep)]
            verdict = mp.marked(*commands, what="copying")
        bad = list(verdict.get("bad", []))
        if bad:
            raise _Failure(f"{', '.join(bad)} arrived damaged (hash mismatch): nothing was replaced")
        final = list(verdict.get("final", []))
        wrong = [f.path for f, h in zip(changed, final) if h != f.sha256]
        if wrong or len(final) != len(changed):
            raise _Failure(f"{', '.join(wrong) or 'files'} do not hash as sent after the rename")
    say("restarting")
    _restart(url, device, platform)
    hello = _handshake(url, device, probe.address, boot_timeout)
    result.firmware_hash = str(hello.get("firmware_hash"))
    expected = firmware_hash()
    if result.firmware_hash != expected:
        raise _Failure(f"the board reports firmware {result.firmware_hash} after the restart, expected {expected}")
    result.ok = True
    result.message = "deployed" if changed else "up to date"
    if probe.address != spec.address:
        result.message += f" (answers as address {probe.address}, a stored CONFIGURE)"
    return result


# ---------------------------------------------------------------------------------------------
# the rig


def _select(rig: Rig, boards: Sequence[int] | None) -> list[BoardSpec]:
    if not boards:
        return list(rig.boards)
    return [rig.board(a) for a in boards]


def _urls(rig: Rig, selected: Sequence[BoardSpec], ports: Mapping[int, str]) -> dict[int, str]:
    for address, url in ports.items():
        rig.board(address)
        check_url(url)
    ports = {s.address: ports[s.address] for s in selected if s.address in ports}
    pending = [s for s in selected if s.address not in ports and s.port is None]
    if pending:
        rig = resolve_ports(rig)
    urls: dict[int, str] = {}
    for spec in selected:
        found = ports.get(spec.address) or rig.board(spec.address).port
        if not found:
            raise ConfigError(f"board {spec.address} has no port: give one with --port")
        urls[spec.address] = found
    by_device: dict[str, list[int]] = {}
    for address, url in urls.items():
        by_device.setdefault(device_of(url), []).append(address)
    for device, addresses in by_device.items():
        if len(addresses) > 1:
            raise ConfigError(
                f"boards {', '.join(map(str, addresses))} share the port {device} (a bus): deploy "
                "needs each board on its own USB port"
            )
    return urls


def deploy(
    rig: Rig | str,
    *,
    boards: Sequence[int] | None = None,
    ports: Mapping[int, str] | None = None,
    dry_run: bool = False,
    jobs: int = 4,
    timeout: float = 60.0,
    boot_timeout: float = 20.0,
    progress: _Progress | None = None,
) -> list[DeployResult]:
    """Deploy the firmware and each board's configuration to the boards of a rig.

    Args:
        rig: the rig (or what :func:`~host_sdk.rig.load_rig` accepts).
        boards: addresses of the boards to deploy (default: every board).
        ports: address -> port URL, overriding the rig's ports (an emulated rig's terminals);
            entries for boards not being deployed are ignored.
        dry_run: only report what would be copied (boards are left as they were).
        jobs: boards deployed at the same time.
        timeout: seconds one mpremote run may take.
        boot_timeout: seconds a restarted board may take to answer HELLO.
        progress: called with ``(address, message)`` as each board advances.

    Returns:
        One :class:`DeployResult` per board, in rig order. A board that fails mid-deploy (it
        vanished, its copy arrived damaged, it did not come back) has ``ok`` false and the
        reason in ``message``; the other boards go on.

    Raises:
        ConfigError: a bad argument, an unknown board address, a port URL that names no serial
            device, boards sharing one port.
        TransportError: before any board is touched: a port that does not exist, a board with
            a USB serial number that is not connected, or a board where neither the firmware nor
            a MicroPython REPL answers.
    """
    the_rig = load_rig(rig) if isinstance(rig, str) else rig
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ConfigError(f"jobs must be an integer >= 1, got {jobs!r}")
    selected = _select(the_rig, boards)
    urls = _urls(the_rig, selected, dict(ports or {}))
    lock = threading.Lock()

    def say(address: int, text: str) -> None:
        if progress is not None:
            with lock:
                progress(address, text)

    with ThreadPoolExecutor(max_workers=min(jobs, len(selected))) as pool:
        probes = list(pool.map(
            lambda s: _probe(urls[s.address], device_of(urls[s.address]), s.address), selected
        ))
        for spec, probe in zip(selected, probes):
            what = f"firmware {probe.hello.get('firmware_hash', '?')}" if probe.state == "firmware" else "REPL"
            say(spec.address, f"found {what} on {device_of(urls[spec.address])}")

        def one(item: tuple[BoardSpec, _Probe]) -> DeployResult:
            spec, probe = item
            try:
                return _deploy_board(
                    the_rig, spec, urls[spec.address], probe, dry_run=dry_run, timeout=timeout,
                    boot_timeout=boot_timeout, say=lambda text: say(spec.address, text),
                )
            except (_Failure, SdkError, OSError) as e:
                say(spec.address, f"failed: {e}")
                return DeployResult(spec.address, urls[spec.address], message=f"failed: {e}")

        results = list(pool.map(one, zip(selected, probes)))
    for r in results:
        say(r.address, r.message)
    return results


def failures(results: Sequence[DeployResult]) -> list[str]:
    """One line per board that failed (``board N on PORT: reason``)."""
    return [f"board {r.address} on {r.port}: {r.message}" for r in results if not r.ok]

