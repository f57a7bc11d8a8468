"""Where the node firmware ships inside the host package, and its identity hash.

The folder ``firmware/`` of the source tree is the package ``host_sdk.firmware``; these helpers
find it through :mod:`importlib.resources`, so they work for an editable and an installed
package alike.
"""

from __future__ import annotations

import hashlib
from importlib import resources
from pathlib import Path

HASH_CHARS = 16
"""Hex characters of :func:`firmware_hash`."""


def firmware_dir() -> Path:
    """The directory holding ``main.py``, ``hal_board.py`` and ``mnnfw/``."""
    root = resources.files("host_sdk.firmware")
    return Path(str(root))


def firmware_files() -> list[Path]:
    """The files deployed to a board, sorted by their path relative to :func:`firmware_dir`.

    ``main.py``, ``hal_board.py`` and every ``mnnfw/*.py``; never the host-only
    ``__init__.py`` at the top, nor caches.
    """
    root = firmware_dir()
    files = [root / name for name in ("main.py", "hal_board.py") if (root / name).is_file()]
    files += [p for p in (root / "mnnfw").glob("*.py") if p.is_file()]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def firmware_hash() -> str:
    """First 16 hex characters of a SHA-256 over the deployed files.

    For each file in sorted order the digest takes its relative POSIX path, a ``0x00``, the
    content length in decimal ASCII, a ``0x00``, then the content. Deploy writes this value to
    ``fw.hash`` on the board, and HELLO reports it.
    """
    root = firmware_dir()
    h = hashlib.sha256()
    for path in firmware_files():
        data = path.read_bytes()
        h.update(path.relative_to(root).as_posix().encode("utf-8"))
        h.update(b"\x00")
        h.update(str(len(data)).encode("ascii"))
        h.update(b"\x00")
        h.update(data)
    return h.hexdigest()[:HASH_CHARS]
