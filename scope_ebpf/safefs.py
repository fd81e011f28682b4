"""Creating output as root without being tricked by the file system.

scope-ebpf runs as root and writes where users tell it to, often under /tmp.
Everything below the output root is reached through directory file
descriptors with ``O_NOFOLLOW``, files are created with ``O_EXCL`` (never
opened if they exist, so never truncated), and finished files are published
with ``link()`` (which refuses to replace), so a symlink or file planted in
the path makes the write fail instead of landing elsewhere.

Ownership: output belongs to the user who asked (``SUDO_UID``/``SUDO_GID``
under sudo), private (0700/0600) unless a group is given to share it with
(0750/0640).
"""

from __future__ import annotations

import errno
import grp
import os
import stat
from dataclasses import dataclass

from .errors import ScopeError

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True)
class Ownership:
    """Who owns what scope-ebpf creates, and with which modes."""

    uid: int = -1      # -1: leave as created (root when run as root)
    gid: int = -1
    shared: bool = False  # group-readable

    @property
    def dir_mode(self) -> int:
        return 0o750 if self.shared else 0o700

    @property
    def file_mode(self) -> int:
        return 0o640 if self.shared else 0o600

    def apply(self, fd: int, mode: int) -> None:
        os.fchmod(fd, mode)
        if self.uid != -1 or self.gid != -1:
            os.fchown(fd, self.uid, self.gid)


AS_CREATED = Ownership()  # root's, private


def invoking_user(group: str | None = None) -> Ownership:
    """The user behind sudo (else whoever runs us) and, with ``group``, that group."""
    uid = _env_id("SUDO_UID")
    gid = _env_id("SUDO_GID")
    if group is not None:
        gid = group_id(group)
    return Ownership(uid if uid is not None else -1, gid if gid is not None else -1,
                     shared=group is not None)


def group_id(name: str) -> int:
    try:
        return int(name) if name.isdigit() else grp.getgrnam(name).gr_gid
    except KeyError:
        raise ScopeError(f"no such group: {name}") from None


def _env_id(name: str) -> int | None:
    v = os.environ.get(name, "")
    return int(v) if v.isdigit() else None


def open_root(path: str, owner: Ownership) -> int:
    """Create (0700/0750) or open the output root; its fd.

    The last component must not be a symlink, and a directory that exists must
    belong to root, to us, or to the user we write for: a directory planted by
    another user (e.g. in /tmp) is refused rather than written into.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        st = None
    if st is not None:
        if stat.S_ISLNK(st.st_mode):
            raise ScopeError(f"output path {path} is a symlink: refusing to follow it")
        if not stat.S_ISDIR(st.st_mode):
            raise ScopeError(f"output path {path} exists and is not a directory")
        allowed = {0, os.geteuid(), owner.uid}
        if st.st_uid not in allowed:
            raise ScopeError(f"output directory {path} belongs to another user "
                             f"(uid {st.st_uid}): refusing to write into it")
    created = False
    if st is None:
        parent = os.path.dirname(os.path.abspath(path))
        try:
            os.makedirs(parent, mode=0o755, exist_ok=True)
            os.mkdir(path, owner.dir_mode)
            created = True
        except FileExistsError:
            return open_root(path, owner)  # raced: check what is there now
    fd = os.open(path, DIR_FLAGS)
    if created:
        owner.apply(fd, owner.dir_mode)
    return fd


def subdir(parent_fd: int, rel: str, owner: Ownership) -> int:
    """fd of ``rel`` (one or more components) under ``parent_fd``, created as needed,
    never following a symlink."""
    fd = os.dup(parent_fd)
    try:
        for name in rel.split("/"):
            if not name or name in (".", ".."):
                raise ScopeError(f"bad output path component {name!r} in {rel!r}")
            try:
                os.mkdir(name, owner.dir_mode, dir_fd=fd)
                new = os.open(name, DIR_FLAGS, dir_fd=fd)
                owner.apply(new, owner.dir_mode)
            except FileExistsError:
                try:
                    new = os.open(name, DIR_FLAGS, dir_fd=fd)  # ELOOP/ENOTDIR if planted
                except NotADirectoryError:
                    if stat.S_ISLNK(os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode):
                        raise OSError(errno.ELOOP, "a symlink, not followed", name) from None
                    raise
            os.close(fd)
            fd = new
        return fd
    except BaseException:
        os.close(fd)
        raise


def create(dir_fd: int, name: str, owner: Ownership) -> int:
    """A new file: fails if anything already has the name (no truncation, no symlink)."""
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 owner.file_mode, dir_fd=dir_fd)
    try:
        owner.apply(fd, owner.file_mode)
    except BaseException:
        os.close(fd)
        os.unlink(name, dir_fd=dir_fd)
        raise
    return fd


def publish(dir_fd: int, tmp: str, final: str) -> None:
    """Give a finished file its final name without replacing anything there."""
    try:
        os.link(tmp, final, src_dir_fd=dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV):
            raise  # EEXIST above all: someone else's file keeps its name
        # no hard links on this file system: a rename, after checking the name is free
        try:
            os.stat(final, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            os.rename(tmp, final, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            return
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), final) from None
    os.unlink(tmp, dir_fd=dir_fd)
