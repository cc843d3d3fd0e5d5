# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# PRIVATE to the kubepki.certs collection.
"""A distribution's CA set (root → intermediate → cluster CAs + service key), planned then written.

``plan_ca_set`` reads what is on disk, decides what already satisfies the request, and builds every
new file in memory; nothing is written until ``apply_plan``. So bad input fails before any write.
"""

from __future__ import annotations

import datetime
import hashlib
import os
from dataclasses import dataclass, field

from ansible_collections.kubepki.certs.plugins.module_utils._pki import certs as certs_mod
from ansible_collections.kubepki.certs.plugins.module_utils._pki import files as files_mod
from ansible_collections.kubepki.certs.plugins.module_utils._pki import keys as keys_mod
from ansible_collections.kubepki.certs.plugins.module_utils._pki.chain import hash_ca
from ansible_collections.kubepki.certs.plugins.module_utils._pki.diffs import file_states_diff
from ansible_collections.kubepki.certs.plugins.module_utils._pki.errors import (
    ChainError,
    ExistingFileConflict,
    InvalidInputError,
)
from ansible_collections.kubepki.certs.plugins.module_utils._pki.issuing_ca import (
    existing_ca,
    load_supplied_ca,
    timestamp_cn,
    validate_issuing_ca,
)
from ansible_collections.kubepki.certs.plugins.module_utils._pki.layout import RANCHER_DISTRIBUTIONS, get_layout

DEFAULT_CA_KEY_TYPE = {"k3s": "ecdsa-p256", "rke2": "ecdsa-p256", "kubeadm": "rsa-2048"}
DEFAULT_CA_VALIDITY_DAYS = {"k3s": 3700, "rke2": 3700, "kubeadm": 3650}


@dataclass
class CASetRequest:
    """What the operator asked for. Paths of supplied CA material are read, never written."""

    path: str
    distribution: str
    root_cert: str | None = None
    root_key: str | None = None
    intermediate_cert: str | None = None
    intermediate_key: str | None = None
    root_key_type: str = "rsa-4096"
    intermediate_key_type: str = "rsa-4096"
    ca_key_type: str | None = None
    service_key_type: str = "rsa-2048"
    key_format: str = "traditional"
    root_validity_days: int = 7300
    intermediate_validity_days: int = 3700
    ca_validity_days: int | None = None
    constrain_path_length: bool = False
    cn_prefix: str | None = None
    force: bool = False


@dataclass
class PlannedFile:
    path: str
    content: bytes
    mode: int
    state: str  # "created" | "updated" | "unchanged"
    secret: bool = False


@dataclass
class CAState:
    """One CA of the set: its certificate, key (None when only the cert is known) and where it lives."""

    name: str
    certificate: object
    key: object
    cert_path: str
    key_path: str | None
    generated: bool
    chain: list = field(default_factory=list)  # issuers above it, nearest first
    upper_chain: list = field(default_factory=list)  # certificates above a supplied root (its own issuers)
    key_source: str | None = None  # a supplied key file whose bytes are copied as they are


@dataclass
class CASetPlan:
    request: CASetRequest
    files: list
    cas: dict
    root: CAState | None
    intermediate: CAState | None
    token_ca_hash: str | None
    discovery_hash: str | None
    warnings: list

    @property
    def changed(self) -> bool:
        return any(f.state != "unchanged" for f in self.files)


