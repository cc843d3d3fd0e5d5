# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The staged files read in one call on the staging node (step export) and received in one call on another node (step
receive): modes, compare-then-act, the directory kept."""

from __future__ import annotations

import os
import stat

import pytest

from ansible_collections.kubepki.certs.plugins.module_utils._pki.errors import InvalidInputError
from ansible_collections.kubepki.certs.plugins.module_utils._pki.kubeadm_ca_stage import apply_stage, plan_receive, read_staged_files

FILES = {"ca.crt": b"new ca\n", "ca.key": b"new key\n", "etcd/ca.crt": b"new etcd ca\n"}


def test_files_land_with_private_keys_and_directories_then_a_rerun_writes_nothing(tmp_path):
    stage_dir = str(tmp_path / "state" / "staged")
    writes = plan_receive(stage_dir, FILES)
    assert sorted(os.path.relpath(path, stage_dir) for path, _data, _mode in writes) == sorted(FILES)
    apply_stage(stage_dir, [("received", "", writes)])
    for name, data in FILES.items():
        path = os.path.join(stage_dir, name)
        with open(path, "rb") as handle:
            assert handle.read() == data
        assert stat.S_IMODE(os.stat(path).st_mode) == (0o600 if name.endswith(".key") else 0o644), name
    for directory in (stage_dir, os.path.join(stage_dir, "etcd")):
        assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700, directory
    assert plan_receive(stage_dir, FILES) == []
    changed = dict(FILES, **{"ca.crt": b"another\n"})
    assert [os.path.basename(path) for path, _data, _mode in plan_receive(stage_dir, changed)] == ["ca.crt"]


@pytest.mark.parametrize("name", ["../escape.crt", "/etc/kubernetes/pki/ca.crt", "etcd/../../x.key"])
def test_a_name_outside_the_staging_directory_is_refused(tmp_path, name):
    with pytest.raises(InvalidInputError, match="is not a file of the staging directory"):
        plan_receive(str(tmp_path / "staged"), {name: b"x"})


def test_the_files_read_on_the_staging_node_are_the_ones_another_node_receives(tmp_path):
    source, target = str(tmp_path / "cp1" / "staged"), str(tmp_path / "cp2" / "staged")
    apply_stage(source, [("staged", "", plan_receive(source, FILES))])
    exported = read_staged_files(source, sorted(FILES))
    assert exported == FILES
    apply_stage(target, [("received", "", plan_receive(target, exported))])
    assert read_staged_files(target, sorted(FILES)) == FILES


def test_reading_a_file_that_is_not_staged_names_it(tmp_path):
    stage_dir = str(tmp_path / "staged")
    apply_stage(stage_dir, [("staged", "", plan_receive(stage_dir, {"ca.crt": b"x"}))])
    with pytest.raises(InvalidInputError, match=r"etcd/ca\.crt is not staged in .*: run the stage step first"):
        read_staged_files(stage_dir, ["ca.crt", "etcd/ca.crt"])
