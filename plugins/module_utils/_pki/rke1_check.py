# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# PRIVATE to the kubepki.certs collection.
"""The expiry report of an RKE1 cluster.rkestate, and the comparison of a node's certificate files with it.

On the rke workstation, :func:`check_rkestate` examines every certificate of the state file like ``cert_check``
examines files (validity, the state's CA that signed it, key match), and :func:`node_expectations` says which
certificate each node of the state must hold (by rke's own rules, from the layout table), public fields only.
On a node, :func:`compare_node_files` compares ``/etc/kubernetes/ssl/<name>.pem`` with those expectations: a file
that is absent or holds another certificate is stale (the state file and the cluster disagree).
"""

from __future__ import annotations

import datetime
import os

from ansible_collections.kubepki.certs.plugins.module_utils._pki.certs import (
    fingerprint_sha256,
    is_ca,
    iso8601,
    not_after,
)
from ansible_collections.kubepki.certs.plugins.module_utils._pki.errors import InvalidInputError
from ansible_collections.kubepki.certs.plugins.module_utils._pki.expiry_examination import (
    Subject,
    load_subject_certificates,
    parse_certificate_bytes,
    read_file,
    safe_entry,
    serial_hex,
)
from ansible_collections.kubepki.certs.plugins.module_utils._pki.expiry_report import sort_entries, summarize
from ansible_collections.kubepki.certs.plugins.module_utils._pki.rke1_state import (
    CURRENT_STATE,
    DESIRED_STATE,
    RkeState,
    StateCertificate,
    StateNode,
)

SOURCE_RKESTATE = "rkestate"
PROBLEM_MISSING = "missing"
PROBLEM_DIFFERS = "differs"
PROBLEM_UNREADABLE = "unreadable"

_REDEPLOY_HINT = ("`rke up` with this cluster.yml and cluster.rkestate deploys the state's certificates again; if the "
                  "node's file is the newer one, the state file is stale or another cluster's: restore the right "
                  "cluster.rkestate before running rke")


def _entry_path(state: RkeState, certificate: StateCertificate) -> str:
    return "%s#%s" % (state.path, certificate.label)


def _subject(state: RkeState, certificate: StateCertificate) -> Subject:
    subject = Subject(path=_entry_path(state, certificate), source=SOURCE_RKESTATE,
                      key_data=certificate.key_pem.encode("utf-8") if certificate.key_pem.strip() else None)
    if not certificate.certificate_pem.strip():
        subject.error = "%s has no certificatePEM" % subject.path
        return subject
    load_subject_certificates(subject, certificate.certificate_pem.encode("utf-8"), None)
    if subject.key_data is None:
        subject.notes.append("the state file holds no key for this certificate")
    return subject


def _ca_candidates(state: RkeState, bundle: dict) -> list:
    """``[(label, certificate)]`` of the CA certificates of one section's bundle, kube-ca first."""
    candidates = []
    for name in sorted(bundle, key=lambda item: (item != "kube-ca", item)):
        subject = _subject(state, bundle[name])
        if subject.error is None and subject.certificates and is_ca(subject.certificates[0]):
            candidates.append((subject.path, subject.certificates[0]))
    return candidates


def _same_certificate(first: StateCertificate | None, second: StateCertificate | None) -> bool:
    if first is None or second is None:
        return False
    return first.certificate_pem.strip() == second.certificate_pem.strip()


def pending_names(state: RkeState) -> list:
    """Names whose desiredState certificate is not the currentState one: written by ``rke cert rotate`` (or an
    ``rke up`` that generated new certificates) and not deployed yet, when currentState exists."""
    if not state.current:
        return []
    return sorted(name for name, certificate in state.desired.items()
                  if not _same_certificate(certificate, state.current.get(name)))


def _examined(state: RkeState) -> list:
    """currentState in full, plus the desiredState entries that differ from it (all of them before the first
    deployment, when currentState is empty)."""
    chosen = [(CURRENT_STATE, name) for name in sorted(state.current)]
    pending = pending_names(state) if state.current else sorted(state.desired)
    return chosen + [(DESIRED_STATE, name) for name in pending]


def check_rkestate(state: RkeState, *, warn_days: int = 30, now: datetime.datetime | None = None) -> dict:
    """The report of the state file's certificates: ``certificates`` (entries in cert_check's shape, ``path`` being
    ``<state file>#<section>/<name>`` and ``signed_by`` the state's CA entry that issued it) and ``summary``."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    candidates = dict((section, _ca_candidates(state, state.bundles[section]))
                      for section in (CURRENT_STATE, DESIRED_STATE))
    entries = []
    for section, name in _examined(state):
        subject = _subject(state, state.bundles[section][name])
        entries.append(safe_entry(subject, candidates=candidates[section], now=now, warn_days=warn_days))
    entries = sort_entries(entries)
    return {"certificates": entries, "summary": summarize(entries, warn_days=warn_days, now=now)}


def host_suffix(node: StateNode) -> str:
    """rke's per-host certificate name part (pki.GetCrtNameForHost): internal address when it differs, dashes."""
    address = node.internal_address if node.internal_address and node.internal_address != node.address \
        else node.address
    return address.replace(".", "-").lower()


