# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""A small kubeadm tree made with cryptography directly (not with the engine): three CAs, every leaf kubeadm renews,
the four kubeconfigs with embedded credentials. Shared by the leaf_renewal and external_ca unit tests."""

from __future__ import annotations

import base64
import datetime
import hashlib
import ipaddress
import os

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ansible_collections.kubepki.certs.plugins.module_utils._pki.layout import get_layout

NOW = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)


def name_of(cn, orgs=()):
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in orgs]
                     + [x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def ca_pair(cn):
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(name_of(cn)).issuer_name(name_of(cn)).public_key(key.public_key())
            .serial_number(1).not_valid_before(NOW - datetime.timedelta(days=1))
            .not_valid_after(NOW + datetime.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return cert, key


def leaf_pair(ca, cn, *, orgs=(), eku=(ExtendedKeyUsageOID.CLIENT_AUTH,), dns=(), ips=(), days=10, key=None):
    ca_cert, ca_key = ca
    key = key or ec.generate_private_key(ec.SECP256R1())
    builder = (x509.CertificateBuilder().subject_name(name_of(cn, orgs)).issuer_name(ca_cert.subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(NOW - datetime.timedelta(days=1)).not_valid_after(NOW + datetime.timedelta(days=days))
               .add_extension(x509.ExtendedKeyUsage(list(eku)), critical=False))
    sans = [x509.DNSName(d) for d in dns] + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(ca_key, hashes.SHA256()), key


def pem(cert):
    return cert.public_bytes(serialization.Encoding.PEM)


def key_pem(key):
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption())


def write_file(path, data, mode=0o644):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(data)
    os.chmod(path, mode)


KUBECONFIG = """apiVersion: v1
clusters:
- cluster:
    certificate-authority-data: {ca}
    server: https://10.0.0.1:6443
  name: kubernetes
contexts:
- context:
    cluster: kubernetes
    user: {user}
  name: {user}@kubernetes
current-context: {user}@kubernetes
kind: Config
users:
- name: {user}
  user:
    client-certificate-data: {cert}
    client-key-data: {key}
"""


def make_kubeadm_tree(tmp_path):
    """A kubeadm tree: three CAs, every leaf, the four kubeconfigs; apiserver has SANs, etcd leaves two EKUs."""
    base = str(tmp_path / "kubernetes")
    pki = os.path.join(base, "pki")
    cas = {"ca": ca_pair("kubernetes"), "front-proxy-ca": ca_pair("front-proxy-ca"), "etcd-ca": ca_pair("etcd-ca")}
    for name, path in (("ca", "ca"), ("front-proxy-ca", "front-proxy-ca"), ("etcd-ca", "etcd/ca")):
        write_file(os.path.join(pki, path + ".crt"), pem(cas[name][0]))
        write_file(os.path.join(pki, path + ".key"), key_pem(cas[name][1]), 0o600)
    both = (ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH)
    leaves = {
        "apiserver": ("ca", dict(eku=(ExtendedKeyUsageOID.SERVER_AUTH,), dns=("kubernetes", "cp1"), ips=("10.96.0.1", "10.0.0.1"))),
        "apiserver-kubelet-client": ("ca", dict(orgs=("kubeadm:cluster-admins",),
                                                key=rsa.generate_private_key(public_exponent=65537, key_size=2048))),
        "front-proxy-client": ("front-proxy-ca", {}),
        "etcd/server": ("etcd-ca", dict(eku=both, dns=("cp1", "localhost"), ips=("127.0.0.1",))),
        "etcd/peer": ("etcd-ca", dict(eku=both, dns=("cp1",), ips=("10.0.0.1",))),
        "etcd/healthcheck-client": ("etcd-ca", {}),
        "apiserver-etcd-client": ("etcd-ca", {}),
    }
    for path, (ca_name, options) in leaves.items():
        cert, key = leaf_pair(cas[ca_name], path.replace("/", "-"), **options)
        write_file(os.path.join(pki, path + ".crt"), pem(cert))
        write_file(os.path.join(pki, path + ".key"), key_pem(key), 0o600)
    for file_name, user, orgs in (("admin.conf", "kubernetes-admin", ("kubeadm:cluster-admins",)),
                                  ("super-admin.conf", "kubernetes-super-admin", ("system:masters",)),
                                  ("controller-manager.conf", "system:kube-controller-manager", ()),
                                  ("scheduler.conf", "system:kube-scheduler", ())):
        cert, key = leaf_pair(cas["ca"], user, orgs=orgs)
        text = KUBECONFIG.format(ca=base64.b64encode(pem(cas["ca"][0])).decode(), user=user,
                                 cert=base64.b64encode(pem(cert)).decode(), key=base64.b64encode(key_pem(key)).decode())
        write_file(os.path.join(base, file_name), text.encode(), 0o600)
    return {"base": base, "pki": pki, "cas": cas, "layout": get_layout("kubeadm", data_dir=base),
            "backup": str(tmp_path / "backup")}


def snapshot(base):
    """path -> sha256 of every file under base: compare two snapshots to prove nothing was written."""
    found = {}
    for root, _dirs, files in os.walk(base):
        for name in files:
            with open(os.path.join(root, name), "rb") as handle:
                found[os.path.join(root, name)] = hashlib.sha256(handle.read()).hexdigest()
    return found
