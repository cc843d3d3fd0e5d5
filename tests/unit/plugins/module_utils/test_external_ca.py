# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""external_ca: request -> sign -> install on the kubeadm tree of kubeadm_tree.py; the edges (wrong CA, key
mismatch, nothing written on a bad input, CA keys removed and not backed up). The real kubeadm judges the whole path in
tests/kube/test_external_ca.py."""

from __future__ import annotations

import os

import pytest
import yaml
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from ansible_collections.kubepki.certs.plugins.module_utils._pki import external_ca
from ansible_collections.kubepki.certs.plugins.module_utils._pki.errors import InvalidInputError
from ansible_collections.kubepki.certs.tests.unit.plugins.module_utils.kubeadm_tree import (
    ca_pair,
    key_pem,
    pem,
    snapshot,
    write_file,
)


def _sign_all(node, request_dir):
    for ca_name, base in (("ca", "ca"), ("front-proxy-ca", "front-proxy-ca"), ("etcd-ca", "etcd/ca")):
        plan = external_ca.plan_signing(node["layout"], request_dir, ca_name=ca_name,
                                        ca_cert_path=os.path.join(node["pki"], base + ".crt"),
                                        ca_key_path=os.path.join(node["pki"], base + ".key"), validity_days=100)
        external_ca.apply_step(plan)


def test_request_sign_install(node, tmp_path):
    request_dir = str(tmp_path / "requests")
    plan = external_ca.plan_csrs(node["layout"], request_dir)
    assert len(plan.items) == 11 and {i["state"] for i in plan.items} == {"created"}
    external_ca.apply_step(plan)
    assert not external_ca.plan_csrs(node["layout"], request_dir).changed  # a rerun keeps the pairs
    csr = x509.load_pem_x509_csr(open(os.path.join(request_dir, "pki", "apiserver.csr"), "rb").read())
    old = x509.load_pem_x509_certificate(open(os.path.join(node["pki"], "apiserver.crt"), "rb").read())
    assert csr.subject == old.subject and csr.is_signature_valid
    assert csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value == \
        old.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert os.stat(os.path.join(request_dir, "admin.conf.key")).st_mode & 0o777 == 0o600

    _sign_all(node, request_dir)
    signed = x509.load_pem_x509_certificate(open(os.path.join(request_dir, "pki", "etcd", "peer.crt"), "rb").read())
    assert list(signed.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    admin = x509.load_pem_x509_certificate(open(os.path.join(request_dir, "admin.conf.crt"), "rb").read())
    assert list(admin.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.CLIENT_AUTH]

    install = external_ca.plan_install(node["layout"], request_dir, remove_ca_keys=True, backup_root=node["backup"])
    ca_keys = ("ca.key", "front-proxy-ca.key", "etcd/ca.key")
    assert sorted(install.removals) == sorted(os.path.join(node["pki"], k) for k in ca_keys)
    copies = external_ca.apply_step(install)
    for key in install.removals:
        assert not os.path.exists(key) and node["backup"] + key not in copies
    assert open(os.path.join(node["pki"], "apiserver.key"), "rb").read() == \
        open(os.path.join(request_dir, "pki", "apiserver.key"), "rb").read()
    assert not external_ca.plan_install(node["layout"], request_dir, remove_ca_keys=True).changed


def test_install_refuses_a_certificate_of_another_ca_before_writing(node, tmp_path):
    request_dir = str(tmp_path / "requests")
    external_ca.apply_step(external_ca.plan_csrs(node["layout"], request_dir, names=["apiserver", "admin.conf"]))
    other_cert, other_key = ca_pair("not-the-cluster-ca")
    write_file(str(tmp_path / "other.crt"), pem(other_cert))
    write_file(str(tmp_path / "other.key"), key_pem(other_key), 0o600)
    external_ca.apply_step(external_ca.plan_signing(node["layout"], request_dir, ca_name="ca",
                                                    ca_cert_path=str(tmp_path / "other.crt"),
                                                    ca_key_path=str(tmp_path / "other.key"), names=["apiserver", "admin.conf"]))
    before = snapshot(node["base"])
    with pytest.raises(InvalidInputError, match="was not signed by the ca CA of this node"):
        external_ca.plan_install(node["layout"], request_dir, names=["apiserver", "admin.conf"], remove_ca_keys=True)
    assert snapshot(node["base"]) == before


def test_install_needs_every_signed_certificate_and_matching_keys(node, tmp_path):
    request_dir = str(tmp_path / "requests")
    external_ca.apply_step(external_ca.plan_csrs(node["layout"], request_dir))
    with pytest.raises(InvalidInputError, match="apiserver.crt is missing: sign"):
        external_ca.plan_install(node["layout"], request_dir)
    _sign_all(node, request_dir)
    os.replace(os.path.join(request_dir, "pki", "front-proxy-client.key"), os.path.join(request_dir, "pki", "x.key"))
    write_file(os.path.join(request_dir, "pki", "front-proxy-client.key"),
               open(os.path.join(request_dir, "pki", "apiserver.key"), "rb").read(), 0o600)
    with pytest.raises(InvalidInputError, match="front-proxy-client.crt does not match"):
        external_ca.plan_install(node["layout"], request_dir)


def test_signing_checks_the_ca_pair_and_names(node, tmp_path):
    with pytest.raises(InvalidInputError, match="does not belong to"):
        external_ca.plan_signing(node["layout"], str(tmp_path), ca_name="ca",
                                 ca_cert_path=os.path.join(node["pki"], "ca.crt"),
                                 ca_key_path=os.path.join(node["pki"], "front-proxy-ca.key"))
    with pytest.raises(InvalidInputError, match="unknown CA"):
        external_ca.plan_signing(node["layout"], str(tmp_path), ca_name="root", ca_cert_path="x", ca_key_path="y")
    with pytest.raises(InvalidInputError, match="unknown certificate name"):
        external_ca.plan_csrs(node["layout"], str(tmp_path), names=["kubelet.conf"])


def test_joined_node_without_super_admin_conf(node, tmp_path):
    """kubeadm join --control-plane writes no super-admin.conf: left out (reported missing) unless named."""
    os.remove(os.path.join(node["base"], "super-admin.conf"))
    request_dir = str(tmp_path / "requests")
    plan = external_ca.plan_csrs(node["layout"], request_dir)
    states = {item["name"]: item["state"] for item in plan.items}
    assert states.pop("super-admin.conf") == "missing" and set(states.values()) == {"created"}
    external_ca.apply_step(plan)
    assert not os.path.exists(os.path.join(request_dir, "super-admin.conf.csr"))
    _sign_all(node, request_dir)
    install = external_ca.plan_install(node["layout"], request_dir)
    assert {item["name"]: item["state"] for item in install.items}["super-admin.conf"] == "missing"
    external_ca.apply_step(install)
    assert not os.path.exists(os.path.join(node["base"], "super-admin.conf"))
    with pytest.raises(InvalidInputError, match="super-admin.conf does not exist"):
        external_ca.plan_csrs(node["layout"], str(tmp_path / "named"), names=["super-admin.conf"])


KCM_MANIFEST = """apiVersion: v1
kind: Pod
metadata:
  name: kube-controller-manager
