# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# PRIVATE to the kubepki.certs collection.
"""The rotation set for ``<k3s|rke2> certificate rotate-ca --path <staging>``, planned then written.

Modes:
  cross_sign  per CA a new self-signed root, the same root key cross-signed by the current CA, and a new
              cluster CA (intermediate) issued by the new root. Bundle: new CA, new root, cross-signed
              root, then the current chain. Old clients reach the new CA through the cross-signed root.
  renew       new cluster CAs under the existing intermediate (or a new intermediate under the existing
              root when its key is given): same root, so the join-token hash does not change.
  new_root    a fresh hierarchy: disruptive, k3s accepts it only with --force.

Nothing here touches the live tls directory: it is read, and the staging directory is written.
"""

from __future__ import annotations

import datetime
import hashlib
import os
from dataclasses import dataclass, field

from ansible_collections.kubepki.certs.plugins.module_utils._pki import certs as certs_mod
from ansible_collections.kubepki.certs.plugins.module_utils._pki import files as files_mod
from ansible_collections.kubepki.certs.plugins.module_utils._pki import keys as keys_mod
from ansible_collections.kubepki.certs.plugins.module_utils._pki.ca_set import CASetRequest, plan_ca_set
from ansible_collections.kubepki.certs.plugins.module_utils._pki.chain import build_chains, hash_ca
from ansible_collections.kubepki.certs.plugins.module_utils._pki.diffs import file_states_diff
from ansible_collections.kubepki.certs.plugins.module_utils._pki.errors import (
    ChainError,
    InvalidInputError,
    KeyMismatchError,
)
from ansible_collections.kubepki.certs.plugins.module_utils._pki.issuing_ca import timestamp_cn, validate_issuing_ca
from ansible_collections.kubepki.certs.plugins.module_utils._pki.layout import RANCHER_DISTRIBUTIONS, get_layout
from ansible_collections.kubepki.certs.plugins.module_utils._pki.pem import blocks_with_labels
from ansible_collections.kubepki.certs.plugins.module_utils._pki.service_keys import (
    ServiceKeyRequest,
    plan_service_key_rotation,
)
from ansible_collections.kubepki.certs.plugins.module_utils._pki.trees import (
    StagingTree,
    backup_tree,
    check_staging_tree,
    staging_tree,
    staging_tree_of_data_dir,
)

MODES = ("cross_sign", "renew", "new_root")
# cross_sign bundle order after the new CA: upstream's (new self-signed root, then its cross-signed twin), or the
# twin first, which OpenSSL-based clients holding only the current CA can follow (OpenSSL takes the first issuer
# candidate of the presented chain and does not backtrack; Go tries every candidate).
BUNDLE_ORDERS = ("upstream", "cross_signed_first")
SERVICE_KEY_ACTIONS = ("rotate", "keep")


@dataclass
class RotationRequest:
    current_path: str
    staging_path: str | None      # the rotate-ca --path, named directly; or
    distribution: str
    staging_dir: str | None = None  # the staging tree's root (trees.py spells the rest)
    backup_dir: str | None = None   # reported as the backup tree <backup_dir>/<rotation id>
    rotation_id: str | None = None  # names the backup tree instead of the id derived from the new server CA
    mode: str = "cross_sign"
    service_key: str = "rotate"
    service_key_keep: int | None = None
    root_cert: str | None = None
    root_key: str | None = None
    intermediate_cert: str | None = None
    intermediate_key: str | None = None
    root_key_type: str = "ecdsa-p256"
    ca_key_type: str = "ecdsa-p256"
    root_validity_days: int = 7300
    ca_validity_days: int = 3650
    key_format: str = "traditional"
    cn_prefix: str | None = None
    bundle_order: str = "upstream"


@dataclass
class StagedFile:
    relative: str
    content: bytes
    mode: int
    state: str


@dataclass
class CARotation:
    name: str
    action: str          # cross_sign | renew | new_root | unchanged
    current: object      # current first certificate
    new: object          # new first certificate
    bundle: bytes


