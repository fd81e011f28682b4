"""Start a traced program with the probes already live.

The child is forked, then held on a pipe until the controller has put its
pid in the kernel's target set; only then does it exec, so the first Python
call is already traced. It keeps its argv, cwd, environment and stdio.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from .errors import ScopeError

HOOK_DIR = str(Path(__file__).resolve().parent / "hook")


@dataclass
class Child:
    pid: int
    argv: list[str]
    path: str          # what was exec'd
    interpreter: str   # the ELF that runs it (holds the probes)


def in_root(root: str, path: str) -> str:
    """Host path of ``path`` as seen inside ``root``: symlinks resolved inside it.

    Absolute link targets are taken relative to the root, so a link in a
    container image never escapes to the host's file of the same name.
    """
    if root in ("", "/"):
        return os.path.realpath(path)
    parts = [p for p in path.split("/") if p]
    done: list[str] = []
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == ".":
            continue
        if part == "..":
            if done:
                done.pop()
            continue
        host = os.path.join(root, *done, part)
        if os.path.islink(host):
            hops += 1
            if hops > 40:
                raise ScopeError(f"too many symlinks resolving {path} in {root}")
            target = os.readlink(host)
            if target.startswith("/"):
                done = []
            parts = [p for p in target.split("/") if p] + parts
            continue
        done.append(part)
    return os.path.join(root, *done)


def _which(name: str, root: str) -> str | None:
    """PATH lookup, inside ``root`` when one is given (returns the path in the root)."""
    if "/" in name:
        return name
    if root in ("", "/"):
        return shutil.which(name)
    for d in ("/usr/local/bin", "/usr/bin", "/bin", "/usr/local/sbin", "/usr/sbin"):
        cand = f"{d}/{name}"
        if os.path.isfile(in_root(root, cand)):
            return cand
    return None


def resolve(argv: list[str], root: str = "/") -> tuple[str, str]:
    """(executable as seen in root, host path of the interpreter ELF), one shebang followed."""
    if not argv:
        raise ScopeError("no command given: scope-ebpf run -- python3 app.py")
    exe = _which(argv[0], root)
    host = in_root(root, exe) if exe else None
    if not host or not os.path.isfile(host):
        where = f" in {root}" if root not in ("", "/") else ""
        raise ScopeError(f"command not found{where}: {argv[0]}")
    if not os.access(host, os.X_OK):
        raise ScopeError(f"command is not executable: {exe}")
    with open(host, "rb") as f:
        head = f.read(256)
    if head.startswith(b"\x7fELF"):
        return exe, host
    if head.startswith(b"#!"):
        words = head[2:].split(b"\n", 1)[0].decode(errors="replace").split()
        if words and os.path.basename(words[0]) == "env" and len(words) > 1:
            interp = _which(words[1], root)
        else:
            interp = words[0] if words else None
        if interp and os.path.isfile(in_root(root, interp)):
            return exe, in_root(root, interp)
    raise ScopeError(f"{exe} is neither a Python interpreter nor a script with a #! line")


def hook_env(env: dict[str, str]) -> dict[str, str]:
    """The environment that makes a 3.11 child install the profile hook."""
    env = dict(env)
    orig = env.get("PYTHONPATH")
    env["SCOPE_EBPF_HOOK"] = "1"
    if orig is not None:
        env["SCOPE_EBPF_PYTHONPATH"] = orig
    env["PYTHONPATH"] = HOOK_DIR if not orig else HOOK_DIR + os.pathsep + orig
    return env


def fork_held(exe: str, argv: list[str], env: dict[str, str],
              root: str = "/") -> tuple[int, int, int]:
    """Fork a child that waits on a pipe before exec (in ``root``, if not /).

    Returns (pid, go_fd, err_fd): write a byte to go_fd to release it; err_fd
    yields the errno text if exec failed, EOF if it succeeded.
    """
    go_r, go_w = os.pipe()
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:  # child: only async-signal-safe work until exec
        try:
            os.close(go_w)
            os.close(err_r)
            if os.read(go_r, 1) != b"g":
                os._exit(126)
            os.close(go_r)
            if root not in ("", "/"):
                cwd = os.getcwd()
                os.chroot(root)
                rel = os.path.relpath(cwd, root)
                os.chdir("/" + rel if not rel.startswith("..") else "/")
            os.execve(exe, argv, env)
        except OSError as e:
            os.write(err_w, f"{e.strerror}".encode())
        except BaseException as e:  # noqa: BLE001 - report anything, never run on
            os.write(err_w, str(e).encode() or b"exec failed")
        finally:
            os._exit(127)
    os.close(go_r)
    os.close(err_w)
    return pid, go_w, err_r


def release(pid: int, go_fd: int, err_fd: int, exe: str) -> None:
    """Let a held child exec; raise ScopeError if the exec failed."""
    try:
        os.write(go_fd, b"g")
    finally:
        os.close(go_fd)
    with os.fdopen(err_fd, "rb") as f:
        err = f.read()
    if err:
        os.waitpid(pid, 0)
        raise ScopeError(f"cannot run {exe}: {err.decode(errors='replace')}")


def cancel(pid: int, go_fd: int, err_fd: int) -> None:
    """Let a held child die without exec (set-up failed)."""
    os.close(go_fd)  # EOF: the child exits 126
    os.close(err_fd)
    os.waitpid(pid, 0)


def exit_code(status: int) -> int:
    """Shell convention: 128+N for a child killed by signal N."""
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code
