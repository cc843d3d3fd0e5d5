# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""leaf_renew's admin_conf_copies: an operator's copy of admin.conf gets the renewed credential, nothing else changes."""

from __future__ import annotations

import os
import shutil
import stat

import pytest
import yaml

from ansible_collections.kubepki.certs.plugins.module_utils._pki import leaf_renewal
from ansible_collections.kubepki.certs.plugins.module_utils._pki.errors import InvalidInputError

from ansible_collections.kubepki.certs.tests.unit.plugins.module_utils.kubeadm_tree import snapshot

OTHER_CLUSTER = """- name: elsewhere
  user:
    token: not-a-real-token
"""


def _users(path):
    with open(path, encoding="utf-8") as handle:
        return {user["name"]: user["user"] for user in yaml.safe_load(handle)["users"]}


def _operator_copy(node, tmp_path, *, merged=False):
    """~/.kube/config made from admin.conf (optionally with another user merged in), mode 0640."""
    path = str(tmp_path / "home" / ".kube" / "config")
    os.makedirs(os.path.dirname(path))
    shutil.copyfile(os.path.join(node["base"], "admin.conf"), path)
    if merged:
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(OTHER_CLUSTER)
    os.chmod(path, 0o640)
    return path


def test_copy_gets_the_renewed_credential_and_keeps_the_rest(node, tmp_path):
    copy = _operator_copy(node, tmp_path, merged=True)
    plan = leaf_renewal.plan_renewals(node["layout"], names=["admin.conf"], force=True, backup_root=node["backup"],
                                      admin_copies=[copy])
    assert leaf_renewal.plan_report(plan)["admin_conf_copies"][0]["status"] == "refresh"
    backups = leaf_renewal.apply_renewals(plan)
    admin = _users(os.path.join(node["base"], "admin.conf"))["kubernetes-admin"]
    users = _users(copy)
    assert users["kubernetes-admin"] == admin
    assert users["elsewhere"] == {"token": "not-a-real-token"}
    assert stat.S_IMODE(os.stat(copy).st_mode) == 0o640
    assert any(path.endswith(copy) for path in backups)


def test_copy_already_current_is_left_alone_and_rerun_changes_nothing(node, tmp_path):
    copy = _operator_copy(node, tmp_path)
    leaf_renewal.apply_renewals(leaf_renewal.plan_renewals(node["layout"], force=True, backup_root=node["backup"],
                                                           admin_copies=[copy]))
    before = snapshot(os.path.dirname(copy))
    again = leaf_renewal.plan_renewals(node["layout"], threshold_days=30, backup_root=node["backup"], admin_copies=[copy])
    assert not again.changed
    assert leaf_renewal.plan_report(again)["admin_conf_copies"][0]["status"] == "current"
    leaf_renewal.apply_renewals(again)
    assert snapshot(os.path.dirname(copy)) == before


def test_copy_left_behind_by_an_interrupted_run_is_refreshed_without_renewing(node, tmp_path):
    copy = _operator_copy(node, tmp_path)
    leaf_renewal.apply_renewals(leaf_renewal.plan_renewals(node["layout"], names=["admin.conf"], force=True,
                                                           backup_root=node["backup"]))
    plan = leaf_renewal.plan_renewals(node["layout"], names=["admin.conf"], threshold_days=30, backup_root=node["backup"],
                                      admin_copies=[copy])
    assert leaf_renewal.plan_report(plan)["renewed"] == []
    assert plan.changed
    leaf_renewal.apply_renewals(plan)
    assert _users(copy) == _users(os.path.join(node["base"], "admin.conf"))


def test_missing_copy_and_copy_of_another_identity_are_reported_not_touched(node, tmp_path):
    other = str(tmp_path / "scheduler-copy.conf")
    shutil.copyfile(os.path.join(node["base"], "scheduler.conf"), other)
    with open(other, "rb") as handle:
        before = handle.read()
    plan = leaf_renewal.plan_renewals(node["layout"], names=["admin.conf"], force=True, backup_root=node["backup"],
                                      admin_copies=[str(tmp_path / "absent"), other])
    statuses = [entry["status"] for entry in leaf_renewal.plan_report(plan)["admin_conf_copies"]]
    assert statuses == ["missing", "other"]
    leaf_renewal.apply_renewals(plan)
    with open(other, "rb") as handle:
        assert handle.read() == before
    assert not os.path.exists(str(tmp_path / "absent"))


def test_copy_whose_credential_appears_twice_fails_before_any_write(node, tmp_path):
    copy = _operator_copy(node, tmp_path)
    user = _users(copy)["kubernetes-admin"]
    with open(copy, "a", encoding="utf-8") as handle:
        handle.write("- name: duplicate\n  user:\n    client-certificate-data: %s\n    client-key-data: %s\n"
                     % (user["client-certificate-data"], user["client-key-data"]))
    before = snapshot(node["base"])
    with pytest.raises(InvalidInputError, match="appears 2 times"):
        leaf_renewal.plan_renewals(node["layout"], force=True, backup_root=node["backup"], admin_copies=[copy])
    assert snapshot(node["base"]) == before
