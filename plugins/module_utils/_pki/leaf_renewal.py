# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# PRIVATE to the kubepki.certs collection.
"""Renew kubeadm leaf certificates and kubeconfig client credentials from the CA on disk, the way
``kubeadm certs renew`` does: the same CN, O, DNS and IP SANs and extended key usages, a new key, a new validity.

plan → apply → report → diff. Every check (CA key present and matching, the CA signed the current certificate, the
current key matches, the kubeconfig embeds its credentials) runs while planning, so a bad input fails before any
write. Apply backs up every file it replaces into a backup tree (``trees.BackupTree``) and writes atomically.
"""

from __future__ import annotations

import base64
import datetime
import os
import re
from dataclasses import dataclass, field

from ansible_collections.kubepki.certs.plugins.module_utils._pki.certs import (
    build_leaf_certificate,
    dump_certificates,
    extended_key_usages,
    iso8601,
    is_directly_issued_by,
    load_certificates,
    not_after,
    utcnow,
)
from ansible_collections.kubepki.certs.plugins.module_utils._pki.deps import x509
from ansible_collections.kubepki.certs.plugins.module_utils._pki.diffs import Change, summary_diff
from ansible_collections.kubepki.certs.plugins.module_utils._pki.errors import InvalidInputError
from ansible_collections.kubepki.certs.plugins.module_utils._pki.files import (
    PRIVATE_FILE_MODE,
    PUBLIC_FILE_MODE,
    atomic_write,
    file_mode,
    read_bytes,
    write_backup,
)
from ansible_collections.kubepki.certs.plugins.module_utils._pki.keys import (
    generate_private_key,
    key_matches_certificate,
    key_type_of,
    load_private_key,
    serialize_private_key,
)
from ansible_collections.kubepki.certs.plugins.module_utils._pki.kubeconfig import decode_embedded
from ansible_collections.kubepki.certs.plugins.module_utils._pki.kubeconfig_copies import REFRESH, plan_copy_refresh, single_user
from ansible_collections.kubepki.certs.plugins.module_utils._pki.trees import backup_tree

RENEW, KEEP, MISSING, EXTERNAL = "renew", "keep", "missing", "external"
_EKU_FLAGS = {"1.3.6.1.5.5.7.3.1": "server_auth", "1.3.6.1.5.5.7.3.2": "client_auth"}  # the two kubeadm issues


@dataclass(frozen=True)
class Target:
    """One renewable entry: a certificate file with its key, or a kubeconfig's embedded client credential."""

    name: str
    ca_name: str
    cert_path: str
    key_path: str | None  # None: the kubeconfig at cert_path embeds both
    restarts: tuple

    @property
    def in_kubeconfig(self) -> bool:
        return self.key_path is None


@dataclass
class Renewal:
    target: Target
    status: str
    reason: str = ""
    old_not_after: str | None = None
    new_not_after: str | None = None
    writes: list = field(default_factory=list, repr=False)  # (path, bytes, mode)


@dataclass
class RenewalPlan:
    renewals: list
    backup_root: str | None
    copies: list = field(default_factory=list)  # kubeconfig_copies.CopyRefresh of admin.conf's copies

    @property
    def changed(self) -> bool:
        return any(r.status == RENEW for r in self.renewals) or any(c.status == REFRESH for c in self.copies)


def kubeadm_targets(layout) -> list:
    """Every certificate kubeadm renews on a node, from the layout table (names, files, CA, static pods to restart)."""
    restarts = layout.extra["restarts"]
    targets = [Target(leaf.name, leaf.ca, os.path.join(layout.tls_dir, leaf.cert), os.path.join(layout.tls_dir, leaf.key),
                      tuple(restarts.get(leaf.name, ()))) for leaf in layout.leaves]
    targets += [Target(name, "ca", os.path.join(layout.data_dir, name), None, tuple(restarts.get(name, ())))
                for name in layout.extra["renewable_kubeconfigs"]]
    return targets