@dataclass
class RotationPlan:
    request: RotationRequest
    staging_tls: str
    files: list
    cas: list
    token_hash_before: str
    token_hash_after: str
    already_loaded: bool
    server_bundle: bytes = b""            # the server-ca.crt every server serves once it runs on this set
    warnings: list = field(default_factory=list)
    tree: StagingTree | None = None

    @property
    def staging(self) -> StagingTree:
        return self.tree or request_tree(self.request)

    @property
    def changed(self) -> bool:
        return any(f.state != "unchanged" for f in self.files)

    @property
    def disruptive(self) -> bool:
        """The set breaks trust for holders of the current CAs; rotate-ca loads it only with --force."""
        return self.request.mode in ("new_root", "restore")


def request_tree(request: RotationRequest) -> StagingTree:
    """The staging tree of a request: its ``staging_dir``, else the tree around its rotate-ca ``staging_path``."""
    if bool(request.staging_dir) == bool(request.staging_path):
        raise InvalidInputError("give exactly one of staging_dir (the staging tree) and staging_path (rotate-ca's --path)")
    return staging_tree(request.staging_dir) if request.staging_dir else staging_tree_of_data_dir(request.staging_path)


def _read_current_ca(current_path: str, entry):
    cert_path = os.path.join(current_path, entry.cert)
    key_path = os.path.join(current_path, entry.key)
    bundle_bytes = files_mod.read_bytes(cert_path, what="current %s bundle" % entry.name)
    bundle = certs_mod.load_certificates(bundle_bytes, source=cert_path)
    key_data = files_mod.read_bytes(key_path, what="current %s key" % entry.name)
    key = keys_mod.load_private_key(key_data, source=key_path)
    if not keys_mod.key_matches_certificate(key, bundle[0]):
        raise KeyMismatchError("%s does not match the first certificate of %s; the live CA files disagree"
                               % (key_path, cert_path), path=key_path)
    return bundle, bundle_bytes, key


def _cross_sign(entry, bundle, current_key, request: RotationRequest, prefix: str, now):
    current_ca = bundle[0]
    # The new path is new CA -> cross-signed root -> current CA -> its issuers: every current CA in the
    # chain must allow that many CA certificates below it (the leaf does not count).
    for depth, certificate in enumerate(bundle):
        limit = certs_mod.path_length(certificate)
        if certs_mod.is_ca(certificate) and limit is not None and limit < 2 + depth:
            raise ChainError("%s: %s has pathlen %d, but a cross-signed rotation puts %d CA certificates below it, "
                             "so the new CA would not verify; use mode renew (custom CA) or new_root"
                             % (entry.name, certificate.subject.rfc4514_string(), limit, 2 + depth))
    root_key = keys_mod.generate_private_key(request.root_key_type)
    stem = entry.cn_stem[:-len("-ca")] if entry.cn_stem.endswith("-ca") else entry.cn_stem
    root_cn = timestamp_cn(prefix, stem + "-root", now)
    self_signed = certs_mod.build_ca_certificate(subject_common_name=root_cn, subject_public_key=root_key.public_key(),
                                                 issuer_certificate=None, issuer_key=root_key,
                                                 validity_days=request.root_validity_days, now=now)
    # Same subject and key, issued by the current CA: the bridge old clients follow to the new CA.
    cross_signed = certs_mod.build_ca_certificate(subject_common_name=root_cn,
                                                  subject_public_key=root_key.public_key(),
                                                  issuer_certificate=current_ca, issuer_key=current_key,
                                                  validity_days=request.root_validity_days, now=now)
    ca_key = keys_mod.generate_private_key(request.ca_key_type)
    new_ca = certs_mod.build_ca_certificate(subject_common_name=timestamp_cn(prefix, entry.cn_stem, now),
                                            subject_public_key=ca_key.public_key(), issuer_certificate=self_signed,
                                            issuer_key=root_key, validity_days=request.ca_validity_days, now=now)
    roots = [cross_signed, self_signed] if request.bundle_order == "cross_signed_first" else [self_signed, cross_signed]
    certificates = [new_ca] + roots + list(bundle)
    key_bytes = (keys_mod.serialize_private_key(ca_key, key_format=request.key_format)
                 + keys_mod.serialize_private_key(root_key, key_format=request.key_format))
    return new_ca, certs_mod.dump_certificates(certificates), key_bytes


