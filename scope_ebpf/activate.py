"""Turn on CPython's perf trampoline in a running 3.14+ process (PEP 768).

Only on explicit request (``trace --activate``): this executes code inside
the target. The target's own interpreter binary runs ``sys.remote_exec`` from
the host, through the target root's dynamic loader so that it also works for
a process in a chroot or container; the script it sends lives at the same
path in both roots, because the caller checks that it exists and the target
reads it.
"""

from __future__ import annotations

import os
import secrets
import subprocess

from .errors import ScopeError

SCRIPT = "import sys\nsys.activate_stack_trampoline('perf')\n"
_LIBDIRS = ("lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu", "lib64", "usr/lib64",
            "lib", "usr/lib")


def _command(pid: int, binary: str, version: str) -> tuple[list[str], dict[str, str]]:
    root = f"/proc/{pid}/root"
    if os.path.samefile(root, "/"):
        return [binary], {}
    loader = os.path.join(root, "lib64/ld-linux-x86-64.so.2")
    if not os.path.exists(loader):
        raise ScopeError(f"process {pid}: no x86-64 dynamic loader in its root to run "
                         "sys.remote_exec with")
    libs = ":".join(os.path.join(root, d) for d in _LIBDIRS if os.path.isdir(os.path.join(root, d)))
    return [loader, "--library-path", libs, binary], {"PYTHONHOME": os.path.join(root, "usr")}


def check_version(pid: int, version: str) -> None:
    """Raise ScopeError unless ``version`` has sys.remote_exec (3.14+)."""
    try:
        ok = tuple(int(x) for x in version.split(".")[:2]) >= (3, 14)
    except ValueError:
        ok = False
    if not ok:
        raise ScopeError(f"process {pid}: --activate needs CPython 3.14+ (sys.remote_exec); "
                         f"it runs {version}")


def perf_trampoline(pid: int, binary: str, version: str, timeout: float = 10) -> list[str]:
    """Ask process ``pid`` to activate the perf trampoline; raise ScopeError if it fails.

    Returns the script copies to delete once the target has run it (at the
    session's end: the target reads it at its next safe point, not now).
    """
    check_version(pid, version)
    argv, env = _command(pid, binary, version)
    name = f"/tmp/scope-ebpf-activate-{secrets.token_hex(8)}.py"
    paths = {name, _root_of(pid) + name}
    try:
        for p in paths:
            fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
            with os.fdopen(fd, "w") as f:
                f.write(SCRIPT)
        r = subprocess.run([*argv, "-I", "-c", f"import sys; sys.remote_exec({pid}, {name!r})"],
                           capture_output=True, text=True, timeout=timeout,
                           env={"PATH": "/usr/bin:/bin", **env})
        if r.returncode != 0:
            last = (r.stderr.strip().splitlines() or ["failed"])[-1]
            raise ScopeError(f"process {pid}: sys.remote_exec failed: {last}")
    except subprocess.TimeoutExpired:
        raise ScopeError(f"process {pid}: sys.remote_exec timed out") from None
    except OSError as e:
        remove(paths)
        raise ScopeError(f"process {pid}: cannot prepare sys.remote_exec: {e}") from None
    except BaseException:
        remove(paths)
        raise
    return sorted(paths)


def _root_of(pid: int) -> str:
    """The target's root as a host path that outlives the target, if there is one."""
    link = f"/proc/{pid}/root"
    real = os.path.realpath(link)
    try:
        if os.path.samefile(real, link):
            return real.rstrip("/")
    except OSError:
        pass
    return link


def remove(paths) -> None:
    for p in paths:
        try:
            os.unlink(p)
        except OSError:
            pass