def _ca_pair(layout, ca_name: str):
    """The CA's certificate and key, or None when the key is absent (an externally managed CA)."""
    cert_path, key_path = layout.ca_paths(ca_name)
    certificate = load_certificates(read_bytes(cert_path, what="CA certificate"), source=cert_path)[0]
    if not os.path.exists(key_path):
        return certificate, None, key_path
    key = load_private_key(read_bytes(key_path, what="CA key"), source=key_path)
    if not key_matches_certificate(key, certificate):
        raise InvalidInputError("%s does not belong to %s; restore the CA's own key before renewing" % (key_path, cert_path),
                                path=key_path)
    return certificate, key, key_path


def kubeconfig_certificate(path: str, text: str) -> tuple:
    """(certificate, file path or None) of a kubeconfig's single user: embedded, or in a PEM file holding both
    (kubelet-client-current.pem); (None, None) for a user without a client certificate. The key is not parsed (an RSA
    key's load checks it, which costs more than the rest of a kubeconfig)."""
    user = single_user(text, path)
    if user.get("client-certificate-data"):
        return load_certificates(decode_embedded(user["client-certificate-data"], source=path), source=path)[0], None
    if user.get("client-certificate"):
        file_path = os.path.realpath(os.path.join(os.path.dirname(path), user["client-certificate"]))
        return load_certificates(read_bytes(file_path, what="client certificate"), source=file_path)[0], file_path
    return None, None


def kubeconfig_credential(path: str, text: str) -> tuple:
    """(certificate, key, file path or None) of a kubeconfig's single user, as kubeconfig_certificate finds it;
    (None, None, None) for a user without a client certificate."""
    certificate, file_path = kubeconfig_certificate(path, text)
    if certificate is None:
        return None, None, None
    if file_path is None:
        return certificate, load_private_key(decode_embedded(single_user(text, path)["client-key-data"], source=path),
                                             source=path), None
    return certificate, load_private_key(read_bytes(file_path, what="client certificate"), source=file_path), file_path


def current_credentials(target: Target):
    """(certificate, key, kubeconfig text or None) as on disk now."""
    if target.in_kubeconfig:
        text = read_bytes(target.cert_path, what="kubeconfig").decode("utf-8")
        certificate, key, file_path = kubeconfig_credential(target.cert_path, text)
        if certificate is None or file_path is not None:
            raise InvalidInputError("%s holds no embedded client certificate to renew" % target.cert_path, path=target.cert_path)
        return certificate, key, text
    certificate = load_certificates(read_bytes(target.cert_path, what="certificate"), source=target.cert_path)[0]
    key = load_private_key(read_bytes(target.key_path, what="private key"), source=target.key_path)
    return certificate, key, None


def kubeadm_profile(certificate, path: str) -> dict:
    """What kubeadm keeps from the current certificate: CN, O, SANs, extended key usages."""
    subject = certificate.subject
    common_names = subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    if len(common_names) != 1:
        raise InvalidInputError("%s has no single common name; not a kubeadm certificate" % path, path=path)
    flags = {}
    for usage in extended_key_usages(certificate) or []:
        if usage not in _EKU_FLAGS:
            raise InvalidInputError("%s carries the extended key usage %r, which kubeadm never issues" % (path, usage),
                                    path=path)
        flags[_EKU_FLAGS[usage]] = True
    try:
        sans = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns_names, ips = sans.get_values_for_type(x509.DNSName), sans.get_values_for_type(x509.IPAddress)
    except x509.ExtensionNotFound:
        dns_names, ips = [], []
    return {"subject_common_name": common_names[0].value,
            "organizations": [a.value for a in subject.get_attributes_for_oid(x509.NameOID.ORGANIZATION_NAME)],
            "dns_names": dns_names, "ip_addresses": [str(ip) for ip in ips],
            "server_auth": flags.get("server_auth", False), "client_auth": flags.get("client_auth", False)}