def _staged_intermediate(staging_tls: str, layout, root, now):
    """An intermediate staged by an earlier run under ``root`` that is still good: (cert, key) or None.

    Reusing it makes a renew with a new intermediate idempotent (the cluster CAs staged under it are kept too)."""
    cert_data = files_mod.read_if_exists(os.path.join(staging_tls, layout.intermediate_ca[0]))
    key_data = files_mod.read_if_exists(os.path.join(staging_tls, layout.intermediate_ca[1]))
    if cert_data is None or key_data is None:
        return None
    try:
        cert = certs_mod.load_certificates(cert_data, source="staged intermediate")[0]
        key = keys_mod.load_private_key(key_data, source="staged intermediate key")
    except InvalidInputError:
        return None
    if not keys_mod.key_matches_certificate(key, cert) or certs_mod.not_after(cert) <= now:
        return None
    if not build_chains(cert, roots=[root], at=now, usage=None):
        return None
    return cert, key


def _renew_issuer(request: RotationRequest, layout, now, staging_tls: str = ""):
    """The intermediate (cert, key, chain above it, newly staged?) that issues renewed cluster CAs."""
    inter_cert_path = request.intermediate_cert or os.path.join(request.current_path, layout.intermediate_ca[0])
    inter_key_path = request.intermediate_key or os.path.join(request.current_path, layout.intermediate_ca[1])
    if request.root_cert and request.root_key and not request.intermediate_cert:
        # A new intermediate under the existing root.
        root = certs_mod.load_certificates(files_mod.read_bytes(request.root_cert, what="root certificate"),
                                           source=request.root_cert)[0]
        root_key = keys_mod.load_private_key(files_mod.read_bytes(request.root_key, what="root key"), source=request.root_key)
        if not keys_mod.key_matches_certificate(root_key, root):
            raise KeyMismatchError("%s does not match %s" % (request.root_key, request.root_cert), path=request.root_key)
        validate_issuing_ca(root, source=request.root_cert, levels_below=2, now=now)
        reused = _staged_intermediate(staging_tls, layout, root, now) if staging_tls else None
        if reused is not None:
            return reused[0], reused[1], [root], True
        inter_key = keys_mod.generate_private_key(request.ca_key_type)
        prefix = request.cn_prefix or layout.program
        inter = certs_mod.build_ca_certificate(subject_common_name=timestamp_cn(prefix, "intermediate-ca", now),
                                               subject_public_key=inter_key.public_key(), issuer_certificate=root,
                                               issuer_key=root_key, validity_days=request.ca_validity_days, now=now)
        return inter, inter_key, [root], True
    inter_data = files_mod.read_if_exists(inter_cert_path)
    if inter_data is None:
        raise InvalidInputError("mode renew needs the intermediate CA: %s does not exist; supply intermediate_cert and "
                                "intermediate_key (or root_cert and root_key for a new intermediate)" % inter_cert_path,
                                path=inter_cert_path)
    chain = certs_mod.load_certificates(inter_data, source=inter_cert_path)
    key_data = files_mod.read_if_exists(inter_key_path)
    if key_data is None:
        raise InvalidInputError("mode renew needs the intermediate's private key: %s does not exist" % inter_key_path,
                                path=inter_key_path)
    inter_key = keys_mod.load_private_key(key_data, source=inter_key_path)
    if not keys_mod.key_matches_certificate(inter_key, chain[0]):
        raise KeyMismatchError("%s does not match the first certificate of %s; supply the matching key"
                               % (inter_key_path, inter_cert_path), path=inter_key_path)
    validate_issuing_ca(chain[0], source=inter_cert_path, levels_below=1, now=now)
    above = chain[1:]
    if not above:
        root_path = request.root_cert or os.path.join(request.current_path, layout.root_ca[0])
        root_data = files_mod.read_if_exists(root_path)
        if root_data is not None:
            above = certs_mod.load_certificates(root_data, source=root_path)
    return chain[0], inter_key, above, False


