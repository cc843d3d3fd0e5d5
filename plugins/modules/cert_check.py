#!/usr/bin/python
# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
---
module: cert_check
short_description: Report the expiry of every certificate of a k3s, RKE2, kubeadm or RKE1 node
version_added: 0.1.0
description:
  - The equivalent of C(k3s certificate check), C(rke2 certificate check) and C(kubeadm certs check-expiration),
    with one output format for all four distributions (k3s, RKE2, kubeadm, RKE1).
  - Examines every certificate file in the distribution's certificate directories (for example
    C(/var/lib/rancher/k3s/server/tls), C(server/tls/etcd) and C(agent), C(/etc/kubernetes/pki) and C(pki/etcd),
    C(/etc/kubernetes/ssl)), and every kubeconfig the distribution writes. Embedded client certificates and CA data
    (C(client-certificate-data), C(certificate-authority-data)) are decoded and checked; files a kubeconfig only
    references are checked as certificate files.
  - Each certificate is reported with subject, issuer, serial, validity, days left, usages, the CA file that
    directly issued it, whether its private key matches, and a status C(OK), C(WARNING), C(EXPIRED),
    C(NOT_YET_VALID), C(MISSING) (a file the distribution expects is absent) or C(INVALID) (the file cannot be read
    or parsed). A malformed file never fails the task unless O(fail_on_threshold=true).
  - C(MISSING) is reported for a CA certificate of the layout that is absent from an existing certificate
    directory, for a leaf certificate of the layout that is absent while other leaves exist (a directory holding
    only CAs is a CA set staged before the first start, whose leaves the distribution issues when it starts), for a
    file a kubeconfig references that does not exist, and for an O(paths) entry that does not exist.
  - Read-only. Private keys are read only to compare them with their certificate and are never returned.
  - PyYAML is used for kubeconfigs when it is installed on the node; without it a built-in reader handles the
    block-style YAML that kubectl, kubeadm, k3s and RKE write.
author:
  - kubepki.certs developers (@kubepki)
extends_documentation_fragment:
  - kubepki.certs._attributes
  - kubepki.certs._attributes.info_module
  - kubepki.certs._cryptography_dep