def replace_user_data(text: str, key: str, value: str, path: str) -> str:
    """Swap one ``<key>: <base64>`` value in place, every other byte kept (kubeadm writes one user)."""
    pattern = re.compile(r"^(\s*%s:[ \t]*)\S+[ \t]*$" % re.escape(key), re.MULTILINE)
    new_text, count = pattern.subn(lambda match: match.group(1) + value, text)
    if count != 1:
        raise InvalidInputError("%s: %s is not a single plain value on its own line" % (path, key), path=path)
    return new_text


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _plan_one(layout, target: Target, *, due, key_type, validity_days, now, cas) -> Renewal:
    if not os.path.exists(target.cert_path):
        return Renewal(target, MISSING, "%s does not exist" % target.cert_path)
    if target.ca_name not in cas:
        cas[target.ca_name] = _ca_pair(layout, target.ca_name)
    ca_certificate, ca_key, ca_key_path = cas[target.ca_name]
    if ca_key is None:
        return Renewal(target, EXTERNAL, "the %s CA is externally managed (%s is absent)" % (target.ca_name, ca_key_path))
    certificate, key, text = current_credentials(target)
    old_end = iso8601(not_after(certificate))
    if not is_directly_issued_by(certificate, ca_certificate):
        raise InvalidInputError("%s was not issued by the %s CA on disk (%s); renewing would change its issuer: "
                                "check which CA the cluster trusts first"
                                % (target.cert_path, target.ca_name, layout.tls_dir), path=target.cert_path)
    if not key_matches_certificate(key, certificate):
        raise InvalidInputError("%s: the private key does not match the certificate" % (target.key_path or target.cert_path),
                                path=target.key_path or target.cert_path)
    if not due(certificate):
        return Renewal(target, KEEP, "expires %s, not due" % old_end, old_end)
    new_key = generate_private_key(key_type or key_type_of(key))
    new_certificate = build_leaf_certificate(subject_public_key=new_key.public_key(), issuer_certificate=ca_certificate,
                                             issuer_key=ca_key, validity_days=validity_days, now=now,
                                             **kubeadm_profile(certificate, target.cert_path))
    cert_pem, key_pem = dump_certificates([new_certificate]), serialize_private_key(new_key)
    if target.in_kubeconfig:
        new_text = replace_user_data(text, "client-certificate-data", b64(cert_pem), target.cert_path)
        new_text = replace_user_data(new_text, "client-key-data", b64(key_pem), target.cert_path)
        writes = [(target.cert_path, new_text.encode("utf-8"), file_mode(target.cert_path) or PRIVATE_FILE_MODE)]
    else:
        writes = [(target.key_path, key_pem, PRIVATE_FILE_MODE),
                  (target.cert_path, cert_pem, file_mode(target.cert_path) or PUBLIC_FILE_MODE)]
    return Renewal(target, RENEW, "renewed", old_end, iso8601(not_after(new_certificate)), writes)


def plan_renewals(layout, *, names=None, threshold_days: int | None = None, force: bool = False,
                  key_type: str | None = None, validity_days: int = 365, backup_root: str | None = None,
                  now: datetime.datetime | None = None, admin_copies=()) -> RenewalPlan:
    """Plan the renewal of ``names`` (default: every certificate kubeadm renews). Due: ``force``, or fewer than
    ``threshold_days`` left. A named entry that is missing or under an externally managed CA fails; unnamed ones are
    skipped and reported. ``key_type`` None keeps each key's type. ``admin_copies``: kubeconfigs made from admin.conf
    that get its credential as it will be (renewed or not) when they hold an older one of the same identity."""
    if layout.distribution != "kubeadm":
        raise InvalidInputError("leaf renewal knows the kubeadm layout only, not %s" % layout.distribution)
    if not os.path.isdir(layout.tls_dir) or not any(os.path.exists(os.path.join(layout.tls_dir, ca.cert))
                                                    for ca in layout.cas):
        raise InvalidInputError("%s is not a kubeadm certificates directory (no ca.crt, front-proxy-ca.crt or "
                                "etcd/ca.crt); set data_dir to the directory holding pki/" % layout.tls_dir,
                                path=layout.tls_dir)
    moment = (now or utcnow()).astimezone(datetime.timezone.utc)
    targets = kubeadm_targets(layout)
    known = [t.name for t in targets]
    unknown = sorted(set(names or ()) - set(known))
    if unknown:
        raise InvalidInputError("unknown certificate name(s) %s; kubeadm's are %s" % (", ".join(unknown), ", ".join(known)))
    if names:
        targets = [t for t in targets if t.name in set(names)]
    if not force and threshold_days is None:
        raise InvalidInputError("say which certificates are due: threshold_days, or force to renew them all")

    def due(certificate) -> bool:
        return force or not_after(certificate) - moment < datetime.timedelta(days=threshold_days)

    cas = {}
    renewals = [_plan_one(layout, t, due=due, key_type=key_type, validity_days=validity_days, now=moment, cas=cas)
                for t in targets]
    if names:
        refused = [r for r in renewals if r.status in (MISSING, EXTERNAL)]
        if refused:
            raise InvalidInputError("cannot renew %s" % "; ".join("%s: %s" % (r.target.name, r.reason) for r in refused))
    return RenewalPlan(renewals, backup_root, _plan_admin_copies(layout, renewals, admin_copies))


