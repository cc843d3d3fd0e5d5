# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# PRIVATE to the kubepki.certs collection.
"""Which files an expiry check examines: the layout's certificate directories and kubeconfigs, the files
the layout expects (absent ones become MISSING entries), and the paths the user gives."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from ansible_collections.kubepki.certs.plugins.module_utils._pki.kubeconfig import looks_like_kubeconfig

# File names (in directories given by the user) that may hold a kubeconfig.
KUBECONFIG_SUFFIXES = (".kubeconfig", ".conf", ".yaml", ".yml")
# Certificate suffixes accepted in user-given directories besides the layout's own, and key/CSR names skipped there.
EXTRA_CERT_SUFFIXES = (".crt", ".pem", ".cer")
EXTRA_SKIP_SUFFIXES = ("-key.pem", "-csr.pem", ".key.pem", ".csr.pem")


def normalize_path(path: str) -> str:
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
class ExpiryFiles:
    """What to examine: certificate files, kubeconfigs, problems found while looking."""

    cert_files: dict = field(default_factory=dict)      # path -> {"key_file": str | None, "referenced_by": str | None}
    kubeconfigs: list = field(default_factory=list)
    scanned_dirs: list = field(default_factory=list)
    problems: list = field(default_factory=list)        # (path, reason) for INVALID entries
    absent: list = field(default_factory=list)          # (path, reason) for MISSING entries


def add_certificate_file(plan: ExpiryFiles, path: str, *, key_file: str | None = None, referenced_by: str | None = None) -> None:
    if path not in plan.cert_files:
        plan.cert_files[path] = {"key_file": key_file, "referenced_by": referenced_by, "key_given": key_file is not None}


def _scan_dir(plan: ExpiryFiles, directory: str, *, patterns: tuple, skip_suffixes: tuple, kubeconfigs_too: bool) -> None:
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
            add_certificate_file(plan, path)
        elif kubeconfigs_too and not name.startswith(".") and name.endswith(KUBECONFIG_SUFFIXES):
            try:
                with open(path, "rb") as handle:
                    head = handle.read(65536)
            except OSError:
                continue
            if looks_like_kubeconfig(head) and path not in plan.kubeconfigs:
                plan.kubeconfigs.append(path)


def plan_files(layout, *, paths=(), only_paths: bool = False) -> ExpiryFiles:
    """Which files to examine: the layout's scan dirs and kubeconfigs (unless ``only_paths``) plus ``paths``."""
    plan = ExpiryFiles()
    skip = tuple(layout.extra.get("skip_suffixes", ()))
    if not only_paths:
        for directory in layout.cert_scan_dirs:
            directory = normalize_path(directory)
            if os.path.isdir(directory) and directory not in plan.scanned_dirs:
                _scan_dir(plan, directory, patterns=tuple(layout.cert_patterns), skip_suffixes=skip,
                          kubeconfigs_too=False)
        for kubeconfig in layout.kubeconfigs:
            kubeconfig = normalize_path(kubeconfig)
            if os.path.isfile(kubeconfig) and kubeconfig not in plan.kubeconfigs:
                plan.kubeconfigs.append(kubeconfig)
        # A tls dir that holds CAs but none of the leaves is a CA set staged before the first start (the
        # distribution issues its leaves at start): only its CAs can be missing then.
        leaves_present = any(os.path.lexists(normalize_path(layout.tls_path(leaf.cert))) for leaf in layout.leaves)
        for relative, what in expected_cert_files(layout, include_leaves=leaves_present):
            path = normalize_path(layout.tls_path(relative))
            directory = os.path.dirname(path)
            if directory in plan.scanned_dirs and not os.path.lexists(path):
                plan.absent.append((path, "the %s layout expects %s here, but the file is absent"
                                    % (layout.distribution, what)))
    patterns = tuple(layout.cert_patterns) + EXTRA_CERT_SUFFIXES
    for given in paths or ():
        path = normalize_path(given)
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
                add_certificate_file(plan, path)
        else:
            plan.absent.append((path, "given in paths, but it does not exist"))
    return plan


def expected_cert_files(layout, *, include_leaves: bool = True) -> list:
    """``(path relative to the tls dir, description)`` of every certificate file the layout expects."""
    expected = [(ca.cert, "the %s CA certificate" % ca.name) for ca in layout.cas]
    if include_leaves:
        expected += [(leaf.cert, "a leaf certificate issued by %s" % leaf.ca) for leaf in layout.leaves]
    return expected
