#!/usr/bin/python
# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
---
module: health_gate
short_description: Wait until a server is back, serves the expected CA bundle and the named nodes are Ready
version_added: 0.2.0
description:
  - The gate of a rolling restart, in one task. Runs on a server and polls, every O(interval) seconds until
    O(timeout), every check that was asked for. It asks the apiserver's C(/readyz) through the node's admin
    kubectl, reads C(kubectl get nodes -o json) and requires every node of O(ready_nodes) to be Ready. It fetches
    O(cacerts_url) over TLS verified against O(cacerts_ca_file) and compares the served bundle with
    O(expected_cacerts_sha256).
  - Succeeds as soon as every check passes. Fails after O(timeout) naming each check and node that did not pass
    and why (the last kubectl error, the node's Ready condition, the served bundle's hash).
  - The kubectl command comes from the collection's layout table (C(k3s kubectl) for k3s, C(<data-dir>/bin/kubectl)
    with C(/etc/rancher/rke2/rke2.yaml) for RKE2).
author:
  - kubepki.certs developers (@kubepki)
extends_documentation_fragment:
  - kubepki.certs._attributes
  - kubepki.certs._attributes.info_module
options:
  distribution:
    description: The distribution, for the kubectl command and the server CA bundle path.
    type: str
    required: true
    choices: [k3s, rke2, kubeadm]
  data_dir:
    description: Overrides the distribution's data directory.
    type: path
  readyz:
    description: Require C(kubectl get --raw /readyz) to answer C(ok).
    type: bool
    default: true
  ready_nodes:
    description: Node names that must be Ready. Empty to skip the node check.
    type: list
    elements: str
    default: []
  cacerts_url:
    description:
      - URL of the CA bundle the server hands out, for example C(https://10.0.0.11:6443/cacerts). Not checked when
        not set.
      - The TLS handshake must verify against O(cacerts_ca_file), so the server's serving certificate chains to
        the bundle it serves.
    type: str
  cacerts_ca_file:
    description:
      - CA file to verify O(cacerts_url) with. Defaults to the API server's CA file from the layout table
        (C(server-ca.crt) on k3s and RKE2, C(ca.crt) on kubeadm).
    type: path
  expected_cacerts_sha256:
    description: SHA-256 (hex) of the bundle O(cacerts_url) must serve, for example the staged C(server-ca.crt).
    type: str
  timeout:
    description: Seconds to wait before the gate fails.
    type: int
    default: 90
  interval:
    description: Seconds between two attempts.
    type: float
    default: 1.0
notes:
  - Read-only. Network traffic goes only to O(cacerts_url) and, through kubectl, to the node's own apiserver.
"""

EXAMPLES = r"""
- name: Gate after restarting a server
  kubepki.certs.health_gate:
    distribution: k3s
    ready_nodes: "{{ groups['servers'] }}"
    cacerts_url: "https://{{ ansible_host }}:6443/cacerts"
    expected_cacerts_sha256: "{{ staged_server_ca_sha256 }}"

- name: Gate a batch of agents, asked once on a server
  kubepki.certs.health_gate:
    distribution: rke2
    readyz: false
    ready_nodes: "{{ ansible_play_batch }}"
  run_once: true
  delegate_to: "{{ groups['servers'] | first }}"
"""

RETURN = r"""
attempts:
  description: How many times the checks ran.
  returned: always
  type: int
elapsed:
  description: Seconds spent waiting.
  returned: always
  type: float
problems:
  description: What did not pass at the last attempt (empty on success).
  returned: always
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.kubepki.certs.plugins.module_utils._pki.gate import GateChecks, gate_problems, poll
from ansible_collections.kubepki.certs.plugins.module_utils._pki.layout import HEALTH_GATE_DISTRIBUTIONS, get_layout
from ansible_collections.kubepki.certs.plugins.module_utils._pki.module_edge import fetch_cacerts, kubectl_command, run_engine

fetch = fetch_cacerts


def checks_from(params: dict, ca_file: str) -> GateChecks:
    return GateChecks(readyz=params["readyz"], ready_nodes=tuple(params["ready_nodes"]), cacerts_url=params["cacerts_url"],
                      cacerts_ca_file=ca_file, expected_cacerts_sha256=params["expected_cacerts_sha256"],
                      fetch_timeout=min(10.0, max(1.0, params["timeout"])))


def attempt(module, kubectl: list, params: dict, ca_file: str) -> list:
    """One attempt of the asked checks (the engine's gate_problems with the module's run_command)."""
    return gate_problems(checks_from(params, ca_file), kubectl=kubectl, run=module.run_command, fetch=fetch)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            distribution=dict(type="str", required=True, choices=list(HEALTH_GATE_DISTRIBUTIONS)),
            data_dir=dict(type="path"),
            readyz=dict(type="bool", default=True),
            ready_nodes=dict(type="list", elements="str", default=[]),
            cacerts_url=dict(type="str"),
            cacerts_ca_file=dict(type="path"),
            expected_cacerts_sha256=dict(type="str"),
            timeout=dict(type="int", default=90),
            interval=dict(type="float", default=1.0),
        ),
        supports_check_mode=True,
    )
    params = module.params
    layout = run_engine(module, get_layout, params["distribution"], data_dir=params["data_dir"])
    kubectl = kubectl_command(module, layout)
    if kubectl is None and (params["readyz"] or params["ready_nodes"]):
        module.fail_json(msg="%s not found on the PATH of %s" % (layout.kubectl[0], layout.distribution),
                         attempts=0, elapsed=0.0, problems=["%s not found" % layout.kubectl[0]])
    ca_file = params["cacerts_ca_file"] or run_engine(module, layout.api_ca_file)
    result = poll(lambda: attempt(module, kubectl, params, ca_file), timeout=params["timeout"],
                  interval=params["interval"])
    if not result.ok:
        module.fail_json(msg="health gate failed after %.0f s (%d attempts): %s"
                         % (result.elapsed, result.attempts, "; ".join(result.problems)), **result.as_dict())
    module.exit_json(changed=False, **result.as_dict())


if __name__ == "__main__":
    main()
