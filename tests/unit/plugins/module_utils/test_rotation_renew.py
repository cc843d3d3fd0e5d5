# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""renew with a new intermediate under the existing root: a second run keeps what the first staged."""

from __future__ import annotations

import hashlib
import os

from ansible_collections.kubepki.certs.plugins.module_utils._pki import ca_set, certs, rotation, verify


def custom_cluster(live):
    ca_set.apply_plan(ca_set.plan_ca_set(ca_set.CASetRequest(path=str(live), distribution="k3s",
                                                             root_key_type="ecdsa-p256",
                                                             intermediate_key_type="ecdsa-p256")))


def tree(path):
    result = {}
    for base, _dirs, files in os.walk(path):
        for name in files:
            with open(os.path.join(base, name), "rb") as handle:
                result[os.path.relpath(os.path.join(base, name), path)] = hashlib.sha256(handle.read()).hexdigest()
    return result


def plan_new_intermediate(live, stage):
    return rotation.plan_rotation(rotation.RotationRequest(
        current_path=str(live), staging_path=str(stage), distribution="k3s", mode="renew",
        root_cert=str(live / "root-ca.pem"), root_key=str(live / "root-ca.key")))


def test_renew_with_new_intermediate_is_idempotent(tmp_path):
    live, stage = tmp_path / "server" / "tls", tmp_path / "stage"
    custom_cluster(live)
    first = plan_new_intermediate(live, stage)
    assert first.changed
    rotation.apply_rotation(first)
    staged = tree(stage)
    new_inter = certs.load_certificates((stage / "tls" / "intermediate-ca.pem").read_bytes(), source="test")[0]
    live_inter = certs.load_certificates((live / "intermediate-ca.pem").read_bytes(), source="test")[0]
    assert new_inter != live_inter  # a new intermediate was staged

    second = plan_new_intermediate(live, stage)
    assert not second.changed, [(f.relative, f.state) for f in second.files if f.state != "unchanged"]
    rotation.apply_rotation(second)
    assert tree(stage) == staged
    assert rotation.plan_report(second)["rotation_id"] == rotation.plan_report(first)["rotation_id"]
    # the kept set still passes every check
    results = verify.verify_staging(current_path=str(live), staging_path=str(stage), distribution="k3s")
    assert verify.failures(results) == []


def test_renew_replaces_a_staged_intermediate_from_another_root(tmp_path):
    live, stage = tmp_path / "server" / "tls", tmp_path / "stage"
    custom_cluster(live)
    other = tmp_path / "other" / "tls"
    custom_cluster(other)
    os.makedirs(stage / "tls", exist_ok=True)
    for name in ("intermediate-ca.pem", "intermediate-ca.key"):
        (stage / "tls" / name).write_bytes((other / name).read_bytes())
    plan = plan_new_intermediate(live, stage)
    states = {f.relative: f.state for f in plan.files}
    assert states["intermediate-ca.pem"] == "updated"
    rotation.apply_rotation(plan)
    staged_inter = certs.load_certificates((stage / "tls" / "intermediate-ca.pem").read_bytes(), source="test")[0]
    root = certs.load_certificates((live / "root-ca.pem").read_bytes(), source="test")[0]
    assert staged_inter.issuer == root.subject
