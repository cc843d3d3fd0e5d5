# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# PRIVATE to the kubepki.certs collection.
"""Chain building the way Go's crypto/x509 does it, and k3s's ``hashCA`` rule on top of it."""

from __future__ import annotations

import hashlib

from ansible_collections.kubepki.certs.plugins.module_utils._pki.certs import (
    authority_key_id,
    can_sign_certificates,
    certificate_der,
    is_ca,
    is_directly_issued_by,
    load_certificates,
    looks_like_root,
    not_after,
    not_before,
    path_length,
    subject_key_id,
    utcnow,
)
from ansible_collections.kubepki.certs.plugins.module_utils._pki.deps import ExtendedKeyUsageOID, x509
from ansible_collections.kubepki.certs.plugins.module_utils._pki.keys import public_key_der


_MAX_CHAIN_DEPTH = 10


def _candidate_order(child, pool: list) -> list:
    """Go's findPotentialParents order: name match, then AKI==SKI first, one id missing next, mismatch last."""
    matching, one_missing, mismatching = [], [], []
    child_aki = authority_key_id(child)
    for candidate in pool:
        if candidate.subject != child.issuer:
            continue
        candidate_ski = subject_key_id(candidate)
        if child_aki is not None and candidate_ski is not None:
            (matching if child_aki == candidate_ski else mismatching).append(candidate)
        else:
            one_missing.append(candidate)
    return matching + one_missing + mismatching


def _already_in_chain(candidate, chain: list) -> bool:
    # Go refuses a parent whose subject and key already appear in the chain (no loops through
    # a cross-signed twin of a certificate already used).
    for member in chain:
        if member.subject == candidate.subject and public_key_der(member) == public_key_der(candidate):
            return True
    return False


def _valid_at(certificate, moment) -> bool:
    return not_before(certificate) <= moment <= not_after(certificate)


def _eku_allows(certificate, usage_oid) -> bool:
    try:
        extended = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return True
    oids = list(extended)
    return ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE in oids or usage_oid in oids


def build_chains(leaf, *, roots, intermediates=(), at=None, usage: str | None = "serverAuth") -> list:
    """All chains ``[leaf, ..., root]`` that verify, roots tried before intermediates, as Go does.

    ``usage``: the EKU every certificate of the chain must allow (Go's default when no KeyUsages
    are given is serverAuth); ``None`` skips the EKU check. Validity is checked at ``at`` (now).
    """
    moment = at or utcnow()
    usage_oid = None
    if usage == "serverAuth":
        usage_oid = ExtendedKeyUsageOID.SERVER_AUTH
    elif usage == "clientAuth":
        usage_oid = ExtendedKeyUsageOID.CLIENT_AUTH
    roots = list(roots)
    intermediates = list(intermediates)
    chains = []

    def extend(chain: list) -> None:
        current = chain[-1]
        if len(chain) > _MAX_CHAIN_DEPTH:
            return
        for pool, is_root in ((roots, True), (intermediates, False)):
            for candidate in _candidate_order(current, pool):
                if _already_in_chain(candidate, chain):
                    continue
                if not can_sign_certificates(candidate) or not is_directly_issued_by(current, candidate):
                    continue
                if not _valid_at(candidate, moment):
                    continue
                if not is_root and not is_ca(candidate):
                    continue
                limit = path_length(candidate)
                if limit is not None and len(chain) - 1 > limit:
                    continue
                if is_root:
                    chains.append(chain + [candidate])
                else:
                    extend(chain + [candidate])

    if not _valid_at(leaf, moment):
        return []
    # A root given as the leaf itself is a chain of one.
    if any(certificate_der(leaf) == certificate_der(root) for root in roots):
        chains.append([leaf])
    else:
        extend([leaf])
    if usage_oid is not None:
        chains = [chain for chain in chains if all(_eku_allows(c, usage_oid) for c in chain)]
    return chains


def verifies(leaf, *, roots, intermediates=(), at=None, usage: str | None = "serverAuth") -> bool:
    return bool(build_chains(leaf, roots=roots, intermediates=intermediates, at=at, usage=usage))


def hash_ca(bundle: bytes, *, at=None) -> str:
    """k3s ``hashCA``: the CA hash of a join token, lower-case hex.

    One certificate: SHA-256 of the exact bytes. Several: roots (no AKI or AKI == SKI) and
    intermediates are taken from the certificates after the first; the first is verified with Go's
    default options and the hash is SHA-256 of the DER of the last certificate of the first chain.
    If verification fails, k3s falls back to the raw bytes, and so do we.
    """
    certificates = load_certificates(bundle, source="CA bundle")
    if len(certificates) == 1:
        return hashlib.sha256(bundle).hexdigest()
    roots, intermediates = [], []
    for certificate in certificates[1:]:
        (roots if looks_like_root(certificate) else intermediates).append(certificate)
    chains = build_chains(certificates[0], roots=roots, intermediates=intermediates, at=at, usage="serverAuth")
    if not chains:
        return hashlib.sha256(bundle).hexdigest()
    return hashlib.sha256(certificate_der(chains[0][-1])).hexdigest()
