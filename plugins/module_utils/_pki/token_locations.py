# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# PRIVATE to the kubepki.certs collection.
"""Where a node keeps its join tokens: the layout table's candidate locations, and which of them hold one."""

from __future__ import annotations

import glob
import os

from ansible_collections.kubepki.certs.plugins.module_utils._pki.errors import InvalidInputError
from ansible_collections.kubepki.certs.plugins.module_utils._pki.files import read_bytes
from ansible_collections.kubepki.certs.plugins.module_utils._pki.token_scanners import decode_text, scan


def expand_paths(paths) -> list:
    """Paths in order, glob patterns expanded (sorted); a pattern matching nothing yields nothing."""
    result = []
    for path in paths or ():
        if glob.has_magic(path):
            result.extend(sorted(glob.glob(path)))
        else:
            result.append(path)
    return result


def discover_locations(layout, *, root: str = "") -> list:
    """(kind, path) candidates from the layout table: config files (with drop-ins), env files, unit files,
    the server token files. ``root`` prefixes every path (tests)."""
    def rooted(path):
        return root.rstrip("/") + path if root else path

    candidates = [("config", p) for p in expand_paths([rooted(p) for p in layout.config_files])]
    candidates += [("env", rooted(p)) for p in layout.env_files]
    candidates += [("unit", rooted(p)) for p in layout.unit_files]
    candidates += [("token_file", rooted(p)) for p in (layout.token_file, layout.agent_token_file) if p]
    return candidates


def token_files_on_node(layout, *, root: str = "") -> list:
    """Read-only preflight: the layout's locations that exist and hold a token (or a reference to one).

    Each entry: ``path``, ``kind``, ``keys`` (as written) and ``problem`` (why the file cannot be rewritten,
    or None). Never a value.
    """
    found, seen = [], set()
    for kind, path in discover_locations(layout, root=root):
        real = os.path.realpath(path)
        if real in seen or not os.path.isfile(real):
            continue
        seen.add(real)
        try:
            text = decode_text(read_bytes(real, what="%s file" % kind.replace("_", " ")))
            occurrences = scan(kind, text, path=path, token_env_vars=layout.token_env_vars)
            problem = None
        except InvalidInputError as exc:
            occurrences, problem = [], exc.message
        if occurrences or problem:
            found.append({"path": path, "realpath": real, "kind": kind, "keys": [o.key for o in occurrences],
                          "problem": problem})
    return found
