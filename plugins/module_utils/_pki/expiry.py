# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# PRIVATE to the kubepki.certs collection.
"""Expiry report: ``k3s certificate check`` / ``kubeadm certs check-expiration`` for every distribution.

``check_expiration(layout, ...)`` examines every certificate file in the layout's scan directories, every
kubeconfig the layout knows (embedded client certificates and CA data, or the files it references) and
any extra paths, and returns plain data: one entry per certificate, sorted by days left, and a summary.
Nothing here raises for a bad file: a file that cannot be read or parsed is an ``INVALID`` entry.
Key material is read only to compare public keys; it never leaves this module.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import json
import math
import os
import re
from dataclasses import dataclass, field

from ansible_collections.kubepki.certs.plugins.module_utils._pki.certs import (
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
from ansible_collections.kubepki.certs.plugins.module_utils._pki.keys import (
    key_matches_certificate,
    load_private_key,
)

try:
    import yaml
except ImportError:  # the regex reader below takes over; PyYAML is optional on nodes
    yaml = None

STATUS_OK = "OK"
STATUS_WARNING = "WARNING"
STATUS_EXPIRED = "EXPIRED"
STATUS_NOT_YET_VALID = "NOT_YET_VALID"
STATUS_MISSING = "MISSING"
STATUS_INVALID = "INVALID"
STATUSES = (STATUS_MISSING, STATUS_INVALID, STATUS_EXPIRED, STATUS_NOT_YET_VALID, STATUS_WARNING, STATUS_OK)
# Statuses that fail a threshold check whatever the days left.
FAILING_STATUSES = (STATUS_EXPIRED, STATUS_NOT_YET_VALID, STATUS_INVALID)

SOURCE_CERTIFICATE = "certificate"
SOURCE_KUBECONFIG = "kubeconfig"

SELF_SIGNED = "self"

# File names (in directories given by the user) that may hold a kubeconfig.
KUBECONFIG_SUFFIXES = (".kubeconfig", ".conf", ".yaml", ".yml")
# Certificate suffixes accepted in user-given directories besides the layout's own, and key/CSR names skipped there.
EXTRA_CERT_SUFFIXES = (".crt", ".pem", ".cer")
EXTRA_SKIP_SUFFIXES = ("-key.pem", "-csr.pem", ".key.pem", ".csr.pem")

CLUSTER_KEYS = ("certificate-authority-data", "certificate-authority", "server")
USER_KEYS = ("client-certificate-data", "client-key-data", "client-certificate", "client-key")

_SECONDS_PER_DAY = 86400


# ---------------------------------------------------------------------------------------------------------------
# Small pure helpers
# ---------------------------------------------------------------------------------------------------------------

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


def sort_key(entry: dict) -> tuple:
    """MISSING first, then INVALID, then by days left ascending; ties by path and kubeconfig entry."""
    rank = {STATUS_MISSING: 0, STATUS_INVALID: 1}.get(entry["status"], 2)
    left = entry.get("days_left")
    return (rank, left if left is not None else 0, entry["path"], entry.get("kubeconfig_entry") or "")


def sort_entries(entries: list) -> list:
    return sorted(entries, key=sort_key)


def summarize(entries: list, *, warn_days: int | None = None, now: datetime.datetime | None = None) -> dict:
    """Counts per status and the soonest expiry among the entries that have a notAfter."""
    counts = dict((status, 0) for status in STATUSES)
    for entry in entries:
        counts[entry["status"]] = counts.get(entry["status"], 0) + 1
    dated = [entry for entry in entries if entry.get("days_left") is not None]
    soonest = None
    if dated:
        first = min(dated, key=lambda e: (e["days_left"], e["not_after"], e["path"]))
        soonest = dict((name, first.get(name)) for name in
                       ("path", "kubeconfig_entry", "subject", "not_after", "days_left", "status"))
    summary = {"total": len(entries), "counts": counts, "soonest": soonest}
    if warn_days is not None:
        summary["warn_days"] = warn_days
    if now is not None:
        summary["checked_at"] = iso8601(now)
    return summary


def threshold_failures(entries: list, *, fail_days: int) -> list:
    """Entries that fail a threshold check: EXPIRED, NOT_YET_VALID, INVALID, or fewer than ``fail_days`` left."""
    failing = []
    for entry in entries:
        left = entry.get("days_left")
        if entry["status"] in FAILING_STATUSES or (left is not None and left < fail_days):
            failing.append(entry)
    return failing


def unchained_leaves(entries: list) -> list:
    """Leaf certificates (not CAs, not self-signed) that no CA examined on the node issued."""
    return [entry for entry in entries
            if entry.get("is_ca") is False and entry.get("signed_by") is None and entry["status"] != STATUS_INVALID
            and entry["status"] != STATUS_MISSING]


def describe_failures(failing: list, *, fail_days: int) -> str:
    """One message naming every failing file, for fail_json and roles."""
    parts = []
    for entry in failing:
        name = entry["path"]
        if entry.get("kubeconfig_entry"):
            name += "#%s" % entry["kubeconfig_entry"]
        if entry["status"] == STATUS_INVALID:
            parts.append("%s: INVALID (%s)" % (name, entry.get("reason")))
        else:
            parts.append("%s: %s, %s days left" % (name, entry["status"], entry.get("days_left")))
    return "%d certificate%s expired, invalid, not yet valid or with fewer than %d days left: %s" % (
        len(failing), "" if len(failing) == 1 else "s", fail_days, "; ".join(parts))


# ---------------------------------------------------------------------------------------------------------------
# Kubeconfig reading (PyYAML when importable, else a line reader good for what kubectl/client-go/kubeadm write)
# ---------------------------------------------------------------------------------------------------------------

_TOP_KEY = re.compile(r"^([A-Za-z_][\w.-]*)\s*:(.*)$")
_ITEM_LINE = re.compile(r"^(\s*)(-\s+)?([A-Za-z_][\w.-]*)\s*:(?:\s+(.*?))?\s*$")
_BASE64_CONTINUATION = re.compile(r"^\s+([A-Za-z0-9+/=]+)\s*$")


def _unquote(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in ("'", '"'):
        return value[1:-1]
    # An unquoted plain scalar ends before " #" (a comment).
    hash_at = value.find(" #")
    if hash_at >= 0:
        value = value[:hash_at].rstrip()
    if value in ("", "~", "null", "Null", "NULL"):
        return None
    return value


def _parse_kubeconfig_lines(text: str) -> dict:
    """Read ``clusters`` and ``users`` from block-style YAML without a YAML library."""
    sections = {"clusters": [], "users": []}
    section = None
    current = None
    item_indent = None
    item_key_column = None
    last_key = None
    last_column = None
    for raw in text.splitlines():
        line = raw.rstrip()
        stripped = line.lstrip()
        if not stripped or stripped.startswith("#") or stripped in ("---", "..."):
            continue
        if not line[0].isspace() and not line.startswith("-"):
            match = _TOP_KEY.match(line)
            section = match.group(1) if match else None
            current, item_indent, item_key_column, last_key = None, None, None, None
            continue
        if section not in sections:
            continue
        match = _ITEM_LINE.match(line)
        if match is None:
            continuation = _BASE64_CONTINUATION.match(line)
            if (continuation and current is not None and last_key is not None
                    and len(line) - len(stripped) > last_column):
                current[last_key] = (current.get(last_key) or "") + continuation.group(1)
            continue
        indent = len(match.group(1))
        dash = match.group(2) or ""
        key = match.group(3)
        value = _unquote(match.group(4))
        column = indent + len(dash)
        last_key = None
        if dash and (item_indent is None or indent == item_indent):
            item_indent = indent
            item_key_column = column
            current = {}
            sections[section].append(current)
        if current is None:
            continue
        if key == "name" and column == item_key_column:
            current["name"] = value
        elif key in CLUSTER_KEYS + USER_KEYS and column > item_key_column and key not in current:
            current[key] = value
            last_key, last_column = key, column
    clusters = [{"name": item.get("name")} for item in sections["clusters"]]
    for target, item in zip(clusters, sections["clusters"]):
        target.update((key, item.get(key)) for key in CLUSTER_KEYS)
    users = [{"name": item.get("name")} for item in sections["users"]]
    for target, item in zip(users, sections["users"]):
        target.update((key, item.get(key)) for key in USER_KEYS)
    return {"clusters": clusters, "users": users}


def _from_structure(data, *, source: str) -> dict:
    if not isinstance(data, dict):
        raise InvalidInputError("%s is not a kubeconfig (top level is not a mapping)" % source, path=source)
    result = {}
    for section, inner, keys in (("clusters", "cluster", CLUSTER_KEYS), ("users", "user", USER_KEYS)):
        items = []
        for item in data.get(section) or []:
            if not isinstance(item, dict):
                continue
            body = item.get(inner) if isinstance(item.get(inner), dict) else {}
            entry = {"name": None if item.get("name") is None else str(item.get("name"))}
            for key in keys:
                value = body.get(key)
                entry[key] = None if value is None else str(value)
            items.append(entry)
        result[section] = items
    return result


def parse_kubeconfig(text: str, *, source: str = "kubeconfig", use_yaml: bool = True) -> dict:
    """``{"clusters": [{name, certificate-authority-data, ...}], "users": [{name, client-certificate-data, ...}]}``.

    JSON is read with ``json``; YAML with PyYAML when it is importable and ``use_yaml`` is true, otherwise
    with a line reader for block-style YAML (what kubectl, client-go, kubeadm, k3s and RKE write).
    Raises InvalidInputError when the text is not a kubeconfig at all.
    """
    if text.lstrip().startswith("{"):
        try:
            return _from_structure(json.loads(text), source=source)
        except ValueError:
            pass  # YAML flow mappings also start with "{"
    if use_yaml and yaml is not None:
        loader = getattr(yaml, "CSafeLoader", None) or yaml.SafeLoader
        try:
            data = yaml.load(text, Loader=loader)  # nosec - a safe loader
        except yaml.YAMLError as exc:
            problem = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise InvalidInputError("%s is not valid YAML (%s)" % (source, problem), path=source) from None
        return _from_structure(data, source=source)
    if not re.search(r"^(clusters|users|apiVersion|kind)\s*:", text, re.MULTILINE):
        raise InvalidInputError("%s is not a kubeconfig (no clusters, users, apiVersion or kind key)" % source,
                                path=source)
    return _parse_kubeconfig_lines(text)


def looks_like_kubeconfig(data: bytes) -> bool:
    """Cheap test used for files of unknown type given by the user."""
    if b"-----BEGIN " in data:
        return False
    return bool(re.search(rb"^(clusters|users)\s*:", data, re.MULTILINE)
                or re.search(rb'"(clusters|users)"\s*:', data))


def decode_embedded(value: str, *, source: str) -> bytes:
    """Base64 ``*-data`` value of a kubeconfig → the PEM bytes it carries."""
    try:
        return base64.b64decode("".join(value.split()), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInputError("%s: value is not valid base64" % source, path=source) from None


# ---------------------------------------------------------------------------------------------------------------
# File discovery
# ---------------------------------------------------------------------------------------------------------------

def _norm(path: str) -> str:
    return os.path.normpath(os.path.abspath(os.path.expanduser(path)))


def is_certificate_name(name: str, *, patterns: tuple, skip_suffixes: tuple = ()) -> bool:
    if name.startswith("."):
        return False  # temp files of atomic writes, editor backups
    if any(name.endswith(suffix) for suffix in skip_suffixes):
        return False
    return any(name.endswith(pattern) for pattern in patterns)


def key_path_for(cert_path: str, *, key_suffix_rules: tuple) -> str | None:
    """The sibling key file of a certificate per the layout's (cert suffix, key suffix) rules, if it exists."""
    for cert_suffix, key_suffix in key_suffix_rules:
        if cert_path.endswith(cert_suffix):
            candidate = cert_path[:-len(cert_suffix)] + key_suffix
            if candidate != cert_path and os.path.isfile(candidate):
                return candidate
    return None


