# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# PRIVATE to the kubepki.certs collection.
"""kubeadm's External CA mode in three steps, the CA key staying with the operator.

1. On the node, ``plan_csrs``: a new key and a CSR per certificate kubeadm renews, with the subject and SANs of the
   node's current certificate (what ``kubeadm certs generate-csr`` derives from the node's config), written into a
   request directory that mirrors kubeadm's tree (``pki/apiserver.csr`` + ``.key``, ``admin.conf.csr`` + ``.key``).
2. On the controller, ``plan_signing``: each CSR signed by the operator's CA with kubeadm's profile for its name
   (extended key usages from the layout table, never from the request), written as ``<name>.crt`` beside it.
3. On the node, ``plan_install``: every signed certificate checked (its key, the node's CA on disk signed it) before
   anything is written; then the key and certificate put in place (kubeconfigs get both embedded), and on request the
   keys of the CAs that signed them removed, which is how kubeadm recognises an externally managed CA (and the
   controller-manager's manifest loses its --cluster-signing-* flags, as kubeadm writes it in that mode).
Each step plans completely before its apply writes anything.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
from dataclasses import dataclass, field

from ansible_collections.kubepki.certs.plugins.module_utils._pki.certs import (
    dump_certificates,
    fingerprint_sha256,
    is_directly_issued_by,
    load_certificates,
    sign_request,
    utcnow,
)
from ansible_collections.kubepki.certs.plugins.module_utils._pki.deps import hashes, serialization, x509
from ansible_collections.kubepki.certs.plugins.module_utils._pki.errors import InvalidInputError
from ansible_collections.kubepki.certs.plugins.module_utils._pki.files import (
    PRIVATE_FILE_MODE,
    PUBLIC_FILE_MODE,
    atomic_write,
    ensure_dir,
    file_mode,
    read_bytes,
    write_backup,
)
from ansible_collections.kubepki.certs.plugins.module_utils._pki.keys import (
    generate_private_key,
    key_matches_certificate,
    key_type_of,
    load_private_key,
    same_key,
    serialize_private_key,
)
from ansible_collections.kubepki.certs.plugins.module_utils._pki.leaf_renewal import (
    Target,
    b64,
    current_credentials,
    kubeadm_profile,
    kubeadm_targets,
    replace_user_data,
)
from ansible_collections.kubepki.certs.plugins.module_utils._pki.trees import backup_tree

CSR_SUFFIX, KEY_SUFFIX, CERT_SUFFIX = ".csr", ".key", ".crt"


@dataclass
class RequestFiles:
    """One certificate's files in the request directory, and what they replace on the node."""

    name: str
    base: str  # <request dir>/<path relative to the kubeadm dir>, without suffix
    live_cert: str
    live_key: str | None  # None: a kubeconfig embeds both
    ca_name: str
    target: Target

    @property
    def csr(self) -> str:
        return self.base + CSR_SUFFIX

    @property
    def key(self) -> str:
        return self.base + KEY_SUFFIX

    @property
    def cert(self) -> str:
        return self.base + CERT_SUFFIX


@dataclass
class StepPlan:
    items: list
    writes: list = field(default_factory=list, repr=False)  # (path, bytes, mode)
    removals: list = field(default_factory=list)
    backup_root: str | None = None

    @property
    def changed(self) -> bool:
        return bool(self.writes or self.removals)


def request_files(layout, request_dir: str, names=None) -> list:
    """The request directory's files for ``names`` (default every certificate kubeadm renews)."""
    targets = kubeadm_targets(layout)
    unknown = sorted(set(names or ()) - {t.name for t in targets})
    if unknown:
        raise InvalidInputError("unknown certificate name(s) %s; kubeadm's are %s"
                                % (", ".join(unknown), ", ".join(t.name for t in targets)))
    chosen = [t for t in targets if not names or t.name in set(names)]
    found = []
    for target in chosen:
        relative = os.path.relpath(target.cert_path, layout.data_dir)
        base = relative[:-len(CERT_SUFFIX)] if target.key_path else relative  # admin.conf -> admin.conf.csr
        found.append(RequestFiles(target.name, os.path.join(request_dir, base), target.cert_path, target.key_path,
                                  target.ca_name, target))
    return found