def _renew(entry, bundle, issuer, request: RotationRequest, prefix: str, now):
    inter, inter_key, above, _new = issuer
    current_chain_tail = bundle[1:]
    ca_key = keys_mod.generate_private_key(request.ca_key_type)
    new_ca = certs_mod.build_ca_certificate(subject_common_name=timestamp_cn(prefix, entry.cn_stem, now),
                                            subject_public_key=ca_key.public_key(), issuer_certificate=inter,
                                            issuer_key=inter_key, validity_days=request.ca_validity_days, now=now)
    tail = [inter] + list(above) if above else [inter] + list(current_chain_tail[1:])
    return new_ca, certs_mod.dump_certificates([new_ca] + tail), keys_mod.serialize_private_key(
        ca_key, key_format=request.key_format)


def _staged_set_satisfies(staged_bundle: bytes | None, staged_key: bytes | None, bundle, mode: str, now,
                          expected_tail=None, bundle_order: str = "upstream") -> bool:
    """Compare, then act: an earlier run's staged CA is kept when it still does the job."""
    if staged_bundle is None or staged_key is None:
        return False
    try:
        certificates = certs_mod.load_certificates(staged_bundle, source="staged bundle")
        key = keys_mod.load_private_key(staged_key, source="staged key")
    except InvalidInputError:
        return False
    if len(certificates) < 2 or not keys_mod.key_matches_certificate(key, certificates[0]):
        return False
    if certs_mod.not_after(certificates[0]) <= now:
        return False
    if certificates[0] == bundle[0]:
        return False
    roots = [c for c in bundle if certs_mod.looks_like_root(c)] or [bundle[-1]]
    staged_intermediates = [c for c in certificates[1:] if certs_mod.authority_key_id(c) is not None]
    intermediates = [c for c in bundle if c not in roots] + staged_intermediates
    if not build_chains(certificates[0], roots=roots, intermediates=intermediates, at=now, usage=None):
        return False
    if mode == "cross_sign":
        # new CA, new root and its cross-signed twin (in the requested order), then exactly the current chain
        if len(certificates) != len(bundle) + 3 or certificates[-len(bundle):] != list(bundle):
            return False
        second_is_self_signed = certificates[1].issuer == certificates[1].subject
        return second_is_self_signed == (bundle_order != "cross_signed_first")
    # renew: the new CA followed by exactly the issuing intermediate and what is above it
    return expected_tail is not None and certificates[1:] == list(expected_tail)


