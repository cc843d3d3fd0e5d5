# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The run_summary callback inside a real ansible-playbook run (local connection, three inventory hosts): the summary
at the end names every node and what happened to it, where a failed run stopped and what it left, where the backups
are; progress lines during a long task; nothing a no_log task returned reaches the output, even at -vvv."""

from __future__ import annotations

import os
import subprocess
import sys

from test_molecule import collections_path

SECRET = "kubepki-s3cr3t-never-shown"
PLAYBOOK = """
- name: Preflight - prepare
  hosts: all
  gather_facts: false
  tasks:
    - name: Back up the source tree
      kubepki.certs.backup:
        paths: ["{src}"]
        dest: "{backups}/{{{{ inventory_hostname }}}}"
    - name: Say a secret
      ansible.builtin.command: echo {secret}
      changed_when: true
      no_log: true
    - name: Wait on node1
      ansible.builtin.command: sleep 3
      changed_when: false
      when: inventory_hostname == 'node1'
- name: One at a time
  hosts: all
  gather_facts: false
  serial: 1
  any_errors_fatal: true
  tasks:
    - name: Gate - node2 fails
      ansible.builtin.fail:
        msg: "node2: readyz not ok after 15 s"
      when: inventory_hostname == 'node2'
- name: Agents afterwards
  hosts: all
  gather_facts: false
  tasks:
    - name: Never
      ansible.builtin.debug:
        msg: never
"""


def run_playbook(tmp_path, *args):
    src = tmp_path / "src"
    src.mkdir()
    (src / "file").write_text("data\n")
    playbook = tmp_path / "play.yml"
    playbook.write_text(PLAYBOOK.format(src=src, backups=tmp_path / "backups", secret=SECRET))
    inventory = tmp_path / "hosts"
    inventory.write_text("".join("node%d ansible_connection=local ansible_python_interpreter=%s\n" % (n, sys.executable)
                                 for n in (1, 2, 3)))
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=collections_path(), ANSIBLE_CALLBACKS_ENABLED="kubepki.certs.run_summary",
               KUBEPKI_PROGRESS_INTERVAL="1", ANSIBLE_NOCOLOR="1", ANSIBLE_FORKS="3")
    env.pop("ANSIBLE_CONFIG", None)
    result = subprocess.run([os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "-i", str(inventory),
                             str(playbook), *args], env=env, cwd=str(tmp_path), capture_output=True, text=True,
                            timeout=300, check=False)
    return result.returncode, result.stdout + result.stderr


def summary(output):
    assert "KUBEPKI.CERTS RUN SUMMARY" in output, output[-3000:]
    return output.rsplit("KUBEPKI.CERTS RUN SUMMARY", 1)[1].splitlines()[1:]


def test_a_failed_run_ends_with_every_node_where_it_stopped_and_what_is_left(tmp_path):
    rc, output = run_playbook(tmp_path, "-vvv")
    assert rc == 2, output[-3000:]
    lines = summary(output)
    assert lines[0].startswith("kubepki.certs summary of play.yml: FAILED in "), lines
    assert lines[0].endswith(", 3 nodes"), lines
    assert [line.split(":")[0] for line in lines[1:4]] == ["node1", "node2", "node3"], lines  # inventory order
    backups = tmp_path / "backups"
    assert "node1: 2 tasks changed: Back up the source tree, Say a secret; backups: %s/node1" % backups in lines, lines
    assert ("node2: FAILED at Gate - node2 fails: node2: readyz not ok after 15 s; 2 tasks changed: Back up the source "
            "tree, Say a secret; backups: %s/node2" % backups) in lines, lines
    assert "Left to do: One at a time: 1 node not reached (node3); plays not run: Agents afterwards" in lines, lines
    backup_line = [line for line in lines if line.startswith("Backups (rollback reads these): ")]
    named = backup_line[0].split(": ", 1)[1].split(", ")
    assert sorted(named) == sorted("%s/node%d" % (backups, n) for n in (1, 2, 3)) and all(os.path.isdir(p) for p in named)
    assert SECRET not in output  # no_log held at -vvv, and the callback read nothing more of that result
    progress = [line for line in output.splitlines() if line.startswith("... Preflight - prepare | Wait on node1 | waiting ")]
    assert len(progress) >= 2 and all(line.endswith(" s for node1") for line in progress), progress


def test_a_rerun_in_check_mode_says_so_and_changes_nothing(tmp_path):
    rc, output = run_playbook(tmp_path, "--check", "-e", "ansible_check_mode_probe=1")
    lines = summary(output)
    assert rc == 2 and "(check mode: nothing changed)" in lines[0], lines
    assert not (tmp_path / "backups").exists()  # check mode: the backup module wrote nothing