def _csr_for(profile: dict, key):
    names = [x509.NameAttribute(x509.NameOID.ORGANIZATION_NAME, org) for org in profile["organizations"]]
    names.append(x509.NameAttribute(x509.NameOID.COMMON_NAME, profile["subject_common_name"]))
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name(names))
    sans = [x509.DNSName(n) for n in profile["dns_names"]]
    sans += [x509.IPAddress(ipaddress.ip_address(a)) for a in profile["ip_addresses"]]
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(key, hashes.SHA256())


def plan_csrs(layout, request_dir: str, *, names=None, key_type: str | None = None) -> StepPlan:
    """A key and a CSR per certificate, unless the request directory already holds a matching pair (rerun). Without
    ``names`` an entry the node does not have (super-admin.conf on a joined node) is reported missing; a named one fails."""
    items, writes = [], []
    for files in request_files(layout, request_dir, names):
        if not os.path.exists(files.live_cert) and not names:
            items.append({"name": files.name, "csr": None, "key": None, "state": "missing"})
            continue
        if not os.path.exists(files.live_cert):
            raise InvalidInputError("%s does not exist: the CSR takes its subject and SANs from the node's current "
                                    "certificate (kubeadm certs generate-csr makes them from a config instead)"
                                    % files.live_cert, path=files.live_cert)
        certificate, current_key, _text = current_credentials(files.target)
        profile = kubeadm_profile(certificate, files.live_cert)
        if os.path.exists(files.csr) and os.path.exists(files.key):
            items.append({"name": files.name, "csr": files.csr, "key": files.key, "state": "present"})
            continue
        key = generate_private_key(key_type or key_type_of(current_key))
        writes += [(files.key, serialize_private_key(key), PRIVATE_FILE_MODE),
                   (files.csr, _csr_for(profile, key).public_bytes(serialization.Encoding.PEM), PUBLIC_FILE_MODE)]
        items.append({"name": files.name, "csr": files.csr, "key": files.key, "state": "created"})
    return StepPlan(items, writes)


def plan_signing(layout, request_dir: str, *, ca_name: str, ca_cert_path: str, ca_key_path: str, names=None,
                 validity_days: int = 365, now: datetime.datetime | None = None) -> StepPlan:
    """Sign every CSR of the request directory that kubeadm has the CA ``ca_name`` sign, with that CA's certificate
    and key (the operator's copies); a certificate already there for the same request and CA is kept."""
    if ca_name not in {ca.name for ca in layout.cas}:
        raise InvalidInputError("unknown CA %r; kubeadm's are %s" % (ca_name, ", ".join(ca.name for ca in layout.cas)))
    ca_certificate = load_certificates(read_bytes(ca_cert_path, what="CA certificate"), source=ca_cert_path)[0]
    ca_key = load_private_key(read_bytes(ca_key_path, what="CA key"), source=ca_key_path)
    if not key_matches_certificate(ca_key, ca_certificate):
        raise InvalidInputError("%s does not belong to %s" % (ca_key_path, ca_cert_path), path=ca_key_path)
    usages = layout.extra["usages"]
    items, writes = [], []
    for files in request_files(layout, request_dir, names):
        if files.ca_name != ca_name or not os.path.exists(files.csr):
            continue
        request = x509.load_pem_x509_csr(read_bytes(files.csr, what="CSR"))
        if not request.is_signature_valid:
            raise InvalidInputError("%s: the CSR's signature is not valid" % files.csr, path=files.csr)
        if os.path.exists(files.cert):
            existing = load_certificates(read_bytes(files.cert), source=files.cert)[0]
            if same_key(existing, request.public_key()) and is_directly_issued_by(existing, ca_certificate):
                items.append({"name": files.name, "cert": files.cert, "state": "present"})
                continue
        flags = usages.get(files.name, ("client_auth",))
        certificate = sign_request(request, issuer_certificate=ca_certificate, issuer_key=ca_key,
                                   validity_days=validity_days, now=now or utcnow(), source=files.csr,
                                   server_auth="server_auth" in flags, client_auth="client_auth" in flags)
        writes.append((files.cert, dump_certificates([certificate]), PUBLIC_FILE_MODE))
        items.append({"name": files.name, "cert": files.cert, "state": "signed"})
    return StepPlan(items, writes)