class _Planner:
    def __init__(self, request: CASetRequest, now: datetime.datetime) -> None:
        self.request = request
        self.now = now
        self.layout = get_layout(request.distribution)
        self.prefix = request.cn_prefix or self.layout.program
        self.files: list = []
        self.warnings: list = []

    # -- files -------------------------------------------------------------------------------
    def plan_file(self, relative: str, content: bytes, *, secret: bool) -> PlannedFile:
        path = os.path.join(self.request.path, relative)
        current = files_mod.read_if_exists(path)
        mode = files_mod.PRIVATE_FILE_MODE if secret else files_mod.PUBLIC_FILE_MODE
        if current == content:
            state = "unchanged"
        else:
            state = "created" if current is None else "updated"
        planned = PlannedFile(path=path, content=content, mode=mode, state=state, secret=secret)
        self.files.append(planned)
        return planned

    def key_bytes(self, key) -> bytes:
        return keys_mod.serialize_private_key(key, key_format=self.request.key_format)

    # -- CA decisions --------------------------------------------------------------------------
    def check_existing(self, name: str, certificate, key, issuer: CAState | None, cert_path: str):
        """Return True when an existing CA can be kept; raise when it conflicts and force is off."""
        problems = []
        if issuer is None:
            if not certs_mod.is_self_signed(certificate):
                problems.append("is not self-signed")
        elif not certs_mod.is_directly_issued_by(certificate, issuer.certificate):
            problems.append("was not issued by %s" % issuer.cert_path)
        if certs_mod.not_after(certificate) <= self.now:
            problems.append("expired on %s" % certs_mod.iso8601(certs_mod.not_after(certificate)))
        if not problems:
            days_left = (certs_mod.not_after(certificate) - self.now).days
            if days_left < 30:
                self.warnings.append("%s expires in %d days; rerun with force to replace it" % (cert_path, days_left))
            return True
        if self.request.force:
            return False
        raise ExistingFileConflict("%s already exists and %s; remove it or set force to replace %s"
                                   % (cert_path, " and ".join(problems), name), path=cert_path)

    def generate(self, *, name: str, stem: str, key_type: str, issuer: CAState | None, validity_days: int,
                 path_len: int | None, cert_path: str, key_path: str | None) -> CAState:
        key = keys_mod.generate_private_key(key_type)
        certificate = certs_mod.build_ca_certificate(
            subject_common_name=timestamp_cn(self.prefix, stem, self.now),
            subject_public_key=key.public_key(),
            issuer_certificate=issuer.certificate if issuer else None,
            issuer_key=issuer.key if issuer else key,
            validity_days=validity_days,
            path_len=path_len,
            now=self.now,
        )
        if issuer is not None and certs_mod.not_after(certificate) < self.now + datetime.timedelta(days=validity_days):
            self.warnings.append("%s: validity clamped to its issuer's notAfter %s"
                                 % (cert_path, certs_mod.iso8601(certs_mod.not_after(issuer.certificate))))
        chain = [issuer] + issuer.chain if issuer else []
        return CAState(name, certificate, key, cert_path, key_path, True, chain)

    def path_len(self, level: str) -> int | None:
        if not self.request.constrain_path_length:
            return None
        return {"root": 2, "intermediate": 1, "ca": 0}[level]


def _ca_report(state: CAState, now: datetime.datetime) -> dict:
    certificate = state.certificate
    return {
        "cert": state.cert_path,
        "key": state.key_path,
        "subject": certificate.subject.rfc4514_string(),
        "issuer": certificate.issuer.rfc4514_string(),
        "fingerprint_sha256": certs_mod.fingerprint_sha256(certificate),
        "not_before": certs_mod.iso8601(certs_mod.not_before(certificate)),
        "not_after": certs_mod.iso8601(certs_mod.not_after(certificate)),
        "days_left": (certs_mod.not_after(certificate) - now).days,
        "key_type": keys_mod.key_type_of(certificate.public_key()),
        "generated": state.generated,
    }


def _plan_root(planner: _Planner) -> CAState:
    request, layout = planner.request, planner.layout
    pem_name, key_name, _crt = layout.root_ca
    pem_path = os.path.join(request.path, pem_name)
    key_path = os.path.join(request.path, key_name)
    if request.root_cert:
        certificate, key, upper_chain = load_supplied_ca(request.root_cert, request.root_key, what="root")
        validate_issuing_ca(certificate, source=request.root_cert, levels_below=2, now=planner.now)
        existing, _existing_key = existing_ca(pem_path, None)
        if existing is not None and existing != certificate and not request.force:
            raise ExistingFileConflict("%s already holds a different root than %s; remove it or set force"
                                       % (pem_path, request.root_cert), path=pem_path)
        state = CAState("root", certificate, key, pem_path, request.root_key, False)
        state.upper_chain = upper_chain
        return state
    certificate, key = existing_ca(pem_path, key_path)
    if certificate is not None:
        validate_issuing_ca(certificate, source=pem_path, levels_below=2, now=planner.now)
    if certificate is not None and planner.check_existing("the root CA", certificate, key, None, pem_path):
        state = CAState("root", certificate, key, pem_path, key_path if key else None, False)
        state.upper_chain = []
        return state
    state = planner.generate(name="root", stem="root-ca", key_type=request.root_key_type, issuer=None,
                             validity_days=request.root_validity_days, path_len=planner.path_len("root"),
                             cert_path=pem_path, key_path=key_path)
    state.upper_chain = []
    return state


