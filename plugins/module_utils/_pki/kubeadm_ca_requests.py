# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# PRIVATE to the kubepki.certs collection.
"""Kubeconfig credentials of a node without CA keys (a worker's kubelet.conf) at promote: the node keeps a new key in
its state directory and hands out a CSR; a control-plane node signs it with the staged new CA, for node identities only
(CN system:node:<name>, O system:nodes, client auth); the node installs the certificate with its key. The key never
leaves the node."""

from __future__ import annotations

import os

from ansible_collections.kubepki.certs.plugins.module_utils._pki.certs import (
    build_leaf_certificate,
    dump_certificates,
    is_directly_issued_by,
    load_certificates,
    utcnow,
)
from ansible_collections.kubepki.certs.plugins.module_utils._pki.deps import hashes, serialization, x509
from ansible_collections.kubepki.certs.plugins.module_utils._pki.errors import InvalidInputError
from ansible_collections.kubepki.certs.plugins.module_utils._pki.files import (
    PRIVATE_DIR_MODE,
    PRIVATE_FILE_MODE,
    atomic_write,
    ensure_dir,
    read_bytes,
)
from ansible_collections.kubepki.certs.plugins.module_utils._pki.keys import (
    generate_private_key,
    key_matches_certificate,
    key_type_of,
    load_private_key,
    serialize_private_key,
)
from ansible_collections.kubepki.certs.plugins.module_utils._pki.leaf_renewal import kubeconfig_credential

NODE_PREFIX, NODE_GROUP = "system:node:", "system:nodes"  # the only identity a control-plane node signs for others


def _key_path(requests_dir: str, kubeconfig: str) -> str:
    return os.path.join(requests_dir, os.path.basename(kubeconfig) + ".key")


def plan_requests(layout, ca, requests_dir: str) -> list:
    """(kubeconfig path, key write or None, CSR PEM) for every kubeconfig credential not yet issued by the new CA; a key
    already in ``requests_dir`` (an interrupted run) is reused."""
    planned = []
    for path in (p for p in layout.kubeconfigs if os.path.exists(p)):
        certificate, key, _file = kubeconfig_credential(path, read_bytes(path, what="kubeconfig").decode("utf-8"))
        if certificate is None or is_directly_issued_by(certificate, ca.new):
            continue
        key_path, write = _key_path(requests_dir, path), None
        if os.path.exists(key_path):
            new_key = load_private_key(read_bytes(key_path, what="request key"), source=key_path)
        else:
            new_key = generate_private_key(key_type_of(key))
            write = (key_path, serialize_private_key(new_key), PRIVATE_FILE_MODE)
        csr = x509.CertificateSigningRequestBuilder().subject_name(certificate.subject).sign(new_key, hashes.SHA256())
        planned.append((path, write, csr.public_bytes(serialization.Encoding.PEM)))
    return planned


def apply_requests(requests_dir: str, planned: list) -> None:
    ensure_dir(requests_dir, mode=PRIVATE_DIR_MODE)
    for _path, write, _csr in planned:
        if write is not None:
            atomic_write(write[0], write[1], mode=write[2])


def request_keys(requests_dir: str) -> list:
    """The request keys kept here (their credentials are installed once promote is recorded: then they are spare copies
    of live keys, which ``record`` removes)."""
    if not os.path.isdir(requests_dir):
        return []
    return sorted(os.path.join(requests_dir, n) for n in os.listdir(requests_dir) if n.endswith(".key"))


def sign_node_request(ca, csr_pem: bytes, *, validity_days: int, now=None):
    """The new CA's signature on a node-identity CSR; anything else is refused."""
    if ca.new_key is None:
        raise InvalidInputError("the staged %s CA on this node has no key: sign on a control-plane node" % ca.name)
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except ValueError:
        raise InvalidInputError("a certificate request is not a PEM CSR") from None
    if not csr.is_signature_valid:
        raise InvalidInputError("a certificate request's signature does not verify")
    names = csr.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    groups = [a.value for a in csr.subject.get_attributes_for_oid(x509.NameOID.ORGANIZATION_NAME)]
    if len(names) != 1 or not names[0].value.startswith(NODE_PREFIX) or groups != [NODE_GROUP] or len(csr.subject) != 2:
        raise InvalidInputError("refusing to sign %s: only node identities (CN %s<name>, O %s) are signed for nodes "
                                "without CA keys" % (csr.subject.rfc4514_string(), NODE_PREFIX, NODE_GROUP))
    certificate = build_leaf_certificate(subject_common_name=names[0].value, subject_public_key=csr.public_key(),
                                         issuer_certificate=ca.new, issuer_key=ca.new_key, validity_days=validity_days,
                                         organizations=groups, client_auth=True, server_auth=False, now=now or utcnow())
    return dump_certificates([certificate])


def load_signed(layout, ca, requests_dir: str, signed: dict) -> dict:
    """kubeconfig path -> (certificate, key) from the signed certificates (by kubeconfig file name) and the keys kept in
    ``requests_dir``; each must match its key and be issued by the new CA."""
    pairs = {}
    for name, cert_pem in (signed or {}).items():
        path = next((p for p in layout.kubeconfigs if os.path.basename(p) == name), None)
        if path is None:
            raise InvalidInputError("a signed certificate names %r, which is not one of this node's kubeconfigs" % name)
        key_path = _key_path(requests_dir, path)
        key = load_private_key(read_bytes(key_path, what="request key"), source=key_path)
        certificate = load_certificates(cert_pem.encode("ascii"), source=name)[0]
        if not key_matches_certificate(key, certificate) or not is_directly_issued_by(certificate, ca.new):
            raise InvalidInputError("the signed certificate for %s does not match %s or was not issued by the new CA; "
                                    "request and sign again" % (name, key_path), path=key_path)
        pairs[path] = (certificate, key)
    return pairs
