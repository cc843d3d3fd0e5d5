# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""leaf_renewal on a small kubeadm tree made here with cryptography (not with the engine): what is kept, what is new,
backups, idempotence, and every bad input failing before a write. The real kubeadm judges the renewed files in
tests/kube/test_leaf_renew.py."""

from __future__ import annotations

import base64
import datetime
import os
import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from ansible_collections.kubepki.certs.plugins.module_utils._pki import leaf_renewal
from ansible_collections.kubepki.certs.plugins.module_utils._pki.errors import InvalidInputError

from ansible_collections.kubepki.certs.tests.unit.plugins.module_utils.kubeadm_tree import (
    NOW,
    ca_pair,
    key_pem,
    leaf_pair,
    pem,
    snapshot,
    write_file,
)


def _cert(path):
    with open(path, "rb") as handle:
        return x509.load_pem_x509_certificate(handle.read())


def _kubeconfig_user(path):
    import yaml
    with open(path, encoding="utf-8") as handle:
        user = yaml.safe_load(handle)["users"][0]["user"]
    return (x509.load_pem_x509_certificate(base64.b64decode(user["client-certificate-data"])),
            serialization.load_pem_private_key(base64.b64decode(user["client-key-data"]), None))


def _public(key_or_cert):
    return key_or_cert.public_key().public_bytes(serialization.Encoding.DER,
                                                 serialization.PublicFormat.SubjectPublicKeyInfo)


def test_renewal_keeps_the_profile_and_changes_key_and_validity(node):
    apiserver = os.path.join(node["pki"], "apiserver.crt")
    old = _cert(apiserver)
    old_key = open(os.path.join(node["pki"], "apiserver.key"), "rb").read()
    before = snapshot(node["base"])
    plan = leaf_renewal.plan_renewals(node["layout"], threshold_days=30, backup_root=node["backup"], validity_days=365)
    assert snapshot(node["base"]) == before  # planning writes nothing
    report = leaf_renewal.plan_report(plan)
    assert len(report["renewed"]) == 11 and report["not_renewable"] == []
    assert report["restart"] == ["etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler"]
    copies = leaf_renewal.apply_renewals(plan)

    new = _cert(apiserver)
    assert new.subject == old.subject and new.serial_number != old.serial_number
    assert new.extensions.get_extension_for_class(x509.SubjectAlternativeName).value == \
        old.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert list(new.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert new.not_valid_after.replace(tzinfo=datetime.timezone.utc) - NOW > datetime.timedelta(days=364)
    ca_cert = node["cas"]["ca"][0]
    ca_cert.public_key().verify(new.signature, new.tbs_certificate_bytes, ec.ECDSA(new.signature_hash_algorithm))
    new_key = serialization.load_pem_private_key(open(os.path.join(node["pki"], "apiserver.key"), "rb").read(), None)
    assert _public(new_key) == _public(new) != _public(old)
    assert isinstance(new_key, ec.EllipticCurvePrivateKey)  # the current key's type is kept
    rsa_key = serialization.load_pem_private_key(
        open(os.path.join(node["pki"], "apiserver-kubelet-client.key"), "rb").read(), None)
    assert isinstance(rsa_key, rsa.RSAPrivateKey) and rsa_key.key_size == 2048
    assert stat.S_IMODE(os.stat(os.path.join(node["pki"], "apiserver.key")).st_mode) == 0o600
    etcd_peer = _cert(os.path.join(node["pki"], "etcd", "peer.crt"))
    assert list(etcd_peer.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    # the backup holds the replaced bytes at their absolute path, private
    key_copy = node["backup"] + os.path.join(node["pki"], "apiserver.key")
    assert key_copy in copies and open(key_copy, "rb").read() == old_key
    assert stat.S_IMODE(os.stat(key_copy).st_mode) == 0o600


def test_kubeconfig_keeps_every_other_byte(node):
    path = os.path.join(node["base"], "admin.conf")
    old_text = open(path, encoding="utf-8").read()
    old_cert = _kubeconfig_user(path)[0]
    plan = leaf_renewal.plan_renewals(node["layout"], names=["admin.conf"], force=True, backup_root=node["backup"])
    leaf_renewal.apply_renewals(plan)
    new_text = open(path, encoding="utf-8").read()
    changed = [(a, b) for a, b in zip(old_text.splitlines(), new_text.splitlines()) if a != b]
    assert len(old_text.splitlines()) == len(new_text.splitlines())
    assert [a.split(":")[0].strip() for a, _b in changed] == ["client-certificate-data", "client-key-data"]
    new_cert, new_key = _kubeconfig_user(path)
    assert new_cert.subject == old_cert.subject and _public(new_key) == _public(new_cert) != _public(old_cert)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    # only admin.conf was named: nothing else changed
    assert leaf_renewal.plan_report(plan)["renewed"] == ["admin.conf"]
    assert leaf_renewal.plan_report(plan)["restart"] == []


def test_rerun_renews_nothing(node):
    leaf_renewal.apply_renewals(leaf_renewal.plan_renewals(node["layout"], threshold_days=30, backup_root=node["backup"]))
    again = leaf_renewal.plan_renewals(node["layout"], threshold_days=30, backup_root=node["backup"])
    assert not again.changed
    assert {entry["status"] for entry in leaf_renewal.plan_report(again)["entries"]} == {"keep"}


def test_external_ca_skipped_unless_named(node):
    os.remove(os.path.join(node["pki"], "front-proxy-ca.key"))
    plan = leaf_renewal.plan_renewals(node["layout"], force=True)
    assert leaf_renewal.plan_report(plan)["not_renewable"] == ["front-proxy-client"]
    with pytest.raises(InvalidInputError, match="front-proxy-client: the front-proxy-ca CA is externally managed"):
        leaf_renewal.plan_renewals(node["layout"], names=["front-proxy-client"], force=True)


def test_missing_skipped_unless_named(node):
    os.remove(os.path.join(node["base"], "super-admin.conf"))
    plan = leaf_renewal.plan_renewals(node["layout"], force=True)
    assert leaf_renewal.plan_report(plan)["not_renewable"] == ["super-admin.conf"]
    with pytest.raises(InvalidInputError, match="super-admin.conf: .*does not exist"):
        leaf_renewal.plan_renewals(node["layout"], names=["super-admin.conf"], force=True)


def _bad_ca_key(node):
    write_file(os.path.join(node["pki"], "ca.key"), key_pem(ec.generate_private_key(ec.SECP256R1())), 0o600)
    return "ca.key does not belong to"


def _foreign_leaf(node):
    cert, key = leaf_pair(ca_pair("someone-else"), "kube-apiserver")
    write_file(os.path.join(node["pki"], "apiserver.crt"), pem(cert))
    write_file(os.path.join(node["pki"], "apiserver.key"), key_pem(key), 0o600)
    return "apiserver.crt was not issued by the ca CA on disk"


def _mismatched_key(node):
    write_file(os.path.join(node["pki"], "etcd", "peer.key"), key_pem(ec.generate_private_key(ec.SECP256R1())), 0o600)
    return "peer.key: the private key does not match"


def _kubeconfig_without_data(node):
    path = os.path.join(node["base"], "scheduler.conf")
    text = open(path, encoding="utf-8").read()
    text = text.split("    client-certificate-data:")[0] + "    client-certificate: /etc/kubernetes/pki/x.crt\n"
    write_file(path, text.encode(), 0o600)
    return "scheduler.conf does not embed its client certificate and key"


def _not_kubeadm(node):
    for name in ("ca.crt", "front-proxy-ca.crt", "etcd/ca.crt"):
        os.remove(os.path.join(node["pki"], name))
    return "is not a kubeadm certificates directory"


@pytest.mark.parametrize("breaker", [_bad_ca_key, _foreign_leaf, _mismatched_key, _kubeconfig_without_data, _not_kubeadm])
def test_bad_input_fails_before_anywrite_file(node, breaker):
    message = breaker(node)
    before = snapshot(node["base"])
    with pytest.raises(InvalidInputError, match=message):
        leaf_renewal.plan_renewals(node["layout"], force=True, backup_root=node["backup"])
    assert snapshot(node["base"]) == before
    assert not os.path.exists(node["backup"])


def test_needs_a_due_rule_and_known_names(node):
    with pytest.raises(InvalidInputError, match="threshold_days, or force"):
        leaf_renewal.plan_renewals(node["layout"])
    with pytest.raises(InvalidInputError, match="unknown certificate name"):
        leaf_renewal.plan_renewals(node["layout"], names=["kubelet.conf"], force=True)
