# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# PRIVATE to the kubepki.certs collection.
"""Reading kubeconfigs: the clusters (CA data, CA file, server) and users (client certificate and key,
embedded or as files) of a kubeconfig, as plain data.

PyYAML reads them when it is importable; otherwise a line reader good for what kubectl, client-go,
kubeadm, k3s and RKE write (block-style YAML). JSON kubeconfigs are read with ``json``.
"""

from __future__ import annotations

import base64
import binascii
import json
import re

from ansible_collections.kubepki.certs.plugins.module_utils._pki.errors import InvalidInputError

try:
    import yaml
except ImportError:  # the line reader below takes over; PyYAML is optional on nodes
    yaml = None

CLUSTER_KEYS = ("certificate-authority-data", "certificate-authority", "server")
USER_KEYS = ("client-certificate-data", "client-key-data", "client-certificate", "client-key")

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
