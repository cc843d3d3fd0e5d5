# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

import datetime
import hashlib
import os
import shutil

import pytest

from ansible_collections.kubepki.certs.plugins.module_utils._pki import ca_set, certs, keys, rotation, verify
from ansible_collections.kubepki.certs.plugins.module_utils._pki.errors import ChainError, InvalidInputError

CAS = ("server-ca", "client-ca", "request-header-ca", "etcd/server-ca", "etcd/peer-ca")


def default_cluster(tls, *, key_format="traditional"):
    """A k3s cluster on its self-generated CAs: one self-signed EC cert per CA, no AKI."""
    os.makedirs(os.path.join(tls, "etcd"), exist_ok=True)
    for name in CAS:
        key = keys.generate_private_key("ecdsa-p256")
        cert = certs.build_ca_certificate(subject_common_name="k3s-%s@1" % name.replace("/", "-"),
                                          subject_public_key=key.public_key(), issuer_certificate=None,
                                          issuer_key=key, validity_days=3650)
        with open(os.path.join(tls, name + ".crt"), "wb") as handle:
            handle.write(certs.dump_certificates([cert]))
        with open(os.path.join(tls, name + ".key"), "wb") as handle:
            handle.write(keys.serialize_private_key(key, key_format=key_format))
    with open(os.path.join(tls, "service.key"), "wb") as handle:
        handle.write(keys.serialize_private_key(keys.generate_private_key("rsa-2048")))


def snapshot(path):
    result = {}
    for base, _dirs, files in os.walk(path):
        for name in files:
            with open(os.path.join(base, name), "rb") as handle:
                result[os.path.join(base, name)] = hashlib.sha256(handle.read()).hexdigest()
    return result


def rotate(live, staging, **kwargs):
    plan = rotation.plan_rotation(rotation.RotationRequest(current_path=str(live), staging_path=str(staging),
                                                           distribution=kwargs.pop("distribution", "k3s"), **kwargs))
    rotation.apply_rotation(plan)
    return plan


def failed_checks(live, staging, **kwargs):
    results = verify.verify_staging(current_path=str(live), staging_path=str(staging), distribution="k3s")
    return sorted({(r.ca, r.check) for r in verify.failures(results, **kwargs)})


def test_cross_sign_default_cluster(tmp_path):
    live = tmp_path / "server" / "tls"
    default_cluster(str(live))
    before = snapshot(live)
    plan = rotate(live, tmp_path / "stage")
    assert snapshot(live) == before
    staged = tmp_path / "stage" / "tls"
    bundle = certs.load_certificates((staged / "server-ca.crt").read_bytes(), source="x")
    current = certs.load_certificates((live / "server-ca.crt").read_bytes(), source="x")
    assert len(bundle) == 4 and bundle[3] == current[0]
    new_root, cross = bundle[1], bundle[2]
    assert certs.is_self_signed(new_root) and cross.subject == new_root.subject
    assert keys.same_key(new_root, cross) and certs.is_directly_issued_by(cross, current[0])
    assert certs.is_directly_issued_by(bundle[0], new_root)
    staged_keys = keys.load_private_keys((staged / "server-ca.key").read_bytes(), source="k")
    assert keys.key_matches_certificate(staged_keys[0], bundle[0]) and keys.same_key(staged_keys[1], new_root)
    assert plan.token_hash_after == hashlib.sha256(certs.certificate_der(new_root)).hexdigest()
    assert plan.token_hash_before == hashlib.sha256((live / "server-ca.crt").read_bytes()).hexdigest()
    assert failed_checks(live, tmp_path / "stage") == []
    service = keys.load_private_keys((staged / "service.key").read_bytes(), source="s")
    assert len(service) == 2
    assert keys.same_key(service[1], keys.load_private_key((live / "service.key").read_bytes(), source="s"))
    again = rotation.plan_rotation(rotation.RotationRequest(current_path=str(live), staging_path=str(tmp_path / "stage"),
                                                            distribution="k3s"))
    assert not again.changed and again.token_hash_after == plan.token_hash_after


def test_loaded_then_rotated_again(tmp_path):
    live = tmp_path / "live" / "server" / "tls"
    default_cluster(str(live))
    rotate(live, tmp_path / "stage")
    loaded = tmp_path / "loaded" / "server" / "tls"
    shutil.copytree(str(tmp_path / "stage" / "tls"), str(loaded))
    plan = rotation.plan_rotation(rotation.RotationRequest(current_path=str(loaded), staging_path=str(tmp_path / "stage"),
                                                           distribution="k3s"))
    assert plan.already_loaded and not plan.changed
    rotate(loaded, tmp_path / "stage2")
    assert failed_checks(loaded, tmp_path / "stage2") == []
    bundle = certs.load_certificates((tmp_path / "stage2" / "tls" / "client-ca.crt").read_bytes(), source="x")
    assert len(bundle) == 7


