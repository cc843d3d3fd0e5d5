# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# PRIVATE to the kubepki.certs collection.
"""The service-account key in the phases of a kubeadm CA rotation, in the same style as the CAs.

kubeadm keeps the signing key in pki/sa.key and every key that verifies in pki/sa.pub. With the previous public keys
P (what sa.pub held when the rotation was staged) and the new key N:

==========  ==================  ==================  ==================
file        prepare             promote             finalize
==========  ==================  ==================  ==================
sa.key      as it is (signs)    N (signs)           N
sa.pub      P, N                N, P                N
==========  ==================  ==================  ==================

Every apiserver verifies N's tokens before any node signs with it (prepare before promote), and P's tokens until
finalize. Staged once beside the CAs (sa.key, sa-previous.pub); control-plane nodes get both, workers have no sa files
and plan nothing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ansible_collections.kubepki.certs.plugins.module_utils._pki.errors import InvalidInputError
from ansible_collections.kubepki.certs.plugins.module_utils._pki.files import (
    PRIVATE_FILE_MODE,
    PUBLIC_FILE_MODE,
    file_mode,
    read_bytes,
)
from ansible_collections.kubepki.certs.plugins.module_utils._pki.kubeadm_ca_phases import FINALIZE, PREPARE, PROMOTE, FileChange
from ansible_collections.kubepki.certs.plugins.module_utils._pki.keys import (
    generate_private_key,
    key_type_of,
    load_private_key,
    load_public_keys,
    public_key_der,
    serialize_private_key,
    serialize_public_key,
)
from ansible_collections.kubepki.certs.plugins.module_utils._pki.service_keys import key_fingerprint

STAGED_KEY, STAGED_PREVIOUS = "sa.key", "sa-previous.pub"  # in the staging directory


@dataclass(frozen=True)
class RotatedServiceKey:
    live_key: str  # pki/sa.key
    live_pub: str  # pki/sa.pub
    previous: list  # public keys that verified before the rotation, the old signing key first
    new_key: object


def live_paths(layout) -> tuple:
    return os.path.join(layout.tls_dir, layout.service_key), os.path.join(layout.tls_dir, layout.service_pub)


def staged_paths(stage_dir: str) -> tuple:
    return os.path.join(stage_dir, STAGED_KEY), os.path.join(stage_dir, STAGED_PREVIOUS)


def _ders(keys) -> list:
    return [public_key_der(k) for k in keys]


def _load_staged(stage_dir: str) -> tuple:
    key_path, previous_path = staged_paths(stage_dir)
    new_key = load_private_key(read_bytes(key_path, what="staged service-account key"), source=key_path)
    previous = load_public_keys(read_bytes(previous_path, what="staged previous public keys"), source=previous_path)
    if not previous or public_key_der(new_key) in _ders(previous):
        raise InvalidInputError("%s and %s do not make a rotation (no previous key, or the new key among them); move the "
                                "staging directory away and stage again" % (key_path, previous_path), path=previous_path)
    return new_key, previous


def plan_sa_stage(layout, stage_dir: str) -> list:
    """The files to stage ([(path, data, mode)]), none when a valid pair is staged already. The previous set is the
    live sa.pub, with the signing key first (added if sa.pub lacked it)."""
    key_path, previous_path = staged_paths(stage_dir)
    if os.path.exists(key_path) and os.path.exists(previous_path):
        _load_staged(stage_dir)  # refuses a broken pair rather than silently replacing a key nodes may already use
        return []
    live_key, live_pub = live_paths(layout)
    signing = load_private_key(read_bytes(live_key, what="service-account signing key"), source=live_key)
    previous = load_public_keys(read_bytes(live_pub, what="service-account public keys"), source=live_pub) if os.path.exists(live_pub) else []
    previous = [signing.public_key()] + [k for k in previous if public_key_der(k) != public_key_der(signing)]
    new_key = generate_private_key(key_type_of(signing))
    return [(key_path, serialize_private_key(new_key), PRIVATE_FILE_MODE),
            (previous_path, b"".join(serialize_public_key(k) for k in previous), PUBLIC_FILE_MODE)]


def load_sa_staged(layout, stage_dir: str) -> RotatedServiceKey | None:
    """The staged service-account key, or None on a node without a live sa.key (a worker)."""
    live_key, live_pub = live_paths(layout)
    if not os.path.exists(live_key):
        return None
    for path in staged_paths(stage_dir):
        if not os.path.exists(path):
            raise InvalidInputError("%s is missing: stage the rotation (step stage) and copy it to this node first" % path,
                                    path=path)
    new_key, previous = _load_staged(stage_dir)
    return RotatedServiceKey(live_key, live_pub, previous, new_key)


def verifying_keys_for(phase: str, sa: RotatedServiceKey) -> list:
    new = sa.new_key.public_key()
    return {PREPARE: sa.previous + [new], PROMOTE: [new] + sa.previous, FINALIZE: [new]}[phase]


def plan_sa_phase(sa: RotatedServiceKey, phase: str) -> list:
    """[FileChange] that put sa.key and sa.pub where ``phase`` wants them."""
    changes = []
    current = load_private_key(read_bytes(sa.live_key, what="service-account signing key"), source=sa.live_key)
    signs_with_new = public_key_der(current) == public_key_der(sa.new_key)
    if phase == PREPARE and signs_with_new:
        raise InvalidInputError("%s is the new service-account key: this node is past prepare; roll back promote first"
                                % sa.live_key, path=sa.live_key)
    if phase == FINALIZE and not signs_with_new:
        raise InvalidInputError("%s does not sign with the new service-account key yet: promote every node before "
                                "finalize" % sa.live_key, path=sa.live_key)
    if phase == PROMOTE and not signs_with_new:
        changes.append(FileChange(sa.live_key, serialize_private_key(sa.new_key), PRIVATE_FILE_MODE,
                                  "the new service-account signing key"))
    desired = verifying_keys_for(phase, sa)
    current_pub = load_public_keys(read_bytes(sa.live_pub), source=sa.live_pub) if os.path.exists(sa.live_pub) else []
    if _ders(current_pub) != _ders(desired):
        names = ["new" if public_key_der(k) == public_key_der(sa.new_key) else "previous" for k in desired]
        changes.append(FileChange(sa.live_pub, b"".join(serialize_public_key(k) for k in desired),
                                  file_mode(sa.live_pub) or PUBLIC_FILE_MODE,
                                  "service-account tokens verified with %s" % " + ".join(names)))
    return changes


def sa_report(sa: RotatedServiceKey) -> dict:
    """Fingerprints only (SHA-256 of the public key), never key material."""
    return {"previous_fingerprints": [key_fingerprint(k) for k in sa.previous], "new_fingerprint": key_fingerprint(sa.new_key)}


def is_sa_staged(layout, stage_dir: str) -> bool:
    """Whether this node holds what the phases need of the service-account key (nothing on a node without sa.key)."""
    return not os.path.exists(live_paths(layout)[0]) or all(os.path.exists(p) for p in staged_paths(stage_dir))