def _list_dir(directory: str) -> list:
    return sorted(os.listdir(directory))


@dataclass
class _Plan:
    """What to examine: certificate files, kubeconfigs, problems found while looking."""

    cert_files: dict = field(default_factory=dict)      # path -> {"key_file": str | None, "referenced_by": str | None}
    kubeconfigs: list = field(default_factory=list)
    scanned_dirs: list = field(default_factory=list)
    problems: list = field(default_factory=list)        # (path, reason) for INVALID entries
    absent: list = field(default_factory=list)          # (path, reason) for MISSING entries


def _add_cert(plan: _Plan, path: str, *, key_file: str | None = None, referenced_by: str | None = None) -> None:
    if path not in plan.cert_files:
        plan.cert_files[path] = {"key_file": key_file, "referenced_by": referenced_by, "key_given": key_file is not None}


def _scan_dir(plan: _Plan, directory: str, *, patterns: tuple, skip_suffixes: tuple, kubeconfigs_too: bool) -> None:
    try:
        names = _list_dir(directory)
    except OSError as exc:
        plan.problems.append((directory, "directory cannot be listed: %s" % (exc.strerror or exc)))
        return
    plan.scanned_dirs.append(directory)
    for name in names:
        path = os.path.join(directory, name)
        if not os.path.isfile(path):
            continue
        if is_certificate_name(name, patterns=patterns, skip_suffixes=skip_suffixes):
            _add_cert(plan, path)
        elif kubeconfigs_too and not name.startswith(".") and name.endswith(KUBECONFIG_SUFFIXES):
            try:
                with open(path, "rb") as handle:
                    head = handle.read(65536)
            except OSError:
                continue
            if looks_like_kubeconfig(head) and path not in plan.kubeconfigs:
                plan.kubeconfigs.append(path)