def _plan_intermediate(planner: _Planner, root: CAState) -> CAState:
    request, layout = planner.request, planner.layout
    if layout.intermediate_ca is None:  # kubeadm: a supplied intermediate is used where it is
        pem_path, key_path = request.intermediate_cert, request.intermediate_key
    else:
        pem_name, key_name, _crt = layout.intermediate_ca
        pem_path = os.path.join(request.path, pem_name)
        key_path = os.path.join(request.path, key_name)
    if request.intermediate_cert:
        if not request.intermediate_key:
            raise InvalidInputError("intermediate_cert %s was given without intermediate_key; the cluster CAs "
                                    "cannot be issued without the intermediate's private key"
                                    % request.intermediate_cert, path=request.intermediate_cert)
        certificate, key, _chain = load_supplied_ca(request.intermediate_cert, request.intermediate_key,
                                                    what="intermediate")
        validate_issuing_ca(certificate, source=request.intermediate_cert, levels_below=1, now=planner.now)
        if not certs_mod.is_directly_issued_by(certificate, root.certificate):
            raise ChainError("%s was not issued by the root %s; supply the intermediate of that root"
                             % (request.intermediate_cert, request.root_cert or root.cert_path),
                             path=request.intermediate_cert)
        return CAState("intermediate", certificate, key, pem_path, key_path, False, [root],
                       key_source=request.intermediate_key)
    certificate, key = existing_ca(pem_path, key_path)
    if certificate is not None:
        validate_issuing_ca(certificate, source=pem_path, levels_below=1, now=planner.now)
    if certificate is not None and planner.check_existing("the intermediate CA", certificate, key, root, pem_path):
        if key is None:
            raise InvalidInputError("%s exists but %s is missing; the cluster CAs cannot be issued without the "
                                    "intermediate's private key: restore it, or supply intermediate_cert and "
                                    "intermediate_key" % (pem_path, key_path), path=key_path)
        return CAState("intermediate", certificate, key, pem_path, key_path, False, [root])
    if root.key is None:
        source = request.root_cert or root.cert_path
        raise InvalidInputError("the intermediate CA must be created but the root's private key is missing: "
                                "supply root_key for %s (or supply intermediate_cert and intermediate_key)"
                                % source, path=source)
    return planner.generate(name="intermediate", stem="intermediate-ca", key_type=request.intermediate_key_type,
                            issuer=root, validity_days=request.intermediate_validity_days,
                            path_len=planner.path_len("intermediate"), cert_path=pem_path, key_path=key_path)


def _plan_cluster_ca(planner: _Planner, entry, issuer: CAState | None, *, pem_suffix: bool) -> CAState:
    """One cluster CA. k3s/RKE2 keep the CA alone in ``<ca>.pem`` and the bundle in ``<ca>.crt``."""
    request = planner.request
    cert_rel = entry.cert[:-len(".crt")] + ".pem" if pem_suffix else entry.cert
    cert_path = os.path.join(request.path, cert_rel)
    key_path = os.path.join(request.path, entry.key)
    certificate, key = existing_ca(cert_path, key_path)
    if certificate is not None and key is None and not request.force:
        raise ExistingFileConflict("%s exists but its key %s is missing; restore the key, or set force to "
                                   "replace this CA" % (cert_path, key_path), path=key_path)
    keep = certificate is not None and key is not None
    if keep and planner.check_existing(entry.name, certificate, key, issuer, cert_path):
        chain = [issuer] + issuer.chain if issuer else []
        return CAState(entry.name, certificate, key, cert_path, key_path, False, chain)
    if issuer is not None and issuer.key is None:
        raise InvalidInputError("%s must be created but the key of its issuer %s is missing"
                                % (cert_path, issuer.cert_path), path=issuer.cert_path)
    validity = request.ca_validity_days or DEFAULT_CA_VALIDITY_DAYS[request.distribution]
    key_type = request.ca_key_type or DEFAULT_CA_KEY_TYPE[request.distribution]
    if issuer is None and request.distribution == "kubeadm":
        # kubeadm's own names for its self-signed CAs.
        state = planner.generate(name=entry.name, stem=entry.cn_stem, key_type=key_type, issuer=None,
                                 validity_days=validity, path_len=planner.path_len("ca"),
                                 cert_path=cert_path, key_path=key_path)
        return state
    return planner.generate(name=entry.name, stem=entry.cn_stem, key_type=key_type, issuer=issuer,
                            validity_days=validity, path_len=planner.path_len("ca"),
                            cert_path=cert_path, key_path=key_path)