def _plan_admin_copies(layout, renewals: list, admin_copies) -> list:
    if not admin_copies:
        return []
    admin_path = os.path.join(layout.data_dir, layout.extra["admin_kubeconfig"])
    renewed = [w[1] for r in renewals if r.status == RENEW and r.target.cert_path == admin_path for w in r.writes]
    if not renewed and not os.path.exists(admin_path):
        raise InvalidInputError("%s does not exist: there is no credential to put into %s" % (admin_path, ", ".join(admin_copies)),
                                path=admin_path)
    source_text = (renewed[0] if renewed else read_bytes(admin_path, what="kubeconfig")).decode("utf-8")
    return [plan_copy_refresh(admin_path, source_text, path) for path in admin_copies]


def apply_renewals(plan: RenewalPlan) -> list:
    """Back up, then write, every renewal; returns the backup copies. Key before certificate, each atomically."""
    tree = backup_tree(plan.backup_root) if plan.backup_root else None
    copies = []
    for renewal in plan.renewals:
        if renewal.status != RENEW:
            continue
        if tree is not None:
            pending = [(tree.copy_of(write[0]), read_bytes(write[0]), PRIVATE_FILE_MODE) for write in renewal.writes]
            write_backup(pending)
            copies += [copy[0] for copy in pending]
        for path, data, mode in renewal.writes:
            atomic_write(path, data, mode=mode)
    for refresh in plan.copies:
        for path, data, mode in refresh.writes:
            if tree is not None:
                write_backup([(tree.copy_of(path), read_bytes(path), PRIVATE_FILE_MODE)])
                copies.append(tree.copy_of(path))
            atomic_write(path, data, mode=mode)
    return copies


def plan_report(plan: RenewalPlan) -> dict:
    """Plain data for the module result (no key material): per entry, and the static pods to restart."""
    entries = [{"name": r.target.name, "path": r.target.cert_path, "status": r.status, "reason": r.reason,
                "old_not_after": r.old_not_after, "new_not_after": r.new_not_after} for r in plan.renewals]
    restarts = sorted({pod for r in plan.renewals if r.status == RENEW for pod in r.target.restarts})
    return {"entries": entries, "renewed": [r.target.name for r in plan.renewals if r.status == RENEW],
            "not_renewable": [r.target.name for r in plan.renewals if r.status in (MISSING, EXTERNAL)],
            "restart": restarts,
            "admin_conf_copies": [{"path": c.path, "status": c.status, "reason": c.reason} for c in plan.copies]}


def plan_diff(plan: RenewalPlan) -> dict:
    """Per renewed entry, the expiry before and after (the files' paths name them)."""
    changes = [Change("%s (%s)" % (r.target.name, r.target.cert_path), "expires %s" % r.old_not_after,
                      "expires %s" % r.new_not_after) for r in plan.renewals if r.status == RENEW]
    changes += [Change(c.path, "an older admin.conf credential", "admin.conf's credential") for c in plan.copies
                if c.status == REFRESH]
    return summary_diff("kubeadm certificates", changes)
