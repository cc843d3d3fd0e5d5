# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
name: rotation_plan
short_description: The per-node plan of a CA rotation, in restart order
version_added: 0.2.0
author:
  - kubepki.certs developers (@kubepki)
description:
  - Takes the C(kubepki.certs.node_info) results of every node (a dict host name -> result) and returns printable
    lines. The first line gives the mode and whether it is disruptive. Then one line per node in restart order
    (servers one at a time, then agents in batches) with its version, unit and token locations. The last line
    says where the backups go.
options:
  _input:
    description: Host name -> node_info result.
    type: dict
    required: true
  mode:
    description: The rotation mode (cross_sign, renew, new_root).
    type: str
    default: cross_sign
  backup_dir:
    description: The backup root on the nodes.
    type: str
    default: ""
extends_documentation_fragment:
  - kubepki.certs._node_groups
"""

EXAMPLES = r"""
- name: Print the plan
  ansible.builtin.debug:
    msg: "{{ dict(hosts | zip(hosts | map('extract', hostvars, 'node'))) | kubepki.certs.rotation_plan(groups['servers'], groups['agents']) }}"
  vars:
    hosts: "{{ groups['servers'] + groups['agents'] }}"
  run_once: true
"""

RETURN = r"""
_value:
  description: Lines of text.
  type: list
  elements: str
"""


from ansible.errors import AnsibleFilterError

from ansible_collections.kubepki.certs.plugins.module_utils._pki.preflight import plan_lines


def rotation_plan(results, servers, agents=None, mode="cross_sign", backup_dir=""):
    if not isinstance(results, dict):
        raise AnsibleFilterError("rotation_plan: input must be a dict host -> node_info result")
    return plan_lines(dict(results), list(servers), list(agents or []), mode, backup_dir)


class FilterModule:
    def filters(self):
        return {"rotation_plan": rotation_plan}
