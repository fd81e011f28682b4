"""Retention of a daemon's output root: the oldest closed parts go first.

Only closed parts (``part-*.parquet``) are ever deleted; a part being written
is a hidden ``.tmp`` file and is never touched, though its bytes count.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Part:
    path: Path
    size: int
    mtime: float


def scan(root: Path) -> tuple[list[Part], int]:
    """(closed parts oldest first, bytes of everything under root)."""
    parts: list[Part] = []
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = Path(dirpath) / name
            try:
                st = path.stat()
            except OSError:
                continue  # shipped or rotated meanwhile
            total += st.st_size
            if name.startswith("part-") and name.endswith(".parquet"):
                parts.append(Part(path, st.st_size, st.st_mtime))
    parts.sort(key=lambda p: (p.mtime, str(p.path)))
    return parts, total


def enforce(root: Path, retain_bytes: int, retain_days: float,
            now: float | None = None,
            scanned: tuple[list[Part], int] | None = None) -> list[Part]:
    """Delete closed parts older than ``retain_days``, then the oldest until the
    root holds at most ``retain_bytes`` (0 = no limit). Returns what was deleted.
    ``scanned``: scan(root) if the caller has just made it."""
    if retain_bytes <= 0 and retain_days <= 0:
        return []  # no limits: no need to walk the tree every few seconds
    now = time.time() if now is None else now
    parts, total = scanned if scanned is not None else scan(root)
    deleted: list[Part] = []
    for p in parts:
        too_old = retain_days > 0 and now - p.mtime > retain_days * 86400
        too_big = retain_bytes > 0 and total > retain_bytes
        if not (too_old or too_big):
            break  # oldest first: every later part is younger
        try:
            p.path.unlink()
        except FileNotFoundError:
            pass
        except OSError:
            continue
        total -= p.size
        deleted.append(p)
        prune_empty_dirs(p.path.parent, root)
    return deleted


def prune_empty_dirs(d: Path, root: Path) -> None:
    """Remove partition directories left empty, up to the table directory."""
    while d != root and d.parent != root:
        try:
            d.rmdir()
        except OSError:
            return
        d = d.parent
