# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
name: rotation_preflight
short_description: Problems that stop a CA rotation before anything changes, judged over every node at once
version_added: 0.2.0
author:
  - kubepki.certs developers (@kubepki)
description:
  - Takes the C(kubepki.certs.node_info) results of every node (a dict host name -> result) and returns one
    sentence per problem. It flags a node that did not answer, a version below the gate, and a host of the servers
    group that is no server. It also flags servers whose live CA fingerprints differ from the first server's, and
    the case where no server is healthy. An empty list means the rotation may start.
  - One controller-side check replaces a per-node assert task (each task costs every host a round trip).
options:
  _input:
    description: Host name -> node_info result (hosts without a result count as unreachable).
    type: dict
    required: true
  minimum_version:
    description: The version gate, for the message.
    type: str
    default: ""
extends_documentation_fragment:
  - kubepki.certs._node_groups
"""

EXAMPLES = r"""
- name: Stop before anything changes when a node is not fit
  ansible.builtin.assert:
    that: problems | length == 0
    fail_msg: "{{ problems }}"
  vars:
    problems: "{{ dict(groups['k3s_cluster'] | zip(groups['k3s_cluster'] | map('extract', hostvars, 'node')))
                  | kubepki.certs.rotation_preflight(groups['servers'], groups['agents']) }}"
  run_once: true
"""

RETURN = r"""
_value:
  description: One sentence per problem, each naming the node.
  type: list
  elements: str
"""

from ansible.errors import AnsibleFilterError

from ansible_collections.kubepki.certs.plugins.module_utils._pki.preflight import preflight_problems


def rotation_preflight(results, servers, agents=None, minimum_version=""):
    if not isinstance(results, dict):
        raise AnsibleFilterError("rotation_preflight: input must be a dict host -> node_info result")
    return preflight_problems(dict(results), list(servers), list(agents or []), minimum_version or "")


class FilterModule:
    def filters(self):
        return {"rotation_preflight": rotation_preflight}
