# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Backup into a tree and restore from it (backups.py): bytes, modes, symlinks, and the failures a rollback needs."""

from __future__ import annotations

import os
import stat

import pytest

from ansible_collections.kubepki.certs.plugins.module_utils._pki import backups, files, trees
from ansible_collections.kubepki.certs.plugins.module_utils._pki.errors import InvalidInputError


def write(path, data, mode=0o600):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(data)
    os.chmod(path, mode)


def read(path):
    with open(path, "rb") as handle:
        return handle.read()


def back_up(paths, tree):
    files.write_backup(backups.pending_backup(backups.plan_backup(paths, tree)))


def test_backup_then_restore_gives_the_bytes_back(tmp_path):
    live = tmp_path / "etc" / "config.yaml"
    tls = tmp_path / "tls"
    write(str(live), b"token: K10aaa::server:pw\n", 0o640)
    write(str(tls / "server-ca.key"), b"KEY", 0o600)
    tree = trees.backup_tree(str(tmp_path / "backup"), "r1")
    back_up([str(live), str(tls), str(tmp_path / "absent")], tree)
    assert read(tree.copy_of(str(tls / "server-ca.key"))) == b"KEY"
    assert stat.S_IMODE(os.stat(tree.copy_of(str(tls / "server-ca.key"))).st_mode) == 0o600
    assert backups.pending_backup(backups.plan_backup([str(live), str(tls)], tree)) == []  # a rerun copies nothing

    write(str(live), b"token: K10bbb::server:pw\n", 0o640)
    items, missing = backups.plan_restore([str(live)], tree)
    assert missing == [] and [i.state for i in items] == ["restored"]
    backups.apply_restore(items)
    assert read(str(live)) == b"token: K10aaa::server:pw\n"
    assert stat.S_IMODE(os.stat(str(live)).st_mode) == 0o640  # the live file's mode is kept
    again, missing = backups.plan_restore([str(live)], tree)
    assert [i.state for i in again] == ["unchanged"] and missing == []


def test_restore_follows_a_symlink_to_the_file_backed_up(tmp_path):
    real = tmp_path / "real" / "config.yaml"
    write(str(real), b"token: old\n")
    link = tmp_path / "config.yaml"
    os.symlink(str(real), str(link))
    tree = trees.backup_tree(str(tmp_path / "backup"), "r1")
    back_up([str(real)], tree)
    write(str(real), b"token: new\n")
    items, missing = backups.plan_restore([str(link)], tree)
    assert missing == []
    backups.apply_restore(items)
    assert os.path.islink(str(link)) and read(str(real)) == b"token: old\n"


def test_missing_tree_is_an_error_not_a_skip(tmp_path):
    with pytest.raises(InvalidInputError, match="no backup tree"):
        backups.plan_restore([str(tmp_path / "x")], trees.backup_tree(str(tmp_path / "backup"), "nope"))


def test_a_path_without_a_copy_is_listed(tmp_path):
    tree = trees.backup_tree(str(tmp_path / "backup"), "r1")
    write(str(tmp_path / "a"), b"a")
    back_up([str(tmp_path / "a")], tree)
    write(str(tmp_path / "b"), b"b")
    items, missing = backups.plan_restore([str(tmp_path / "a"), str(tmp_path / "b")], tree)
    assert [i.path for i in items] == [str(tmp_path / "a")] and missing == [str(tmp_path / "b")]
