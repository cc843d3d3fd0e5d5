# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# PRIVATE to the kubepki.certs collection.
"""Examining certificates for an expiry report: one entry per certificate source (a file, or a value
embedded in a kubeconfig) with its validity status, signer among the CAs examined, key match and notes.

Nothing here raises for a bad file: a file that cannot be read or parsed is an ``INVALID`` entry.
Key material is read only to compare public keys; it never leaves this module.
"""

from __future__ import annotations

import datetime
import math
import os
from dataclasses import dataclass, field

from ansible_collections.kubepki.certs.plugins.module_utils._pki.certs import (
    common_name,
    is_ca,
    is_directly_issued_by,
    is_self_signed,
    iso8601,
    key_usages,
    load_certificates,
    not_after,
    not_before,
    utcnow,
)
from ansible_collections.kubepki.certs.plugins.module_utils._pki.errors import InvalidInputError
from ansible_collections.kubepki.certs.plugins.module_utils._pki.expiry_report import (
    STATUS_EXPIRED,
    STATUS_INVALID,
    STATUS_MISSING,
    STATUS_NOT_YET_VALID,
    STATUS_OK,
    STATUS_WARNING,
)
from ansible_collections.kubepki.certs.plugins.module_utils._pki.keys import (
    key_matches_certificate,
    load_private_key,
)
from ansible_collections.kubepki.certs.plugins.module_utils._pki.kubeconfig import decode_embedded, parse_kubeconfig

SOURCE_CERTIFICATE = "certificate"
SOURCE_KUBECONFIG = "kubeconfig"

SELF_SIGNED = "self"

_SECONDS_PER_DAY = 86400


def as_utc(moment: datetime.datetime | None) -> datetime.datetime:
    """``moment`` as an aware UTC datetime (naive values are taken as UTC); ``None`` = now."""
    if moment is None:
        return utcnow()
    if moment.tzinfo is None:
        return moment.replace(tzinfo=datetime.timezone.utc)
    return moment.astimezone(datetime.timezone.utc)


def days_left(expiry: datetime.datetime, *, now: datetime.datetime) -> int:
    """Whole days from ``now`` to ``expiry``, rounded down (an expired certificate has a negative count)."""
    return int(math.floor((expiry - now).total_seconds() / _SECONDS_PER_DAY))


def serial_hex(serial: int) -> str:
    """Upper-case hex with an even number of digits, as ``openssl x509 -serial`` prints it."""
    sign = "-" if serial < 0 else ""
    digits = "%X" % abs(serial)
    if len(digits) % 2:
        digits = "0" + digits
    return sign + digits


def validity_status(certificate, *, now: datetime.datetime, warn_days: int) -> tuple:
    """``(status, reason, days_left)`` of one certificate at ``now``; reason is None for OK."""
    start, end = not_before(certificate), not_after(certificate)
    left = days_left(end, now=now)
    if now < start:
        return (STATUS_NOT_YET_VALID, "not valid before %s (clock skew, or issued with a future start)"
                % iso8601(start), left)
    if now > end:
        ago = -left
        return (STATUS_EXPIRED, "expired on %s (%d day%s ago)" % (iso8601(end), ago, "" if ago == 1 else "s"), left)
    if left < warn_days:
        return (STATUS_WARNING, "expires on %s, in %d day%s (warning window %d days)"
                % (iso8601(end), left, "" if left == 1 else "s", warn_days), left)
    return STATUS_OK, None, left


@dataclass
class Subject:
    """One certificate source: a file, or an embedded value of a kubeconfig."""

    path: str
    source: str
    kubeconfig_entry: str | None = None
    certificates: list = field(default_factory=list)
    error: str | None = None
    key_file: str | None = None
    key_data: bytes | None = None
    key_error: str | None = None
    ca_candidates: list = field(default_factory=list)  # [(label, certificate)] tried first for signed_by
    notes: list = field(default_factory=list)


