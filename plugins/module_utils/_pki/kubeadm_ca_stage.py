# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# PRIVATE to the kubepki.certs collection.
"""The staged CAs of one kubeadm CA rotation: for each rotated CA the new CA (certificate and key), the new CA
cross-signed by the old one, and a copy of the old CA certificate, in a staging directory (0700) that mirrors pki/.

Made once, on one control-plane node, compare-then-act: a staging directory whose new CA key matches its certificate
and whose cross-signed certificate carries the new CA's subject and key under the old CA's signature is kept as is.
Every node gets a copy (control-plane nodes the keys too, workers the certificates only) and loads it with
``load_staged``; the phases (kubeadm_ca_phases) only read it.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
from dataclasses import dataclass

from ansible_collections.kubepki.certs.plugins.module_utils._pki.certs import (
    build_ca_certificate,
    common_name,
    dump_certificates,
    fingerprint_sha256,
    is_directly_issued_by,
    load_certificates,
    utcnow,
)
from ansible_collections.kubepki.certs.plugins.module_utils._pki.deps import serialization, x509
from ansible_collections.kubepki.certs.plugins.module_utils._pki.errors import InvalidInputError
from ansible_collections.kubepki.certs.plugins.module_utils._pki.files import (
    PRIVATE_DIR_MODE,
    PRIVATE_FILE_MODE,
    PUBLIC_FILE_MODE,
    atomic_write,
    ensure_dir,
    read_bytes,
    read_if_exists,
)
from ansible_collections.kubepki.certs.plugins.module_utils._pki.keys import (
    generate_private_key,
    key_matches_certificate,
    key_type_of,
    load_private_key,
    same_key,
    serialize_private_key,
)

# file suffixes in the staging directory, after the CA's own path without ".crt" (ca, front-proxy-ca, etcd/ca)
NEW_CERT, NEW_KEY, CROSS_CERT, OLD_CERT = ".crt", ".key", "-cross.crt", "-previous.crt"


@dataclass(frozen=True)
class RotatedCA:
    """One CA being replaced: old (as the cluster trusted it before), new, the new one cross-signed by the old."""

    name: str
    live_cert: str  # pki/<ca>.crt
    live_key: str
    old: object
    new: object
    cross: object
    new_key: object | None  # None on a worker (no CA keys there)

    @property
    def new_pem(self) -> bytes:
        return dump_certificates([self.new])


def staged_paths(layout, stage_dir: str, name: str) -> dict:
    """The staged files of CA ``name``, named as in pki/ (ca, front-proxy-ca, etcd/ca) with the suffixes above."""
    base = os.path.join(stage_dir, layout.ca(name).cert[:-len(".crt")])
    return {"new": base + NEW_CERT, "key": base + NEW_KEY, "cross": base + CROSS_CERT, "old": base + OLD_CERT}


def is_staged(layout, stage_dir: str, names) -> bool:
    """Whether the certificates of every named CA are staged here (keys are not: workers get none)."""
    return all(os.path.exists(staged_paths(layout, stage_dir, name)[what]) for name in names for what in ("new", "cross", "old"))


def discovery_hash(certificate) -> str:
    """kubeadm's --discovery-token-ca-cert-hash: sha256 of the CA's DER SubjectPublicKeyInfo."""
    spki = certificate.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return "sha256:" + hashlib.sha256(spki).hexdigest()


def new_common_name(old_name: str, moment) -> str:
    """The old CA's CN with a timestamp (as k3s names its CAs): a distinct subject keeps path building unambiguous."""
    return "%s@%d" % (re.sub(r"@\d+$", "", old_name), int(moment.timestamp()))


def _organization(certificate) -> str | None:
    values = certificate.subject.get_attributes_for_oid(x509.NameOID.ORGANIZATION_NAME)
    return values[0].value if values else None


def _cross(old, old_key, new, new_key, validity_days: int, now):
    return build_ca_certificate(subject_common_name=common_name(new.subject), subject_public_key=new_key.public_key(),
                                issuer_certificate=old, issuer_key=old_key, validity_days=validity_days,
                                organization=_organization(new), now=now)


def _read_staged(paths: dict) -> tuple:
    """(new, cross, old, key or None) as staged; the key is optional (workers get none)."""
    new, cross, old = (load_certificates(read_bytes(paths[what]), source=paths[what])[0] for what in ("new", "cross", "old"))
    key = None
    if os.path.exists(paths["key"]):
        key = load_private_key(read_bytes(paths["key"], what="staged CA key"), source=paths["key"])
    return new, cross, old, key


def _problem(paths: dict, new, cross, old, key) -> str | None:
    """Why a staged set is not a rotation of ``old``: a sentence, or None."""
    if cross.subject != new.subject or not same_key(cross.public_key(), new.public_key()) or not is_directly_issued_by(cross, old):
        return "%s is not %s cross-signed by %s; restage the rotation" % (paths["cross"], paths["new"], paths["old"])
    if key is not None and not key_matches_certificate(key, new):
        return "%s does not belong to %s" % (paths["key"], paths["new"])
    return None


def _staged_ok(paths: dict, old) -> bool:
    if not all(os.path.exists(p) for p in paths.values()):
        return False
    new, cross, previous, key = _read_staged(paths)
    return fingerprint_sha256(previous) == fingerprint_sha256(old) and _problem(paths, new, cross, previous, key) is None


