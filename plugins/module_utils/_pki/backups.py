# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# PRIVATE to the kubepki.certs collection.
"""Live files into a backup tree and back (the tree's layout is trees.BackupTree's; files.write_backup writes copies).

Compare, then act both ways: a copy (or a live file) is written only when its bytes differ, atomically, and a
restore is judged by reading the file back: its SHA-256 must equal the copy's.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass

from ansible_collections.kubepki.certs.plugins.module_utils._pki.diffs import pending_writes_diff
from ansible_collections.kubepki.certs.plugins.module_utils._pki.errors import InvalidInputError, WriteError
from ansible_collections.kubepki.certs.plugins.module_utils._pki.files import atomic_write, read_if_exists
from ansible_collections.kubepki.certs.plugins.module_utils._pki.trees import BackupTree


def plan_backup(paths, tree: BackupTree) -> list:
    """(source file, copy) pairs for every file under ``paths`` (directories walked, symlinks resolved).
    Missing paths are skipped."""
    pairs = []
    for path in paths:
        real = os.path.realpath(path)
        if os.path.isdir(real):
            for base, dirs, files in os.walk(real):
                dirs.sort()
                for name in sorted(files):
                    source = os.path.join(base, name)
                    pairs.append((source, tree.copy_of(source)))
        elif os.path.isfile(real):
            pairs.append((real, tree.copy_of(path)))
    return pairs


def pending_backup(pairs) -> list:
    """(target, data, mode) for each pair whose copy is missing or differs; each source is read once."""
    pending = []
    for source, target in pairs:
        with open(source, "rb") as handle:
            data = handle.read()
        if read_if_exists(target) != data:
            pending.append((target, data, stat.S_IMODE(os.stat(source).st_mode)))
    return pending


@dataclass
class RestoreItem:
    path: str          # the live file (symlinks resolved)
    copy: str          # its copy in the tree
    data: bytes        # the copy's bytes
    state: str         # restored | unchanged

    def as_dict(self) -> dict:
        return {"path": self.path, "copy": self.copy, "state": self.state,
                "sha256": hashlib.sha256(self.data).hexdigest()}


def plan_restore(paths, tree: BackupTree) -> tuple:
    """(items, paths without a copy). Raises when the tree itself is missing: a rollback that finds no backup
    must stop, not skip. Files are restored to their real path (the copy was made there)."""
    if not os.path.isdir(tree.root):
        raise InvalidInputError("no backup tree %s on this node: nothing was restored (is the backup dir the one the "
                                "rotation used, and the rotation id right?)" % tree.root, path=tree.root)
    items, missing = [], []
    for path in paths:
        real = os.path.realpath(path)
        data = read_if_exists(tree.copy_of(real))
        if data is None:
            missing.append(path)
            continue
        items.append(RestoreItem(real, tree.copy_of(real), data, "unchanged" if read_if_exists(real) == data else "restored"))
    return items, missing


def apply_restore(items) -> None:
    """Write each live file from its copy (its mode kept, atomically), then read it back: it must equal the copy."""
    for item in items:
        if item.state == "unchanged":
            continue
        mode = stat.S_IMODE(os.stat(item.path).st_mode) if os.path.exists(item.path) else 0o600
        atomic_write(item.path, item.data, mode=mode)
        if read_if_exists(item.path) != item.data:
            raise WriteError("%s does not equal its backup copy %s after the restore" % (item.path, item.copy),
                             path=item.path)


def backup_diff(tree: BackupTree, pending) -> dict:
    """The Ansible diff of the copies ``pending_backup`` chose (call it before writing them), never their content."""
    return pending_writes_diff(tree.root, [target for target, _data, _mode in pending])


def restore_diff(tree: BackupTree, items) -> dict:
    """The Ansible diff of the live files a restore writes (call it before apply_restore), never their content."""
    pending = [item for item in items if item.state != "unchanged"]
    return pending_writes_diff(tree.root, [item.path for item in pending],
                               detail={item.path: "from %s" % item.copy for item in pending})
