# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
name: ready_nodes
short_description: Names of the Ready nodes in C(kubectl get nodes -o json) output
version_added: 0.2.0
author:
  - kubepki.certs developers (@kubepki)
description:
  - Returns the names of the nodes whose C(Ready) condition is C(True), for health gates in restart plays.
options:
  _input:
    description: The JSON text printed by C(kubectl get nodes -o json), or the parsed object.
    type: raw
    required: true
"""

EXAMPLES = r"""
- name: Wait until every server is Ready
  ansible.builtin.command: k3s kubectl get nodes -o json
  register: nodes
  until: groups['servers'] | difference(nodes.stdout | kubepki.certs.ready_nodes) | length == 0
  retries: 30
  delay: 2
  changed_when: false
"""

RETURN = r"""
_value:
  description: Node names, sorted.
  type: list
  elements: str
"""

from ansible.errors import AnsibleFilterError

from ansible_collections.kubepki.certs.plugins.module_utils._pki.health import ready_node_names


def ready_nodes(data) -> list:
    try:
        return ready_node_names(data)
    except ValueError as exc:
        raise AnsibleFilterError("ready_nodes: input is not JSON: %s" % exc) from None


class FilterModule:
    def filters(self):
        return {"ready_nodes": ready_nodes}
