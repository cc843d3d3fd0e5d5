# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""kubeadm_ca_requests.sign_node_request: CSRs made by openssl, the signed certificates judged by openssl
(verify -x509_strict against the new CA, subject, extended key usage); anything but a node identity is refused."""

from __future__ import annotations

import subprocess

import pytest

from ansible_collections.kubepki.certs.plugins.module_utils._pki import kubeadm_ca_requests
from ansible_collections.kubepki.certs.plugins.module_utils._pki.errors import InvalidInputError
from ansible_collections.kubepki.certs.plugins.module_utils._pki.kubeadm_ca_stage import RotatedCA


def _openssl(*args):
    result = subprocess.run(["openssl", *args], capture_output=True, check=False)
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout.decode()


@pytest.fixture()
def new_ca(tmp_path):
    """A CA made by openssl (its key and certificate loaded into a RotatedCA as the staged new CA)."""
    from cryptography import x509  # pylint: disable=import-outside-toplevel
    from cryptography.hazmat.primitives import serialization  # pylint: disable=import-outside-toplevel

    key, cert = str(tmp_path / "ca.key"), str(tmp_path / "ca.crt")
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", key, "-out", cert,
             "-subj", "/CN=kubernetes@1", "-days", "10", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,digitalSignature")
    with open(cert, "rb") as handle:
        certificate = x509.load_pem_x509_certificate(handle.read())
    with open(key, "rb") as handle:
        private = serialization.load_pem_private_key(handle.read(), None)
    return RotatedCA("ca", "/x/ca.crt", "/x/ca.key", certificate, certificate, certificate, private), cert


def _csr(tmp_path, subject):
    path = str(tmp_path / "node.csr")
    _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", str(tmp_path / "node.key"),
             "-subj", subject, "-out", path)
    with open(path, "rb") as handle:
        return handle.read()


def test_a_node_identity_is_signed_for_client_auth(new_ca, tmp_path):
    ca, ca_file = new_ca
    pem = kubeadm_ca_requests.sign_node_request(ca, _csr(tmp_path, "/O=system:nodes/CN=system:node:worker1"), validity_days=30)
    leaf = str(tmp_path / "leaf.crt")
    with open(leaf, "wb") as handle:
        handle.write(pem)
    assert "OK" in _openssl("verify", "-x509_strict", "-purpose", "sslclient", "-CAfile", ca_file, leaf)
    text = _openssl("x509", "-in", leaf, "-noout", "-subject", "-ext", "extendedKeyUsage", "-nameopt", "RFC2253")
    assert "subject=CN=system:node:worker1,O=system:nodes" in text and "TLS Web Client Authentication" in text
    assert "Server" not in text


@pytest.mark.parametrize("subject", ["/O=system:masters/CN=system:node:worker1", "/O=system:nodes/CN=admin",
                                     "/O=system:nodes/O=system:masters/CN=system:node:w", "/CN=system:node:w"])
def test_anything_else_is_refused(new_ca, tmp_path, subject):
    with pytest.raises(InvalidInputError, match="only node identities"):
        kubeadm_ca_requests.sign_node_request(new_ca[0], _csr(tmp_path, subject), validity_days=30)
