# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# PRIVATE to the kubepki.certs collection.
"""Service-account key rotation: a new signing key first, the current keys kept for verification.

k3s/RKE2 keep every key in one file (``service.key``: the first key signs, all verify). kubeadm splits
them: ``sa.key`` is the signing key alone, ``sa.pub`` holds every public key that verifies.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass

from ansible_collections.kubepki.certs.plugins.module_utils._pki import files as files_mod
from ansible_collections.kubepki.certs.plugins.module_utils._pki import keys as keys_mod
from ansible_collections.kubepki.certs.plugins.module_utils._pki.diffs import pending_writes_diff
from ansible_collections.kubepki.certs.plugins.module_utils._pki.errors import InvalidInputError
from ansible_collections.kubepki.certs.plugins.module_utils._pki.layout import RANCHER_DISTRIBUTIONS
from ansible_collections.kubepki.certs.plugins.module_utils._pki.pem import (
    PRIVATE_KEY_LABELS,
    PUBLIC_KEY_LABELS,
    blocks_with_labels,
    normalise_block,
)

# Enough for years of rotations; a longer list only slows every token verification.
MAX_KEPT_KEYS = 20


@dataclass
class ServiceKeyRequest:
    path: str
    dest: str
    distribution: str
    keep: int | None = None
    key_type: str = "rsa-2048"
    key_format: str = "traditional"
    in_place: bool = False


@dataclass
class ServiceKeyPlan:
    request: ServiceKeyRequest
    writes: list          # [(path, content, mode)]
    signing_key_fingerprint: str
    kept_fingerprints: list
    dropped_count: int
    backup_source: str | None

    @property
    def changed(self) -> bool:
        return bool(self.writes)


def key_fingerprint(key) -> str:
    """SHA-256 of the DER SubjectPublicKeyInfo, lower-case hex: names a key without revealing it."""
    return hashlib.sha256(keys_mod.public_key_der(key)).hexdigest()


def _keep_count(request: ServiceKeyRequest, available: int) -> int:
    if request.keep is None:
        return min(available, MAX_KEPT_KEYS)
    if request.keep < 1:
        raise InvalidInputError("keep must be at least 1: the current signing key must stay in the verification "
                                "set, or every issued token stops verifying")
    return min(available, request.keep, MAX_KEPT_KEYS)


def _check_paths(request: ServiceKeyRequest) -> None:
    if os.path.realpath(request.dest) == os.path.realpath(request.path) and not request.in_place:
        raise InvalidInputError("dest %s is the current key file; write to a staging file, or set in_place=true "
                                "to rewrite it (a backup is made first)" % request.dest, path=request.dest)
    if request.in_place and os.path.realpath(request.dest) != os.path.realpath(request.path):
        raise InvalidInputError("in_place=true needs dest equal to path (%s)" % request.path, path=request.dest)
    if os.path.isdir(request.dest):
        raise InvalidInputError("dest %s is a directory; name the key file to write" % request.dest, path=request.dest)


def _plan_rancher(request: ServiceKeyRequest) -> ServiceKeyPlan:
    current_data = files_mod.read_bytes(request.path, what="service-account key file")
    current_keys = keys_mod.load_private_keys(current_data, source=request.path)
    current_blocks = blocks_with_labels(current_data, PRIVATE_KEY_LABELS)
    count = _keep_count(request, len(current_keys))
    kept_keys, kept_blocks = current_keys[:count], current_blocks[:count]
    current_ids = {keys_mod.public_key_der(k) for k in current_keys}

    if not request.in_place:
        existing = files_mod.read_if_exists(request.dest)
        if existing is not None:
            staged = keys_mod.load_private_keys(existing, source=request.dest)
            staged_ids = [keys_mod.public_key_der(k) for k in staged]
            if len(staged) > 1 and staged_ids == [keys_mod.public_key_der(k) for k in current_keys]:
                # The staged file was loaded and is live now: this rotation is done.
                return ServiceKeyPlan(request, [], key_fingerprint(staged[0]),
                                      [key_fingerprint(k) for k in staged[1:]], 0, None)
            if (len(staged) == count + 1 and keys_mod.public_key_der(staged[0]) not in current_ids
                    and [keys_mod.public_key_der(k) for k in staged[1:]]
                    == [keys_mod.public_key_der(k) for k in kept_keys]):
                return ServiceKeyPlan(request, [], key_fingerprint(staged[0]),
                                      [key_fingerprint(k) for k in kept_keys], len(current_keys) - count, None)

    new_key = keys_mod.generate_private_key(request.key_type)
    # Kept keys stay byte for byte as they were: their format is whatever the cluster wrote.
    content = keys_mod.serialize_private_key(new_key, key_format=request.key_format)
    content += b"".join(normalise_block(block) for block in kept_blocks)
    return ServiceKeyPlan(request, [(request.dest, content, files_mod.PRIVATE_FILE_MODE)], key_fingerprint(new_key),
                          [key_fingerprint(k) for k in kept_keys], len(current_keys) - count,
                          request.path if request.in_place else None)


def _plan_kubeadm(request: ServiceKeyRequest) -> ServiceKeyPlan:
    current_key = keys_mod.load_private_key(files_mod.read_bytes(request.path, what="sa.key"), source=request.path)
    pub_path = os.path.join(os.path.dirname(request.path), "sa.pub")
    pub_data = files_mod.read_if_exists(pub_path)
    public_keys = keys_mod.load_public_keys(pub_data, source=pub_path) if pub_data is not None else []
    public_blocks = blocks_with_labels(pub_data, PUBLIC_KEY_LABELS) if pub_data is not None else []
    current_der = keys_mod.public_key_der(current_key)
    if current_der not in [keys_mod.public_key_der(k) for k in public_keys]:
        # The signing key must stay verifiable even when sa.pub was out of date.
        public_keys.insert(0, current_key.public_key())
        public_blocks.insert(0, keys_mod.serialize_public_key(current_key))
    count = _keep_count(request, len(public_keys))
    kept_keys, kept_blocks = public_keys[:count], public_blocks[:count]
    known = {keys_mod.public_key_der(k) for k in public_keys}
    dest_pub = os.path.join(os.path.dirname(request.dest), "sa.pub")

    if not request.in_place:
        existing = files_mod.read_if_exists(request.dest)
        existing_pub = files_mod.read_if_exists(dest_pub)
        if existing is not None and existing_pub is not None:
            staged = keys_mod.load_private_key(existing, source=request.dest)
            expected_pub = keys_mod.serialize_public_key(staged) + b"".join(normalise_block(b) for b in kept_blocks)
            if keys_mod.public_key_der(staged) not in known and existing_pub == expected_pub:
                return ServiceKeyPlan(request, [], key_fingerprint(staged), [key_fingerprint(k) for k in kept_keys],
                                      len(public_keys) - count, None)

    new_key = keys_mod.generate_private_key(request.key_type)
    key_content = keys_mod.serialize_private_key(new_key, key_format=request.key_format)
    pub_content = keys_mod.serialize_public_key(new_key) + b"".join(normalise_block(b) for b in kept_blocks)
    writes = [(request.dest, key_content, files_mod.PRIVATE_FILE_MODE), (dest_pub, pub_content, files_mod.PUBLIC_FILE_MODE)]
    return ServiceKeyPlan(request, writes, key_fingerprint(new_key), [key_fingerprint(k) for k in kept_keys],
                          len(public_keys) - count, request.path if request.in_place else None)


def plan_service_key_rotation(request: ServiceKeyRequest) -> ServiceKeyPlan:
    """Decide the new key file(s); raises an engine error, writing nothing, on bad input."""
    _check_paths(request)
    if request.distribution in RANCHER_DISTRIBUTIONS:
        return _plan_rancher(request)
    if request.distribution == "kubeadm":
        return _plan_kubeadm(request)
    raise InvalidInputError("service_account_key supports k3s, rke2 and kubeadm, not %r" % request.distribution)


def apply_service_key_plan(plan: ServiceKeyPlan, *, backup_suffix: str | None = None) -> str | None:
    """Write the planned files; for in-place rotation back up the live file(s) first. Returns the backup path."""
    if not plan.writes:
        return None
    backup_path = None
    directory = os.path.dirname(plan.request.dest) or "."
    files_mod.check_writable_dir(directory)
    files_mod.ensure_dir(directory, mode=files_mod.PRIVATE_DIR_MODE)
    if plan.backup_source:
        suffix = backup_suffix or time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        for path, _content, _mode in plan.writes:
            current = files_mod.read_if_exists(path)
            if current is not None:
                target = "%s.%s.bak" % (path, suffix)
                files_mod.atomic_write(target, current, mode=files_mod.PRIVATE_FILE_MODE)
                if path == plan.backup_source:
                    backup_path = target
    for path, content, mode in plan.writes:
        files_mod.atomic_write(path, content, mode=mode)
    return backup_path


def plan_report(plan: ServiceKeyPlan) -> dict:
    return {
        "path": plan.request.path,
        "dest": plan.request.dest,
        "files": [path for path, _content, _mode in plan.writes],
        "signing_key_fingerprint": plan.signing_key_fingerprint,
        "kept_key_fingerprints": plan.kept_fingerprints,
        "key_count": 1 + len(plan.kept_fingerprints),
        "dropped_key_count": plan.dropped_count,
    }


def plan_diff(plan: ServiceKeyPlan) -> dict:
    """The Ansible diff of the files to write, judged by the disk, so call it before apply_service_key_plan: the new
    signing key and the kept ones by fingerprint, never key material."""
    keys = "signing key %s; kept: %s" % (plan.signing_key_fingerprint, ", ".join(plan.kept_fingerprints) or "none")
    paths = [path for path, _content, _mode in plan.writes]
    return pending_writes_diff(plan.request.dest, paths, detail={path: keys for path in paths})
