# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""kubeadm_ca_cluster: which namespaces' kube-root-ca.crt lack the new CA, and the cluster-info patch (judged with
PyYAML and base64 on the objects as the apiserver returns them)."""

from __future__ import annotations

import base64
import datetime
import json

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ansible_collections.kubepki.certs.plugins.module_utils._pki import kubeadm_ca_cluster
from ansible_collections.kubepki.certs.plugins.module_utils._pki.errors import InvalidInputError

CLUSTER_INFO_KUBECONFIG = """apiVersion: v1
clusters:
- cluster:
    certificate-authority-data: {data}
    server: https://10.0.0.1:6443
  name: ""
contexts: null
current-context: ""
kind: Config
preferences: {{}}
users: null
"""


def _ca_pem(name):
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM)


def _configmaps(contents):
    return json.dumps({"items": [{"metadata": {"namespace": ns, "name": "kube-root-ca.crt"}, "data": {"ca.crt": text}}
                                 for ns, text in contents.items()]})


def test_namespaces_without_the_new_ca_are_stale():
    old, new = _ca_pem("kubernetes").decode(), _ca_pem("kubernetes@1").decode()
    listing = _configmaps({"default": old + new, "kube-system": old, "team-a": new, "broken": "not a pem"})
    assert kubeadm_ca_cluster.stale_root_ca(listing, new.encode()) == ["broken", "kube-system"]
    assert kubeadm_ca_cluster.stale_root_ca(_configmaps({"default": new + old}), new.encode()) == []
    with pytest.raises(InvalidInputError):
        kubeadm_ca_cluster.stale_root_ca("error: the server doesn't have a resource type", new.encode())


def test_cluster_info_gets_the_new_ca_alone_and_a_rerun_patches_nothing():
    old, new = _ca_pem("kubernetes"), _ca_pem("kubernetes@1")
    configmap = {"data": {"kubeconfig": CLUSTER_INFO_KUBECONFIG.format(data=base64.b64encode(old).decode())}}
    patch = kubeadm_ca_cluster.cluster_info_patch(json.dumps(configmap), new)
    patched = yaml.safe_load(patch["data"]["kubeconfig"])
    assert base64.b64decode(patched["clusters"][0]["cluster"]["certificate-authority-data"]) == new
    before = yaml.safe_load(configmap["data"]["kubeconfig"])
    before["clusters"][0]["cluster"].pop("certificate-authority-data")
    patched["clusters"][0]["cluster"].pop("certificate-authority-data")
    assert patched == before
    assert kubeadm_ca_cluster.cluster_info_patch(json.dumps({"data": {"kubeconfig": patch["data"]["kubeconfig"]}}), new) is None
    with pytest.raises(InvalidInputError, match="0 certificate-authority-data"):
        kubeadm_ca_cluster.cluster_info_patch(json.dumps({"data": {"kubeconfig": "clusters: []"}}), new)