def read_file(path: str) -> tuple:
    """``(data, None)`` or ``(None, reason)``."""
    try:
        with open(path, "rb") as handle:
            return handle.read(), None
    except OSError as exc:
        return None, "cannot be read: %s" % (exc.strerror or exc)


def parse_certificate_bytes(data: bytes, *, source: str) -> list:
    """Certificates of a PEM file; raises InvalidInputError with a precise reason (empty, truncated, garbage)."""
    if not data.strip():
        raise InvalidInputError("%s is empty" % source, path=source)
    try:
        return load_certificates(data, source=source)
    except InvalidInputError:
        begins = data.count(b"-----BEGIN CERTIFICATE-----")
        ends = data.count(b"-----END CERTIFICATE-----")
        if begins > ends:
            raise InvalidInputError("%s holds a truncated PEM certificate (%d BEGIN CERTIFICATE line%s, %d END)"
                                    % (source, begins, "" if begins == 1 else "s", ends), path=source) from None
        raise


def load_subject_certificates(subject: Subject, data: bytes | None, read_error: str | None) -> None:
    if read_error is not None:
        subject.error = "%s %s" % (subject.path, read_error)
        return
    try:
        subject.certificates = parse_certificate_bytes(data, source=subject.path)
    except InvalidInputError as exc:
        subject.error = exc.message
        return
    incomplete = data.count(b"-----BEGIN CERTIFICATE-----") - len(subject.certificates)
    if incomplete > 0:
        subject.notes.append("%d further BEGIN CERTIFICATE block%s incomplete (truncated file?)"
                             % (incomplete, " is" if incomplete == 1 else "s are"))


class CAIndex:
    """Every CA certificate seen (first certificate of a file, or kubeconfig CA data), by directory."""

    def __init__(self, *, preferred: tuple, tls_dir: str) -> None:
        self._items = []  # (label, certificate, directory, preferred rank)
        self._preferred = preferred
        self._tls_dir = tls_dir

    def add_file(self, path: str, certificate) -> None:
        if not is_ca(certificate) and path not in self._preferred:
            return
        rank = self._preferred.index(path) if path in self._preferred else len(self._preferred)
        self._items.append((path, certificate, os.path.dirname(path), rank))

    def ordered_for(self, directory: str | None) -> list:
        """Candidates: same directory, then the layout tls dir, then everything else; layout CA files first."""
        def key(item):
            label, _certificate, item_dir, rank = item
            if directory is not None and item_dir == directory:
                place = 0
            elif item_dir == self._tls_dir:
                place = 1
            else:
                place = 2
            return (place, rank, label)
        return [(label, certificate) for label, certificate, _d, _r in sorted(self._items, key=key)]


def find_signer(certificate, *, own_label: str | None, candidates: list) -> str | None:
    """``"self"`` for a self-signed certificate, else the label of the first candidate that directly issued it."""
    if is_self_signed(certificate):
        return SELF_SIGNED
    for label, candidate in candidates:
        if label == own_label:
            continue
        if is_directly_issued_by(certificate, candidate):
            return label
    return None


def _key_match(subject: Subject, certificate) -> tuple:
    """``(key_matches, note)``: None when there is no key to compare."""
    if subject.key_error is not None:
        return None, subject.key_error
    data = subject.key_data
    if data is None and subject.key_file is not None:
        data, problem = read_file(subject.key_file)
        if data is None:
            return None, "key file %s %s" % (subject.key_file, problem)
    if data is None:
        return None, None
    source = subject.key_file or subject.path
    try:
        key = load_private_key(data, source=source)
    except InvalidInputError as exc:
        return False, "key: %s" % exc.message
    if key_matches_certificate(key, certificate):
        return True, None
    return False, "the private key in %s does not belong to this certificate" % source


