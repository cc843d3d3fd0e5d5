#!/usr/bin/python
# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
---
module: static_pod_restart
short_description: Restart the kubeadm static pods still running on replaced certificates, and wait for them
version_added: 0.3.0
description:
  - Finds the control-plane static pods (C(etcd), C(kube-apiserver), C(kube-controller-manager), C(kube-scheduler))
    whose process started before one of the certificates, keys or kubeconfigs named on its command line was written,
    and restarts exactly those, one after the other, in that order.
  - A restart is the kubelet's own, triggered by a manifest change (the annotation C(kubepki.io/restartedAt), as
    C(kubectl rollout restart) sets C(kubectl.kubernetes.io/restartedAt)). The module then waits until the old
    process has ended, a new one runs, and the manifest's own probe (readiness, else startup, else liveness) answers.
  - A rerun restarts nothing (every pod started after its files were written).
  - Fails, naming the manifest, when a pod's manifest exists but no process of it appears on the node within
    O(timeout) (the kubelet is not running it; a pod the kubelet is restarting right now is waited for), or when a
    restarted pod does not come back within O(timeout).
author:
  - kubepki.certs developers (@kubepki)
extends_documentation_fragment:
  - kubepki.certs._attributes
attributes:
  check_mode:
    support: full
    details:
      - Reports which pods would restart and why; changes nothing.
  diff_mode:
    support: full
    details:
      - The manifests that get the annotation.
options:
  distribution:
    description: The distribution whose layout to use; kubeadm only, so far.
    type: str
    default: kubeadm
    choices: [kubeadm]
  data_dir:
    description: The kubeadm directory whose C(manifests/) holds the static pods (default C(/etc/kubernetes)).
    type: path
  pods:
    description: The static pods to consider (manifest C(<name>.yaml)); a pod whose manifest is absent is reported.
    type: list
    elements: str
    default: [etcd, kube-apiserver, kube-controller-manager, kube-scheduler]
  force:
    description: Restart the pods in O(pods) whether stale or not.
    type: bool
    default: false
  timeout:
    description: Seconds to wait for each restarted pod to be back (old process gone, new one answering its probe),
      and for a pod without a process to get one.
    type: int
    default: 300
  backup_dir:
    description: Where each manifest is copied (at its absolute path, mode 0600) before it changes.
    type: path
    required: true
notes:
  - The processes of a pod are found by its binary's name in the node's network namespace (kubeadm's control-plane
    pods run with C(hostNetwork)). Probes over HTTPS are not verified, as the kubelet's are not.
seealso:
  - module: kubepki.certs.leaf_renew
"""

EXAMPLES = r"""
- name: Restart what runs on replaced certificates
  kubepki.certs.static_pod_restart:
    backup_dir: /var/lib/kubepki/backup/renew-20261203
  become: true
"""

RETURN = r"""
pods:
  description: Each pod with status C(restart), C(current) or C(absent), the reason, its processes and the wait.
  returned: always
  type: list
  elements: dict
  sample: [{"name": kube-apiserver, "manifest": /etc/kubernetes/manifests/kube-apiserver.yaml, "status": restart,
            "reason": "started before /etc/kubernetes/pki/apiserver.crt changed", "old_pids": [4242], "new_pid": 5151,
            "waited_seconds": 21.4, "probe": "https://10.0.0.11:6443/readyz"}]
restarted:
  description: The pods restarted (in check mode, those that would be).
  returned: always
  type: list
  elements: str
backup_files:
  description: The manifest copies written (empty in check mode).
  returned: always
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.kubepki.certs.plugins.module_utils._pki.layout import KUBEADM_DISTRIBUTIONS, get_layout
from ansible_collections.kubepki.certs.plugins.module_utils._pki.module_edge import probe_ok, run_engine
from ansible_collections.kubepki.certs.plugins.module_utils._pki.static_pods import (
    apply_restarts,
    plan_restarts,
    restart_diff,
    restart_report,
)


def main():
    default_layout = get_layout(KUBEADM_DISTRIBUTIONS[0])
    module = AnsibleModule(
        argument_spec=dict(
            distribution=dict(type="str", default=KUBEADM_DISTRIBUTIONS[0], choices=list(KUBEADM_DISTRIBUTIONS)),
            data_dir=dict(type="path"),
            pods=dict(type="list", elements="str", default=list(default_layout.extra["static_pods"])),
            force=dict(type="bool", default=False),
            timeout=dict(type="int", default=300),
            backup_dir=dict(type="path", required=True),
        ),
        supports_check_mode=True,
    )
    params = module.params
    layout = run_engine(module, get_layout, params["distribution"], data_dir=params["data_dir"])
    restarts = run_engine(module, plan_restarts, layout.extra["manifests_dir"], params["pods"], force=params["force"],
                          appear_timeout=params["timeout"])
    result = restart_report(restarts)
    result["backup_files"] = []
    changed = bool(result["restarted"])
    if module._diff and changed:
        result["diff"] = restart_diff(restarts)
    if changed and not module.check_mode:
        result["backup_files"] = run_engine(module, apply_restarts, restarts, backup_root=params["backup_dir"],
                                            timeout=params["timeout"], probe_ok=probe_ok)
        result.update(restart_report(restarts))
    module.exit_json(changed=changed, **result)


if __name__ == "__main__":
    main()