def plan_stage(layout, stage_dir: str, names, *, validity_days: int = 3650, now=None) -> list:
    """(name, status, writes) per CA: "keep" when the staging directory already holds a valid set for the CA on disk,
    else "create" with the files to write (new key first). The old CA must be the single certificate of pki/<ca>.crt
    with its key beside it: a rotation starts from a cluster that trusts one CA."""
    moment = now or utcnow()
    planned = []
    for name in names:
        cert_path, key_path = layout.ca_paths(name)
        certificates = load_certificates(read_bytes(cert_path, what="CA certificate"), source=cert_path)
        paths = staged_paths(layout, stage_dir, name)
        if len(certificates) != 1:
            if os.path.exists(paths["old"]) and _staged_ok(paths, load_certificates(read_bytes(paths["old"]), source=paths["old"])[0]):
                planned.append((name, "keep", []))  # a rotation under way: the bundle holds old and new
                continue
            raise InvalidInputError("%s holds %d certificates and no rotation staged in %s matches it; finish or roll "
                                    "back the rotation that made it a bundle first" % (cert_path, len(certificates), stage_dir),
                                    path=cert_path)
        old = certificates[0]
        if _staged_ok(paths, old):
            planned.append((name, "keep", []))
            continue
        old_key = load_private_key(read_bytes(key_path, what="CA key"), source=key_path)
        if not key_matches_certificate(old_key, old):
            raise InvalidInputError("%s does not belong to %s; the old CA must sign the cross-certificate" % (key_path, cert_path),
                                    path=key_path)
        new_key = generate_private_key(key_type_of(old_key))
        new = build_ca_certificate(subject_common_name=new_common_name(common_name(old.subject), moment),
                                   subject_public_key=new_key.public_key(), issuer_certificate=None, issuer_key=new_key,
                                   validity_days=validity_days, organization=_organization(old), now=moment)
        cross = _cross(old, old_key, new, new_key, validity_days, moment)
        planned.append((name, "create", [(paths["key"], serialize_private_key(new_key), PRIVATE_FILE_MODE),
                                         (paths["new"], dump_certificates([new]), PUBLIC_FILE_MODE),
                                         (paths["cross"], dump_certificates([cross]), PUBLIC_FILE_MODE),
                                         (paths["old"], dump_certificates([old]), PUBLIC_FILE_MODE)]))
    return planned


def apply_stage(stage_dir: str, planned: list) -> None:
    ensure_dir(stage_dir, mode=PRIVATE_DIR_MODE)
    for _name, _status, writes in planned:
        for path, data, mode in writes:
            ensure_dir(os.path.dirname(path), mode=PRIVATE_DIR_MODE)
            atomic_write(path, data, mode=mode)


def plan_receive(stage_dir: str, files: dict) -> list:
    """(path, data, mode) for each staged file sent from the staging node (name relative to the staging directory ->
    bytes) whose copy here is missing or differs; keys (``.key``) private. A name leaving the directory is refused."""
    root = os.path.normpath(stage_dir)
    writes = []
    for name, data in sorted(files.items()):
        path = os.path.normpath(os.path.join(root, name))
        if os.path.isabs(name) or not path.startswith(root + os.sep):
            raise InvalidInputError("%s is not a file of the staging directory %s" % (name, root), path=name)
        if read_if_exists(path) != data:
            writes.append((path, data, PRIVATE_FILE_MODE if name.endswith(".key") else PUBLIC_FILE_MODE))
    return writes


def read_staged_files(stage_dir: str, names) -> dict:
    """name (relative to the staging directory) -> content, for the staged files another node gets a copy of; a file
    missing here is refused (the stage step made them all)."""
    files = {}
    for name in names:
        data = read_if_exists(os.path.join(stage_dir, name))
        if data is None:
            raise InvalidInputError("%s is not staged in %s: run the stage step first" % (name, stage_dir), path=name)
        files[name] = data
    return files


def load_staged(layout, stage_dir: str, names) -> dict:
    """name -> RotatedCA from the staging directory; the key is optional (workers get none)."""
    staged = {}
    for name in names:
        paths = staged_paths(layout, stage_dir, name)
        for what in ("new", "cross", "old"):
            if not os.path.exists(paths[what]):
                raise InvalidInputError("%s is missing: stage the rotation (step stage) and copy it to this node first"
                                        % paths[what], path=paths[what])
        new, cross, old, key = _read_staged(paths)
        problem = _problem(paths, new, cross, old, key)
        if problem is not None:
            raise InvalidInputError(problem, path=paths["cross"])
        cert_path, key_path = layout.ca_paths(name)
        staged[name] = RotatedCA(name, cert_path, key_path, old, new, cross, key)
    return staged


def staged_report(staged: dict) -> dict:
    """Public data per CA: fingerprints, both discovery hashes (joins during the overlap), the new CA's PEM."""
    return {name: {"old_fingerprint": fingerprint_sha256(ca.old), "new_fingerprint": fingerprint_sha256(ca.new),
                   "old_discovery_hash": discovery_hash(ca.old), "new_discovery_hash": discovery_hash(ca.new),
                   "new_subject": common_name(ca.new.subject),
                   "new_pem_b64": base64.b64encode(ca.new_pem).decode("ascii")}
            for name, ca in staged.items()}
