#!/usr/bin/python
# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
---
module: rke1_old_ca
short_description: After an RKE1 CA rotation, restart or re-issue what still holds the old CA, and list what is left
version_added: 0.4.0
description:
  - C(rke cert rotate --rotate-ca) is a hard cut. rke deletes only the pods of its own add-ons (networking, ingress,
    DNS, metrics-server, kube-api-auth, cattle-cluster-agent). Other pods keep the CA they read at start, and
    service-account token Secrets keep their C(ca.crt) (rancher/rke#3050).
  - Reads the cluster through C(kubectl) with the admin kubeconfig rke wrote, and the new C(kube-ca) from
    C(cluster.rkestate). Then, as asked, it deletes rke's add-on pods that started before the rotation (rke's own
    deletion skipped or failed), rolls every Deployment, DaemonSet and StatefulSet with a pod-template annotation,
    and writes the new CA into the C(ca.crt) of service-account token Secrets that lack it.
  - Returns RV(old_ca_holders), what still holds only the old CA after that, each with a sentence.
  - Runs where the kubeconfig and state file are, usually the rke workstation. A rerun rolls nothing already
    annotated for this CA and re-issues no Secret that holds it.
author:
  - kubepki.certs developers (@kubepki)
extends_documentation_fragment:
  - kubepki.certs._attributes
  - kubepki.certs._cryptography_dep
attributes:
  check_mode:
    support: full
    details:
      - Reports what it would restart and re-issue, and what holds the old CA now; changes nothing.
  diff_mode:
    support: full
    details:
      - One line per pod deleted, workload rolled and Secret re-issued, before and after.
options:
  rkestate:
    description: The C(cluster.rkestate) after the rotation; its C(currentState) C(kube-ca) is the new CA.
    type: path
    required: true
  kubeconfig:
    description: The admin kubeconfig rke wrote (C(kube_config_cluster.yml)), which trusts the new CA.
    type: path
    required: true
  kubectl:
    description: The kubectl command as an argument list; a bare program name is looked up on the PATH.
    type: list
    elements: str
    default: [kubectl]
  rotated_at:
    description:
      - When the rotation began (ISO 8601 UTC, for example C(2026-12-04T17:50:00Z)). Pods created before it started
        with the old CA.
    type: str
    required: true
  restart_system_pods:
    description: Delete rke's add-on pods (rke's label list) created before O(rotated_at); their controllers recreate them.
    type: bool
    default: true
  restart_workloads:
    description: Roll every Deployment, DaemonSet and StatefulSet (in O(namespaces)) with the pod-template annotation
      C(kubepki.io/ca-rotation) set to the new CA's fingerprint.
    type: bool
    default: false
  reissue_token_secrets:
    description: Write the new CA into C(ca.crt) of every service-account token Secret (in O(namespaces)) that lacks it.
      The token itself stays valid, because rke keeps the service-account key.
    type: bool
    default: false
  namespaces:
    description: Limit O(restart_workloads) and O(reissue_token_secrets) to these namespaces; empty means every namespace.
    type: list
    elements: str
    default: []
  timeout:
    description: Seconds each kubectl call may take.
    type: int
    default: 60
"""

EXAMPLES = r"""
- name: After rke cert rotate --rotate-ca, restart rke's add-on pods and list what holds the old CA
  kubepki.certs.rke1_old_ca:
    rkestate: /home/ops/cluster/cluster.rkestate
    kubeconfig: /home/ops/cluster/kube_config_cluster.yml
    rotated_at: "2026-12-04T17:50:00Z"

- name: Also roll the workloads and re-issue token Secrets in two namespaces
  kubepki.certs.rke1_old_ca:
    rkestate: /home/ops/cluster/cluster.rkestate
    kubeconfig: /home/ops/cluster/kube_config_cluster.yml
    rotated_at: "2026-12-04T17:50:00Z"
    restart_workloads: true
    reissue_token_secrets: true
    namespaces: [shop, billing]
"""

RETURN = r"""
new_ca_fingerprint:
  description: SHA-256 fingerprint of the new C(kube-ca) (colon-separated, as C(openssl x509 -fingerprint -sha256)).
  returned: always
  type: str
restarted_system_pods:
  description: rke's add-on pods deleted (or, in check mode, that would be), as C(namespace/name).
  returned: always
  type: list
  elements: str
rolled_workloads:
  description: Workloads annotated (or that would be), as C(Kind namespace/name).
  returned: always
  type: list
  elements: str
reissued_token_secrets:
  description: Token Secrets whose C(ca.crt) was replaced (or would be), as C(namespace/name).
  returned: always
  type: list
  elements: str
old_ca_holders:
  description: What still holds only the old CA after the changes, each with C(kind), C(namespace), C(name) and C(reason).
  returned: always
  type: list
  elements: dict