def plan_rotation(request: RotationRequest, *, now: datetime.datetime | None = None) -> RotationPlan:
    """Decide the staging set; raises an engine error before writing anything on bad input."""
    if request.distribution not in RANCHER_DISTRIBUTIONS:
        raise InvalidInputError("ca_rotation supports k3s and rke2, not %r" % request.distribution)
    if request.mode not in MODES:
        raise InvalidInputError("unknown mode %r; use one of %s" % (request.mode, ", ".join(MODES)))
    if request.bundle_order not in BUNDLE_ORDERS:
        raise InvalidInputError("bundle_order must be one of %s" % ", ".join(BUNDLE_ORDERS))
    if request.service_key not in SERVICE_KEY_ACTIONS:
        raise InvalidInputError("service_key must be one of %s" % ", ".join(SERVICE_KEY_ACTIONS))
    now = (now or certs_mod.utcnow()).replace(microsecond=0)
    layout = get_layout(request.distribution)
    tree = request_tree(request)
    staging_tls = check_staging_tree(request.current_path, tree)
    prefix = request.cn_prefix or layout.program
    current = {entry.name: _read_current_ca(request.current_path, entry) for entry in layout.cas}
    token_before = hash_ca(current["server-ca"][1], at=now)

    # Already loaded: the live set is the one staged earlier (rotate-ca ran and the servers restarted).
    staged_server = files_mod.read_if_exists(os.path.join(staging_tls, "server-ca.crt"))
    already_loaded = staged_server is not None and staged_server == current["server-ca"][1]

    files, cas, warnings = [], [], []

    def stage(relative: str, content: bytes, secret: bool) -> None:
        existing = files_mod.read_if_exists(os.path.join(staging_tls, relative))
        state = "unchanged" if existing == content else ("created" if existing is None else "updated")
        files.append(StagedFile(relative, content, files_mod.PRIVATE_FILE_MODE if secret else files_mod.PUBLIC_FILE_MODE, state))

    if request.mode == "new_root":
        _plan_new_root(request, staging_tls, stage, cas, current, layout)
    else:
        issuer = _renew_issuer(request, layout, now, staging_tls) if request.mode == "renew" else None
        if issuer is not None and issuer[3]:
            stage(layout.intermediate_ca[0], certs_mod.dump_certificates([issuer[0]]), False)
            stage(layout.intermediate_ca[1], keys_mod.serialize_private_key(issuer[1], key_format=request.key_format),
                  True)
        for entry in layout.cas:
            bundle, _bundle_bytes, current_key = current[entry.name]
            staged_bundle = files_mod.read_if_exists(os.path.join(staging_tls, entry.cert))
            staged_key = files_mod.read_if_exists(os.path.join(staging_tls, entry.key))
            expected_tail = None
            if issuer is not None:
                # an earlier staged CA is kept when it hangs below the same intermediate (the existing one, or
                # the new one an earlier run staged and this run reused)
                expected_tail = [issuer[0]] + (list(issuer[2]) if issuer[2] else list(bundle[2:]))
            if not already_loaded and _staged_set_satisfies(staged_bundle, staged_key, bundle, request.mode, now,
                                                            expected_tail, request.bundle_order):
                stage(entry.cert, staged_bundle, False)
                stage(entry.key, staged_key, True)
                new_first = certs_mod.load_certificates(staged_bundle, source=entry.cert)[0]
                cas.append(CARotation(entry.name, "unchanged", bundle[0], new_first, staged_bundle))
                continue
            if already_loaded:
                cas.append(CARotation(entry.name, "loaded", bundle[0], bundle[0], _bundle_bytes))
                continue
            if request.mode == "cross_sign":
                new_ca, new_bundle, key_bytes = _cross_sign(entry, bundle, current_key, request, prefix, now)
            else:
                new_ca, new_bundle, key_bytes = _renew(entry, bundle, issuer, request, prefix, now)
            stage(entry.cert, new_bundle, False)
            stage(entry.key, key_bytes, True)
            cas.append(CARotation(entry.name, request.mode, bundle[0], new_ca, new_bundle))

    if not already_loaded:
        _plan_service_key(request, layout, staging_tls, stage)
    new_server = next((c.bundle for c in cas if c.name == "server-ca"), current["server-ca"][1])
    token_after = hash_ca(new_server, at=now)
    return RotationPlan(request, staging_tls, files, cas, token_before, token_after, already_loaded, new_server,
                        warnings, tree)


def _plan_new_root(request: RotationRequest, staging_tls: str, stage, cas: list, current: dict, layout) -> None:
    ca_plan = plan_ca_set(CASetRequest(
        path=staging_tls, distribution=request.distribution, root_cert=request.root_cert, root_key=request.root_key,
        intermediate_cert=request.intermediate_cert, intermediate_key=request.intermediate_key,
        root_key_type=request.root_key_type, intermediate_key_type=request.root_key_type,
        ca_key_type=request.ca_key_type, key_format=request.key_format, cn_prefix=request.cn_prefix,
        ca_validity_days=request.ca_validity_days, root_validity_days=request.root_validity_days))
    service = os.path.join(staging_tls, layout.service_key)
    for planned in ca_plan.files:
        if planned.path == service:
            continue  # handled by the service_key option
        stage(os.path.relpath(planned.path, staging_tls), planned.content, planned.secret)
    for entry in layout.cas:
        state = ca_plan.cas[entry.name]
        bundle = next(f.content for f in ca_plan.files if f.path == os.path.join(staging_tls, entry.cert))
        cas.append(CARotation(entry.name, "new_root", current[entry.name][0][0], state.certificate, bundle))