@pytest.mark.parametrize("key_format", ["traditional", "pkcs8"])
def test_cross_sign_custom_chain(tmp_path, key_format):
    live = tmp_path / "server" / "tls"
    ca_set.apply_plan(ca_set.plan_ca_set(ca_set.CASetRequest(path=str(live), distribution="rke2",
                                                             root_key_type="rsa-2048", intermediate_key_type="rsa-2048",
                                                             key_format=key_format)))
    rotate(live, tmp_path / "stage", distribution="rke2")
    results = verify.verify_staging(current_path=str(live), staging_path=str(tmp_path / "stage"), distribution="rke2")
    assert verify.failures(results) == []


def test_renew_keeps_token(tmp_path):
    live = tmp_path / "server" / "tls"
    ca_set.apply_plan(ca_set.plan_ca_set(ca_set.CASetRequest(path=str(live), distribution="k3s",
                                                             root_key_type="ecdsa-p256",
                                                             intermediate_key_type="ecdsa-p256")))
    plan = rotate(live, tmp_path / "stage", mode="renew")
    assert plan.token_hash_after == plan.token_hash_before
    assert failed_checks(live, tmp_path / "stage") == []
    report = rotation.plan_report(plan)
    assert not report["token_changes"] and not report["disruptive"]


def test_renew_without_intermediate_key(tmp_path):
    live = tmp_path / "server" / "tls"
    ca_set.apply_plan(ca_set.plan_ca_set(ca_set.CASetRequest(path=str(live), distribution="k3s",
                                                             root_key_type="ecdsa-p256",
                                                             intermediate_key_type="ecdsa-p256")))
    os.remove(str(live / "intermediate-ca.key"))
    with pytest.raises(InvalidInputError, match="intermediate's private key"):
        rotate(live, tmp_path / "stage", mode="renew")
    assert not (tmp_path / "stage").exists()


def test_new_root_is_disruptive_and_refused_by_verify(tmp_path):
    live = tmp_path / "server" / "tls"
    default_cluster(str(live))
    plan = rotate(live, tmp_path / "stage", mode="new_root", service_key="keep")
    assert rotation.plan_report(plan)["requires_force"]
    assert ("server-ca", "new_leaf_trusted_by_current_clients") in failed_checks(live, tmp_path / "stage")
    assert failed_checks(live, tmp_path / "stage", allow_disruptive=True) == []
    assert (tmp_path / "stage" / "tls" / "service.key").read_bytes() == (live / "service.key").read_bytes()


def test_not_cross_signed_bundle_fails_verify(tmp_path):
    live = tmp_path / "server" / "tls"
    default_cluster(str(live))
    rotate(live, tmp_path / "stage")
    staged = tmp_path / "stage" / "tls" / "client-ca.crt"
    bundle = certs.load_certificates(staged.read_bytes(), source="x")
    staged.write_bytes(certs.dump_certificates([bundle[0], bundle[1]]))  # drop the cross-signed root
    failed = failed_checks(live, tmp_path / "stage")
    assert ("client-ca", "chains_to_current_root") in failed
    assert ("client-ca", "new_leaf_trusted_by_current_clients") in failed


def test_service_key_missing_old_key_fails_verify(tmp_path):
    live = tmp_path / "server" / "tls"
    default_cluster(str(live))
    rotate(live, tmp_path / "stage")
    (tmp_path / "stage" / "tls" / "service.key").write_bytes(
        keys.serialize_private_key(keys.generate_private_key("rsa-2048")))
    assert ("service-key", "current_signing_key_kept") in failed_checks(live, tmp_path / "stage")


@pytest.mark.parametrize("staging", ["server", "server/tls", "server/tls/sub"])
def test_staging_inside_live_is_refused(tmp_path, staging):
    live = tmp_path / "server" / "tls"
    default_cluster(str(live))
    before = snapshot(tmp_path)
    with pytest.raises(InvalidInputError, match="lies inside the live tls directory"):
        rotate(live, tmp_path / staging)
    assert snapshot(tmp_path) == before


def test_pathlen_zero_current_ca_cannot_be_cross_signed(tmp_path):
    live = tmp_path / "server" / "tls"
    ca_set.apply_plan(ca_set.plan_ca_set(ca_set.CASetRequest(path=str(live), distribution="k3s",
                                                             root_key_type="ecdsa-p256", intermediate_key_type="ecdsa-p256",
                                                             constrain_path_length=True)))
    with pytest.raises(ChainError, match="use mode renew"):
        rotate(live, tmp_path / "stage")