spec:
  containers:
  - command:
    - kube-controller-manager
    - --cluster-signing-cert-file=/etc/kubernetes/pki/ca.crt
    - --cluster-signing-key-file=/etc/kubernetes/pki/ca.key
    - --root-ca-file=/etc/kubernetes/pki/ca.crt
    name: kube-controller-manager
"""


def test_removing_ca_key_drops_the_controller_managers_signing_flags(node, tmp_path):
    manifest = os.path.join(node["base"], "manifests", "kube-controller-manager.yaml")
    write_file(manifest, KCM_MANIFEST.encode(), 0o600)
    request_dir = str(tmp_path / "requests")
    external_ca.apply_step(external_ca.plan_csrs(node["layout"], request_dir))
    _sign_all(node, request_dir)
    kept = external_ca.plan_install(node["layout"], request_dir)  # CA keys kept: the flags stay
    assert manifest not in [w[0] for w in kept.writes]
    copies = external_ca.apply_step(external_ca.plan_install(node["layout"], request_dir, remove_ca_keys=True,
                                                             backup_root=node["backup"]))
    with open(manifest, encoding="utf-8") as handle:
        command = yaml.safe_load(handle)["spec"]["containers"][0]["command"]
    assert command == ["kube-controller-manager", "--root-ca-file=/etc/kubernetes/pki/ca.crt"]
    assert node["backup"] + manifest in copies
    assert os.stat(manifest).st_mode & 0o777 == 0o600