def plan_files(layout, *, paths=(), only_paths: bool = False) -> _Plan:
    """Which files to examine: the layout's scan dirs and kubeconfigs (unless ``only_paths``) plus ``paths``."""
    plan = _Plan()
    skip = tuple(layout.extra.get("skip_suffixes", ()))
    if not only_paths:
        for directory in layout.cert_scan_dirs:
            directory = _norm(directory)
            if os.path.isdir(directory) and directory not in plan.scanned_dirs:
                _scan_dir(plan, directory, patterns=tuple(layout.cert_patterns), skip_suffixes=skip,
                          kubeconfigs_too=False)
        for kubeconfig in layout.kubeconfigs:
            kubeconfig = _norm(kubeconfig)
            if os.path.isfile(kubeconfig) and kubeconfig not in plan.kubeconfigs:
                plan.kubeconfigs.append(kubeconfig)
        # A tls dir that holds CAs but none of the leaves is a CA set staged before the first start (the
        # distribution issues its leaves at start): only its CAs can be missing then.
        leaves_present = any(os.path.lexists(_norm(layout.tls_path(leaf.cert))) for leaf in layout.leaves)
        for relative, what in expected_cert_files(layout, include_leaves=leaves_present):
            path = _norm(layout.tls_path(relative))
            directory = os.path.dirname(path)
            if directory in plan.scanned_dirs and not os.path.lexists(path):
                plan.absent.append((path, "the %s layout expects %s here, but the file is absent"
                                    % (layout.distribution, what)))
    patterns = tuple(layout.cert_patterns) + EXTRA_CERT_SUFFIXES
    for given in paths or ():
        path = _norm(given)
        if os.path.isdir(path):
            if path in plan.scanned_dirs:
                continue
            _scan_dir(plan, path, patterns=patterns, skip_suffixes=skip + EXTRA_SKIP_SUFFIXES, kubeconfigs_too=True)
        elif os.path.isfile(path):
            try:
                with open(path, "rb") as handle:
                    head = handle.read(65536)
            except OSError:
                head = b""  # reported as INVALID when examined as a certificate
            if looks_like_kubeconfig(head):
                if path not in plan.kubeconfigs:
                    plan.kubeconfigs.append(path)
            else:
                _add_cert(plan, path)
        else:
            plan.absent.append((path, "given in paths, but it does not exist"))
    return plan


