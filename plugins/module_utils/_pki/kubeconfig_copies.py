# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# PRIVATE to the kubepki.certs collection.
"""Copies of a kubeconfig's client credential (an operator's ``~/.kube/config`` made from ``admin.conf``): find the
user entries that hold an older certificate of the same identity and swap in the current one.

A copy is "the same identity" when one of its users embeds a client certificate with the source's subject and
issuer; only those two values change (every other byte kept), so a merged kubeconfig with other clusters survives.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from ansible_collections.kubepki.certs.plugins.module_utils._pki.certs import load_certificates
from ansible_collections.kubepki.certs.plugins.module_utils._pki.errors import InvalidInputError
from ansible_collections.kubepki.certs.plugins.module_utils._pki.files import PRIVATE_FILE_MODE, file_mode, read_bytes
from ansible_collections.kubepki.certs.plugins.module_utils._pki.kubeconfig import decode_embedded, parse_kubeconfig

REFRESH, CURRENT, MISSING, OTHER = "refresh", "current", "missing", "other"
CERT_FIELD, KEY_FIELD = "client-certificate-data", "client-key-data"


@dataclass
class CopyRefresh:
    path: str
    status: str
    reason: str
    writes: list = field(default_factory=list, repr=False)  # (path, bytes, mode)


def single_user(text: str, path: str) -> dict:
    """The single user of a kubeadm kubeconfig, with its embedded client certificate and key."""
    users = parse_kubeconfig(text, source=path)["users"]
    if len(users) != 1:
        raise InvalidInputError("%s has %d users; a kubeadm kubeconfig has exactly one" % (path, len(users)), path=path)
    user = users[0]
    if not user.get("client-certificate-data") or not user.get("client-key-data"):
        raise InvalidInputError("%s does not embed its client certificate and key (client-certificate-data, "
                                "client-key-data); kubeadm writes them embedded: regenerate it with kubeadm init phase "
                                "kubeconfig" % path, path=path)
    return user


def _identity(cert_data: str, source: str) -> tuple:
    certificate = load_certificates(decode_embedded(cert_data, source=source), source=source)[0]
    return certificate.subject, certificate.issuer


def _swap(text: str, old: str, new: str, path: str) -> str:
    if text.count(old) != 1:
        raise InvalidInputError("%s: a credential value appears %d times; refresh the copy by hand" % (path, text.count(old)),
                                path=path)
    return text.replace(old, new)


def plan_copy_refresh(source_path: str, source_text: str, copy_path: str) -> CopyRefresh:
    """What to do with one copy so that it holds ``source_text``'s credential (the source as it will be)."""
    if not os.path.exists(copy_path):
        return CopyRefresh(copy_path, MISSING, "%s does not exist" % copy_path)
    source_user = single_user(source_text, source_path)
    new_cert, new_key = source_user[CERT_FIELD], source_user[KEY_FIELD]
    identity = _identity(new_cert, source_path)
    text = read_bytes(copy_path, what="kubeconfig copy").decode("utf-8")
    for user in parse_kubeconfig(text, source=copy_path)["users"]:
        old_cert, old_key = user.get(CERT_FIELD), user.get(KEY_FIELD)
        if not old_cert or not old_key:
            continue
        if old_cert == new_cert and old_key == new_key:
            return CopyRefresh(copy_path, CURRENT, "holds the current credential of %s" % source_path)
        if _identity(old_cert, copy_path) == identity:
            new_text = _swap(_swap(text, old_cert, new_cert, copy_path), old_key, new_key, copy_path)
            mode = file_mode(copy_path) or PRIVATE_FILE_MODE
            return CopyRefresh(copy_path, REFRESH, "held an older credential of %s" % source_path,
                               [(copy_path, new_text.encode("utf-8"), mode)])
    return CopyRefresh(copy_path, OTHER, "holds no credential of %s's identity; left alone" % source_path)
