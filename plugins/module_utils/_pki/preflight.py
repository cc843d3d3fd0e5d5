# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# PRIVATE to the kubepki.certs collection.
"""Fleet-wide preflight verdict and plan of a rotation, judged on the controller from every node's facts.

Pure functions over node_info results (host -> dict): one controller-side check replaces a task per node.
"""

from __future__ import annotations


def _node(results: dict, host: str):
    value = results.get(host)
    if not isinstance(value, dict) or value.get("failed") or value.get("skipped") or "role" not in value:
        return None
    return value


def preflight_problems(results: dict, servers: list, agents: list | None = None, minimum_version: str = "") -> list:
    """One sentence per problem that must stop the rotation before anything changes; empty: go."""
    problems = []
    reference_host, reference = None, None
    healthy = 0
    for host in list(servers) + list(agents or []):
        node = _node(results, host)
        if node is None:
            problems.append("%s: no node facts (unreachable or node_info failed)" % host)
            continue
        if node.get("version_ok") is False:
            problems.append("%s: version %s is below the gate %s" % (host, node.get("version"), minimum_version or "?"))
        if host in servers:
            if node["role"] != "server":
                problems.append("%s: in the servers group but has no server tls directory" % host)
                continue
            if node.get("healthy"):
                healthy += 1
            fingerprints = node.get("ca_fingerprints") or {}
            if reference is None:
                reference_host, reference = host, fingerprints
            elif fingerprints != reference:
                differing = sorted(name for name in set(fingerprints) | set(reference)
                                   if fingerprints.get(name) != reference.get(name))
                problems.append("%s: CA fingerprints differ from %s's (%s); every server must hold the same CAs"
                                % (host, reference_host, ", ".join(differing)))
    reachable_servers = [h for h in servers if (_node(results, h) or {}).get("role") == "server"]
    if reachable_servers and healthy == 0:
        details = "; ".join("%s: %s" % (h, _node(results, h).get("health_problem") or "not asked")
                            for h in reachable_servers)
        problems.append("no healthy server to stage on (readyz failed everywhere: %s)" % details)
    return problems


def plan_lines(results: dict, servers: list, agents: list | None = None, mode: str = "cross_sign",
               backup_dir: str = "") -> list:
    """Human-readable per-node plan, in restart order."""
    lines = ["mode %s%s" % (mode, " (DISRUPTIVE: loaded with --force; every client needs the new CA)"
                            if mode == "new_root" else " (non-disruptive: the new CAs are cross-signed or below "
                                                       "the current root)")]
    order = [(h, "server, restart %d of %d, one at a time" % (i + 1, len(servers))) for i, h in enumerate(servers)]
    order += [(h, "agent, restarted after all servers, in batches") for h in (agents or [])]
    for host, step in order:
        node = _node(results, host) or {}
        locations = ", ".join(loc.get("path", "?") for loc in node.get("token_locations") or []) or "none"
        lines.append("%s: %s %s; unit %s; token locations: %s" % (
            host, node.get("version") or "?", step, node.get("service") or "?", locations))
    if backup_dir:
        lines.append("backups: %s/<rotation id> on every node, before any file changes" % backup_dir)
    return lines