def expected_cert_files(layout, *, include_leaves: bool = True) -> list:
    """``(path relative to the tls dir, description)`` of every certificate file the layout expects."""
    expected = [(ca.cert, "the %s CA certificate" % ca.name) for ca in layout.cas]
    if include_leaves:
        expected += [(leaf.cert, "a leaf certificate issued by %s" % leaf.ca) for leaf in layout.leaves]
    return expected


# ---------------------------------------------------------------------------------------------------------------
# Examining certificates
# ---------------------------------------------------------------------------------------------------------------

@dataclass
class _Subject:
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


def _read(path: str) -> tuple:
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


def _load_subject_certificates(subject: _Subject, data: bytes | None, read_error: str | None) -> None:
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


class _CAIndex:
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


def _key_match(subject: _Subject, certificate) -> tuple:
    """``(key_matches, note)``: None when there is no key to compare."""
    if subject.key_error is not None:
        return None, subject.key_error
    data = subject.key_data
    if data is None and subject.key_file is not None:
        data, problem = _read(subject.key_file)
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


def certificate_entry(subject: _Subject, *, candidates: list, now: datetime.datetime, warn_days: int) -> dict:
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
        signed_by=signer,
        key_file=subject.key_file,
        key_matches=matches,
        status=status,
        reason=reason,
        notes=notes,
    )
    return entry


