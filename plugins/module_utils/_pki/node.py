# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# PRIVATE to the kubepki.certs collection.
"""What a node is, read in one pass: role, binary version, live CA fingerprints, token locations, space.

Pure functions over the file system and over the text the binary printed; the module runs the binary.
"""

from __future__ import annotations

import hashlib
import os
import re

from ansible_collections.kubepki.certs.plugins.module_utils._pki import certs as certs_mod
from ansible_collections.kubepki.certs.plugins.module_utils._pki.chain import hash_ca
from ansible_collections.kubepki.certs.plugins.module_utils._pki.errors import InvalidInputError
from ansible_collections.kubepki.certs.plugins.module_utils._pki.files import read_if_exists
from ansible_collections.kubepki.certs.plugins.module_utils._pki.token_locations import token_files_on_node

_VERSION = re.compile(r"\bv?(\d+)\.(\d+)\.(\d+)(?:[-+][0-9A-Za-z.+-]*)?")


def parse_version(text: str) -> dict:
    """``k3s version v1.31.6+k3s1 (abc)`` → {"version": "v1.31.6+k3s1", "tuple": [1, 31, 6]}."""
    match = _VERSION.search(text or "")
    if not match:
        raise InvalidInputError("cannot find a version in the binary's output: %r" % (text or "")[:200])
    return {"version": match.group(0), "tuple": [int(match.group(i)) for i in (1, 2, 3)]}


def version_at_least(version: list, minimum: str) -> bool:
    wanted = parse_version(minimum)["tuple"]
    return list(version) >= wanted


def live_ca_fingerprints(layout) -> dict:
    """SHA-256 fingerprint of the first certificate of every live CA bundle (absent ones are skipped)."""
    result = {}
    for entry in layout.cas:
        path = layout.tls_path(entry.cert)
        data = read_if_exists(path)
        if data is None:
            continue
        result[entry.name] = certs_mod.fingerprint_sha256(certs_mod.load_certificates(data, source=path)[0])
    return result


def detect_role(layout) -> str:
    return "server" if os.path.isdir(layout.tls_dir) else "agent"


def describe_node(layout, *, version_text: str | None, minimum_version: str | None) -> dict:
    role = detect_role(layout)
    info = {
        "role": role,
        "layout": layout.as_dict(),
        "service": layout.server_unit if role == "server" else layout.agent_unit,
        "token_locations": token_files_on_node(layout),
        "ca_fingerprints": live_ca_fingerprints(layout) if role == "server" else {},
        "token_ca_hash": None,
        "server_ca_sha256": None,
        "version": None,
        "version_ok": None,
    }
    server_ca = read_if_exists(layout.tls_path("server-ca.crt")) if role == "server" else None
    if server_ca is not None:
        info["token_ca_hash"] = hash_ca(server_ca)
    # The server CA bundle this node uses now (agents download it at every start): after a rotation a
    # node whose copy differs from the new bundle still needs its restart.
    in_use = server_ca if role == "server" else (
        read_if_exists(os.path.join(layout.agent_dir, "server-ca.crt")) if layout.agent_dir else None)
    if in_use is not None:
        info["server_ca_sha256"] = hashlib.sha256(in_use).hexdigest()
    if version_text is not None:
        parsed = parse_version(version_text)
        info["version"] = parsed["version"]
        info["version_ok"] = version_at_least(parsed["tuple"], minimum_version) if minimum_version else True
    try:
        stats = os.statvfs(layout.data_dir if os.path.isdir(layout.data_dir) else "/")
        info["free_bytes"] = stats.f_bavail * stats.f_frsize
    except OSError:
        info["free_bytes"] = None
    return info
