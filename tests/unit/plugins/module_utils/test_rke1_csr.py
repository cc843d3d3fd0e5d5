# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""rke1_csr: the names `rke cert generate-csr` writes for a cluster.yml, the refusal of an incomplete directory, the
signing and its idempotency, on CSRs made here with cryptography. rke's own CSRs, openssl and rke's own custom-cert
validation judge the whole path in tests/rke1/test_rke1_external_ca.py."""

from __future__ import annotations

import datetime
import ipaddress
import os

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ansible_collections.kubepki.certs.plugins.module_utils._pki import rke1_csr
from ansible_collections.kubepki.certs.plugins.module_utils._pki.certs import not_after
from ansible_collections.kubepki.certs.plugins.module_utils._pki.errors import InvalidInputError
from ansible_collections.kubepki.certs.plugins.module_utils._pki.layout import get_layout
from ansible_collections.kubepki.certs.tests.unit.plugins.module_utils.kubeadm_tree import (
    ca_pair,
    key_pem,
    name_of,
    pem,
    snapshot,
    write_file,
)

LAYOUT = get_layout("rke1")
NODES = [{"address": "10.0.0.1", "role": ["controlplane", "etcd", "worker"]},
         {"address": "203.0.113.2", "internal_address": "10.0.0.2", "role": ["etcd", "worker"]},
         {"address": "10.0.0.3", "role": ["worker"]}]
COMPONENTS = ["kube-apiserver", "kube-controller-manager", "kube-scheduler", "kube-proxy", "kube-node", "kube-admin",
              "kube-apiserver-proxy-client"]


def config(kubelet_serving=False, nodes=None):
    document = {"nodes": nodes or NODES, "services": {"kubelet": {"generate_serving_certificate": kubelet_serving}}}
    return rke1_csr.parse_cluster_config(document, source="/c/cluster.yml")


def test_expected_names_follow_rke():
    assert rke1_csr.expected_names(config(), LAYOUT) == COMPONENTS + ["kube-etcd-10-0-0-1", "kube-etcd-10-0-0-2"]
    assert rke1_csr.expected_names(config(True), LAYOUT)[-3:] == [
        "kube-kubelet-10-0-0-1", "kube-kubelet-10-0-0-2", "kube-kubelet-10-0-0-3"]


def test_default_cert_dir_is_rkes():
    assert rke1_csr.default_cert_dir("/srv/rke/cluster.yml", LAYOUT) == "/srv/rke/cluster_certs"
    assert rke1_csr.default_cert_dir("/srv/rke/prod.yaml", LAYOUT) == "/srv/rke/prod_certs"


@pytest.mark.parametrize("document, words", [
    ({"nodes": []}, "at least one node"),
    ({"nodes": [{"role": ["etcd"]}]}, "nodes[0] has no address"),
    (["not", "a", "mapping"], "not a cluster.yml"),
])
def test_bad_cluster_yml_refused(document, words):
    with pytest.raises(InvalidInputError, match=r".*" + words.replace("[", r"\[").replace("]", r"\]")):
        rke1_csr.parse_cluster_config(document, source="/c/cluster.yml")


def test_server_names():
    assert [n for n in rke1_csr.expected_names(config(True), LAYOUT) if rke1_csr.is_server_name(n, LAYOUT)] == [
        "kube-apiserver", "kube-apiserver-proxy-client", "kube-etcd-10-0-0-1", "kube-etcd-10-0-0-2",
        "kube-kubelet-10-0-0-1", "kube-kubelet-10-0-0-2", "kube-kubelet-10-0-0-3"]


def write_request(cert_dir, name, *, cn=None, orgs=(), ips=(), key=None):
    key = key or rsa.generate_private_key(public_exponent=65537, key_size=2048)
    builder = x509.CertificateSigningRequestBuilder().subject_name(name_of(cn or name, orgs))
    if ips:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]), critical=False)
    write_file(os.path.join(cert_dir, name + "-csr.pem"), builder.sign(key, hashes.SHA256()).public_bytes(
        serialization.Encoding.PEM), 0o640)
    write_file(os.path.join(cert_dir, name + "-key.pem"), key_pem(key), 0o640)
    return key


@pytest.fixture()
def signed_setup(tmp_path):
    cert_dir = str(tmp_path / "cluster_certs")
    keys = {name: write_request(cert_dir, name, ips=("10.0.0.1",) if name.startswith("kube-etcd") else ())
            for name in rke1_csr.expected_names(config(), LAYOUT)}
    ca_cert, ca_key = ca_pair("operator-ca")
    write_file(str(tmp_path / "ca.pem"), pem(ca_cert))
    write_file(str(tmp_path / "ca-key.pem"), key_pem(ca_key), 0o600)
    return {"dir": cert_dir, "keys": keys, "ca_cert": ca_cert, "ca": str(tmp_path / "ca.pem"),
            "ca_key": str(tmp_path / "ca-key.pem"), "tmp": tmp_path}


def plan(setup, **kwargs):
    return rke1_csr.plan_signing(config(), setup["dir"], LAYOUT, ca_cert_path=setup["ca"], ca_key_path=setup["ca_key"],
                                 validity_days=kwargs.pop("validity_days", 365), **kwargs)


def load(path):
    with open(path, "rb") as handle:
        return x509.load_pem_x509_certificate(handle.read())


def test_missing_files_refused_by_name_before_any_write(signed_setup):
    os.remove(os.path.join(signed_setup["dir"], "kube-etcd-10-0-0-2-csr.pem"))
    os.remove(os.path.join(signed_setup["dir"], "kube-proxy-key.pem"))
    before = snapshot(signed_setup["dir"])
    with pytest.raises(InvalidInputError) as caught:
        plan(signed_setup)
    assert "kube-proxy-key.pem, kube-etcd-10-0-0-2-csr.pem" in caught.value.message
    assert "rke cert generate-csr" in caught.value.message
    assert snapshot(signed_setup["dir"]) == before


def test_key_of_another_csr_refused(signed_setup):
    write_file(os.path.join(signed_setup["dir"], "kube-node-key.pem"), key_pem(signed_setup["keys"]["kube-admin"]))
    with pytest.raises(InvalidInputError, match="is not the key of .*kube-node-csr.pem"):
        plan(signed_setup)


def test_sign_then_rerun_writes_nothing(signed_setup):
    first = plan(signed_setup)
    written = rke1_csr.apply_plan(first)
    cert_dir = signed_setup["dir"]
    assert {os.path.basename(p) for p in written} >= {"kube-ca.pem", "kube-apiserver-requestheader-ca.pem",
                                                      "kube-service-account-token-key.pem", "kube-apiserver.pem"}
    etcd = load(os.path.join(cert_dir, "kube-etcd-10-0-0-1.pem"))
    usages = etcd.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(usages) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    proxy = load(os.path.join(cert_dir, "kube-proxy.pem"))
    assert list(proxy.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    for name in os.listdir(cert_dir):
        if name.endswith("-key.pem"):
            assert os.stat(os.path.join(cert_dir, name)).st_mode & 0o777 == 0o600, name
    before = snapshot(cert_dir)
    again = plan(signed_setup)
    assert again.writes == [] and {item["state"] for item in again.items} == {"present"}
    assert snapshot(cert_dir) == before


def test_changed_names_with_the_same_key_are_signed_again(signed_setup):
    rke1_csr.apply_plan(plan(signed_setup))
    # rke re-makes a CSR with the key already there when the addresses change (pki.GenerateEtcdCSRs).
    write_request(signed_setup["dir"], "kube-etcd-10-0-0-1", cn="kube-etcd", ips=("10.0.0.9",),
                  key=signed_setup["keys"]["kube-etcd-10-0-0-1"])
    again = plan(signed_setup)
    states = {item["name"]: item["state"] for item in again.items}
    assert states["kube-etcd-10-0-0-1"] == "signed" and states["kube-apiserver"] == "present"


def test_validity_never_past_the_ca(signed_setup):
    rke1_csr.apply_plan(plan(signed_setup, validity_days=36500))
    cert = load(os.path.join(signed_setup["dir"], "kube-admin.pem"))
    assert not_after(cert) == not_after(signed_setup["ca_cert"])


def test_expired_ca_refused(signed_setup):
    later = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=4000)
    with pytest.raises(InvalidInputError, match="is not valid now"):
        plan(signed_setup, now=later)


def test_subject_kept_and_extra_csr_signed(signed_setup):
    write_request(signed_setup["dir"], "kube-etcd-10-0-0-7")  # a removed node's, still read by rke up --custom-certs
    write_request(signed_setup["dir"], "kube-node", cn="system:node", orgs=("system:nodes",))
    result = plan(signed_setup)
    rke1_csr.apply_plan(result)
    report = rke1_csr.plan_report(result, rke1_csr.check_completeness(config(), signed_setup["dir"], LAYOUT))
    assert report["extra"] == ["kube-etcd-10-0-0-7"]
    node = load(os.path.join(signed_setup["dir"], "kube-node.pem"))
    assert node.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "system:nodes"
    assert "PRIVATE KEY" not in repr(report)
