# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""diffs.py: the diff entries, judged by Ansible's own diff renderer (the callback's _get_diff)."""

from __future__ import annotations

from ansible.plugins.callback import CallbackBase

from ansible_collections.kubepki.certs.plugins.module_utils._pki.diffs import (
    Change,
    file_states_diff,
    pending_writes_diff,
    steps_diff,
    summary_diff,
)


def _rendered(diff) -> str:
    """What ansible-playbook --diff prints for a module's ``diff`` result (a dict or a list of dicts)."""
    return CallbackBase()._get_diff(diff)


def test_summary_diff_renders_as_a_unified_diff():
    diff = summary_diff("/etc/rancher/k3s/config.yaml", [
        Change("line 3: token", "K10aaaa...::server:<redacted>", "K10bbbb...::server:<redacted>")])
    assert diff == {"before_header": "/etc/rancher/k3s/config.yaml", "after_header": "/etc/rancher/k3s/config.yaml",
                    "before": "line 3: token: K10aaaa...::server:<redacted>\n",
                    "after": "line 3: token: K10bbbb...::server:<redacted>\n"}
    lines = _rendered(diff).splitlines()
    assert "--- before: /etc/rancher/k3s/config.yaml" in lines
    assert "+++ after: /etc/rancher/k3s/config.yaml" in lines
    assert "-line 3: token: K10aaaa...::server:<redacted>" in lines
    assert "+line 3: token: K10bbbb...::server:<redacted>" in lines


def test_a_list_of_entries_renders_every_file():
    diffs = [summary_diff("/a", [Change("/a", "absent", "created")]),
             summary_diff("/b", [Change("/b", "present", "updated")])]
    rendered = _rendered(diffs)
    assert "+/a: created" in rendered.splitlines() and "+/b: updated" in rendered.splitlines()


def test_file_states_leave_unchanged_files_out():
    diff = file_states_diff("/stage/tls", [("/stage/tls/server-ca.crt", "created"),
                                           ("/stage/tls/client-ca.crt", "updated"),
                                           ("/stage/tls/service.key", "unchanged")])
    assert diff["before"] == "/stage/tls/server-ca.crt: absent\n/stage/tls/client-ca.crt: present\n"
    assert diff["after"] == "/stage/tls/server-ca.crt: created\n/stage/tls/client-ca.crt: updated\n"
    rendered = _rendered(diff)
    assert "service.key" not in rendered
    assert "-/stage/tls/server-ca.crt: absent" in rendered.splitlines()


def test_nothing_changing_renders_nothing():
    diff = file_states_diff("/stage/tls", [("/stage/tls/server-ca.crt", "unchanged")])
    assert diff["before"] == diff["after"] == ""
    assert "server-ca.crt" not in _rendered(diff)


def test_pending_writes_are_judged_by_the_disk(tmp_path):
    existing = tmp_path / "service.key"
    existing.write_bytes(b"old")
    missing = tmp_path / "sa.pub"
    link = tmp_path / "dangling"
    link.symlink_to(tmp_path / "nowhere")  # a dangling link is still replaced by the write
    diff = pending_writes_diff(str(tmp_path), [str(existing), str(missing), str(link)],
                               detail={str(existing): "signing key 3f2a"})
    assert diff["before"].splitlines() == ["%s: present" % existing, "%s: absent" % missing, "%s: present" % link]
    assert diff["after"].splitlines() == ["%s: updated (signing key 3f2a)" % existing, "%s: created" % missing,
                                          "%s: updated" % link]


def test_steps_render_as_added_lines():
    diff = steps_diff("rke2-server (steps)", ["systemctl daemon-reload", "systemctl restart rke2-server"])
    assert diff["before"] == ""
    lines = _rendered(diff).splitlines()
    assert "+systemctl daemon-reload" in lines and "+systemctl restart rke2-server" in lines
    assert lines.index("+systemctl daemon-reload") < lines.index("+systemctl restart rke2-server")