def _bundle_notes(certificates: list, *, now: datetime.datetime) -> list:
    notes = []
    first_end = not_after(certificates[0])
    for index, other in enumerate(certificates[1:], start=2):
        end = not_after(other)
        name = other.subject.rfc4514_string()
        if end < now:
            notes.append("certificate %d of the file (%s) expired on %s" % (index, name, iso8601(end)))
        elif end < first_end:
            notes.append("certificate %d of the file (%s) expires first, on %s" % (index, name, iso8601(end)))
    return notes


def bundle_items(certificates: list) -> list:
    """Every certificate of a file in order (position 1 is the one in use: served, or signing), public fields only."""
    return [{"position": position, "subject_cn": common_name(certificate.subject),
             "issuer_cn": common_name(certificate.issuer), "serial": serial_hex(certificate.serial_number),
             "not_before": iso8601(not_before(certificate)), "not_after": iso8601(not_after(certificate))}
            for position, certificate in enumerate(certificates, start=1)]


def _blank_entry(path: str, source: str, kubeconfig_entry: str | None) -> dict:
    return {
        "path": path,
        "source": source,
        "kubeconfig_entry": kubeconfig_entry,
        "subject": None,
        "issuer": None,
        "serial": None,
        "not_before": None,
        "not_after": None,
        "days_left": None,
        "is_ca": None,
        "usages": [],
        "chain_length": 0,
        "bundle": [],
        "signed_by": None,
        "key_file": None,
        "key_matches": None,
        "status": None,
        "reason": None,
        "notes": [],
    }


def missing_entry(path: str, reason: str) -> dict:
    entry = _blank_entry(path, SOURCE_CERTIFICATE, None)
    entry.update(status=STATUS_MISSING, reason=reason)
    return entry


def invalid_entry(path: str, reason: str, *, source: str = SOURCE_CERTIFICATE,
                  kubeconfig_entry: str | None = None) -> dict:
    entry = _blank_entry(path, source, kubeconfig_entry)
    entry.update(status=STATUS_INVALID, reason=reason)
    return entry


def certificate_entry(subject: Subject, *, candidates: list, now: datetime.datetime, warn_days: int) -> dict:
    """The report entry of one certificate source (its first certificate decides the status)."""
    if subject.error is not None:
        entry = invalid_entry(subject.path, subject.error, source=subject.source,
                              kubeconfig_entry=subject.kubeconfig_entry)
        entry["notes"] = list(subject.notes)
        return entry
    certificates = subject.certificates
    first = certificates[0]
    status, reason, left = validity_status(first, now=now, warn_days=warn_days)
    own_label = subject.path if subject.source == SOURCE_CERTIFICATE else None
    signer = find_signer(first, own_label=own_label, candidates=subject.ca_candidates + candidates)
    matches, key_note = _key_match(subject, first)
    notes = list(subject.notes) + _bundle_notes(certificates, now=now)
    if key_note:
        notes.append(key_note)
    if signer is None:
        notes.append("no CA certificate examined here directly issued this certificate")
    entry = _blank_entry(subject.path, subject.source, subject.kubeconfig_entry)
    entry.update(
        subject=first.subject.rfc4514_string(),
        issuer=first.issuer.rfc4514_string(),
        serial=serial_hex(first.serial_number),
        not_before=iso8601(not_before(first)),
        not_after=iso8601(not_after(first)),
        days_left=left,
        is_ca=is_ca(first),
        usages=key_usages(first),
        chain_length=len(certificates),
        bundle=bundle_items(certificates),
        signed_by=signer,
        key_file=subject.key_file,
        key_matches=matches,
        status=status,
        reason=reason,
        notes=notes,
    )
    return entry


def safe_entry(subject: Subject, *, candidates: list, now: datetime.datetime, warn_days: int) -> dict:
    """:func:`certificate_entry`, with a certificate whose extensions cannot be decoded reported as INVALID."""
    try:
        return certificate_entry(subject, candidates=candidates, now=now, warn_days=warn_days)
    except (ValueError, TypeError, AttributeError) as exc:
        # cryptography parses extensions lazily: a malformed or duplicated extension raises only here.
        return invalid_entry(subject.path, "%s: certificate cannot be decoded (%s)" % (subject.path, exc),
                             source=subject.source, kubeconfig_entry=subject.kubeconfig_entry)


