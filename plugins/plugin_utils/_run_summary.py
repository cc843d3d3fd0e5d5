# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""What a playbook run did, per node, from the task results the run_summary callback sees: pure functions.

A result says what happened through the collection's return values (documented in each module's RETURN): restarts
(restart_node's ``restarted`` and ``unit``, static_pod_restart's ``pods``), backups (``backup_tree``, ``backup_file``,
``backup_files``, the backup module's ``dest``), CA fingerprints (ca_rotation's ``cas`` list, kubeadm_ca_rotation's
``cas`` dict) and kubeadm CA rotation phases (``done``). A censored result (no_log) contributes only its changed flag.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from ansible_collections.kubepki.certs.plugins.module_utils._pki.kubeadm_ca_phases import PHASES as KUBEADM_PHASES

CENSORED = "censored"
MAX_NAMES = 4
MAX_MESSAGE = 240


@dataclass
class NodeRecord:
    changed: list = field(default_factory=list)  # names of the tasks that changed something, first change first
    restarts: list = field(default_factory=list)  # (what, seconds)
    backups: list = field(default_factory=list)  # directories
    phases_done: tuple = ()
    failure: str = ""
    unreachable: bool = False


@dataclass
class RunRecord:
    nodes: dict = field(default_factory=dict)  # host -> NodeRecord, in the order first seen
    cas: dict = field(default_factory=dict)  # CA name -> (old fingerprint, new fingerprint)
    plays_started: list = field(default_factory=list)
    plays_planned: list = field(default_factory=list)
    not_reached: dict = field(default_factory=dict)  # play name -> hosts of the play that got no result in it
    host_order: list = field(default_factory=list)  # inventory order of the plays' hosts (servers before agents)

    def node(self, host: str) -> NodeRecord:
        return self.nodes.setdefault(host, NodeRecord())


def _short(fingerprint: str) -> str:
    return fingerprint.replace(":", "").lower()[:12]


def add_once(items: list, item) -> None:
    if item not in items:
        items.append(item)


def add_backup(backups: list, directory: str) -> None:
    """Adds a backup directory, keeping only the outermost of nested ones (a tree, not each of its folders)."""
    if any(directory == known or directory.startswith(known.rstrip("/") + "/") for known in backups):
        return
    backups[:] = [known for known in backups if not known.startswith(directory.rstrip("/") + "/")]
    backups.append(directory)


def _backup_dirs(result: dict) -> list:
    """The backup directories a result names (files reduced to their directories)."""
    dirs = []
    for key in ("backup_tree", "backup_dir"):
        if isinstance(result.get(key), str) and result[key]:
            dirs.append(result[key])
    if isinstance(result.get("backup_file"), str) and result["backup_file"]:
        dirs.append(os.path.dirname(result["backup_file"]))
    for path in result.get("backup_files") or []:
        if isinstance(path, str) and path:
            dirs.append(os.path.dirname(path))
    return dirs


def _ca_changes(cas) -> dict:
    """CA name -> (old, new) fingerprints from ca_rotation's list or kubeadm_ca_rotation's dict; equal pairs dropped."""
    pairs = {}
    if isinstance(cas, list):
        for item in cas:
            if isinstance(item, dict):
                pairs[item.get("name", "?")] = (item.get("current_fingerprint_sha256"), item.get("new_fingerprint_sha256"))
    elif isinstance(cas, dict):
        for name, item in cas.items():
            if isinstance(item, dict):
                pairs[name] = (item.get("old_fingerprint"), item.get("new_fingerprint"))
    return {name: pair for name, pair in pairs.items() if all(pair) and pair[0] != pair[1]}


def _restarts(action: str, result: dict, seconds: float, check_mode: bool) -> list:
    verb = "would restart" if check_mode else "restarted"
    if result.get("restarted") is True and result.get("unit"):
        gate = result.get("gate") if isinstance(result.get("gate"), dict) else {}
        waited = gate.get("elapsed")
        return [("%s %s" % (verb, result["unit"]), float(waited) if isinstance(waited, (int, float)) else seconds)]
    if isinstance(result.get("restarted"), list) and action.endswith("static_pod_restart"):
        waits = {p.get("name"): p.get("waited_seconds") for p in result.get("pods") or [] if isinstance(p, dict)}
        return [("%s static pod %s" % (verb, name), float(waits.get(name) or 0.0)) for name in result["restarted"]]
    return []


