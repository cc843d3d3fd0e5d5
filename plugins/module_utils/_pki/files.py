# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# PRIVATE to the kubepki.certs collection.
"""File system side of the engine: read, atomic write (temp + fsync + rename), private dirs."""

from __future__ import annotations

import errno
import os
import stat
import tempfile

from ansible_collections.kubepki.certs.plugins.module_utils._pki.errors import InvalidInputError, WriteError

PRIVATE_FILE_MODE = 0o600
PUBLIC_FILE_MODE = 0o644
PRIVATE_DIR_MODE = 0o700


def read_bytes(path: str, *, what: str = "file") -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except FileNotFoundError:
        raise InvalidInputError("%s %s does not exist" % (what, path), path=path) from None
    except IsADirectoryError:
        raise InvalidInputError("%s %s is a directory, expected a file" % (what, path), path=path) from None
    except OSError as exc:
        raise InvalidInputError("%s %s cannot be read: %s" % (what, path, exc.strerror), path=path) from None


def read_if_exists(path: str) -> bytes | None:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise InvalidInputError("%s cannot be read: %s" % (path, exc.strerror), path=path) from None


def check_writable_dir(path: str) -> None:
    """Raise a WriteError naming ``path`` (or its first existing parent) when we could not write there."""
    probe = path
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    if not os.path.isdir(probe):
        raise WriteError("%s is not a directory" % probe, path=probe)
    if not os.access(probe, os.W_OK | os.X_OK):
        raise WriteError("directory %s is not writable by this user" % probe, path=probe)


def ensure_dir(path: str, *, mode: int = PRIVATE_DIR_MODE) -> bool:
    """Create ``path`` and its missing parents, each with ``mode``; return True when something was created.

    Every directory created here gets ``mode`` (os.makedirs would give the parents the umask's default)."""
    if os.path.isdir(path):
        return False
    missing = []
    current = os.path.abspath(path)
    while not os.path.isdir(current):
        missing.append(current)
        parent = os.path.dirname(current)
        if parent == current:
            break
        current = parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, mode)
            os.chmod(directory, mode)  # mkdir honours the umask
        except FileExistsError:
            if not os.path.isdir(directory):
                raise WriteError("cannot create directory %s: a file is in the way" % directory, path=directory) from None
        except OSError as exc:
            raise WriteError("cannot create directory %s: %s" % (directory, exc.strerror), path=directory) from None
    return True


def atomic_write(path: str, data: bytes, *, mode: int) -> None:
    """Write via a temp file in the same directory, fsync, rename; keep owner and group of a file replaced."""
    directory = os.path.dirname(path) or "."
    owner = None
    try:
        current = os.stat(path)
        owner = (current.st_uid, current.st_gid)
    except FileNotFoundError:
        pass
    try:
        fd, temp_path = tempfile.mkstemp(prefix=".%s." % os.path.basename(path), suffix=".tmp", dir=directory)
    except OSError as exc:
        raise WriteError("cannot write %s: %s" % (path, exc.strerror), path=path) from None
    try:
        os.fchmod(fd, mode)
        if owner is not None:
            try:
                os.fchown(fd, owner[0], owner[1])
            except PermissionError:
                pass  # not root: the file stays ours, as any non-root write would
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.rename(temp_path, path)
    except OSError as exc:
        try:
            os.unlink(temp_path)
        except OSError:
            pass
        raise WriteError("cannot write %s: %s" % (path, exc.strerror or exc), path=path) from None
    try:
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.EBADF):
            raise WriteError("cannot sync directory %s: %s" % (directory, exc.strerror), path=directory) from None


def holds(path: str, data: bytes, mode: int) -> bool:
    """Whether ``path`` holds exactly ``data`` with ``mode`` (nothing to write)."""
    return read_if_exists(path) == data and file_mode(path) == mode


def write_if_changed(path: str, data: bytes, *, mode: int, check_mode: bool = False) -> bool:
    """Atomically (re)write ``path`` with ``data`` and ``mode`` unless it holds exactly that already; whether it
    changed (would change, in check mode)."""
    if holds(path, data, mode):
        return False
    if not check_mode:
        atomic_write(path, data, mode=mode)
    return True


def file_mode(path: str) -> int | None:
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        return None


def write_backup(pending) -> None:
    """Write the copies: directories 0700, files keep their source's mode (private keys stay 0600), atomically."""
    for target, data, mode in pending:
        ensure_dir(os.path.dirname(target), mode=PRIVATE_DIR_MODE)
        atomic_write(target, data, mode=mode)