options:
  distribution:
    description:
      - The distribution whose layout (directories, file names, key naming rules, kubeconfigs) to examine.
    type: str
    required: true
    choices: [k3s, rke2, kubeadm, rke1]
  data_dir:
    description:
      - Overrides the root of the layout, for example C(/var/lib/rancher/k3s) (k3s), C(/var/lib/rancher/rke2)
        (RKE2), C(/etc/kubernetes) (kubeadm and RKE1). Use it for a non-default C(--data-dir) or to examine a
        backup or staging copy.
    type: path
  paths:
    description:
      - Extra certificate files, kubeconfigs or directories to examine besides the layout's.
      - A directory is examined without recursion; files ending in the layout's certificate suffixes or in C(.crt),
        C(.pem), C(.cer) are read as certificates, C(.kubeconfig), C(.conf), C(.yaml) and C(.yml) files that look
        like a kubeconfig as kubeconfigs. A file named directly is read as a kubeconfig when it looks like one,
        otherwise as a certificate.
      - A path that does not exist is reported as C(MISSING).
    type: list
    elements: path
    default: []
  only_paths:
    description:
      - Examine only O(paths), not the layout's directories and kubeconfigs. No file is then reported as
        C(MISSING) for being absent from the layout.
    type: bool
    default: false
  warn_days:
    description:
      - A certificate with fewer days left than this is reported as C(WARNING). k3s and RKE2 renew their leaf
        certificates at start when fewer than 120 days (90 before May 2025 releases) are left.
    type: int
    default: 30
  fail_days:
    description:
      - Threshold for O(fail_on_threshold) and RV(threshold_failures).
    type: int
    default: 7
  fail_on_threshold:
    description:
      - Fail the task when a certificate has fewer than O(fail_days) days left or is C(EXPIRED), C(NOT_YET_VALID)
        or C(INVALID). The message names every such file; the full report is still returned.
      - C(MISSING) files never fail the task.
    type: bool
    default: false
  kubeadm_output:
    description:
      - Also return RV(kubeadm_expiration_info), the C(CertificateExpirationInfo) object that
        C(kubeadm certs check-expiration -o json) prints for the node (O(distribution=kubeadm) only).
    type: bool
    default: false
    version_added: 0.3.0
  textfile:
    description:
      - Also write the node's Prometheus textfile for node_exporter's textfile collector at this path, in the same
        call, with the text P(kubepki.certs.x509_textfile#filter) makes of this report (x509-certificate-exporter's metric
        and label names, every certificate of a bundle with its position), counted at the moment of the check.
      - Written to a temporary file in the same directory and renamed (mode 0644), only when its content changes,
        before any O(fail_on_threshold) or O(fail_on_unchained) failure; not in check mode. The directory must exist.
    type: path
    version_added: 0.5.0
  kubeadm_json:
    description:
      - Also write RV(kubeadm_expiration_info) at this path as C(kubeadm certs check-expiration -o json) prints it
        (4-space indent, kubeadm's field order, a final newline). Implies O(kubeadm_output=true); O(distribution=kubeadm)
        only. Written the same way as O(textfile).
    type: path
    version_added: 0.5.0
  fail_on_unchained:
    description:
      - Fail the task when a leaf certificate (not a CA, not self-signed) was issued by none of the CAs examined on
        the node (RV(certificates[].signed_by) is null), for example a leaf still issued by the CA a rotation
        replaced. The message names every such file.
    type: bool
    default: false
  rkestate:
    description:
      - Examine an RKE1 C(cluster.rkestate) instead of the node's files (O(distribution=rke1) only), the file
        C(rke) keeps next to C(cluster.yml) on the workstation it runs on. Run the task there (delegated to
        C(localhost), once); no node is contacted.
      - Every certificate of the state's C(currentState) is reported like a file (expiry, status, the state's CA that
        signed it in RV(certificates[].signed_by), whether the state's private key matches), with
        RV(certificates[].path) C(<rkestate>#currentState/<name>); so is every C(desiredState) certificate that
        differs from C(currentState) (written by C(rke cert rotate) but not deployed yet), as
        C(<rkestate>#desiredState/<name>).
      - RV(rkestate) adds the pending names and, per node of the state, the certificates rke deploys to it, to pass
        to O(rkestate_expected) on each node.
      - A missing, unreadable or unparsable state file fails the task, naming the file and what to do.
      - O(data_dir), O(paths), O(only_paths), O(kubeadm_output) and O(rkestate_expected) do not apply.
    type: path
    version_added: 0.4.0
  rkestate_expected:
    description:
      - On an RKE1 node (O(distribution=rke1)), the certificates the state file says this node holds, that is
        C(rkestate.nodes[<address>]) of a O(rkestate) run, the address being the node's C(address) in
        C(cluster.yml). Each C(<tls dir>/<name>.pem) that is absent or holds another certificate is reported in
        RV(stale), naming the node file and what differs.
      - The node's files are examined as without this option.
    type: dict
    version_added: 0.4.0
  fail_on_stale:
    description:
      - Fail the task when RV(stale) is not empty. The message names every stale file.
    type: bool
    default: false
    version_added: 0.4.0
notes:
  - Writes nothing unless O(textfile) or O(kubeadm_json) is set; then C(changed) says whether one of them changed.
  - Run it with privileges that can read the certificate and key files (C(become=true)); an unreadable file is
    reported as C(INVALID), an unreadable key as RV(certificates[].key_matches=null) with a note.
  - The C(kubepki.certs.check_expiration) role runs this module on every node and writes a fleet report on the
    controller.
  - The status of a file is that of its first certificate. Later certificates of a bundle that expire first are
    mentioned in RV(certificates[].notes).
seealso:
  - name: k3s certificate check
    description: The k3s command this module mirrors.
    link: https://docs.k3s.io/cli/certificate
  - name: kubeadm certs check-expiration
    description: The kubeadm command this module mirrors.
    link: https://kubernetes.io/docs/tasks/administer-cluster/kubeadm/kubeadm-certs/
"""

EXAMPLES = r"""
- name: Check every certificate of a k3s node
  kubepki.certs.cert_check:
    distribution: k3s
  become: true
  register: expiry

- name: Show what expires first
  ansible.builtin.debug:
    msg: "{{ expiry.summary.soonest }}"

- name: Fail when anything on a kubeadm control-plane node has fewer than 14 days left
  kubepki.certs.cert_check:
    distribution: kubeadm
    fail_days: 14
    fail_on_threshold: true
  become: true

- name: RKE2 with a custom data dir, plus the kubelet's rotated client certificate
  kubepki.certs.cert_check:
    distribution: rke2
    data_dir: /opt/rke2
    paths:
      - /var/lib/kubelet/pki
    warn_days: 120
  become: true

- name: RKE1, on the rke workstation - every certificate of cluster.rkestate, no SSH needed
  kubepki.certs.cert_check:
    distribution: rke1
    rkestate: /home/ops/cluster/cluster.rkestate
  delegate_to: localhost
  run_once: true
  register: rke_state

- name: RKE1, on every node - its /etc/kubernetes/ssl files compared with the state file
  kubepki.certs.cert_check:
    distribution: rke1
    rkestate_expected: "{{ rke_state.rkestate.nodes[ansible_host] }}"
    fail_on_stale: true
  become: true

- name: Check only a staging directory
  kubepki.certs.cert_check:
    distribution: k3s
    paths:
      - /opt/staging/k3s/server/tls
    only_paths: true
"""

RETURN = r"""
certificates:
  description:
    - One entry per certificate file, per embedded kubeconfig certificate, and per expected file that is missing.
    - Sorted with C(MISSING) first, then C(INVALID), then by RV(certificates[].days_left) ascending.
  returned: always
  type: list
  elements: dict
  contains:
    path:
      description: The certificate file, or the kubeconfig that embeds the certificate.
      type: str
      sample: /var/lib/rancher/k3s/server/tls/client-admin.crt
    source:
      description: C(certificate) for a certificate file, C(kubeconfig) for data embedded in a kubeconfig.
      type: str
      sample: certificate
    kubeconfig_entry:
      description: For kubeconfig entries C(user/<name>) (client certificate) or C(cluster/<name>) (CA data); else null.
      type: str
      sample: user/default
    subject:
      description: Subject of the first certificate (RFC 4514).
      type: str
      sample: CN=system:admin,O=system:masters
    issuer:
      description: Issuer of the first certificate (RFC 4514).
      type: str
      sample: CN=k3s-client-ca@1700000000
    serial:
      description: Serial number in upper-case hex, as C(openssl x509 -serial) prints it.
      type: str
      sample: 3A5F0C
    not_before:
      description: Start of validity, ISO 8601 UTC.
      type: str
      sample: "2025-01-01T00:00:00Z"
    not_after:
      description: End of validity, ISO 8601 UTC.
      type: str
      sample: "2026-01-01T00:00:00Z"
    days_left:
      description: Whole days until RV(certificates[].not_after), rounded down; negative when expired; null for
        C(MISSING) and C(INVALID).
      type: int
      sample: 200
    is_ca:
      description: Whether basicConstraints says CA.
      type: bool
    usages:
      description: Key usages and extended key usages.
      type: list
      elements: str
      sample: [digital signature, key encipherment, client auth]
    chain_length:
      description: Number of certificates in the file (k3s leaf files carry the CA bundle after the leaf).
      type: int
      sample: 2
    bundle:
      description:
        - Every certificate of the file in order, position 1 being the one in use (served by a leaf file, signing in a
          CA file); empty for C(MISSING) and C(INVALID) entries. The Prometheus textfile
          (P(kubepki.certs.x509_textfile#filter)) reports each with its position.
      type: list
      elements: dict
      contains:
        position:
          description: 1 for the first certificate of the file.
          type: int
        subject_cn:
          description: The subject's common name (empty when it has none).
          type: str
        issuer_cn:
          description: The issuer's common name.
          type: str
        serial:
          description: Serial number, upper-case hex.
          type: str
        not_before:
          description: Validity start, ISO 8601 UTC.
          type: str
        not_after:
          description: Validity end, ISO 8601 UTC.
          type: str
    signed_by:
      description:
        - C(self) for a self-signed certificate; else the CA file (first certificate of a CA file in the same
          directory, the tls directory, or anywhere examined) or the kubeconfig CA data (C(<path>#cluster/<name>))
          that directly issued it; null when none of them did.
      type: str
      sample: /var/lib/rancher/k3s/server/tls/client-ca.crt
    key_file:
      description: The private key file found for the certificate (layout naming rules), the kubeconfig for
        embedded C(client-key-data); null when there is none.
      type: str
    key_matches:
      description: Whether that private key belongs to the certificate; null when there is no key (or it cannot be read).
      type: bool
    status:
      description: C(OK), C(WARNING), C(EXPIRED), C(NOT_YET_VALID), C(MISSING) or C(INVALID).
      type: str
      sample: OK
    reason:
      description: Why the status is not C(OK); null for C(OK).
      type: str
    notes:
      description: Further observations (key mismatch, bundle certificates expiring first, no known issuer).
      type: list
      elements: str
summary:
  description: Counts per status, the soonest expiry and the time of the check.
  returned: always
  type: dict
  contains:
    total:
      description: Number of entries.
      type: int
    counts:
      description: Number of entries per status (every status is present).
      type: dict
      sample: {"OK": 20, "WARNING": 1, "EXPIRED": 0, "NOT_YET_VALID": 0, "MISSING": 0, "INVALID": 0}
    soonest:
      description: The entry with the fewest days left (path, kubeconfig_entry, subject, not_after, days_left,
        status); null when nothing was found.
      type: dict
    warn_days:
      description: The warning window used.
      type: int
    checked_at:
      description: The moment of the check, ISO 8601 UTC.
      type: str
unchained:
  description: Leaf certificates no examined CA issued (see O(fail_on_unchained)).
  returned: always
  type: list
  elements: str
threshold_failures:
  description: Paths (with C(#<kubeconfig entry>) for kubeconfig entries) that fail the O(fail_days) threshold.
  returned: always
  type: list
  elements: str
  sample: [/etc/kubernetes/pki/apiserver.crt]
kubeconfigs:
  description: The kubeconfigs examined, with cluster and user names, whether they embed credentials, the files
    they reference and any parse error.
  returned: always
  type: list
  elements: dict
  sample: [{"path": "/etc/rancher/k3s/k3s.yaml", "embedded": true, "clusters": ["default"], "users": ["default"],
            "referenced_files": [], "error": null}]
kubeadm_expiration_info:
  description:
    - With O(kubeadm_output=true), the report in kubeadm's own shape (C(output.kubeadm.k8s.io/v1alpha3)
      C(CertificateExpirationInfo)), as C(kubeadm certs check-expiration -o json) prints it on the node.
    - C(certificates) are the leaves and kubeconfigs kubeadm renews (C(apiserver), C(etcd-server), C(admin.conf), ...;
      the etcd ones only with a local etcd, that is the etcd static pod manifest or the etcd CA on the node),
      C(certificateAuthorities) the CAs C(ca), C(etcd-ca), C(front-proxy-ca), each sorted by name.
    - Each item has C(name), C(expirationDate) (RFC 3339, UTC, null when missing), C(residualTime) (seconds),
      C(externallyManaged) (its CA's certificate is there without its key), C(caName) (leaves) and C(missing)
      (absent or unreadable).
  returned: when O(kubeadm_output=true) or O(kubeadm_json) is set
  type: dict
  version_added: 0.3.0
  sample: {"kind": CertificateExpirationInfo, "apiVersion": output.kubeadm.k8s.io/v1alpha3,
           "certificates": [{"name": admin.conf, "expirationDate": "2027-12-03T15:48:55Z", "residualTime": 31535998,
                             "externallyManaged": false, "caName": ca, "missing": false}],
           "certificateAuthorities": [{"name": ca, "expirationDate": "2036-12-01T15:48:45Z",
                                       "residualTime": 315359988, "externallyManaged": false, "missing": false}]}
rkestate:
  description:
    - With O(rkestate), what the state file says beyond the certificates' report.
  returned: when O(rkestate) is set
  type: dict
  version_added: 0.4.0
  contains:
    path:
      description: The state file.
      type: str
    current:
      description: Names in C(currentState.certificatesBundle) (what the last C(rke up) deployed).
      type: list
      elements: str
    pending:
      description: Names whose C(desiredState) certificate differs from C(currentState) (a rotation written to the
        state file and not deployed, for example an interrupted C(rke cert rotate)).
      type: list
      elements: str
    nodes:
      description:
        - Per node C(address) of the state's C(rkeConfig), the certificates rke deploys to it (by its roles), each
          with C(sha256) (fingerprint), C(serial), C(not_after) and C(state_entry); pass one node's part to
          O(rkestate_expected). Public data only.
      type: dict
      sample: {"10.0.0.1": {"kube-ca": {"sha256": "AB:CD:...", "serial": "3A5F0C", "not_after": "2036-12-01T15:48:45Z",
                                       "state_entry": "currentState/kube-ca"}}}
stale:
  description:
    - With O(rkestate_expected), the node files that disagree with the state file; empty otherwise.
    - Each has C(name), C(path) (the node file), C(problem) (C(missing), C(differs) or C(unreadable)) and C(reason)
      (both certificates' serial and expiry, and what to do).
  returned: always
  type: list
  elements: dict
  version_added: 0.4.0
written:
  description: The files of O(textfile) and O(kubeadm_json) that were written (would be, in check mode) because their
    content changed.
  returned: always
  type: list
  elements: str
  version_added: 0.5.0
  sample: [/var/lib/node_exporter/textfile_collector/kubepki_certs.prom]
scanned_dirs:
  description: The directories that were examined.
  returned: always
  type: list
  elements: str
"""

import datetime

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.kubepki.certs.plugins.module_utils._pki.expiry import check_expiration
from ansible_collections.kubepki.certs.plugins.module_utils._pki.expiry_report import (
    describe_failures,
    entry_label,
    threshold_failures,
    unchained_leaves,
)
from ansible_collections.kubepki.certs.plugins.module_utils._pki.expiry_metrics import textfile
from ansible_collections.kubepki.certs.plugins.module_utils._pki.files import PUBLIC_FILE_MODE, write_if_changed
from ansible_collections.kubepki.certs.plugins.module_utils._pki.kubeadm_expiry import expiration_info_text, kubeadm_expiration_info
from ansible_collections.kubepki.certs.plugins.module_utils._pki.layout import (
    DISTRIBUTIONS,
    KUBEADM_DISTRIBUTIONS,
    RKE1_STATE_DISTRIBUTIONS,
    get_layout,
)
from ansible_collections.kubepki.certs.plugins.module_utils._pki.module_edge import require_cryptography, run_engine
from ansible_collections.kubepki.certs.plugins.module_utils._pki.rke1_check import (
    check_rkestate,
    compare_node_files,
    node_expectations,
    pending_names,
)
from ansible_collections.kubepki.certs.plugins.module_utils._pki.rke1_state import read_rkestate


def _state_report(module, layout, params: dict, now) -> dict:
    """The report of a cluster.rkestate (on the rke workstation)."""
    state = run_engine(module, read_rkestate, params["rkestate"])
    report = run_engine(module, check_rkestate, state, warn_days=params["warn_days"], now=now)
    names = layout.extra["certificate_names"]
    return dict(report, kubeconfigs=[], scanned_dirs=[],
                rkestate={"path": state.path, "current": sorted(state.current), "pending": pending_names(state),
                          "nodes": node_expectations(state, names)})


def main():
    module = AnsibleModule(
        argument_spec=dict(
            distribution=dict(type="str", required=True, choices=list(DISTRIBUTIONS)),
            data_dir=dict(type="path"),
            paths=dict(type="list", elements="path", default=[]),
            only_paths=dict(type="bool", default=False),
            warn_days=dict(type="int", default=30),
            fail_days=dict(type="int", default=7),
            fail_on_threshold=dict(type="bool", default=False),
            fail_on_unchained=dict(type="bool", default=False),
            kubeadm_output=dict(type="bool", default=False),
            rkestate=dict(type="path"),
            rkestate_expected=dict(type="dict"),
            fail_on_stale=dict(type="bool", default=False),
            textfile=dict(type="path"),
            kubeadm_json=dict(type="path"),
        ),
        mutually_exclusive=[("rkestate", "rkestate_expected"), ("rkestate", "paths"), ("rkestate", "data_dir")],
        supports_check_mode=True,
    )
    require_cryptography(module)
    params = module.params
    if params["only_paths"] and not params["paths"]:
        module.fail_json(msg="only_paths=true needs at least one entry in paths")
    kubeadm_output = params["kubeadm_output"] or bool(params["kubeadm_json"])
    if kubeadm_output and params["distribution"] not in KUBEADM_DISTRIBUTIONS:
        module.fail_json(msg="kubeadm_output=true and kubeadm_json need distribution=%s" % "|".join(KUBEADM_DISTRIBUTIONS))
    rke1_options = [name for name in ("rkestate", "rkestate_expected") if params[name] is not None]
    if rke1_options and params["distribution"] not in RKE1_STATE_DISTRIBUTIONS:
        module.fail_json(msg="%s needs distribution=%s" % (" and ".join(rke1_options),
                                                           "|".join(RKE1_STATE_DISTRIBUTIONS)))
    layout = run_engine(module, get_layout, params["distribution"], data_dir=params["data_dir"])
    now = datetime.datetime.now(datetime.timezone.utc)
    if params["rkestate"] is not None:
        report = _state_report(module, layout, params, now)
    else:
        report = run_engine(module, check_expiration, layout, paths=params["paths"], only_paths=params["only_paths"],
                            warn_days=params["warn_days"], now=now)
    stale = []
    if params["rkestate_expected"] is not None:
        stale = run_engine(module, compare_node_files, layout.tls_path, params["rkestate_expected"])
    report["stale"] = stale
    failing = threshold_failures(report["certificates"], fail_days=params["fail_days"])
    unchained = [entry_label(entry) for entry in unchained_leaves(report["certificates"])]
    result = dict(report, threshold_failures=[entry_label(entry) for entry in failing], unchained=unchained)
    if kubeadm_output:
        result["kubeadm_expiration_info"] = kubeadm_expiration_info(layout, report["certificates"], now=now)
    # The node's own files, before any failure below: a failing node still publishes what it found
    files = []
    if params["textfile"]:
        files.append((params["textfile"], textfile(report["certificates"], now=now)))
    if params["kubeadm_json"]:
        files.append((params["kubeadm_json"], expiration_info_text(result["kubeadm_expiration_info"])))
    result["written"] = [path for path, text in files
                         if run_engine(module, write_if_changed, path, text.encode("utf-8"), mode=PUBLIC_FILE_MODE,
                                       check_mode=module.check_mode)]
    if params["fail_on_threshold"] and failing:
        module.fail_json(msg=describe_failures(failing, fail_days=params["fail_days"]), changed=bool(result["written"]), **result)
    if params["fail_on_stale"] and stale:
        module.fail_json(msg="node files that disagree with cluster.rkestate: %s"
                         % "; ".join(record["reason"] for record in stale), changed=bool(result["written"]), **result)
    if params["fail_on_unchained"] and unchained:
        module.fail_json(msg="leaf certificates issued by no CA on this node: %s" % ", ".join(unchained),
                         changed=bool(result["written"]), **result)
    module.exit_json(changed=bool(result["written"]), **result)


if __name__ == "__main__":
    main()
