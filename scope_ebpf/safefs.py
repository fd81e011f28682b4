"""Creating output as root without being tricked by the file system.

scope-ebpf runs as root and writes where users tell it to, often under /tmp.
An output path is resolved one component at a time from ``/`` (a symlink on
the way is followed only if only root can change it, see :func:`open_dir`),
everything below it is reached through directory file descriptors with
``O_NOFOLLOW``, files are created with ``O_EXCL`` (never
opened if they exist, so never truncated), and finished files are published
with ``link()`` (which refuses to replace), so a symlink or file planted in
the path makes the write fail instead of landing elsewhere.

Ownership: output belongs to the user who asked (``SUDO_UID``/``SUDO_GID``
under sudo), private (0700/0600) unless a group is given to share it with
(0750/0640).
"""

from __future__ import annotations

import contextlib
import errno
import grp
import os
import secrets
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


_MAX_LINKS = 40  # as the kernel's ELOOP limit


def _root_only(link: os.stat_result, dir_fd: int) -> bool:
    """A symlink only root can change: root's, in a directory that is root's and
    writable by nobody else (such as /var/run -> /run). Not running as root, the
    user's own count as root's: nobody else can change them either."""
    d = os.fstat(dir_fd)
    trusted = {0, os.geteuid()}
    return link.st_uid in trusted and d.st_uid in trusted and not d.st_mode & 0o022


def open_dir(path: str, create: bool = False) -> int:
    """fd of the directory ``path``, resolved one component at a time from ``/``.

    Each component is opened with ``O_NOFOLLOW`` relative to the one before, so
    the directory reached is the one checked. A symlink on the way is followed
    only if only root can change it (see :func:`_root_only`); any other, such as
    ``/tmp/x/link -> /etc`` planted by a user, is refused. ``create``: missing
    directories are made (0755, root's), as ``mkdir -p`` would.
    """
    parts = os.path.abspath(path).split("/")[1:]
    parts.reverse()  # a stack: symlink targets are pushed on it
    fd = os.open("/", DIR_FLAGS)
    walked = ""  # where fd is, for messages
    links = 0
    try:
        while parts:
            name = parts.pop()
            if name in ("", "."):
                continue
            if name == "..":
                new, walked = os.open("..", DIR_FLAGS, dir_fd=fd), os.path.dirname(walked)
            else:
                try:
                    st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                except FileNotFoundError:
                    if not create:
                        raise
                    try:
                        os.mkdir(name, 0o755, dir_fd=fd)
                    except FileExistsError:
                        pass  # raced: whatever is there now is checked below
                    st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                here = f"{walked}/{name}"
                if stat.S_ISLNK(st.st_mode):
                    if not _root_only(st, fd):
                        raise ScopeError(f"{here} is a symlink that a user other than root "
                                         "can change: refusing to follow it")
                    links += 1
                    if links > _MAX_LINKS:
                        raise ScopeError(f"{path}: too many levels of symbolic links")
                    target = os.readlink(name, dir_fd=fd)
                    parts.extend(reversed(target.split("/")))
                    if target.startswith("/"):
                        new, walked = os.open("/", DIR_FLAGS), ""
                    else:
                        continue
                else:
                    # ELOOP if a symlink replaced it since the stat; ENOTDIR for a file
                    new, walked = os.open(name, DIR_FLAGS, dir_fd=fd), here
            os.close(fd)
            fd = new
        return fd
    except BaseException:
        os.close(fd)
        raise


def open_root(path: str, owner: Ownership) -> int:
    """Create (0700/0750) or open the output root; its fd.

    Its parents are resolved by :func:`open_dir` (created if missing; a symlink
    that a user other than root can change is refused). The last component must
    not be a symlink, and a directory that exists must belong to root, to us, or
    to the user we write for: a directory planted by another user (e.g. in
    /tmp) is refused rather than written into.
    """
    parent, name = os.path.split(os.path.abspath(path))
    if not name:
        return open_dir(parent)  # "/"
    try:
        parent_fd = open_dir(parent, create=True)
    except ScopeError as e:
        raise ScopeError(f"output path {path}: {e}") from None
    try:
        while True:
            try:
                st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
            except FileNotFoundError:
                try:
                    os.mkdir(name, owner.dir_mode, dir_fd=parent_fd)
                except FileExistsError:
                    continue  # raced: check what is there now
                fd = os.open(name, DIR_FLAGS, dir_fd=parent_fd)
                try:
                    owner.apply(fd, owner.dir_mode)
                except BaseException:
                    os.close(fd)
                    raise
                return fd
            if stat.S_ISLNK(st.st_mode):
                raise ScopeError(f"output path {path} is a symlink: refusing to follow it")
            if not stat.S_ISDIR(st.st_mode):
                raise ScopeError(f"output path {path} exists and is not a directory")
            allowed = {0, os.geteuid(), owner.uid}
            if st.st_uid not in allowed:
                raise ScopeError(f"output directory {path} belongs to another user "
                                 f"(uid {st.st_uid}): refusing to write into it")
            return os.open(name, DIR_FLAGS, dir_fd=parent_fd)
    finally:
        os.close(parent_fd)


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


def write_file(path: str, data: bytes, owner: Ownership, replace: bool = False) -> None:
    """Write ``path`` (0600/0640, ``owner``'s) atomically: a new file with a
    temporary name, given ``path`` once complete.

    The parent directory must exist and is reached by :func:`open_dir`. An
    existing ``path`` is kept (FileExistsError) unless ``replace``; even then only
    a regular file is replaced (a symlink or device named there is refused, never
    followed or written through).
    """
    parent, name = os.path.split(os.path.abspath(path))
    if not name:
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
    try:
        dir_fd = open_dir(parent)
    except ScopeError as e:
        raise ScopeError(f"output path {path}: {e}") from None
    try:
        if replace:
            try:
                st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                pass
            else:
                if not stat.S_ISREG(st.st_mode):
                    raise ScopeError(f"{path} exists and is not a regular file: "
                                     "refusing to replace it")
        tmp = f".{name}.{secrets.token_hex(4)}.tmp"
        fd = create(dir_fd, tmp, owner)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            if replace:
                os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            else:
                publish(dir_fd, tmp, name)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp, dir_fd=dir_fd)
            raise
    finally:
        os.close(dir_fd)