def note_result(run: RunRecord, host: str, task_name: str, action: str, result: dict, *, seconds: float,
                status: str, check_mode: bool = False) -> None:
    """Fold one task result into the run. status: ok (changed when the result says so), failed, unreachable or
    skipped."""
    node = run.node(host)
    if status == "ok" and result.get("changed"):
        status = "changed"
    if status == "unreachable":
        node.unreachable = True
        node.failure = "unreachable: %s" % str(result.get("msg", ""))[:MAX_MESSAGE]
        return
    if status == "failed":
        node.failure = "%s: %s" % (task_name, str(result.get("msg", "failed")).strip().splitlines()[0][:MAX_MESSAGE]
                                   if str(result.get("msg", "")).strip() else "failed")
    if status == "skipped" or CENSORED in result:
        if status == "changed":
            add_once(node.changed, task_name)
        return
    if status == "changed":
        add_once(node.changed, task_name)
    for restart in _restarts(action, result, seconds, check_mode):
        node.restarts.append(restart)
    if status == "changed" or action.endswith(".backup"):
        named = _backup_dirs(result)
        if action.endswith(".backup") and isinstance(result.get("dest"), str):
            named.append(result["dest"])  # the backup module's tree, also when it already held everything
        for directory in named:
            add_backup(node.backups, directory)
    run.cas.update(_ca_changes(result.get("cas")))
    if isinstance(result.get("done"), list):
        node.phases_done = tuple(p for p in KUBEADM_PHASES if p in result["done"])


def _names(items: list) -> str:
    shown = ", ".join(items[:MAX_NAMES])
    return shown + (" and %d more" % (len(items) - MAX_NAMES) if len(items) > MAX_NAMES else "")


def node_line(host: str, node: NodeRecord) -> str:
    parts = []
    if node.unreachable:
        parts.append(node.failure)
    elif node.failure:
        parts.append("FAILED at %s" % node.failure)
    if node.restarts:
        parts.append("; ".join("%s (%.1f s)" % (what, seconds) for what, seconds in node.restarts))
    if node.changed:
        parts.append("%d task%s changed: %s" % (len(node.changed), "" if len(node.changed) == 1 else "s", _names(node.changed)))
    elif not node.failure:
        parts.append("nothing changed")
    if node.phases_done:
        left = [p for p in KUBEADM_PHASES if p not in node.phases_done]
        parts.append("phases done: %s%s" % (", ".join(node.phases_done), "; left: %s" % ", ".join(left) if left else ""))
    if node.backups:
        parts.append("backups: %s" % _names(node.backups))
    return "%s: %s" % (host, "; ".join(parts))


def failed(run: RunRecord) -> bool:
    return any(node.failure for node in run.nodes.values())


def summary_lines(run: RunRecord, *, title: str, seconds: float, check_mode: bool) -> list:
    """The summary a person reads at the end of a run: one line per node, the CA changes, what is left, backups.
    Nodes a play did not reach count as left only after a failure (run_once and delegated tasks reach one node)."""
    lines = ["%s: %s in %.1f s%s, %d node%s" % (title, "FAILED" if failed(run) else "ok", seconds,
                                                " (check mode: nothing changed)" if check_mode else "",
                                                len(run.nodes), "" if len(run.nodes) == 1 else "s")]
    for name, (old, new) in sorted(run.cas.items()):
        lines.append("CA %s: %s -> %s (SHA-256, first 12 hex digits)" % (name, _short(old), _short(new)))
    rank = {host: index for index, host in enumerate(run.host_order)}
    ordered = sorted(run.nodes, key=lambda host: (rank.get(host, len(rank)), host))
    lines += [node_line(host, run.nodes[host]) for host in ordered]
    left = ["%s: %d node%s not reached (%s)" % (play, len(hosts), "" if len(hosts) == 1 else "s", _names(hosts))
            for play, hosts in run.not_reached.items() if hosts and failed(run)]
    not_run = [play for play in run.plays_planned if play not in run.plays_started]
    if not_run:
        left.append("plays not run: %s" % "; ".join(not_run))
    lines.append("Left to do: %s" % ("; ".join(left) if left else "nothing"))
    backups = []
    for node in run.nodes.values():
        for directory in node.backups:
            add_backup(backups, directory)
    if backups:
        lines.append("Backups (rollback reads these): %s" % _names(backups))
    return lines


def waiting_line(play: str, task: str, hosts: list, seconds: float) -> str:
    """A progress line for a long wait: the play (it names the phase), the task, the nodes still running it."""
    return "... %s | %s | waiting %.0f s for %s" % (play, task, seconds, _names(sorted(hosts)))
