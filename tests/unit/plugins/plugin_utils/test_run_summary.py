# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The run summary's pure functions on results shaped as the modules' RETURN documents them."""

from __future__ import annotations

from ansible_collections.kubepki.certs.plugins.plugin_utils._run_summary import (
    RunRecord,
    note_result,
    summary_lines,
    waiting_line,
)


def lines_of(run, check_mode=False):
    return summary_lines(run, title="summary of rotate-ca.yml", seconds=12.34, check_mode=check_mode)


def test_a_rotation_names_every_node_its_restart_ca_and_backups():
    run = RunRecord(plays_planned=["Preflight", "Servers", "Agents"], plays_started=["Preflight", "Servers", "Agents"])
    note_result(run, "server1", "Rotation", "kubepki.certs.ca_rotation",
                {"changed": True, "backup_tree": "/var/lib/kubepki/backup/20261204T100000Z",
                 "cas": [{"name": "server-ca", "current_fingerprint_sha256": "AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66",
                          "new_fingerprint_sha256": "99:88:77:66:55:44:33:22:11:00:FF:EE:DD"},
                         {"name": "client-ca", "current_fingerprint_sha256": "12", "new_fingerprint_sha256": "12"}]},
                seconds=3.0, status="ok")
    note_result(run, "server1", "Gate", "kubepki.certs.restart_node",
                {"changed": True, "restarted": True, "unit": "k3s", "gate": {"elapsed": 7.25}}, seconds=9.0, status="ok")
    note_result(run, "agent1", "Gate", "kubepki.certs.restart_node",
                {"changed": False, "restarted": False, "unit": "k3s-agent"}, seconds=1.0, status="ok")
    lines = lines_of(run)
    assert lines[0] == "summary of rotate-ca.yml: ok in 12.3 s, 2 nodes"
    assert "CA server-ca: aabbccddeeff -> 998877665544 (SHA-256, first 12 hex digits)" in lines
    assert not [line for line in lines if line.startswith("CA client-ca")]  # unchanged CAs are not news
    assert ("server1: restarted k3s (7.2 s); 2 tasks changed: Rotation, Gate; "
            "backups: /var/lib/kubepki/backup/20261204T100000Z") in lines
    assert "agent1: nothing changed" in lines
    assert lines[-2:] == ["Left to do: nothing", "Backups (rollback reads these): /var/lib/kubepki/backup/20261204T100000Z"]


def test_static_pods_with_their_waits_and_kubeadm_phases_left():
    run = RunRecord()
    note_result(run, "cp1", "Restart the static pods", "kubepki.certs.static_pod_restart",
                {"changed": True, "restarted": ["kube-apiserver", "etcd"],
                 "pods": [{"name": "kube-apiserver", "waited_seconds": 21.4}, {"name": "etcd", "waited_seconds": 3.0},
                          {"name": "kube-scheduler", "status": "current"}]}, seconds=25.0, status="ok")
    note_result(run, "cp1", "Record", "kubepki.certs.kubeadm_ca_rotation",
                {"changed": True, "done": ["prepare", "promote"],
                 "cas": {"ca": {"old_fingerprint": "ab" * 32, "new_fingerprint": "cd" * 32}}}, seconds=1.0, status="ok")
    line = [entry for entry in lines_of(run) if entry.startswith("cp1: ")][0]
    assert line.startswith("cp1: restarted static pod kube-apiserver (21.4 s); restarted static pod etcd (3.0 s); ")
    assert "phases done: prepare, promote; left: finalize" in line
    assert "CA ca: abababababab -> cdcdcdcdcdcd (SHA-256, first 12 hex digits)" in lines_of(run)


def test_a_failed_run_says_where_it_stopped_and_what_is_left():
    run = RunRecord(plays_planned=["Preflight", "Servers", "Agents"], plays_started=["Preflight", "Servers"],
                    not_reached={"Preflight": [], "Servers": ["server3"]})
    note_result(run, "server2", "Gate - restart", "kubepki.certs.restart_node",
                {"msg": "server2: readyz not ok after 15 s\nmore detail"}, seconds=15.0, status="failed")
    note_result(run, "server4", "Reach", "ansible.builtin.ping", {"msg": "ssh: connect refused"}, seconds=1.0,
                status="unreachable")
    lines = lines_of(run)
    assert lines[0].startswith("summary of rotate-ca.yml: FAILED in ")
    assert "server2: FAILED at Gate - restart: server2: readyz not ok after 15 s" in lines
    assert "server4: unreachable: ssh: connect refused" in lines
    assert "Left to do: Servers: 1 node not reached (server3); plays not run: Agents" in lines


def test_nodes_not_reached_after_success_are_not_left_work():
    # run_once and delegated tasks give one node a result: in a successful run that is not work left
    run = RunRecord(plays_planned=["Report"], plays_started=["Report"], not_reached={"Report": ["node2", "node3"]})
    note_result(run, "node1", "Write", "ansible.builtin.copy", {"changed": True}, seconds=0.1, status="ok")
    assert "Left to do: nothing" in lines_of(run)


def test_a_censored_result_counts_as_changed_and_nothing_more():
    run = RunRecord()
    note_result(run, "node1", "Put the token", "kubepki.certs.join_token",
                {"changed": True, "censored": "hidden", "backup_files": ["/secret/where"]}, seconds=0.1, status="changed")
    assert "node1: 1 task changed: Put the token" in lines_of(run)
    assert "/secret/where" not in "\n".join(lines_of(run))


def test_check_mode_and_long_lists():
    run = RunRecord()
    for number in range(6):
        note_result(run, "node1", "task %d" % number, "ansible.builtin.copy", {"changed": True}, seconds=0.1, status="ok")
    note_result(run, "node1", "tokens", "kubepki.certs.join_token",
                {"changed": True, "backup_files": ["/b/id/etc/rancher/k3s/config.yaml", "/b/id/var/lib/x/token"]},
                seconds=0.1, status="ok")
    note_result(run, "node1", "tls", "kubepki.certs.backup", {"changed": True, "dest": "/b/id"}, seconds=0.1, status="ok")
    lines = lines_of(run, check_mode=True)
    assert lines[-1] == "Backups (rollback reads these): /b/id"  # one tree, not each of its folders
    assert "(check mode: nothing changed)" in lines[0]
    assert "node1: 8 tasks changed: task 0, task 1, task 2, task 3 and 4 more; backups: /b/id" in lines
    assert waiting_line("Servers - promote", "Gate", ["cp2", "cp1"], 40.2) == "... Servers - promote | Gate | waiting 40 s for cp1, cp2"
