# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""ca_rotation mode=restore (ca_restore.py): the backed-up CAs staged byte for byte, the current service key kept."""

from __future__ import annotations

import os
import shutil

import pytest

from ansible_collections.kubepki.certs.plugins.module_utils._pki import backups, ca_restore, ca_set, files, rotation, trees
from ansible_collections.kubepki.certs.plugins.module_utils._pki.errors import InvalidInputError

CA_FILES = ("server-ca.crt", "server-ca.key", "client-ca.crt", "client-ca.key", "request-header-ca.crt",
            "request-header-ca.key", "etcd/server-ca.crt", "etcd/server-ca.key", "etcd/peer-ca.crt", "etcd/peer-ca.key")


def read(path):
    with open(path, "rb") as handle:
        return handle.read()


def rotated_cluster(tmp_path):
    """A live tls dir backed up into the tree of rotation r1, then rotated (cross_sign, staged set copied over
    the live files as a restart after rotate-ca would) and given a new service key."""
    live = tmp_path / "k3s" / "server" / "tls"
    ca_set.apply_plan(ca_set.plan_ca_set(ca_set.CASetRequest(path=str(live), distribution="k3s")))
    tree = trees.backup_tree(str(tmp_path / "backup"), "r1")
    files.write_backup(backups.pending_backup(backups.plan_backup([str(live)], tree)))
    original = {name: read(str(live / name)) for name in CA_FILES}
    plan = rotation.plan_rotation(rotation.RotationRequest(current_path=str(live), staging_path=None,
                                                           staging_dir=str(tmp_path / "stage"), distribution="k3s"))
    rotation.apply_rotation(plan)
    for name in CA_FILES + ("service.key",):
        shutil.copyfile(plan.staging.file(name), str(live / name))
    return live, original


def restore_request(tmp_path, live, **kwargs):
    values = dict(current_path=str(live), staging_path=None, staging_dir=str(tmp_path / "rollback"),
                  distribution="k3s", mode="restore", backup_dir=str(tmp_path / "backup"), rotation_id="r1")
    values.update(kwargs)
    return rotation.RotationRequest(**values)


def test_restore_stages_the_backed_up_cas_and_the_current_service_key(tmp_path):
    live, original = rotated_cluster(tmp_path)
    plan = ca_restore.plan_ca_restore(restore_request(tmp_path, live))
    assert not plan.already_loaded and plan.disruptive
    rotation.apply_rotation(plan)
    for name in CA_FILES:
        assert read(plan.staging.file(name)) == original[name], name
    assert read(plan.staging.file("service.key")) == read(str(live / "service.key"))
    report = rotation.plan_report(plan)
    assert report["rotation_id"] == "r1"
    assert report["backup_tree"] == str(tmp_path / "backup" / "r1")
    assert report["staging_tree"]["data_dir"] == str(tmp_path / "rollback" / "server")
    assert report["token_changes"] and report["requires_force"]
    assert os.stat(plan.staging.file("server-ca.key")).st_mode & 0o077 == 0


def test_a_staged_copy_older_than_the_live_file_is_written_again(tmp_path):
    """rotate-ca sends mtimes and the servers refuse datastore files older than their disk files, so a staged copy
    an earlier rollback left (same bytes) is rewritten once the live files are newer, and kept while it is newer."""
    live, _original = rotated_cluster(tmp_path)
    rotation.apply_rotation(ca_restore.plan_ca_restore(restore_request(tmp_path, live)))
    assert not ca_restore.plan_ca_restore(restore_request(tmp_path, live)).changed
    for name in CA_FILES + ("service.key",):
        os.utime(str(live / name), (4102444800, 4102444800))  # the live files rewritten later (2100-01-01)
    again = ca_restore.plan_ca_restore(restore_request(tmp_path, live))
    assert {f.state for f in again.files} == {"updated"} and len(again.files) == len(CA_FILES) + 1


def test_restore_once_loaded_changes_nothing(tmp_path):
    live, original = rotated_cluster(tmp_path)
    for name, data in original.items():
        with open(str(live / name), "wb") as handle:
            handle.write(data)
    plan = ca_restore.plan_ca_restore(restore_request(tmp_path, live))
    assert plan.already_loaded and plan.files == [] and not plan.changed


@pytest.mark.parametrize("change, message", [
    ({"rotation_id": "r2"}, "no backup tree"),
    ({"backup_dir": "/nonexistent-kubepki-backup"}, "no backup tree"),
    ({"current_path": "/nonexistent/k3s/server/tls"}, "holds no copy of"),
    ({"rotation_id": None}, "needs backup_dir and rotation_id"),
])
def test_restore_without_its_backup_fails_before_writing(tmp_path, change, message):
    live, _original = rotated_cluster(tmp_path)
    with pytest.raises(InvalidInputError, match=message):
        ca_restore.plan_ca_restore(restore_request(tmp_path, live, **change))
    assert not os.path.exists(str(tmp_path / "rollback"))
