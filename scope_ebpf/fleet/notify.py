"""systemd's notify protocol (READY, STATUS, WATCHDOG), spoken without libsystemd.

A datagram to the unix socket named in ``$NOTIFY_SOCKET`` (a leading ``@``
means the abstract namespace); without that variable every call is a no-op.
"""

from __future__ import annotations

import os
import socket


def notify(state: str) -> bool:
    """Send e.g. ``"READY=1\\nSTATUS=tracing 3 processes"``; True if sent."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return False
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    try:
        # never blocking: a reader that does not keep up (a unix datagram queue
        # holds 10) must not stop the daemon; the message is dropped instead
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
                           | socket.SOCK_NONBLOCK) as s:
            s.sendto(state.encode(), addr)
    except OSError:
        return False
    return True


def watchdog_interval() -> float | None:
    """Seconds between WATCHDOG=1 pings (half systemd's WatchdogSec), or None."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return int(usec) / 2e6
    except ValueError:
        return None
