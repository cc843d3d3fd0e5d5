# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# PRIVATE to the kubepki.certs collection.
"""Prove a staged rotation set safe before anything is loaded.

Upstream ``rotate-ca`` checks (bundle of several certs, first cert chains to a current root, first cert
matches first key, current first service key kept) plus the trust-continuity matrix per CA: a leaf of
the new CA verifies for a client that trusts only the current CA, a current leaf verifies for a client
that holds the new bundle, and new/new; every key matches its cert; no validity past its issuer's.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ansible_collections.kubepki.certs.plugins.module_utils._pki import certs as certs_mod
from ansible_collections.kubepki.certs.plugins.module_utils._pki import keys as keys_mod
from ansible_collections.kubepki.certs.plugins.module_utils._pki.chain import build_chains
from ansible_collections.kubepki.certs.plugins.module_utils._pki.errors import InvalidInputError
from ansible_collections.kubepki.certs.plugins.module_utils._pki.files import read_bytes, read_if_exists
from ansible_collections.kubepki.certs.plugins.module_utils._pki.layout import RANCHER_DISTRIBUTIONS, get_layout
from ansible_collections.kubepki.certs.plugins.module_utils._pki.trees import check_staging_path

# Which EKU a relying party asks for when it checks a leaf of each CA.
CA_USAGE = {"server-ca": "serverAuth", "client-ca": "clientAuth", "request-header-ca": "clientAuth",
            "etcd-server-ca": "serverAuth", "etcd-peer-ca": "clientAuth"}

DISRUPTIVE_CHECKS = ("chains_to_current_root", "new_leaf_trusted_by_current_clients", "current_leaf_trusted_by_new_clients")


@dataclass
class Check:
    ca: str
    check: str
    ok: bool
    detail: str

    def as_dict(self) -> dict:
        return {"ca": self.ca, "check": self.check, "ok": self.ok, "detail": self.detail}


def _roots_and_intermediates(current: list, new: list):
    """k3s validateCA's pools: current roots (no AKI or AKI == SKI); current others plus new certs after
    the first that carry an AKI are intermediates."""
    roots = [c for c in current if certs_mod.looks_like_root(c)]
    intermediates = [c for c in current if c not in roots]
    intermediates += [c for c in new[1:] if certs_mod.authority_key_id(c) is not None]
    return roots, intermediates


def _throwaway_leaf(issuer, issuer_key, now):
    key = keys_mod.generate_private_key("ecdsa-p256")
    return certs_mod.build_leaf_certificate(subject_common_name="kubepki-continuity-probe",
                                            subject_public_key=key.public_key(), issuer_certificate=issuer,
                                            issuer_key=issuer_key, validity_days=1, server_auth=True,
                                            client_auth=True, dns_names=("localhost",), now=now)


def _issuers_in(certificate, pool: list) -> list:
    """Direct issuers of ``certificate`` in ``pool`` (a cross-signed twin and a self-signed root can both be)."""
    return [candidate for candidate in pool
            if candidate != certificate and certs_mod.is_directly_issued_by(certificate, candidate)]


def verify_ca(name: str, *, current: list, current_key, new: list, new_key, now) -> list:
    """All checks for one CA; ``new_key`` None means the key was not staged (k3s then uses the current key)."""
    results = []
    usage = CA_USAGE.get(name, "serverAuth")

    def record(check: str, ok: bool, detail: str) -> None:
        results.append(Check(name, check, ok, detail))

    record("bundle_has_several_certs", len(new) > 1,
           "%d certificate(s) in the new bundle; k3s refuses a single-certificate CA without --force" % len(new))
    roots, intermediates = _roots_and_intermediates(current, new)
    chained = bool(build_chains(new[0], roots=roots, intermediates=intermediates, at=now, usage="serverAuth"))
    record("chains_to_current_root", chained,
           "the new CA %s to a current root through certificates of the new bundle"
           % ("chains" if chained else "does not chain"))
    signing_key = new_key if new_key is not None else current_key
    key_ok = keys_mod.key_matches_certificate(signing_key, new[0])
    record("key_matches_cert", key_ok, "the first key %s the first certificate%s"
           % ("matches" if key_ok else "does not match", "" if new_key is not None else " (key not staged: current key)"))
    if not key_ok:
        return results

    new_leaf = _throwaway_leaf(new[0], signing_key, now)
    current_leaf = _throwaway_leaf(current[0], current_key, now)
    matrix = (
        ("new_leaf_trusted_by_current_clients", new_leaf, current, new,
         "a leaf of the new CA, presented with the new bundle, verifies for a client that trusts only the current CA"),
        ("current_leaf_trusted_by_new_clients", current_leaf, new, current,
         "a leaf of the current CA verifies for a client that holds the new bundle"),
        ("new_leaf_trusted_by_new_clients", new_leaf, new, new,
         "a leaf of the new CA verifies for a client that holds the new bundle"),
    )
    for check, leaf, trust, presented, description in matrix:
        ok = bool(build_chains(leaf, roots=trust, intermediates=presented, at=now, usage=usage))
        record(check, ok, description if ok else "NOT: " + description)

    added = [c for c in new if c not in current]
    for certificate in added:
        if certs_mod.is_self_signed(certificate):
            continue
        issuers = _issuers_in(certificate, new)
        if not issuers:
            continue
        latest = max(issuers, key=certs_mod.not_after)
        ok = certs_mod.not_after(certificate) <= certs_mod.not_after(latest)
        record("validity_within_issuer", ok, "%s notAfter %s, issuer %s notAfter %s" % (
            certificate.subject.rfc4514_string(), certs_mod.iso8601(certs_mod.not_after(certificate)),
            latest.subject.rfc4514_string(), certs_mod.iso8601(certs_mod.not_after(latest))))
    return results


def verify_service_key(*, current_data: bytes, new_data: bytes, source: str) -> Check:
    current = keys_mod.load_private_keys(current_data, source="current service key")
    new = keys_mod.load_private_keys(new_data, source=source)
    kept = keys_mod.public_key_der(current[0]) in [keys_mod.public_key_der(k) for k in new]
    return Check("service-key", "current_signing_key_kept", kept,
                 "the current first service-account key %s in the new file (k3s: \"old ServiceAccount signing key "
                 "not in new ServiceAccount key list\" otherwise)" % ("is" if kept else "is NOT"))


def verify_staging(*, current_path: str, staging_path: str, distribution: str, now=None) -> list:
    """Every check for every staged file. Files that are not staged are skipped, as k3s skips them."""
    if distribution not in RANCHER_DISTRIBUTIONS:
        raise InvalidInputError("ca_verify supports k3s and rke2, not %r" % distribution)
    now = (now or certs_mod.utcnow()).replace(microsecond=0)
    layout = get_layout(distribution)
    staging_tls = check_staging_path(current_path, staging_path)
    results = []
    for entry in layout.cas:
        staged_cert = read_if_exists(os.path.join(staging_tls, entry.cert))
        if staged_cert is None:
            continue
        current_cert_path = os.path.join(current_path, entry.cert)
        current = certs_mod.load_certificates(read_bytes(current_cert_path, what="current CA"), source=current_cert_path)
        current_key_path = os.path.join(current_path, entry.key)
        current_key = keys_mod.load_private_key(read_bytes(current_key_path, what="current key"), source=current_key_path)
        new = certs_mod.load_certificates(staged_cert, source=os.path.join(staging_tls, entry.cert))
        staged_key = read_if_exists(os.path.join(staging_tls, entry.key))
        new_key = (keys_mod.load_private_key(staged_key, source=os.path.join(staging_tls, entry.key))
                   if staged_key is not None else None)
        results.extend(verify_ca(entry.name, current=current, current_key=current_key, new=new, new_key=new_key, now=now))
    staged_service = read_if_exists(os.path.join(staging_tls, layout.service_key))
    if staged_service is not None:
        current_service = read_bytes(os.path.join(current_path, layout.service_key), what="current service key")
        results.append(verify_service_key(current_data=current_service, new_data=staged_service,
                                          source=os.path.join(staging_tls, layout.service_key)))
    if not results:
        raise InvalidInputError("nothing is staged under %s: no CA bundle or service key to verify" % staging_tls,
                                path=staging_tls)
    return results


def failures(results: list, *, allow_disruptive: bool = False) -> list:
    """Failed checks; with ``allow_disruptive`` a new root's expected breaks of continuity are not failures."""
    return [r for r in results if not r.ok and not (allow_disruptive and r.check in DISRUPTIVE_CHECKS + (
        "bundle_has_several_certs",))]
