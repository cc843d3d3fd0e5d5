# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""files.write_if_changed: a report file on a node is rewritten (temp file + rename) only when its bytes or mode
differ, never in check mode; judged by os.stat (inode, mtime, mode) and the file's bytes."""

from __future__ import annotations

import os
import stat

import pytest

from ansible_collections.kubepki.certs.plugins.module_utils._pki.errors import WriteError
from ansible_collections.kubepki.certs.plugins.module_utils._pki.files import write_if_changed


def mode_of(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_new_file_written_with_mode(tmp_path):
    path = str(tmp_path / "node.prom")
    assert write_if_changed(path, b"a 1\n", mode=0o644) is True
    assert open(path, "rb").read() == b"a 1\n"
    assert mode_of(path) == 0o644
    assert os.listdir(str(tmp_path)) == ["node.prom"]  # no temp file left


def test_same_bytes_and_mode_left_alone(tmp_path):
    path = str(tmp_path / "node.prom")
    write_if_changed(path, b"a 1\n", mode=0o644)
    os.utime(path, (1000000000, 1000000000))
    before = os.stat(path)
    assert write_if_changed(path, b"a 1\n", mode=0o644) is False
    after = os.stat(path)
    assert (after.st_ino, after.st_mtime) == (before.st_ino, before.st_mtime)


def test_changed_bytes_or_mode_replace_the_file(tmp_path):
    path = str(tmp_path / "node.prom")
    write_if_changed(path, b"a 1\n", mode=0o644)
    inode = os.stat(path).st_ino
    assert write_if_changed(path, b"a 2\n", mode=0o644) is True
    assert open(path, "rb").read() == b"a 2\n"
    assert os.stat(path).st_ino != inode  # renamed into place, not written in place
    os.chmod(path, 0o600)
    assert write_if_changed(path, b"a 2\n", mode=0o644) is True
    assert mode_of(path) == 0o644


def test_check_mode_writes_nothing(tmp_path):
    path = str(tmp_path / "node.prom")
    assert write_if_changed(path, b"a 1\n", mode=0o644, check_mode=True) is True
    assert not os.path.exists(path)
    write_if_changed(path, b"a 1\n", mode=0o644)
    assert write_if_changed(path, b"a 2\n", mode=0o644, check_mode=True) is True
    assert open(path, "rb").read() == b"a 1\n"


def test_missing_directory_is_a_write_error(tmp_path):
    with pytest.raises(WriteError):
        write_if_changed(str(tmp_path / "absent" / "node.prom"), b"a 1\n", mode=0o644)