# --- server_ca_sha256 and rotation_id -----------------------------------------------------------

def _first_not_before_id(path) -> str:
    first = certs.load_certificates(path.read_bytes(), source=str(path))[0]
    return certs.not_before(first).strftime("%Y%m%dT%H%M%SZ")


@pytest.mark.parametrize("mode", ["cross_sign", "new_root"])
def test_server_ca_sha256_and_stable_rotation_id(tmp_path, mode):
    live = tmp_path / "live" / "server" / "tls"
    default_cluster(str(live))
    stage = tmp_path / "stage"
    report = rotation.plan_report(rotate(live, stage, mode=mode))
    staged_server = stage / "tls" / "server-ca.crt"
    assert report["server_ca_sha256"] == hashlib.sha256(staged_server.read_bytes()).hexdigest()
    assert report["server_ca_sha256"] != hashlib.sha256((live / "server-ca.crt").read_bytes()).hexdigest()
    # The id is the new server CA's notBefore (UTC), read here from the staged file.
    assert report["rotation_id"] == _first_not_before_id(staged_server)
    assert len(report["rotation_id"]) == 16 and report["rotation_id"][8] == "T" and report["rotation_id"][-1] == "Z"

    # Planned again on the same staging dir: the staged set is reused, same id, same bundle.
    again = rotation.plan_rotation(rotation.RotationRequest(current_path=str(live), staging_path=str(stage),
                                                            distribution="k3s", mode=mode))
    assert not again.changed and not again.already_loaded
    again_report = rotation.plan_report(again)
    assert again_report["rotation_id"] == report["rotation_id"]
    assert again_report["server_ca_sha256"] == report["server_ca_sha256"]

    # Loaded: the live set is now the staged one (as k3s writes it after certificate rotate-ca and a restart).
    loaded = tmp_path / "loaded" / "server" / "tls"
    shutil.copytree(str(stage / "tls"), str(loaded))
    resumed = rotation.plan_rotation(rotation.RotationRequest(current_path=str(loaded), staging_path=str(stage),
                                                              distribution="k3s", mode=mode))
    resumed_report = rotation.plan_report(resumed)
    assert resumed_report["already_loaded"] is True
    assert resumed_report["rotation_id"] == report["rotation_id"]
    assert resumed_report["server_ca_sha256"] == hashlib.sha256((loaded / "server-ca.crt").read_bytes()).hexdigest()
    assert resumed_report["server_ca_sha256"] == report["server_ca_sha256"]


def test_next_rotation_gets_a_new_id(tmp_path):
    live = tmp_path / "live" / "server" / "tls"
    default_cluster(str(live))
    first = rotation.plan_report(rotate(live, tmp_path / "stage"))
    loaded = tmp_path / "loaded" / "server" / "tls"
    shutil.copytree(str(tmp_path / "stage" / "tls"), str(loaded))
    later = certs.utcnow() + datetime.timedelta(days=30)
    plan = rotation.plan_rotation(rotation.RotationRequest(current_path=str(loaded),
                                                           staging_path=str(tmp_path / "stage2"), distribution="k3s"),
                                  now=later)
    rotation.apply_rotation(plan)
    second = rotation.plan_report(plan)
    assert not second["already_loaded"]
    assert second["rotation_id"] == _first_not_before_id(tmp_path / "stage2" / "tls" / "server-ca.crt")
    assert second["rotation_id"] != first["rotation_id"]
    assert second["rotation_id"] > first["rotation_id"]
    assert second["server_ca_sha256"] == hashlib.sha256(
        (tmp_path / "stage2" / "tls" / "server-ca.crt").read_bytes()).hexdigest()


def test_renew_reports_the_staged_server_bundle(tmp_path):
    live = tmp_path / "server" / "tls"
    ca_set.apply_plan(ca_set.plan_ca_set(ca_set.CASetRequest(path=str(live), distribution="k3s",
                                                             root_key_type="ecdsa-p256",
                                                             intermediate_key_type="ecdsa-p256")))
    report = rotation.plan_report(rotate(live, tmp_path / "stage", mode="renew"))
    staged_server = tmp_path / "stage" / "tls" / "server-ca.crt"
    assert report["server_ca_sha256"] == hashlib.sha256(staged_server.read_bytes()).hexdigest()
    assert report["rotation_id"] == _first_not_before_id(staged_server)
