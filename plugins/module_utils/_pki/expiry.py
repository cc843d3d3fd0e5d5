# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# PRIVATE to the kubepki.certs collection.
"""Expiry check: ``k3s certificate check`` / ``kubeadm certs check-expiration`` for every distribution.

``check_expiration(layout, ...)`` examines every certificate file in the layout's scan directories, every
kubeconfig the layout knows (embedded client certificates and CA data, or the files it references) and
any extra paths, and returns plain data: one entry per certificate, sorted by days left, and a summary.
It strings the concerns together: which files (:mod:`expiry_discovery`), what each holds
(:mod:`expiry_examination`, :mod:`kubeconfig`), and the report (:mod:`expiry_report`).
Nothing here raises for a bad file: a file that cannot be read or parsed is an ``INVALID`` entry.
"""

from __future__ import annotations

import datetime
import os

from ansible_collections.kubepki.certs.plugins.module_utils._pki.expiry_discovery import (
    ExpiryFiles,
    add_certificate_file,
    key_path_for,
    normalize_path,
    plan_files,
)
from ansible_collections.kubepki.certs.plugins.module_utils._pki.expiry_examination import (
    SOURCE_CERTIFICATE,
    CAIndex,
    Subject,
    as_utc,
    invalid_entry,
    load_subject_certificates,
    missing_entry,
    read_file,
    examine_kubeconfig,
    safe_entry,
)
from ansible_collections.kubepki.certs.plugins.module_utils._pki.expiry_report import sort_entries, summarize


def _examine_kubeconfigs(files: ExpiryFiles, *, use_yaml: bool) -> tuple:
    """``(subjects, reports)`` of every kubeconfig; the certificate files they reference join ``files``."""
    subjects, reports = [], []
    for kubeconfig in files.kubeconfigs:
        found, report, references = examine_kubeconfig(kubeconfig, use_yaml=use_yaml)
        subjects.extend(found)
        reports.append(report)
        for cert_path, key_path in references:
            if os.path.isfile(cert_path):
                add_certificate_file(files, cert_path, referenced_by=kubeconfig,
                                     key_file=key_path if key_path and os.path.isfile(key_path) else None)
        for referenced in report["referenced_files"]:
            if not os.path.exists(referenced):
                files.absent.append((referenced, "referenced by kubeconfig %s, but the file is absent" % kubeconfig))
    return subjects, reports


def _file_subject(path: str, info: dict, *, key_suffix_rules: tuple) -> Subject:
    subject = Subject(path=path, source=SOURCE_CERTIFICATE)
    data, problem = read_file(path)
    load_subject_certificates(subject, data, problem)
    if info.get("key_given"):
        subject.key_file = info["key_file"]
    else:
        subject.key_file = key_path_for(path, key_suffix_rules=key_suffix_rules)
    if subject.key_file is None and data is not None and b"PRIVATE KEY-----" in data:
        subject.key_file = path  # certificate and key in one file (the kubelet's kubelet-client-current.pem)
    if info.get("referenced_by"):
        subject.notes.append("referenced by kubeconfig %s" % info["referenced_by"])
    return subject


def _ca_index(layout, file_subjects: list) -> CAIndex:
    """Every CA among the files, the layout's own CA files preferred."""
    preferred = [normalize_path(layout.tls_path(ca.cert)) for ca in layout.cas]
    for extra in (layout.intermediate_ca, layout.root_ca):
        if extra:
            preferred += [normalize_path(layout.tls_path(name)) for name in extra if not name.endswith(".key")]
    index = CAIndex(preferred=tuple(preferred), tls_dir=normalize_path(layout.tls_dir))
    for subject in file_subjects:
        if subject.certificates:
            index.add_file(subject.path, subject.certificates[0])
    return index


def check_expiration(layout, *, paths=(), only_paths: bool = False, warn_days: int = 30,
                     now: datetime.datetime | None = None, use_yaml: bool = True) -> dict:
    """Examine the layout's certificates, kubeconfigs and ``paths``; return entries, summary and kubeconfigs.

    ``{"certificates": [entry, ...], "summary": {...}, "kubeconfigs": [...], "scanned_dirs": [...]}``;
    entries are sorted by :func:`expiry_report.sort_key`. Never raises for a bad file.
    """
    moment = as_utc(now)
    files = plan_files(layout, paths=paths, only_paths=only_paths)
    # Kubeconfigs first: the certificate files they reference join the certificate files.
    kube_subjects, kube_reports = _examine_kubeconfigs(files, use_yaml=use_yaml)
    key_suffix_rules = tuple(layout.key_suffix_rules)
    file_subjects = [_file_subject(path, info, key_suffix_rules=key_suffix_rules)
                     for path, info in files.cert_files.items()]
    index = _ca_index(layout, file_subjects)

    entries = [safe_entry(subject, candidates=index.ordered_for(os.path.dirname(subject.path)), now=moment,
                          warn_days=warn_days) for subject in file_subjects]
    entries += [safe_entry(subject, candidates=index.ordered_for(None), now=moment, warn_days=warn_days)
                for subject in kube_subjects]
    entries += [invalid_entry(path, reason) for path, reason in files.problems]
    seen_absent = set()
    for path, reason in files.absent:
        if path not in seen_absent and path not in files.cert_files:
            seen_absent.add(path)
            entries.append(missing_entry(path, reason))

    entries = sort_entries(entries)
    return {
        "certificates": entries,
        "summary": summarize(entries, warn_days=warn_days, now=moment),
        "kubeconfigs": kube_reports,
        "scanned_dirs": list(files.scanned_dirs),
    }