def _bundle(state: CAState, upper_chain) -> bytes:
    return certs_mod.dump_certificates([state.certificate] + [c.certificate for c in state.chain] + list(upper_chain))


def _plan_rancher(planner: _Planner) -> CASetPlan:
    request, layout = planner.request, planner.layout
    root = _plan_root(planner)
    intermediate = _plan_intermediate(planner, root)
    upper = root.upper_chain
    root_pem, root_key, root_crt = layout.root_ca
    inter_pem, inter_key, inter_crt = layout.intermediate_ca
    planner.plan_file(root_pem, certs_mod.dump_certificates([root.certificate]), secret=False)
    planner.plan_file(root_crt, certs_mod.dump_certificates([root.certificate] + list(upper)), secret=False)
    if root.generated:
        # A supplied root key is the operator's offline secret: used, never copied.
        planner.plan_file(root_key, planner.key_bytes(root.key), secret=True)
    planner.plan_file(inter_pem, certs_mod.dump_certificates([intermediate.certificate]), secret=False)
    planner.plan_file(inter_crt, _bundle(intermediate, upper), secret=False)
    planner.plan_file(inter_key, _existing_or_new_key_bytes(planner, intermediate), secret=True)
    cas = {}
    for entry in layout.cas:
        state = _plan_cluster_ca(planner, entry, intermediate, pem_suffix=True)
        cas[entry.name] = state
        planner.plan_file(entry.cert[:-len(".crt")] + ".pem", certs_mod.dump_certificates([state.certificate]),
                          secret=False)
        planner.plan_file(entry.cert, _bundle(state, upper), secret=False)
        planner.plan_file(entry.key, _existing_or_new_key_bytes(planner, state), secret=True)
    _plan_service_key(planner, layout.service_key, None)
    server_bundle = next(f.content for f in planner.files if f.path == os.path.join(request.path, "server-ca.crt"))
    return CASetPlan(request, planner.files, cas, root, intermediate, hash_ca(server_bundle, at=planner.now), None,
                     planner.warnings)


def _plan_kubeadm(planner: _Planner) -> CASetPlan:
    request, layout = planner.request, planner.layout
    issuer = None
    root = intermediate = None
    upper = []
    if request.root_cert:
        root = _plan_root_for_kubeadm(planner)
        upper = root.upper_chain
        issuer = root
        if request.intermediate_cert:
            intermediate = _plan_intermediate(planner, root)
            issuer = intermediate
        elif root.key is None:
            raise InvalidInputError("root_cert %s was given without root_key; supply the root's key, or an "
                                    "intermediate_cert with its key, to issue the kubeadm CAs"
                                    % request.root_cert, path=request.root_cert)
    cas = {}
    for entry in layout.cas:
        state = _plan_cluster_ca(planner, entry, issuer, pem_suffix=False)
        cas[entry.name] = state
        planner.plan_file(entry.cert, _bundle(state, upper), secret=False)
        planner.plan_file(entry.key, _existing_or_new_key_bytes(planner, state), secret=True)
    _plan_service_key(planner, layout.service_key, layout.service_pub)
    discovery = "sha256:" + hashlib.sha256(keys_mod.public_key_der(cas["ca"].certificate)).hexdigest()
    return CASetPlan(request, planner.files, cas, root, intermediate, None, discovery, planner.warnings)


def _plan_root_for_kubeadm(planner: _Planner) -> CAState:
    request = planner.request
    certificate, key, upper_chain = load_supplied_ca(request.root_cert, request.root_key, what="root")
    validate_issuing_ca(certificate, source=request.root_cert, levels_below=2 if request.intermediate_cert else 1,
                        now=planner.now)
    state = CAState("root", certificate, key, request.root_cert, request.root_key, False)
    state.upper_chain = upper_chain
    return state