def plan_install(layout, request_dir: str, *, names=None, remove_ca_keys: bool = False,
                 backup_root: str | None = None) -> StepPlan:
    """Check every signed certificate (its key from the request directory, the node's CA on disk signed it), then
    plan the writes; ``remove_ca_keys`` removes the key of every CA that signed one of them."""
    items, writes, signers, ca_certificates = [], [], set(), {}
    for files in request_files(layout, request_dir, names):
        if not names and not os.path.exists(files.live_cert) and not os.path.exists(files.csr):
            items.append({"name": files.name, "path": files.live_cert, "state": "missing"})  # not on this node
            continue
        if not os.path.exists(files.cert):
            raise InvalidInputError("%s is missing: sign %s first" % (files.cert, files.csr), path=files.cert)
        certificate = load_certificates(read_bytes(files.cert), source=files.cert)[0]
        key_pem = read_bytes(files.key, what="private key")
        if not key_matches_certificate(load_private_key(key_pem, source=files.key), certificate):
            raise InvalidInputError("%s does not match %s" % (files.cert, files.key), path=files.cert)
        ca_cert_path, _ca_key_path = layout.ca_paths(files.ca_name)
        if files.ca_name not in ca_certificates:  # read and parsed once per CA, not once per certificate
            ca_certificates[files.ca_name] = load_certificates(read_bytes(ca_cert_path, what="CA certificate"),
                                                               source=ca_cert_path)[0]
        ca_certificate = ca_certificates[files.ca_name]
        if not is_directly_issued_by(certificate, ca_certificate):
            raise InvalidInputError("%s was not signed by the %s CA of this node (%s, %s): sign it with that CA"
                                    % (files.cert, files.ca_name, ca_cert_path, fingerprint_sha256(ca_certificate)),
                                    path=files.cert)
        signers.add(files.ca_name)
        cert_pem = dump_certificates([certificate])
        if files.live_key is None:
            text = read_bytes(files.live_cert, what="kubeconfig").decode("utf-8")
            new_text = replace_user_data(replace_user_data(text, "client-certificate-data", b64(cert_pem), files.live_cert),
                                         "client-key-data", b64(key_pem), files.live_cert)
            pending = [(files.live_cert, new_text.encode("utf-8"), file_mode(files.live_cert) or PRIVATE_FILE_MODE)]
        else:
            pending = [(files.live_key, key_pem, PRIVATE_FILE_MODE), (files.live_cert, cert_pem, PUBLIC_FILE_MODE)]
        pending = [w for w in pending if not os.path.exists(w[0]) or read_bytes(w[0]) != w[1]]
        writes += pending
        items.append({"name": files.name, "path": files.live_cert, "state": "installed" if pending else "present"})
    removals = []
    if remove_ca_keys:
        removals = [key for key in (layout.ca_paths(name)[1] for name in sorted(signers)) if os.path.exists(key)]
        writes += _manifests_without_signing_key(layout, signers)
    return StepPlan(items, writes, removals, backup_root)


def _manifests_without_signing_key(layout, signers) -> list:
    """kubeadm writes the controller-manager's manifest without --cluster-signing-* in External CA mode (the flags name
    ca.key, and the controller-manager exits when that file is missing): the same for a cluster moved to it."""
    writes = []
    for pod, (ca_name, flags) in layout.extra["external_ca_dropped_flags"].items():
        path = os.path.join(layout.extra["manifests_dir"], pod + ".yaml")
        if ca_name not in signers or not os.path.exists(path):
            continue
        text = read_bytes(path, what="static pod manifest").decode("utf-8")
        pattern = re.compile(r"^[ \t]*- (%s)=.*\n" % "|".join(re.escape(flag) for flag in flags), re.MULTILINE)
        new_text = pattern.sub("", text)
        if new_text != text:
            writes.append((path, new_text.encode("utf-8"), file_mode(path) or PRIVATE_FILE_MODE))
    return writes


def apply_step(plan: StepPlan) -> list:
    """Back up what is replaced (when the plan has a backup root), write atomically, remove. Returns the copies.
    A removed CA key is not copied: external CA mode means the key is not on the node, backups included."""
    tree = backup_tree(plan.backup_root) if plan.backup_root else None
    copies = []
    if tree is not None:
        pending = [(tree.copy_of(path), read_bytes(path), PRIVATE_FILE_MODE) for path, _data, _mode in plan.writes
                   if os.path.exists(path)]
        write_backup(pending)
        copies = [copy[0] for copy in pending]
    for path, data, mode in plan.writes:
        ensure_dir(os.path.dirname(path))
        atomic_write(path, data, mode=mode)
    for path in plan.removals:
        os.remove(path)
    return copies


def step_report(plan: StepPlan) -> dict:
    return {"items": plan.items, "written": [w[0] for w in plan.writes], "removed": list(plan.removals)}