def node_certificate_names(names: dict, node: StateNode, *, all_nodes: tuple, kubelet_serving: bool) -> list:
    """The certificate names rke deploys to ``node`` (``names`` = the layout's ``certificate_names``)."""
    wanted = list(names["all_nodes"])
    if kubelet_serving:
        wanted += ["%s-%s" % (names["kubelet_prefix"], host_suffix(other)) for other in all_nodes]
    if "etcd" in node.roles:
        wanted += ["%s-%s" % (names["etcd_prefix"], host_suffix(other)) for other in all_nodes if "etcd" in other.roles]
    if "controlplane" in node.roles:
        wanted += list(names["controlplane"])
    seen = []
    for name in wanted:
        if name not in seen:
            seen.append(name)
    return seen


def _public_fields(certificate: StateCertificate) -> dict | None:
    """What a node compares its file with; None when the state's entry holds no parsable certificate."""
    try:
        first = parse_certificate_bytes(certificate.certificate_pem.encode("utf-8"), source=certificate.label)[0]
    except InvalidInputError:
        return None
    return {"sha256": fingerprint_sha256(first), "serial": serial_hex(first.serial_number),
            "not_after": iso8601(not_after(first)), "state_entry": certificate.label}


def node_expectations(state: RkeState, names: dict) -> dict:
    """``{address: {name: {sha256, serial, not_after, state_entry}}}``: the currentState certificate each node of
    currentState's rkeConfig must hold. Names the bundle lacks (the external-etcd pair without one) are left out."""
    section = CURRENT_STATE if state.current else DESIRED_STATE
    bundle = state.bundles[section]
    nodes = state.nodes[section]
    expectations = {}
    for node in nodes:
        wanted = node_certificate_names(names, node, all_nodes=nodes,
                                        kubelet_serving=state.kubelet_serving_certificates[section])
        fields = dict((name, _public_fields(bundle[name])) for name in wanted if name in bundle)
        expectations[node.address] = dict((name, value) for name, value in fields.items() if value is not None)
    return expectations


def _describe(fields: dict) -> str:
    return "serial %s, not after %s" % (fields["serial"], fields["not_after"])


def _stale(name: str, path: str, problem: str, reason: str) -> dict:
    return {"name": name, "path": path, "problem": problem, "reason": reason}


def compare_one(name: str, path: str, expected: dict) -> dict | None:
    """The stale-file record of ``path`` against the state's ``expected`` public fields; None when they agree."""
    state_label = "cluster.rkestate %s (%s)" % (expected.get("state_entry") or name, _describe(expected))
    if not os.path.lexists(path):
        return _stale(name, path, PROBLEM_MISSING, "%s is absent; the state file has %s. %s"
                      % (path, state_label, _REDEPLOY_HINT))
    data, problem = read_file(path)
    if data is None:
        return _stale(name, path, PROBLEM_UNREADABLE, "%s %s" % (path, problem))
    try:
        first = parse_certificate_bytes(data, source=path)[0]
    except InvalidInputError as exc:
        return _stale(name, path, PROBLEM_UNREADABLE, "%s; the state file has %s. %s"
                      % (exc.message, state_label, _REDEPLOY_HINT))
    if fingerprint_sha256(first) == str(expected.get("sha256", "")).upper():
        return None
    found = {"serial": serial_hex(first.serial_number), "not_after": iso8601(not_after(first))}
    return _stale(name, path, PROBLEM_DIFFERS, "%s holds another certificate (%s) than %s. %s"
                  % (path, _describe(found), state_label, _REDEPLOY_HINT))


def compare_node_files(tls_dir_path, expected: dict) -> list:
    """Stale records of the node files named in ``expected`` (``{name: public fields}``, one node's part of
    :func:`node_expectations`); ``tls_dir_path`` maps a file name to its path on this node."""
    stale = []
    for name in sorted(expected):
        fields = expected[name]
        if not isinstance(fields, dict) or not fields.get("sha256"):
            raise InvalidInputError("rkestate_expected[%s] has no sha256: pass one node's part of the rkestate.nodes "
                                    "that cert_check returns for the state file" % name)
        record = compare_one(name, tls_dir_path(name + ".pem"), fields)
        if record is not None:
            stale.append(record)
    return stale