def _resolve(reference: str, *, base: str) -> str:
    reference = os.path.expanduser(reference)
    if not os.path.isabs(reference):
        reference = os.path.join(os.path.dirname(base), reference)
    return os.path.normpath(reference)


def _named(items: list, kind: str, *, names: list):
    """``(item, "<kind>/<name>")`` for each cluster or user of a kubeconfig; each name is added to ``names``."""
    for item in items:
        name = item.get("name") or "(unnamed)"
        names.append(name)
        yield item, "%s/%s" % (kind, name)


def _embedded_subject(path: str, label: str, item: dict, key: str) -> Subject:
    """The certificates embedded as ``key`` (base64 PEM) in a cluster or user ``item`` of a kubeconfig."""
    subject = Subject(path=path, source=SOURCE_KUBECONFIG, kubeconfig_entry=label)
    where = "%s (%s %s)" % (path, label, key)
    try:
        subject.certificates = parse_certificate_bytes(decode_embedded(item[key], source=where), source=where)
    except InvalidInputError as exc:
        subject.error = exc.message
    return subject


def examine_kubeconfig(path: str, *, use_yaml: bool = True) -> tuple:
    """``(subjects, report, references)`` of one kubeconfig.

    ``subjects``: one per embedded cluster CA (``cluster/<name>``) and client certificate (``user/<name>``);
    ``report``: cluster and user names, whether credentials are embedded, the files it references, or the
    parse error; ``references``: ``[(certificate file, key file or None)]`` the kubeconfig points at.
    """
    report = {"path": path, "embedded": False, "clusters": [], "users": [], "referenced_files": [], "error": None}
    subjects, references = [], []
    data, problem = read_file(path)
    if data is None:
        report["error"] = "%s %s" % (path, problem)
        return [Subject(path=path, source=SOURCE_KUBECONFIG, error=report["error"])], report, references
    try:
        config = parse_kubeconfig(data.decode("utf-8", errors="replace"), source=path, use_yaml=use_yaml)
    except InvalidInputError as exc:
        report["error"] = exc.message
        return [Subject(path=path, source=SOURCE_KUBECONFIG, error=exc.message)], report, references
    cluster_cas = []
    for cluster, label in _named(config["clusters"], "cluster", names=report["clusters"]):
        if cluster.get("certificate-authority-data"):
            report["embedded"] = True
            subject = _embedded_subject(path, label, cluster, "certificate-authority-data")
            if subject.error is None:
                cluster_cas.append(("%s#%s" % (path, label), subject.certificates[0]))
            subjects.append(subject)
        elif cluster.get("certificate-authority"):
            ca_file = _resolve(cluster["certificate-authority"], base=path)
            report["referenced_files"].append(ca_file)
            references.append((ca_file, None))
    for user, label in _named(config["users"], "user", names=report["users"]):
        if user.get("client-certificate-data"):
            report["embedded"] = True
            subject = _embedded_subject(path, label, user, "client-certificate-data")
            if user.get("client-key-data"):
                subject.key_file = path
                try:
                    subject.key_data = decode_embedded(user["client-key-data"],
                                                       source="%s (%s client-key-data)" % (path, label))
                except InvalidInputError as exc:
                    subject.key_error = exc.message
            elif user.get("client-key"):
                subject.key_file = _resolve(user["client-key"], base=path)
            subjects.append(subject)
        elif user.get("client-certificate"):
            cert_file = _resolve(user["client-certificate"], base=path)
            key_file = _resolve(user["client-key"], base=path) if user.get("client-key") else None
            report["referenced_files"].append(cert_file)
            if key_file:
                report["referenced_files"].append(key_file)
            references.append((cert_file, key_file))
    for subject in subjects:
        subject.ca_candidates = list(cluster_cas)
    return subjects, report, references