def _safe_entry(subject: _Subject, *, candidates: list, now: datetime.datetime, warn_days: int) -> dict:
    """:func:`certificate_entry`, with a certificate whose extensions cannot be decoded reported as INVALID."""
    try:
        return certificate_entry(subject, candidates=candidates, now=now, warn_days=warn_days)
    except (ValueError, TypeError, AttributeError) as exc:
        # cryptography parses extensions lazily: a malformed or duplicated extension raises only here.
        return invalid_entry(subject.path, "%s: certificate cannot be decoded (%s)" % (subject.path, exc),
                             source=subject.source, kubeconfig_entry=subject.kubeconfig_entry)


# ---------------------------------------------------------------------------------------------------------------
# Kubeconfigs
# ---------------------------------------------------------------------------------------------------------------

def _resolve(reference: str, *, base: str) -> str:
    reference = os.path.expanduser(reference)
    if not os.path.isabs(reference):
        reference = os.path.join(os.path.dirname(base), reference)
    return os.path.normpath(reference)


def examine_kubeconfig(path: str, *, use_yaml: bool = True) -> tuple:
    """``(subjects, report, references)`` of one kubeconfig.

    ``subjects``: one per embedded cluster CA (``cluster/<name>``) and client certificate (``user/<name>``);
    ``report``: cluster and user names, whether credentials are embedded, the files it references, or the
    parse error; ``references``: ``[(certificate file, key file or None)]`` the kubeconfig points at.
    """
    report = {"path": path, "embedded": False, "clusters": [], "users": [], "referenced_files": [], "error": None}
    subjects, references = [], []
    data, problem = _read(path)
    if data is None:
        report["error"] = "%s %s" % (path, problem)
        return [_Subject(path=path, source=SOURCE_KUBECONFIG, error=report["error"])], report, references
    try:
        config = parse_kubeconfig(data.decode("utf-8", errors="replace"), source=path, use_yaml=use_yaml)
    except InvalidInputError as exc:
        report["error"] = exc.message
        return [_Subject(path=path, source=SOURCE_KUBECONFIG, error=exc.message)], report, references
    cluster_cas = []
    for cluster in config["clusters"]:
        name = cluster.get("name") or "(unnamed)"
        report["clusters"].append(name)
        label = "cluster/%s" % name
        if cluster.get("certificate-authority-data"):
            report["embedded"] = True
            subject = _Subject(path=path, source=SOURCE_KUBECONFIG, kubeconfig_entry=label)
            where = "%s (%s certificate-authority-data)" % (path, label)
            try:
                pem = decode_embedded(cluster["certificate-authority-data"], source=where)
                subject.certificates = parse_certificate_bytes(pem, source=where)
            except InvalidInputError as exc:
                subject.error = exc.message
            else:
                cluster_cas.append(("%s#%s" % (path, label), subject.certificates[0]))
            subjects.append(subject)
        elif cluster.get("certificate-authority"):
            ca_file = _resolve(cluster["certificate-authority"], base=path)
            report["referenced_files"].append(ca_file)
            references.append((ca_file, None))
    for user in config["users"]:
        name = user.get("name") or "(unnamed)"
        report["users"].append(name)
        label = "user/%s" % name
        if user.get("client-certificate-data"):
            report["embedded"] = True
            subject = _Subject(path=path, source=SOURCE_KUBECONFIG, kubeconfig_entry=label)
            where = "%s (%s client-certificate-data)" % (path, label)
            try:
                pem = decode_embedded(user["client-certificate-data"], source=where)
                subject.certificates = parse_certificate_bytes(pem, source=where)
            except InvalidInputError as exc:
                subject.error = exc.message
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