def _plan_service_key(request: RotationRequest, layout, staging_tls: str, stage) -> None:
    current_path = os.path.join(request.current_path, layout.service_key)
    dest = os.path.join(staging_tls, layout.service_key)
    if request.service_key == "keep":
        # A byte-identical copy: rotate-ca's service-key check passes and the signing key stays.
        stage(layout.service_key, files_mod.read_bytes(current_path, what="current service key"), True)
        return
    plan = plan_service_key_rotation(ServiceKeyRequest(path=current_path, dest=dest, distribution=request.distribution,
                                                       keep=request.service_key_keep, key_format=request.key_format))
    if plan.writes:
        stage(layout.service_key, plan.writes[0][1], True)
    else:
        stage(layout.service_key, files_mod.read_bytes(dest, what="staged service key"), True)


def apply_rotation(plan: RotationPlan) -> None:
    """Write the staging set: directories 0700, keys 0600, atomic writes, keys before certificates.

    Files are written fresh, so their mtimes are newer than the live ones (k3s refuses a datastore
    copy older than the disk file)."""
    pending = [f for f in plan.files if f.state != "unchanged"]
    if not pending:
        return
    files_mod.check_writable_dir(plan.staging.data_dir)
    files_mod.ensure_dir(plan.staging_tls, mode=files_mod.PRIVATE_DIR_MODE)  # every missing level of the tree 0700
    for staged in sorted(pending, key=lambda f: (f.mode != files_mod.PRIVATE_FILE_MODE, f.relative)):
        path = os.path.join(plan.staging_tls, staged.relative)
        files_mod.ensure_dir(os.path.dirname(path), mode=files_mod.PRIVATE_DIR_MODE)
        files_mod.atomic_write(path, staged.content, mode=staged.mode)


def rotation_id(plan: RotationPlan) -> str:
    """Stable name of this rotation: the new server CA's notBefore (backdated a few minutes like every CA we
    make). A resumed run (staged, or loaded and running) gets the same id, so its backups land in one place.
    A request that names its id (a restore) keeps it."""
    if plan.request.rotation_id:
        return plan.request.rotation_id
    server = next((c for c in plan.cas if c.name == "server-ca"), None)
    if server is None:
        return "unknown"
    return certs_mod.not_before(server.new).strftime("%Y%m%dT%H%M%SZ")


def plan_report(plan: RotationPlan) -> dict:
    """Plain data: what changes, whether it is disruptive, which nodes need a new token. No key material."""
    token_changes = plan.token_hash_before != plan.token_hash_after
    identifier = rotation_id(plan)
    return {
        "mode": plan.request.mode,
        "staging_tls": plan.staging_tls,
        "staging_tree": plan.staging.as_dict(),
        "backup_tree": backup_tree(plan.request.backup_dir, identifier).root if plan.request.backup_dir else None,
        "already_loaded": plan.already_loaded,
        "disruptive": plan.disruptive,
        "requires_force": plan.disruptive,
        "token_ca_hash": plan.token_hash_after,
        "token_ca_hash_before": plan.token_hash_before,
        "token_changes": token_changes,
        "server_ca_sha256": hashlib.sha256(plan.server_bundle).hexdigest(),
        "rotation_id": identifier,
        "nodes_needing_new_token": "all nodes holding a token (servers and agents)" if token_changes else "none",
        "cas": [{
            "name": c.name,
            "action": c.action,
            "current_fingerprint_sha256": certs_mod.fingerprint_sha256(c.current),
            "new_fingerprint_sha256": certs_mod.fingerprint_sha256(c.new),
            "new_subject": c.new.subject.rfc4514_string(),
            "new_not_after": certs_mod.iso8601(certs_mod.not_after(c.new)),
            "bundle_length": len(blocks_with_labels(c.bundle, ("CERTIFICATE",))),
        } for c in plan.cas],
        "files": [{"path": os.path.join(plan.staging_tls, f.relative), "state": f.state, "mode": "%04o" % f.mode}
                  for f in plan.files],
    }


def plan_diff(plan: RotationPlan) -> dict:
    """The Ansible diff: each staged file created or updated, never its content."""
    return file_states_diff(plan.staging_tls, ((os.path.join(plan.staging_tls, f.relative), f.state)
                                               for f in plan.files))
