"""Shipping closed parts to S3-compatible object storage through ``pyarrow.fs``.

A background thread uploads every closed part under the root to
``bucket/prefix/<path relative to root>`` (the Hive layout is kept, so the
bucket is one dataset), confirms the object's size, and only then deletes the
local file. Failures back off exponentially (1 s doubling to 5 min) and are
counted; nothing is deleted that was not confirmed. Credentials come from the
environment (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``), never the config.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlparse

from . import retention
from .fleet.config import Shipping

MAX_BACKOFF = 300.0


def filesystem(cfg: Shipping):
    from pyarrow import fs

    kw: dict = {"region": cfg.region}
    if cfg.endpoint:
        u = urlparse(cfg.endpoint if "://" in cfg.endpoint else "https://" + cfg.endpoint)
        kw.update(endpoint_override=u.netloc, scheme=u.scheme or "https")
    # bounded: a dead endpoint must not hold the thread (or shutdown) for minutes
    return fs.S3FileSystem(connect_timeout=5, request_timeout=30, **kw)


class Shipper:
    """Uploads closed parts in a thread; ``stats`` counts files, bytes, failures."""

    def __init__(self, cfg: Shipping, root: Path,
                 warn: Callable[[str], None] = lambda s: None) -> None:
        self.cfg = cfg
        self.root = root
        self.warn = warn
        self.stats = {"files": 0, "bytes": 0, "failures": 0}
        self.last_upload: float | None = None  # epoch s of the last confirmed upload
        self.last_error: str | None = None
        self._fs = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._backoff = 0.0
        self._thread = threading.Thread(target=self._loop, name="scope-ship", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def kick(self) -> None:
        """Look for closed parts now (after a rotation)."""
        self._wake.set()

    def stop(self, timeout: float = 10) -> None:
        """One last pass for the files closed at shutdown, bounded by ``timeout``."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout)

    def key(self, path: Path) -> str:
        rel = path.relative_to(self.root).as_posix()
        return "/".join(p for p in (self.cfg.bucket, self.cfg.prefix, rel) if p)

    def ship_once(self) -> int:
        """Upload every closed part; returns the number shipped. Raises on failure."""
        from pyarrow import fs

        if self._fs is None:
            self._fs = filesystem(self.cfg)
        parts, _ = retention.scan(self.root)
        shipped = 0
        for part in parts:
            key = self.key(part.path)
            try:
                with open(part.path, "rb") as src, self._fs.open_output_stream(key) as dst:
                    while chunk := src.read(1 << 20):
                        dst.write(chunk)
            except FileNotFoundError:
                continue  # removed by retention meanwhile
            info = self._fs.get_file_info(key)
            if info.type != fs.FileType.File or info.size != part.size:
                raise OSError(f"upload of {key} not confirmed (size {info.size} != {part.size})")
            if self.cfg.delete_after_upload:
                part.path.unlink(missing_ok=True)
                retention.prune_empty_dirs(part.path.parent, self.root)
            self.stats["files"] += 1
            self.stats["bytes"] += part.size
            self.last_upload = time.time()
            shipped += 1
        return shipped

    def _loop(self) -> None:
        while True:
            stopping = self._stop.is_set()
            try:
                self.ship_once()
                self._backoff = 0.0
                self.last_error = None
            except Exception as e:  # network, credentials, bucket: retried, never fatal
                self.stats["failures"] += 1
                self._backoff = min(MAX_BACKOFF, max(1.0, self._backoff * 2))
                msg = str(e).splitlines()[0] if str(e) else type(e).__name__
                if msg != self.last_error:
                    self.warn(f"shipping to {self.cfg.endpoint or 's3'}/{self.cfg.bucket} "
                              f"failed (retrying in {self._backoff:.0f} s): {msg}")
                self.last_error = msg
            if stopping:
                return
            self._wake.wait(self._backoff or self.cfg.interval_seconds)
            self._wake.clear()