"""

import base64
import json

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.kubepki.certs.plugins.module_utils._pki.certs import fingerprint_sha256, load_certificates
from ansible_collections.kubepki.certs.plugins.module_utils._pki.errors import InvalidInputError
from ansible_collections.kubepki.certs.plugins.module_utils._pki.module_edge import require_cryptography, resolve_command, run_engine
from ansible_collections.kubepki.certs.plugins.module_utils._pki.rke1_old_ca import (
    CA_KEY,
    ROLL_ANNOTATION,
    ROOT_CA_CONFIGMAP,
    TOKEN_SECRET_TYPE,
    change_diff,
    old_ca_holders,
    parse_time,
    system_pods_to_restart,
    token_secrets_to_reissue,
    workloads_to_roll,
)
from ansible_collections.kubepki.certs.plugins.module_utils._pki.rke1_state import read_rkestate


class Cluster:
    """kubectl with the admin kubeconfig; every failure ends the task naming the call."""

    def __init__(self, module):
        self.module = module
        argv = resolve_command(module, module.params["kubectl"])
        if argv is None:
            module.fail_json(msg="%s is not on the PATH; set kubectl to the kubectl command" % module.params["kubectl"][0])
        self.argv = argv + ["--kubeconfig", module.params["kubeconfig"], "--request-timeout", "%ds" % module.params["timeout"]]

    def run(self, *args) -> str:
        rc, out, err = self.module.run_command(self.argv + list(args))
        if rc != 0:
            self.module.fail_json(msg="kubectl %s failed (rc %d): %s" % (" ".join(args[:4]), rc, (err or out).strip()[-500:]))
        return out

    def items(self, *args) -> list:
        return json.loads(self.run("get", *args, "--all-namespaces", "-o", "json")).get("items") or []

    def snapshot(self) -> dict:
        return dict(pods=self.items("pods"),
                    configmaps=self.items("configmaps", "--field-selector", "metadata.name=" + ROOT_CA_CONFIGMAP),
                    secrets=self.items("secrets", "--field-selector", "type=" + TOKEN_SECRET_TYPE))


def new_ca(path: str) -> tuple:
    entry = read_rkestate(path).current.get("kube-ca")
    if entry is None:
        raise InvalidInputError("%s has no currentState kube-ca: not the state file of a deployed cluster" % path, path=path)
    return entry.certificate_pem, fingerprint_sha256(load_certificates(entry.certificate_pem.encode("utf-8"), source=path)[0])


def main():
    module = AnsibleModule(
        argument_spec=dict(
            rkestate=dict(type="path", required=True),
            kubeconfig=dict(type="path", required=True),
            kubectl=dict(type="list", elements="str", default=["kubectl"]),
            rotated_at=dict(type="str", required=True),
            restart_system_pods=dict(type="bool", default=True),
            restart_workloads=dict(type="bool", default=False),
            reissue_token_secrets=dict(type="bool", default=False),
            namespaces=dict(type="list", elements="str", default=[]),
            timeout=dict(type="int", default=60),
        ),
        supports_check_mode=True,
    )
    require_cryptography(module)
    params = module.params
    ca_pem, fingerprint = run_engine(module, new_ca, params["rkestate"])
    rotated_at = run_engine(module, parse_time, params["rotated_at"])
    namespaces = tuple(params["namespaces"])
    marker = fingerprint.replace(":", "")[:16].lower()
    cluster = Cluster(module)
    before = cluster.snapshot()

    system_pods = system_pods_to_restart(before["pods"], rotated_at) if params["restart_system_pods"] else []
    workloads = (workloads_to_roll(cluster.items("deployments,daemonsets,statefulsets"), marker, namespaces)
                 if params["restart_workloads"] else [])
    secrets = token_secrets_to_reissue(before["secrets"], fingerprint, namespaces) if params["reissue_token_secrets"] else []
    changed = bool(system_pods or workloads or secrets)
    after = before
    if changed and not module.check_mode:
        for ref in system_pods:
            cluster.run("delete", "pod", "--namespace", ref.namespace, ref.name, "--wait=false", "--ignore-not-found")
        patch = json.dumps({"spec": {"template": {"metadata": {"annotations": {ROLL_ANNOTATION: marker}}}}})
        for ref in workloads:
            cluster.run("patch", ref.kind.lower(), ref.name, "--namespace", ref.namespace, "--type", "merge", "--patch", patch)
        ca_data = json.dumps({"data": {CA_KEY: base64.b64encode(ca_pem.encode("utf-8")).decode("ascii")}})
        for ref in secrets:
            cluster.run("patch", "secret", ref.name, "--namespace", ref.namespace, "--type", "merge", "--patch", ca_data)
        after = cluster.snapshot()
    holders = old_ca_holders(pods=after["pods"], configmaps=after["configmaps"], secrets=after["secrets"],
                             rotated_at=rotated_at, new_fingerprint=fingerprint)
    if module.check_mode:
        # What the changes would take away is not listed as left.
        done = {("Pod", ref.namespace, ref.name) for ref in system_pods} | {("Secret", ref.namespace, ref.name) for ref in secrets}
        holders = [holder for holder in holders if (holder["kind"], holder["namespace"], holder["name"]) not in done]
    result = {}
    if module._diff:
        result["diff"] = change_diff(system_pods=system_pods, workloads=workloads, secrets=secrets, marker=marker,
                                     new_fingerprint=fingerprint)
    module.exit_json(changed=changed, new_ca_fingerprint=fingerprint, **result,
                     restarted_system_pods=[ref.label for ref in system_pods],
                     rolled_workloads=["%s %s" % (ref.kind, ref.label) for ref in workloads],
                     reissued_token_secrets=[ref.label for ref in secrets], old_ca_holders=holders)


if __name__ == "__main__":
    main()
