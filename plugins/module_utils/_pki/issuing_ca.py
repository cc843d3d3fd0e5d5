# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# PRIVATE to the kubepki.certs collection.
"""CAs that issue others: reading the ones the operator supplies or a node already has, checking that real
verifiers would accept what they issue, and naming new ones the way k3s does.

Shared by the CA set (``ca_set``) and the CA rotation (``rotation``).
"""

from __future__ import annotations

import datetime

from ansible_collections.kubepki.certs.plugins.module_utils._pki import certs as certs_mod
from ansible_collections.kubepki.certs.plugins.module_utils._pki import keys as keys_mod
from ansible_collections.kubepki.certs.plugins.module_utils._pki.errors import (
    ChainError,
    InvalidInputError,
    KeyMismatchError,
)
from ansible_collections.kubepki.certs.plugins.module_utils._pki.files import read_bytes, read_if_exists


def timestamp_cn(prefix: str, stem: str, now: datetime.datetime) -> str:
    # k3s names its CAs "<program>-<stem>@<unix time>"; keep that so operators recognise them.
    return "%s-%s@%d" % (prefix, stem, int(now.timestamp()))


def load_supplied_ca(cert_path: str, key_path: str | None, *, what: str):
    certificates = certs_mod.load_certificates(read_bytes(cert_path, what="%s certificate" % what), source=cert_path)
    certificate = certificates[0]
    if not certs_mod.is_ca(certificate):
        raise InvalidInputError("%s: the first certificate is not a CA (basicConstraints CA:TRUE missing); "
                                "supply the %s CA certificate" % (cert_path, what), path=cert_path)
    key = None
    if key_path:
        key = keys_mod.load_private_key(read_bytes(key_path, what="%s key" % what), source=key_path)
        if not keys_mod.key_matches_certificate(key, certificate):
            raise KeyMismatchError("%s does not match the first certificate of %s; supply the matching key"
                                   % (key_path, cert_path), path=key_path)
    return certificate, key, certificates[1:]


_ANY_EKU = "2.5.29.37.0"
_SERVER_AUTH = "1.3.6.1.5.5.7.3.1"
_CLIENT_AUTH = "1.3.6.1.5.5.7.3.2"


def validate_issuing_ca(certificate, *, source: str, levels_below: int, now: datetime.datetime) -> None:
    """Refuse a root or intermediate that real verifiers would reject once CAs are issued below it.

    Go (k3s, etcd, the apiserver) and OpenSSL both require a parent that is a CA with keyCertSign, a
    pathlen that leaves room for the CA levels below it, an EKU (if any) that allows server and client
    auth, and a validity period that includes now.
    """
    problems = []
    if not certs_mod.can_sign_certificates(certificate):
        problems.append("it cannot sign certificates (basicConstraints CA:TRUE and keyUsage keyCertSign are required)")
    limit = certs_mod.path_length(certificate)
    if limit is not None and limit < levels_below:
        problems.append("its pathlen %d leaves room for %d CA level(s) below it, the set needs %d"
                        % (limit, limit, levels_below))
    usages = certs_mod.extended_key_usages(certificate)
    if usages is not None and _ANY_EKU not in usages and not (_SERVER_AUTH in usages and _CLIENT_AUTH in usages):
        problems.append("its extendedKeyUsage does not allow both serverAuth and clientAuth, which k3s's chain "
                        "checks and client-certificate verification need (CA certificates normally carry no EKU)")
    if certs_mod.not_before(certificate) > now:
        problems.append("it is not valid before %s" % certs_mod.iso8601(certs_mod.not_before(certificate)))
    if certs_mod.not_after(certificate) <= now:
        problems.append("it expired on %s" % certs_mod.iso8601(certs_mod.not_after(certificate)))
    if problems:
        raise ChainError("%s cannot issue the CA set: %s" % (source, "; ".join(problems)), path=source)


def existing_ca(cert_path: str, key_path: str | None):
    """(certificate, key) found on disk, or (None, None); malformed files raise InvalidInputError."""
    data = read_if_exists(cert_path)
    if data is None:
        return None, None
    certificate = certs_mod.load_certificates(data, source=cert_path)[0]
    key = None
    if key_path:
        key_data = read_if_exists(key_path)
        if key_data is not None:
            key = keys_mod.load_private_key(key_data, source=key_path)
            if not keys_mod.key_matches_certificate(key, certificate):
                raise KeyMismatchError("%s does not match the first certificate of %s; restore the matching key, "
                                       "or remove both files (or set force) to create a new CA"
                                       % (key_path, cert_path), path=key_path)
    return certificate, key