def _existing_or_new_key_bytes(planner: _Planner, state: CAState) -> bytes:
    """Keep an existing key file byte for byte (its format is the operator's); serialise new keys."""
    source = state.key_source or state.key_path
    if not state.generated and source:
        current = files_mod.read_if_exists(source)
        if current is not None:
            return current
    return planner.key_bytes(state.key)


def _plan_service_key(planner: _Planner, key_name: str, pub_name: str | None) -> None:
    path = os.path.join(planner.request.path, key_name)
    current = files_mod.read_if_exists(path)
    if current is not None:
        keys = keys_mod.load_private_keys(current, source=path)  # validate; never regenerate
        planner.plan_file(key_name, current, secret=True)
        if pub_name:
            pub_path = os.path.join(planner.request.path, pub_name)
            if files_mod.read_if_exists(pub_path) is None:
                planner.plan_file(pub_name, keys_mod.serialize_public_key(keys[0]), secret=False)
        return
    key = keys_mod.generate_private_key(planner.request.service_key_type)
    planner.plan_file(key_name, planner.key_bytes(key), secret=True)
    if pub_name:
        planner.plan_file(pub_name, keys_mod.serialize_public_key(key), secret=False)


def plan_ca_set(request: CASetRequest, *, now: datetime.datetime | None = None) -> CASetPlan:
    """Decide every file of the CA set; raises an engine error (and writes nothing) on bad input."""
    if request.distribution not in RANCHER_DISTRIBUTIONS + ("kubeadm",):
        raise InvalidInputError("ca_chain supports k3s, rke2 and kubeadm, not %r" % request.distribution)
    if request.intermediate_cert and not request.root_cert and request.distribution in RANCHER_DISTRIBUTIONS:
        raise InvalidInputError("intermediate_cert needs root_cert (the root it was issued by)")
    if request.root_key and not request.root_cert:
        raise InvalidInputError("root_key %s was given without root_cert" % request.root_key, path=request.root_key)
    if request.intermediate_key and not request.intermediate_cert:
        raise InvalidInputError("intermediate_key %s was given without intermediate_cert" % request.intermediate_key,
                                path=request.intermediate_key)
    ancestor = request.path
    while not os.path.lexists(ancestor) and os.path.dirname(ancestor) != ancestor:
        ancestor = os.path.dirname(ancestor)
    if not os.path.isdir(ancestor):
        raise InvalidInputError("path %s: %s is not a directory" % (request.path, ancestor), path=request.path)
    # Whole seconds: certificates carry no fractions, so comparisons against them stay exact.
    planner = _Planner(request, (now or certs_mod.utcnow()).replace(microsecond=0))
    if request.distribution in RANCHER_DISTRIBUTIONS:
        return _plan_rancher(planner)
    return _plan_kubeadm(planner)


def apply_plan(plan: CASetPlan) -> None:
    """Write the files that change: directories 0700, keys 0600, each file atomically."""
    pending = [f for f in plan.files if f.state != "unchanged"]
    if not pending:
        return
    files_mod.check_writable_dir(plan.request.path)
    for planned in pending:
        files_mod.ensure_dir(os.path.dirname(planned.path), mode=files_mod.PRIVATE_DIR_MODE)
    # Keys before certificates: a reader never finds a certificate whose key is not there yet.
    for planned in sorted(pending, key=lambda f: (not f.secret, f.path)):
        files_mod.atomic_write(planned.path, planned.content, mode=planned.mode)


def plan_report(plan: CASetPlan) -> dict:
    """Plain data for the module's result: never key material."""
    now = certs_mod.utcnow()
    result = {
        "path": plan.request.path,
        "distribution": plan.request.distribution,
        "files": [{"path": f.path, "state": f.state, "mode": "%04o" % f.mode} for f in plan.files],
        "cas": {name: _ca_report(state, now) for name, state in plan.cas.items()},
        "root": _ca_report(plan.root, now) if plan.root else None,
        "intermediate": _ca_report(plan.intermediate, now) if plan.intermediate else None,
        "token_ca_hash": plan.token_ca_hash,
        "discovery_token_ca_cert_hash": plan.discovery_hash,
    }
    return result


def plan_diff(plan: CASetPlan) -> dict:
    """The Ansible diff: each file created or updated under the tls directory, never its content."""
    return file_states_diff(plan.request.path, ((f.path, f.state) for f in plan.files))