# ---------------------------------------------------------------------------------------------------------------
# The check
# ---------------------------------------------------------------------------------------------------------------

def check_expiration(layout, *, paths=(), only_paths: bool = False, warn_days: int = 30,
                     now: datetime.datetime | None = None, use_yaml: bool = True) -> dict:
    """Examine the layout's certificates, kubeconfigs and ``paths``; return entries, summary and kubeconfigs.

    ``{"certificates": [entry, ...], "summary": {...}, "kubeconfigs": [...], "scanned_dirs": [...]}``;
    entries are sorted by :func:`sort_key`. Never raises for a bad file.
    """
    moment = as_utc(now)
    plan = plan_files(layout, paths=paths, only_paths=only_paths)

    # Kubeconfigs first: the certificate files they reference join the certificate files.
    kube_subjects, kube_reports = [], []
    for kubeconfig in plan.kubeconfigs:
        subjects, report, references = examine_kubeconfig(kubeconfig, use_yaml=use_yaml)
        kube_subjects.extend(subjects)
        kube_reports.append(report)
        for cert_path, key_path in references:
            if os.path.isfile(cert_path):
                _add_cert(plan, cert_path, key_file=key_path if key_path and os.path.isfile(key_path) else None,
                          referenced_by=kubeconfig)
        for referenced in report["referenced_files"]:
            if not os.path.exists(referenced):
                plan.absent.append((referenced, "referenced by kubeconfig %s, but the file is absent" % kubeconfig))

    skip_keys = tuple(layout.key_suffix_rules)
    file_subjects = []
    for path, info in plan.cert_files.items():
        subject = _Subject(path=path, source=SOURCE_CERTIFICATE)
        data, problem = _read(path)
        _load_subject_certificates(subject, data, problem)
        if info.get("key_given"):
            subject.key_file = info["key_file"]
        else:
            subject.key_file = key_path_for(path, key_suffix_rules=skip_keys)
        if subject.key_file is None and data is not None and b"PRIVATE KEY-----" in data:
            subject.key_file = path  # certificate and key in one file (the kubelet's kubelet-client-current.pem)
        if info.get("referenced_by"):
            subject.notes.append("referenced by kubeconfig %s" % info["referenced_by"])
        file_subjects.append(subject)

    preferred = [_norm(layout.tls_path(ca.cert)) for ca in layout.cas]
    for extra in (layout.intermediate_ca, layout.root_ca):
        if extra:
            preferred += [_norm(layout.tls_path(name)) for name in extra if not name.endswith(".key")]
    index = _CAIndex(preferred=tuple(preferred), tls_dir=_norm(layout.tls_dir))
    for subject in file_subjects:
        if subject.certificates:
            index.add_file(subject.path, subject.certificates[0])

    entries = []
    for subject in file_subjects:
        entries.append(_safe_entry(subject, candidates=index.ordered_for(os.path.dirname(subject.path)),
                                   now=moment, warn_days=warn_days))
    for subject in kube_subjects:
        entries.append(_safe_entry(subject, candidates=index.ordered_for(None), now=moment, warn_days=warn_days))
    for path, reason in plan.problems:
        entries.append(invalid_entry(path, reason))
    seen_absent = set()
    for path, reason in plan.absent:
        if path not in seen_absent and path not in plan.cert_files:
            seen_absent.add(path)
            entries.append(missing_entry(path, reason))

    entries = sort_entries(entries)
    return {
        "certificates": entries,
        "summary": summarize(entries, warn_days=warn_days, now=moment),
        "kubeconfigs": kube_reports,
        "scanned_dirs": list(plan.scanned_dirs),
    }
