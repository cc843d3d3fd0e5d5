# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# PRIVATE to the kubepki.certs collection.
"""Health gates of a rolling restart, judged from what the node printed and served.

Pure functions: the module runs kubectl and fetches /cacerts, these decide and explain. Every problem is a
sentence naming the node or the check, so a stopped run says which node failed and why.
"""

from __future__ import annotations

import hashlib
import json
import re


def parse_nodes(text: str) -> dict:
    """``kubectl get nodes -o json`` → {name: (ready: bool, reason: str)}; raises ValueError on bad JSON."""
    data = json.loads(text) if isinstance(text, (str, bytes)) else (text or {})
    if not isinstance(data, dict) or not isinstance(data.get("items") or [], list):
        raise ValueError("not a node list: %s" % type(data).__name__)
    nodes = {}
    for item in data.get("items") or []:
        if not isinstance(item, dict):
            raise ValueError("node list item is not an object")
        name = (item.get("metadata") or {}).get("name")
        if not name:
            continue
        ready = next((c for c in (item.get("status") or {}).get("conditions") or [] if c.get("type") == "Ready"), None)
        if ready is None:
            nodes[name] = (False, "no Ready condition yet")
        else:
            is_ready = ready.get("status") == "True"
            reason = "" if is_ready else "Ready=%s %s %s" % (
                ready.get("status"), ready.get("reason") or "", ready.get("message") or "")
            nodes[name] = (is_ready, reason.strip())
    return nodes


def ready_node_names(text) -> list:
    """Sorted names of the nodes whose Ready condition is True."""
    if isinstance(text, (str, bytes)) and not text.strip():
        return []
    return sorted(name for name, (ready, _reason) in parse_nodes(text).items() if ready)


# "[-]etcd failed: reason withheld" in readyz's verbose body; kubectl prints it Go-quoted on one line ("\\n")
_FAILED_CHECK = re.compile(r"\[-\]([^\s\\\[]+) failed(?:: ([^\\\n\[]*))?")


def readyz_problem(rc: int, out: str, err: str) -> str | None:
    """None when readyz answered ok; else the failed checks by name (the body lists ~25, a cut line would lose
    the one that failed), or kubectl's last error line."""
    if rc == 0 and out.strip().startswith("ok"):
        return None
    text = (err or "") + "\n" + (out or "")
    failed = ["%s (%s)" % (name, reason.strip()) if reason and reason.strip() else name
              for name, reason in _FAILED_CHECK.findall(text)]
    if failed:
        return "readyz: rc %d: failed checks: %s" % (rc, ", ".join(failed))
    detail = text.strip().splitlines()
    return "readyz: rc %d%s" % (rc, (": " + detail[-1][:300]) if detail else "")


def nodes_problems(rc: int, out: str, err: str, required: list) -> list:
    """Which required nodes are not Ready, each with its condition (or why the list could not be read)."""
    if not required:
        return []
    if rc != 0:
        detail = (err or out or "").strip().splitlines()
        return ["nodes: kubectl get nodes failed (rc %d)%s" % (rc, (": " + detail[-1][:300]) if detail else "")]
    try:
        nodes = parse_nodes(out)
    except ValueError as exc:
        return ["nodes: kubectl printed no JSON (%s)" % exc]
    problems = []
    for name in required:
        if name not in nodes:
            problems.append("%s: not registered" % name)
        elif not nodes[name][0]:
            problems.append("%s: not Ready (%s)" % (name, nodes[name][1]))
    return problems


def cacerts_problem(body: bytes | None, error: str | None, expected_sha256: str | None) -> str | None:
    """The served CA bundle must verify (the fetch did) and, when given, be the expected bytes."""
    if error is not None:
        return "cacerts: %s" % error
    served = hashlib.sha256(body or b"").hexdigest()
    if expected_sha256 and served != expected_sha256.lower():
        return "cacerts: serves a CA bundle with sha256 %s, expected %s (still the old CAs?)" % (
            served[:16], expected_sha256.lower()[:16])
    return None
