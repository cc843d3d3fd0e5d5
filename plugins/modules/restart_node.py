#!/usr/bin/python
# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
---
module: restart_node
short_description: Restart a k3s or RKE2 node, wait for its health gate, then check its leaf certificates
version_added: 0.3.0
description:
  - One node of a rolling restart in one task, so a fleet pays one round trip per node instead of three.
  - Restarts the node's service with the host's C(systemctl) (unit from the collection's layout table - C(k3s),
    C(k3s-agent), C(rke2-server), C(rke2-agent)), after C(systemctl daemon-reload) when O(daemon_reload=true), for
    example because kubepki.certs.join_token rewrote a token in the unit's C(ExecStart)
    (its RV(kubepki.certs.join_token#module:daemon_reload_needed)). For RKE2 servers O(force_restart=true) creates the
    C(force-restart) file first, so the control-plane static pods are recreated.
  - Then, when it restarted the node, waits until the gate passes - the same checks as kubepki.certs.health_gate
    (O(readyz), O(ready_nodes), the CA bundle served on the node's C(/cacerts) compared with
    O(expected_cacerts_sha256)) - and fails after O(timeout) naming every check that did not pass.
  - Then, when O(verify_leaves=true) (also without a restart, so a rerun re-checks a node an earlier run stopped
    at), checks like kubepki.certs.cert_check with C(fail_on_unchained) and C(fail_on_threshold) at 0 days that every
    leaf certificate on the node was issued by a CA on the node and none is expired; repeated every
    O(leaves_interval) seconds up to O(leaves_timeout) seconds, because a node may still be writing its certificates
    right after it came back.
  - Agents have no admin kubectl; gate them on a server with kubepki.certs.health_gate (one delegated task per batch,
    as the kubepki.certs.rolling_restart role does) and leave the gate options of this module unset.
author:
  - kubepki.certs developers (@kubepki)
extends_documentation_fragment:
  - kubepki.certs._attributes
  - kubepki.certs._cryptography_dep
attributes:
  check_mode:
    support: full
    details: Reports the steps it would run (C(changed) when a restart is due) and runs none of them; no gate, no leaf check.
  diff_mode:
    support: full
    details: The steps (force-restart file, daemon-reload, restart) as the after side.
options:
  distribution:
    description: The distribution, for the unit names, the supervisor port, the kubectl command and the certificate layout.
    type: str
    required: true
    choices: [k3s, rke2]
  data_dir:
    description: Overrides the distribution's data directory.
    type: path
  node_role:
    description: Whether the node runs the server unit or the agent unit.
    type: str
    required: true
    choices: [server, agent]
  restart:
    description:
      - Whether the node needs its restart. V(false) skips the restart and the gate (nothing changed that a gate could
        judge) but still checks the leaves when O(verify_leaves=true).
    type: bool
    default: true
  daemon_reload:
    description:
      - Run C(systemctl daemon-reload) before the restart, so systemd reads a unit file that changed. Only when
        O(restart=true).
    type: bool
    default: false
  force_restart:
    description: RKE2 servers only (ignored elsewhere) - create C(<data-dir>/force-restart) before the restart.
    type: bool
    default: false
  readyz:
    description: Gate on C(kubectl get --raw /readyz) answering C(ok) (servers).
    type: bool
    default: false
  ready_nodes:
    description: Gate on these nodes being Ready (servers; empty to skip).
    type: list
    elements: str
    default: []
  cacerts_host:
    description:
      - Address of this node; gate on C(https://<cacerts_host>:<supervisor port>/cacerts) verifying against the node's
        C(server-ca.crt) and, when O(expected_cacerts_sha256) is set, serving exactly that bundle. Not checked when unset.
    type: str
  expected_cacerts_sha256:
    description: SHA-256 (hex) of the CA bundle the node must serve on C(/cacerts).
    type: str
  timeout:
    description: Seconds the gate waits before it fails.
    type: int
    default: 120
  interval:
    description: Seconds between two gate attempts.
    type: float
    default: 1.0
  verify_leaves:
    description: Check the node's leaf certificates after the gate (see the description).
    type: bool
    default: true
  leaves_timeout:
    description: Seconds the leaf check may be repeated before it fails.
    type: int
    default: 60
  leaves_interval:
    description: Seconds between two leaf checks.
    type: float
    default: 2.0
notes:
  - Needs C(systemctl) on the node when a restart is due. C(systemctl restart) of a C(Type=notify) unit (as k3s and
    RKE2 install it) returns once the service reported ready, or fails when it could not start.
  - Private keys are read only to compare them with their certificate (leaf check) and are never returned.
seealso:
  - module: kubepki.certs.health_gate
  - module: kubepki.certs.cert_check
  - module: kubepki.certs.join_token
"""

EXAMPLES = r"""
- name: Restart a server after its unit file got a new token, gate it, check its leaves
  kubepki.certs.restart_node:
    distribution: k3s
    node_role: server
    daemon_reload: "{{ tokens.daemon_reload_needed | default(false) }}"
    readyz: true
    ready_nodes: "{{ groups['servers'] }}"
    cacerts_host: "{{ ansible_host }}"
    expected_cacerts_sha256: "{{ staged_server_ca_sha256 }}"

- name: Restart an agent and check its leaves (its gate runs once per batch on a server)
  kubepki.certs.restart_node:
    distribution: rke2
    node_role: agent
"""

RETURN = r"""
restarted:
  description: Whether the service was restarted.
  returned: always
  type: bool
daemon_reloaded:
  description: Whether C(systemctl daemon-reload) ran.
  returned: always
  type: bool
unit:
  description: The systemd unit of the node.
  returned: always
  type: str
  sample: k3s-agent
commands:
  description: The steps run (in check mode, the steps that would run), in order.
  returned: always
  type: list
  elements: str
  sample: ["/usr/bin/systemctl daemon-reload", "/usr/bin/systemctl restart k3s-agent"]
gate:
  description: The gate's attempts, seconds waited and the problems of the last attempt; null when no gate ran.
  returned: always
  type: dict
  sample: {"attempts": 3, "elapsed": 4.1, "problems": []}
leaves:
  description:
    - The leaf check - attempts, seconds, number of certificate entries examined, the leaves no CA on the node issued
      (C(unchained)) and the files under the 0-day threshold (C(threshold_failures)); null when it did not run.
  returned: always
  type: dict
  sample: {"attempts": 1, "elapsed": 0.0, "problems": [], "certificates": 31, "unchained": [], "threshold_failures": []}
"""

import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.kubepki.certs.plugins.module_utils._pki.gate import GateChecks, gate_problems, poll
from ansible_collections.kubepki.certs.plugins.module_utils._pki.layout import RANCHER_DISTRIBUTIONS, get_layout
from ansible_collections.kubepki.certs.plugins.module_utils._pki.module_edge import (
    fetch_cacerts,
    kubectl_command,
    require_cryptography,
    run_engine,
)
from ansible_collections.kubepki.certs.plugins.module_utils._pki.node_restart import (
    NODE_ROLES,
    cacerts_url,
    check_leaves,
    plan_restart,
)


def touch(path: str) -> None:
    """The RKE2 force-restart marker: an empty file, 0600 (RKE2 only tests that it exists)."""
    handle = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.close(handle)


def run_step(module, argv: list, result: dict) -> None:
    rc, out, err = module.run_command(argv)
    result["commands"].append(" ".join(argv))
    if rc != 0:
        detail = (err or out or "").strip().splitlines()
        unit = result["unit"]
        module.fail_json(msg="%s failed (rc %d)%s; see journalctl -u %s" % (
            " ".join(argv), rc, (": " + detail[-1][:300]) if detail else "", unit), **result)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            distribution=dict(type="str", required=True, choices=list(RANCHER_DISTRIBUTIONS)),
            data_dir=dict(type="path"),
            node_role=dict(type="str", required=True, choices=list(NODE_ROLES)),
            restart=dict(type="bool", default=True),
            daemon_reload=dict(type="bool", default=False),
            force_restart=dict(type="bool", default=False),
            readyz=dict(type="bool", default=False),
            ready_nodes=dict(type="list", elements="str", default=[]),
            cacerts_host=dict(type="str"),
            expected_cacerts_sha256=dict(type="str"),
            timeout=dict(type="int", default=120),
            interval=dict(type="float", default=1.0),
            verify_leaves=dict(type="bool", default=True),
            leaves_timeout=dict(type="int", default=60),
            leaves_interval=dict(type="float", default=2.0),
        ),
        supports_check_mode=True,
    )
    params = module.params
    layout = run_engine(module, get_layout, params["distribution"], data_dir=params["data_dir"])
    plan = run_engine(module, plan_restart, layout, node_role=params["node_role"], restart=params["restart"],
                      daemon_reload=params["daemon_reload"], force_restart=params["force_restart"])
    systemctl = "systemctl"
    if plan.restart and not module.check_mode:
        systemctl = module.get_bin_path("systemctl", required=True)
    result = {"changed": plan.restart, "restarted": False, "daemon_reloaded": False, "unit": plan.unit, "commands": [],
              "gate": None, "leaves": None}
    if module._diff:
        result["diff"] = plan.diff(systemctl)
    if module.check_mode:
        result["commands"] = [" ".join(argv) for argv in plan.commands(systemctl)]
        module.exit_json(**result)
    if params["verify_leaves"]:
        require_cryptography(module)

    if plan.restart:
        if plan.force_restart_file:
            touch(plan.force_restart_file)
            result["commands"].append("touch %s" % plan.force_restart_file)
        for argv in plan.commands(systemctl):
            run_step(module, argv, result)
        result["daemon_reloaded"] = plan.daemon_reload
        result["restarted"] = True
        checks = GateChecks(readyz=params["readyz"], ready_nodes=tuple(params["ready_nodes"]),
                            cacerts_url=cacerts_url(layout, params["cacerts_host"]) if params["cacerts_host"] else None,
                            cacerts_ca_file=layout.api_ca_file(),
                            expected_cacerts_sha256=params["expected_cacerts_sha256"],
                            fetch_timeout=min(10.0, max(1.0, params["timeout"])))
        if not checks.empty:
            kubectl = kubectl_command(module, layout) if checks.needs_kubectl else None
            gate = poll(lambda: gate_problems(checks, kubectl=kubectl, run=module.run_command, fetch=fetch_cacerts),
                        timeout=params["timeout"], interval=params["interval"])
            result["gate"] = gate.as_dict()
            if not gate.ok:
                module.fail_json(msg="health gate of %s failed after %.0f s (%d attempts): %s" % (
                    plan.unit, gate.elapsed, gate.attempts, "; ".join(gate.problems)), **result)

    if params["verify_leaves"]:
        leaves, summary = run_engine(module, check_leaves, layout, timeout=params["leaves_timeout"],
                                     interval=params["leaves_interval"])
        result["leaves"] = dict(leaves.as_dict(), **summary)
        if not leaves.ok:
            module.fail_json(msg="leaf check failed after %.0f s (%d attempts): %s" % (
                leaves.elapsed, leaves.attempts, "; ".join(leaves.problems)), **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
